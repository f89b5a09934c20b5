//! Who is calling: the credentials the bus vouches for, kept with each subscription.
#![forbid(unsafe_code)]

use std::os::fd::OwnedFd;
use std::sync::Arc;

use zbus::names::BusName;

/// A kernel user id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(pub u32);

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A kernel group id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gid(pub u32);

impl std::fmt::Display for Gid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A kernel process id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(pub u32);

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The process behind a D-Bus call, as `GetConnectionCredentials` reports it.
#[derive(Debug)]
pub struct Caller {
    pub bus_name: String,
    pub uid: Uid,
    /// Its supplementary groups, as the bus vouches for them.
    pub gids: Vec<Gid>,
    /// The process that connected (logged as `pid = %caller.pid`: tracing's `Value` is
    /// sealed, so a newtype is logged through `Display`).
    pub pid: Pid,
    /// Pins the process so later namespace and root lookups cannot hit a recycled pid:
    /// the bus's ProcessFD where it has one, else our own `pidfd_open` of the pid.
    pub pidfd: Option<OwnedFd>,
    /// Whether `pidfd` came from the bus, which vouches for it. Ours is opened after the
    /// fact, so it is only as good as the pid and is never shown to polkit as proof.
    pub pidfd_from_bus: bool,
}

impl Caller {
    /// A caller known by uid alone, with no process behind it (tests, benchmarks).
    pub fn with_credentials(uid: Uid) -> Arc<Caller> {
        Arc::new(Caller {
            bus_name: String::new(),
            uid,
            gids: Vec::new(),
            pid: Pid(0),
            pidfd: None,
            pidfd_from_bus: false,
        })
    }

    /// Asks the bus who `sender` is. Fails rather than guessing when the bus will not say.
    pub async fn lookup(conn: &zbus::Connection, sender: &str) -> zbus::Result<Caller> {
        let dbus = zbus::fdo::DBusProxy::new(conn).await?;
        let name = BusName::try_from(sender.to_owned())?;
        let creds = dbus.get_connection_credentials(name).await?;
        let missing = |what: &str| {
            zbus::Error::Failure(format!("the bus did not report the caller's {what}"))
        };
        let uid = Uid(creds.unix_user_id().ok_or_else(|| missing("uid"))?);
        let pid = Pid(creds.process_id().ok_or_else(|| missing("pid"))?);
        let gids = creds.unix_group_ids().into_iter().flatten();
        let gids = gids.copied().map(Gid).collect();
        let (pidfd, pidfd_from_bus) = match creds.into_process_fd() {
            Some(fd) => (Some(fd.into()), true),
            None => (crate::sys::pidfd_open(pid.0).ok(), false),
        };
        Ok(Caller {
            bus_name: sender.to_owned(),
            uid,
            gids,
            pid,
            pidfd,
            pidfd_from_bus,
        })
    }
}
