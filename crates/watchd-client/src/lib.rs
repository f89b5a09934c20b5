//! Client library for watchd: connect to the bus, subscribe, set watches, read typed events.
//!
//! What lives where:
//!
//! - [`client`]: [`Client`] (the bus connection; [`Client::connect`], [`Client::status`],
//!   [`Client::list_subscriptions`], [`Client::subscribe`]), [`Status`],
//!   [`SubscriptionInfo`], [`WatchInfo`], [`SubscribeOptions`].
//! - [`subscription`]: [`Subscription`] (the pipe's read end plus its D-Bus object:
//!   `AddWatch`, `RemoveWatch`, `Resync`), [`SubscriptionControl`] (the object alone),
//!   [`WatchOptions`] and [`Filter`] (the `AddWatch` options).
//! - [`events`]: [`EventStream`] (reads the pipe on Tokio, one packet = one record) and
//!   [`Event`] (one record's bytes; [`Event::record`] decodes them with [`watchd_proto`]).
//! - [`error`]: [`Error`], and [`DaemonError`] for watchd's own D-Bus error names.
//! - `dbus` (private): the D-Bus contract as zbus proxies; its names are re-exported here
//!   ([`BUS_NAME`], [`MANAGER_PATH`], …).
//!
//! ```no_run
//! # async fn demo() -> watchd_client::Result<()> {
//! use watchd_client::{Client, SubscribeOptions, WatchOptions};
//!
//! let client = Client::connect(None).await?;
//! let subscription = client.subscribe(SubscribeOptions::default()).await?;
//! subscription.add_watch(1, "mounts", &WatchOptions::new().initial(true).path("/mnt")).await?;
//! let mut events = subscription.into_events();
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("{:?}", event.header());
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod client;
mod dbus;
pub mod error;
pub mod events;
pub mod subscription;

pub use client::{
    Client, DEFAULT_SYSTEM_BUS_ADDRESS, Status, SubscribeOptions, SubscriptionInfo, WatchInfo,
    system_bus_address,
};
pub use dbus::{BUS_NAME, MANAGER_INTERFACE, MANAGER_PATH, SUBSCRIPTION_INTERFACE};
pub use error::{DaemonError, ERROR_PREFIX, Error};
pub use events::{Event, EventStream};
pub use subscription::{Filter, Subscription, SubscriptionControl, WatchOptions};
/// The wire format, for reading [`Event::record`]s.
pub use watchd_proto as proto;
/// The D-Bus library, for [`Client::connection`] and option values.
pub use zbus;

pub type Result<T, E = Error> = std::result::Result<T, E>;
