//! Observing the daemon's state: its metadata (List) and its storage (the root),
//! and a small world to aim at.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustlayer_e2e::Client;
use rustlayer_e2e::support::labels;

/// Every path under `root` (but the metadata files) with its type, size, mode and
/// link target; timestamps are left out.
pub(crate) fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            if dir == root
                && entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("metadata.db")
            {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            let desc = if ft.is_dir() {
                format!("dir {mode:o} {}:{}", meta.uid(), meta.gid())
            } else if ft.is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if ft.is_file() {
                format!("file {} {mode:o}", meta.len())
            } else {
                format!("other {ft:?} {mode:o}")
            };
            out.insert(rel, desc);
            if ft.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

// ---------------------------------------------------------------------------------

/// A small world to aim at: a committed base with an active, a view and a committed
/// child on it.
pub(crate) async fn populate(c: &Client) {
    c.prepare_labeled("base-a", "", labels(&[("origin", "test")]))
        .await
        .unwrap();
    c.commit("base", "base-a").await.unwrap();
    c.prepare_labeled("active", "base", labels(&[("tier", "1")]))
        .await
        .unwrap();
    c.view("view", "base").await.unwrap();
    c.prepare("child-a", "base").await.unwrap();
    c.commit("child", "child-a").await.unwrap();
}
