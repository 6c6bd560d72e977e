//! The thin pool: an existing one named in the configuration, or one rustlayer makes
//! on sparse files attached to loop devices. Thin devices are created, snapshotted
//! and deleted by messages to it.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::str::FromStr;

use devicemapper::{Device, ThinPoolStatus, ThinPoolStatusSummary};
use tracing::info;

use rustlayer_mount::LoopAttacher;

use crate::dm::{Deactivated, DeviceMapper};
use crate::error::{Error, Result};

const SECTOR: u64 = 512;
/// dm-thin's metadata block size.
const METADATA_BLOCK: u64 = 4096;
/// 64 KiB data blocks: small enough that a changed file copies little, the size
/// containerd's and Docker's devmapper use.
const DATA_BLOCK_SECTORS: u64 = 128;

/// A thin device's id inside the pool (24 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThinId(u32);

impl ThinId {
    pub const MAX: u32 = (1 << 24) - 1;
    /// The device holding the empty filesystem every first layer starts from.
    pub const BASE: ThinId = ThinId(0);

    pub fn new(raw: u64) -> Option<ThinId> {
        u32::try_from(raw)
            .ok()
            .filter(|&n| n <= Self::MAX)
            .map(ThinId)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// Whether a delete found the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Done,
    Absent,
}

/// Space figures of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub data_used_bytes: u64,
    pub data_size_bytes: u64,
    pub metadata_used_bytes: u64,
    pub metadata_size_bytes: u64,
    /// "rw" when healthy; otherwise what the kernel reports (out of data space,
    /// read-only, failed, needs check).
    pub mode: PoolMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Writable,
    OutOfDataSpace,
    ReadOnly,
    NeedsCheck,
    Failed,
}

impl PoolUsage {
    /// The kernel stopped allocating: out of data space, or read-only because the
    /// metadata ran out.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self.mode, PoolMode::OutOfDataSpace | PoolMode::ReadOnly)
    }

    pub fn data_free_percent(&self) -> f64 {
        free_percent(self.data_used_bytes, self.data_size_bytes)
    }

    pub fn metadata_free_percent(&self) -> f64 {
        free_percent(self.metadata_used_bytes, self.metadata_size_bytes)
    }

    /// Why pool `name` must refuse new snapshots, if it must: out of space,
    /// read-only, failed, or less than `min_free_percent` of data or metadata free.
    pub fn refusal(&self, name: &str, min_free_percent: u8) -> Option<Error> {
        match self.mode {
            PoolMode::Writable => {}
            PoolMode::OutOfDataSpace | PoolMode::ReadOnly => {
                return Some(Error::PoolFull(format!(
                    "thin pool {name} is {}: {}",
                    if self.mode == PoolMode::ReadOnly {
                        "read-only (metadata space exhausted)"
                    } else {
                        "out of data space"
                    },
                    self.figures()
                )));
            }
            PoolMode::NeedsCheck | PoolMode::Failed => {
                return Some(Error::Pool(format!(
                    "thin pool {name} has failed or needs thin_check; repair it before creating snapshots"
                )));
            }
        }
        let min = f64::from(min_free_percent);
        if self.data_free_percent() < min || self.metadata_free_percent() < min {
            return Some(Error::PoolFull(format!(
                "thin pool {name} is nearly full: {}; new snapshots need {min}% free: remove unused images or grow the pool",
                self.figures()
            )));
        }
        None
    }

    pub fn figures(&self) -> String {
        format!(
            "data {} of {} used ({:.1}% free), metadata {} of {} used ({:.1}% free)",
            mib(self.data_used_bytes),
            mib(self.data_size_bytes),
            self.data_free_percent(),
            mib(self.metadata_used_bytes),
            mib(self.metadata_size_bytes),
            self.metadata_free_percent()
        )
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

fn free_percent(used: u64, size: u64) -> f64 {
    if size == 0 {
        return 0.0;
    }
    100.0 * (size.saturating_sub(used)) as f64 / size as f64
}

/// How the self-managed pool is made.
#[derive(Debug, Clone)]
pub struct ManagedPool<'a> {
    pub dir: &'a Path,
    pub data_bytes: u64,
    pub metadata_bytes: u64,
    pub discard_passdown: bool,
}

#[derive(Debug)]
pub struct Pool {
    name: String,
    device: Device,
    data_block_bytes: u64,
    /// Set when rustlayer made the pool; it then also takes it down.
    managed: bool,
    /// Set when the pool's metadata was just made: no thin device exists yet.
    fresh: bool,
}

impl Pool {
    /// A pool that already exists, e.g. an LVM thin pool's `-tpool` device.
    pub fn open_existing(dm: &dyn DeviceMapper, name: &str) -> Result<Pool> {
        let Some((device, _)) = dm.device(name)? else {
            return Err(Error::Config(format!(
                "thin pool {name:?} does not exist; create it (lvcreate --type thin-pool, or a dm thin-pool table) or leave pool_name unset for a loop-backed pool"
            )));
        };
        Pool::describe(dm, name, device, false)
    }

    /// The self-managed pool named `name`, made on sparse files under `dir` unless
    /// it is active already (a restart).
    pub fn open_managed(
        dm: &dyn DeviceMapper,
        loops: &dyn LoopAttacher,
        name: &str,
        spec: &ManagedPool<'_>,
    ) -> Result<Pool> {
        if let Some((device, _)) = dm.device(name)? {
            return Pool::describe(dm, name, device, true);
        }
        std::fs::create_dir_all(spec.dir).map_err(Error::io("create", spec.dir))?;
        let data_path = spec.dir.join("data");
        let metadata_path = spec.dir.join("metadata");
        let fresh = !metadata_path.exists();
        if fresh {
            // dm-thin formats metadata whose first block is zero; a sparse file is.
            let _ = std::fs::remove_file(&data_path);
        }
        let data = sparse_file(&data_path, spec.data_bytes)?;
        let metadata = sparse_file(&metadata_path, spec.metadata_bytes)?;
        let data_loop = loops.attach(&data, &data_path)?;
        let metadata_loop = loops.attach(&metadata, &metadata_path)?;
        let data_sectors = data
            .metadata()
            .map_err(Error::io("stat", &data_path))?
            .len()
            / SECTOR;
        let data_sectors = data_sectors - data_sectors % DATA_BLOCK_SECTORS;
        let mut features = vec!["error_if_no_space"];
        if !spec.discard_passdown {
            features.push("no_discard_passdown");
        }
        // The low-water mark makes the kernel raise an event when the pool runs
        // short; rustlayer checks space itself before each Prepare.
        let low_water_blocks = (data_sectors / DATA_BLOCK_SECTORS / 20).max(1);
        let params = format!(
            "{} {} {DATA_BLOCK_SECTORS} {low_water_blocks} {} {}",
            loop_device(&metadata_loop),
            loop_device(&data_loop),
            features.len(),
            features.join(" ")
        );
        let device = dm.activate(name, data_sectors, "thin-pool", &params, false)?;
        info!(
            pool = name,
            data = %data_loop.path().display(),
            metadata = %metadata_loop.path().display(),
            fresh,
            "thin pool activated on loop devices"
        );
        // The pool holds the loop devices now; dropping our handles lets them
        // detach on their own once the pool goes.
        drop((data_loop, metadata_loop));
        let mut pool = Pool::describe(dm, name, device, true)?;
        pool.fresh = fresh;
        Ok(pool)
    }

    fn describe(dm: &dyn DeviceMapper, name: &str, device: Device, managed: bool) -> Result<Pool> {
        let (target, params) = dm.status(name, true)?;
        if target != "thin-pool" {
            return Err(Error::Config(format!(
                "device {name:?} is a {target} device, not a thin pool"
            )));
        }
        // "<metadata dev> <data dev> <data block sectors> <low water blocks> ..."
        let data_block_sectors: u64 = params
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::Pool(format!("cannot read the table of {name}: {params:?}")))?;
        Ok(Pool {
            name: name.to_owned(),
            device,
            data_block_bytes: data_block_sectors * SECTOR,
            managed,
            fresh: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_managed(&self) -> bool {
        self.managed
    }

    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The table of a thin device in this pool.
    pub fn thin_params(&self, id: ThinId) -> String {
        format!("{} {}", self.device, id.get())
    }

    pub fn usage(&self, dm: &dyn DeviceMapper) -> Result<PoolUsage> {
        let (_, status) = dm.status(&self.name, false)?;
        let status = ThinPoolStatus::from_str(&status)
            .map_err(|err| Error::dm(format!("parse status of {}", self.name), err))?;
        let working = match status {
            ThinPoolStatus::Working(working) => working,
            ThinPoolStatus::Fail | ThinPoolStatus::Error => {
                return Ok(PoolUsage {
                    data_used_bytes: 0,
                    data_size_bytes: 0,
                    metadata_used_bytes: 0,
                    metadata_size_bytes: 0,
                    mode: PoolMode::Failed,
                });
            }
        };
        let mode = match working.summary {
            _ if working.needs_check => PoolMode::NeedsCheck,
            ThinPoolStatusSummary::Good => PoolMode::Writable,
            ThinPoolStatusSummary::OutOfSpace => PoolMode::OutOfDataSpace,
            ThinPoolStatusSummary::ReadOnly => PoolMode::ReadOnly,
        };
        let usage = &working.usage;
        Ok(PoolUsage {
            data_used_bytes: *usage.used_data * self.data_block_bytes,
            data_size_bytes: *usage.total_data * self.data_block_bytes,
            metadata_used_bytes: *usage.used_meta * METADATA_BLOCK,
            metadata_size_bytes: *usage.total_meta * METADATA_BLOCK,
            mode,
        })
    }

    pub fn create_thin(&self, dm: &dyn DeviceMapper, id: ThinId) -> Result<()> {
        dm.message(&self.name, &format!("create_thin {}", id.get()))
    }

    /// `origin` must not be active (or must be suspended) while this runs.
    pub fn create_snapshot(&self, dm: &dyn DeviceMapper, id: ThinId, origin: ThinId) -> Result<()> {
        dm.message(
            &self.name,
            &format!("create_snap {} {}", id.get(), origin.get()),
        )
    }

    pub fn delete(&self, dm: &dyn DeviceMapper, id: ThinId) -> Result<Deleted> {
        match dm.message(&self.name, &format!("delete {}", id.get())) {
            Ok(()) => Ok(Deleted::Done),
            Err(err) if err.errno() == Some(libc::ENODATA) => Ok(Deleted::Absent),
            Err(err) => Err(err),
        }
    }

    /// Takes a self-managed pool down; its loop devices then detach by themselves.
    pub fn deactivate(&self, dm: &dyn DeviceMapper) -> Result<Deactivated> {
        dm.deactivate(&self.name)
    }
}

fn sparse_file(path: &Path, bytes: u64) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(Error::io("open", path))?;
    let len = file.metadata().map_err(Error::io("stat", path))?.len();
    // Growing is safe (the pool sees more blocks at next activation); shrinking
    // would cut off data.
    if len < bytes {
        file.set_len(bytes).map_err(Error::io("size", path))?;
    }
    Ok(file)
}

fn loop_device(device: &rustlayer_mount::LoopDevice) -> Device {
    let (major, minor) = device.number();
    Device { major, minor }
}
