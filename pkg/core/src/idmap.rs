//! User-namespace id mappings, as containerd hands them to snapshotters.
//!
//! A container in a user namespace (`ctr run --remap-labels`, a Kubernetes pod
//! with `hostUsers: false`) gets its snapshot with the labels
//! `containerd.io/snapshot/uidmapping` and `containerd.io/snapshot/gidmapping`,
//! each a comma-separated list of `container:host:size` ranges. The snapshotter
//! makes the new layer's root owned by the host ids of the container's root and,
//! when containerd declares the proxy's `remap-ids` capability, returns mounts with
//! `uidmap=`/`gidmap=` options, from which containerd 2.x builds idmapped mounts
//! of the lower layers.
//!
//! Parsing is stricter than containerd's own (which reads each range with
//! `Sscanf("%d:%d:%d")` and so accepts trailing garbage): what the kernel would
//! refuse when the mapping is written for the mount (empty, overlapping or
//! overflowing ranges, too many of them) is refused at Prepare instead, where the
//! caller still learns which label is wrong.

use std::fmt;

use crate::{Error, Labels, Result};

/// The label containerd sets with the container's uid ranges.
pub const UID_MAPPING_LABEL: &str = "containerd.io/snapshot/uidmapping";
/// The label containerd sets with the container's gid ranges.
pub const GID_MAPPING_LABEL: &str = "containerd.io/snapshot/gidmapping";

/// The kernel accepts at most this many ranges in one `uid_map` or `gid_map`.
pub const MAX_RANGES: usize = 340;

/// `(uid_t)-1` is no id at all; no range may reach it.
const INVALID_ID: u64 = u32::MAX as u64;

/// One range: `size` ids starting at `container` inside the namespace are the ids
/// starting at `host` outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

impl IdRange {
    /// The host id of `container_id`, if this range maps it.
    pub fn to_host(self, container_id: u32) -> Option<u32> {
        let offset = container_id.checked_sub(self.container)?;
        (offset < self.size).then(|| self.host + offset)
    }

    fn end(start: u32, size: u32) -> u64 {
        u64::from(start) + u64::from(size)
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.container, self.host, self.size)
    }
}

/// A list of ranges for one kind of id, valid as a kernel id map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRanges(Vec<IdRange>);

impl IdRanges {
    /// Parses `container:host:size[,container:host:size...]` (decimal, no signs or
    /// spaces). `what` names the source in errors.
    pub fn parse(what: &str, text: &str) -> Result<IdRanges> {
        let invalid = |problem: String| Error::InvalidArgument(format!("{what}: {problem}"));
        if text.is_empty() {
            return Err(invalid("no id ranges given".into()));
        }
        let mut ranges = Vec::new();
        for entry in text.split(',') {
            if ranges.len() == MAX_RANGES {
                return Err(invalid(format!(
                    "more than {MAX_RANGES} ranges; the kernel takes at most {MAX_RANGES}"
                )));
            }
            ranges.push(parse_range(entry).map_err(|problem| {
                invalid(format!(
                    "range {:?} {problem}; expected container:host:size",
                    shortened(entry)
                ))
            })?);
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                let overlap = |a_start: u32, b_start: u32| {
                    u64::from(a_start) < IdRange::end(b_start, b.size)
                        && u64::from(b_start) < IdRange::end(a_start, a.size)
                };
                if overlap(a.container, b.container) {
                    return Err(invalid(format!(
                        "ranges {a} and {b} map the same container ids"
                    )));
                }
                if overlap(a.host, b.host) {
                    return Err(invalid(format!(
                        "ranges {a} and {b} map to the same host ids"
                    )));
                }
            }
        }
        Ok(IdRanges(ranges))
    }

    pub fn ranges(&self) -> &[IdRange] {
        &self.0
    }

    /// The host id of `container_id`, if mapped.
    pub fn to_host(&self, container_id: u32) -> Option<u32> {
        self.0.iter().find_map(|r| r.to_host(container_id))
    }
}

/// Same spelling as the label and as containerd's `uidmap=` mount option.
impl fmt::Display for IdRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

fn parse_range(entry: &str) -> std::result::Result<IdRange, &'static str> {
    let mut fields = entry.split(':');
    let mut next = || -> std::result::Result<u32, &'static str> {
        let field = fields.next().ok_or("has fewer than three fields")?;
        if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
            return Err("has a field that is not a decimal number");
        }
        match field.parse::<u64>() {
            Ok(n) if n < INVALID_ID => Ok(n as u32),
            _ => Err("has a field of 4294967295 or more"),
        }
    };
    let range = IdRange {
        container: next()?,
        host: next()?,
        size: next()?,
    };
    if fields.next().is_some() {
        return Err("has more than three fields");
    }
    if range.size == 0 {
        return Err("is empty");
    }
    if IdRange::end(range.container, range.size) > INVALID_ID
        || IdRange::end(range.host, range.size) > INVALID_ID
    {
        return Err("runs past the last id");
    }
    Ok(range)
}

/// The uid and gid ranges of a user-namespaced snapshot, which map the container's
/// root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapping {
    uids: IdRanges,
    gids: IdRanges,
    root: (u32, u32),
}

impl IdMapping {
    /// The mapping a snapshot's labels ask for: none without the labels, and an
    /// `InvalidArgument` when they are malformed, when only one of the two is given
    /// (containerd 2.x's mount code would silently ignore a lone map), or when the
    /// container's root is not mapped (its layer would have no owner).
    pub fn from_labels(labels: &Labels) -> Result<Option<IdMapping>> {
        let uids = labels.get(UID_MAPPING_LABEL);
        let gids = labels.get(GID_MAPPING_LABEL);
        let (uids, gids) = match (uids, gids) {
            (None, None) => return Ok(None),
            (Some(uids), Some(gids)) => (
                IdRanges::parse(UID_MAPPING_LABEL, uids)?,
                IdRanges::parse(GID_MAPPING_LABEL, gids)?,
            ),
            (Some(_), None) | (None, Some(_)) => {
                let (given, missing) = if uids.is_some() {
                    (UID_MAPPING_LABEL, GID_MAPPING_LABEL)
                } else {
                    (GID_MAPPING_LABEL, UID_MAPPING_LABEL)
                };
                return Err(Error::InvalidArgument(format!(
                    "label {given} is given without {missing}; a user namespace needs both"
                )));
            }
        };
        let Some(root) = uids.to_host(0).zip(gids.to_host(0)) else {
            return Err(Error::InvalidArgument(format!(
                "labels {UID_MAPPING_LABEL}={uids} and {GID_MAPPING_LABEL}={gids} do not map \
                 the container's root (uid and gid 0)"
            )));
        };
        Ok(Some(IdMapping { uids, gids, root }))
    }

    pub fn uids(&self) -> &IdRanges {
        &self.uids
    }

    pub fn gids(&self) -> &IdRanges {
        &self.gids
    }

    /// The host uid and gid of the container's root.
    pub fn root(&self) -> (u32, u32) {
        self.root
    }

    /// The mount options containerd 2.x turns into an idmapped mount (of the lower
    /// layers for overlay, of the mount itself otherwise); it acts only on both.
    pub fn mount_options(&self) -> [String; 2] {
        [
            format!("uidmap={}", self.uids),
            format!("gidmap={}", self.gids),
        ]
    }
}

/// Echoing a huge hostile label back in an error helps nobody.
fn shortened(s: &str) -> String {
    const SHOWN: usize = 40;
    match s.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    fn labels(uids: Option<&str>, gids: Option<&str>) -> Labels {
        let mut l = Labels::new();
        l.insert("other".into(), "x".into());
        if let Some(u) = uids {
            l.insert(UID_MAPPING_LABEL.into(), u.into());
        }
        if let Some(g) = gids {
            l.insert(GID_MAPPING_LABEL.into(), g.into());
        }
        l
    }

    fn refused(uids: Option<&str>, gids: Option<&str>) -> String {
        let err = IdMapping::from_labels(&labels(uids, gids)).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        err.to_string()
    }

    #[test]
    fn no_labels_no_mapping() {
        assert_eq!(IdMapping::from_labels(&labels(None, None)).unwrap(), None);
    }

    #[test]
    fn containerd_single_range() {
        let m = IdMapping::from_labels(&labels(Some("0:100000:65536"), Some("0:200000:65536")))
            .unwrap()
            .unwrap();
        assert_eq!(m.root(), (100000, 200000));
        assert_eq!(
            m.uids().ranges(),
            [IdRange {
                container: 0,
                host: 100000,
                size: 65536
            }]
        );
        assert_eq!(
            m.mount_options(),
            ["uidmap=0:100000:65536", "gidmap=0:200000:65536"]
        );
        assert_eq!(m.uids().to_host(65535), Some(165535));
        assert_eq!(m.uids().to_host(65536), None);
    }

    #[test]
    fn several_ranges_in_any_order() {
        let m = IdMapping::from_labels(&labels(
            Some("1000:300000:1000,0:100000:1000"),
            Some("0:100000:1,1:500000:10"),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(m.root(), (100000, 100000));
        assert_eq!(m.uids().to_host(1500), Some(300500));
        assert_eq!(m.gids().to_host(5), Some(500004));
        assert_eq!(m.uids().to_string(), "1000:300000:1000,0:100000:1000");
        assert_eq!(m.mount_options()[1], "gidmap=0:100000:1,1:500000:10");
    }

    #[test]
    fn one_map_without_the_other_is_refused() {
        let msg = refused(Some("0:100000:65536"), None);
        assert!(msg.contains(GID_MAPPING_LABEL), "{msg}");
        let msg = refused(None, Some("0:100000:65536"));
        assert!(msg.contains(UID_MAPPING_LABEL), "{msg}");
    }

    #[test]
    fn malformed_ranges_are_refused_naming_the_label() {
        for bad in [
            "",
            "0:100000",
            "0:100000:65536:1",
            "0:100000:65536,",
            ",0:100000:65536",
            "0:-1:65536",
            "+0:100000:65536",
            " 0:100000:65536",
            "0:100000:65536 ",
            "0:100000:0x10",
            "a:b:c",
            "0:100000:0",
            "0:4294967295:1",
            "0:4294967294:2",
            "0:0:4294967295",
            "4294967290:0:10",
            "0:99999999999999999999:1",
            "0:100000:65536,0:300000:1",
            "0:100000:65536,70000:100001:1",
        ] {
            let msg = refused(Some(bad), Some("0:100000:65536"));
            assert!(msg.contains(UID_MAPPING_LABEL), "{bad:?}: {msg}");
            let msg = refused(Some("0:100000:65536"), Some(bad));
            assert!(msg.contains(GID_MAPPING_LABEL), "{bad:?}: {msg}");
        }
    }

    #[test]
    fn edges_the_kernel_accepts_are_accepted() {
        let m = IdMapping::from_labels(&labels(Some("0:4294967294:1"), Some("0:0:4294967294")))
            .unwrap()
            .unwrap();
        assert_eq!(m.root(), (4294967294, 0));
        let adjacent = "0:100000:10,10:100010:10";
        assert!(
            IdMapping::from_labels(&labels(Some(adjacent), Some(adjacent)))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn an_unmapped_root_is_refused() {
        let msg = refused(Some("1:100000:65536"), Some("0:100000:65536"));
        assert!(msg.contains("root"), "{msg}");
        refused(Some("0:100000:65536"), Some("1000:100000:1"));
    }

    #[test]
    fn range_count_is_bounded_and_long_input_not_echoed() {
        let many: Vec<String> = (0..=MAX_RANGES as u32)
            .map(|i| format!("{i}:{}:1", 100000 + i))
            .collect();
        let msg = refused(Some(&many.join(",")), Some("0:1:1"));
        assert!(msg.contains("340"), "{msg}");
        let ok = many[..MAX_RANGES].join(",");
        assert!(
            IdMapping::from_labels(&labels(Some(&ok), Some("0:1:1")))
                .unwrap()
                .is_some()
        );
        let huge = format!("0:1:{}", "9".repeat(3000));
        let msg = refused(Some(&huge), Some("0:1:1"));
        assert!(msg.len() < 300, "{msg}");
    }
}
