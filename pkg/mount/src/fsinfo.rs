use std::fs::{self, File};
use std::io;
use std::path::Path;

use rustix::fs::{Dir, FileType, statvfs, syncfs};

use crate::error::{Error, Result};

/// Capacity and use of the filesystem holding a path, in bytes and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub bytes_total: u64,
    pub bytes_free: u64,
    pub bytes_available: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
    pub read_only: bool,
}

pub fn fs_stats(path: &Path) -> Result<FsStats> {
    let st = statvfs(path).map_err(|e| Error::Fs {
        what: "statvfs",
        path: path.to_owned(),
        source: e.into(),
    })?;
    let frsize = st.f_frsize;
    Ok(FsStats {
        bytes_total: st.f_blocks.saturating_mul(frsize),
        bytes_free: st.f_bfree.saturating_mul(frsize),
        bytes_available: st.f_bavail.saturating_mul(frsize),
        inodes_total: st.f_files,
        inodes_free: st.f_ffree,
        read_only: st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
    })
}

/// Whether the kernel knows a filesystem type (e.g. "overlay"), per /proc/filesystems.
pub fn filesystem_registered(name: &str) -> Result<bool> {
    let path = Path::new("/proc/filesystems");
    let list = fs::read_to_string(path).map_err(|source| Error::Fs {
        what: "read",
        path: path.to_owned(),
        source,
    })?;
    Ok(list
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .any(|fs| fs == name))
}

/// Overlayfs needs directory entries to carry their type (d_type); xfs formatted
/// with ftype=0 does not, and overlay then misbehaves silently. Checks by creating
/// a file in `dir` and reading the type back from the directory listing.
pub fn supports_d_type(dir: &Path) -> Result<bool> {
    let probe = tempfile_in(dir)?;
    let result = (|| {
        let fd = File::open(probe.path()).map_err(|source| Error::Fs {
            what: "open",
            path: probe.path().to_owned(),
            source,
        })?;
        let entries = Dir::read_from(&fd).map_err(|e| Error::Fs {
            what: "read directory",
            path: probe.path().to_owned(),
            source: e.into(),
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::Fs {
                what: "read directory",
                path: probe.path().to_owned(),
                source: e.into(),
            })?;
            if entry.file_name().to_bytes() == b"probe" {
                return Ok(entry.file_type() != FileType::Unknown);
            }
        }
        Err(Error::Fs {
            what: "find probe file in",
            path: probe.path().to_owned(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })
    })();
    let _ = fs::remove_dir_all(probe.path());
    result
}

struct ProbeDir(std::path::PathBuf);

impl ProbeDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

fn tempfile_in(dir: &Path) -> Result<ProbeDir> {
    let path = dir.join(format!(".d_type-probe-{}", std::process::id()));
    let _ = fs::remove_dir_all(&path);
    let fs_err = |what, source| Error::Fs {
        what,
        path: path.clone(),
        source,
    };
    fs::create_dir(&path).map_err(|e| fs_err("create", e))?;
    File::create(path.join("probe")).map_err(|e| fs_err("create probe in", e))?;
    Ok(ProbeDir(path))
}

/// Flushes every dirty page and inode of the filesystem holding `path` to stable
/// storage: one call instead of an fsync per file of a freshly written layer.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let fd = File::open(path).map_err(|source| Error::Fs {
        what: "open",
        path: path.to_owned(),
        source,
    })?;
    syncfs(&fd).map_err(|e| Error::Fs {
        what: "syncfs",
        path: path.to_owned(),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dirs_report_d_type_and_stats() {
        let dir = tempfile::tempdir().unwrap();
        // Every filesystem a CI machine puts /tmp on (ext4, xfs ftype=1, tmpfs) has it.
        assert!(supports_d_type(dir.path()).unwrap());
        let stats = fs_stats(dir.path()).unwrap();
        assert!(stats.bytes_total > 0 && stats.bytes_total >= stats.bytes_free);
        assert!(filesystem_registered("proc").unwrap());
        assert!(!filesystem_registered("no-such-fs").unwrap());
        sync_filesystem(dir.path()).unwrap();
    }
}
