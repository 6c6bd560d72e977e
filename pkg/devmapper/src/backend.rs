//! The devmapper backend: every snapshot is a thin device named by its snapshot id
//! (the store hands out 24-bit ids, so the id is the thin id too); a new snapshot is
//! a thin snapshot of its parent's device, or of the base device that carries the
//! empty filesystem.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devicemapper::Device;
use rustlayer_core::reaper::Reaper;
use rustlayer_core::sync::lock;
use rustlayer_core::{
    Backend, IdMapping, Kind, Labels, LiveSnapshot, Mount, PoolStats, SnapshotId, SnapshotRef,
    Staged, Usage,
};
use rustlayer_mount::{LinuxLoopAttacher, LinuxMounter, Mounter};
use tracing::{debug, info, warn};

use crate::base;
use crate::config::{DevmapperConfig, FsType};
use crate::dm::{Deactivated, DeviceMapper, Dm};
use crate::error::{Error, Result};
use crate::pool::{Deleted, ManagedPool, Pool, ThinId};

/// Thin id 0 is the base device; the store never hands out snapshot id 0.
const BASE: ThinId = ThinId::BASE;
const SECTOR: u64 = 512;

#[derive(Debug, Clone)]
pub struct DevmapperOptions {
    pub root: PathBuf,
    pub config: DevmapperConfig,
    /// containerd declares this proxy's `remap-ids` capability: a user-namespaced
    /// snapshot's mount carries `uidmap=`/`gidmap=`, and containerd 2.x idmaps the
    /// whole ext4 or xfs mount (its mount code idmaps any mount but overlay as a
    /// whole). The device needs no chown: through that mount, its root-owned files
    /// show as the container's root.
    pub remap_ids: bool,
}

pub struct DevmapperBackend {
    inner: Arc<Inner>,
    /// Deletes removed thin devices in the background (`async_remove`).
    reaper: Option<Reaper<ThinId>>,
    remap_ids: bool,
}

struct Inner {
    dm: Box<dyn DeviceMapper>,
    pool: Pool,
    /// Every device this daemon activates is named `<prefix>-<id>`: unique per root,
    /// so two daemons on one node never touch each other's devices.
    prefix: String,
    sectors: u64,
    config: DevmapperConfig,
    /// Pool messages and the activation state they depend on (a snapshot's origin
    /// must be inactive or suspended) change together.
    lock: Mutex<()>,
}

impl std::fmt::Debug for DevmapperBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevmapperBackend")
            .field("pool", &self.inner.pool.name())
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

/// The device-name prefix for a root: stable across restarts, distinct per root.
pub fn device_prefix(root: &Path) -> String {
    // FNV-1a: tiny, stable across releases (unlike std's hasher).
    let mut hash: u32 = 0x811c_9dc5;
    for byte in root.as_os_str().as_encoded_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("rustlayer-{hash:08x}")
}

impl DevmapperBackend {
    pub fn open(options: &DevmapperOptions) -> Result<DevmapperBackend> {
        let config = options.config.clone();
        config.validate()?;
        let root = fs::canonicalize(&options.root).map_err(Error::io("resolve", &options.root))?;
        let prefix = device_prefix(&root);
        let dm = Dm::open()?;
        let dir = root.join("devmapper");
        fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        let pool = match &config.pool_name {
            Some(name) => Pool::open_existing(&dm, name)?,
            None => Pool::open_managed(
                &dm,
                &LinuxLoopAttacher,
                &format!("{prefix}-pool"),
                &ManagedPool {
                    dir: &dir,
                    data_bytes: config.pool_data_size.get(),
                    metadata_bytes: config.pool_metadata_size.get(),
                    discard_passdown: config.discard_blocks,
                },
            )?,
        };
        let marker = dir.join("base");
        DevmapperBackend::assemble(
            Box::new(dm),
            pool,
            prefix,
            config,
            options.remap_ids,
            |inner| inner.ensure_base(&LinuxMounter, &marker),
        )
    }

    /// The backend over an opened pool; `ensure_base` runs before any removal can.
    fn assemble(
        dm: Box<dyn DeviceMapper>,
        pool: Pool,
        prefix: String,
        config: DevmapperConfig,
        remap_ids: bool,
        ensure_base: impl FnOnce(&Inner) -> Result<()>,
    ) -> Result<DevmapperBackend> {
        let sectors = config.base_image_size.get().div_ceil(4096) * 4096 / SECTOR;
        let inner = Arc::new(Inner {
            dm,
            pool,
            prefix,
            sectors,
            config,
            lock: Mutex::new(()),
        });
        ensure_base(&inner)?;
        let reaper = if inner.config.async_remove {
            Some(start_reaper(Arc::clone(&inner))?)
        } else {
            None
        };
        info!(
            pool = inner.pool.name(),
            managed = inner.pool.is_managed(),
            prefix = %inner.prefix,
            base_size = %inner.config.base_image_size,
            fs = %inner.config.fs_type,
            "devmapper backend ready"
        );
        Ok(DevmapperBackend {
            inner,
            reaper,
            remap_ids,
        })
    }

    pub fn pool_name(&self) -> &str {
        self.inner.pool.name()
    }

    /// The name of the device a snapshot is activated as.
    pub fn device_name(&self, id: SnapshotId) -> String {
        self.inner.device_name(thin_id(id).unwrap_or(BASE))
    }

    /// Blocks until every Remove so far has deleted its device (tests, shutdown).
    pub fn drain_removals(&self) {
        if let Some(reaper) = &self.reaper {
            reaper.wait_idle();
        }
    }
}

impl Inner {
    fn device_name(&self, id: ThinId) -> String {
        if id == BASE {
            format!("{}-base", self.prefix)
        } else {
            format!("{}-{}", self.prefix, id.get())
        }
    }

    fn activate(&self, id: ThinId, read_only: bool) -> Result<Device> {
        let name = self.device_name(id);
        if let Some((device, _)) = self.dm.device(&name)? {
            return Ok(device);
        }
        self.dm.activate(
            &name,
            self.sectors,
            "thin",
            &self.pool.thin_params(id),
            read_only,
        )
    }

    fn deactivate(&self, id: ThinId) -> Result<()> {
        let name = self.device_name(id);
        match self.dm.deactivate(&name)? {
            Deactivated::Done | Deactivated::Absent => Ok(()),
            Deactivated::Busy => Err(Error::Busy { device: name }),
        }
    }

    /// Deactivates and deletes a thin device; absent devices are fine.
    fn delete(&self, id: ThinId) -> Result<Deleted> {
        let _guard = lock(&self.lock);
        self.deactivate(id)?;
        let deleted = self.pool.delete(&*self.dm, id)?;
        debug!(thin = id.get(), ?deleted, "thin device deleted");
        Ok(deleted)
    }

    /// Makes the base device and its filesystem the first time a pool is used; a
    /// marker file records it was finished, so a crash midway starts over.
    fn ensure_base(&self, mounter: &dyn Mounter, marker: &Path) -> Result<()> {
        let wanted = base::marker_contents(self.config.fs_type, self.sectors * SECTOR);
        if base::is_made(marker, &wanted, self.pool.is_fresh())? {
            return Ok(());
        }
        let _guard = lock(&self.lock);
        self.deactivate(BASE)?;
        self.pool.delete(&*self.dm, BASE)?;
        self.pool.create_thin(&*self.dm, BASE)?;
        let device = self.activate(BASE, false)?;
        let made = node(device).and_then(|path| {
            base::make_filesystem(self.config.fs_type, &path, &self.config.fs_options)?;
            base::empty_root(
                mounter,
                self.config.fs_type,
                &path,
                &marker.with_extension("mnt"),
            )
        });
        self.deactivate(BASE)?;
        made?;
        base::write_durably(marker, wanted.as_bytes())?;
        Ok(())
    }

    fn check_space(&self) -> Result<()> {
        let usage = self.pool.usage(&*self.dm)?;
        match usage.refusal(self.pool.name(), self.config.min_free_percent) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Creates `id` as a snapshot of `origin`. The origin is normally an inactive
    /// committed layer; an active one is suspended meanwhile, as dm-thin requires.
    fn snapshot(&self, id: ThinId, origin: ThinId) -> Result<()> {
        let origin_name = self.device_name(origin);
        let active_origin = self.dm.device(&origin_name)?.is_some();
        if active_origin {
            self.dm.suspend(&origin_name)?;
        }
        let created = match self.pool.create_snapshot(&*self.dm, id, origin) {
            // Debris of an id whose cleanup never ran: the store says it is free.
            Err(err) if err.errno() == Some(libc::EEXIST) => {
                warn!(thin = id.get(), "replacing a stale thin device");
                self.deactivate(id)
                    .and_then(|()| self.pool.delete(&*self.dm, id))
                    .and_then(|_| self.pool.create_snapshot(&*self.dm, id, origin))
            }
            other => other,
        };
        if active_origin {
            self.dm.resume(&origin_name)?;
        }
        created
    }

    fn thin_usage(&self, id: ThinId) -> Result<Usage> {
        let name = self.device_name(id);
        let (_, status) = self.dm.status(&name, false)?;
        // "<mapped sectors> <highest mapped sector>", or "Fail".
        let mapped: u64 = status
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::Pool(format!("thin device {name} reports {status:?}")))?;
        Ok(Usage {
            bytes: mapped * SECTOR,
            inodes: 0,
        })
    }

    fn mount_for(&self, id: ThinId, kind: Kind) -> Result<Mount> {
        let device = self.activate(id, kind == Kind::View)?;
        let source = node(device)?;
        let mut options = Vec::new();
        if kind == Kind::View {
            options.push("ro".to_owned());
        }
        match self.config.fs_type {
            // Every snapshot carries the base filesystem's UUID; XFS refuses to mount
            // a second filesystem with a UUID already mounted.
            FsType::Xfs => {
                options.push("nouuid".to_owned());
                if kind == Kind::View {
                    options.push("norecovery".to_owned());
                }
            }
            FsType::Ext4 => {
                if kind == Kind::View {
                    options.push("noload".to_owned());
                }
            }
        }
        Ok(Mount {
            fs_type: self.config.fs_type.as_str().to_owned(),
            source: source.to_string_lossy().into_owned(),
            options,
        })
    }

    /// Ids of our active thin devices (the base excluded).
    fn active_ids(&self) -> Result<Vec<ThinId>> {
        let prefix = format!("{}-", self.prefix);
        Ok(self
            .dm
            .names_with_prefix(&prefix)?
            .iter()
            .filter_map(|name| name[prefix.len()..].parse::<u64>().ok())
            .filter_map(ThinId::new)
            .collect())
    }
}

/// The thread that deletes removed devices. It finishes its queue even when the
/// backend is dropped: each deletion is short.
fn start_reaper(inner: Arc<Inner>) -> Result<Reaper<ThinId>> {
    Reaper::start("rustlayer-thin-reaper", move |id: ThinId, _| {
        // A device left here stays reserved in the store; Cleanup retries.
        if let Err(err) = inner.delete(id) {
            warn!(thin = id.get(), %err, "thin device not deleted; Cleanup retries");
        }
    })
    .map_err(Error::io("start thread", "rustlayer-thin-reaper"))
}

impl Backend for DevmapperBackend {
    fn name(&self) -> &'static str {
        "devmapper"
    }

    fn stage(
        &self,
        id: SnapshotId,
        kind: Kind,
        parents: &[SnapshotId],
        _labels: &Labels,
    ) -> rustlayer_core::Result<Staged> {
        let inner = &self.inner;
        let thin = thin_id(id)?;
        let origin = match parents.first() {
            Some(parent) => thin_id(*parent)?,
            None => BASE,
        };
        inner.check_space()?;
        let _guard = lock(&inner.lock);
        inner.snapshot(thin, origin)?;
        if kind != Kind::Committed
            && let Err(err) = inner.activate(thin, kind == Kind::View)
        {
            let _ = inner.pool.delete(&*inner.dm, thin);
            return Err(err.into());
        }
        Ok(Staged::new(id.get().to_string()))
    }

    /// The device exists under its id already; the metadata row makes it a snapshot.
    fn publish(&self, staged: &Staged, id: SnapshotId) -> rustlayer_core::Result<()> {
        if staged.name() != id.get().to_string() {
            return Err(rustlayer_core::Error::Internal(format!(
                "thin device {} staged for another id than {id}",
                staged.name()
            )));
        }
        Ok(())
    }

    fn discard(&self, staged: Staged) {
        let Some(id) = staged.name().parse().ok().and_then(ThinId::new) else {
            return;
        };
        if let Err(err) = self.inner.delete(id) {
            warn!(thin = id.get(), %err, "staged thin device left for Cleanup");
        }
    }

    fn mounts(
        &self,
        snapshot: SnapshotRef<'_>,
        labels: &Labels,
    ) -> rustlayer_core::Result<Vec<Mount>> {
        let thin = thin_id(snapshot.id)?;
        let mut mount = self.inner.mount_for(thin, snapshot.kind)?;
        if self.remap_ids
            && let Some(mapping) = IdMapping::from_labels(labels)?
        {
            mount.options.splice(0..0, mapping.mount_options());
        }
        Ok(vec![mount])
    }

    /// Measures the device and deactivates it: committed layers are only ever read
    /// through snapshots of them, and an inactive origin needs no suspend. A layer
    /// still mounted (containerd's unpacker unmounts first, but a client need not)
    /// stays active; snapshots of it suspend it meanwhile.
    fn seal(&self, snapshot: SnapshotRef<'_>) -> rustlayer_core::Result<Usage> {
        let inner = &self.inner;
        let thin = thin_id(snapshot.id)?;
        let _guard = lock(&inner.lock);
        inner.activate(thin, false)?;
        let usage = inner.thin_usage(thin)?;
        if inner.dm.deactivate(&inner.device_name(thin))? == Deactivated::Busy {
            debug!(thin = thin.get(), "committed while mounted; stays active");
        }
        Ok(usage)
    }

    /// A thin device is a copy-on-write snapshot of its parent's device, taken at
    /// Prepare: a layer prepared without a parent is a snapshot of the empty base,
    /// and no metadata change can put another device's blocks under it.
    fn supports_rebase(&self) -> bool {
        false
    }

    fn usage(&self, snapshot: SnapshotRef<'_>) -> rustlayer_core::Result<Usage> {
        let thin = thin_id(snapshot.id)?;
        self.inner.activate(thin, snapshot.kind == Kind::View)?;
        Ok(self.inner.thin_usage(thin)?)
    }

    fn remove(&self, id: SnapshotId) -> rustlayer_core::Result<()> {
        let thin = thin_id(id)?;
        if let Some(reaper) = &self.reaper
            && reaper.hand_over(thin).is_ok()
        {
            return Ok(());
        }
        self.inner.delete(thin)?;
        Ok(())
    }

    fn cleanup(
        &self,
        is_known: &dyn Fn(SnapshotId) -> bool,
        suspects: &[SnapshotId],
    ) -> rustlayer_core::Result<usize> {
        let inner = &self.inner;
        let mut removed = 0;
        for thin in inner.active_ids()? {
            if !is_known(SnapshotId::new(u64::from(thin.get()))) {
                inner.delete(thin)?;
                removed += 1;
            }
        }
        for id in suspects {
            if inner.delete(thin_id(*id)?)? == Deleted::Done {
                removed += 1;
            }
        }
        if removed > 0 {
            info!(
                removed,
                "cleanup deleted thin devices the metadata does not know"
            );
        }
        Ok(removed)
    }

    /// Committed layers stay inactive until a snapshot of them is taken.
    fn resume(&self, snapshots: &[LiveSnapshot]) -> rustlayer_core::Result<()> {
        for s in snapshots.iter().filter(|s| s.kind != Kind::Committed) {
            self.inner.activate(thin_id(s.id)?, s.kind == Kind::View)?;
        }
        Ok(())
    }

    /// Deactivates every device nothing has open; a mounted one (a running
    /// container) stays, and with it the pool.
    fn shutdown(&self) {
        if let Some(reaper) = &self.reaper {
            reaper.finish();
        }
        let inner = &self.inner;
        let mut busy = 0;
        let ids = inner.active_ids().unwrap_or_default();
        for id in ids.into_iter().chain([BASE]) {
            match inner.dm.deactivate(&inner.device_name(id)) {
                Ok(Deactivated::Busy) => busy += 1,
                Ok(_) => {}
                Err(err) => {
                    warn!(thin = id.get(), %err, "cannot deactivate");
                    busy += 1;
                }
            }
        }
        if inner.pool.is_managed() && busy == 0 {
            match inner.pool.deactivate(&*inner.dm) {
                Ok(_) => info!(pool = inner.pool.name(), "thin pool deactivated"),
                Err(err) => warn!(%err, "thin pool left active"),
            }
        } else if busy > 0 {
            info!(busy, "devices in use stay active until the next start");
        }
    }

    fn pool_stats(&self) -> rustlayer_core::Result<Option<PoolStats>> {
        let inner = &self.inner;
        let usage = inner.pool.usage(&*inner.dm)?;
        Ok(Some(PoolStats {
            pool: inner.pool.name().to_owned(),
            data_used_bytes: usage.data_used_bytes,
            data_size_bytes: usage.data_size_bytes,
            metadata_used_bytes: usage.metadata_used_bytes,
            metadata_size_bytes: usage.metadata_size_bytes,
            thin_devices: inner.active_ids()?.len() as u64,
        }))
    }
}

fn thin_id(id: SnapshotId) -> rustlayer_core::Result<ThinId> {
    ThinId::new(id.get())
        .filter(|thin| *thin != BASE)
        .ok_or_else(|| rustlayer_core::Error::Internal(format!("snapshot id {id} is no thin id")))
}

/// devtmpfs makes `/dev/dm-N` for every active device, with or without udev.
fn node(device: Device) -> Result<PathBuf> {
    let path = PathBuf::from(format!("/dev/dm-{}", device.minor));
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::Pool(format!(
            "device node {} is missing: /dev must be a devtmpfs",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use rustlayer_mount::RecordingLoopAttacher;

    use super::*;
    use crate::recording_dm::{DmCall, RecordingDm};

    const POOL: &str = "test-pool";
    const PREFIX: &str = "test";

    fn config() -> DevmapperConfig {
        DevmapperConfig {
            async_remove: false,
            ..DevmapperConfig::default()
        }
    }

    /// A backend over an existing pool with the base device made (thin id 0).
    fn backend(dm: &RecordingDm) -> DevmapperBackend {
        dm.add_thin(0);
        let pool = Pool::open_existing(dm, POOL).expect("the pool opens");
        DevmapperBackend::assemble(
            Box::new(dm.clone()),
            pool,
            PREFIX.into(),
            config(),
            false,
            |_| Ok(()),
        )
        .expect("the backend assembles")
    }

    fn message(text: &str) -> DmCall {
        DmCall::Message {
            device: POOL.into(),
            message: text.into(),
        }
    }

    fn activate(device: &str) -> DmCall {
        DmCall::Activate {
            device: device.into(),
            read_only: false,
        }
    }

    fn stage(backend: &DevmapperBackend, id: u64, kind: Kind, parents: &[u64]) {
        let parents: Vec<SnapshotId> = parents.iter().copied().map(SnapshotId::new).collect();
        backend
            .stage(SnapshotId::new(id), kind, &parents, &Labels::new())
            .expect("stage succeeds");
    }

    #[test]
    fn a_layer_without_parent_is_a_snapshot_of_the_base() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage(&backend, 1, Kind::Active, &[]);
        assert_eq!(
            dm.calls(),
            vec![message("create_snap 1 0"), activate("test-1")]
        );
        assert!(dm.has_thin(1));
    }

    #[test]
    fn a_committed_layer_is_left_inactive() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage(&backend, 1, Kind::Committed, &[]);
        assert_eq!(dm.calls(), vec![message("create_snap 1 0")]);
        assert!(!dm.is_active("test-1"));
    }

    #[test]
    fn a_stale_thin_device_under_a_free_id_is_replaced() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        dm.add_thin(5);
        stage(&backend, 5, Kind::Committed, &[]);
        assert_eq!(
            dm.calls(),
            vec![
                message("create_snap 5 0"),
                DmCall::Deactivate("test-5".into()),
                message("delete 5"),
                message("create_snap 5 0"),
            ]
        );
    }

    #[test]
    fn an_active_origin_is_suspended_around_the_snapshot() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage(&backend, 3, Kind::Active, &[]);
        dm.set_open("test-3", 1);
        dm.forget_calls();
        stage(&backend, 4, Kind::Active, &[3]);
        assert_eq!(
            dm.calls(),
            vec![
                DmCall::Suspend("test-3".into()),
                message("create_snap 4 3"),
                DmCall::Resume("test-3".into()),
                activate("test-4"),
            ]
        );
    }

    #[test]
    fn an_inactive_origin_is_not_suspended() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage(&backend, 3, Kind::Committed, &[]);
        dm.forget_calls();
        stage(&backend, 4, Kind::View, &[3]);
        assert_eq!(
            dm.calls(),
            vec![
                message("create_snap 4 3"),
                DmCall::Activate {
                    device: "test-4".into(),
                    read_only: true,
                },
            ]
        );
    }

    #[test]
    fn a_nearly_full_pool_refuses_new_snapshots_and_changes_nothing() {
        let dm = RecordingDm::with_pool(POOL, 95, 100);
        let backend = backend(&dm);
        let err = backend
            .stage(SnapshotId::new(1), Kind::Active, &[], &Labels::new())
            .expect_err("a pool 95% full refuses with min_free_percent 10");
        assert_eq!(
            err.code(),
            rustlayer_core::Code::ResourceExhausted,
            "{err:?}"
        );
        assert_eq!(dm.calls(), vec![]);
        assert!(!dm.has_thin(1));
        dm.set_pool_usage(POOL, 89, 100);
        stage(&backend, 1, Kind::Active, &[]);
        assert!(dm.has_thin(1));
    }

    #[test]
    fn remove_refuses_a_mounted_device_and_keeps_it() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage(&backend, 1, Kind::Active, &[]);
        dm.set_open("test-1", 1);
        let err = backend
            .remove(SnapshotId::new(1))
            .expect_err("a mounted device cannot go");
        assert_eq!(
            err.code(),
            rustlayer_core::Code::FailedPrecondition,
            "{err:?}"
        );
        assert!(dm.has_thin(1));
        dm.set_open("test-1", 0);
        backend.remove(SnapshotId::new(1)).expect("remove succeeds");
        assert!(!dm.has_thin(1));
        assert!(!dm.is_active("test-1"));
    }

    #[test]
    fn cleanup_deletes_unknown_active_devices_and_suspects() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage(&backend, 1, Kind::Active, &[]);
        stage(&backend, 2, Kind::Active, &[]);
        stage(&backend, 3, Kind::Committed, &[]);
        let removed = backend
            .cleanup(&|id| id.get() == 1, &[SnapshotId::new(3)])
            .expect("cleanup succeeds");
        assert_eq!(removed, 2);
        assert!(dm.has_thin(1) && dm.is_active("test-1"));
        assert!(!dm.has_thin(2) && !dm.is_active("test-2"));
        assert!(!dm.has_thin(3));
        assert!(dm.has_thin(0), "the base device is never cleaned up");
    }

    #[test]
    fn cleanup_counts_only_suspects_it_found() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        let removed = backend
            .cleanup(&|_| true, &[SnapshotId::new(9)])
            .expect("an absent suspect is fine");
        assert_eq!(removed, 0);
        assert_eq!(
            dm.calls(),
            vec![DmCall::Deactivate("test-9".into()), message("delete 9")]
        );
    }

    fn managed(dm: &RecordingDm, dir: &Path) -> (DevmapperBackend, RecordingLoopAttacher) {
        let loops = RecordingLoopAttacher::default();
        let pool = Pool::open_managed(
            dm,
            &loops,
            POOL,
            &ManagedPool {
                dir,
                data_bytes: 64 << 20,
                metadata_bytes: 4 << 20,
                discard_passdown: true,
            },
        )
        .expect("the managed pool is made");
        dm.set_pool_usage(POOL, 0, 1024);
        dm.add_thin(0);
        let backend = DevmapperBackend::assemble(
            Box::new(dm.clone()),
            pool,
            PREFIX.into(),
            config(),
            false,
            |_| Ok(()),
        )
        .expect("the backend assembles");
        (backend, loops)
    }

    #[test]
    fn a_managed_pool_sits_on_its_metadata_and_data_loop_devices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dm = RecordingDm::default();
        let (backend, loops) = managed(&dm, dir.path());
        assert!(backend.inner.pool.is_managed() && backend.inner.pool.is_fresh());
        assert_eq!(
            loops.attached(),
            vec![dir.path().join("data"), dir.path().join("metadata")]
        );
        let (target, table) = dm.status(POOL, true).expect("the pool is active");
        assert_eq!(target, "thin-pool");
        // The metadata device (second attach, loop1) comes first in the table.
        assert!(table.starts_with("7:1 7:0 128 "), "{table}");
        assert!(!table.contains("no_discard_passdown"), "{table}");
    }

    #[test]
    fn shutdown_takes_a_managed_pool_down_when_nothing_is_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dm = RecordingDm::default();
        let (backend, _loops) = managed(&dm, dir.path());
        stage(&backend, 1, Kind::Active, &[]);
        dm.forget_calls();
        backend.shutdown();
        assert_eq!(
            dm.calls(),
            vec![
                DmCall::Deactivate("test-1".into()),
                DmCall::Deactivate("test-base".into()),
                DmCall::Deactivate(POOL.into()),
            ]
        );
        assert!(!dm.is_active(POOL));
    }

    #[test]
    fn shutdown_leaves_a_mounted_device_and_its_pool_active() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dm = RecordingDm::default();
        let (backend, _loops) = managed(&dm, dir.path());
        stage(&backend, 1, Kind::Active, &[]);
        stage(&backend, 2, Kind::Active, &[]);
        dm.set_open("test-2", 1);
        backend.shutdown();
        assert!(!dm.is_active("test-1"));
        assert!(dm.is_active("test-2"));
        assert!(dm.is_active(POOL));
    }

    #[test]
    fn an_existing_pool_is_never_taken_down() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        backend.shutdown();
        assert!(dm.is_active(POOL));
    }
}
