//! Quota watches: the kernel's quota warnings, and warnings before `EDQUOT` from the
//! caller's own usage ([`usage`]).
//!
//! **The kernel's warnings.** Its generic netlink family `VFS_DQUOT` (with
//! `CONFIG_QUOTA_NETLINK_INTERFACE`) multicasts one `QUOTA_NL_C_WARNING` on its `events`
//! group each time a user, group or project crosses a soft or hard limit on a filesystem
//! with quotas, or falls back below one.
//!
//! **Who sees a warning.** The kernel sends every user's warnings to every listener (any
//! uid, even 65534, may join the group), so the daemon scopes them itself: a user quota's
//! warning goes to watches of that uid, a group quota's to watches of a member of the group
//! (the groups the bus vouched for, and the calling process's own gid), a project quota's
//! only to an `all` watch, which sees every warning and needs its own polkit action
//! (`watch-other-users-quota`). Who *caused* a warning (the uid of the writing process) is
//! told only when it is the subscriber itself, or to an `all` watch: a group member must
//! not learn which other member filled the group's quota.
//!
//! **Where.** The kernel names the filesystem by device number; each record carries the
//! device's mount points as the subscriber sees them, from its mount table, which the
//! [`usage`] thread keeps (read again when it changes).
//!
//! One thread reads the socket; `ENOBUFS` (warnings dropped by the kernel) is a LOSS to
//! every quota watch. The parsing is in [`wire`], pure and bounds-checked. The kind works
//! with either half: without the netlink family it has thresholds only, without
//! `quotactl_fd(2)` warnings only.
#![forbid(unsafe_code)]

pub mod usage;
pub mod wire;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use watchd_proto::{RecordBuilder, RecordType, attr, quota, superblock};

use crate::access::CallerProcess;
use crate::error::{Error, Result};
use crate::event::{Change, Event, Fields};
use crate::hub::Hub;
use crate::identity::Caller;
use crate::options::Options;
use crate::source::Source;
use crate::sources::Started;
use crate::sources::space::Timing;
use crate::sys;
use crate::watch::{Kind, Notice, Scope};

use usage::{Engine, Following, Thresholds};
use wire::{Family, Message, Warning};

/// The kind clients name in `AddWatch`.
pub const KIND: Kind = Kind("quota");

/// The option that asks for every user's warnings.
pub const ALL: &str = "all";

/// The option keys of a quota watch: `all`, and the thresholds' ([`Thresholds::take`]).
const OPTIONS: &[&str] = &[
    ALL,
    "below",
    "step",
    "inodes_below",
    "inodes_step",
    "min_interval_s",
];

/// How long the controller may take to name the family.
const RESOLVE_LIMIT: Duration = Duration::from_secs(5);

/// One quota warning, as every watch that wants it sees it.
#[derive(Debug)]
pub struct QuotaWarning(pub Warning);

impl QuotaWarning {
    /// The attributes every subscriber gets; mount points and who caused it are added per
    /// subscriber by [`QuotaScope::record_for`].
    fn encode_common(&self, fields: &mut Fields<'_>) {
        let w = &self.0;
        fields.u32(attr::QUOTA_TYPE, w.quota_type);
        fields.u64(attr::QUOTA_ID, w.id);
        fields.u32(attr::QUOTA_WARNING, w.warning);
        if let Some(name) = quota::warning_name(w.warning) {
            fields.bytes(attr::QUOTA_WARNING_NAME, name.as_bytes());
        }
        fields.u32(attr::MAJOR, w.major);
        fields.u32(attr::MINOR, w.minor);
    }
}

impl Change for QuotaWarning {
    fn encode(&self, record: &mut RecordBuilder, _: RecordType) {
        let mut fields = Fields::new(record);
        self.encode_common(&mut fields);
        fields.finish();
    }
}

/// What one quota watch covers.
#[derive(Debug)]
pub struct QuotaScope {
    uid: u32,
    /// The groups whose warnings it gets: the bus's list and the process's gid.
    gids: Vec<u32>,
    all: bool,
    /// The caller's mount table and its own quotas, followed by the [`usage`] thread.
    follower: Following,
}

impl QuotaScope {
    fn concerns(&self, w: &Warning) -> bool {
        self.all
            || match w.quota_type {
                quota::USER => w.id == u64::from(self.uid),
                quota::GROUP => self.gids.iter().any(|&g| u64::from(g) == w.id),
                _ => false,
            }
    }
}

impl Scope for QuotaScope {
    fn covers(&self, event: &Event) -> bool {
        match event.subject::<QuotaWarning>() {
            Some(w) => self.concerns(&w.0),
            None => self.follower.covers(event),
        }
    }

    fn record_for(&self, event: &Event) -> Option<Vec<u8>> {
        let warning = event.subject::<QuotaWarning>()?;
        let w = &warning.0;
        let mut record = event.builder();
        let mut fields = Fields::new(&mut record);
        warning.encode_common(&mut fields);
        if let Some(caused_by) = w.caused_by
            && (self.all || caused_by == u64::from(self.uid))
        {
            fields.u64(attr::QUOTA_CAUSED_BY, caused_by);
        }
        for point in self.follower.mount_points(w.major, w.minor) {
            fields.bytes(attr::MOUNTED_ON, &point);
        }
        fields.finish();
        Some(record.finish())
    }
}

/// The quota source: the kernel's warnings, read by one thread, and the usage thresholds,
/// followed by another.
pub struct QuotaSource {
    /// The family and group joined, or why there are no kernel warnings here.
    warnings: std::result::Result<(Family, u32), String>,
    /// Why there are no usage thresholds here, if there are none.
    no_thresholds: Option<String>,
    engine: Arc<Engine>,
}

impl QuotaSource {
    /// Joins the quota family's `events` group and starts the reading thread, and starts the
    /// usage thread. `Ok(Err(why))` when this kernel has neither the family (no
    /// `CONFIG_QUOTA_NETLINK_INTERFACE`, or no netlink) nor `quotactl_fd(2)` (or a seccomp
    /// filter refuses it): the kind is then unavailable, and says why.
    pub fn start(hub: Arc<Hub>, timing: Timing) -> Started<Arc<QuotaSource>> {
        let joined = join_events()?;
        let no_thresholds = sys::quotactl_fd_probe()
            .err()
            .map(|e| match e.raw_os_error() {
                Some(libc::ENOSYS) => {
                    "this kernel has no quotactl_fd(2) (Linux 5.14 or later with CONFIG_QUOTACTL)"
                        .to_owned()
                }
                _ => format!("quotactl_fd(2) is refused here ({e})"),
            });
        if let (Err(why), Some(also)) = (&joined, &no_thresholds) {
            return Ok(Err(format!("{why}; {also}")));
        }
        let engine = Engine::start(hub.clone(), timing)?;
        let warnings = match joined {
            Ok((socket, family, group)) => {
                let family_id = family.id;
                let nudged = engine.clone();
                std::thread::Builder::new()
                    .name("quota".into())
                    .spawn(move || follow(&socket, family_id, &hub, &nudged))?;
                tracing::info!(
                    family = family.id,
                    group,
                    "quota warnings: joined VFS_DQUOT events"
                );
                Ok((family, group))
            }
            Err(why) => {
                tracing::warn!(%why, "quota watches get no kernel warnings, only usage thresholds");
                Err(why)
            }
        };
        if let Some(why) = &no_thresholds {
            tracing::warn!(%why, "quota watches get no usage thresholds, only the kernel's warnings");
        }
        Ok(Ok(Arc::new(QuotaSource {
            warnings,
            no_thresholds,
            engine,
        })))
    }
}

/// A generic netlink socket that joined the quota family's `events` group, the family and
/// the group's number; `Ok(Err(why))` when this kernel has no such family or no netlink.
pub fn join_events() -> io::Result<std::result::Result<(OwnedFd, Family, u32), String>> {
    let socket = match sys::genetlink_socket() {
        Ok(socket) => socket,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT)
            ) =>
        {
            return Ok(Err(format!("this kernel has no generic netlink ({e})")));
        }
        Err(e) => return Err(e),
    };
    let family = match resolve(&socket, wire::QUOTA_FAMILY) {
        Ok(family) => family,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(Err(format!(
                "this kernel has no generic netlink family {} (it needs CONFIG_QUOTA_NETLINK_INTERFACE)",
                wire::QUOTA_FAMILY
            )));
        }
        Err(e) => return Err(e),
    };
    let Some(group) = family.group(wire::QUOTA_GROUP) else {
        return Ok(Err(format!(
            "the kernel's {} family has no multicast group {:?}",
            wire::QUOTA_FAMILY,
            wire::QUOTA_GROUP
        )));
    };
    sys::netlink_add_membership(socket.as_fd(), group)?;
    Ok(Ok((socket, family, group)))
}

/// Asks the controller for `name`'s family, on the socket that will then join its group.
fn resolve(socket: &OwnedFd, name: &str) -> io::Result<Family> {
    const SEQ: u32 = 1;
    sys::netlink_send(socket.as_fd(), &wire::family_request(name, SEQ))?;
    let deadline = Instant::now() + RESOLVE_LIMIT;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the generic netlink controller did not answer",
            ));
        }
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        poll(&mut fds, PollTimeout::from(ms))?;
        let len = match sys::netlink_recv(socket.as_fd(), &mut buf) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        for message in wire::messages(&buf[..len]) {
            let message = message.map_err(invalid)?;
            if message.seq != SEQ {
                continue;
            }
            return match wire::parse_family(&message) {
                Ok(family) => Ok(family),
                Err(wire::ParseError::Errno(errno)) => Err(io::Error::from_raw_os_error(errno)),
                Err(e) => Err(invalid(e)),
            };
        }
    }
}

fn invalid(e: wire::ParseError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The reading thread: each warning published, each overflow a LOSS; either makes the
/// usage thread look again.
fn follow(socket: &OwnedFd, family_id: u16, hub: &Hub, engine: &Engine) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        if let Err(error) = poll(&mut fds, PollTimeout::NONE) {
            if error != nix::errno::Errno::EINTR {
                tracing::error!(%error, "quota: poll failed; quota warnings stop");
                return;
            }
            continue;
        }
        let len = match sys::netlink_recv(socket.as_fd(), &mut buf) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::warn!("quota: the netlink socket overflowed (ENOBUFS)");
                hub.publish(&Notice::loss(
                    KIND,
                    RecordType::Superblock,
                    "the kernel's quota warnings overflowed the daemon's netlink socket (ENOBUFS)",
                ));
                engine.nudge();
                continue;
            }
            Err(error) => {
                tracing::error!(%error, "quota: reading the netlink socket failed; quota warnings stop");
                return;
            }
        };
        for message in wire::messages(&buf[..len]) {
            match message {
                Ok(message) => {
                    publish(&message, family_id, hub);
                    engine.nudge();
                }
                Err(error) => {
                    tracing::warn!(%error, "quota: a malformed netlink datagram was skipped");
                }
            }
        }
    }
}

fn publish(message: &Message<'_>, family_id: u16, hub: &Hub) {
    if message.kind != family_id {
        return;
    }
    match wire::warning(message) {
        Ok(warning) => {
            tracing::debug!(?warning, "quota warning");
            let change = Arc::new(QuotaWarning(warning));
            hub.publish(&Event::new(
                RecordType::Superblock,
                superblock::QUOTA,
                0,
                change,
            ));
        }
        Err(error) => tracing::warn!(%error, "quota: a malformed warning was skipped"),
    }
}

impl Source for QuotaSource {
    fn kind(&self) -> Kind {
        KIND
    }

    fn describe(&self) -> String {
        let warnings = match &self.warnings {
            Ok((family, group)) => format!(
                "the kernel's generic netlink family {} (id {}), multicast group {} ({})",
                family.name,
                family.id,
                wire::QUOTA_GROUP,
                group
            ),
            Err(why) => format!("no kernel warnings: {why}"),
        };
        let thresholds = match &self.no_thresholds {
            None => format!("usage thresholds: {}", self.engine.describe()),
            Some(why) => format!("no usage thresholds: {why}"),
        };
        format!("{warnings}; {thresholds}")
    }

    fn scope(&self, options: &mut Options, caller: &Caller) -> Result<Arc<dyn Scope>> {
        let all = options.take_bool(ALL)?.unwrap_or(false);
        let (mut thresholds, given) = Thresholds::take(options)?;
        if let Some(why) = &self.no_thresholds {
            if given {
                return Err(Error::NotSupported(format!(
                    "quota usage thresholds are unavailable on this system: {why}"
                )));
            }
            thresholds.space = None;
            thresholds.inodes = None;
        }
        let process = CallerProcess::new(caller)?;
        let creds = process.fs_creds()?;
        let mut gids = creds.groups;
        gids.push(creds.gid);
        gids.sort_unstable();
        gids.dedup();
        let follower = self.engine.follow(
            caller.uid.0,
            gids.clone(),
            thresholds,
            process.root()?,
            process.mountinfo()?,
        )?;
        Ok(Arc::new(QuotaScope {
            uid: caller.uid.0,
            gids,
            all,
            follower,
        }))
    }

    fn option_names(&self) -> &'static [&'static str] {
        OPTIONS
    }

    fn with_snapshot(&self, scope: &dyn Scope, then: &mut dyn FnMut(&[Event])) {
        // A kernel warning is a moment, not a state; what is already low is.
        match scope.downcast::<QuotaScope>() {
            Some(scope) => self.engine.with_snapshot(&scope.follower, then),
            None => then(&[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watchd_proto::Record;

    fn scope(uid: u32, gids: Vec<u32>, all: bool) -> QuotaScope {
        let (hub, _) = crate::hub::Hub::new(crate::conf::Limits::default());
        let timing = Timing::from_config(&crate::conf::SpaceConf::default());
        let engine = Engine::start(hub, timing).unwrap();
        let (thresholds, _) =
            Thresholds::take(&mut Options::new(Default::default()).unwrap()).unwrap();
        let follower = engine
            .follow(
                uid,
                gids.clone(),
                thresholds,
                std::fs::File::open("/").unwrap().into(),
                std::fs::File::open("/proc/self/mountinfo").unwrap(),
            )
            .unwrap();
        QuotaScope {
            uid,
            gids,
            all,
            follower,
        }
    }

    fn event(quota_type: u32, id: u64, caused_by: u64) -> Event {
        Event::new(
            RecordType::Superblock,
            superblock::QUOTA,
            0,
            Arc::new(QuotaWarning(Warning {
                quota_type,
                id,
                warning: 6,
                major: 7,
                minor: 0,
                caused_by: Some(caused_by),
            })),
        )
    }

    #[test]
    fn each_warning_goes_only_to_those_it_concerns() {
        let user = scope(1000, vec![1000], false);
        let member = scope(1001, vec![1001, 3000], false);
        let admin = scope(0, vec![0], true);
        let of_user = event(quota::USER, 1000, 1000);
        let of_group = event(quota::GROUP, 3000, 1000);
        let of_project = event(quota::PROJECT, 1000, 1000);
        assert!(user.covers(&of_user) && !member.covers(&of_user));
        assert!(!user.covers(&of_group) && member.covers(&of_group));
        assert!(!user.covers(&of_project) && !member.covers(&of_project));
        assert!(admin.covers(&of_user) && admin.covers(&of_group) && admin.covers(&of_project));
    }

    #[test]
    fn who_caused_a_warning_is_told_only_to_that_uid_or_an_all_watch() {
        let caused_by = |scope: &QuotaScope, event: &Event| {
            let bytes = scope.record_for(event).unwrap();
            Record::parse(&bytes)
                .unwrap()
                .get_u64(attr::QUOTA_CAUSED_BY)
        };
        let of_group = event(quota::GROUP, 3000, 1000);
        assert_eq!(caused_by(&scope(1001, vec![3000], false), &of_group), None);
        assert_eq!(
            caused_by(&scope(1000, vec![3000], false), &of_group),
            Some(1000)
        );
        assert_eq!(caused_by(&scope(0, vec![], true), &of_group), Some(1000));
        let record = Record::parse(of_group.record()).unwrap();
        assert_eq!(
            record.get_u64(attr::QUOTA_CAUSED_BY),
            None,
            "the shared encoding"
        );
        assert_eq!(
            record.get_str(attr::QUOTA_WARNING_NAME).as_deref(),
            Some("block_soft_exceeded")
        );
        assert_eq!(record.get_u32(attr::QUOTA_TYPE), Some(quota::GROUP));
        assert_eq!(record.get_u64(attr::QUOTA_ID), Some(3000));
        assert_eq!(
            (record.get_u32(attr::MAJOR), record.get_u32(attr::MINOR)),
            (Some(7), Some(0))
        );
    }

    #[test]
    fn mount_points_come_from_the_subscribers_mountinfo() {
        // The root filesystem's device, as this process sees it.
        let text = std::fs::read("/proc/self/mountinfo").unwrap();
        let (mounts, _) = crate::sources::mounts::parse_mountinfo(&text);
        let root = mounts.iter().find(|m| m.mount_point == b"/").unwrap();
        let points = scope(0, vec![], true)
            .follower
            .mount_points(root.major, root.minor);
        assert!(points.iter().any(|p| p == b"/"), "{points:?}");
        assert!(
            scope(0, vec![], true)
                .follower
                .mount_points(4095, 1_048_575)
                .is_empty()
        );
    }
}
