//! The D-Bus face of [`crate::manager::Manager`]: the Manager object and one object per
//! subscription. Each method looks up the caller, counts the call against its uid's
//! `limits.max_pending_calls_per_uid` (past it, `LimitExceeded` at once), then hands over to
//! the manager.
//!
//! zbus 6 serves each method call in a task of its own (`#[interface]`'s `spawn` defaults to
//! true, and every method here takes `&self`, so calls share the object's read lock): a
//! call that waits, for polkitd or for a caller's slow filesystem, holds up no other call.
//! What stays serial is reading the bus socket and handing each call to its task.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use zbus::message::{Flags, Header};
use zbus::object_server::{ObjectServer, SignalEmitter};
use zbus::{Connection, OwnedObjectPath, interface};
use zbus_polkit::policykit1::Subject;

use crate::error::{Error, Result};
use crate::hub::SubscriptionId;
use crate::identity::{Caller, Uid};
use crate::inflight::Slot;
use crate::manager::{Manager, Request};
use crate::options::{OptionMap, Options};
use crate::sources::krb5::SignalNote;
use crate::watch::Tag;

pub const BUS_NAME: &str = "org.watchd.Watchd1";
pub const MANAGER_PATH: &str = "/org/watchd/Watchd1";
pub const MANAGER_INTERFACE: &str = "org.watchd.Watchd1.Manager";
pub const SUBSCRIPTION_INTERFACE: &str = "org.watchd.Watchd1.Subscription";

pub fn subscription_path(id: SubscriptionId) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!("{MANAGER_PATH}/subscription/{}", id.0))
        .expect("valid object path")
}

/// Who sent this call, as the bus reports them, and as polkit should see them: by pidfd
/// and uid when the bus vouched for the pidfd, otherwise by bus name (polkitd then asks the
/// bus itself). The one place a method call's caller is looked up.
async fn identify(conn: &Connection, header: &Header<'_>) -> Result<Request> {
    let sender = header
        .sender()
        .ok_or_else(|| Error::Failed("the call carries no sender".into()))?;
    let caller = Caller::lookup(conn, sender.as_str())
        .await
        .map_err(|e| Error::Failed(format!("cannot identify the caller: {e}")))?;
    let subject = match (&caller.pidfd, caller.pidfd_from_bus) {
        (Some(pidfd), true) => Subject::new_for_owner(pidfd, caller.uid.0),
        _ => Subject::new_for_message_header(header),
    }
    .map_err(|e| Error::Failed(format!("cannot describe the caller to polkit: {e}")))?;
    let interactive = header
        .primary()
        .flags()
        .contains(Flags::ALLOW_INTERACTIVE_AUTH);
    Ok(Request {
        caller: Arc::new(caller),
        subject,
        interactive,
    })
}

/// One of the caller's uid's call slots, held until the reply, and [`identify`]. A sender
/// that called before is counted first, so a uid at its limit is refused without a round
/// trip to the bus.
async fn admit(
    manager: &Manager,
    conn: &Connection,
    header: &Header<'_>,
) -> Result<(Request, Slot)> {
    let sender = header.sender().map(|s| s.as_str());
    let early = match sender.and_then(|s| manager.sender_uid(s)) {
        Some(uid) => Some(manager.begin_call(uid)?),
        None => None,
    };
    let request = identify(conn, header).await?;
    let uid = request.caller.uid;
    let slot = match early {
        Some(slot) => slot,
        None => {
            if let Some(sender) = sender {
                manager.remember_sender(sender, uid);
            }
            manager.begin_call(uid)?
        }
    };
    Ok((request, slot))
}

/// The uid behind a property read (or `ListSubscriptions`), counted against its calls in
/// progress as a method call is: a uid at its limit is refused (LimitExceeded) before the
/// bus is asked who a new sender is. A read without a message (none happens: the
/// properties are constant and never sent in a signal) has no reader and is refused.
async fn admit_read(
    manager: &Manager,
    conn: &Connection,
    header: Option<&Header<'_>>,
) -> Result<(Uid, Slot)> {
    let sender = header
        .and_then(|h| h.sender())
        .ok_or_else(|| Error::AccessDenied("the read carries no sender".into()))?;
    if let Some(uid) = manager.sender_uid(sender.as_str()) {
        return Ok((uid, manager.begin_call(uid)?));
    }
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let uid = dbus
        .get_connection_unix_user(sender.clone().into())
        .await
        .map(Uid)
        .map_err(|e| Error::Failed(format!("cannot identify the reader: {e}")))?;
    manager.remember_sender(sender.as_str(), uid);
    Ok((uid, manager.begin_call(uid)?))
}

/// One entry of `ListSubscriptions`, `(oua(ts))`: the object, the depth, each watch's tag
/// and kind.
type ListedSubscription = (OwnedObjectPath, u32, Vec<(Tag, String)>);

/// `org.watchd.Watchd1.Manager` at `/org/watchd/Watchd1`.
pub struct ManagerObject {
    pub manager: Arc<Manager>,
}

// The doc comments below are the introspection XML's (dbus/org.watchd.Watchd1.xml), in
// gtk-doc form so that gdbus-codegen and watchd-docgen read them: the first line names the
// member, then one `@arg: text` line per argument, then the text.
#[interface(name = "org.watchd.Watchd1.Manager")]
impl ManagerObject {
    /// Subscribe:
    /// @options: Options of the subscription (below).
    /// @pipe: The read end of the subscription's packet pipe: one record per read.
    /// @subscription: The subscription's object, for AddWatch, RemoveWatch and Resync.
    ///
    /// Create a subscription and return the read end of its packet pipe. Options: "depth"
    /// (u), the pipe's capacity in packets. The subscription lives as long as any copy of the
    /// read end is open. Options are read under bounds (64 entries, names of 64 bytes,
    /// strings of 4096 bytes, lists of 64 entries): past one, the call fails with
    /// org.freedesktop.DBus.Error.InvalidArgs naming it.
    #[zbus(out_args("pipe", "subscription"))]
    async fn subscribe(
        &self,
        options: OptionMap,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<(zbus::OwnedFd, OwnedObjectPath)> {
        let (request, _call) = admit(&self.manager, conn, &header).await?;
        let new = self.manager.subscribe(&request, Options::new(options)?)?;
        let path = subscription_path(new.id);
        let object = SubscriptionObject {
            id: new.id,
            manager: self.manager.clone(),
        };
        server.at(&path, object).await?;
        // The reader cannot have closed yet (it has not received the fd), but the hub may
        // end the subscription on its own; don't leave an object behind if it did.
        if !self.manager.is_alive(new.id) {
            server.remove::<SubscriptionObject, _>(&path).await?;
        }
        Ok((new.read_end.into(), path))
    }

    /// ListSubscriptions:
    /// @subscriptions: Each one's object, pipe depth in packets and watches (tag, kind).
    ///
    /// The subscriptions alive now that belong to the caller's uid, oldest first, each with
    /// its watches in the order they were added. Another user's are never listed, not even
    /// to root: who subscribes to what is each subscriber's own business (as with a
    /// subscription's Owner and Depth).
    #[zbus(out_args("subscriptions"))]
    async fn list_subscriptions(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<ListedSubscription>> {
        let (reader, _call) = admit_read(&self.manager, conn, Some(&header)).await?;
        Ok(self
            .manager
            .subscriptions_of(reader)
            .into_iter()
            .map(|sub| {
                let watches = sub
                    .watches
                    .into_iter()
                    .map(|(tag, kind)| (tag, kind.to_owned()))
                    .collect();
                (subscription_path(sub.id), sub.depth, watches)
            })
            .collect())
    }

    /// Version: The daemon's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// Sources: The kinds of watch this daemon serves.
    #[zbus(property(emits_changed_signal = "const"))]
    fn sources(&self) -> Vec<String> {
        self.manager.source_names()
    }

    /// SourceDetails: For each kind, how its source gets its events now (e.g. devices from
    /// udev, or raw kernel uevents when udevd is not running): read it again, it changes
    /// when udevd starts or stops.
    #[zbus(property(emits_changed_signal = "false"))]
    fn source_details(&self) -> HashMap<String, String> {
        self.manager.source_details()
    }

    /// Subscriptions: Subscriptions alive now.
    #[zbus(property(emits_changed_signal = "false"))]
    fn subscriptions(&self) -> u32 {
        self.manager.counts().subscriptions
    }

    /// Authorization: Who decides whether a caller may set a watch: polkit, or the fallback
    /// to the polkit actions file's defaults (and why).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn authorization(&self) -> String {
        self.manager.authorization().await
    }

    /// Watches: Watches alive now, over all subscriptions.
    #[zbus(property(emits_changed_signal = "false"))]
    fn watches(&self) -> u32 {
        self.manager.counts().watches
    }
}

/// `org.watchd.Watchd1.Subscription` at `/org/watchd/Watchd1/subscription/N`.
pub struct SubscriptionObject {
    id: SubscriptionId,
    manager: Arc<Manager>,
}

#[interface(name = "org.watchd.Watchd1.Subscription")]
impl SubscriptionObject {
    /// AddWatch:
    /// @tag: The number this watch's records carry: non-zero, unique in the subscription.
    /// @kind: What to watch: one of the Manager's Sources, e.g. "mounts" or "space".
    /// @options: Options of the watch (below).
    ///
    /// Add a watch to the subscription. Options: "initial" (b) current state first, then SYNC; "filters" (a(utuu)) type,
    /// subtype mask, flags mask, flags value; plus the kind's own. mounts: "path" (s).
    /// devices: "subsystem" (s, "S" or "S/DEVTYPE"), "tag" (s), "property" (as, "KEY=GLOB",
    /// all must match), "sysname" (s, glob), "properties" (as: only these properties in the
    /// records; an empty list gives none; absent gives all). keys: "key" (s: "@user",
    /// "@user-session", "@persistent" or a serial), "uid" (u: whose named keyring; another
    /// user's needs the admin action), "nested" (b: every key inside too). krb5: "cache"
    /// (s, default: the caller's default ccache), "signal" (b: also CredentialsCacheChanged).
    /// files: "path" (s: a file or directory, resolved as the caller) or "fd" (h: a directory,
    /// which must be the one at its path for the caller), "subtree" (b: everything below it).
    /// space: "path" (s: its filesystem; default: every one worth warning about), "below" (s:
    /// "5%" or a size, "2G"), "min_free" (s: a size or "none"), "step" (s), "min_interval_s"
    /// (u), "inodes_below" (s), "inodes_step" (s). fserrors: "path" (s: only its filesystem).
    /// quota: "all" (b: every user's and group's warnings; needs an administrator).
    /// Options are read under the bounds of Subscribe's.
    async fn add_watch(
        &self,
        tag: Tag,
        kind: &str,
        options: OptionMap,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<()> {
        let (request, _call) = admit(&self.manager, conn, &header).await?;
        self.manager
            .add_watch(self.id, &request, tag, kind, Options::new(options)?)
            .await
    }

    /// RemoveWatch:
    /// @tag: The watch's tag, as AddWatch gave it.
    ///
    /// Stop the watch.
    async fn remove_watch(
        &self,
        tag: Tag,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<()> {
        let (request, _call) = admit(&self.manager, conn, &header).await?;
        self.manager.remove_watch(self.id, &request, tag)
    }

    /// Resync:
    /// @tag: The watch's tag, as AddWatch gave it.
    ///
    /// Send the watch's current state again (SNAPSHOT records, then SYNC).
    async fn resync(
        &self,
        tag: Tag,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<()> {
        let (request, _call) = admit(&self.manager, conn, &header).await?;
        self.manager.resync(self.id, &request, tag).await
    }

    /// Depth: The pipe's capacity in packets, as the kernel granted it. Readable by the
    /// subscription's owner and root; others get org.watchd.Watchd1.Error.AccessDenied.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn depth(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<u32> {
        let (reader, _call) = admit_read(&self.manager, conn, header.as_ref()).await?;
        let (_, depth) = self.manager.describe_for(self.id, reader)?;
        Ok(depth)
    }

    /// CredentialsCacheChanged:
    /// @cache: The credential cache, as MIT krb5 names it.
    /// @principal: Its default principal, e.g. alice@EXAMPLE.ORG; empty when not known.
    /// @what: 0 created, 1 changed, 2 primary, 3 destroyed (the krb5 record subtypes).
    ///
    /// A credential cache of a krb5 watch added with "signal": true changed. Sent to the
    /// subscriber alone (unicast).
    #[zbus(signal)]
    async fn credentials_cache_changed(
        emitter: &SignalEmitter<'_>,
        cache: &str,
        principal: &str,
        what: u32,
    ) -> zbus::Result<()>;

    /// Owner: The uid that owns this subscription. Readable by that uid and root; others
    /// get org.watchd.Watchd1.Error.AccessDenied.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn owner(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<u32> {
        let (reader, _call) = admit_read(&self.manager, conn, header.as_ref()).await?;
        let (owner, _) = self.manager.describe_for(self.id, reader)?;
        Ok(owner.0)
    }
}

/// Drops the objects of subscriptions that ended (last read end closed).
pub async fn reap_ended(conn: Connection, mut ended: mpsc::UnboundedReceiver<SubscriptionId>) {
    while let Some(id) = ended.recv().await {
        let path = subscription_path(id);
        if let Err(e) = conn
            .object_server()
            .remove::<SubscriptionObject, _>(&path)
            .await
        {
            tracing::debug!(path = %path, error = %e, "subscription object already gone");
        }
    }
}

/// Sends the signals the hub asks for, each to its subscriber alone.
pub async fn send_signals(conn: Connection, mut notes: mpsc::Receiver<SignalNote>) {
    while let Some(note) = notes.recv().await {
        let signal = note.signal;
        let sent = conn
            .emit_signal(
                Some(note.destination.as_str()),
                subscription_path(note.subscription),
                SUBSCRIPTION_INTERFACE,
                "CredentialsCacheChanged",
                &(signal.cache, signal.principal, signal.what),
            )
            .await;
        if let Err(e) = sent {
            tracing::debug!(destination = %note.destination, error = %e, "could not send CredentialsCacheChanged");
        }
    }
}
