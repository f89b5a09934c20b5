//! What the daemon does for a caller, independent of D-Bus: subscribe, add, remove and
//! resync watches, each decision logged with who asked.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use zbus_polkit::policykit1::Subject;

use crate::authority::{Action, Authority, CheckBounds};
use crate::conf::{Change, Config};
use crate::error::{Error, Result, Truncated};
use crate::hub::{Counts, Hub, NewSubscription, SubscriptionId, SubscriptionSummary};
use crate::identity::{Caller, Uid};
use crate::inflight::{InFlight, Slot};
use crate::options::Options;
use crate::source::Source;
use crate::sources::KINDS;
use crate::watch::{Tag, Watch};

pub struct Manager {
    hub: Arc<Hub>,
    authority: Authority,
    sources: Vec<Arc<dyn Source>>,
    /// The configuration in force: what the daemon started with, its `[limits]` and `[pipe]`
    /// replaced by each reload.
    config: std::sync::RwLock<Config>,
    object_checks: std::sync::Mutex<HashMap<Uid, Arc<tokio::sync::Semaphore>>>,
    /// Method calls being served, per uid.
    calls: Arc<InFlight>,
    /// The uid of each bus name seen calling, so that a uid at its call limit is refused
    /// before the bus is asked who it is: a bus never gives a unique name twice, nor
    /// changes a connection's uid.
    known_senders: std::sync::Mutex<HashMap<String, Uid>>,
}

/// Bus names [`Manager::sender_uid`] remembers; past it the list starts again, empty.
const KNOWN_SENDERS: usize = 4096;

/// Object checks (path resolution, /proc lookups, snapshots) one uid may run at once.
const OBJECT_CHECKS_PER_UID: usize = 4;

/// Who asks: the caller as the bus reported them, and as the authority sees them.
pub struct Request {
    pub caller: Arc<Caller>,
    /// The polkit subject for the caller (its bus name, or its pidfd when the bus vouched).
    pub subject: Subject,
    /// The call carried ALLOW_INTERACTIVE_AUTHORIZATION: polkit may ask for a password.
    pub interactive: bool,
}

impl Manager {
    pub fn new(
        hub: Arc<Hub>,
        authority: Authority,
        sources: Vec<Arc<dyn Source>>,
        config: Config,
    ) -> Self {
        Manager {
            hub,
            authority,
            sources,
            config: std::sync::RwLock::new(config),
            object_checks: Default::default(),
            calls: InFlight::new("calls in progress", "limits.max_pending_calls_per_uid"),
            known_senders: Default::default(),
        }
    }

    /// Each source's kind and how it gets its events.
    pub fn source_details(&self) -> std::collections::HashMap<String, String> {
        self.sources
            .iter()
            .map(|s| (s.kind().name().to_owned(), s.describe()))
            .collect()
    }

    pub fn source_names(&self) -> Vec<String> {
        self.sources
            .iter()
            .map(|s| s.kind().name().to_owned())
            .collect()
    }

    fn source(&self, kind: &str) -> Result<&Arc<dyn Source>> {
        self.sources
            .iter()
            .find(|s| s.kind().name() == kind)
            .ok_or_else(|| {
                let why = if KINDS.iter().any(|k| k.name() == kind) {
                    "is disabled in the configuration"
                } else {
                    "does not exist"
                };
                Error::UnknownKind(format!(
                    "watch kind '{}' {why}; available: {}",
                    Truncated(kind),
                    self.source_names().join(", ")
                ))
            })
    }

    /// The configuration in force now.
    pub fn config(&self) -> Config {
        self.config.read().expect("configuration poisoned").clone()
    }

    /// Applies a reloaded configuration's `[limits]`, `[pipe]` and polkit timeout to the requests that follow
    /// (subscriptions already made keep what they have) and logs, key by key, what changed
    /// and what waits for a restart. Returns the changes.
    pub fn reload(&self, new: &Config) -> Vec<Change> {
        let mut config = self.config.write().expect("configuration poisoned");
        let changes = config.changes(new);
        let (live, later): (Vec<&Change>, Vec<&Change>) = changes.iter().partition(|c| c.live);
        if !live.is_empty() {
            self.hub.set_limits(new.limits.clone());
            *config = config.with_live_parts_of(new);
        }
        let list = |changes: &[&Change]| {
            changes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if changes.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
        }
        if !live.is_empty() {
            tracing::info!(changed = %list(&live), "configuration reloaded: applied to new requests");
        }
        if !later.is_empty() {
            tracing::warn!(
                changed = %list(&later),
                "configuration reloaded: these take effect only at the next start (restart watchd)"
            );
        }
        changes
    }

    /// Counts one more call of `uid` until the slot is dropped, or refuses it with
    /// `LimitExceeded` when the uid already has `limits.max_pending_calls_per_uid`.
    pub fn begin_call(&self, uid: Uid) -> Result<Slot> {
        let limit = self
            .config
            .read()
            .expect("configuration poisoned")
            .limits
            .max_pending_calls_per_uid;
        self.calls.enter(uid, limit)
    }

    /// The uid of `sender` if it called before.
    pub fn sender_uid(&self, sender: &str) -> Option<Uid> {
        let known = self.known_senders.lock().expect("known senders poisoned");
        known.get(sender).copied()
    }

    /// Remembers the uid the bus reported for `sender`.
    pub fn remember_sender(&self, sender: &str, uid: Uid) {
        let mut known = self.known_senders.lock().expect("known senders poisoned");
        if known.len() >= KNOWN_SENDERS && !known.contains_key(sender) {
            known.clear();
        }
        known.insert(sender.to_owned(), uid);
    }

    /// Counts for `watchctl status`.
    pub fn counts(&self) -> Counts {
        self.hub.counts()
    }

    /// The subscriptions of `reader`'s uid, for `watchctl list`: a subscriber's own
    /// business, so nobody, root included, is shown another uid's.
    pub fn subscriptions_of(&self, reader: Uid) -> Vec<SubscriptionSummary> {
        self.hub.owned_by(reader)
    }

    /// Who decides authorizations, for `watchctl status`.
    pub async fn authorization(&self) -> String {
        self.authority.describe().await
    }

    /// Whether the subscription still lives (its reader may have closed already).
    pub fn is_alive(&self, id: SubscriptionId) -> bool {
        self.hub.describe(id).is_some()
    }

    pub fn subscribe(&self, request: &Request, mut options: Options) -> Result<NewSubscription> {
        let caller = &request.caller;
        let pipe = self
            .config
            .read()
            .expect("configuration poisoned")
            .pipe
            .clone();
        let depth = options.take_u32("depth")?.unwrap_or(pipe.default_depth);
        options.finish("Subscribe", &["depth"])?;
        if !(2..=pipe.max_depth).contains(&depth) {
            return Err(Error::invalid(format!(
                "depth {depth} is out of range: 2 to {} packets (pipe.max_depth)",
                pipe.max_depth
            )));
        }
        let result = self.hub.subscribe(caller.clone(), depth);
        match &result {
            Ok(new) => tracing::info!(
                uid = %caller.uid, pid = %caller.pid, subscription = new.id.0, depth = new.depth,
                "subscribe: allowed"
            ),
            Err(e) => {
                tracing::info!(uid = %caller.uid, pid = %caller.pid, error = ?e, "subscribe: refused")
            }
        }
        result
    }

    /// Only the uid that subscribed may change the subscription: the pipe is its own.
    fn check_owner(&self, id: SubscriptionId, caller: &Caller) -> Result<()> {
        let (subscriber, _) = self
            .hub
            .describe(id)
            .ok_or_else(|| Error::Failed(format!("subscription {} has ended", id.0)))?;
        let owner = subscriber.uid;
        if owner != caller.uid {
            tracing::warn!(uid = %caller.uid, pid = %caller.pid, subscription = id.0, owner = %owner, "refused: not the subscription's owner");
            // Whose it is stays in the log: a stranger learns no uid from the refusal.
            return Err(Error::AccessDenied(format!(
                "subscription {} belongs to another user",
                id.0
            )));
        }
        Ok(())
    }

    /// The polkit action for the kind is checked first, before any of the caller's objects
    /// are looked at, so a caller that may not watch cannot probe paths either.
    pub async fn add_watch(
        &self,
        id: SubscriptionId,
        request: &Request,
        tag: Tag,
        kind: &str,
        options: Options,
    ) -> Result<()> {
        let caller = &request.caller;
        let result = self
            .add_watch_checked(id, request, tag, kind, options)
            .await;
        log_outcome("add watch", caller, id, tag, Some(kind), &result);
        result
    }

    async fn add_watch_checked(
        &self,
        id: SubscriptionId,
        request: &Request,
        tag: Tag,
        kind: &str,
        mut options: Options,
    ) -> Result<()> {
        let caller = &request.caller;
        self.check_owner(id, caller)?;
        self.hub.check_descriptors(id)?;
        if tag == 0 {
            return Err(Error::invalid(
                "tag 0 is reserved for records about the pipe itself",
            ));
        }
        let source = self.source(kind)?;
        let action = Action::for_watch(source.kind(), &options, caller).ok_or_else(|| {
            Error::Failed(format!("no polkit action guards watches of kind '{kind}'"))
        })?;
        // The kind is known here, so only the named object can be long.
        let object = match ["path", "key", "cache"]
            .iter()
            .find_map(|k| options.peek_str(k))
        {
            Some(named) => format!("{kind} {}", Truncated(named)),
            None => format!("{kind}, default"),
        };
        let bounds = {
            let config = self.config.read().expect("configuration poisoned");
            CheckBounds {
                per_uid: config.limits.max_polkit_checks_per_uid,
                timeout: std::time::Duration::from_millis(config.authorization.timeout_ms.into()),
            }
        };
        self.authority
            .check(
                caller,
                &request.subject,
                action,
                request.interactive,
                &object,
                bounds,
            )
            .await?;
        let initial = options.take_bool("initial")?.unwrap_or(false);
        let filters = options.take_filters()?;
        // The caller's objects are looked at off the async workers: a path into a filesystem
        // that never answers (a stuck FUSE server) then holds up this call and a blocking
        // thread, not the daemon. Each uid gets a few such threads, so it can only stall
        // itself.
        let _slot = self.object_check_slot(caller.uid).await;
        let (source, caller, hub, kind) = (
            source.clone(),
            Arc::clone(caller),
            self.hub.clone(),
            kind.to_owned(),
        );
        let work = tokio::task::spawn_blocking(move || -> Result<()> {
            let scope = source.scope(&mut options, &caller)?;
            let mut known = vec!["initial", "filters"];
            known.extend(source.option_names());
            options.finish(&format!("kind '{kind}'"), &known)?;
            let watch = Watch {
                tag,
                kind: source.kind(),
                filters,
                scope,
            };
            if !initial {
                return hub.add_watch(id, watch, None);
            }
            let mut result = Ok(());
            let scope = watch.scope.clone();
            let mut watch = Some(watch);
            source.with_snapshot(&*scope, &mut |snapshot| {
                result = hub.add_watch(id, watch.take().expect("called once"), Some(snapshot));
            });
            result
        });
        work.await
            .map_err(|e| Error::Failed(format!("setting up the watch failed: {e}")))?
    }

    /// One of the few object-check threads this uid may occupy at a time.
    async fn object_check_slot(&self, uid: Uid) -> tokio::sync::OwnedSemaphorePermit {
        let semaphore = self
            .object_checks
            .lock()
            .expect("object check slots poisoned")
            .entry(uid)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(OBJECT_CHECKS_PER_UID)))
            .clone();
        semaphore
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    pub fn remove_watch(&self, id: SubscriptionId, request: &Request, tag: Tag) -> Result<()> {
        let caller = &request.caller;
        let result = self
            .check_owner(id, caller)
            .and_then(|()| self.hub.remove_watch(id, tag));
        log_outcome("remove watch", caller, id, tag, None, &result);
        result
    }

    pub async fn resync(&self, id: SubscriptionId, request: &Request, tag: Tag) -> Result<()> {
        let caller = &request.caller;
        let result = self.resync_checked(id, caller, tag).await;
        log_outcome("resync", caller, id, tag, None, &result);
        result
    }

    /// The subscription's owner and depth, for `reader` if it is the owner or root: who
    /// subscribes, and how deep its pipe is, are the subscriber's own business.
    pub fn describe_for(&self, id: SubscriptionId, reader: Uid) -> Result<(Uid, u32)> {
        let (subscriber, depth) = self
            .hub
            .describe(id)
            .ok_or_else(|| Error::Failed(format!("subscription {} has ended", id.0)))?;
        let owner = subscriber.uid;
        if reader != owner && reader != Uid(0) {
            tracing::debug!(uid = %reader, subscription = id.0, "property read refused: not the subscription's owner");
            return Err(Error::AccessDenied(format!(
                "only the owner of subscription {} and root may read its properties",
                id.0
            )));
        }
        Ok((owner, depth))
    }

    async fn resync_checked(&self, id: SubscriptionId, caller: &Caller, tag: Tag) -> Result<()> {
        self.check_owner(id, caller)?;
        let watch = self.hub.watch(id, tag)?;
        let source = self.source(watch.kind.name())?.clone();
        // A snapshot looks at the caller's objects (statfs, quotas, files): off the async
        // workers, in one of the caller's few object-check threads, as AddWatch does.
        let _slot = self.object_check_slot(caller.uid).await;
        let hub = self.hub.clone();
        tokio::task::spawn_blocking(move || {
            let mut result = Ok(());
            source.with_snapshot(&*watch.scope, &mut |snapshot| {
                result = hub.resync(id, tag, snapshot)
            });
            result
        })
        .await
        .map_err(|e| Error::Failed(format!("resending the watch's state failed: {e}")))?
    }
}

/// One line per request on a watch, allowed or refused, with who asked. `kind` is the
/// caller's own string, shortened.
fn log_outcome(
    what: &str,
    caller: &Caller,
    id: SubscriptionId,
    tag: Tag,
    kind: Option<&str>,
    result: &Result<()>,
) {
    let kind = kind.map(Truncated);
    match result {
        Ok(()) => {
            tracing::info!(uid = %caller.uid, pid = %caller.pid, subscription = id.0, tag, kind = kind.map(tracing::field::debug), "{what}: allowed")
        }
        Err(e) => {
            tracing::info!(uid = %caller.uid, pid = %caller.pid, subscription = id.0, tag, kind = kind.map(tracing::field::debug), error = ?e, "{what}: refused")
        }
    }
}
