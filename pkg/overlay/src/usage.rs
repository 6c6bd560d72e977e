use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustlayer_core::Usage;

use crate::error::{Result, io_err};

/// Bytes actually allocated (st_blocks, as `du` counts) and distinct inodes under
/// `dir`, itself included. Hard links count once.
pub fn disk_usage(dir: &Path) -> Result<Usage> {
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
            account(&meta, &mut usage, &mut seen_links);
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(usage)
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
}
