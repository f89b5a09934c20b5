//! Generic netlink sockets (netlink(7), genetlink): the socket, its binding and sends go
//! through nix's safe wrappers; joining a multicast group by number
//! (`NETLINK_ADD_MEMBERSHIP`, needed for groups past 32, which `bind`'s bit mask cannot
//! name) is a `setsockopt(2)` no crate wraps, written here.
#![allow(unsafe_code)] // setsockopt(2) NETLINK_ADD_MEMBERSHIP through libc.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    socket,
};

/// `socket(2)`: a non-blocking, close-on-exec `AF_NETLINK` / `NETLINK_GENERIC` socket bound
/// to a port the kernel chooses.
pub fn genetlink_socket() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkGeneric,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    Ok(fd)
}

/// `sendto(2)` of one netlink message to the kernel (port 0).
pub fn netlink_send(fd: BorrowedFd<'_>, message: &[u8]) -> io::Result<usize> {
    Ok(sendto(
        fd.as_raw_fd(),
        message,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?)
}

/// `recv(2)` of one datagram (one or more netlink messages); `ENOBUFS` means the kernel
/// dropped messages for this socket.
pub fn netlink_recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    Ok(recv(fd.as_raw_fd(), buf, MsgFlags::empty())?)
}

/// `setsockopt(2)` `SOL_NETLINK` / `NETLINK_ADD_MEMBERSHIP`: joins multicast group `group`.
pub fn netlink_add_membership(fd: BorrowedFd<'_>, group: u32) -> io::Result<()> {
    // SAFETY: `fd` is a live socket for the borrow; the option value is a u32 on our stack,
    // its size passed with it; the kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_NETLINK,
            libc::NETLINK_ADD_MEMBERSHIP,
            (&group as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    super::cvt(ret.into()).map(drop)
}
