//! The syscalls that std and nix do not cover, one safe function each.
//!
//! Everything `unsafe` in the daemon lives here.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

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
