//! The system calls std does not make for the daemon, one safe function each.
//!
//! Those rustix or nix wrap are called through them here, in safe code: [`pidfd_open`],
//! [`openat2_path`] (typed [`ResolveFlags`]), and the per-thread credentials
//! ([`setresuid_this_thread`], [`setgroups_this_thread`], [`setfsuid`], [`setfsgid`]).
//! Those no crate wraps are hand-written in the submodules, the only places of the daemon
//! where `unsafe` is allowed (each says why at its top, each block why it is sound):
//! [`keyctl`] (keyctl(2), add_key(2)), [`watch_queue`] (the watch-queue ioctls),
//! [`mount_api`] (statmount(2), listmount(2), the mount namespace id), [`fanotify`]
//! (fanotify_init(2) and fanotify_mark(2) with the mount-namespace flags), [`handle`]
//! (name_to_handle_at(2), open_by_handle_at(2)),
//! [`netlink`] (joining a netlink multicast group), [`quota`] (quotactl_fd(2)),
//! [`interrupt`] (a no-op signal handler and a per-thread POSIX timer) and [`reactor`]
//! (registering a descriptor with Tokio, an `unsafe fn`).

use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};

mod fanotify;
mod handle;
mod interrupt;
mod keyctl;
mod mount_api;
mod netlink;
mod quota;
mod reactor;
mod watch_queue;
pub use fanotify::*;
pub use handle::*;
pub use interrupt::*;
pub use keyctl::*;
pub use mount_api::*;
pub use netlink::*;
pub use quota::*;
pub use reactor::*;
pub use rustix::fs::ResolveFlags;
pub use watch_queue::*;

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
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// `openat2(2)` with `O_PATH | O_CLOEXEC`: a handle on `path` below `dirfd`, resolved the
/// way `resolve` says (e.g. [`ResolveFlags::IN_ROOT`]), with the calling thread's
/// credentials.
pub fn openat2_path(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    resolve: ResolveFlags,
) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::CLOEXEC;
    Ok(rustix::fs::openat2(
        dirfd,
        path,
        flags,
        Mode::empty(),
        resolve,
    )?)
}

/// `setfsuid(2)` for the calling thread only (glibc's wrapper is the plain system call, not
/// broadcast to every thread). It reports no failure: returns the previous fsuid, so
/// asking for `u32::MAX` (an invalid id, which changes nothing) reads the current one.
pub fn setfsuid(uid: u32) -> u32 {
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid)).as_raw()
}

/// `setfsgid(2)` for the calling thread only. Returns the previous fsgid.
pub fn setfsgid(gid: u32) -> u32 {
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid)).as_raw()
}

/// `setgroups(2)` for the calling thread only: the raw system call (rustix's
/// `set_thread_groups`), because glibc's wrapper changes every thread of the process.
pub fn setgroups_this_thread(groups: &[u32]) -> io::Result<()> {
    let groups: Vec<rustix::thread::Gid> = groups
        .iter()
        .map(|&g| rustix::thread::Gid::from_raw(g))
        .collect();
    Ok(rustix::thread::set_thread_groups(&groups)?)
}

/// `setresuid(2)` for the calling thread only (the raw call, rustix's `set_thread_res_uid`:
/// glibc's wrapper changes every thread). `None` leaves that id as it is. Keyrings looked up
/// by special id ([`KEY_SPEC_USER_KEYRING`]) belong to the thread's real uid.
pub fn setresuid_this_thread(
    real: Option<u32>,
    effective: Option<u32>,
    saved: Option<u32>,
) -> io::Result<()> {
    let id = |v: Option<u32>| v.map(rustix::thread::Uid::from_raw);
    Ok(rustix::thread::set_thread_res_uid(
        id(real),
        id(effective),
        id(saved),
    )?)
}
