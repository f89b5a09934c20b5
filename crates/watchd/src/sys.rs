//! The syscalls that std and nix do not cover, one safe function each.
//!
//! Everything `unsafe` in the daemon lives here.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

mod interrupt;
mod watch_queue;
pub use interrupt::*;
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

/// A kernel key's serial number (`key_serial_t`). Negative values are the special ids
/// (`KEY_SPEC_*`) that name a keyring of the calling thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeySerial(pub i32);

impl std::fmt::Display for KeySerial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `KEY_SPEC_THREAD_KEYRING`: the calling thread's own keyring.
pub const KEY_SPEC_THREAD_KEYRING: KeySerial = KeySerial(-1);
/// `KEY_SPEC_SESSION_KEYRING`.
pub const KEY_SPEC_SESSION_KEYRING: KeySerial = KeySerial(-3);
/// `KEY_SPEC_USER_KEYRING`: the keyring of the thread's *real* uid.
pub const KEY_SPEC_USER_KEYRING: KeySerial = KeySerial(-4);
/// `KEY_SPEC_USER_SESSION_KEYRING`: the default session keyring of the thread's real uid.
pub const KEY_SPEC_USER_SESSION_KEYRING: KeySerial = KeySerial(-5);

const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
const KEYCTL_SETPERM: libc::c_long = 5;
const KEYCTL_DESCRIBE: libc::c_long = 6;
const KEYCTL_LINK: libc::c_long = 8;
const KEYCTL_UNLINK: libc::c_long = 9;
const KEYCTL_READ: libc::c_long = 11;
const KEYCTL_GET_PERSISTENT: libc::c_long = 22;

/// `keyctl(2)` with up to four integer arguments.
fn keyctl(
    op: libc::c_long,
    a: libc::c_long,
    b: libc::c_long,
    c: libc::c_long,
) -> io::Result<libc::c_long> {
    // SAFETY: the operations called through here take only integers (serials, uids, flags);
    // those that take buffers have their own wrappers below.
    cvt(unsafe { libc::syscall(libc::SYS_keyctl, op, a, b, c, 0 as libc::c_long) })
}

/// `KEYCTL_GET_KEYRING_ID` (keyctl_get_keyring_ID(3)): the serial behind a special id,
/// creating that keyring first when `create` is set.
pub fn keyctl_get_keyring_id(id: KeySerial, create: bool) -> io::Result<KeySerial> {
    keyctl(KEYCTL_GET_KEYRING_ID, id.0.into(), create.into(), 0).map(|s| KeySerial(s as i32))
}

/// `KEYCTL_JOIN_SESSION_KEYRING` (keyctl_join_session_keyring(3)) with no name: the calling
/// thread gets a new anonymous session keyring of its own.
pub fn keyctl_join_new_session_keyring() -> io::Result<KeySerial> {
    keyctl(KEYCTL_JOIN_SESSION_KEYRING, 0, 0, 0).map(|s| KeySerial(s as i32))
}

/// `KEYCTL_LINK` (keyctl_link(3)): links `key` into `keyring`.
pub fn keyctl_link(key: KeySerial, keyring: KeySerial) -> io::Result<()> {
    keyctl(KEYCTL_LINK, key.0.into(), keyring.0.into(), 0).map(drop)
}

/// `KEYCTL_UNLINK` (keyctl_unlink(3)): removes the link from `keyring` to `key`.
pub fn keyctl_unlink(key: KeySerial, keyring: KeySerial) -> io::Result<()> {
    keyctl(KEYCTL_UNLINK, key.0.into(), keyring.0.into(), 0).map(drop)
}

/// `KEYCTL_GET_PERSISTENT` (keyctl_get_persistent(3)): links `uid`'s persistent keyring
/// into `into` and returns its serial. Creates the keyring when it does not exist and
/// resets its expiry timer: call it once per watch, never per poll.
pub fn keyctl_get_persistent(uid: u32, into: KeySerial) -> io::Result<KeySerial> {
    keyctl(KEYCTL_GET_PERSISTENT, uid as libc::c_long, into.0.into(), 0)
        .map(|s| KeySerial(s as i32))
}

/// `KEYCTL_SETPERM` (keyctl_setperm(3)): replaces `key`'s permission mask. Needs SetAttr.
pub fn keyctl_setperm(key: KeySerial, perm: u32) -> io::Result<()> {
    keyctl(KEYCTL_SETPERM, key.0.into(), perm.into(), 0).map(drop)
}

/// `add_key(2)`: creates (or updates) the key `key_type`/`description` with `payload` in
/// `keyring` and returns its serial. Needs Write on the keyring.
pub fn add_key(
    key_type: &CStr,
    description: &CStr,
    payload: &[u8],
    keyring: KeySerial,
) -> io::Result<KeySerial> {
    // SAFETY: both strings are NUL-terminated and the payload pointer is valid for its
    // length; the kernel only reads them.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_add_key,
            key_type.as_ptr(),
            description.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            keyring.0 as libc::c_long,
        )
    })
    .map(|s| KeySerial(s as i32))
}

/// `keyctl(2)` with a buffer: returns the length the kernel wanted to write, which can
/// exceed `buf.len()` (then only `buf.len()` bytes were written).
fn keyctl_into(op: libc::c_long, key: KeySerial, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into the live, exclusively
    // borrowed buffer.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            op,
            key.0 as libc::c_long,
            buf.as_mut_ptr(),
            buf.len(),
            0 as libc::c_long,
        )
    })
    .map(|n| n as usize)
}

/// Calls `keyctl_into` with `buf` grown until the answer fits; returns its length. The
/// answer is `buf[..len]`; the buffer keeps its size, so a poll loop reusing it writes no
/// zeros of its own.
fn keyctl_grow(op: libc::c_long, key: KeySerial, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.len() < 256 {
        buf.resize(256, 0);
    }
    loop {
        let len = keyctl_into(op, key, buf)?;
        if len <= buf.len() {
            return Ok(len);
        }
        // A keyring's list is refused (EINVAL) into a buffer whose size is not a whole
        // number of serials.
        buf.resize(len.next_multiple_of(8), 0);
    }
}

/// `KEYCTL_DESCRIBE` (keyctl_describe(3)): "type;uid;gid;perm;description" in
/// `buf[..len]`, the trailing NUL left out. Needs View permission.
pub fn keyctl_describe(key: KeySerial, buf: &mut Vec<u8>) -> io::Result<usize> {
    let len = keyctl_grow(KEYCTL_DESCRIBE, key, buf)?;
    Ok(if len > 0 && buf[len - 1] == 0 {
        len - 1
    } else {
        len
    })
}

/// `KEYCTL_READ` (keyctl_read(3)): a key's payload, or a keyring's list of serials (native
/// endian `i32`s), in `buf[..len]`. Needs Read permission, or Search on a possessed key.
pub fn keyctl_read(key: KeySerial, buf: &mut Vec<u8>) -> io::Result<usize> {
    keyctl_grow(KEYCTL_READ, key, buf)
}

/// `setresuid(2)` for the calling thread only (the raw call: glibc's wrapper changes every
/// thread). `None` leaves that id as it is. Keyrings looked up by special id
/// ([`KEY_SPEC_USER_KEYRING`]) belong to the thread's real uid.
pub fn setresuid_this_thread(
    real: Option<u32>,
    effective: Option<u32>,
    saved: Option<u32>,
) -> io::Result<()> {
    let id = |v: Option<u32>| v.map_or(-1 as libc::c_long, libc::c_long::from);
    // SAFETY: takes integers, changes only this thread's credentials.
    cvt(unsafe { libc::syscall(libc::SYS_setresuid, id(real), id(effective), id(saved)) }).map(drop)
}

/// `O_NOTIFICATION_PIPE` (= `O_EXCL`): asks `pipe2(2)` for a watch_queue notification pipe.
const O_NOTIFICATION_PIPE: libc::c_int = libc::O_EXCL;
