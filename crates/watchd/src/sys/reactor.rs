//! Registering a descriptor with Tokio's reactor, which takes a promise
//! (`AsyncFd::register_with_interest` is `unsafe`) that the descriptor outlives it.
#![allow(unsafe_code)] // AsyncFd::register_with_interest is an unsafe fn.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// A descriptor shared between the hub (which writes through it) and the reactor (which
/// polls it); the `Arc` keeps it open for as long as either holds it.
pub struct SharedFd(pub Arc<OwnedFd>);

impl std::os::fd::AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&*self.0)
    }
}

/// Registers `fd` with the current Tokio reactor for `interest` (epoll, edge-triggered).
pub fn register_async(
    fd: Arc<OwnedFd>,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<SharedFd>> {
    // SAFETY: the AsyncFd owns the SharedFd, whose Arc keeps the same open descriptor alive
    // until the AsyncFd is dropped, and as_raw_fd always returns that descriptor.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(SharedFd(fd), interest) }
        .map_err(io::Error::from)
}
