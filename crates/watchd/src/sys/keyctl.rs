//! The kernel key calls: keyctl(2) and add_key(2), which neither rustix nor nix wraps, one
//! safe function per operation, each naming its man page (keyctl_*(3) of libkeyutils).
#![allow(unsafe_code)] // keyctl(2) and add_key(2) through syscall(2): no crate wraps them.

use std::ffi::CStr;
use std::io;

use super::cvt;

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
