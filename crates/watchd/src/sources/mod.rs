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
        match keys::Poller::start(hub.clone(), interval) {
            Ok(poller) => {
                if enabled.keys {
                    sources.push(keys::KeySource::new(poller.clone()));
                }
                if enabled.krb5 {
                    sources.push(krb5::Krb5Source::new(poller, signals));
                }
            }
            // Root refused keyctl(2) (EPERM) or a kernel without it (ENOSYS): a seccomp
            // filter, as a container manager's default one (systemd-nspawn's), or
            // CONFIG_KEYS=n. Mounts, devices and files are still worth serving.
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::Unsupported
                ) =>
            {
                tracing::warn!(%error, "key and krb5 watches are unavailable: keyctl(2) is refused (a seccomp filter, e.g. a container's, or a kernel without CONFIG_KEYS)");
                let why = format!("keyctl(2) is refused here ({error})");
                for (on, kind) in [(enabled.keys, keys::KIND), (enabled.krb5, krb5::KIND)] {
                    if on {
                        sources.push(Arc::new(Unavailable {
                            kind,
                            why: why.clone(),
                        }));
                    }
                }
            }
            Err(error) => {
                return Err(StartError {
                    kind: keys::KIND,
                    needs: "needs keyctl(2), a thread keyring and inotify",
                    error,
                });
            }
        }
    }
    if enabled.files {
        match files::FileSource::start(hub.clone()) {
            Ok(source) => sources.push(source),
            // A kernel without fanotify (ENOSYS) or its FID mode (EINVAL, before 5.9): the
            // other kinds are still worth serving; this one says why it cannot be had.
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) => {
                tracing::warn!(%error, "files watches are unavailable: this kernel has no fanotify in FID mode (Linux 5.9 or later with CONFIG_FANOTIFY)");
                sources.push(Arc::new(Unavailable {
                    kind: files::KIND,
                    why: format!("this kernel has no fanotify in FID mode ({error})"),
                }));
            }
            Err(error) => {
                return Err(StartError {
                    kind: files::KIND,
                    needs: "needs a fanotify group in FID mode (CAP_SYS_ADMIN) and a thread",
                    error,
                });
            }
        }
    }
    if enabled.fserrors {
        match fserrors::FsErrorSource::start(hub.clone()) {
            Ok(source) => sources.push(source),
            // No fanotify, no FID mode (before 5.9) or no FAN_FS_ERROR (before 5.16).
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) => {
                tracing::warn!(%error, "fserrors watches are unavailable: this kernel has no fanotify filesystem error events (Linux 5.16 or later with CONFIG_FANOTIFY)");
                sources.push(Arc::new(Unavailable {
                    kind: fserrors::KIND,
                    why: format!("this kernel has no fanotify filesystem error events, FAN_FS_ERROR ({error})"),
                }));
            }
            Err(error) => {
                return Err(StartError {
                    kind: fserrors::KIND,
                    needs: "needs a fanotify group in FID mode (CAP_SYS_ADMIN) and a thread",
                    error,
                });
            }
        }
    }
    if enabled.quota {
        match quota::QuotaSource::start(hub.clone(), space::Timing::from_config(&config.space)) {
            Ok(Ok(source)) => sources.push(source),
            Ok(Err(why)) => {
                tracing::warn!(%why, "quota watches are unavailable");
                sources.push(Arc::new(Unavailable {
                    kind: quota::KIND,
                    why,
                }));
            }
            Err(error) => {
                return Err(StartError {
                    kind: quota::KIND,
                    needs: "needs a generic netlink socket (AF_NETLINK), a pipe and two threads",
                    error,
                });
            }
        }
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
