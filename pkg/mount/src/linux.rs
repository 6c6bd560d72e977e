use std::ffi::CString;
use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::mount::{MountFlags as Raw, UnmountFlags, mount, mount_remount, unmount};
use rustlayer_core::Mount;
use tracing::{debug, warn};

use rustlayer_core::IdRanges;

use crate::Mounter;
use crate::error::{Error, Result};
use crate::idmap::{UserNamespace, idmapped_clone};
use crate::options::{OverlayData, lowers_common_dir, parse_options, split_id_maps};

/// The kernel copies at most one page of mount data.
const MOUNT_DATA_LIMIT: usize = 4096;

/// Performs mounts with mount(2), as containerd's mount package does.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxMounter;

impl Mounter for LinuxMounter {
    /// `uidmap=` and `gidmap=` together make the mount idmapped, as containerd 2.x
    /// does: an overlay's lower directories are reached through one idmapped,
    /// read-only copy of their common directory (overlay cannot idmap its upper
    /// directory; the snapshotter made that owned by the container's root), any
    /// other mount is idmapped as a whole. containerd 2.1 leaves read-only binds
    /// unmapped; this mounter maps them too.
    fn mount(&self, m: &Mount, target: &Path) -> Result<()> {
        let (options, maps) = split_id_maps(&m.options);
        let Some(maps) = maps else {
            return self.mount_plain(m, target);
        };
        let mount_err = |source: io::Error| Error::Mount {
            fs_type: m.fs_type.clone(),
            target: target.to_owned(),
            source,
        };
        let parse = |what, text: &str| {
            IdRanges::parse(what, text).map_err(|err| {
                mount_err(io::Error::new(io::ErrorKind::InvalidInput, err.to_string()))
            })
        };
        let userns = UserNamespace::new(
            &parse("uidmap", &maps.uidmap)?,
            &parse("gidmap", &maps.gidmap)?,
        )
        .map_err(mount_err)?;
        let unmapped = Mount {
            fs_type: m.fs_type.clone(),
            source: m.source.clone(),
            options,
        };
        let (flags, _) = parse_options(&unmapped.options);
        if unmapped.fs_type == "overlay" {
            self.mount_overlay_on_idmapped_lowers(&unmapped, &userns, target)
        } else if flags.bind {
            idmapped_clone(
                Path::new(&unmapped.source),
                target,
                &userns,
                flags.read_only,
                flags.recursive,
            )
            .map_err(mount_err)
        } else {
            let scratch = Scratch::new(target).map_err(mount_err)?;
            self.mount_plain(&unmapped, scratch.path())?;
            let cloned = idmapped_clone(scratch.path(), target, &userns, flags.read_only, false);
            scratch.unmount(self);
            cloned.map_err(mount_err)
        }
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
    /// A mount without id mapping, with mount(2).
    fn mount_plain(&self, m: &Mount, target: &Path) -> Result<()> {
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

    /// The lower directories' common directory is cloned, idmapped and read-only,
    /// onto a scratch directory, and overlay is mounted with the lowers rewritten
    /// through it. Overlay keeps private references to its layers, so the scratch
    /// mount is detached once overlay is up.
    fn mount_overlay_on_idmapped_lowers(
        &self,
        m: &Mount,
        userns: &UserNamespace,
        target: &Path,
    ) -> Result<()> {
        let mount_err = |source: io::Error| Error::Mount {
            fs_type: m.fs_type.clone(),
            target: target.to_owned(),
            source,
        };
        let (_, data) = parse_options(&m.options);
        let lowers = OverlayData::parse(&data).lowers;
        let common = lowers_common_dir(&lowers).ok_or_else(|| {
            mount_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("lower directories {lowers:?} share no directory to idmap"),
            ))
        })?;
        let scratch = Scratch::new(target).map_err(mount_err)?;
        if let Err(err) = idmapped_clone(Path::new(common), scratch.path(), userns, true, false) {
            scratch.remove();
            return Err(mount_err(err));
        }
        let through_scratch: Vec<String> = lowers
            .iter()
            .map(|lower| format!("{}{}", scratch.path().display(), &lower[common.len()..]))
            .collect();
        let options = m
            .options
            .iter()
            .map(|option| {
                if option.starts_with("lowerdir=") {
                    format!("lowerdir={}", through_scratch.join(":"))
                } else {
                    option.clone()
                }
            })
            .collect();
        let mounted = self.mount_plain(
            &Mount {
                fs_type: m.fs_type.clone(),
                source: m.source.clone(),
                options,
            },
            target,
        );
        scratch.unmount(self);
        mounted
    }
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

/// A private, empty directory to mount on for a moment, beside the target (where
/// the caller may write, unlike perhaps /tmp); removed with its mount.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(beside: &Path) -> io::Result<Scratch> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let dir = beside
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("/tmp"));
        let path = dir.join(format!(
            ".idmapped-{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Scratch { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Detaches whatever is mounted here, then removes the directory.
    fn unmount(self, mounter: &LinuxMounter) {
        if let Err(err) = mounter.unmount(&self.path, true) {
            warn!(%err, "cannot detach a scratch mount");
        }
        self.remove();
    }

    fn remove(self) {
        if let Err(err) = std::fs::remove_dir(&self.path) {
            warn!(path = %self.path.display(), %err, "cannot remove a scratch directory");
        }
    }
}
