//! The daemon's D-Bus contract as zbus proxies (crate-private; the public API wraps them).

use std::collections::HashMap;

use zbus::{OwnedFd, OwnedObjectPath, Variant};

/// Well-known bus name of the daemon.
pub const BUS_NAME: &str = "org.watchd.Watchd1";
/// Path of the manager object.
pub const MANAGER_PATH: &str = "/org/watchd/Watchd1";
/// Interface of the manager object.
pub const MANAGER_INTERFACE: &str = "org.watchd.Watchd1.Manager";
/// Interface of each subscription object.
pub const SUBSCRIPTION_INTERFACE: &str = "org.watchd.Watchd1.Subscription";

/// One entry of `ListSubscriptions`, `(oua(ts))`: the object, the depth, each watch's tag
/// and kind.
pub(crate) type ListedSubscription = (OwnedObjectPath, u32, Vec<(u64, String)>);

/// `a{sv}` as sent.
pub(crate) type Options<'a> = HashMap<&'a str, Variant<'a>>;

#[zbus::proxy(
    interface = "org.watchd.Watchd1.Manager",
    default_service = "org.watchd.Watchd1",
    default_path = "/org/watchd/Watchd1"
)]
pub(crate) trait Manager {
    fn subscribe(&self, options: &Options<'_>) -> zbus::Result<(OwnedFd, OwnedObjectPath)>;

    fn list_subscriptions(&self) -> zbus::Result<Vec<ListedSubscription>>;

    #[zbus(property(emits_changed_signal = "false"))]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(property(emits_changed_signal = "false"))]
    fn sources(&self) -> zbus::Result<Vec<String>>;

    #[zbus(property(emits_changed_signal = "false"))]
    fn subscriptions(&self) -> zbus::Result<u32>;

    #[zbus(property(emits_changed_signal = "false"))]
    fn watches(&self) -> zbus::Result<u32>;

    #[zbus(property(emits_changed_signal = "false"))]
    fn authorization(&self) -> zbus::Result<String>;

    #[zbus(property(emits_changed_signal = "false"))]
    fn source_details(&self) -> zbus::Result<HashMap<String, String>>;
}

#[zbus::proxy(
    interface = "org.watchd.Watchd1.Subscription",
    default_service = "org.watchd.Watchd1"
)]
pub(crate) trait Subscription {
    fn add_watch(&self, tag: u64, kind: &str, options: &Options<'_>) -> zbus::Result<()>;

    /// The same call, flagged ALLOW_INTERACTIVE_AUTHORIZATION.
    #[zbus(name = "AddWatch", allow_interactive_auth)]
    fn add_watch_interactive(
        &self,
        tag: u64,
        kind: &str,
        options: &Options<'_>,
    ) -> zbus::Result<()>;

    fn remove_watch(&self, tag: u64) -> zbus::Result<()>;

    fn resync(&self, tag: u64) -> zbus::Result<()>;

    #[zbus(property(emits_changed_signal = "false"))]
    fn depth(&self) -> zbus::Result<u32>;

    #[zbus(property(emits_changed_signal = "false"))]
    fn owner(&self) -> zbus::Result<u32>;
}
