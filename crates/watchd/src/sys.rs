//! The syscalls that std and nix do not cover, one safe function each.
//!
//! Everything `unsafe` in the daemon lives here.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Turns a `-1` return into the thread's errno.
fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `pidfd_open(2)`: a descriptor that pins process `pid`, so later lookups through it
/// cannot land on a recycled pid.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1; no memory
    // is shared with the kernel.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) })?;
    // SAFETY: on success the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// A descriptor shared between the hub (which writes through it) and the reactor (which
/// polls it); the `Arc` keeps it open for as long as either holds it.
pub struct SharedFd(pub std::sync::Arc<OwnedFd>);

impl std::os::fd::AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&*self.0)
    }
}

/// Registers `fd` with the current Tokio reactor for `interest` (epoll, edge-triggered).
pub fn register_async(
    fd: std::sync::Arc<OwnedFd>,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<SharedFd>> {
    // SAFETY: the AsyncFd owns the SharedFd, whose Arc keeps the same open descriptor alive
    // until the AsyncFd is dropped, and as_raw_fd always returns that descriptor.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(SharedFd(fd), interest) }
        .map_err(io::Error::from)
}

/// `openat2(2)`'s `struct open_how`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Resolve as if `dirfd` were the root: absolute symlinks and ".." stay inside it.
pub const RESOLVE_IN_ROOT: u64 = 0x10;
/// Refuse /proc magic links (/proc/PID/fd/N, /proc/PID/root…), which could leave the root.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;

/// `openat2(2)` with `O_PATH | O_CLOEXEC`: a handle on `path` below `dirfd`, resolved the
/// way `resolve` says, with the calling thread's credentials.
pub fn openat2_path(dirfd: BorrowedFd<'_>, path: &CStr, resolve: u64) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: `path` is NUL-terminated, `how` is a valid open_how whose size we pass, and the
    // kernel only reads both during the call.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `setfsuid(2)` for the calling thread only (the raw call; glibc's would be per thread too,
/// but it reports nothing). Returns the previous fsuid.
pub fn setfsuid(uid: u32) -> u32 {
    // SAFETY: takes an integer, changes only this thread's credentials.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) as u32 }
}

/// `setfsgid(2)` for the calling thread only. Returns the previous fsgid.
pub fn setfsgid(gid: u32) -> u32 {
    // SAFETY: takes an integer, changes only this thread's credentials.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid) as u32 }
}

/// `setgroups(2)` for the calling thread only: the raw system call, because glibc's wrapper
/// changes every thread of the process.
pub fn setgroups_this_thread(groups: &[u32]) -> io::Result<()> {
    // SAFETY: the kernel reads `groups.len()` gid_t values from a live slice.
    cvt(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) }).map(drop)
}
