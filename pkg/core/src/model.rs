use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

/// Labels are kept sorted so that listings and comparisons are deterministic.
pub type Labels = BTreeMap<String, String>;

/// The store's numeric identity of a snapshot. Storage is named by id, never by the
/// user's key: keys are arbitrary strings (containerd's unpack keys contain spaces
/// and slashes) and must never become paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(u64);

impl SnapshotId {
    /// The largest id the store hands out. Ids name dm-thin devices, whose ids are 24
    /// bits wide; id 0 is left to a backend's own use (the devmapper base device).
    pub const MAX: SnapshotId = SnapshotId((1 << 24) - 1);

    /// The smallest id the store hands out.
    pub const MIN: SnapshotId = SnapshotId(1);

    pub const fn new(raw: u64) -> Self {
        SnapshotId(raw)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The shortest stable spelling of the id (base 36). Overlay lower-directory
    /// links are named with it so that a 500-layer `lowerdir=` fits in one page.
    pub fn short_name(self) -> String {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut n = self.0;
        let mut out = Vec::with_capacity(13);
        loop {
            out.push(DIGITS[(n % 36) as usize]);
            n /= 36;
            if n == 0 {
                break;
            }
        }
        out.reverse();
        String::from_utf8(out).expect("base36 digits are ASCII")
    }

    pub fn parse_short_name(name: &str) -> Option<Self> {
        if name.is_empty() || name.len() > 13 || name.starts_with('0') && name.len() > 1 {
            return None;
        }
        let mut n: u64 = 0;
        for c in name.bytes() {
            let digit = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'z' => c - b'a' + 10,
                _ => return None,
            };
            n = n.checked_mul(36)?.checked_add(u64::from(digit))?;
        }
        Some(SnapshotId(n))
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::View, Kind::Active, Kind::Committed];

    /// The spelling containerd uses in filters (`kind==committed`) and in its CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Disk use of one snapshot's own layer (not its parents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// The hard limits an active snapshot's writes meet; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub bytes: Option<u64>,
    pub inodes: Option<u64>,
}

impl Limits {
    /// The larger of the fractions of its limits `usage` takes, or `None` when
    /// nothing is limited.
    pub fn fraction_used(&self, usage: Usage) -> Option<f64> {
        let of = |used: u64, limit: Option<u64>| {
            limit.filter(|&l| l > 0).map(|l| used as f64 / l as f64)
        };
        match (of(usage.bytes, self.bytes), of(usage.inodes, self.inodes)) {
            (Some(b), Some(i)) => Some(b.max(i)),
            (b, i) => b.or(i),
        }
    }
}

/// How a usage figure was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageMethod {
    /// Cached by the metadata when the layer was committed (or a view's nothing).
    Recorded,
    /// Read from counters the filesystem keeps (project quotas), in constant time.
    Counted,
    /// Walked file by file.
    Walked,
    /// Asked from the storage some other way (a thin device's mapped blocks).
    Measured,
}

impl UsageMethod {
    pub const ALL: [UsageMethod; 4] = [
        UsageMethod::Recorded,
        UsageMethod::Counted,
        UsageMethod::Walked,
        UsageMethod::Measured,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UsageMethod::Recorded => "recorded",
            UsageMethod::Counted => "counted",
            UsageMethod::Walked => "walked",
            UsageMethod::Measured => "measured",
        }
    }

    pub fn parse(s: &str) -> Option<UsageMethod> {
        UsageMethod::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// A snapshot's usage with how it was found and the limits it is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    pub usage: Usage,
    pub method: UsageMethod,
    pub limits: Limits,
}

/// How many active snapshots are held to a limit, and how many of those have used
/// [`NEAR_LIMIT`] of it or more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitStats {
    pub limited: u64,
    pub near_limit: u64,
}

/// The fraction of its limit past which a snapshot counts as near it: a container
/// about to see ENOSPC or EDQUOT.
pub const NEAR_LIMIT: f64 = 0.9;

/// What containerd sees of a snapshot: its `Info` message, minus transport details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub parent: Option<String>,
    pub kind: Kind,
    pub created: SystemTime,
    pub updated: SystemTime,
    pub labels: Labels,
}

/// One entry of the mount list containerd performs to materialise a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub fs_type: String,
    pub source: String,
    pub options: Vec<String>,
}

/// A count or size for a signed field (SQLite's integers, the API's int64, gauges),
/// pinned at `i64::MAX` rather than wrapped negative.
pub fn saturating_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fraction_used_is_that_of_the_tightest_limit() {
        let usage = Usage {
            bytes: 50,
            inodes: 9,
        };
        assert_eq!(Limits::default().fraction_used(usage), None);
        let bytes_only = Limits {
            bytes: Some(100),
            inodes: None,
        };
        assert_eq!(bytes_only.fraction_used(usage), Some(0.5));
        let both = Limits {
            bytes: Some(100),
            inodes: Some(10),
        };
        assert_eq!(both.fraction_used(usage), Some(0.9));
        for method in UsageMethod::ALL {
            assert_eq!(UsageMethod::parse(method.as_str()), Some(method));
        }
    }

    #[test]
    fn short_names_round_trip() {
        for raw in [0, 1, 35, 36, 1295, 1296, 46655, 46656, u64::MAX] {
            let id = SnapshotId::new(raw);
            assert_eq!(SnapshotId::parse_short_name(&id.short_name()), Some(id));
        }
        assert_eq!(SnapshotId::new(36).short_name(), "10");
        assert_eq!(SnapshotId::new(46655).short_name(), "zzz");
    }

    #[test]
    fn short_names_reject_foreign_entries() {
        for bad in [
            "",
            "00",
            "01",
            "A",
            "new-1",
            "zzzzzzzzzzzzzz",
            "3w5e11264sgsh",
        ] {
            assert_eq!(SnapshotId::parse_short_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn kinds_parse_their_own_names() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("Active"), None);
    }
}
