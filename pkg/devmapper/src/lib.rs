//! rustlayer's devicemapper backend: block-level copy-on-write through a dm-thin pool,
//! one filesystem per thin device. Device-mapper is driven through its ioctls (the
//! `devicemapper` crate); the only programs run are mkfs, once per pool, and
//! resize2fs or xfs_growfs for a snapshot larger than the base.

mod backend;
mod base;
mod config;
mod dm;
mod error;
mod pool;
mod preflight;
#[cfg(test)]
mod recording_dm;
mod size;
mod sizes;
#[doc(hidden)]
pub mod testing;

pub use backend::{DevmapperBackend, DevmapperOptions, device_prefix};
pub use config::{DEFAULT_TOML, DevmapperConfig, FsType, InvalidConfig};
pub use error::{Error, Result};
pub use preflight::preflight;
pub use size::{ByteSize, SizeError};

/// Whether this kernel has device-mapper at all, for a clear start-up error. The
/// thin-pool target itself is loaded on demand when the pool's table is loaded.
pub fn kernel_support() -> Result<()> {
    if !std::path::Path::new("/dev/mapper/control").exists() {
        return Err(Error::NoDeviceMapper);
    }
    Ok(())
}
