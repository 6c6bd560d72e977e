//! Idmapped mounts, as containerd 2.x makes them from a snapshot's `uidmap=` and
//! `gidmap=` options: a user namespace holding the mapping, and a detached copy of
//! a mount tree (`open_tree`) marked with it (`mount_setattr`) before it is attached
//! (`move_mount`). Files on disk owned by container id N are then seen, and
//! created, as the host id N maps to.
//!
//! The only unsafe code here is `fork` (for the process whose user namespace is
//! kept) and the `mount_setattr` system call, which rustix does not wrap.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use rustix::fs::CWD;
use rustix::mount::{MoveMountFlags, OpenTreeFlags, move_mount, open_tree};
use rustix::process::{Pid, WaitOptions, waitpid};
use rustlayer_core::IdRanges;

/// A user namespace with a fixed uid and gid mapping, held open by descriptor only:
/// the process that made it has exited by the time it is returned.
#[derive(Debug)]
pub struct UserNamespace {
    fd: OwnedFd,
}

impl UserNamespace {
    /// Makes a user namespace mapping `uids` and `gids` (container ranges onto host
    /// ranges). A helper process forked for the purpose enters a new namespace, this
    /// process writes its maps and opens it, and the helper exits.
    pub fn new(uids: &IdRanges, gids: &IdRanges) -> io::Result<UserNamespace> {
        let uid_map = kernel_map(uids);
        let gid_map = kernel_map(gids);
        let (mut ready_rx, ready_tx) = io::pipe()?;
        let (go_rx, go_tx) = io::pipe()?;
        let fds = HelperFds {
            ready_tx: ready_tx.as_raw_fd(),
            go_rx: go_rx.as_raw_fd(),
            go_tx: go_tx.as_raw_fd(),
        };
        // SAFETY: the child runs only `helper`, which makes async-signal-safe system
        // calls on descriptors that are open in it (inherited from this process) and
        // ends in `_exit`; it touches no lock, allocator or Rust runtime state.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: this is the freshly forked child; see above.
            unsafe { helper(&fds) }
        }
        drop(ready_tx);
        drop(go_rx);
        let helper = Helper {
            pid: Pid::from_raw(pid).expect("fork returns a positive pid to the parent"),
            go: Some(go_tx),
        };
        let mut errno = [0u8; 4];
        ready_rx.read_exact(&mut errno)?;
        let errno = i32::from_ne_bytes(errno);
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let proc = format!("/proc/{pid}");
        std::fs::write(format!("{proc}/uid_map"), uid_map)?;
        std::fs::write(format!("{proc}/gid_map"), gid_map)?;
        let fd = File::open(format!("{proc}/ns/user"))?.into();
        helper.release()?;
        Ok(UserNamespace { fd })
    }
}

impl AsFd for UserNamespace {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `container host size` lines, as `/proc/<pid>/uid_map` takes them.
fn kernel_map(ranges: &IdRanges) -> String {
    ranges
        .ranges()
        .iter()
        .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
        .collect()
}

/// Raw descriptors the forked helper uses; plain integers so that nothing in the
/// child runs a destructor.
struct HelperFds {
    ready_tx: RawFd,
    go_rx: RawFd,
    go_tx: RawFd,
}

/// The forked helper: enter a new user namespace, report the outcome (an errno, 0
/// for success), wait until the parent is done with the namespace, exit.
///
/// # Safety
///
/// Only to be called in a child just forked from this process.
unsafe fn helper(fds: &HelperFds) -> ! {
    // SAFETY: close, unshare, write, read and _exit are async-signal-safe; the
    // buffers live on this stack frame for the duration of each call.
    unsafe {
        // The parent signals "done" by closing its end; our inherited copy of that
        // end must not keep the pipe open.
        libc::close(fds.go_tx);
        let errno: i32 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
            0
        } else {
            *libc::__errno_location()
        };
        let bytes = errno.to_ne_bytes();
        libc::write(fds.ready_tx, bytes.as_ptr().cast::<c_void>(), bytes.len());
        let mut byte = 0u8;
        libc::read(fds.go_rx, (&raw mut byte).cast::<c_void>(), 1);
        libc::_exit(0)
    }
}

/// The helper process: told to exit and reaped however the parent leaves.
struct Helper {
    pid: Pid,
    go: Option<io::PipeWriter>,
}

impl Helper {
    fn release(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        if let Some(mut go) = self.go.take() {
            // Closing is the signal; the byte only makes it prompt.
            let _ = go.write_all(&[1]);
            drop(go);
            waitpid(Some(self.pid), WaitOptions::empty())?;
        }
        Ok(())
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Clones the mount tree at `source` (recursively with `recursive`), marks the copy
/// idmapped through `userns` (and read-only with `read_only`), and attaches it at
/// `target`. The source is left as it was.
pub fn idmapped_clone(
    source: &Path,
    target: &Path,
    userns: &UserNamespace,
    read_only: bool,
    recursive: bool,
) -> io::Result<()> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = open_tree(CWD, source, flags)?;
    set_idmap(tree.as_fd(), userns.as_fd(), read_only, recursive)?;
    move_mount(
        tree.as_fd(),
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

fn set_idmap(
    tree: BorrowedFd<'_>,
    userns: BorrowedFd<'_>,
    read_only: bool,
    recursive: bool,
) -> io::Result<()> {
    let mut attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    if read_only {
        attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    let mut at_flags = libc::AT_EMPTY_PATH;
    if recursive {
        at_flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: mount_setattr reads `size_of::<mount_attr>()` bytes from `attr`, which
    // lives across the call, and a NUL-terminated empty path; `tree` is an open
    // mount-tree descriptor for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at_flags,
            &raw const attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
