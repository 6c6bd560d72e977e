//! The base device's filesystem, made once per pool: every first layer is a
//! snapshot of it. A marker file, written durably once the filesystem is finished,
//! records how it was made. A snapshot asked to be larger than the base has its
//! copy of the filesystem grown to fill its device. mkfs, resize2fs and xfs_growfs
//! are the programs the backend runs: writing or resizing a filesystem is not
//! something to reimplement.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rustlayer_core::Mount;
use rustlayer_mount::{Mounter, sync_filesystem};
use tracing::info;

use crate::config::FsType;
use crate::error::{Error, Result};

pub fn make_filesystem(fs: FsType, device: &Path, extra: &[String]) -> Result<()> {
    let attempts: Vec<Vec<String>> = match fs {
        // Thin devices read unwritten blocks as zeros, so ext4 need not zero its
        // inode tables; lazily zeroing them would instead write them again in
        // every snapshot. Older mke2fs lacks the option: zero them eagerly, once.
        FsType::Ext4 => vec![
            args(&["-q", "-F", "-E", "nodiscard,assume_storage_prezeroed=1"]),
            args(&[
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            ]),
        ],
        FsType::Xfs => vec![args(&["-q", "-f", "-K"])],
    };
    let program = format!("mkfs.{fs}");
    let mut last = String::new();
    for base in attempts {
        let mut command = Command::new(&program);
        command.args(&base).args(extra).arg(device);
        match run_tool(&mut command, &program, fs)? {
            Ok(()) => {
                info!(fs = %fs, device = %device.display(), "base filesystem made");
                return Ok(());
            }
            Err(stderr) => last = stderr,
        }
    }
    Err(Error::FsTool {
        command: format!("{program} {}", device.display()),
        detail: last,
    })
}

/// How the tools, run in the C locale, say a write was refused for want of space.
pub const ENOSPC_MESSAGE: &str = "No space left on device";

/// Runs one of the filesystem tools: Ok(Err(its stderr)) when it ran and failed.
/// The C locale keeps its messages those [`ENOSPC_MESSAGE`] is looked for in.
fn run_tool(
    command: &mut Command,
    program: &str,
    fs: FsType,
) -> Result<std::result::Result<(), String>> {
    let output = command
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| Error::FsToolMissing {
            program: program.to_owned(),
            package: fs.tools_package(),
            source,
        })?;
    if output.status.success() {
        return Ok(Ok(()));
    }
    Ok(Err(String::from_utf8_lossy(&output.stderr)
        .trim()
        .to_owned()))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// What the marker records: what cannot change for an existing root.
pub fn marker_contents(fs: FsType, bytes: u64) -> String {
    format!("fs_type={fs} size={bytes}\n")
}

/// Whether the base filesystem was finished as `wanted`; an error if it was made
/// otherwise. A `fresh` pool has no base device, whatever the marker says.
pub fn is_made(marker: &Path, wanted: &str, fresh: bool) -> Result<bool> {
    if fresh {
        let _ = fs::remove_file(marker);
    }
    match fs::read_to_string(marker) {
        Ok(found) if found == wanted => Ok(true),
        Ok(found) => Err(Error::Config(format!(
            "the base device under this root was made with {}, but the configuration asks for {}; fs_type and base_image_size cannot change for an existing root",
            found.trim(),
            wanted.trim()
        ))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(Error::io("read", marker)(err)),
    }
}

/// mke2fs leaves `lost+found` in the root; the first layer of every image must
/// start from an empty directory, as it does on overlay.
pub fn empty_root(
    mounter: &dyn Mounter,
    fs: FsType,
    device: &Path,
    mountpoint: &Path,
) -> Result<()> {
    if fs != FsType::Ext4 {
        return Ok(());
    }
    fs::create_dir_all(mountpoint).map_err(Error::io("create", mountpoint))?;
    let mount = Mount {
        fs_type: fs.as_str().to_owned(),
        source: device.to_string_lossy().into_owned(),
        options: Vec::new(),
    };
    mounter.mount(&mount, mountpoint)?;
    let lost = mountpoint.join("lost+found");
    let removed = match fs::remove_dir(&lost) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("remove", &lost)(err))
        }
        _ => Ok(()),
    };
    mounter.unmount(mountpoint, false)?;
    let _ = fs::remove_dir(mountpoint);
    removed
}

/// How long a grow's private mount is waited for to come free.
const UNMOUNT_PATIENCE: Duration = Duration::from_secs(60);

/// The ext4 mount option that keeps the kernel from zeroing inode tables in the
/// background. Unwritten thin blocks read as zeros already (the base is made with
/// `assume_storage_prezeroed` for that reason), but the groups a grown filesystem
/// gains are not flagged as zeroed, and zeroing them would write every new inode
/// table into the pool: a lasting share of the growth (over 6% on a small ext4)
/// for each container.
pub const EXT4_NO_ITABLE_ZEROING: &str = "noinit_itable";

/// Grows the filesystem on a thin device to fill the device, behind a trait so the
/// backend's sequencing is unit-tested without root.
pub trait GrowFs: Send + Sync {
    /// `mountpoint` is a private path the filesystem may be mounted on meanwhile.
    fn grow(&self, fs: FsType, device: &Path, mountpoint: &Path) -> Result<()>;

    /// Undoes what a grow a crash interrupted left at `mountpoint`: the mount,
    /// which outlives the process and keeps its device open, and the directory.
    fn release(&self, mountpoint: &Path) -> Result<()>;
}

/// Grows a filesystem while it is mounted: xfs_growfs only works on a mounted
/// filesystem, and resize2fs on a mounted ext4 grows it online through the kernel,
/// which needs no `e2fsck -f` first (offline resize2fs refuses a filesystem mounted
/// since its last check, as every snapshot of the base is).
pub struct OnlineGrow<M: Mounter> {
    pub mounter: M,
}

impl<M: Mounter> GrowFs for OnlineGrow<M> {
    fn grow(&self, fs: FsType, device: &Path, mountpoint: &Path) -> Result<()> {
        fs::create_dir_all(mountpoint).map_err(Error::io("create", mountpoint))?;
        let mount = Mount {
            fs_type: fs.as_str().to_owned(),
            source: device.to_string_lossy().into_owned(),
            // Every snapshot carries the base filesystem's UUID. ext4 is mounted
            // without EXT4_NO_ITABLE_ZEROING here: with it, the kernel zeroes the new
            // groups' inode tables during the resize, and dm-thin has no
            // write-zeroes, so the zeros land in the pool.
            options: match fs {
                FsType::Xfs => vec!["nouuid".to_owned()],
                FsType::Ext4 => Vec::new(),
            },
        };
        self.mounter.mount(&mount, mountpoint)?;
        let (program, target) = match fs {
            FsType::Ext4 => ("resize2fs", device),
            FsType::Xfs => ("xfs_growfs", mountpoint),
        };
        let grown = run(program, fs, target).and_then(|()| {
            // The tool may return before the filesystem's writes reach the device
            // (ext4 commits its journal later), and unmounting reports no write
            // error: syncing surfaces one the device refused (a full thin pool)
            // while the snapshot can still be refused.
            sync_filesystem(mountpoint).map_err(Error::from)
        });
        unmount_patiently(&self.mounter, mountpoint)?;
        let _ = fs::remove_dir(mountpoint);
        grown
    }

    fn release(&self, mountpoint: &Path) -> Result<()> {
        release_mount(&self.mounter, mountpoint)
    }
}

/// Undoes a private mount a crash left at `mountpoint` (a grow's, or the base's
/// while its root was emptied): unmounts it and removes the directory. Nothing
/// there, mounted or not, is fine.
pub fn release_mount(mounter: &dyn Mounter, mountpoint: &Path) -> Result<()> {
    unmount_patiently(mounter, mountpoint)?;
    match fs::remove_dir(mountpoint) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("remove", mountpoint)(err))
        }
        _ => Ok(()),
    }
}

/// Unmounts `mountpoint`, waiting up to [`UNMOUNT_PATIENCE`] while something
/// else holds it for a moment: a process the daemon starts meanwhile holds a
/// copy of its descriptors (the one syncfs used among them) until it execs, and
/// the tool a crashed daemon ran outlives it. A lazy unmount would not do: the
/// device would stay open, and an open device cannot be deleted. Not being a
/// mount point is fine: a crash came before the mount or after the unmount.
fn unmount_patiently(mounter: &dyn Mounter, mountpoint: &Path) -> Result<()> {
    let deadline = Instant::now() + UNMOUNT_PATIENCE;
    loop {
        let err = match mounter.unmount(mountpoint, false) {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        let errno = match &err {
            rustlayer_mount::Error::Unmount { source, .. } => source.raw_os_error(),
            _ => None,
        };
        match errno {
            Some(libc::EINVAL | libc::ENOENT) => return Ok(()),
            Some(libc::EBUSY) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(100));
            }
            _ => return Err(err.into()),
        }
    }
}

fn run(program: &str, fs: FsType, target: &Path) -> Result<()> {
    run_tool(Command::new(program).arg(target), program, fs)?.map_err(|detail| Error::FsTool {
        command: format!("{program} {}", target.display()),
        detail,
    })
}

pub fn write_durably(path: &Path, contents: &[u8]) -> Result<()> {
    let temp = path.with_extension("tmp");
    let mut file = fs::File::create(&temp).map_err(Error::io("create", &temp))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(Error::io("write", &temp))?;
    fs::rename(&temp, path).map_err(Error::io("rename", path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("sync", dir))
}

#[cfg(test)]
mod tests {
    use rustlayer_mount::{MountCall, RecordingMounter};

    use super::*;

    #[test]
    fn empty_root_mounts_the_new_ext4_filesystem_once_and_unmounts_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mountpoint = dir.path().join("base.mnt");
        let mounter = RecordingMounter::default();
        empty_root(&mounter, FsType::Ext4, Path::new("/dev/dm-7"), &mountpoint)
            .expect("empty_root succeeds");
        assert_eq!(
            mounter.calls(),
            vec![
                MountCall::Mount {
                    mount: Mount {
                        fs_type: "ext4".into(),
                        source: "/dev/dm-7".into(),
                        options: Vec::new(),
                    },
                    target: mountpoint.clone(),
                },
                MountCall::Unmount {
                    target: mountpoint.clone(),
                    lazy: false,
                },
            ]
        );
        assert!(!mountpoint.exists(), "the mountpoint is removed afterwards");
    }

    #[test]
    fn releasing_a_leftover_grow_unmounts_it_and_removes_its_mountpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mountpoint = dir.path().join("grow-7");
        fs::create_dir(&mountpoint).expect("mountpoint");
        let grow = OnlineGrow {
            mounter: RecordingMounter::default(),
        };
        grow.release(&mountpoint).expect("release succeeds");
        assert_eq!(
            grow.mounter.calls(),
            vec![MountCall::Unmount {
                target: mountpoint.clone(),
                lazy: false,
            }]
        );
        assert!(!mountpoint.exists());
        grow.release(&mountpoint)
            .expect("releasing what is gone is fine");
    }

    /// Refuses the first `busy` unmounts with EBUSY, as a mount something else
    /// holds for a moment.
    struct BusyAtFirst {
        busy: std::sync::Mutex<u32>,
        tries: std::sync::Mutex<u32>,
    }

    impl Mounter for BusyAtFirst {
        fn mount(&self, _mount: &Mount, _target: &Path) -> rustlayer_mount::Result<()> {
            Ok(())
        }

        fn unmount(&self, target: &Path, _lazy: bool) -> rustlayer_mount::Result<()> {
            *rustlayer_core::sync::lock(&self.tries) += 1;
            let mut busy = rustlayer_core::sync::lock(&self.busy);
            if *busy == 0 {
                return Ok(());
            }
            *busy -= 1;
            Err(rustlayer_mount::Error::Unmount {
                target: target.to_owned(),
                source: std::io::Error::from_raw_os_error(libc::EBUSY),
            })
        }
    }

    #[test]
    fn a_mount_busy_for_a_moment_is_unmounted_once_it_comes_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mountpoint = dir.path().join("grow-7");
        fs::create_dir(&mountpoint).expect("mountpoint");
        let grow = OnlineGrow {
            mounter: BusyAtFirst {
                busy: 2.into(),
                tries: 0.into(),
            },
        };
        grow.release(&mountpoint).expect("release waits it out");
        assert_eq!(*rustlayer_core::sync::lock(&grow.mounter.tries), 3);
        assert!(!mountpoint.exists());
    }

    #[test]
    fn xfs_has_no_lost_found_to_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounter = RecordingMounter::default();
        empty_root(
            &mounter,
            FsType::Xfs,
            Path::new("/dev/dm-7"),
            &dir.path().join("base.mnt"),
        )
        .expect("empty_root succeeds");
        assert_eq!(mounter.calls(), vec![]);
    }

    #[test]
    fn the_marker_says_whether_and_how_the_base_was_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("base");
        let wanted = marker_contents(FsType::Ext4, 16 << 20);
        assert!(!is_made(&marker, &wanted, false).expect("no marker yet"));
        write_durably(&marker, wanted.as_bytes()).expect("marker written");
        assert!(is_made(&marker, &wanted, false).expect("marker matches"));
        let other = marker_contents(FsType::Xfs, 16 << 20);
        let err = is_made(&marker, &other, false).expect_err("fs_type cannot change");
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        // A fresh pool has no base device, whatever the marker says.
        assert!(!is_made(&marker, &other, true).expect("fresh pool"));
        assert!(!marker.exists());
    }
}
