//! What every source offers the manager: its kind, its options, the scope of a new watch
//! and its current state. The implementations live in [`crate::sources`]; this trait lives
//! apart from them, so that no source imports the module that lists the sources.
#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::error::Result;
use crate::event::Event;
use crate::identity::Caller;
use crate::options::Options;
use crate::watch::{Kind, Scope};

pub trait Source: Send + Sync {
    fn kind(&self) -> Kind;

    /// How this source gets its events, for `watchctl status`.
    fn describe(&self) -> String;

    /// Consumes this kind's options and returns what the watch will cover, checking that
    /// the objects named exist.
    fn scope(&self, options: &mut Options, caller: &Caller) -> Result<Arc<dyn Scope>>;

    /// The option keys [`Source::scope`] understands, for error messages.
    fn option_names(&self) -> &'static [&'static str];

    /// Calls `then` with the current state as SNAPSHOT events while the source is held
    /// still: no change is published before `then` returns, so registering the watch inside
    /// `then` leaves no gap and no double between snapshot and live events. `scope` is one
    /// this source made.
    fn with_snapshot(&self, scope: &dyn Scope, then: &mut dyn FnMut(&[Event]));
}
