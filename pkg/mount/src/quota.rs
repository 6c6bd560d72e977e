//! Project quotas: one project id per directory tree, with block and inode limits
//! the filesystem enforces (EDQUOT) and usage counters it keeps up to date on every
//! write, so a tree's usage is read in constant time instead of walked.
//!
//! The calls are an ioctl (FS_IOC_FSSETXATTR, which tags a directory with a project
//! id and makes everything created below inherit it) and `quotactl_fd` (Linux 5.14)
//! on the PRJQUOTA type, whose generic commands xfs (mounted `prjquota`) and ext4
//! (with the `quota,project` features, mounted `prjquota`) both answer. They sit
//! behind [`ProjectQuota`] so the logic that picks ids and limits is tested without
//! root through [`RecordingProjectQuota`].
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// A project's hard limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectLimits {
    pub bytes: Option<u64>,
    pub inodes: Option<u64>,
}

impl ProjectLimits {
    pub const NONE: ProjectLimits = ProjectLimits {
        bytes: None,
        inodes: None,
    };

    pub fn is_none(&self) -> bool {
        self.bytes.is_none() && self.inodes.is_none()
    }
}

/// What the filesystem counts against a project, and the limits it enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectUsage {
    pub bytes: u64,
    pub inodes: u64,
    pub limits: ProjectLimits,
}

pub trait ProjectQuota: Send + Sync {
    /// Whether the filesystem holding `dir` keeps project quotas, with what was
    /// found (the filesystem's answer) as the error when it does not.
    fn probe(&self, dir: &Path) -> Result<()>;

    /// Tags the empty directory `dir` with `project` and makes everything created
    /// below it inherit the tag. Must run before anything is written into it: what
    /// exists already keeps its old project.
    fn assign(&self, dir: &Path, project: u32) -> Result<()>;

    /// The project id `dir` is tagged with (0 when none).
    fn project_of(&self, dir: &Path) -> Result<u32>;

    /// Sets (or with [`ProjectLimits::NONE`], clears) the project's hard limits on
    /// the filesystem holding `dir`.
    fn set_limits(&self, dir: &Path, project: u32, limits: ProjectLimits) -> Result<()>;

    /// The project's counters and limits; zero for a project the filesystem has no
    /// record of.
    fn usage(&self, dir: &Path, project: u32) -> Result<ProjectUsage>;

    /// Every project from `from` on that the filesystem keeps a record of, in order,
    /// with its counters and limits.
    fn projects(&self, dir: &Path, from: u32) -> Result<Vec<(u32, ProjectUsage)>>;
}

// <linux/quota.h>
const PRJQUOTA: libc::c_int = 2;
const Q_GETQUOTA: libc::c_int = 0x800007;
const Q_SETQUOTA: libc::c_int = 0x800008;
const Q_GETNEXTQUOTA: libc::c_int = 0x800009;
const QIF_BLIMITS: u32 = 1;
const QIF_SPACE: u32 = 2;
const QIF_ILIMITS: u32 = 4;
const QIF_INODES: u32 = 8;
/// Block limits are in these units; usage is in bytes.
const QIF_DQBLKSIZE: u64 = 1024;

// <linux/fs.h>
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801C_581F;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401C_5820;
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

/// `struct if_nextdqblk`: the fields of a `struct if_dqblk` followed by the id
/// Q_GETNEXTQUOTA found, so one buffer serves every command. An `if_dqblk` is 72
/// bytes with its tail padding, which overlaps `id`: Q_GETQUOTA may overwrite it and
/// Q_SETQUOTA ignores it, neither of which matters, as only Q_GETNEXTQUOTA's is read.
#[repr(C)]
#[derive(Default)]
struct Dqblk {
    bhardlimit: u64,
    bsoftlimit: u64,
    curspace: u64,
    ihardlimit: u64,
    isoftlimit: u64,
    curinodes: u64,
    btime: u64,
    itime: u64,
    valid: u32,
    id: u32,
}

/// `struct fsxattr`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

fn qcmd(cmd: libc::c_int) -> libc::c_int {
    (cmd << 8) | PRJQUOTA
}

fn limit(raw: u64, unit: u64) -> Option<u64> {
    (raw != 0).then(|| raw.saturating_mul(unit))
}

fn usage_of(bhard: u64, curspace: u64, ihard: u64, curinodes: u64) -> ProjectUsage {
    ProjectUsage {
        bytes: curspace,
        inodes: curinodes,
        limits: ProjectLimits {
            bytes: limit(bhard, QIF_DQBLKSIZE),
            inodes: limit(ihard, 1),
        },
    }
}

/// Project quotas through `quotactl_fd` and FS_IOC_FSSETXATTR.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxProjectQuota;

fn fs_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Fs { what, path, source }
}

/// `quotactl_fd(fd, QCMD(cmd, PRJQUOTA), id, addr)`.
///
/// # Safety
/// `addr` must point to the structure `cmd` reads or writes, alive for the call.
unsafe fn quotactl(
    dir: &File,
    cmd: libc::c_int,
    id: u32,
    addr: *mut libc::c_void,
) -> io::Result<()> {
    // SAFETY: the caller vouches for `addr`; the fd is open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            dir.as_raw_fd(),
            qcmd(cmd),
            id as libc::c_int,
            addr,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn get_quota(dir: &File, project: u32) -> io::Result<ProjectUsage> {
    let mut q = Dqblk::default();
    // SAFETY: Q_GETQUOTA fills a `struct if_dqblk`, the start of `q`.
    match unsafe { quotactl(dir, Q_GETQUOTA, project, (&raw mut q).cast()) } {
        Ok(()) => Ok(usage_of(
            q.bhardlimit,
            q.curspace,
            q.ihardlimit,
            q.curinodes,
        )),
        // xfs has no record of a project nothing was ever charged to.
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(ProjectUsage::default()),
        Err(err) => Err(err),
    }
}

fn get_xattr(file: &File, dir: &Path) -> Result<FsXattr> {
    let mut attr = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR fills a `struct fsxattr`, which `attr` is.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FSGETXATTR, &raw mut attr) };
    if rc < 0 {
        return Err(fs_err("read the project id of", dir)(
            io::Error::last_os_error(),
        ));
    }
    Ok(attr)
}

impl ProjectQuota for LinuxProjectQuota {
    fn probe(&self, dir: &Path) -> Result<()> {
        let file = File::open(dir).map_err(fs_err("open", dir))?;
        get_xattr(&file, dir)?;
        get_quota(&file, 0)
            .map(|_| ())
            .map_err(fs_err("read project quotas of the filesystem of", dir))
    }

    fn project_of(&self, dir: &Path) -> Result<u32> {
        let file = File::open(dir).map_err(fs_err("open", dir))?;
        Ok(get_xattr(&file, dir)?.projid)
    }

    fn assign(&self, dir: &Path, project: u32) -> Result<()> {
        let file = File::open(dir).map_err(fs_err("open", dir))?;
        let mut attr = get_xattr(&file, dir)?;
        attr.projid = project;
        attr.xflags |= FS_XFLAG_PROJINHERIT;
        // SAFETY: FS_IOC_FSSETXATTR reads the `struct fsxattr` just filled in.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FSSETXATTR, &raw const attr) };
        if rc < 0 {
            return Err(fs_err("set the project id of", dir)(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn set_limits(&self, dir: &Path, project: u32, limits: ProjectLimits) -> Result<()> {
        let file = File::open(dir).map_err(fs_err("open", dir))?;
        let mut q = Dqblk {
            // Rounded up: a limit below one block unit would be no limit at all.
            bhardlimit: limits.bytes.map_or(0, |b| b.div_ceil(QIF_DQBLKSIZE)),
            ihardlimit: limits.inodes.unwrap_or(0),
            valid: QIF_BLIMITS | QIF_ILIMITS,
            ..Dqblk::default()
        };
        // SAFETY: Q_SETQUOTA reads a `struct if_dqblk`, the start of `q`.
        unsafe { quotactl(&file, Q_SETQUOTA, project, (&raw mut q).cast()) }
            .map_err(fs_err("set project quota limits on the filesystem of", dir))
    }

    fn usage(&self, dir: &Path, project: u32) -> Result<ProjectUsage> {
        let file = File::open(dir).map_err(fs_err("open", dir))?;
        get_quota(&file, project).map_err(fs_err("read project quota of", dir))
    }

    fn projects(&self, dir: &Path, from: u32) -> Result<Vec<(u32, ProjectUsage)>> {
        let file = File::open(dir).map_err(fs_err("open", dir))?;
        let mut found = Vec::new();
        let mut next = from;
        loop {
            let mut q = Dqblk::default();
            // SAFETY: Q_GETNEXTQUOTA fills a `struct if_nextdqblk`, which `q` is.
            match unsafe { quotactl(&file, Q_GETNEXTQUOTA, next, (&raw mut q).cast()) } {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => break,
                Err(err) => {
                    return Err(fs_err("list project quotas of the filesystem of", dir)(err));
                }
            }
            let wanted = QIF_SPACE | QIF_INODES;
            let usage = if q.valid & wanted == wanted || q.valid == 0 {
                usage_of(q.bhardlimit, q.curspace, q.ihardlimit, q.curinodes)
            } else {
                ProjectUsage::default()
            };
            found.push((q.id, usage));
            match q.id.checked_add(1) {
                Some(after) => next = after,
                None => break,
            }
        }
        Ok(found)
    }
}

/// One call a [`RecordingProjectQuota`] was asked to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaCall {
    Assign { dir: PathBuf, project: u32 },
    SetLimits { project: u32, limits: ProjectLimits },
}

/// A [`ProjectQuota`] for tests without root: remembers assignments and limits,
/// reports usage the test puts in with [`charge`](Self::charge), and supports
/// quotas unless made with [`unsupported`](Self::unsupported).
#[derive(Debug, Default)]
pub struct RecordingProjectQuota {
    unsupported: Option<String>,
    state: Mutex<RecordedState>,
}

#[derive(Debug, Default)]
struct RecordedState {
    calls: Vec<QuotaCall>,
    tags: BTreeMap<PathBuf, u32>,
    projects: BTreeMap<u32, ProjectUsage>,
}

impl RecordingProjectQuota {
    /// A filesystem without project quotas; `reason` is what the probe says.
    pub fn unsupported(reason: &str) -> Self {
        RecordingProjectQuota {
            unsupported: Some(reason.to_owned()),
            state: Mutex::default(),
        }
    }

    pub fn calls(&self) -> Vec<QuotaCall> {
        self.lock().calls.clone()
    }

    /// What the filesystem would count against `project` after writes.
    pub fn charge(&self, project: u32, bytes: u64, inodes: u64) {
        let mut state = self.lock();
        let usage = state.projects.entry(project).or_default();
        usage.bytes = bytes;
        usage.inodes = inodes;
    }

    /// The limits `project` has now.
    pub fn limits(&self, project: u32) -> ProjectLimits {
        self.lock()
            .projects
            .get(&project)
            .map(|u| u.limits)
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecordedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, dir: &Path) -> Result<()> {
        match &self.unsupported {
            None => Ok(()),
            Some(reason) => Err(Error::Fs {
                what: "read project quotas of the filesystem of",
                path: dir.to_owned(),
                source: io::Error::other(reason.clone()),
            }),
        }
    }
}

impl ProjectQuota for RecordingProjectQuota {
    fn probe(&self, dir: &Path) -> Result<()> {
        self.check(dir)
    }

    /// Refuses a directory that is not empty: what it holds would keep its old
    /// project, so a caller doing this has a bug the real call would hide.
    fn assign(&self, dir: &Path, project: u32) -> Result<()> {
        self.check(dir)?;
        let has_entries = std::fs::read_dir(dir)
            .map_err(fs_err("list", dir))?
            .next()
            .is_some();
        if has_entries {
            return Err(Error::Fs {
                what: "tag a directory that already has entries with a project:",
                path: dir.to_owned(),
                source: io::Error::from_raw_os_error(libc::ENOTEMPTY),
            });
        }
        let mut state = self.lock();
        state.tags.insert(dir.to_owned(), project);
        state.calls.push(QuotaCall::Assign {
            dir: dir.to_owned(),
            project,
        });
        Ok(())
    }

    fn project_of(&self, dir: &Path) -> Result<u32> {
        self.check(dir)?;
        Ok(self.lock().tags.get(dir).copied().unwrap_or(0))
    }

    fn set_limits(&self, dir: &Path, project: u32, limits: ProjectLimits) -> Result<()> {
        self.check(dir)?;
        let mut state = self.lock();
        state.calls.push(QuotaCall::SetLimits { project, limits });
        state.projects.entry(project).or_default().limits = limits;
        Ok(())
    }

    fn usage(&self, dir: &Path, project: u32) -> Result<ProjectUsage> {
        self.check(dir)?;
        Ok(self
            .lock()
            .projects
            .get(&project)
            .copied()
            .unwrap_or_default())
    }

    fn projects(&self, dir: &Path, from: u32) -> Result<Vec<(u32, ProjectUsage)>> {
        self.check(dir)?;
        Ok(self
            .lock()
            .projects
            .range(from..)
            .map(|(id, usage)| (*id, *usage))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_structures_have_the_kernel_s_sizes() {
        assert_eq!(std::mem::size_of::<Dqblk>(), 72);
        assert_eq!(
            std::mem::offset_of!(Dqblk, id),
            68,
            "if_dqblk's fields end at 68"
        );
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        // _IOR('X', 31, struct fsxattr) and _IOW('X', 32, struct fsxattr)
        let size = std::mem::size_of::<FsXattr>() as libc::c_ulong;
        assert_eq!(
            FS_IOC_FSGETXATTR,
            (2 << 30) | (size << 16) | (0x58 << 8) | 31
        );
        assert_eq!(
            FS_IOC_FSSETXATTR,
            (1 << 30) | (size << 16) | (0x58 << 8) | 32
        );
    }

    #[test]
    fn limits_are_read_in_bytes_and_zero_is_none() {
        let u = usage_of(4, 5000, 0, 3);
        assert_eq!(u.limits.bytes, Some(4096));
        assert_eq!(u.limits.inodes, None);
        assert_eq!((u.bytes, u.inodes), (5000, 3));
        assert!(usage_of(0, 1, 0, 1).limits.is_none());
    }

    #[test]
    fn the_recording_fake_keeps_limits_and_lists_projects_in_order() {
        let q = RecordingProjectQuota::default();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        q.assign(dir, 9).unwrap();
        assert_eq!(q.project_of(dir).unwrap(), 9);
        std::fs::write(dir.join("f"), b"x").unwrap();
        assert!(q.assign(dir, 10).is_err(), "only empty directories");
        q.set_limits(
            dir,
            9,
            ProjectLimits {
                bytes: Some(1 << 20),
                inodes: None,
            },
        )
        .unwrap();
        q.charge(3, 10, 1);
        assert_eq!(q.limits(9).bytes, Some(1 << 20));
        let listed: Vec<u32> = q
            .projects(dir, 4)
            .unwrap()
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(listed, [9]);
        assert_eq!(q.usage(dir, 3).unwrap().bytes, 10);
        let off = RecordingProjectQuota::unsupported("quotas are off");
        assert!(
            off.probe(dir)
                .unwrap_err()
                .to_string()
                .contains("quotas are off")
        );
    }

    #[test]
    fn this_kernel_answers_the_probe_without_crashing() {
        // Whatever the host's filesystem supports, the calls must come back with an
        // answer (Ok or an errno), never a fault.
        let dir = tempfile::tempdir().unwrap();
        let quota = LinuxProjectQuota;
        match quota.probe(dir.path()) {
            Ok(()) => assert!(quota.usage(dir.path(), 0).is_ok()),
            Err(err) => assert!(matches!(err, Error::Fs { .. }), "{err}"),
        }
    }
}
