use std::collections::HashSet;
use std::fs::{self, DirBuilder, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustlayer_core::{Backend, Kind, Labels, Mount, SnapshotId, SnapshotRef, Staged, Usage};
use tracing::{debug, info, warn};

use crate::error::{Result, io_err};
use crate::layout::Layout;
use crate::reaper::Reaper;
use crate::usage::disk_usage;

/// With overlay's inode index on, a layer used as lower by one mount and upper by
/// another is refused; containerd turns it off for the same reason.
const INDEX_PARAMETER: &str = "/sys/module/overlay/parameters/index";

#[derive(Debug, Clone)]
pub struct OverlayOptions {
    pub root: PathBuf,
}

#[derive(Debug)]
pub struct OverlayBackend {
    layout: Layout,
    /// Options every overlay mount gets.
    common_options: Vec<String>,
    /// Staging directories of Prepares in flight, which Cleanup must not touch.
    staging_live: Mutex<HashSet<String>>,
    sequence: AtomicU64,
    reaper: Reaper,
}

impl OverlayBackend {
    /// Opens (creating if needed) the backend's directories under `options.root`.
    /// Run [`preflight`](crate::preflight) first: it also loads the overlay module,
    /// whose parameters decide the mount options.
    pub fn open(options: &OverlayOptions) -> Result<OverlayBackend> {
        let layout = Layout::new(&options.root);
        for dir in [
            layout.root().to_owned(),
            layout.snapshots(),
            layout.links(),
            layout.staging(),
            layout.trash(),
        ] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err("create", &dir))?;
        }
        let mut common_options = Vec::new();
        if Path::new(INDEX_PARAMETER).exists() {
            common_options.push("index=off".to_owned());
        }
        let reaper =
            Reaper::start(layout.trash()).map_err(io_err("start reaper for", layout.trash()))?;
        info!(root = %layout.root().display(), options = ?common_options, "overlay backend ready");
        Ok(OverlayBackend {
            layout,
            common_options,
            staging_live: Mutex::new(HashSet::new()),
            sequence: AtomicU64::new(0),
            reaper,
        })
    }

    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// Blocks until storage detached so far is deleted.
    pub fn wait_reaped(&self) {
        self.reaper.wait_idle();
    }

    fn unique_name(&self, prefix: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}{nanos:x}-{n}")
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.staging_live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stage_dir(&self, kind: Kind, parents: &[SnapshotId]) -> Result<Staged> {
        let name = self.unique_name("new-");
        let dir = self.layout.staging().join(&name);
        self.live().insert(name.clone());
        let made = (|| {
            DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io_err("create", &dir))?;
            let upper = dir.join("fs");
            DirBuilder::new()
                .mode(0o755)
                .create(&upper)
                .map_err(io_err("create", &upper))?;
            if kind == Kind::Active {
                let work = dir.join("work");
                DirBuilder::new()
                    .mode(0o711)
                    .create(&work)
                    .map_err(io_err("create", &work))?;
            }
            if let Some(&parent) = parents.first() {
                inherit_root_attributes(&self.layout.upper(parent), &upper)?;
            }
            sync_dir(&dir)
        })();
        match made {
            Ok(()) => Ok(Staged::new(name)),
            Err(err) => {
                self.discard_dir(&name);
                Err(err)
            }
        }
    }

    fn publish_dir(&self, staged: &Staged, id: SnapshotId) -> Result<()> {
        let from = self.layout.staging().join(staged.name());
        let to = self.layout.snapshot(id);
        if fs::symlink_metadata(&to).is_ok() {
            // Debris of a transaction that never committed; the id is ours now.
            warn!(path = %to.display(), "replacing storage left by an unfinished operation");
            self.detach(&to)?;
        }
        fs::rename(&from, &to).map_err(io_err("publish", &to))?;
        self.live().remove(staged.name());
        sync_dir(&self.layout.snapshots())
    }

    fn discard_dir(&self, name: &str) {
        let dir = self.layout.staging().join(name);
        if let Err(err) = fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %dir.display(), %err, "cannot discard staged storage; Cleanup will retry");
        }
        self.live().remove(name);
    }

    fn overlay_mounts(&self, snapshot: SnapshotRef<'_>) -> Vec<Mount> {
        let bind = |source: PathBuf, read_only: bool| Mount {
            fs_type: "bind".into(),
            source: source.display().to_string(),
            options: vec![if read_only { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        let id = snapshot.id;
        match (snapshot.kind, snapshot.parents) {
            (Kind::View, []) => vec![bind(self.layout.upper(id), true)],
            (Kind::View, [parent]) => vec![bind(self.layout.upper(*parent), true)],
            (Kind::Active | Kind::Committed, []) => vec![bind(self.layout.upper(id), false)],
            (kind, parents) => {
                let mut options = self.common_options.clone();
                if kind != Kind::View {
                    options.push(format!("workdir={}", self.layout.work(id).display()));
                    options.push(format!("upperdir={}", self.layout.upper(id).display()));
                }
                let lowers: Vec<String> = parents
                    .iter()
                    .map(|p| self.layout.link(*p).display().to_string())
                    .collect();
                options.push(format!("lowerdir={}", lowers.join(":")));
                vec![Mount {
                    fs_type: "overlay".into(),
                    source: "overlay".into(),
                    options,
                }]
            }
        }
    }

    /// Creates or replaces the layer's short link in one rename, so concurrent
    /// Commits of one snapshot never see a missing or half-made link.
    fn link_layer(&self, id: SnapshotId) -> Result<()> {
        let link = self.layout.link(id);
        let name = self.unique_name("link-");
        let temp = self.layout.staging().join(&name);
        self.live().insert(name.clone());
        let made = symlink(Layout::link_target(id), &temp)
            .map_err(io_err("link", &temp))
            .and_then(|()| fs::rename(&temp, &link).map_err(io_err("link", &link)));
        if made.is_err() {
            let _ = fs::remove_file(&temp);
        }
        self.live().remove(&name);
        made?;
        sync_dir(&self.layout.links())
    }

    /// Moves storage out of the way in one rename; the reaper deletes it later.
    fn detach(&self, path: &Path) -> Result<()> {
        let to = self.layout.trash().join(self.unique_name("gone-"));
        match fs::rename(path, &to) {
            Ok(()) => {
                self.reaper.wake();
                Ok(())
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_err("detach", path)(err)),
        }
    }

    fn remove_storage(&self, id: SnapshotId) -> Result<()> {
        let link = self.layout.link(id);
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err("unlink", &link)(err)),
        }
        self.detach(&self.layout.snapshot(id))
    }

    fn cleanup_storage(&self, is_known: &dyn Fn(SnapshotId) -> bool) -> Result<usize> {
        let mut removed = 0;
        for (name, path) in list(&self.layout.snapshots())? {
            let known = name
                .parse::<u64>()
                .ok()
                .map(SnapshotId::new)
                .filter(|id| id.to_string() == name)
                .is_some_and(is_known);
            if !known {
                debug!(path = %path.display(), "removing storage the metadata does not know");
                self.detach(&path)?;
                removed += 1;
            }
        }
        for (name, path) in list(&self.layout.links())? {
            if !SnapshotId::parse_short_name(&name).is_some_and(is_known) {
                fs::remove_file(&path).map_err(io_err("unlink", &path))?;
                removed += 1;
            }
        }
        // Listed before the live set is read: a Prepare registers its name before it
        // makes the directory, so every directory listed here that is still in
        // flight is in the set read afterwards.
        let staged = list(&self.layout.staging())?;
        let live = self.live().clone();
        for (name, path) in staged {
            if !live.contains(&name) {
                debug!(path = %path.display(), "removing abandoned staging directory");
                self.detach(&path)?;
                removed += 1;
            }
        }
        if removed > 0 {
            info!(removed, "cleanup detached unknown storage");
        }
        Ok(removed)
    }
}

impl Backend for OverlayBackend {
    fn name(&self) -> &'static str {
        "overlay"
    }

    /// Directories are staged under a private name and renamed to the id at publish,
    /// so the reserved id itself is not needed yet.
    fn stage(
        &self,
        _id: SnapshotId,
        kind: Kind,
        parents: &[SnapshotId],
        _labels: &Labels,
    ) -> rustlayer_core::Result<Staged> {
        Ok(self.stage_dir(kind, parents)?)
    }

    fn publish(&self, staged: &Staged, id: SnapshotId) -> rustlayer_core::Result<()> {
        Ok(self.publish_dir(staged, id)?)
    }

    fn discard(&self, staged: Staged) {
        self.discard_dir(staged.name());
    }

    fn mounts(&self, snapshot: SnapshotRef<'_>) -> rustlayer_core::Result<Vec<Mount>> {
        Ok(self.overlay_mounts(snapshot))
    }

    fn seal(&self, snapshot: SnapshotRef<'_>) -> rustlayer_core::Result<Usage> {
        let usage = disk_usage(&self.layout.upper(snapshot.id))?;
        self.link_layer(snapshot.id)?;
        Ok(usage)
    }

    fn usage(&self, snapshot: SnapshotRef<'_>) -> rustlayer_core::Result<Usage> {
        Ok(disk_usage(&self.layout.upper(snapshot.id))?)
    }

    fn remove(&self, id: SnapshotId) -> rustlayer_core::Result<()> {
        Ok(self.remove_storage(id)?)
    }

    /// Listing `snapshots/` finds every unknown directory, suspects included.
    fn cleanup(
        &self,
        is_known: &dyn Fn(SnapshotId) -> bool,
        _suspects: &[SnapshotId],
    ) -> rustlayer_core::Result<usize> {
        Ok(self.cleanup_storage(is_known)?)
    }
}

/// A new layer's root starts with its parent's owner and mode, so a child's merged
/// root looks like its parent's (overlay shows the upper directory's attributes).
fn inherit_root_attributes(parent_upper: &Path, upper: &Path) -> Result<()> {
    let meta = fs::metadata(parent_upper).map_err(io_err("stat", parent_upper))?;
    lchown(upper, Some(meta.uid()), Some(meta.gid())).map_err(io_err("chown", upper))?;
    fs::set_permissions(upper, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err("chmod", upper))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync", dir))
}

fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((name, entry.path()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (tempfile::TempDir, OverlayBackend) {
        let dir = tempfile::tempdir().unwrap();
        let backend = OverlayBackend::open(&OverlayOptions {
            root: dir.path().join("root"),
        })
        .unwrap();
        (dir, backend)
    }

    fn id(n: u64) -> SnapshotId {
        SnapshotId::new(n)
    }

    #[test]
    fn mounts_follow_the_overlay2_rules() {
        let (_dir, b) = backend();
        let root = b.root().display().to_string();
        let m = b.overlay_mounts(SnapshotRef {
            id: id(7),
            kind: Kind::Active,
            parents: &[],
        });
        assert_eq!(m[0].fs_type, "bind");
        assert_eq!(m[0].source, format!("{root}/snapshots/7/fs"));
        assert_eq!(m[0].options, ["rw", "rbind"]);

        let m = b.overlay_mounts(SnapshotRef {
            id: id(7),
            kind: Kind::View,
            parents: &[id(3)],
        });
        assert_eq!(m[0].source, format!("{root}/snapshots/3/fs"));
        assert_eq!(m[0].options, ["ro", "rbind"]);

        let m = b.overlay_mounts(SnapshotRef {
            id: id(40),
            kind: Kind::Active,
            parents: &[id(39), id(2)],
        });
        assert_eq!(m[0].fs_type, "overlay");
        let opts = &m[0].options;
        assert!(opts.contains(&format!("upperdir={root}/snapshots/40/fs")));
        assert!(opts.contains(&format!("workdir={root}/snapshots/40/work")));
        assert_eq!(
            opts.last().unwrap(),
            &format!("lowerdir={root}/l/13:{root}/l/2")
        );

        let m = b.overlay_mounts(SnapshotRef {
            id: id(41),
            kind: Kind::View,
            parents: &[id(39), id(2)],
        });
        assert!(!m[0].options.iter().any(|o| o.starts_with("upperdir=")));
    }

    #[test]
    fn five_hundred_layers_fit_in_a_page_once_compacted() {
        let (_dir, b) = backend();
        let parents: Vec<SnapshotId> = (100_000..100_500).rev().map(id).collect();
        let m = b.overlay_mounts(SnapshotRef {
            id: id(200_000),
            kind: Kind::Active,
            parents: &parents,
        });
        let data = rustlayer_mount::OverlayData::parse(&m[0].options.join(","));
        let (dir, compact) = data.compact().unwrap();
        assert_eq!(dir, format!("{}/l", b.root().display()));
        assert!(
            compact.render().len() < 4096 - 512,
            "{}",
            compact.render().len()
        );
    }

    #[test]
    fn staged_storage_is_invisible_until_published() {
        let (_dir, b) = backend();
        let staged = b.stage_dir(Kind::Active, &[]).unwrap();
        assert!(!b.layout.snapshot(id(1)).exists());
        b.publish_dir(&staged, id(1)).unwrap();
        assert!(b.layout.upper(id(1)).is_dir());
        assert!(b.layout.work(id(1)).is_dir());
        assert_eq!(fs::read_dir(b.layout.staging()).unwrap().count(), 0);
    }

    #[test]
    fn publish_replaces_debris_under_a_reused_id() {
        let (_dir, b) = backend();
        fs::create_dir_all(b.layout.upper(id(5))).unwrap();
        fs::write(b.layout.upper(id(5)).join("stale"), b"x").unwrap();
        let staged = b.stage_dir(Kind::Active, &[]).unwrap();
        b.publish_dir(&staged, id(5)).unwrap();
        assert!(!b.layout.upper(id(5)).join("stale").exists());
    }

    #[test]
    fn cleanup_removes_only_unknown_storage_and_spares_live_staging() {
        let (_dir, b) = backend();
        for n in [1, 2] {
            let staged = b.stage_dir(Kind::Active, &[]).unwrap();
            b.publish_dir(&staged, id(n)).unwrap();
            b.link_layer(id(n)).unwrap();
        }
        fs::create_dir(b.layout.snapshots().join("007")).unwrap();
        fs::create_dir(b.layout.staging().join("new-abandoned")).unwrap();
        let in_flight = b.stage_dir(Kind::Active, &[]).unwrap();

        let removed = b.cleanup_storage(&|i| i == id(1)).unwrap();
        // snapshot 2, its link, "007", the abandoned staging dir
        assert_eq!(removed, 4);
        b.wait_reaped();
        assert!(b.layout.upper(id(1)).is_dir());
        assert!(b.layout.link(id(1)).exists());
        assert!(!b.layout.snapshot(id(2)).exists());
        assert!(!b.layout.link(id(2)).exists());
        assert!(b.layout.staging().join(in_flight.name()).is_dir());
        assert_eq!(fs::read_dir(b.layout.trash()).unwrap().count(), 0);
    }

    #[test]
    fn remove_detaches_and_reaps() {
        let (_dir, b) = backend();
        let staged = b.stage_dir(Kind::Active, &[]).unwrap();
        b.publish_dir(&staged, id(9)).unwrap();
        fs::write(b.layout.upper(id(9)).join("data"), vec![0u8; 1 << 20]).unwrap();
        b.link_layer(id(9)).unwrap();
        b.remove_storage(id(9)).unwrap();
        assert!(!b.layout.snapshot(id(9)).exists());
        assert!(!b.layout.link(id(9)).exists());
        b.wait_reaped();
        assert_eq!(fs::read_dir(b.layout.trash()).unwrap().count(), 0);
        b.remove_storage(id(9)).unwrap();
    }

    #[test]
    fn child_layer_root_inherits_parent_mode() {
        let (_dir, b) = backend();
        let staged = b.stage_dir(Kind::Active, &[]).unwrap();
        b.publish_dir(&staged, id(1)).unwrap();
        fs::set_permissions(b.layout.upper(id(1)), fs::Permissions::from_mode(0o750)).unwrap();
        let staged = b.stage_dir(Kind::Active, &[id(1)]).unwrap();
        let mode = fs::metadata(b.layout.staging().join(staged.name()).join("fs"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o7777, 0o750);
    }
}
