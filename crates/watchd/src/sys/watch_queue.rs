//! Kernel watch queues (`CONFIG_WATCH_QUEUE`, Linux ≥ 5.8): a notification pipe the kernel
//! writes key notifications into (Documentation/core-api/watch_queue.rst). One safe function
//! per call: [`pipe2_notification`] (nix's pipe2(2)), [`ioctl_watch_queue_set_size`],
//! [`ioctl_watch_queue_set_filter`], [`keyctl_watch_key`].
//!
//! Constants and layouts are from include/uapi/linux/watch_queue.h and
//! include/uapi/linux/keyctl.h (the `libc` crate has none of them).
#![allow(unsafe_code)] // The watch-queue ioctls and KEYCTL_WATCH_KEY, which no crate wraps.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;

use super::{KeySerial, cvt};

/// `O_NOTIFICATION_PIPE` (= `O_EXCL`): asks `pipe2(2)` for a watch_queue notification pipe.
const O_NOTIFICATION_PIPE: OFlag = OFlag::O_EXCL;

/// `IOC_WATCH_QUEUE_SET_SIZE` = `_IO('W', 0x60)` (include/uapi/linux/watch_queue.h).
const IOC_WATCH_QUEUE_SET_SIZE: libc::c_ulong = 0x5760;
/// `IOC_WATCH_QUEUE_SET_FILTER` = `_IO('W', 0x61)` (include/uapi/linux/watch_queue.h).
const IOC_WATCH_QUEUE_SET_FILTER: libc::c_ulong = 0x5761;
/// `KEYCTL_WATCH_KEY` (include/uapi/linux/keyctl.h).
const KEYCTL_WATCH_KEY: libc::c_long = 32;

/// `WATCH_TYPE_META` (enum watch_notification_type): removal and loss notes.
pub const WATCH_TYPE_META: u32 = 0;
/// `WATCH_TYPE_KEY_NOTIFY`: key and keyring changes (`struct key_notification`).
pub const WATCH_TYPE_KEY_NOTIFY: u32 = 1;
/// `WATCH_META_REMOVAL_NOTIFICATION`: a watch went away (unwatched, or the key was
/// destroyed); 16 bytes long when it carries the key's serial
/// (`struct watch_notification_removal`), 8 otherwise.
pub const WATCH_META_REMOVAL_NOTIFICATION: u8 = 0;
/// `WATCH_META_LOSS_NOTIFICATION`: the queue overflowed, notes were dropped.
pub const WATCH_META_LOSS_NOTIFICATION: u8 = 1;
/// `WATCH_INFO_LENGTH`: the bits of `watch_notification::info` that give the note's length
/// in bytes, header included.
pub const WATCH_INFO_LENGTH: u32 = 0x7f;
/// `WATCH_INFO_ID` (shift 8): the watch id given to [`keyctl_watch_key`].
pub const WATCH_INFO_ID: u32 = 0xff00;
/// The largest queue `IOC_WATCH_QUEUE_SET_SIZE` accepts, in notes (kernel/watch_queue.c).
pub const WATCH_QUEUE_MAX_NOTES: u32 = 512;

/// `struct watch_notification_type_filter` (include/uapi/linux/watch_queue.h): lets through
/// notes of type `type` whose subtype's bit is set in `subtype_filter` and whose
/// `info & info_mask == info_filter`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct watch_notification_type_filter {
    pub r#type: u32,
    pub info_filter: u32,
    pub info_mask: u32,
    pub subtype_filter: [u32; 8],
}

/// `struct watch_notification_filter` (include/uapi/linux/watch_queue.h), with its flexible
/// array `filters[]` made a fixed one of `N` entries. `nr_filters` may not exceed `N`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct watch_notification_filter<const N: usize> {
    pub nr_filters: u32,
    pub __reserved: u32,
    pub filters: [watch_notification_type_filter; N],
}

impl<const N: usize> watch_notification_filter<N> {
    /// A filter with all `N` entries in use.
    pub fn new(filters: [watch_notification_type_filter; N]) -> Self {
        watch_notification_filter {
            nr_filters: N as u32,
            __reserved: 0,
            filters,
        }
    }
}

/// `pipe2(2)` with `O_NOTIFICATION_PIPE | O_CLOEXEC | extra` (`extra` may add
/// `O_NONBLOCK`): a watch_queue notification pipe, `(read end, write end)`. Fails with
/// ENOPKG on kernels without `CONFIG_WATCH_QUEUE`.
pub fn pipe2_notification(extra: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = O_NOTIFICATION_PIPE | OFlag::O_CLOEXEC | OFlag::from_bits_retain(extra);
    Ok(nix::unistd::pipe2(flags)?)
}

/// `ioctl(2)` `IOC_WATCH_QUEUE_SET_SIZE` on a notification pipe: preallocates room for
/// `notes` notes (1 to [`WATCH_QUEUE_MAX_NOTES`], rounded up to whole pages of 32). Must come
/// before the first watch; a second call fails with EBUSY.
pub fn ioctl_watch_queue_set_size(pipe: BorrowedFd<'_>, notes: u32) -> io::Result<()> {
    // SAFETY: this ioctl takes an integer argument; no memory is shared with the kernel.
    let ret = unsafe {
        libc::ioctl(
            pipe.as_raw_fd(),
            IOC_WATCH_QUEUE_SET_SIZE,
            notes as libc::c_ulong,
        )
    };
    cvt(ret.into()).map(drop)
}

/// `ioctl(2)` `IOC_WATCH_QUEUE_SET_FILTER` on a notification pipe: only notes that one of
/// `filter`'s entries lets through are queued (removal and loss notes always are).
pub fn ioctl_watch_queue_set_filter<const N: usize>(
    pipe: BorrowedFd<'_>,
    filter: &watch_notification_filter<N>,
) -> io::Result<()> {
    if filter.nr_filters as usize > N {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: the kernel reads the header and `nr_filters` (≤ N, checked above) entries from
    // the live, repr(C) struct during the call, and writes nothing.
    let ret = unsafe {
        libc::ioctl(
            pipe.as_raw_fd(),
            IOC_WATCH_QUEUE_SET_FILTER,
            filter as *const watch_notification_filter<N>,
        )
    };
    cvt(ret.into()).map(drop)
}

/// `KEYCTL_WATCH_KEY` (keyctl_watch_key(3)): with `Some(id)`, `queue` (either end of a
/// notification pipe) gets `key`'s notifications, `id` in each note's `WATCH_INFO_ID` bits;
/// a second watch of the same key on the same queue fails with EBUSY. With `None` (the
/// kernel's watch id -1) the watch is removed, which queues a removal note. Needs View
/// permission on the key.
pub fn keyctl_watch_key(key: KeySerial, queue: BorrowedFd<'_>, id: Option<u8>) -> io::Result<()> {
    let id = id.map_or(-1, libc::c_long::from);
    // SAFETY: this operation takes only integers (a serial, a descriptor, a watch id).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_WATCH_KEY,
            key.0 as libc::c_long,
            queue.as_raw_fd() as libc::c_long,
            id,
            0 as libc::c_long,
        )
    };
    cvt(ret).map(drop)
}
