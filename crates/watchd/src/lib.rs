//! watchd: gathers kernel events and hands each subscriber a packet pipe of typed records.
//!
//! The event flow, in three files:
//! - [`sources`] follow the kernel (one thread or task each) and build [`event::Event`]s;
//! - [`hub`] matches each event against every watch and writes one packet per match,
//!   counting loss and never blocking;
//! - [`pipe`] is the packet pipe itself (`pipe2(O_DIRECT)`, non-blocking write end).
//!
//! The core ([`event`], [`watch`], [`hub`], [`pipe`]) names no source: a source's change
//! implements [`event::Change`], its watches' scope [`watch::Scope`], and the source
//! [`source::Source`]; [`sources::start`] is the one list of sources.
//!
//! Around them: [`manager`] (what a caller may do: subscribe, add/remove watches, resync),
//! [`authority`] (may this caller set this watch: polkit, or the actions file's defaults)
//! and [`manager_bus`] (its D-Bus objects), [`watch`] (kinds, filters, the scope trait), [`options`] (the
//! `a{sv}` options, decoded under bounds), [`identity`] (who is calling), [`inflight`] (each uid's calls and polkit checks in flight, limited), [`access`] (what
//! the caller can see, decided as the caller), [`creds`] (files opened with the caller's
//! credentials), [`cli`] (the command line), [`conf`] (the configuration file), [`error`] (the D-Bus errors) and
//! [`sys`] (the few raw syscalls, the only `unsafe` code).

pub mod access;
pub mod authority;
pub mod cli;
pub mod conf;
pub mod creds;
pub mod error;
pub mod event;
pub mod fanotify;
pub mod hub;
pub mod identity;
pub mod inflight;
pub mod manager;
pub mod manager_bus;
pub mod options;
pub mod pipe;
pub mod source;
pub mod sources;
pub mod statmount;
pub mod sys;
pub mod watch;
