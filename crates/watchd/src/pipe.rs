//! Packet pipes: `pipe2(O_DIRECT)`, where every `write()` is one packet and every `read()`
//! returns one whole packet. The daemon keeps the write end, non-blocking, and never waits.
//! Its size is set with rustix's typed `F_SETPIPE_SZ`.
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
/// Returns the read end, the write end (`O_NONBLOCK`) and the depth the kernel granted, which
/// is also the pages it charges to the creating thread's real uid.
pub fn packet_pipe(depth: u32) -> io::Result<(OwnedFd, OwnedFd, u32)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_DIRECT | OFlag::O_CLOEXEC)?;
    set_nonblocking(&write)?;
    let page = page_size();
    // The kernel takes the size as an int.
    let bytes = i32::try_from(u64::from(depth) * page as u64)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // F_SETPIPE_SZ answers with the size granted (rounded up to a power of two pages).
    let granted = rustix::pipe::fcntl_setpipe_size(&write, bytes as usize)?;
    Ok((read, write, (granted / page) as u32))
}

/// The pages a pipe of `depth` packets will take, as the kernel rounds it (`round_pipe_size`).
pub fn pages_for(depth: u32) -> u32 {
    depth.next_power_of_two()
}

/// Root's pipe pages beyond which its processes without CAP_SYS_ADMIN or CAP_SYS_RESOURCE
/// get 2-page pipes.
const USER_PAGES_SOFT: &str = "/proc/sys/fs/pipe-user-pages-soft";

/// The kernel's default for [`USER_PAGES_SOFT`], assumed when it cannot be read.
const DEFAULT_USER_PAGES_SOFT: u32 = 16384;

/// The soft limit on one user's pipe pages; `None` when the kernel sets none (0).
pub fn user_pages_soft_limit() -> Option<u32> {
    let read = std::fs::read_to_string(USER_PAGES_SOFT).map_err(|e| e.to_string());
    let parsed = read.and_then(|text| text.trim().parse::<u64>().map_err(|e| e.to_string()));
    match parsed {
        Ok(0) => None,
        Ok(pages) => Some(u32::try_from(pages).unwrap_or(u32::MAX)),
        Err(e) => {
            // Assuming a limit keeps root's other services safe; assuming none would not.
            tracing::warn!(error = %e, "cannot read {USER_PAGES_SOFT}: taking the kernel's default, {DEFAULT_USER_PAGES_SOFT} pages");
            Some(DEFAULT_USER_PAGES_SOFT)
        }
    }
}

/// A number of pipe pages some subscriptions may hold together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub pages: u32,
    /// What set it, for refusals and the log: the configuration key, or the kernel's limit.
    pub set_by: String,
}

/// The pages root's own subscriptions may hold, the only ones charged to root's account:
/// `per_uid`, but never more than half of root's soft limit. The daemon's CAP_SYS_ADMIN
/// would let it go past, and every other root service without that capability would then
/// get 2-page pipes; the other half is theirs.
pub fn root_share(per_uid: u32, soft_limit: Option<u32>) -> Budget {
    match soft_limit {
        Some(soft) if soft / 2 < per_uid => Budget {
            pages: soft / 2,
            set_by: format!(
                "half of fs.pipe-user-pages-soft ({soft}), below limits.max_pipe_pages_per_uid ({per_uid})"
            ),
        },
        _ => Budget {
            pages: per_uid,
            set_by: PER_UID_KEY.into(),
        },
    }
}

pub const PER_UID_KEY: &str = "limits.max_pipe_pages_per_uid";

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

    #[test]
    fn the_pages_predicted_are_the_pages_the_kernel_grants() {
        for depth in [2, 3, 16, 100, 256] {
            let (_read, write, granted) = packet_pipe(depth).unwrap();
            assert_eq!(granted, pages_for(depth), "depth {depth}");
            let bytes = rustix::pipe::fcntl_getpipe_size(&write).unwrap();
            assert_eq!(bytes, granted as usize * page_size());
        }
    }

    #[test]
    fn roots_subscriptions_take_at_most_half_of_roots_soft_limit() {
        let budget = root_share(1024, Some(16384));
        assert_eq!(budget.pages, 1024);
        assert_eq!(budget.set_by, PER_UID_KEY);
        let budget = root_share(1024, Some(1000));
        assert_eq!(budget.pages, 500);
        assert!(
            budget.set_by.contains("fs.pipe-user-pages-soft (1000)"),
            "{}",
            budget.set_by
        );
        assert_eq!(root_share(1024, None).pages, 1024, "0 means no limit");
    }
}
