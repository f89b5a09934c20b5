//! Sources: one per kind of watch, each following its part of the kernel on a task or
//! thread of its own and handing [`crate::event::Event`]s to [`crate::hub::Hub::publish`].
//!
//! - [`mounts`]: mount topology and option changes (fanotify mount events + statmount, or
//!   mountinfo `POLLPRI` + diff).
//! - [`devices`]: udev device events (libudev monitor), or raw kernel uevents.
//! - [`keys`]: kernel keys and keyrings, followed by one poller thread, told of changes by
//!   the kernel's watch queue where the kernel has one (`CONFIG_WATCH_QUEUE`).
//! - [`krb5`]: Kerberos credential caches, in keyrings (through the key poller) or files.
//! - [`files`]: file events under a path (one fanotify group in FID mode), each checked as
//!   its subscriber before it is delivered.
//! - [`fserrors`]: filesystem errors (fanotify `FAN_FS_ERROR`, one filesystem mark per
//!   filesystem mounted in a watched namespace), with ext4's own counts as initial state.
//! - [`quota`]: the kernel's quota warnings (generic netlink), each to the users it concerns.
//! - [`space`]: free space and inodes against each watch's thresholds (one thread: fstatfs
//!   on an adaptive timer per filesystem, and on mount changes).
//!
//! **Adding a source:** a module here whose change type implements
//! [`crate::event::Change`], whose watches' scope implements [`crate::watch::Scope`] and
//! whose source implements [`crate::source::Source`]; one line in [`start`] and its name in [`KINDS`];
//! and its polkit action in [`crate::authority::Action::for_watch`]. The hub, the watch
//! and the event know no source.
#![forbid(unsafe_code)]

pub mod devices;
pub mod files;
pub mod fserrors;
pub mod keys;
pub mod krb5;
pub mod mounts;
pub mod quota;
pub mod space;

use std::sync::Arc;

use crate::conf::Config;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::hub::Hub;
use crate::identity::Caller;
use crate::options::Options;
use crate::source::Source;
use crate::watch::{Kind, Scope};

/// Every kind this daemon knows, served or disabled in the configuration.
pub const KINDS: [Kind; 8] = [
    mounts::KIND,
    devices::KIND,
    keys::KIND,
    krb5::KIND,
    files::KIND,
    fserrors::KIND,
    quota::KIND,
    space::KIND,
];

/// A source that could not start, and what it needs.
#[derive(Debug)]
pub struct StartError {
    pub kind: Kind,
    pub needs: &'static str,
    pub error: std::io::Error,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} source {}: {}", self.kind, self.needs, self.error)
    }
}

impl std::error::Error for StartError {}

/// Starts every source the configuration enables, publishing to `hub`; krb5 watches that
/// ask for D-Bus signals hand them to `signals`.
pub fn start(
    config: &Config,
    hub: &Arc<Hub>,
    signals: krb5::SignalSink,
) -> std::result::Result<Vec<Arc<dyn Source>>, StartError> {
    let enabled = &config.sources;
    let mut sources: Vec<Arc<dyn Source>> = Vec::new();
    if enabled.mounts {
        let backend =
            mounts::Backend::choose(enabled.mount_events).map_err(|error| StartError {
                kind: mounts::KIND,
                needs: "was set to fanotify (mount_events), which needs fanotify mount events and statmount(2) (kernel 6.15 or later, allowed by any seccomp filter)",
                error,
            })?;
        sources.push(mounts::MountSource::new(hub.clone(), backend));
    }
    if enabled.devices {
        sources.push(
            devices::DeviceSource::start(hub.clone(), enabled.device_events).map_err(|error| {
                StartError {
                    kind: devices::KIND,
                    needs: "needs libudev and a netlink socket (AF_NETLINK)",
                    error,
                }
            })?,
        );
    }
    if enabled.keys || enabled.krb5 {
        let interval = std::time::Duration::from_millis(config.keys.poll_interval_ms.into());
        // Root refused keyctl(2) (EPERM) or a kernel without it (ENOSYS): a seccomp filter,
        // as a container manager's default one (systemd-nspawn's), or CONFIG_KEYS=n.
        let poller = unless_lacking(keys::Poller::start(hub.clone(), interval), |e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::Unsupported
            )
            .then(|| format!("keyctl(2) is refused here ({e})"))
        })
        .map_err(fault(
            keys::KIND,
            "needs keyctl(2), a thread keyring and inotify",
        ))?;
        if enabled.keys {
            let source = poller.clone().map(keys::KeySource::new);
            add(
                &mut sources,
                keys::KIND,
                source.map(|s| s as Arc<dyn Source>),
            );
        }
        if enabled.krb5 {
            let source = poller.map(|p| krb5::Krb5Source::new(p, signals));
            add(
                &mut sources,
                krb5::KIND,
                source.map(|s| s as Arc<dyn Source>),
            );
        }
    }
    if enabled.files {
        // No fanotify (ENOSYS), or no FID mode (EINVAL, before 5.9).
        let source = unless_lacking(files::FileSource::start(hub.clone()), |e| {
            matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)).then(|| {
                format!("this kernel has no fanotify in FID mode, Linux 5.9 or later with CONFIG_FANOTIFY ({e})")
            })
        })
        .map_err(fault(
            files::KIND,
            "needs a fanotify group in FID mode (CAP_SYS_ADMIN) and a thread",
        ))?;
        add(
            &mut sources,
            files::KIND,
            source.map(|s| s as Arc<dyn Source>),
        );
    }
    if enabled.fserrors {
        // No fanotify, no FID mode (before 5.9) or no FAN_FS_ERROR (before 5.16).
        let source = unless_lacking(fserrors::FsErrorSource::start(hub.clone()), |e| {
            matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)).then(|| {
                format!("this kernel has no fanotify filesystem error events, FAN_FS_ERROR, Linux 5.16 or later ({e})")
            })
        })
        .map_err(fault(
            fserrors::KIND,
            "needs a fanotify group in FID mode (CAP_SYS_ADMIN) and a thread",
        ))?;
        add(
            &mut sources,
            fserrors::KIND,
            source.map(|s| s as Arc<dyn Source>),
        );
    }
    if enabled.quota {
        let timing = space::Timing::from_config(&config.space);
        let source = quota::QuotaSource::start(hub.clone(), timing).map_err(fault(
            quota::KIND,
            "needs a generic netlink socket (AF_NETLINK), a pipe and two threads",
        ))?;
        add(
            &mut sources,
            quota::KIND,
            source.map(|s| s as Arc<dyn Source>),
        );
    }
    if enabled.space {
        let timing = space::Timing::from_config(&config.space);
        sources.push(
            space::SpaceSource::start(hub.clone(), timing).map_err(|error| StartError {
                kind: space::KIND,
                needs: "needs a pipe and a thread",
                error,
            })?,
        );
    }
    Ok(sources)
}

/// What starting a source gives: the source, or why this system cannot have it (a kernel
/// without the feature, a seccomp filter that refuses it), in which case the kind is listed
/// as [`Unavailable`] and the others are served. An error is a fault: the daemon stops.
pub type Started<S> = std::io::Result<std::result::Result<S, String>>;

/// `started`, with the errors `lacking` recognizes as "this system cannot have it" turned
/// into its reason.
fn unless_lacking<S>(
    started: std::io::Result<S>,
    lacking: impl FnOnce(&std::io::Error) -> Option<String>,
) -> Started<S> {
    match started {
        Ok(source) => Ok(Ok(source)),
        Err(error) => lacking(&error).map(Err).ok_or(error),
    }
}

/// A start error of `kind`, saying what it `needs`.
fn fault(kind: Kind, needs: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |error| StartError { kind, needs, error }
}

/// Adds `kind`'s source, or the kind as [`Unavailable`] with why.
fn add(
    sources: &mut Vec<Arc<dyn Source>>,
    kind: Kind,
    started: std::result::Result<Arc<dyn Source>, String>,
) {
    match started {
        Ok(source) => sources.push(source),
        Err(why) => {
            tracing::warn!(%why, "{kind} watches are unavailable");
            sources.push(Arc::new(Unavailable { kind, why }));
        }
    }
}

/// A kind this system cannot serve although the configuration enables it: `watchctl status`
/// says why, and every watch of it is refused with that reason.
struct Unavailable {
    kind: Kind,
    why: String,
}

impl Source for Unavailable {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn describe(&self) -> String {
        format!("unavailable: {}", self.why)
    }

    fn scope(&self, _: &mut Options, _: &Caller) -> Result<Arc<dyn Scope>> {
        Err(Error::NotSupported(format!(
            "{} watches are unavailable on this system: {}",
            self.kind, self.why
        )))
    }

    fn option_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn with_snapshot(&self, _: &dyn Scope, then: &mut dyn FnMut(&[Event])) {
        then(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::Action;
    use crate::identity::Caller;
    use crate::identity::Uid;
    use crate::options::OptionMap;
    use crate::options::Options;

    #[test]
    fn an_unavailable_kind_says_why_and_refuses_every_watch() {
        let source = Unavailable {
            kind: files::KIND,
            why: "no fanotify".into(),
        };
        assert_eq!(source.describe(), "unavailable: no fanotify");
        let mut options = Options::new(OptionMap::default()).unwrap();
        let caller = Caller::with_credentials(Uid(1000));
        match source.scope(&mut options, &caller) {
            Err(Error::NotSupported(why)) => assert!(why.contains("no fanotify"), "{why}"),
            other => panic!("expected NotSupported, got {other:?}"),
        }
    }

    #[test]
    fn every_kind_is_guarded_by_a_polkit_action() {
        let caller = Caller::with_credentials(Uid(1000));
        let options = Options::new(OptionMap::default()).unwrap();
        for kind in KINDS {
            assert!(
                Action::for_watch(kind, &options, &caller).is_some(),
                "no polkit action guards kind {kind}: add it to Action::for_watch"
            );
        }
    }
}
