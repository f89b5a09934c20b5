//! Packet pipes: `pipe2(O_DIRECT)`, where every `write()` is one packet and every `read()`
//! returns one whole packet. The daemon keeps the write end, non-blocking, and never waits.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// What became of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// The pipe is full: the client is not keeping up.
    Full,
    /// Every copy of the read end is closed: the subscription is over.
    ReaderGone,
}

/// A new packet pipe holding `depth` packets (rounded up to a power of two by the kernel).
/// Returns the read end, the write end (`O_NONBLOCK`) and the depth the kernel granted.
pub fn packet_pipe(depth: u32) -> io::Result<(OwnedFd, OwnedFd, u32)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_DIRECT | OFlag::O_CLOEXEC)?;
    set_nonblocking(&write)?;
    let page = page_size();
    let bytes = i32::try_from(u64::from(depth) * page as u64)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let granted = fcntl(&write, FcntlArg::F_SETPIPE_SZ(bytes))? as usize;
    Ok((read, write, (granted / page) as u32))
}

/// Adds `O_NONBLOCK` to a descriptor's status flags. F_SETFL replaces all of them, so a
/// bare `F_SETFL(O_NONBLOCK)` would clear `O_DIRECT` and silently turn a packet pipe into a
/// byte stream that merges small writes.
pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as usize)
}

/// Writes one record as one packet without ever blocking.
pub fn send(write_end: impl AsFd, packet: &[u8]) -> Sent {
    match nix::unistd::write(write_end, packet) {
        Ok(_) => Sent::Delivered,
        Err(Errno::EAGAIN) => Sent::Full,
        Err(Errno::EPIPE) => Sent::ReaderGone,
        Err(e) => {
            // Nothing else is documented for a pipe write; treat it as a dead reader rather
            // than retrying forever.
            tracing::warn!(error = %e, "unexpected error writing to a subscription pipe");
            Sent::ReaderGone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_write_is_one_packet_and_a_full_pipe_reports_full_not_blocking() {
        let (read, write, depth) = packet_pipe(4).unwrap();
        assert_eq!(depth, 4);
        for i in 0..depth {
            assert_eq!(send(&write, &[i as u8; 96]), Sent::Delivered);
        }
        assert_eq!(send(&write, &[0xff; 96]), Sent::Full);
        let mut buf = [0u8; 4096];
        set_nonblocking(&read).unwrap();
        for i in 0..depth {
            let n = nix::unistd::read(&read, &mut buf).unwrap();
            assert_eq!(
                &buf[..n],
                &[i as u8; 96][..],
                "each read returns exactly one packet"
            );
        }
        drop(read);
        assert_eq!(send(&write, &[1; 8]), Sent::ReaderGone);
    }
}
