//! Attaching a file to a loop device, for devmapper's self-managed pool: two ioctls
//! rustix does not wrap, behind [`LoopAttacher`] so the pool's setup is tested
//! without root through [`RecordingLoopAttacher`].
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
/// Detach once the last user (our fd, then the thin pool) lets go, so a crash can
/// never leak loop devices.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` from <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from <linux/loop.h> (Linux 5.8+).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device attached to a backing file; detaches itself once nothing holds it.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    major: u32,
    minor: u32,
    /// Holds the device until the caller (the thin pool) has its own reference;
    /// None for a recorded attach.
    _handle: Option<File>,
}

impl LoopDevice {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device number as (major, minor).
    pub fn number(&self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

pub trait LoopAttacher: Send + Sync {
    /// Attaches `backing` (opened read-write) to a free loop device; `name` is what
    /// the device reports as its backing file.
    fn attach(&self, backing: &File, name: &Path) -> Result<LoopDevice>;
}

/// Attaches with LOOP_CTL_GET_FREE and LOOP_CONFIGURE (Linux 5.8+), auto-clearing.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxLoopAttacher;

impl LoopAttacher for LinuxLoopAttacher {
    fn attach(&self, backing: &File, name: &Path) -> Result<LoopDevice> {
        attach(backing, name).map_err(|source| Error::Fs {
            what: "attach a loop device to",
            path: name.to_owned(),
            source,
        })
    }
}

/// A [`LoopAttacher`] that hands out made-up loop devices (major 7, minors from
/// 0) and remembers the backing names, for tests without root.
#[derive(Debug, Default)]
pub struct RecordingLoopAttacher {
    attached: Mutex<Vec<PathBuf>>,
}

impl RecordingLoopAttacher {
    pub fn attached(&self) -> Vec<PathBuf> {
        rustlayer_core::sync::lock(&self.attached).clone()
    }
}

impl LoopAttacher for RecordingLoopAttacher {
    fn attach(&self, _backing: &File, name: &Path) -> Result<LoopDevice> {
        let mut attached = rustlayer_core::sync::lock(&self.attached);
        let minor = u32::try_from(attached.len()).unwrap_or(u32::MAX);
        attached.push(name.to_owned());
        Ok(LoopDevice {
            path: PathBuf::from(format!("/dev/loop{minor}")),
            major: 7,
            minor,
            _handle: None,
        })
    }
}

fn attach(backing: &File, name: &Path) -> io::Result<LoopDevice> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Another process may take the free device between asking and configuring it.
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if number < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let handle = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut config = LoopConfig {
            fd: u32::try_from(backing.as_raw_fd()).map_err(io::Error::other)?,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_AUTOCLEAR,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        let file_name = name.as_os_str().as_encoded_bytes();
        let len = file_name.len().min(63);
        config.info.lo_file_name[..len].copy_from_slice(&file_name[..len]);
        // SAFETY: `config` is a fully initialised `struct loop_config` that outlives
        // the call; the kernel only reads it.
        let rc = unsafe {
            libc::ioctl(
                handle.as_raw_fd(),
                LOOP_CONFIGURE,
                &mut config as *mut LoopConfig,
            )
        };
        if rc == 0 {
            let stat = rustix::fs::fstat(&handle)?;
            return Ok(LoopDevice {
                path,
                major: rustix::fs::major(stat.st_rdev),
                minor: rustix::fs::minor(stat.st_rdev),
                _handle: Some(handle),
            });
        }
        last = io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EBUSY) {
            return Err(last);
        }
    }
    Err(last)
}
