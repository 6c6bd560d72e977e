use std::collections::HashSet;
use std::fs::{self, DirBuilder, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustlayer_core::reaper::Reaper;
use rustlayer_core::{
    Backend, IdMapping, Kind, Labels, LimitStats, Limits, LiveSnapshot, Measured, Mount,
    SnapshotId, SnapshotRef, Staged, Usage, UsageMethod,
};
use rustlayer_mount::{LinuxProjectQuota, ProjectLimits, ProjectQuota};
use tracing::{debug, info, warn};

use crate::error::{Result, io_err};
use crate::layout::Layout;
use crate::quota::{Quotas, SizeLimits};
use crate::reaper;
use crate::usage::{Whiteouts, disk_usage, layer_usage};

/// With overlay's inode index on, a layer used as lower by one mount and upper by
/// another is refused; containerd turns it off for the same reason.
const INDEX_PARAMETER: &str = "/sys/module/overlay/parameters/index";

/// The kernel copies one page of mount options.
const MOUNT_DATA_LIMIT: usize = 4096;

#[derive(Debug, Clone)]
pub struct OverlayOptions {
    pub root: PathBuf,
    /// containerd declares this proxy's `remap-ids` capability, so a user-namespaced
    /// snapshot's mounts carry `uidmap=`/`gidmap=` and containerd (2.x) idmaps the
    /// lower layers. Without the capability containerd makes a chowned copy of the
    /// image instead and must get plain mounts, or the copy would be mapped twice.
    pub remap_ids: bool,
    /// Size limits of active snapshots, enforced through project quotas where the
    /// root's filesystem keeps them (see [`project_quota_check`](crate::project_quota_check)).
    pub size_limits: SizeLimits,
}

#[derive(Debug)]
pub struct OverlayBackend {
    layout: Layout,
    /// Options every overlay mount gets.
    common_options: Vec<String>,
    remap_ids: bool,
    /// Staging directories of Prepares in flight, which Cleanup must not touch.
    staging_live: Mutex<HashSet<String>>,
    sequence: AtomicU64,
    reaper: Reaper<()>,
    quotas: Quotas,
}

impl OverlayBackend {
    /// Opens (creating if needed) the backend's directories under `options.root`.
    /// Run [`preflight`](crate::preflight) first: it also loads the overlay module,
    /// whose parameters decide the mount options.
    pub fn open(options: &OverlayOptions) -> Result<OverlayBackend> {
        Self::open_with_quota(options, Arc::new(LinuxProjectQuota))
    }

    /// [`open`](Self::open) with project quotas set through `quota`.
    pub fn open_with_quota(
        options: &OverlayOptions,
        quota: Arc<dyn ProjectQuota>,
    ) -> Result<OverlayBackend> {
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
        let quotas = Quotas::new(layout.root(), quota, options.size_limits.clone())?;
        let reaper =
            reaper::start(layout.trash()).map_err(io_err("start reaper for", layout.trash()))?;
        info!(root = %layout.root().display(), options = ?common_options, "overlay backend ready");
        let backend = OverlayBackend {
            layout,
            common_options,
            remap_ids: options.remap_ids,
            staging_live: Mutex::new(HashSet::new()),
            sequence: AtomicU64::new(0),
            reaper,
            quotas,
        };
        backend.make_empty_lower()?;
        Ok(backend)
    }

    /// Whatever is in the empty lower shows in every parentless snapshot, so anything
    /// found there (nothing rustlayer writes) is moved away before serving.
    fn make_empty_lower(&self) -> Result<()> {
        let empty = self.layout.empty();
        match fs::read_dir(&empty).map(|mut entries| entries.next().is_none()) {
            Ok(true) => return Ok(()),
            Ok(false) => {
                warn!(path = %empty.display(), "the empty lower directory is not empty; replacing it");
                self.detach(&empty)?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err("list", &empty)(err)),
        }
        DirBuilder::new()
            .mode(0o755)
            .create(&empty)
            .map_err(io_err("create", &empty))
    }

    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// Whether the root keeps project quotas: active snapshots get size limits and
    /// their usage is read from counters.
    pub fn project_quotas(&self) -> bool {
        self.quotas.counted()
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
        rustlayer_core::sync::lock(&self.staging_live)
    }

    /// Makes the new snapshot's directories straight under its reserved id: nothing
    /// reads `snapshots/<id>` without a metadata row, and Cleanup spares ids in
    /// flight. No sync here: the Prepare is durable once its row is, and an empty
    /// layer a power loss took back is made again at start ([`Self::repair`]).
    fn stage_dir(
        &self,
        id: SnapshotId,
        kind: Kind,
        parents: &[SnapshotId],
        mapping: Option<&IdMapping>,
        limits: Option<ProjectLimits>,
    ) -> Result<Staged> {
        let dir = self.layout.snapshot(id);
        if fs::symlink_metadata(&dir).is_ok() {
            // Debris of a transaction that never committed; the id is ours now.
            warn!(path = %dir.display(), "replacing storage left by an unfinished operation");
            self.detach(&dir)?;
        }
        if limits.is_some() {
            self.wait_for_previous_life(id)?;
        }
        let made = self
            .make_dirs(id, kind, parents.first().copied(), false, limits.is_some())
            .and_then(|()| match limits {
                Some(limits) => self.quotas.set_limits(id, limits),
                None => Ok(()),
            })
            .and_then(|()| match mapping {
                Some(mapping) => self.give_to_container_root(id, kind, mapping),
                None => Ok(()),
            });
        let staged = Staged::new(id.to_string());
        if made.is_err() {
            self.discard_dir(&staged);
            if limits.is_some() {
                self.quotas.release(id);
            }
        }
        made.map(|()| staged)
    }

    /// A reused id's project may still be charged for the storage of its previous
    /// life, detached but not yet deleted by the reaper; the new layer's counters
    /// and limit must start from zero, so it waits for the reaper.
    fn wait_for_previous_life(&self, id: SnapshotId) -> Result<()> {
        if self.quotas.holds_anything(id)? {
            self.reaper.wait_idle();
            if self.quotas.holds_anything(id)? {
                warn!(%id, "files outside rustlayer's layers are charged to this snapshot's project id; its usage and limit include them");
            }
        }
        Ok(())
    }

    /// The snapshot's directory, its upper (`fs`) and, for an active one, overlay's
    /// `work`; with `existing_ok`, only the missing ones. With `counted`, the layer's
    /// directories get the snapshot's project as they are made, before anything can
    /// be written into them.
    fn make_dirs(
        &self,
        id: SnapshotId,
        kind: Kind,
        parent: Option<SnapshotId>,
        existing_ok: bool,
        counted: bool,
    ) -> Result<()> {
        let mut dirs = vec![
            (self.layout.snapshot(id), 0o700, false),
            (self.layout.upper(id), 0o755, counted),
        ];
        if kind == Kind::Active {
            dirs.push((self.layout.work(id), 0o711, counted));
        }
        for (dir, mode, in_project) in dirs {
            match DirBuilder::new().mode(mode).create(&dir) {
                Ok(()) if in_project => self.quotas.assign(&dir, id)?,
                Ok(()) => {}
                Err(err) if existing_ok && err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(io_err("create", &dir)(err)),
            }
        }
        if let Some(parent) = parent {
            inherit_root_attributes(&self.layout.upper(parent), &self.layout.upper(id))?;
        }
        Ok(())
    }

    /// A user-namespaced snapshot's layer belongs to the container's root: its upper
    /// and work directories are owned by the host ids of the container's root, since
    /// overlay never idmaps the upper directory and the container's root writes
    /// there as those ids. Parentless snapshots too: an active one is an overlay
    /// over the empty lower, and a view a read-only bind, which containerd never
    /// idmaps.
    fn give_to_container_root(
        &self,
        id: SnapshotId,
        kind: Kind,
        mapping: &IdMapping,
    ) -> Result<()> {
        let mut dirs = vec![self.layout.upper(id)];
        if kind == Kind::Active {
            dirs.push(self.layout.work(id));
        }
        chown_to_container_root(&dirs, mapping)
    }

    /// containerd 2.x mounts an idmapped overlay with its lower directories
    /// rewritten through an idmapped copy of `snapshots/`, relative to it when the
    /// options would not fit a page otherwise: `<id>/fs` each, the shortest form it
    /// has. Chains whose options do not fit a page even so could be prepared but
    /// never mounted.
    fn check_idmapped_options_fit(
        &self,
        id: SnapshotId,
        kind: Kind,
        parents: &[SnapshotId],
    ) -> rustlayer_core::Result<()> {
        if parents.is_empty() || (kind == Kind::View && parents.len() == 1) {
            return Ok(());
        }
        let lowers = parents.iter().map(|p| format!("{p}/fs")).collect();
        let len = self.overlay_options(id, kind, lowers).join(",").len();
        if len >= MOUNT_DATA_LIMIT {
            return Err(rustlayer_core::Error::FailedPrecondition(format!(
                "a user-namespaced snapshot on {} layers needs {len} bytes of overlay options \
                 once containerd idmaps its lower layers; the kernel takes {MOUNT_DATA_LIMIT}",
                parents.len()
            )));
        }
        Ok(())
    }

    /// Staged directories are empty: deleted at once, not through the trash.
    fn discard_dir(&self, staged: &Staged) {
        let dir = self.layout.snapshots().join(staged.name());
        if let Err(err) = fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %dir.display(), %err, "cannot discard staged storage; Cleanup will retry");
        }
    }

    /// At start: an active snapshot or view whose directories a power loss took back
    /// (they are not synced at Prepare) is made again, empty, as its Prepare made it:
    /// an upper directory with its parent's root attributes, in its project, and
    /// owned by the container's root in a user namespace (else that root could not
    /// write into its own layer). Whatever survived keeps the owner and mode the
    /// container may have given it. Nothing the daemon acknowledged is lost: the
    /// layer was empty when Prepare answered, and writes into it are never promised
    /// durable. A committed layer's short link, derived from its id and not synced
    /// at Commit, is made again too.
    fn repair(&self, snapshots: &[LiveSnapshot]) -> Result<usize> {
        let mut repaired = 0;
        for snapshot in snapshots {
            let (id, kind) = (snapshot.id, snapshot.kind);
            if kind == Kind::Committed {
                if fs::symlink_metadata(self.layout.link(id)).is_err() {
                    self.link_layer(id)?;
                    repaired += 1;
                }
                continue;
            }
            let upper = self.layout.upper(id);
            let upper_missing = !upper.is_dir();
            let work_missing = kind == Kind::Active && !self.layout.work(id).is_dir();
            if !upper_missing && !work_missing {
                continue;
            }
            warn!(%id, %kind, path = %upper.display(), "storage of a live snapshot is missing after a crash; making the missing directories again");
            // The parent's attributes only onto an upper directory made anew.
            let parent = snapshot.parent.filter(|_| upper_missing);
            self.make_dirs(
                id,
                kind,
                parent,
                true,
                self.quotas.counted() && kind == Kind::Active,
            )?;
            // Labels were checked at Prepare; a mapping that no longer parses
            // (an older release's metadata) leaves the directories root's.
            match IdMapping::from_labels(&snapshot.labels) {
                Ok(Some(mapping)) => {
                    let remade: Vec<PathBuf> =
                        [(upper, upper_missing), (self.layout.work(id), work_missing)]
                            .into_iter()
                            .filter_map(|(dir, missing)| missing.then_some(dir))
                            .collect();
                    chown_to_container_root(&remade, &mapping)?;
                }
                Ok(None) => {}
                Err(err) => {
                    warn!(%id, %err, "the snapshot's id mapping labels do not parse; its remade directories stay root's");
                }
            }
            repaired += 1;
        }
        Ok(repaired)
    }

    /// The snapshot's mounts. An active snapshot without a parent is an overlay
    /// too, over an empty lower, not a bind of its layer: containerd's applier
    /// writes a layer straight into the `upperdir=` of a single overlay mount,
    /// turning whiteouts into overlay's (a 0/0 character device, the
    /// `trusted.overlay.opaque` xattr), while into a bind it only deletes what the
    /// whiteouts name, which is nothing in an empty layer. containerd 2.2's parallel
    /// unpack prepares every layer without its parent and commits it onto the
    /// parent afterwards; a layer unpacked into a bind would lose its deletions
    /// (containerd issue 13030, worked around in its unpacker for its own
    /// `overlayfs` snapshotter only).
    ///
    /// With `remap_ids`, a user-namespaced snapshot's mounts carry its
    /// `uidmap=`/`gidmap=` first, as containerd's own overlay snapshotter puts
    /// them, and name lower layers by their real directories: containerd idmaps
    /// their common directory and rewrites each path below it, and an `l/` link's
    /// relative target would resolve outside that idmapped copy.
    fn overlay_mounts(&self, snapshot: SnapshotRef<'_>, mapping: Option<&IdMapping>) -> Vec<Mount> {
        let id_options: Vec<String> = match mapping {
            Some(mapping) if self.remap_ids => mapping.mount_options().into(),
            _ => Vec::new(),
        };
        let bind = |source: PathBuf, read_only: bool| {
            let mut options = id_options.clone();
            options.push(if read_only { "ro" } else { "rw" }.into());
            options.push("rbind".into());
            Mount {
                fs_type: "bind".into(),
                source: source.display().to_string(),
                options,
            }
        };
        let id = snapshot.id;
        match (snapshot.kind, snapshot.parents) {
            (Kind::View, []) => vec![bind(self.layout.upper(id), true)],
            (Kind::View, [parent]) => vec![bind(self.layout.upper(*parent), true)],
            (Kind::Committed, []) => vec![bind(self.layout.upper(id), false)],
            (kind, parents) => {
                let lower = |p: &SnapshotId| {
                    if id_options.is_empty() {
                        self.layout.link(*p)
                    } else {
                        self.layout.upper(*p)
                    }
                };
                let lowers: Vec<String> = if parents.is_empty() {
                    vec![self.layout.empty().display().to_string()]
                } else {
                    parents
                        .iter()
                        .map(|p| lower(p).display().to_string())
                        .collect()
                };
                let mut options = id_options.clone();
                options.extend(self.overlay_options(id, kind, lowers));
                vec![Mount {
                    fs_type: "overlay".into(),
                    source: "overlay".into(),
                    options,
                }]
            }
        }
    }

    fn overlay_options(&self, id: SnapshotId, kind: Kind, lowers: Vec<String>) -> Vec<String> {
        let mut options = self.common_options.clone();
        if kind != Kind::View {
            options.push(format!("workdir={}", self.layout.work(id).display()));
            options.push(format!("upperdir={}", self.layout.upper(id).display()));
        }
        options.push(format!("lowerdir={}", lowers.join(":")));
        options
    }

    /// Creates or replaces the layer's short link in one rename, so concurrent
    /// Commits of one snapshot never see a missing or half-made link. Not synced: the
    /// link is a function of the id, made again at start if a power loss took it.
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
        made
    }

    /// Moves storage out of the way in one rename; the reaper deletes it later.
    fn detach(&self, path: &Path) -> Result<()> {
        let to = self.layout.trash().join(self.unique_name("gone-"));
        match fs::rename(path, &to) {
            Ok(()) => {
                // Only a finished reaper gives the pass back; this one runs
                // until the backend is dropped.
                let _ = self.reaper.hand_over(());
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
        self.detach(&self.layout.snapshot(id))?;
        self.quotas.release(id);
        Ok(())
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
        removed += self.quotas.clear_leaked(is_known)?;
        Ok(removed)
    }
}

impl Backend for OverlayBackend {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn stage(
        &self,
        id: SnapshotId,
        kind: Kind,
        parents: &[SnapshotId],
        labels: &Labels,
    ) -> rustlayer_core::Result<Staged> {
        let mapping = IdMapping::from_labels(labels)?;
        if self.remap_ids && mapping.is_some() {
            self.check_idmapped_options_fit(id, kind, parents)?;
        }
        let limits = self.quotas.limits_for(kind, labels)?;
        Ok(self.stage_dir(id, kind, parents, mapping.as_ref(), limits)?)
    }

    /// Staged directories already sit under the id.
    fn publish(&self, _staged: &Staged, _id: SnapshotId) -> rustlayer_core::Result<()> {
        Ok(())
    }

    fn discard(&self, staged: Staged) {
        self.discard_dir(&staged);
    }

    fn resume(&self, snapshots: &[LiveSnapshot]) -> rustlayer_core::Result<()> {
        let repaired = self.repair(snapshots)?;
        if repaired > 0 {
            info!(repaired, "made the storage of live snapshots again");
        }
        let active: Vec<SnapshotId> = snapshots
            .iter()
            .filter(|s| s.kind == Kind::Active)
            .map(|s| s.id)
            .collect();
        self.quotas
            .find_uncounted(|id| self.layout.upper(id), &active)?;
        Ok(())
    }

    fn mounts(
        &self,
        snapshot: SnapshotRef<'_>,
        labels: &Labels,
    ) -> rustlayer_core::Result<Vec<Mount>> {
        let mapping = IdMapping::from_labels(labels)?;
        Ok(self.overlay_mounts(snapshot, mapping.as_ref()))
    }

    /// Paths under the root named by ids and `l/` links, and the labels' mapping;
    /// nothing on disk is looked at.
    fn mounts_are_derived(&self) -> bool {
        true
    }

    /// A committed layer is a parent others are built on: its directories (not
    /// synced at Prepare) are made durable here, before the metadata says committed.
    /// A layer committed without a parent is a bottom layer for good, where the
    /// whiteouts containerd's applier wrote into it (see [`Self::overlay_mounts`])
    /// hide nothing but would show: overlay lists a whiteout in a directory no
    /// other layer has as an entry that cannot be looked up. They go, as the
    /// deletions of nothing they are. Whiteouts of a layer committed onto a parent
    /// stay: they hide the parent's files.
    ///
    /// With project quotas a layer with a parent is measured by its counters; one
    /// without is walked anyway, for its whiteouts.
    fn seal(&self, snapshot: SnapshotRef<'_>) -> rustlayer_core::Result<Usage> {
        let counted = match snapshot.parents {
            [] => None,
            _ => self.quotas.usage(snapshot.id)?,
        };
        let usage = match counted {
            Some(usage) => usage,
            None if snapshot.parents.is_empty() => {
                layer_usage(&self.layout.upper(snapshot.id), Whiteouts::Remove)?
            }
            None => layer_usage(&self.layout.upper(snapshot.id), Whiteouts::Keep)?,
        };
        sync_dir(&self.layout.snapshot(snapshot.id))?;
        sync_dir(&self.layout.snapshots())?;
        self.link_layer(snapshot.id)?;
        Ok(usage)
    }

    /// A layer is a directory of its own changes, whiteouts included, whatever it
    /// was prepared on: placing it on a parent is the metadata's business alone.
    fn supports_rebase(&self) -> bool {
        true
    }

    /// From the project's counters in constant time where the root keeps them,
    /// else by walking the layer.
    fn usage(&self, snapshot: SnapshotRef<'_>) -> rustlayer_core::Result<Usage> {
        match self.quotas.usage(snapshot.id)? {
            Some(usage) => Ok(usage),
            None => Ok(disk_usage(&self.layout.upper(snapshot.id))?),
        }
    }

    fn usage_is_counted(&self) -> bool {
        self.quotas.counted()
    }

    fn measure(&self, snapshot: SnapshotRef<'_>) -> rustlayer_core::Result<Measured> {
        Ok(match self.quotas.usage_and_limits(snapshot.id)? {
            Some((usage, limits)) => Measured {
                usage,
                method: UsageMethod::Counted,
                limits,
            },
            None => Measured {
                usage: disk_usage(&self.layout.upper(snapshot.id))?,
                method: UsageMethod::Walked,
                limits: Limits::default(),
            },
        })
    }

    fn limit_stats(
        &self,
        is_active: &dyn Fn(SnapshotId) -> bool,
    ) -> rustlayer_core::Result<Option<LimitStats>> {
        Ok(self.quotas.limit_stats(is_active)?)
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

fn chown_to_container_root(dirs: &[PathBuf], mapping: &IdMapping) -> Result<()> {
    let (uid, gid) = mapping.root();
    for dir in dirs {
        lchown(dir, Some(uid), Some(gid)).map_err(io_err("chown", dir))?;
    }
    Ok(())
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
            remap_ids: false,
            size_limits: SizeLimits::default(),
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
        let m = b.overlay_mounts(
            SnapshotRef {
                id: id(7),
                kind: Kind::Active,
                parents: &[],
            },
            None,
        );
        assert_eq!(
            m[0].fs_type, "overlay",
            "so the applier writes overlay whiteouts"
        );
        let opts = &m[0].options;
        assert!(opts.contains(&format!("upperdir={root}/snapshots/7/fs")));
        assert!(opts.contains(&format!("workdir={root}/snapshots/7/work")));
        assert_eq!(opts.last().unwrap(), &format!("lowerdir={root}/empty"));
        assert_eq!(fs::read_dir(b.layout.empty()).unwrap().count(), 0);

        let m = b.overlay_mounts(
            SnapshotRef {
                id: id(8),
                kind: Kind::View,
                parents: &[],
            },
            None,
        );
        assert_eq!(m[0].source, format!("{root}/snapshots/8/fs"));
        assert_eq!(m[0].options, ["ro", "rbind"]);

        let m = b.overlay_mounts(
            SnapshotRef {
                id: id(7),
                kind: Kind::View,
                parents: &[id(3)],
            },
            None,
        );
        assert_eq!(m[0].source, format!("{root}/snapshots/3/fs"));
        assert_eq!(m[0].options, ["ro", "rbind"]);

        let m = b.overlay_mounts(
            SnapshotRef {
                id: id(40),
                kind: Kind::Active,
                parents: &[id(39), id(2)],
            },
            None,
        );
        assert_eq!(m[0].fs_type, "overlay");
        let opts = &m[0].options;
        assert!(opts.contains(&format!("upperdir={root}/snapshots/40/fs")));
        assert!(opts.contains(&format!("workdir={root}/snapshots/40/work")));
        assert_eq!(
            opts.last().unwrap(),
            &format!("lowerdir={root}/l/13:{root}/l/2")
        );

        let m = b.overlay_mounts(
            SnapshotRef {
                id: id(41),
                kind: Kind::View,
                parents: &[id(39), id(2)],
            },
            None,
        );
        assert!(!m[0].options.iter().any(|o| o.starts_with("upperdir=")));
    }

    fn remapping_backend() -> (tempfile::TempDir, OverlayBackend) {
        let dir = tempfile::tempdir().unwrap();
        let backend = OverlayBackend::open(&OverlayOptions {
            root: dir.path().join("root"),
            remap_ids: true,
            size_limits: SizeLimits::default(),
        })
        .unwrap();
        (dir, backend)
    }

    fn mapped(map: &str) -> Labels {
        [
            (rustlayer_core::UID_MAPPING_LABEL.to_owned(), map.to_owned()),
            (rustlayer_core::GID_MAPPING_LABEL.to_owned(), map.to_owned()),
        ]
        .into()
    }

    #[test]
    fn mapped_mounts_carry_the_maps_and_name_lowers_by_their_directories() {
        let (_dir, b) = remapping_backend();
        let root = b.root().display().to_string();
        let labels = mapped("0:100000:65536,65536:300000:1");
        fn snapshot(n: u64, kind: Kind, parents: &[SnapshotId]) -> SnapshotRef<'_> {
            SnapshotRef {
                id: id(n),
                kind,
                parents,
            }
        }
        let maps = [
            "uidmap=0:100000:65536,65536:300000:1",
            "gidmap=0:100000:65536,65536:300000:1",
        ];
        let m = b
            .mounts(snapshot(40, Kind::Active, &[id(39), id(2)]), &labels)
            .unwrap();
        assert_eq!(m[0].fs_type, "overlay");
        assert_eq!(m[0].options[..2], maps);
        assert_eq!(
            m[0].options.last().unwrap(),
            &format!("lowerdir={root}/snapshots/39/fs:{root}/snapshots/2/fs")
        );
        assert!(
            m[0].options
                .contains(&format!("upperdir={root}/snapshots/40/fs"))
        );

        let m = b.mounts(snapshot(7, Kind::Active, &[]), &labels).unwrap();
        assert_eq!(m[0].fs_type, "overlay");
        assert_eq!(m[0].options[..2], maps);
        assert_eq!(
            m[0].options.last().unwrap(),
            &format!("lowerdir={root}/empty")
        );
        let m = b
            .mounts(snapshot(8, Kind::View, &[id(3)]), &labels)
            .unwrap();
        assert_eq!(m[0].options, [maps[0], maps[1], "ro", "rbind"]);

        let unmapped = b
            .mounts(snapshot(40, Kind::Active, &[id(39), id(2)]), &Labels::new())
            .unwrap();
        assert_eq!(
            unmapped[0].options.last().unwrap(),
            &format!("lowerdir={root}/l/13:{root}/l/2"),
            "without a mapping nothing changes"
        );
    }

    #[test]
    fn without_remap_ids_a_mapping_changes_no_mount() {
        let (_dir, b) = backend();
        let labels = mapped("0:100000:65536");
        let snapshot = SnapshotRef {
            id: id(40),
            kind: Kind::Active,
            parents: &[id(39), id(2)],
        };
        assert_eq!(
            b.mounts(snapshot, &labels).unwrap(),
            b.mounts(snapshot, &Labels::new()).unwrap()
        );
    }

    #[test]
    fn malformed_mappings_are_refused_before_any_storage() {
        let (_dir, b) = remapping_backend();
        let mut labels = mapped("0:100000:65536");
        labels.insert(rustlayer_core::GID_MAPPING_LABEL.into(), "0:1".into());
        let err = b.stage(id(5), Kind::Active, &[], &labels).unwrap_err();
        assert_eq!(err.code(), rustlayer_core::Code::InvalidArgument);
        assert!(!b.layout.snapshot(id(5)).exists());
    }

    #[test]
    fn idmapped_chains_whose_options_cannot_fit_a_page_are_refused() {
        let (_dir, b) = remapping_backend();
        // Maps the container's root to whoever runs the test, who may chown to it.
        let labels: Labels = [
            (
                rustlayer_core::UID_MAPPING_LABEL.to_owned(),
                format!("0:{}:1", rustix::process::geteuid().as_raw()),
            ),
            (
                rustlayer_core::GID_MAPPING_LABEL.to_owned(),
                format!("0:{}:1", rustix::process::getegid().as_raw()),
            ),
        ]
        .into();
        // containerd's shortest form is "<id>/fs" per layer: 500 six-digit ids do
        // not fit in a page, 400 three-digit ones do.
        let long: Vec<SnapshotId> = (100_000..100_500).rev().map(id).collect();
        let short: Vec<SnapshotId> = (100..500).rev().map(id).collect();
        for nearest in [long[0], short[0]] {
            fs::create_dir_all(b.layout.upper(nearest)).unwrap();
        }
        for kind in [Kind::Active, Kind::View] {
            let err = b.stage(id(200_000), kind, &long, &labels).unwrap_err();
            assert_eq!(
                err.code(),
                rustlayer_core::Code::FailedPrecondition,
                "{err}"
            );
            assert!(err.to_string().contains("500 layers"), "{err}");
            assert!(!b.layout.snapshot(id(200_000)).exists());
        }
        b.stage(id(200_000), Kind::Active, &long, &Labels::new())
            .expect("short links keep unmapped chains in a page");
        b.stage(id(600), Kind::Active, &short, &labels)
            .expect("fits");
    }

    #[test]
    fn five_hundred_layers_fit_in_a_page_once_compacted() {
        let (_dir, b) = backend();
        let parents: Vec<SnapshotId> = (100_000..100_500).rev().map(id).collect();
        let m = b.overlay_mounts(
            SnapshotRef {
                id: id(200_000),
                kind: Kind::Active,
                parents: &parents,
            },
            None,
        );
        let data = rustlayer_mount::OverlayData::parse(&m[0].options.join(","));
        let (dir, compact) = data.compact().unwrap();
        assert_eq!(dir, format!("{}/l", b.root().display()));
        assert!(
            compact.render().len() < 4096 - 512,
            "{}",
            compact.render().len()
        );
    }

    fn live(n: u64, kind: Kind, parent: Option<u64>) -> LiveSnapshot {
        LiveSnapshot {
            id: id(n),
            kind,
            parent: parent.map(id),
            labels: Labels::new(),
        }
    }

    #[test]
    #[ignore = "needs root: directories are given to a user namespace's root (chown)"]
    fn power_loss_repair_makes_layers_again_for_their_parent_and_user_namespace() {
        rustlayer_mount::testing::require_root(
            "directories are given to a user namespace's root (chown)",
        );
        let (_dir, b) = backend();
        staged(&b, 1, Kind::Committed, &[]);
        fs::set_permissions(b.layout.upper(id(1)), fs::Permissions::from_mode(0o750)).unwrap();
        let labels = mapped("0:100000:65536");
        for (n, kind) in [(2, Kind::Active), (3, Kind::View), (4, Kind::Active)] {
            b.stage(id(n), kind, &[id(1)], &labels).unwrap();
        }
        let owner = |p: &Path| {
            let m = fs::metadata(p).unwrap();
            (m.uid(), m.gid(), m.mode() & 0o7777)
        };
        // The container's root made its layer's root its own mode, then the
        // power loss took all of 2 and 3 and 4's work directory.
        fs::set_permissions(b.layout.upper(id(4)), fs::Permissions::from_mode(0o700)).unwrap();
        fs::remove_dir_all(b.layout.snapshot(id(2))).unwrap();
        fs::remove_dir_all(b.layout.snapshot(id(3))).unwrap();
        fs::remove_dir(b.layout.work(id(4))).unwrap();
        let in_namespace = |n, kind| LiveSnapshot {
            labels: labels.clone(),
            ..live(n, kind, Some(1))
        };
        let snapshots = [
            live(1, Kind::Committed, None),
            in_namespace(2, Kind::Active),
            in_namespace(3, Kind::View),
            in_namespace(4, Kind::Active),
        ];
        b.resume(&snapshots).unwrap();
        assert_eq!(owner(&b.layout.upper(id(2))), (100000, 100000, 0o750));
        assert_eq!(owner(&b.layout.work(id(2))), (100000, 100000, 0o711));
        assert_eq!(owner(&b.layout.upper(id(3))), (100000, 100000, 0o750));
        assert!(
            !b.layout.work(id(3)).exists(),
            "a view has no work directory"
        );
        assert_eq!(
            owner(&b.layout.upper(id(4))),
            (100000, 100000, 0o700),
            "what survived keeps what the container gave it"
        );
        assert_eq!(owner(&b.layout.work(id(4))), (100000, 100000, 0o711));

        // Without a mapping the remade layer is root's, with the parent's mode.
        fs::remove_dir_all(b.layout.snapshot(id(2))).unwrap();
        b.resume(&[
            live(1, Kind::Committed, None),
            live(2, Kind::Active, Some(1)),
        ])
        .unwrap();
        assert_eq!(owner(&b.layout.upper(id(2))), (0, 0, 0o750));
    }

    fn staged(b: &OverlayBackend, n: u64, kind: Kind, parents: &[SnapshotId]) -> Staged {
        let staged = b.stage_dir(id(n), kind, parents, None, None).unwrap();
        b.publish(&staged, id(n)).unwrap();
        staged
    }

    #[test]
    fn staging_makes_the_directories_under_the_id_and_discard_takes_them_away() {
        let (_dir, b) = backend();
        let staged = b.stage_dir(id(1), Kind::Active, &[], None, None).unwrap();
        assert!(b.layout.upper(id(1)).is_dir());
        assert!(b.layout.work(id(1)).is_dir());
        b.discard_dir(&staged);
        assert!(!b.layout.snapshot(id(1)).exists());

        b.stage_dir(id(2), Kind::View, &[], None, None).unwrap();
        assert!(b.layout.upper(id(2)).is_dir());
        assert!(
            !b.layout.work(id(2)).exists(),
            "a view has no work directory"
        );
        b.wait_reaped();
        assert_eq!(fs::read_dir(b.layout.trash()).unwrap().count(), 0);
    }

    #[test]
    fn staging_replaces_debris_under_a_reused_id() {
        let (_dir, b) = backend();
        fs::create_dir_all(b.layout.upper(id(5))).unwrap();
        fs::write(b.layout.upper(id(5)).join("stale"), b"x").unwrap();
        staged(&b, 5, Kind::Active, &[]);
        assert!(b.layout.upper(id(5)).is_dir());
        assert!(!b.layout.upper(id(5)).join("stale").exists());
    }

    #[test]
    fn start_makes_again_what_a_power_loss_took_from_live_snapshots() {
        let (_dir, b) = backend();
        staged(&b, 1, Kind::Active, &[]);
        staged(&b, 2, Kind::View, &[]);
        staged(&b, 3, Kind::Active, &[]);
        fs::write(b.layout.upper(id(3)).join("kept"), b"x").unwrap();
        staged(&b, 4, Kind::Active, &[]);
        b.link_layer(id(4)).unwrap();
        // As if the unsynced directories and link never reached the disk.
        fs::remove_dir_all(b.layout.snapshot(id(1))).unwrap();
        fs::remove_dir_all(b.layout.snapshot(id(2))).unwrap();
        fs::remove_dir(b.layout.work(id(3))).unwrap();
        fs::remove_file(b.layout.link(id(4))).unwrap();

        let all = [
            live(1, Kind::Active, None),
            live(2, Kind::View, None),
            live(3, Kind::Active, None),
            live(4, Kind::Committed, None),
        ];
        assert_eq!(b.repair(&all).unwrap(), 4);
        assert!(b.layout.upper(id(1)).is_dir() && b.layout.work(id(1)).is_dir());
        assert!(b.layout.upper(id(2)).is_dir());
        assert!(b.layout.work(id(3)).is_dir());
        assert!(
            b.layout.upper(id(3)).join("kept").exists(),
            "what was there stays"
        );
        assert_eq!(
            fs::read_link(b.layout.link(id(4))).unwrap(),
            Layout::link_target(id(4))
        );
        assert!(
            b.layout.link(id(4)).join(".").is_dir(),
            "the link leads to the layer"
        );
        assert_eq!(b.repair(&all).unwrap(), 0, "nothing left to repair");
    }

    #[test]
    fn cleanup_removes_only_unknown_storage_and_spares_live_staging() {
        let (_dir, b) = backend();
        for n in [1, 2] {
            staged(&b, n, Kind::Active, &[]);
            b.link_layer(id(n)).unwrap();
        }
        fs::create_dir(b.layout.snapshots().join("007")).unwrap();
        fs::create_dir(b.layout.staging().join("link-abandoned")).unwrap();
        // A Prepare in flight: its id is known to the snapshotter.
        b.stage_dir(id(3), Kind::Active, &[], None, None).unwrap();
        let in_flight_link = b.unique_name("link-");
        fs::create_dir(b.layout.staging().join(&in_flight_link)).unwrap();
        b.live().insert(in_flight_link.clone());

        let removed = b.cleanup_storage(&|i| i == id(1) || i == id(3)).unwrap();
        // snapshot 2, its link, "007", the abandoned staging entry
        assert_eq!(removed, 4);
        b.wait_reaped();
        assert!(b.layout.upper(id(1)).is_dir());
        assert!(b.layout.link(id(1)).exists());
        assert!(b.layout.upper(id(3)).is_dir());
        assert!(!b.layout.snapshot(id(2)).exists());
        assert!(!b.layout.link(id(2)).exists());
        assert!(b.layout.staging().join(in_flight_link).is_dir());
        assert_eq!(fs::read_dir(b.layout.trash()).unwrap().count(), 0);
    }

    #[test]
    fn remove_detaches_and_reaps() {
        let (_dir, b) = backend();
        staged(&b, 9, Kind::Active, &[]);
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
    fn opening_empties_the_empty_lower() {
        let (dir, b) = backend();
        fs::write(b.layout.empty().join("intruder"), b"x").unwrap();
        drop(b);
        let b = OverlayBackend::open(&OverlayOptions {
            root: dir.path().join("root"),
            remap_ids: false,
            size_limits: SizeLimits::default(),
        })
        .unwrap();
        assert_eq!(fs::read_dir(b.layout.empty()).unwrap().count(), 0);
        b.wait_reaped();
        assert_eq!(fs::read_dir(b.layout.trash()).unwrap().count(), 0);
    }

    #[test]
    #[ignore = "needs root: whiteouts are character devices (mknod)"]
    fn only_a_layer_without_a_parent_loses_its_whiteouts_at_seal() {
        rustlayer_mount::testing::require_root("whiteouts are character devices (mknod)");
        let (_dir, b) = backend();
        let whiteout_in = |n: u64| {
            let path = b.layout.upper(id(n)).join("gone");
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &path,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )
            .unwrap();
            path
        };
        staged(&b, 1, Kind::Active, &[]);
        let bottom = whiteout_in(1);
        let sealed = |n: u64, parents: &[SnapshotId]| {
            b.seal(SnapshotRef {
                id: id(n),
                kind: Kind::Active,
                parents,
            })
            .unwrap()
        };
        assert_eq!(sealed(1, &[]).inodes, 1);
        assert!(fs::symlink_metadata(&bottom).is_err());

        // Prepared without a parent, committed onto layer 1: its whiteout hides.
        staged(&b, 2, Kind::Active, &[]);
        let rebased = whiteout_in(2);
        assert_eq!(sealed(2, &[id(1)]).inodes, 2);
        assert!(fs::symlink_metadata(&rebased).is_ok());
    }

    #[test]
    fn child_layer_root_inherits_parent_mode() {
        let (_dir, b) = backend();
        staged(&b, 1, Kind::Active, &[]);
        fs::set_permissions(b.layout.upper(id(1)), fs::Permissions::from_mode(0o750)).unwrap();
        staged(&b, 2, Kind::Active, &[id(1)]);
        let mode = fs::metadata(b.layout.upper(id(2))).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o750);
    }

    fn quota_backend(
        quota: Arc<rustlayer_mount::RecordingProjectQuota>,
        size_limits: SizeLimits,
    ) -> (tempfile::TempDir, OverlayBackend) {
        let dir = tempfile::tempdir().unwrap();
        let backend = OverlayBackend::open_with_quota(
            &OverlayOptions {
                root: dir.path().join("root"),
                remap_ids: false,
                size_limits,
            },
            quota,
        )
        .unwrap();
        (dir, backend)
    }

    fn max_size(bytes: &str) -> Labels {
        [(rustlayer_core::MAX_SIZE_LABEL.to_owned(), bytes.to_owned())].into()
    }

    #[test]
    fn an_active_snapshot_gets_its_project_and_limit_at_prepare() {
        let quota = Arc::new(rustlayer_mount::RecordingProjectQuota::default());
        let defaults = SizeLimits {
            default_size: Some(5 << 20),
            default_inodes: Some(1000),
            enforce_size: false,
        };
        let (_dir, b) = quota_backend(Arc::clone(&quota), defaults);
        assert!(b.project_quotas() && b.usage_is_counted());

        b.stage(id(7), Kind::Active, &[], &max_size("1048576"))
            .unwrap();
        assert_eq!(
            quota.calls()[..2],
            [
                rustlayer_mount::QuotaCall::Assign {
                    dir: b.layout.upper(id(7)),
                    project: 7
                },
                rustlayer_mount::QuotaCall::Assign {
                    dir: b.layout.work(id(7)),
                    project: 7
                },
            ],
            "both directories, so overlay's copy-up rename from work into fs stays in one project"
        );
        assert_eq!(
            quota.limits(7),
            ProjectLimits {
                bytes: Some(1 << 20),
                inodes: Some(1000)
            },
            "the label wins over the default size"
        );

        b.stage(id(8), Kind::Active, &[], &Labels::new()).unwrap();
        assert_eq!(quota.limits(8).bytes, Some(5 << 20), "the default applies");

        let before = quota.calls().len();
        b.stage(id(9), Kind::View, &[], &max_size("4096")).unwrap();
        assert_eq!(
            quota.calls().len(),
            before,
            "a view is never written: no project"
        );
    }

    #[test]
    fn a_malformed_max_size_makes_no_storage_and_sets_no_limit() {
        let quota = Arc::new(rustlayer_mount::RecordingProjectQuota::default());
        let (_dir, b) = quota_backend(Arc::clone(&quota), SizeLimits::default());
        for bad in ["0", "-3", "1MiB"] {
            let err = b
                .stage(id(3), Kind::Active, &[], &max_size(bad))
                .unwrap_err();
            assert_eq!(err.code(), rustlayer_core::Code::InvalidArgument);
        }
        assert!(!b.layout.snapshot(id(3)).exists());
        assert!(quota.calls().is_empty());
    }

    #[test]
    fn usage_and_commit_read_the_counters_where_the_root_keeps_them() {
        let quota = Arc::new(rustlayer_mount::RecordingProjectQuota::default());
        let (_dir, b) = quota_backend(Arc::clone(&quota), SizeLimits::default());
        staged(&b, 1, Kind::Active, &[]);
        staged(&b, 2, Kind::Active, &[]);
        fs::write(b.layout.upper(id(2)).join("data"), vec![1u8; 8192]).unwrap();
        // Counters the walk could never produce prove where the figures come from.
        quota.charge(2, 123_456, 42);
        let active = |n: u64, parents: &'static [SnapshotId]| SnapshotRef {
            id: id(n),
            kind: Kind::Active,
            parents,
        };
        assert_eq!(
            b.usage(active(2, &[])).unwrap(),
            Usage {
                bytes: 123_456,
                inodes: 42
            }
        );
        const PARENT: &[SnapshotId] = &[SnapshotId::new(1)];
        assert_eq!(b.seal(active(2, PARENT)).unwrap().bytes, 123_456);

        // A layer without a parent is walked at Commit: its whiteouts must go.
        staged(&b, 3, Kind::Active, &[]);
        quota.charge(3, 999_999, 99);
        let walked = b.seal(active(3, &[])).unwrap();
        assert_eq!(walked, disk_usage(&b.layout.upper(id(3))).unwrap());
    }

    #[test]
    fn measure_reports_the_limits_and_near_limit_counts_active_snapshots_only() {
        let quota = Arc::new(rustlayer_mount::RecordingProjectQuota::default());
        let limits = SizeLimits {
            default_inodes: Some(1000),
            ..SizeLimits::default()
        };
        let (_dir, b) = quota_backend(Arc::clone(&quota), limits);
        for n in 1..=4 {
            b.stage(id(n), Kind::Active, &[], &max_size("100000"))
                .unwrap();
        }
        quota.charge(1, 90_000, 10); // exactly 90 % of its bytes
        quota.charge(2, 89_999, 10); // just under
        quota.charge(3, 100, 950); // near its inode limit
        quota.charge(4, 99_000, 10); // near, but committed: never written again
        let active = |n| SnapshotRef {
            id: id(n),
            kind: Kind::Active,
            parents: &[],
        };
        let measured = b.measure(active(1)).unwrap();
        assert_eq!(measured.method, UsageMethod::Counted);
        assert_eq!(
            measured.limits,
            Limits {
                bytes: Some(100_000),
                inodes: Some(1000)
            }
        );
        assert_eq!(measured.usage.bytes, 90_000);
        let stats = b.limit_stats(&|i| i != id(4)).unwrap().unwrap();
        assert_eq!(
            stats,
            LimitStats {
                limited: 3,
                near_limit: 2
            }
        );

        // Without quotas nothing is limited and usage is walked.
        let (_plain_dir, plain) = quota_backend(
            Arc::new(rustlayer_mount::RecordingProjectQuota::unsupported("no")),
            SizeLimits::default(),
        );
        staged(&plain, 1, Kind::Active, &[]);
        let walked = plain.measure(active(1)).unwrap();
        assert_eq!(walked.method, UsageMethod::Walked);
        assert_eq!(walked.limits, Limits::default());
        assert_eq!(plain.limit_stats(&|_| true).unwrap(), None);
    }

    #[test]
    fn remove_clears_the_limit_and_cleanup_clears_leaked_ones() {
        let quota = Arc::new(rustlayer_mount::RecordingProjectQuota::default());
        let (_dir, b) = quota_backend(Arc::clone(&quota), SizeLimits::default());
        b.stage(id(4), Kind::Active, &[], &max_size("65536"))
            .unwrap();
        b.stage(id(5), Kind::Active, &[], &max_size("65536"))
            .unwrap();
        b.remove(id(4)).unwrap();
        assert!(quota.limits(4).is_none());
        assert_eq!(quota.limits(5).bytes, Some(65536));

        // As if a crash came between a Remove's metadata and its storage, and an
        // id outside the snapshot range belongs to someone else.
        let leaked = ProjectLimits {
            bytes: Some(1 << 20),
            inodes: None,
        };
        let root = b.root().to_owned();
        quota.set_limits(&root, 6, leaked).unwrap();
        quota.set_limits(&root, 1 << 24, leaked).unwrap();
        let removed = b.cleanup_storage(&|i| i == id(5)).unwrap();
        assert!(quota.limits(6).is_none(), "leaked limit cleared");
        assert_eq!(
            quota.limits(5).bytes,
            Some(65536),
            "a live snapshot keeps its limit"
        );
        assert_eq!(
            quota.limits(1 << 24),
            leaked,
            "ids past the snapshot range are not ours"
        );
        assert_eq!(removed, 1);
        assert_eq!(b.cleanup_storage(&|i| i == id(5)).unwrap(), 0);
    }

    #[test]
    fn without_project_quotas_usage_is_walked_and_max_size_ignored_unless_enforced() {
        let quota = Arc::new(rustlayer_mount::RecordingProjectQuota::unsupported(
            "quotas are off",
        ));
        let (_dir, b) = quota_backend(Arc::clone(&quota), SizeLimits::default());
        assert!(!b.project_quotas());
        b.stage(id(1), Kind::Active, &[], &max_size("4096"))
            .unwrap();
        fs::write(b.layout.upper(id(1)).join("data"), vec![1u8; 8192]).unwrap();
        let snapshot = SnapshotRef {
            id: id(1),
            kind: Kind::Active,
            parents: &[],
        };
        assert_eq!(
            b.usage(snapshot).unwrap(),
            disk_usage(&b.layout.upper(id(1))).unwrap()
        );
        assert!(quota.calls().is_empty());

        let enforcing = SizeLimits {
            enforce_size: true,
            ..SizeLimits::default()
        };
        let (_dir, b) = quota_backend(Arc::clone(&quota), enforcing.clone());
        let err = b
            .stage(id(2), Kind::Active, &[], &max_size("4096"))
            .unwrap_err();
        assert_eq!(err.code(), rustlayer_core::Code::FailedPrecondition);
        assert!(err.to_string().contains("enforce_size"), "{err}");
        assert!(!b.layout.snapshot(id(2)).exists());
        b.stage(id(2), Kind::Active, &[], &Labels::new())
            .expect("without the label nothing is refused");

        let dir = tempfile::tempdir().unwrap();
        let err = OverlayBackend::open_with_quota(
            &OverlayOptions {
                root: dir.path().join("root"),
                remap_ids: false,
                size_limits: SizeLimits {
                    default_size: Some(1 << 30),
                    ..enforcing
                },
            },
            quota,
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot be applied"), "{err}");
    }

    #[test]
    fn layers_made_before_the_root_had_quotas_are_walked() {
        let quota = Arc::new(rustlayer_mount::RecordingProjectQuota::default());
        let (_dir, b) = quota_backend(Arc::clone(&quota), SizeLimits::default());
        // Made without a project, as on a root that had no quotas then.
        b.stage_dir(id(1), Kind::Active, &[], None, None).unwrap();
        fs::write(b.layout.upper(id(1)).join("data"), vec![1u8; 8192]).unwrap();
        staged(&b, 2, Kind::Active, &[]);
        b.stage(id(3), Kind::Active, &[], &Labels::new()).unwrap();
        quota.charge(3, 777, 7);
        b.resume(&[live(1, Kind::Active, None), live(3, Kind::Active, None)])
            .unwrap();
        let usage = |n| {
            b.usage(SnapshotRef {
                id: id(n),
                kind: Kind::Active,
                parents: &[],
            })
            .unwrap()
        };
        assert_eq!(usage(1), disk_usage(&b.layout.upper(id(1))).unwrap());
        assert_eq!(usage(3).bytes, 777);
    }

    #[test]
    fn storage_lost_to_a_power_loss_is_made_again_in_its_project() {
        let quota = Arc::new(rustlayer_mount::RecordingProjectQuota::default());
        let (_dir, b) = quota_backend(Arc::clone(&quota), SizeLimits::default());
        b.stage(id(5), Kind::Active, &[], &Labels::new()).unwrap();
        fs::remove_dir_all(b.layout.snapshot(id(5))).unwrap();
        b.resume(&[live(5, Kind::Active, None)]).unwrap();
        assert_eq!(quota.project_of(&b.layout.upper(id(5))).unwrap(), 5);
        assert_eq!(quota.project_of(&b.layout.work(id(5))).unwrap(), 5);
    }
}
