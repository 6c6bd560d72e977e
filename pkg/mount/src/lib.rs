//! Everything rustlayer asks of the kernel about mounts and filesystems lives here,
//! behind the [`Mounter`] trait, so the logic above (which mounts, in what order,
//! with what options) is tested without root through [`RecordingMounter`], and the
//! real calls are exercised once, in root-only tests. Loop devices (for devmapper's
//! self-managed pool) are attached here too, behind [`LoopAttacher`], with
//! [`RecordingLoopAttacher`] for tests: raw ioctls belong with the rest of the
//! unsafe code. Project quotas (per-layer size limits and constant-time usage)
//! are set here too, behind [`ProjectQuota`], with [`RecordingProjectQuota`].

mod error;
mod fsinfo;
mod idmap;
mod linux;
mod loopdev;
mod options;
mod quota;
mod recording;
#[doc(hidden)]
pub mod testing;

pub use error::{Error, Result};
pub use fsinfo::{FsStats, filesystem_registered, fs_stats, supports_d_type, sync_filesystem};
pub use idmap::{UserNamespace, idmapped_clone};
pub use linux::LinuxMounter;
pub use loopdev::{LinuxLoopAttacher, LoopAttacher, LoopDevice, RecordingLoopAttacher};
pub use options::{
    IdMapOptions, MountFlags, OverlayData, lowers_common_dir, parse_options, split_id_maps,
};
pub use quota::{
    LinuxProjectQuota, ProjectLimits, ProjectQuota, ProjectUsage, QuotaCall, RecordingProjectQuota,
};
pub use recording::{MountCall, RecordingMounter};

use std::path::Path;

use rustlayer_core::Mount;

pub trait Mounter: Send + Sync {
    /// Performs `mount` at `target`, the way containerd would.
    fn mount(&self, mount: &Mount, target: &Path) -> Result<()>;
    /// Unmounts `target`; `lazy` detaches even if busy.
    fn unmount(&self, target: &Path, lazy: bool) -> Result<()>;
}

/// Mounts a list in order (overlays come alone; binds may stack), unmounting what
/// was done if a later one fails, so a failure leaves nothing mounted.
pub fn mount_all(mounter: &dyn Mounter, mounts: &[Mount], target: &Path) -> Result<()> {
    for (done, mount) in mounts.iter().enumerate() {
        if let Err(err) = mounter.mount(mount, target) {
            for _ in 0..done {
                let _ = mounter.unmount(target, true);
            }
            return Err(err);
        }
    }
    Ok(())
}
