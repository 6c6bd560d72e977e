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
    Backend, IdMapping, Kind, Labels, LiveSnapshot, MAX_SIZE_LABEL, Mount, PoolStats, SnapshotId,
    SnapshotRef, Staged, Usage, validate,
};
use rustlayer_mount::{LinuxLoopAttacher, LinuxMounter, Mounter};
use tracing::{debug, info, warn};

use crate::base::{self, GrowFs, OnlineGrow};
use crate::config::{DevmapperConfig, FsType};
use crate::dm::{Deactivated, DeviceMapper, Dm};
use crate::error::{Error, Result};
use crate::pool::{Deleted, ManagedPool, Pool, ThinId};
use crate::sizes::{DeviceSizes, named_by_thin_id};

/// Thin id 0 is the base device; the store never hands out snapshot id 0.
const BASE: ThinId = ThinId::BASE;
const SECTOR: u64 = 512;
/// Filesystem block size: device sizes are whole blocks.
const BLOCK: u64 = 4096;

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
    /// The base device's size; every thin device without a size record has it.
    sectors: u64,
    config: DevmapperConfig,
    sizes: Resizing,
    /// Pool messages and the activation state they depend on (a snapshot's origin
    /// must be inactive or suspended) change together. Held only for such short
    /// steps: growing a new snapshot's filesystem (seconds) runs outside it, see
    /// [`Inner::make`].
    lock: Mutex<()>,
}

/// A grow's private mountpoint is `<scratch>/grow-<thin id>`.
const GROW_MOUNTPOINT: &str = "grow-";

impl Resizing {
    fn grow_mountpoint(&self, id: ThinId) -> PathBuf {
        self.scratch.join(format!("{GROW_MOUNTPOINT}{}", id.get()))
    }

    /// The private mountpoints grows left, with their devices' ids.
    fn grow_mountpoints(&self) -> Result<Vec<(ThinId, PathBuf)>> {
        named_by_thin_id(&self.scratch, GROW_MOUNTPOINT)
    }
}

/// A new snapshot's size and its origin's, both in sectors. The origin's is read
/// once, before the snapshot is taken: its record may go with it meanwhile.
#[derive(Debug, Clone, Copy)]
struct Sizing {
    sectors: u64,
    origin_sectors: u64,
}

impl Sizing {
    /// Whether the copied filesystem must be grown to fill the new device.
    fn grows(self) -> bool {
        self.sectors > self.origin_sectors
    }
}

/// What a snapshot larger than the base needs: the durable size of every such
/// device, the filesystem grower, and a directory for its private mountpoints.
struct Resizing {
    records: DeviceSizes,
    grow: Box<dyn GrowFs>,
    scratch: PathBuf,
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
        let sizes = Resizing {
            records: DeviceSizes::open(&dir.join("sizes"))?,
            grow: Box::new(OnlineGrow {
                mounter: LinuxMounter,
            }),
            scratch: dir.clone(),
        };
        DevmapperBackend::assemble(
            Box::new(dm),
            pool,
            prefix,
            config,
            sizes,
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
        sizes: Resizing,
        remap_ids: bool,
        ensure_base: impl FnOnce(&Inner) -> Result<()>,
    ) -> Result<DevmapperBackend> {
        let sectors = config.base_image_size.get().div_ceil(BLOCK) * BLOCK / SECTOR;
        let inner = Arc::new(Inner {
            dm,
            pool,
            prefix,
            sectors,
            config,
            sizes,
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

    /// A device's own size in sectors: what it was prepared with, the base's if
    /// it has no record.
    fn sectors_of(&self, id: ThinId) -> Result<u64> {
        if id == BASE {
            return Ok(self.sectors);
        }
        Ok(self
            .sizes
            .records
            .get(id)?
            .map_or(self.sectors, |bytes| bytes / SECTOR))
    }

    fn activate(&self, id: ThinId, read_only: bool) -> Result<Device> {
        let name = self.device_name(id);
        if let Some((device, _)) = self.dm.device(&name)? {
            return Ok(device);
        }
        self.dm.activate(
            &name,
            self.sectors_of(id)?,
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

    /// Deactivates and deletes a thin device, then its size record; absent
    /// devices are fine.
    fn delete(&self, id: ThinId) -> Result<Deleted> {
        let _guard = lock(&self.lock);
        self.deactivate(id)?;
        let deleted = self.pool.delete(&*self.dm, id)?;
        self.sizes.records.forget(id)?;
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
        let mountpoint = marker.with_extension("mnt");
        // A crash while the base's root was being emptied left its mount, which
        // holds the device open: the device could be neither deactivated nor deleted.
        base::release_mount(mounter, &mountpoint)?;
        self.deactivate(BASE)?;
        self.pool.delete(&*self.dm, BASE)?;
        self.pool.create_thin(&*self.dm, BASE)?;
        let device = self.activate(BASE, false)?;
        let made = node(device).and_then(|path| {
            base::make_filesystem(self.config.fs_type, &path, &self.config.fs_options)?;
            base::empty_root(mounter, self.config.fs_type, &path, &mountpoint)
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

    /// Makes a new snapshot `id` of `origin`, as large as `sizing` says, activated
    /// as `kind` needs (a committed layer stays inactive). A failure leaves neither
    /// device nor size record behind.
    ///
    /// Only the thin snapshot itself is taken under the backend's lock; growing its
    /// filesystem, the slow part, is not, so other Prepares, Commits, Removes and
    /// Usage calls go on meanwhile. That is safe because:
    /// - nothing else touches `id` meanwhile: the store reserved it for this
    ///   Prepare alone, and Cleanup counts ids in flight as known;
    /// - after `create_snap` the new device shares its origin's blocks by
    ///   reference, so the origin's device may be deleted under a growing child
    ///   without taking anything from it. A Remove of the parent is never held up
    ///   by a child's Prepare: if the parent's device goes before the snapshot,
    ///   the snapshot fails; if after, the Prepare's transaction finds the parent
    ///   gone. Either way the Prepare answers NotFound and its device is deleted;
    /// - a crash at any instant leaves at worst a size record and a device under
    ///   an id the store still holds reserved and no row names, which Cleanup
    ///   deletes at the next start.
    fn make(&self, id: ThinId, origin: ThinId, sizing: Sizing, kind: Kind) -> Result<()> {
        // The size is durable before the device exists, so a device is never
        // activated at the wrong size after a crash.
        if sizing.sectors == self.sectors {
            self.sizes.records.forget(id)?;
        } else {
            self.sizes.records.record(id, sizing.sectors * SECTOR)?;
        }
        let snapshot = {
            let _guard = lock(&self.lock);
            self.snapshot(id, origin)
        };
        let made = snapshot
            .and_then(|()| {
                if sizing.grows() {
                    self.grow(id, kind, sizing.sectors * SECTOR)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| match kind {
                Kind::Committed => Ok(()),
                _ => self.activate(id, kind == Kind::View).map(|_| ()),
            });
        if let Err(err) = made {
            if let Err(left) = self.delete(id) {
                warn!(thin = id.get(), %left, "half-made thin device left for Cleanup");
            }
            return Err(err);
        }
        Ok(())
    }

    /// Grows the origin's filesystem, copied into a larger device, to fill it. The
    /// device is activated writable for it; anything but an active snapshot is
    /// deactivated again, to be activated as its kind needs.
    fn grow(&self, id: ThinId, kind: Kind, bytes: u64) -> Result<()> {
        let started = std::time::Instant::now();
        let device = self.activate(id, false)?;
        let mountpoint = self.sizes.grow_mountpoint(id);
        let grown = self
            .sizes
            .grow
            .grow(self.config.fs_type, &device_path(device), &mountpoint)
            .map_err(|err| self.blame_full_pool(err, id, bytes));
        if kind != Kind::Active {
            self.deactivate(id)?;
        }
        grown?;
        // A write the pool refused may not reach the tool (ext4 writes its new
        // group descriptors back later): a grow the pool ran out of space under
        // is not trusted, whatever the tool said.
        let usage = self.pool.usage(&*self.dm)?;
        if usage.is_out_of_space() {
            return Err(Error::PoolFull(format!(
                "thin pool {} ran out of space while the filesystem of thin device {} grew \
                 to {bytes} bytes ({}); remove unused images or grow the pool",
                self.pool.name(),
                id.get(),
                usage.figures()
            )));
        }
        info!(
            thin = id.get(),
            bytes,
            fs = %self.config.fs_type,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "filesystem grown to the snapshot's max-size"
        );
        Ok(())
    }

    /// A grow that failed because the pool ran out of space: dm-thin then puts the
    /// pool in `out_of_data_space` mode (read-only when its metadata ran out) and
    /// fails the filesystem's writes with ENOSPC, which the tool may only report as
    /// an I/O error or an aborted journal. So the pool is asked, and asked before
    /// the device is deleted: the deletion frees blocks, and the pool's next commit
    /// puts it back into `rw` mode.
    fn blame_full_pool(&self, err: Error, id: ThinId, bytes: u64) -> Error {
        match self.pool.usage(&*self.dm) {
            Ok(usage) if usage.is_out_of_space() => Error::GrowOutOfSpace {
                thin: id.get(),
                bytes,
                pool: self.pool.name().to_owned(),
                figures: usage.figures(),
                source: Box::new(err),
            },
            _ => err,
        }
    }

    /// The size a new snapshot of `origin` gets: the origin's, or `max-size` when
    /// the labels ask for more. Less than the origin is refused: a thin snapshot
    /// carries its origin's whole filesystem, which cannot shrink.
    fn size_for(&self, origin: ThinId, labels: &Labels) -> rustlayer_core::Result<Sizing> {
        let origin_sectors = self.sectors_of(origin)?;
        let Some(bytes) = validate::max_size(labels)? else {
            return Ok(Sizing {
                sectors: origin_sectors,
                origin_sectors,
            });
        };
        let sectors = bytes
            .checked_next_multiple_of(BLOCK)
            .map(|rounded| rounded / SECTOR)
            .ok_or_else(|| {
                rustlayer_core::Error::InvalidArgument(format!(
                    "label {MAX_SIZE_LABEL}={bytes} is too large for a thin device"
                ))
            })?;
        if sectors < origin_sectors {
            return Err(rustlayer_core::Error::InvalidArgument(format!(
                "label {MAX_SIZE_LABEL}={bytes} is smaller than the {} bytes of the {} this \
                 snapshot copies; a thin snapshot cannot be smaller than its parent",
                origin_sectors * SECTOR,
                if origin == BASE {
                    "empty base filesystem"
                } else {
                    "parent's filesystem"
                }
            )));
        }
        Ok(Sizing {
            sectors,
            origin_sectors,
        })
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
                } else {
                    options.push(base::EXT4_NO_ITABLE_ZEROING.to_owned());
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
        labels: &Labels,
    ) -> rustlayer_core::Result<Staged> {
        let inner = &self.inner;
        let thin = thin_id(id)?;
        let origin = match parents.first() {
            Some(parent) => thin_id(*parent)?,
            None => BASE,
        };
        let sizing = inner.size_for(origin, labels)?;
        inner.check_space()?;
        inner.make(thin, origin, sizing, kind)?;
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
        // A grow a crash interrupted left its private mount, which holds the
        // device open: it goes first. A grow in progress has an id in flight,
        // which the snapshotter counts as known.
        for (thin, mountpoint) in inner.sizes.grow_mountpoints()? {
            if !is_known(SnapshotId::new(u64::from(thin.get()))) {
                inner.sizes.grow.release(&mountpoint)?;
            }
        }
        for thin in inner.active_ids()? {
            if !is_known(SnapshotId::new(u64::from(thin.get()))) {
                inner.delete(thin)?;
                removed += 1;
            }
        }
        // A size record outlives its device only if a crash came between them.
        for thin in inner.sizes.records.ids()? {
            if !is_known(SnapshotId::new(u64::from(thin.get()))) {
                inner.delete(thin)?;
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
fn device_path(device: Device) -> PathBuf {
    PathBuf::from(format!("/dev/dm-{}", device.minor))
}

fn node(device: Device) -> Result<PathBuf> {
    let path = device_path(device);
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
    use std::sync::{Condvar, PoisonError, mpsc};
    use std::thread;
    use std::time::Duration;

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

    /// How long a test waits for something that should happen at once.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// What the fake grow does after recording the device.
    #[derive(Clone, Default)]
    enum Outcome {
        #[default]
        Grows,
        /// The tool fails with this on its stderr.
        Fails(&'static str),
        /// The pool runs out of data space under the grow, as a real one does when
        /// the grown filesystem's new metadata does not fit, and the tool reports
        /// only the I/O error its writes got.
        ExhaustsPool(RecordingDm),
    }

    /// A gate every grow waits at, and the channel it says so on.
    type Gate = (mpsc::Sender<PathBuf>, Arc<(Mutex<bool>, Condvar)>);

    /// Remembers which devices it grew, fails when told to, and waits at a gate
    /// when one is set (a grow takes seconds on a real pool).
    #[derive(Clone, Default)]
    struct RecordingGrow {
        grown: Arc<Mutex<Vec<PathBuf>>>,
        outcome: Arc<Mutex<Outcome>>,
        gate: Arc<Mutex<Option<Gate>>>,
        /// Released mountpoints; their devices, held open in this fake, close.
        released: Arc<Mutex<Vec<PathBuf>>>,
        mounts_in: Arc<Mutex<Option<RecordingDm>>>,
    }

    impl RecordingGrow {
        fn grown(&self) -> Vec<PathBuf> {
            lock(&self.grown).clone()
        }

        fn then(&self, outcome: Outcome) {
            *lock(&self.outcome) = outcome;
        }

        /// From now on every grow waits until the returned [`Held`] is released.
        fn hold(&self) -> Held {
            let (started, receiver) = mpsc::channel();
            let released = Arc::new((Mutex::new(false), Condvar::new()));
            *lock(&self.gate) = Some((started, Arc::clone(&released)));
            Held { receiver, released }
        }
    }

    /// Grows held at the gate.
    struct Held {
        receiver: mpsc::Receiver<PathBuf>,
        released: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Held {
        /// The device of the next grow to reach the gate.
        fn started(&self) -> PathBuf {
            self.receiver
                .recv_timeout(DEADLINE)
                .expect("a grow reaches the gate")
        }

        fn release(&self) {
            let (released, wake) = &*self.released;
            *lock(released) = true;
            wake.notify_all();
        }
    }

    impl GrowFs for RecordingGrow {
        fn grow(&self, _fs: FsType, device: &Path, _mountpoint: &Path) -> Result<()> {
            lock(&self.grown).push(device.to_owned());
            let gate = lock(&self.gate).clone();
            if let Some((started, released)) = gate {
                let _ = started.send(device.to_owned());
                let (released, wake) = &*released;
                let mut open = lock(released);
                while !*open {
                    open = wake.wait(open).unwrap_or_else(PoisonError::into_inner);
                }
            }
            let failed = |detail: &str| Error::FsTool {
                command: format!("resize2fs {}", device.display()),
                detail: detail.to_owned(),
            };
            match lock(&self.outcome).clone() {
                Outcome::Grows => Ok(()),
                Outcome::Fails(detail) => Err(failed(detail)),
                Outcome::ExhaustsPool(dm) => {
                    dm.set_pool_out_of_data_space(POOL);
                    Err(failed("Input/output error While trying to add group #80"))
                }
            }
        }

        fn release(&self, mountpoint: &Path) -> Result<()> {
            lock(&self.released).push(mountpoint.to_owned());
            let name = mountpoint.file_name().expect("a name").to_string_lossy();
            let id = name
                .strip_prefix(GROW_MOUNTPOINT)
                .expect("a grow's mountpoint");
            if let Some(dm) = &*lock(&self.mounts_in) {
                dm.set_open(&format!("{PREFIX}-{id}"), 0);
            }
            fs::remove_dir(mountpoint).map_err(Error::io("remove", mountpoint))
        }
    }

    /// Runs `work` on a thread of `scope` and waits at most [`DEADLINE`] for it:
    /// None if it did not finish by then (it is still waited for when the scope
    /// ends).
    fn finishes_meanwhile<'scope, T: Send + 'scope>(
        scope: &'scope thread::Scope<'scope, '_>,
        work: impl FnOnce() -> T + Send + 'scope,
    ) -> Option<T> {
        let (done, finished) = mpsc::channel();
        scope.spawn(move || done.send(work()));
        finished.recv_timeout(DEADLINE).ok()
    }

    /// A backend under a temporary directory (its size records), and its fakes.
    struct Fixture {
        backend: DevmapperBackend,
        grow: RecordingGrow,
        dir: tempfile::TempDir,
    }

    impl std::ops::Deref for Fixture {
        type Target = DevmapperBackend;
        fn deref(&self) -> &DevmapperBackend {
            &self.backend
        }
    }

    fn assemble(dm: &RecordingDm, pool: Pool) -> Fixture {
        assemble_in(dm, pool, tempfile::tempdir().expect("tempdir"))
    }

    fn assemble_in(dm: &RecordingDm, pool: Pool, dir: tempfile::TempDir) -> Fixture {
        let grow = RecordingGrow::default();
        let sizes = Resizing {
            records: DeviceSizes::open(&dir.path().join("sizes")).expect("size records"),
            grow: Box::new(grow.clone()),
            scratch: dir.path().to_owned(),
        };
        let backend = DevmapperBackend::assemble(
            Box::new(dm.clone()),
            pool,
            PREFIX.into(),
            config(),
            sizes,
            false,
            |_| Ok(()),
        )
        .expect("the backend assembles");
        Fixture { backend, grow, dir }
    }

    /// A backend over an existing pool with the base device made (thin id 0).
    fn backend(dm: &RecordingDm) -> Fixture {
        dm.add_thin(0);
        let pool = Pool::open_existing(dm, POOL).expect("the pool opens");
        assemble(dm, pool)
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
        stage_labelled(backend, id, kind, parents, &Labels::new());
    }

    fn stage_labelled(
        backend: &DevmapperBackend,
        id: u64,
        kind: Kind,
        parents: &[u64],
        labels: &Labels,
    ) {
        let parents: Vec<SnapshotId> = parents.iter().copied().map(SnapshotId::new).collect();
        backend
            .stage(SnapshotId::new(id), kind, &parents, labels)
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

    const GIB: u64 = 1 << 30;

    fn max_size(bytes: u64) -> Labels {
        [(MAX_SIZE_LABEL.to_owned(), bytes.to_string())].into()
    }

    fn stage_sized(backend: &DevmapperBackend, id: u64, kind: Kind, parents: &[u64], bytes: u64) {
        stage_labelled(backend, id, kind, parents, &max_size(bytes));
    }

    fn record(fixture: &Fixture, id: u32) -> Option<String> {
        fs::read_to_string(fixture.dir.path().join("sizes").join(id.to_string())).ok()
    }

    #[test]
    fn max_size_above_the_base_records_the_size_and_grows_the_filesystem() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage_sized(&backend, 1, Kind::Active, &[], 20 * GIB);
        // Activated once, at its own size, for growing; then left active.
        assert_eq!(
            dm.calls(),
            vec![message("create_snap 1 0"), activate("test-1")]
        );
        assert_eq!(dm.sectors("test-1"), Some(20 * GIB / SECTOR));
        assert_eq!(backend.grow.grown().len(), 1);
        assert_eq!(record(&backend, 1).as_deref(), Some("21474836480\n"));
    }

    #[test]
    fn max_size_is_rounded_up_to_whole_blocks() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage_sized(&backend, 1, Kind::Active, &[], 10 * GIB + 1);
        assert_eq!(dm.sectors("test-1"), Some((10 * GIB + BLOCK) / SECTOR));
    }

    #[test]
    fn without_max_size_a_layer_has_the_base_size_and_no_record() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage(&backend, 1, Kind::Active, &[]);
        stage_sized(&backend, 2, Kind::Active, &[], 10 * GIB);
        for device in ["test-1", "test-2"] {
            assert_eq!(dm.sectors(device), Some(10 * GIB / SECTOR), "{device}");
        }
        assert!(backend.grow.grown().is_empty());
        assert_eq!(record(&backend, 1), None);
        assert_eq!(record(&backend, 2), None);
    }

    #[test]
    fn a_grown_view_is_grown_writable_then_activated_read_only() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage_sized(&backend, 1, Kind::View, &[], 12 * GIB);
        assert_eq!(
            dm.calls(),
            vec![
                message("create_snap 1 0"),
                activate("test-1"),
                DmCall::Deactivate("test-1".into()),
                DmCall::Activate {
                    device: "test-1".into(),
                    read_only: true,
                },
            ]
        );
        assert_eq!(dm.sectors("test-1"), Some(12 * GIB / SECTOR));
    }

    #[test]
    fn children_of_a_larger_layer_inherit_its_size_without_growing_again() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage_sized(&backend, 1, Kind::Committed, &[], 20 * GIB);
        assert!(
            !dm.is_active("test-1"),
            "a committed layer is left inactive"
        );
        stage(&backend, 2, Kind::Active, &[1]);
        stage_sized(&backend, 3, Kind::View, &[1], 20 * GIB);
        stage_sized(&backend, 4, Kind::Active, &[1], 30 * GIB);
        assert_eq!(dm.sectors("test-2"), Some(20 * GIB / SECTOR));
        assert_eq!(dm.sectors("test-3"), Some(20 * GIB / SECTOR));
        assert_eq!(dm.sectors("test-4"), Some(30 * GIB / SECTOR));
        assert_eq!(backend.grow.grown().len(), 2, "layers 1 and 4 only");
        assert_eq!(record(&backend, 2).as_deref(), Some("21474836480\n"));
    }

    #[test]
    fn max_size_below_the_parent_is_refused_and_changes_nothing() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage_sized(&backend, 1, Kind::Committed, &[], 20 * GIB);
        dm.forget_calls();
        for (parents, bytes) in [(&[1][..], 20 * GIB - BLOCK), (&[][..], 10 * GIB - BLOCK)] {
            let parents: Vec<SnapshotId> = parents.iter().copied().map(SnapshotId::new).collect();
            let err = backend
                .stage(SnapshotId::new(2), Kind::Active, &parents, &max_size(bytes))
                .expect_err("a thin snapshot cannot shrink its origin's filesystem");
            assert!(
                matches!(err, rustlayer_core::Error::InvalidArgument(_)),
                "{err:?}"
            );
            assert!(err.to_string().contains(MAX_SIZE_LABEL), "{err}");
        }
        assert_eq!(dm.calls(), vec![]);
        assert!(!dm.has_thin(2));
        assert_eq!(record(&backend, 2), None);
    }

    /// Prepares snapshot 1 with a max-size whose grow the tool fails with `stderr`.
    fn fail_grow(stderr: &'static str) -> (RecordingDm, Fixture, rustlayer_core::Error) {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        backend.grow.then(Outcome::Fails(stderr));
        let err = backend
            .stage(SnapshotId::new(1), Kind::Active, &[], &max_size(20 * GIB))
            .expect_err("growth fails");
        (dm, backend, err)
    }

    #[test]
    fn a_failed_growth_leaves_no_device_and_no_record() {
        let (dm, backend, err) =
            fail_grow("Invalid argument While checking for on-line resizing support");
        assert!(err.to_string().contains("resize2fs"), "{err}");
        assert_eq!(err.code(), rustlayer_core::Code::Internal, "{err:?}");
        assert!(!dm.has_thin(1) && !dm.is_active("test-1"));
        assert_eq!(record(&backend, 1), None);
    }

    /// What a refused grow must leave: no device, no activation, no size record,
    /// and the next Prepare works.
    fn assert_refused_without_a_trace(
        dm: &RecordingDm,
        backend: &Fixture,
        err: &rustlayer_core::Error,
    ) {
        assert_eq!(
            err.code(),
            rustlayer_core::Code::ResourceExhausted,
            "{err:?}"
        );
        assert!(!dm.has_thin(1) && !dm.is_active("test-1"));
        assert_eq!(record(backend, 1), None);
        assert!(
            fs::read_dir(backend.dir.path())
                .expect("the root")
                .all(|entry| !entry
                    .expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .starts_with("grow-")),
            "no private mountpoint is left"
        );
    }

    #[test]
    fn a_grow_that_runs_the_pool_out_of_space_is_resource_exhausted_and_leaves_nothing() {
        let dm = RecordingDm::with_pool(POOL, 40, 100);
        let backend = backend(&dm);
        backend.grow.then(Outcome::ExhaustsPool(dm.clone()));
        let err = backend
            .stage(SnapshotId::new(1), Kind::Active, &[], &max_size(20 * GIB))
            .expect_err("the pool ran out of space under the grow");
        assert_refused_without_a_trace(&dm, &backend, &err);
        let message = err.to_string();
        for part in [
            POOL,
            "out of space",
            "21474836480 bytes",
            "Input/output error",
        ] {
            assert!(message.contains(part), "{part:?} missing from {message}");
        }
    }

    #[test]
    fn a_grow_the_tool_reports_done_on_a_pool_out_of_space_is_not_trusted() {
        let dm = RecordingDm::with_pool(POOL, 40, 100);
        let backend = backend(&dm);
        let held = backend.grow.hold();
        thread::scope(|scope| {
            let growing = scope.spawn(|| {
                backend.stage(SnapshotId::new(1), Kind::Active, &[], &max_size(20 * GIB))
            });
            held.started();
            dm.set_pool_out_of_data_space(POOL);
            held.release();
            let err = growing
                .join()
                .expect("no panic")
                .expect_err("the grow's writes may have been refused");
            assert_refused_without_a_trace(&dm, &backend, &err);
            assert!(err.to_string().contains(POOL), "{err}");
        });
    }

    #[test]
    fn a_grow_the_filesystem_finds_no_space_for_is_resource_exhausted() {
        let (dm, backend, err) =
            fail_grow("XFS_IOC_FSGROWFSDATA xfsctl failed: No space left on device");
        assert_refused_without_a_trace(&dm, &backend, &err);
    }

    #[test]
    fn a_grow_in_progress_holds_up_no_other_snapshot() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage(&backend, 3, Kind::Committed, &[]);
        let held = backend.grow.hold();
        let parents = [SnapshotId::new(3)];
        let other = SnapshotRef {
            id: SnapshotId::new(2),
            kind: Kind::Active,
            parents: &parents,
        };
        thread::scope(|scope| {
            let growing = scope.spawn(|| {
                backend.stage(SnapshotId::new(1), Kind::Active, &[], &max_size(20 * GIB))
            });
            held.started();
            // What containerd does meanwhile: unpack another layer (Prepare,
            // Usage, Commit) and remove it again. (Mounts needs a real /dev.)
            let others = finishes_meanwhile(scope, || {
                backend.stage(other.id, Kind::Active, &parents, &Labels::new())?;
                backend.usage(other)?;
                backend.seal(other)?;
                backend.remove(other.id)
            });
            held.release();
            let grown = growing.join().expect("the grow does not panic");
            let others = others.expect("another snapshot's calls finish while a grow runs");
            others.expect("another snapshot's calls succeed");
            grown.expect("the held grow finishes once released");
        });
        assert!(dm.has_thin(1) && dm.is_active("test-1"));
        assert_eq!(dm.sectors("test-1"), Some(20 * GIB / SECTOR));
        assert!(!dm.has_thin(2) && !dm.is_active("test-2"));
    }

    #[test]
    fn two_grows_run_at_once() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        let held = backend.grow.hold();
        thread::scope(|scope| {
            let growing: Vec<_> = [1, 2]
                .map(|id| {
                    let backend = &backend;
                    scope.spawn(move || {
                        backend.stage(SnapshotId::new(id), Kind::View, &[], &max_size(20 * GIB))
                    })
                })
                .into_iter()
                .collect();
            let first = held.started();
            let second = held.receiver.recv_timeout(DEADLINE);
            held.release();
            for grow in growing {
                grow.join().expect("no panic").expect("the grow finishes");
            }
            let second = second.expect("the second grow starts while the first is held");
            assert_ne!(first, second);
        });
        for device in ["test-1", "test-2"] {
            assert_eq!(dm.sectors(device), Some(20 * GIB / SECTOR), "{device}");
        }
    }

    #[test]
    fn the_parent_can_be_removed_while_a_child_grows_and_the_child_keeps_its_copy() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage(&backend, 1, Kind::Committed, &[]);
        let held = backend.grow.hold();
        thread::scope(|scope| {
            let growing = scope.spawn(|| {
                backend.stage(
                    SnapshotId::new(2),
                    Kind::Active,
                    &[SnapshotId::new(1)],
                    &max_size(20 * GIB),
                )
            });
            held.started();
            let removed = finishes_meanwhile(scope, || backend.remove(SnapshotId::new(1)));
            held.release();
            let grown = growing.join().expect("the grow does not panic");
            removed
                .expect("the parent's Remove does not wait for the child's grow")
                .expect("the parent's device is deleted");
            // The snapshotter's transaction then finds the parent gone and
            // discards the child; the backend's part is that nothing broke.
            grown.expect("the child's device outlives its origin's");
        });
        assert!(!dm.has_thin(1));
        assert!(dm.has_thin(2) && dm.is_active("test-2"));
        assert_eq!(record(&backend, 2).as_deref(), Some("21474836480\n"));
    }

    #[test]
    fn after_a_restart_devices_are_activated_at_their_recorded_size() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let first = backend(&dm);
        stage_sized(&first, 1, Kind::Committed, &[], 20 * GIB);
        stage(&first, 2, Kind::Active, &[1]);
        first.shutdown();
        assert!(!dm.is_active("test-2"));
        let Fixture { backend, dir, .. } = first;
        drop(backend);
        let pool = Pool::open_existing(&dm, POOL).expect("the pool opens");
        let again = assemble_in(&dm, pool, dir);
        again
            .resume(&[LiveSnapshot {
                id: SnapshotId::new(2),
                kind: Kind::Active,
                parent: Some(SnapshotId::new(1)),
                labels: Labels::new(),
            }])
            .expect("resume succeeds");
        assert_eq!(dm.sectors("test-2"), Some(20 * GIB / SECTOR));
        assert!(again.grow.grown().is_empty(), "nothing is grown again");
    }

    #[test]
    fn cleanup_deletes_a_size_record_and_device_the_metadata_never_knew() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage_sized(&backend, 1, Kind::Committed, &[], 20 * GIB);
        stage_sized(&backend, 2, Kind::Committed, &[], 20 * GIB);
        let removed = backend
            .cleanup(&|id| id.get() == 1, &[])
            .expect("cleanup succeeds");
        assert_eq!(removed, 0, "only active devices and suspects are counted");
        assert!(dm.has_thin(1) && record(&backend, 1).is_some());
        assert!(!dm.has_thin(2) && record(&backend, 2).is_none());
    }

    #[test]
    fn removing_a_larger_layer_forgets_its_size() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage_sized(&backend, 1, Kind::Active, &[], 20 * GIB);
        backend.remove(SnapshotId::new(1)).expect("remove succeeds");
        assert_eq!(record(&backend, 1), None);
        stage(&backend, 1, Kind::Active, &[]);
        assert_eq!(dm.sectors("test-1"), Some(10 * GIB / SECTOR));
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
    fn cleanup_unmounts_what_a_crash_mid_grow_left_then_deletes_the_device() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage_sized(&backend, 1, Kind::Active, &[], 20 * GIB);
        stage_sized(&backend, 2, Kind::Active, &[], 20 * GIB);
        // The daemon died inside snapshot 2's grow: its private mount stays, and
        // holds the device open.
        let mountpoint = backend.dir.path().join("grow-2");
        fs::create_dir(&mountpoint).expect("mountpoint");
        dm.set_open("test-2", 1);
        *lock(&backend.grow.mounts_in) = Some(dm.clone());
        let removed = backend
            .cleanup(&|id| id.get() == 1, &[])
            .expect("cleanup succeeds");
        assert_eq!(removed, 1);
        assert_eq!(*lock(&backend.grow.released), vec![mountpoint.clone()]);
        assert!(!mountpoint.exists());
        assert!(!dm.has_thin(2) && !dm.is_active("test-2"));
        assert_eq!(record(&backend, 2), None);
        assert!(dm.has_thin(1) && dm.is_active("test-1"));
    }

    #[test]
    fn cleanup_leaves_the_mount_of_a_grow_in_progress() {
        let dm = RecordingDm::with_pool(POOL, 0, 100);
        let backend = backend(&dm);
        stage_sized(&backend, 1, Kind::Active, &[], 20 * GIB);
        fs::create_dir(backend.dir.path().join("grow-1")).expect("mountpoint");
        backend
            .cleanup(&|id| id.get() == 1, &[])
            .expect("cleanup succeeds");
        assert!(lock(&backend.grow.released).is_empty());
        assert!(dm.has_thin(1));
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

    fn managed(dm: &RecordingDm, dir: &Path) -> (Fixture, RecordingLoopAttacher) {
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
        (assemble(dm, pool), loops)
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
