//! fanotify(7): the two calls that make and mark a group. nix wraps them with flag types
//! that know no mount-namespace marks (`FAN_MARK_MNTNS`, `FAN_REPORT_MNT`, kernel 6.15), so
//! the daemon calls glibc's functions directly. Events are read with plain `read(2)` and
//! parsed in safe code ([`crate::fanotify`]).
#![allow(unsafe_code)] // fanotify_init(2) and fanotify_mark(2) through libc.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// `fanotify_init(2)`: a new notification group. `flags` are `FAN_*` init flags
/// (`FAN_CLOEXEC` is always added), `event_f_flags` the open flags of event descriptors.
pub fn fanotify_init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; the kernel returns a new descriptor or -1.
    let fd = cvt(unsafe { libc::fanotify_init(flags | libc::FAN_CLOEXEC, event_f_flags) }.into())?;
    // SAFETY: `fd` is a descriptor this call just made and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `fanotify_mark(2)`: adds, removes or flushes the marks of `group` on the object `dirfd`
/// (and `path` below it, when given) names, for the events in `mask`.
pub fn fanotify_mark(
    group: BorrowedFd<'_>,
    flags: u32,
    mask: u64,
    dirfd: BorrowedFd<'_>,
    path: Option<&CStr>,
) -> io::Result<()> {
    let path = path.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: both descriptors are open for the call (borrowed); `path` is null or a
    // NUL-terminated string that outlives the call.
    let ret =
        unsafe { libc::fanotify_mark(group.as_raw_fd(), flags, mask, dirfd.as_raw_fd(), path) };
    cvt(ret.into()).map(drop)
}
