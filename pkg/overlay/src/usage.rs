use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustlayer_core::Usage;

use crate::error::{Result, io_err};

/// What to do with whiteouts (0/0 character devices) met while measuring a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    Keep,
    /// Delete them and leave them out of the figures.
    Remove,
}

/// Bytes actually allocated (st_blocks, as `du` counts) and distinct inodes under
/// `dir`, itself included. Hard links count once.
pub fn disk_usage(dir: &Path) -> Result<Usage> {
    layer_usage(dir, Whiteouts::Keep)
}

/// [`disk_usage`] of a layer, deleting its whiteouts on the way if asked.
pub fn layer_usage(dir: &Path, whiteouts: Whiteouts) -> Result<Usage> {
    let mut usage = Usage::default();
    let mut seen_links = HashSet::new();
    let root = fs::symlink_metadata(dir).map_err(io_err("stat", dir))?;
    account(&root, &mut usage, &mut seen_links);
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = fs::read_dir(&current).map_err(io_err("read directory", &current))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &current))?;
            let meta = entry.metadata().map_err(io_err("stat", entry.path()))?;
            if whiteouts == Whiteouts::Remove && is_whiteout(&meta) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err("remove whiteout", &path))?;
                continue;
            }
            account(&meta, &mut usage, &mut seen_links);
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// overlayfs's mark of a deleted entry.
fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn account(meta: &fs::Metadata, usage: &mut Usage, seen_links: &mut HashSet<(u64, u64)>) {
    if meta.nlink() > 1 && !meta.is_dir() && !seen_links.insert((meta.dev(), meta.ino())) {
        return;
    }
    usage.inodes += 1;
    usage.bytes += meta.blocks() * 512;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_inodes_once_per_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/a"), vec![1u8; 64 * 1024]).unwrap();
        fs::hard_link(dir.path().join("sub/a"), dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink("sub/a", dir.path().join("c")).unwrap();
        let usage = disk_usage(dir.path()).unwrap();
        // root, sub, a (=b), c
        assert_eq!(usage.inodes, 4);
        assert!(usage.bytes >= 64 * 1024, "{usage:?}");
        assert!(
            usage.bytes < 2 * 64 * 1024 + 64 * 1024,
            "hard link counted twice: {usage:?}"
        );
    }

    #[test]
    #[ignore = "needs root: whiteouts are character devices (mknod)"]
    fn whiteouts_are_kept_or_removed_as_asked() {
        rustlayer_mount::testing::require_root("whiteouts are character devices (mknod)");
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/kept"), b"x").unwrap();
        let whiteout = dir.path().join("etc/gone");
        let mknod = |path: &Path, dev| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                path,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0),
                dev,
            )
            .unwrap()
        };
        mknod(&whiteout, 0);
        // A real device node (1:3, /dev/null's) is not a whiteout.
        let device = dir.path().join("null");
        mknod(&device, rustix::fs::makedev(1, 3));

        let kept = layer_usage(dir.path(), Whiteouts::Keep).unwrap();
        assert_eq!(kept.inodes, 5, "root, etc, kept, gone, null");
        assert!(fs::symlink_metadata(&whiteout).is_ok());

        let removed = layer_usage(dir.path(), Whiteouts::Remove).unwrap();
        assert_eq!(
            removed.inodes, 4,
            "the whiteout is neither counted nor kept"
        );
        assert!(fs::symlink_metadata(&whiteout).is_err());
        assert!(fs::symlink_metadata(&device).is_ok());
        assert!(dir.path().join("etc/kept").exists());
    }
}
