//! [`Client`]: the bus connection and the manager object.

use std::collections::HashMap;

use zbus::Variant;
use zbus::proxy::CacheProperties;

use crate::dbus::{ManagerProxy, SubscriptionProxy};
use crate::{Error, Result, Subscription};

/// Where the system bus is when neither an address nor `DBUS_SYSTEM_BUS_ADDRESS` says.
pub const DEFAULT_SYSTEM_BUS_ADDRESS: &str = "unix:path=/var/run/dbus/system_bus_socket";

/// The address [`Client::connect`] uses: `explicit`, else a non-empty
/// `DBUS_SYSTEM_BUS_ADDRESS`, else [`DEFAULT_SYSTEM_BUS_ADDRESS`].
pub fn system_bus_address(explicit: Option<&str>) -> String {
    if let Some(address) = explicit {
        return address.to_owned();
    }
    match std::env::var("DBUS_SYSTEM_BUS_ADDRESS") {
        Ok(address) if !address.is_empty() => address,
        _ => DEFAULT_SYSTEM_BUS_ADDRESS.to_owned(),
    }
}

/// A connection to the bus watchd is on.
#[derive(Clone, Debug)]
pub struct Client {
    connection: zbus::Connection,
    address: String,
}

/// What `watchctl status` shows: the manager's properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The daemon's version.
    pub version: String,
    /// The kinds of watch it can set (`AddWatch`'s `kind`), e.g. `["mounts"]`.
    pub sources: Vec<String>,
    /// Subscriptions open now, all users.
    pub subscriptions: u32,
    /// Watches set now, all users.
    pub watches: u32,
    /// Who decides whether a caller may set a watch: polkit, or the fallback to the polkit
    /// actions file's defaults when polkitd is absent.
    pub authorization: String,
    /// For each kind, how its source gets its events, e.g. `devices` → "udev monitor …" or
    /// "kernel uevents: udevd is not running …".
    pub source_details: std::collections::BTreeMap<String, String>,
}

/// One of the caller's own subscriptions, as `ListSubscriptions` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// Its object, e.g. `/org/watchd/Watchd1/subscription/3`.
    pub path: String,
    /// The pipe's capacity in packets.
    pub depth: u32,
    /// Its watches, in the order they were added.
    pub watches: Vec<WatchInfo>,
}

/// A watch of a [`SubscriptionInfo`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchInfo {
    /// The number its records carry.
    pub tag: u64,
    /// Its kind, e.g. `mounts`.
    pub kind: String,
}

/// Options of `Subscribe`; only those that are set are sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Pipe capacity in packets (the daemon's default is 16).
    pub depth: Option<u32>,
}

impl SubscribeOptions {
    pub(crate) fn to_dbus(&self) -> HashMap<&'static str, Variant<'static>> {
        let mut options = HashMap::new();
        if let Some(depth) = self.depth {
            options.insert("depth", Variant::from(depth));
        }
        options
    }
}

impl Client {
    /// Connects to the bus at `bus_address`, else at `DBUS_SYSTEM_BUS_ADDRESS`, else to the
    /// system bus at its default address. Must be called within a Tokio runtime.
    pub async fn connect(bus_address: Option<&str>) -> Result<Client> {
        let address = system_bus_address(bus_address);
        let connection = zbus::connection::Builder::address(address.as_str())
            .build()
            .await
            .map_err(|source| Error::Connect {
                address: address.clone(),
                source,
            })?;
        Ok(Client {
            connection,
            address,
        })
    }

    /// Wraps a connection made elsewhere.
    pub fn from_connection(connection: zbus::Connection) -> Client {
        Client {
            connection,
            address: String::new(),
        }
    }

    /// The bus connection, for calls this crate does not wrap.
    pub fn connection(&self) -> &zbus::Connection {
        &self.connection
    }

    /// The address connected to (empty after [`Client::from_connection`]).
    pub fn address(&self) -> &str {
        &self.address
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>> {
        Ok(ManagerProxy::builder(&self.connection)
            .cache_properties(CacheProperties::No)
            .build()
            .await?)
    }

    /// Reads the manager's properties.
    pub async fn status(&self) -> Result<Status> {
        let manager = self.manager().await?;
        Ok(Status {
            version: manager.version().await?,
            sources: manager.sources().await?,
            subscriptions: manager.subscriptions().await?,
            watches: manager.watches().await?,
            authorization: manager.authorization().await?,
            source_details: manager.source_details().await?.into_iter().collect(),
        })
    }

    /// The subscriptions of the caller's uid that are alive now, oldest first (never another
    /// user's: root too gets only root's).
    pub async fn list_subscriptions(&self) -> Result<Vec<SubscriptionInfo>> {
        let manager = self.manager().await?;
        Ok(manager
            .list_subscriptions()
            .await?
            .into_iter()
            .map(|(path, depth, watches)| SubscriptionInfo {
                path: path.to_string(),
                depth,
                watches: watches
                    .into_iter()
                    .map(|(tag, kind)| WatchInfo { tag, kind })
                    .collect(),
            })
            .collect())
    }

    /// Opens a subscription: a pipe of its own, no watches yet.
    pub async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        let manager = self.manager().await?;
        let (pipe, path) = manager.subscribe(&options.to_dbus()).await?;
        let proxy = SubscriptionProxy::builder(&self.connection)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        Ok(Subscription::new(proxy, pipe.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_address_wins() {
        assert_eq!(
            system_bus_address(Some("unix:path=/tmp/x")),
            "unix:path=/tmp/x"
        );
    }

    #[test]
    fn subscribe_options_send_only_what_is_set() {
        assert!(SubscribeOptions::default().to_dbus().is_empty());
        let options = SubscribeOptions { depth: Some(64) }.to_dbus();
        assert_eq!(options.len(), 1);
        assert_eq!(options["depth"], Variant::from(64u32));
    }
}
