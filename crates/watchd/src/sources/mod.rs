//! Sources: one per kind of watch, each following its part of the kernel on a task or
//! thread of its own and handing [`crate::event::Event`]s to [`crate::hub::Hub::publish`].
//!
//! - [`mounts`]: mount topology and option changes (mountinfo `POLLPRI` + diff).
//! - [`devices`]: udev device events (libudev monitor), or raw kernel uevents.
//! - [`keys`]: kernel keys and keyrings, followed by one poller thread.
//! - [`key_queue`]: the kernel's key notifications, read from a watch queue where the kernel
//!   has one (`CONFIG_WATCH_QUEUE`).
//! - [`krb5`]: Kerberos credential caches, in keyrings (through the key poller) or files.
#![forbid(unsafe_code)]

pub mod devices;
pub mod key_queue;
pub mod keys;
pub mod krb5;
pub mod mounts;

use crate::authority::Action;
use crate::error::Result;
use crate::event::Event;
use crate::identity::Caller;
use crate::watch::{Kind, Options, Scope};

pub trait Source: Send + Sync {
    fn kind(&self) -> Kind;

    /// How this source gets its events, for `watchctl status`.
    fn describe(&self) -> String;

    /// The polkit action that guards a watch with these options (checked before any object
    /// is looked at, so it may only peek at the options).
    fn action(&self, _options: &Options, _caller: &Caller) -> Action {
        Action::for_kind(self.kind())
    }

    /// Consumes this kind's options and returns what the watch will cover, checking that
    /// the objects named exist.
    fn scope(&self, options: &mut Options, caller: &Caller) -> Result<Scope>;

    /// The option keys [`Source::scope`] understands, for error messages.
    fn option_names(&self) -> &'static [&'static str];

    /// Calls `then` with the current state as SNAPSHOT events while the source is held
    /// still: no change is published before `then` returns, so registering the watch inside
    /// `then` leaves no gap and no double between snapshot and live events.
    fn with_snapshot(&self, scope: &Scope, then: &mut dyn FnMut(&[Event]));
}
