//! File handles: name_to_handle_at(2) and open_by_handle_at(2), which neither nix nor
//! rustix wraps. fanotify's FID-mode events name objects by file handle; the files source
//! takes the handles of watched paths to match events with, and opens an event's directory
//! handle (root only: `CAP_DAC_READ_SEARCH`) to learn where in a watched tree it is.
#![allow(unsafe_code)] // two calls through libc, with a `struct file_handle` they fill or read.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// `MAX_HANDLE_SZ`: the largest handle any filesystem makes.
pub const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for any handle, aligned as the kernel reads it.
#[repr(C)]
struct HandleBuf {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// `name_to_handle_at(2)` with `AT_EMPTY_PATH` on `fd` itself: its file handle as
/// (type, bytes), and the id of the mount it was reached through.
pub fn name_to_handle_at(fd: BorrowedFd<'_>) -> io::Result<(i32, Vec<u8>, i32)> {
    let mut buf = HandleBuf {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    let empty: &CStr = c"";
    // SAFETY: `buf` is a `struct file_handle` whose `handle_bytes` says how much room follows
    // it; `empty` is NUL-terminated; both outlive the call, and `fd` is open (borrowed).
    let ret = unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            empty.as_ptr(),
            (&raw mut buf).cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    cvt(ret.into())?;
    let len = (buf.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((buf.handle_type, buf.f_handle[..len].to_vec(), mount_id))
}

/// `open_by_handle_at(2)`: opens the object with handle (`handle_type`, `handle`) on the
/// filesystem of `mount_fd`, through `mount_fd`'s mount, with `flags` (e.g. `O_PATH`).
/// Needs `CAP_DAC_READ_SEARCH`.
pub fn open_by_handle_at(
    mount_fd: BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
    flags: i32,
) -> io::Result<OwnedFd> {
    if handle.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut buf = HandleBuf {
        handle_bytes: handle.len() as u32,
        handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    buf.f_handle[..handle.len()].copy_from_slice(handle);
    // SAFETY: `buf` is a `struct file_handle` holding `handle_bytes` bytes of handle, alive
    // for the call; the kernel only reads it. `mount_fd` is open (borrowed).
    let fd = cvt(unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&raw mut buf).cast::<libc::file_handle>(),
            flags | libc::O_CLOEXEC,
        )
    }
    .into())?;
    // SAFETY: `fd` is a descriptor this call just made and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
