//! containerd's fstab-style option lists, split into mount(2) flags and the
//! filesystem's data string, with the same vocabulary containerd's mount package
//! accepts (the snapshotter returns options; containerd or our tests perform them).

use rustix::mount::MountFlags as Raw;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountFlags {
    pub raw: u64,
    /// `bind`/`rbind`: read-only must be applied by a remount afterwards.
    pub bind: bool,
    pub recursive: bool,
    pub read_only: bool,
}

impl MountFlags {
    pub fn to_raw(self) -> Raw {
        let mut flags = Raw::from_bits_retain(self.raw as _);
        if self.bind {
            flags |= Raw::BIND;
        }
        if self.recursive {
            flags |= Raw::REC;
        }
        if self.read_only {
            flags |= Raw::RDONLY;
        }
        flags
    }
}

/// Returns the flags and the comma-joined data for the filesystem.
pub fn parse_options(options: &[String]) -> (MountFlags, String) {
    let mut flags = MountFlags::default();
    let mut data: Vec<&str> = Vec::new();
    for option in options {
        let (set, clear) = match option.as_str() {
            "ro" => {
                flags.read_only = true;
                continue;
            }
            "rw" => {
                flags.read_only = false;
                continue;
            }
            "bind" => {
                flags.bind = true;
                continue;
            }
            "rbind" => {
                flags.bind = true;
                flags.recursive = true;
                continue;
            }
            "defaults" => (Raw::empty(), Raw::empty()),
            "async" => (Raw::empty(), Raw::SYNCHRONOUS),
            "sync" => (Raw::SYNCHRONOUS, Raw::empty()),
            "atime" => (Raw::empty(), Raw::NOATIME),
            "noatime" => (Raw::NOATIME, Raw::empty()),
            "diratime" => (Raw::empty(), Raw::NODIRATIME),
            "nodiratime" => (Raw::NODIRATIME, Raw::empty()),
            "dev" => (Raw::empty(), Raw::NODEV),
            "nodev" => (Raw::NODEV, Raw::empty()),
            "exec" => (Raw::empty(), Raw::NOEXEC),
            "noexec" => (Raw::NOEXEC, Raw::empty()),
            "suid" => (Raw::empty(), Raw::NOSUID),
            "nosuid" => (Raw::NOSUID, Raw::empty()),
            "dirsync" => (Raw::DIRSYNC, Raw::empty()),
            "relatime" => (Raw::RELATIME, Raw::empty()),
            "norelatime" => (Raw::empty(), Raw::RELATIME),
            "strictatime" => (Raw::STRICTATIME, Raw::empty()),
            "nostrictatime" => (Raw::empty(), Raw::STRICTATIME),
            other => {
                data.push(other);
                continue;
            }
        };
        flags.raw |= u64::from(set.bits());
        flags.raw &= !u64::from(clear.bits());
    }
    (flags, data.join(","))
}

/// A mount's `uidmap=` and `gidmap=` options, which containerd 2.x takes out of the
/// list and turns into an idmapped mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapOptions {
    pub uidmap: String,
    pub gidmap: String,
}

/// Splits the id-map options off the rest. Like containerd's mount code, a lone
/// `uidmap=` or `gidmap=` is dropped: only both together make a mapping.
pub fn split_id_maps(options: &[String]) -> (Vec<String>, Option<IdMapOptions>) {
    let mut rest = Vec::with_capacity(options.len());
    let (mut uidmap, mut gidmap) = (None, None);
    for option in options {
        if let Some(map) = option.strip_prefix("uidmap=") {
            uidmap = Some(map.to_owned());
        } else if let Some(map) = option.strip_prefix("gidmap=") {
            gidmap = Some(map.to_owned());
        } else {
            rest.push(option.clone());
        }
    }
    let maps = uidmap
        .zip(gidmap)
        .map(|(uidmap, gidmap)| IdMapOptions { uidmap, gidmap });
    (rest, maps)
}

/// The directory containerd idmaps to reach every lower directory through one
/// mount: the longest common prefix of their paths, cut back to its last `/`
/// (Go's `path.Dir`). None when that is `/` or nothing.
pub fn lowers_common_dir(lowers: &[String]) -> Option<&str> {
    let first = lowers.first()?;
    let mut len = first.len();
    for lower in &lowers[1..] {
        len = first
            .bytes()
            .zip(lower.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    let prefix = &first[..len];
    let dir = &prefix[..prefix.rfind('/')?];
    (!dir.is_empty()).then_some(dir)
}

/// An overlay mount's data string, with the lower directories pulled out so they can
/// be rewritten relative to a common directory when the whole string would not fit
/// in the one page the kernel accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayData {
    pub lowers: Vec<String>,
    pub rest: Vec<String>,
}

impl OverlayData {
    pub fn parse(data: &str) -> OverlayData {
        let mut lowers = Vec::new();
        let mut rest = Vec::new();
        for part in data.split(',').filter(|p| !p.is_empty()) {
            match part.strip_prefix("lowerdir=") {
                Some(dirs) => lowers.extend(dirs.split(':').map(str::to_owned)),
                None => rest.push(part.to_owned()),
            }
        }
        OverlayData { lowers, rest }
    }

    pub fn render(&self) -> String {
        let mut parts = Vec::with_capacity(self.rest.len() + 1);
        if !self.lowers.is_empty() {
            parts.push(format!("lowerdir={}", self.lowers.join(":")));
        }
        parts.extend(self.rest.iter().cloned());
        parts.join(",")
    }

    /// Rewrites lower directories relative to the deepest directory they all live
    /// in, returning that directory, as containerd does before mounting. The caller
    /// must mount from inside it.
    pub fn compact(&self) -> Option<(String, OverlayData)> {
        if self.lowers.len() < 2 || self.lowers.iter().any(|l| !l.starts_with('/')) {
            return None;
        }
        let first = &self.lowers[0];
        let mut common = first.rfind('/').map(|i| &first[..=i])?;
        for lower in &self.lowers[1..] {
            while !lower.starts_with(common) {
                let trimmed = common.trim_end_matches('/');
                common = &common[..=trimmed.rfind('/')?];
            }
        }
        if common == "/" {
            return None;
        }
        let lowers = self
            .lowers
            .iter()
            .map(|l| l[common.len()..].to_owned())
            .collect();
        Some((
            common.trim_end_matches('/').to_owned(),
            OverlayData {
                lowers,
                rest: self.rest.clone(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_and_data_are_split() {
        let (flags, data) = parse_options(&opts(&["rbind", "ro", "nosuid", "index=off"]));
        assert!(flags.bind && flags.recursive && flags.read_only);
        assert_eq!(flags.raw, u64::from(Raw::NOSUID.bits()));
        assert_eq!(data, "index=off");
        let (flags, _) = parse_options(&opts(&["ro", "rw"]));
        assert!(!flags.read_only, "later options win");
    }

    #[test]
    fn overlay_lowers_compact_to_their_common_directory() {
        let data = OverlayData::parse(
            "index=off,lowerdir=/var/lib/r/l/a:/var/lib/r/l/b1:/var/lib/r/l/zz,upperdir=/u,workdir=/w",
        );
        assert_eq!(data.lowers.len(), 3);
        let (dir, short) = data.compact().expect("compactable");
        assert_eq!(dir, "/var/lib/r/l");
        assert_eq!(
            short.render(),
            "lowerdir=a:b1:zz,index=off,upperdir=/u,workdir=/w"
        );
    }

    #[test]
    fn id_maps_are_taken_out_only_as_a_pair() {
        let (rest, maps) = split_id_maps(&opts(&[
            "uidmap=0:100000:65536",
            "rbind",
            "gidmap=0:200000:65536,1:1:1",
        ]));
        assert_eq!(rest, ["rbind"]);
        let maps = maps.expect("both given");
        assert_eq!(maps.uidmap, "0:100000:65536");
        assert_eq!(maps.gidmap, "0:200000:65536,1:1:1");
        let (rest, maps) = split_id_maps(&opts(&["uidmap=0:1:1", "ro"]));
        assert_eq!(rest, ["ro"]);
        assert_eq!(maps, None, "a lone map is dropped, as containerd does");
    }

    #[test]
    fn lowers_common_dir_follows_go_path_dir() {
        let dirs = |l: &[&str]| opts(l);
        assert_eq!(
            lowers_common_dir(&dirs(&["/r/snapshots/12/fs", "/r/snapshots/13/fs"])),
            Some("/r/snapshots")
        );
        assert_eq!(
            lowers_common_dir(&dirs(&["/r/snapshots/5/fs", "/r/snapshots/55/fs"])),
            Some("/r/snapshots")
        );
        assert_eq!(
            lowers_common_dir(&dirs(&["/r/snapshots/12/fs"])),
            Some("/r/snapshots/12")
        );
        assert_eq!(lowers_common_dir(&dirs(&["/a/x", "/b/y"])), None);
        assert_eq!(lowers_common_dir(&dirs(&["relative"])), None);
        assert_eq!(lowers_common_dir(&[]), None);
    }

    #[test]
    fn compaction_stops_at_a_directory_boundary() {
        let data = OverlayData::parse("lowerdir=/r/l/ab:/r/l/ac");
        let (dir, short) = data.compact().unwrap();
        assert_eq!(dir, "/r/l");
        assert_eq!(short.lowers, ["ab", "ac"]);
        assert!(OverlayData::parse("lowerdir=/a/x:/b/y").compact().is_none());
        assert!(OverlayData::parse("lowerdir=/a/x").compact().is_none());
    }
}
