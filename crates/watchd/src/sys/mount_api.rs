//! The mount API calls no crate wraps yet: `statmount(2)` and `listmount(2)` (kernel 6.8),
//! and the `NS_GET_MNTNS_ID` ioctl of a mount namespace descriptor (ioctl_nsfs(2)).
//! Results come back as bytes or ids; [`crate::statmount`] reads the bytes in safe code.
#![allow(unsafe_code)] // syscall(2) and ioctl(2) with pointers into our own buffers.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

// The same numbers on every architecture Rust targets (the unified system call table of
// x86_64, i386, aarch64, riscv64, …; only alpha differs); libc names them for few.
const SYS_STATMOUNT: libc::c_long = 457;
const SYS_LISTMOUNT: libc::c_long = 458;

/// `struct mnt_id_req` of `<linux/mount.h>`: which mount (or whose children) to look at.
#[repr(C)]
struct MntIdReq {
    size: u32,
    spare: u32,
    mnt_id: u64,
    /// statmount: the `STATMOUNT_*` mask; listmount: list ids after this one.
    param: u64,
    /// 0 for the caller's own namespace.
    mnt_ns_id: u64,
}

/// `listmount(2)`'s "the whole namespace" parent id.
pub const LSMT_ROOT: u64 = u64::MAX;

/// `statmount(2)`: what `mask` asks of mount `mnt_id` in namespace `ns_id` (0: the
/// daemon's own), written into `buf` as a `struct statmount` followed by its strings. A
/// buffer too small for the strings is doubled (up to 1 MiB) and the call repeated. Returns
/// the bytes written.
pub fn statmount(mnt_id: u64, ns_id: u64, mask: u64, buf: &mut Vec<u64>) -> io::Result<&[u8]> {
    let req = MntIdReq {
        size: std::mem::size_of::<MntIdReq>() as u32,
        spare: 0,
        mnt_id,
        param: mask,
        mnt_ns_id: ns_id,
    };
    loop {
        let bytes = buf.len() * 8;
        // SAFETY: `req` is a complete mnt_id_req of the size it states; `buf` is writable
        // for `bytes` bytes and 8-aligned, as struct statmount needs; flags must be 0.
        let ret = unsafe {
            libc::syscall(
                SYS_STATMOUNT,
                &req as *const MntIdReq,
                buf.as_mut_ptr(),
                bytes,
                0,
            )
        };
        match cvt(ret) {
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::EOVERFLOW) && bytes < 1 << 20 => {
                buf.resize(buf.len().max(64) * 2, 0);
            }
            Err(e) => return Err(e),
        }
    }
    let bytes = as_bytes(buf);
    let size = u32::from_ne_bytes(bytes[..4].try_into().expect("four bytes")) as usize;
    Ok(&bytes[..size.min(bytes.len())])
}

/// Views `u64`s as the bytes they are made of.
fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u8 has no alignment or validity requirement and the slice covers exactly the
    // memory of `words`, borrowed for as long as `words` is.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) }
}

/// `listmount(2)`: the unique ids of the mounts below `parent` ([`LSMT_ROOT`]: all) in
/// namespace `ns_id` (0: the daemon's own), in ascending order, starting after id `after`
/// (0: from the first). Fills `ids` and returns how many it wrote: fewer than `ids.len()`
/// means the list is complete.
pub fn listmount(parent: u64, ns_id: u64, after: u64, ids: &mut [u64]) -> io::Result<usize> {
    let req = MntIdReq {
        size: std::mem::size_of::<MntIdReq>() as u32,
        spare: 0,
        mnt_id: parent,
        param: after,
        mnt_ns_id: ns_id,
    };
    // SAFETY: `req` is a complete mnt_id_req of the size it states; `ids` is writable for
    // `ids.len()` u64s, the count passed; flags must be 0.
    let ret = unsafe {
        libc::syscall(
            SYS_LISTMOUNT,
            &req as *const MntIdReq,
            ids.as_mut_ptr(),
            ids.len(),
            0,
        )
    };
    Ok(cvt(ret)? as usize)
}

/// `ioctl(NS_GET_MNTNS_ID)` (ioctl_nsfs(2), kernel 6.10): the 64-bit id of the mount
/// namespace `ns` (an open `/proc/PID/ns/mnt`), as statmount and listmount name it.
pub fn ns_get_mntns_id(ns: BorrowedFd<'_>) -> io::Result<u64> {
    // _IOR(0xb7, 0x5, __u64)
    const NS_GET_MNTNS_ID: libc::c_ulong = (2 << 30) | (8 << 16) | (0xb7 << 8) | 0x5;
    let mut id = 0u64;
    // SAFETY: NS_GET_MNTNS_ID writes one u64 through the pointer, which is valid for it.
    let ret = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_MNTNS_ID, &mut id as *mut u64) };
    cvt(ret.into())?;
    Ok(id)
}
