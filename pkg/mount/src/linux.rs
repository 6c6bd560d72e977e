use std::ffi::CString;
use std::io;
use std::path::Path;
use std::process::Command;

use rustix::mount::{MountFlags as Raw, UnmountFlags, mount, mount_remount, unmount};
use rustlayer_core::Mount;
use tracing::debug;

use crate::Mounter;
use crate::error::{Error, Result};
use crate::options::{OverlayData, parse_options};

/// The kernel copies at most one page of mount data.
const MOUNT_DATA_LIMIT: usize = 4096;

/// Performs mounts with mount(2), as containerd's mount package does.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxMounter;

impl Mounter for LinuxMounter {
    fn mount(&self, m: &Mount, target: &Path) -> Result<()> {
        let (flags, data) = parse_options(&m.options);
        let mount_err = |source: io::Error| Error::Mount {
            fs_type: m.fs_type.clone(),
            target: target.to_owned(),
            source,
        };
        if flags.bind {
            let mut raw = flags.to_raw();
            raw.remove(Raw::RDONLY);
            mount(m.source.as_str(), target, "", raw, None::<&std::ffi::CStr>)
                .map_err(|e| mount_err(e.into()))?;
            // A bind mount ignores MS_RDONLY; read-only needs a remount of the bind.
            if flags.read_only {
                mount_remount(target, raw | Raw::BIND | Raw::RDONLY, "")
                    .map_err(|e| mount_err(e.into()))?;
            }
            return Ok(());
        }
        if m.fs_type == "overlay" && data.len() >= MOUNT_DATA_LIMIT {
            return self.mount_compacted_overlay(m, &data, flags.read_only, target);
        }
        let data = CString::new(data).map_err(|e| mount_err(io::Error::other(e)))?;
        mount(
            m.source.as_str(),
            target,
            m.fs_type.as_str(),
            flags.to_raw(),
            Some(data.as_c_str()),
        )
        .map_err(|e| mount_err(e.into()))?;
        debug!(fs_type = %m.fs_type, target = %target.display(), "mounted");
        Ok(())
    }

    fn unmount(&self, target: &Path, lazy: bool) -> Result<()> {
        let flags = if lazy {
            UnmountFlags::DETACH
        } else {
            UnmountFlags::empty()
        };
        unmount(target, flags).map_err(|e| Error::Unmount {
            target: target.to_owned(),
            source: e.into(),
        })
    }
}

impl LinuxMounter {
    /// Long overlay chains only fit in a page with lower directories relative to
    /// their common directory. The working directory is process-wide, so the mount
    /// runs in a child process started there rather than by chdir in this one.
    fn mount_compacted_overlay(
        &self,
        m: &Mount,
        data: &str,
        read_only: bool,
        target: &Path,
    ) -> Result<()> {
        let too_long = |len| Error::OptionsTooLong {
            fs_type: m.fs_type.clone(),
            target: target.to_owned(),
            len,
        };
        let (dir, compacted) = OverlayData::parse(data)
            .compact()
            .ok_or_else(|| too_long(data.len()))?;
        let mut compacted = compacted.render();
        if compacted.len() >= MOUNT_DATA_LIMIT {
            return Err(too_long(compacted.len()));
        }
        if read_only {
            compacted.push_str(",ro");
        }
        let status = Command::new("mount")
            .current_dir(&dir)
            .args(["-t", "overlay", "-o", &compacted, &m.source])
            .arg(target)
            .status()
            .map_err(|source| Error::Mount {
                fs_type: m.fs_type.clone(),
                target: target.to_owned(),
                source,
            })?;
        if !status.success() {
            return Err(Error::Mount {
                fs_type: m.fs_type.clone(),
                target: target.to_owned(),
                source: io::Error::other(format!("mount(8) from {dir} exited with {status}")),
            });
        }
        Ok(())
    }
}
