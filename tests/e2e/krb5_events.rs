//! Kerberos credential-cache events from a real KDC: kinit, kinit -R, kswitch and kdestroy
//! as uid 1000, seen through a `krb5` watch.
//!
//! Every client here is uid 1000 ([`connect_as_user`]); the realm is the harness's
//! throwaway one on loopback ([`Kdc`]). `KEYRING:persistent:1000` is the host's (keyrings
//! are not namespaced), so the tests that fill it take turns with [`PersistentCollection`].
//! The daemon polls keyrings every [`INTERVAL`]; each record must arrive within [`LIMIT`]
//! of the command's return (one interval, plus slack for the walk and a loaded machine),
//! and the figures are printed.
//!
//! `a_replaced_persistent_keyring_…` fails against the daemon as it is: a watch follows the
//! persistent keyring it found at AddWatch, and when that keyring expires or is invalidated
//! the watch goes silent for good (its "gone" notice is a key record, which a krb5 watch
//! does not take). It fails with "DAEMON BUG:" until the daemon follows or reports it.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use watchd_client::zbus::export::futures_core::Stream;
use watchd_client::zbus::{self, MatchRule, Message, MessageStream};
use watchd_client::{
    Client, Event, EventStream, SUBSCRIPTION_INTERFACE, SubscribeOptions, WatchOptions,
};
use watchd_e2e::krb5::{
    ALICE, ALICE_PASSWORD, BOB, BOB_PASSWORD, Destroy, KEYRING_UID, Kdc, PersistentCollection,
    invalidate_persistent_keyring, persistent_collection, principal,
};
use watchd_e2e::polkit::{TEST_UID, connect_as_user};
use watchd_e2e::{Env, Process, Scratch, Trial};
use watchd_proto::{RecordType, attr, krb5, meta};

use crate::{error_name, expect_silence, next_within, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "krb5_events::kinit_renew_kswitch_kdestroy_in_the_persistent_keyring_collection",
            keyring_collection_events,
        ),
        trial(
            "krb5_events::kinit_renew_kdestroy_of_a_file_cache",
            file_cache_events,
        ),
        trial(
            "krb5_events::initial_state_is_every_cache_then_the_primary_then_sync",
            initial_state,
        ),
        trial(
            "krb5_events::signal_true_sends_credentials_cache_changed_to_the_subscriber_alone",
            signal,
        ),
        trial(
            "krb5_events::unreachable_foreign_and_malformed_caches_are_refused",
            refusals,
        ),
        trial(
            "krb5_events::without_a_cache_option_the_callers_default_ccache_is_watched",
            default_cache,
        ),
        trial(
            "krb5_events::a_replaced_persistent_keyring_is_followed_or_the_watch_reports_its_end",
            replaced_persistent_keyring,
        ),
    ]
}

/// The user whose caches the tests fill.
const UID: u32 = KEYRING_UID;
/// The key poller's interval the daemons here run with.
const INTERVAL: Duration = Duration::from_millis(250);
const CONFIG: &str = "[keys]\npoll_interval_ms = 250\n";
/// How late a record may be after the command that caused it: one poll interval plus slack.
const LIMIT: Duration = Duration::from_secs(1);
/// How long a pipe must stay quiet after a step to show nothing more (no duplicate, no stray
/// intermediate state) came of it: two poll intervals.
const QUIET: Duration = Duration::from_millis(500);

const NOT_SUPPORTED: &str = "org.watchd.Watchd1.Error.NotSupported";
const ACCESS_DENIED: &str = "org.watchd.Watchd1.Error.AccessDenied";
const INVALID_ARGUMENT: &str = "org.watchd.Watchd1.Error.InvalidArgument";
const SIGNAL_NAME: &str = "CredentialsCacheChanged";

/// A client whose bus connection belongs to `uid`, and the process that keeps it so.
async fn client_as(env: &Env, uid: u32) -> Result<(Client, Process)> {
    let (conn, holder) = connect_as_user(&env.bus.address, uid).await?;
    Ok((Client::from_connection(conn), holder))
}

/// The end of the daemon's log, for a failure's context.
fn daemon_log(env: &Env) -> String {
    let log = env.daemon.log();
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(60)..];
    format!(
        "watchd's log (last {} lines):\n{}",
        tail.len(),
        tail.join("\n")
    )
}

/// The cache a record must name.
#[derive(Clone, Copy, Debug)]
enum Cache<'a> {
    Exactly(&'a str),
    /// A new cache of the collection: `KEYRING:persistent:1000:krb_ccache_…`, name unknown.
    NewIn(&'a str),
}

impl Cache<'_> {
    fn matches(self, cache: &str) -> bool {
        match self {
            Cache::Exactly(name) => cache == name,
            Cache::NewIn(collection) => cache
                .strip_prefix(collection)
                .and_then(|rest| rest.strip_prefix(":krb_ccache_"))
                .is_some_and(|rest| !rest.is_empty()),
        }
    }
}

/// One krb5 record as the test expects it.
#[derive(Clone, Copy, Debug)]
struct Expect<'a> {
    subtype: u8,
    cache: Cache<'a>,
    principal: &'a str,
    collection: &'a str,
    tag: u64,
    snapshot: bool,
}

fn subtype_name(subtype: u8) -> &'static str {
    match subtype {
        krb5::CREATED => "created",
        krb5::CHANGED => "changed",
        krb5::PRIMARY => "primary",
        krb5::DESTROYED => "destroyed",
        _ => "?",
    }
}

fn describe(event: &Event) -> String {
    let h = event.header();
    let r = event.record();
    format!(
        "type {} subtype {} tag {} flags {:#x} cache {:?} principal {:?} collection {:?}",
        h.record_type,
        h.subtype,
        h.tag,
        h.flags,
        r.get_str(attr::CACHE),
        r.get_str(attr::PRINCIPAL),
        r.get_str(attr::COLLECTION)
    )
}

/// The record's cache attribute.
fn cache_of(event: &Event) -> String {
    event.record().get_str(attr::CACHE).unwrap_or_default()
}

/// Checks one record against `want`.
fn check(event: &Event, want: Expect<'_>) -> Result<()> {
    let h = event.header();
    let r = event.record();
    let cache = r.get_str(attr::CACHE);
    let ok = h.is(RecordType::Krb5, want.subtype)
        && h.tag == want.tag
        && event.is_snapshot() == want.snapshot
        && cache.as_deref().is_some_and(|c| want.cache.matches(c))
        && r.get_str(attr::PRINCIPAL).as_deref() == Some(want.principal)
        && r.get_str(attr::COLLECTION).as_deref() == Some(want.collection);
    ensure!(
        ok,
        "expected krb5 {} (tag {}, snapshot {}) of {:?}, principal {:?}, collection {:?}; got {}",
        subtype_name(want.subtype),
        want.tag,
        want.snapshot,
        want.cache,
        want.principal,
        want.collection,
        describe(event)
    );
    Ok(())
}

/// Timings of one test, printed as they are taken and checked at the end.
struct Figures {
    test: &'static str,
    taken: Vec<(String, Duration)>,
}

impl Figures {
    fn new(test: &'static str) -> Figures {
        Figures {
            test,
            taken: Vec::new(),
        }
    }

    fn note(&mut self, step: String, elapsed: Duration) {
        eprintln!(
            "{}: {step}: record {:.1} ms after the command returned",
            self.test,
            elapsed.as_secs_f64() * 1000.0
        );
        self.taken.push((step, elapsed));
    }

    /// Every record within [`LIMIT`].
    fn check(&self) -> Result<()> {
        let late: Vec<_> = self.taken.iter().filter(|(_, d)| *d >= LIMIT).collect();
        let max = self.taken.iter().map(|(_, d)| *d).max().unwrap_or_default();
        eprintln!(
            "{}: {} records, slowest {:.1} ms (poll interval {} ms, limit {} ms)",
            self.test,
            self.taken.len(),
            max.as_secs_f64() * 1000.0,
            INTERVAL.as_millis(),
            LIMIT.as_millis()
        );
        ensure!(
            late.is_empty(),
            "records later than {LIMIT:?} after their command: {late:?}"
        );
        Ok(())
    }
}

/// Reads the next record, checks it against `want` and notes how long after `since` (the
/// command's return) it arrived. Waits up to 10 s so that a late record is reported with
/// its figure rather than as missing.
async fn expect_record(
    events: &mut EventStream,
    figures: &mut Figures,
    step: &str,
    since: Instant,
    want: Expect<'_>,
) -> Result<Event> {
    let event = next_within(events, Duration::from_secs(10))
        .await
        .with_context(|| format!("{step}: waiting for krb5 {}", subtype_name(want.subtype)))?;
    let elapsed = since.elapsed();
    check(&event, want).with_context(|| step.to_owned())?;
    figures.note(format!("{step} -> {}", subtype_name(want.subtype)), elapsed);
    Ok(event)
}

/// A step whose command (just returned) makes exactly one record: `want`, then silence.
async fn only_record(
    events: &mut EventStream,
    figures: &mut Figures,
    step: &str,
    want: Expect<'_>,
) -> Result<Event> {
    let event = expect_record(events, figures, step, Instant::now(), want).await?;
    quiet(events, step).await?;
    Ok(event)
}

/// Nothing more comes of a step.
async fn quiet(events: &mut EventStream, step: &str) -> Result<()> {
    expect_silence(events, QUIET)
        .await
        .with_context(|| format!("after {step}, nothing more was expected"))
}

/// `uid`'s caches by principal, from `klist -l`.
fn cache_of_principal(kdc: &Kdc, uid: u32, user: &str) -> Result<String> {
    let caches = kdc.collection(uid)?;
    caches
        .iter()
        .find(|c| c.principal == principal(user))
        .map(|c| c.cache.clone())
        .with_context(|| format!("klist -l has no cache of {user}: {caches:?}"))
}

/// The options of a krb5 watch of `cache` (of the caller's default cache with `None`).
fn krb5_options(cache: Option<&str>) -> WatchOptions {
    match cache {
        Some(cache) => WatchOptions::new().option("cache", cache),
        None => WatchOptions::new(),
    }
}

async fn keyring_collection_events() -> Result<()> {
    let _collection = PersistentCollection::claim(UID)?;
    let env = Env::start_with_config("krb5-keyring", CONFIG).await?;
    let kdc = Kdc::start(&env.scratch.path)?;
    let (client, _holder) = client_as(&env, UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let name = persistent_collection(UID);
    sub.add_watch(1, "krb5", &krb5_options(Some(&name))).await?;
    let mut events = sub.into_events();
    let mut figures = Figures::new("keyring_collection_events");
    let result = async {
        quiet(&mut events, "AddWatch on an empty collection").await?;
        let first = format!("{name}:{UID}");
        let alice = principal(ALICE);
        let bob = principal(BOB);
        let live = |subtype, cache, principal| Expect {
            subtype,
            cache,
            principal,
            collection: &name,
            tag: 1,
            snapshot: false,
        };

        // The first kinit into the empty collection makes its first cache, named after it.
        kdc.kinit(UID, ALICE, ALICE_PASSWORD, None)?;
        only_record(
            &mut events,
            &mut figures,
            "kinit alice",
            live(krb5::CREATED, Cache::Exactly(&first), &alice),
        )
        .await?;

        kdc.kinit_renew(UID, None)?;
        only_record(
            &mut events,
            &mut figures,
            "kinit -R",
            live(krb5::CHANGED, Cache::Exactly(&first), &alice),
        )
        .await?;

        // A second principal: a new cache, which becomes the primary.
        kdc.kinit(UID, BOB, BOB_PASSWORD, None)?;
        let t = Instant::now();
        let step = "kinit bob";
        let created = expect_record(
            &mut events,
            &mut figures,
            step,
            t,
            live(krb5::CREATED, Cache::NewIn(&name), &bob),
        )
        .await?;
        let bob_cache = cache_of(&created);
        ensure!(
            bob_cache == cache_of_principal(&kdc, UID, BOB)?,
            "the record names {bob_cache}, klist -l: {:?}",
            kdc.collection(UID)?
        );
        expect_record(
            &mut events,
            &mut figures,
            step,
            t,
            live(krb5::PRIMARY, Cache::Exactly(&bob_cache), &bob),
        )
        .await?;
        quiet(&mut events, step).await?;

        kdc.kswitch(UID, ALICE)?;
        only_record(
            &mut events,
            &mut figures,
            "kswitch -p alice",
            live(krb5::PRIMARY, Cache::Exactly(&first), &alice),
        )
        .await?;

        kdc.kdestroy(UID, Destroy::Cache(&bob_cache))?;
        only_record(
            &mut events,
            &mut figures,
            "kdestroy -c bob's cache",
            live(krb5::DESTROYED, Cache::Exactly(&bob_cache), &bob),
        )
        .await?;

        // Bob again (a cache of a new name, primary again), then everything at once.
        kdc.kinit(UID, BOB, BOB_PASSWORD, None)?;
        let t = Instant::now();
        let step = "kinit bob again";
        let created = expect_record(
            &mut events,
            &mut figures,
            step,
            t,
            live(krb5::CREATED, Cache::NewIn(&name), &bob),
        )
        .await?;
        let bob_again = cache_of(&created);
        ensure!(
            bob_again != bob_cache,
            "a destroyed cache's name came back: {bob_again}"
        );
        expect_record(
            &mut events,
            &mut figures,
            step,
            t,
            live(krb5::PRIMARY, Cache::Exactly(&bob_again), &bob),
        )
        .await?;
        quiet(&mut events, step).await?;

        kdc.kdestroy(UID, Destroy::All)?;
        let t = Instant::now();
        let step = "kdestroy -A";
        let mut destroyed = BTreeSet::new();
        for _ in 0..2 {
            let event = next_within(&mut events, Duration::from_secs(10))
                .await
                .with_context(|| format!("{step}: waiting for destroyed"))?;
            let elapsed = t.elapsed();
            let cache = cache_of(&event);
            let who = if cache == first { &alice } else { &bob };
            let want = Expect {
                cache: Cache::Exactly(&cache),
                principal: who,
                ..live(krb5::DESTROYED, Cache::Exactly(&first), &alice)
            };
            check(&event, want).with_context(|| step)?;
            figures.note(format!("{step} -> destroyed {cache}"), elapsed);
            destroyed.insert(cache);
        }
        ensure!(
            destroyed == BTreeSet::from([first.clone(), bob_again.clone()]),
            "kdestroy -A destroyed {destroyed:?}, expected {first} and {bob_again}"
        );
        quiet(&mut events, step).await?;
        figures.check()
    }
    .await;
    result.with_context(|| daemon_log(&env))
}

async fn file_cache_events() -> Result<()> {
    let env = Env::start_with_config("krb5-file", CONFIG).await?;
    let kdc = Kdc::start(&env.scratch.path)?;
    // <scratch>/krb5-N/ccaches-1000, uid 1000's and mode 0700; the scratch directory is
    // made searchable (0711) by Kdc::start, krb5-N is 0755: uid 1000 reaches the cache.
    let ccache = kdc.file_ccache(UID, "alice")?;
    let (client, _holder) = client_as(&env, UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(3, "krb5", &krb5_options(Some(&ccache)))
        .await?;
    let mut events = sub.into_events();
    let mut figures = Figures::new("file_cache_events");
    let result = async {
        quiet(&mut events, "AddWatch on a cache that does not exist yet").await?;
        let alice = principal(ALICE);
        let live = |subtype| Expect {
            subtype,
            cache: Cache::Exactly(&ccache),
            principal: &alice,
            collection: &ccache,
            tag: 3,
            snapshot: false,
        };

        kdc.kinit(UID, ALICE, ALICE_PASSWORD, Some(&ccache))?;
        only_record(
            &mut events,
            &mut figures,
            "kinit -c FILE:",
            live(krb5::CREATED),
        )
        .await?;

        kdc.kinit_renew(UID, Some(&ccache))?;
        only_record(
            &mut events,
            &mut figures,
            "kinit -R -c FILE:",
            live(krb5::CHANGED),
        )
        .await?;

        kdc.kdestroy(UID, Destroy::Cache(&ccache))?;
        only_record(
            &mut events,
            &mut figures,
            "kdestroy -c FILE:",
            live(krb5::DESTROYED),
        )
        .await?;
        figures.check()
    }
    .await;
    result.with_context(|| daemon_log(&env))
}

async fn initial_state() -> Result<()> {
    let _collection = PersistentCollection::claim(UID)?;
    let env = Env::start_with_config("krb5-initial", CONFIG).await?;
    let kdc = Kdc::start(&env.scratch.path)?;
    kdc.kinit(UID, ALICE, ALICE_PASSWORD, None)?;
    kdc.kinit(UID, BOB, BOB_PASSWORD, None)?;
    let name = persistent_collection(UID);
    let first = format!("{name}:{UID}");
    let bob_cache = cache_of_principal(&kdc, UID, BOB)?;
    let listed = kdc.collection(UID)?;
    ensure!(
        listed.len() == 2 && listed[0].cache == bob_cache,
        "bob's cache should be the primary of two: {listed:?}"
    );

    let (client, _holder) = client_as(&env, UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let tag = 7;
    sub.add_watch(tag, "krb5", &krb5_options(Some(&name)).initial(true))
        .await?;
    let mut events = sub.into_events();
    let result = async {
        let alice = principal(ALICE);
        let bob = principal(BOB);
        let snap = |subtype, cache, principal| Expect {
            subtype,
            cache: Cache::Exactly(cache),
            principal,
            collection: &name,
            tag,
            snapshot: true,
        };
        // Both caches created (in either order), then the primary, then SYNC.
        let mut created = BTreeSet::new();
        for _ in 0..2 {
            let event = next_within(&mut events, Duration::from_secs(5)).await?;
            let cache = cache_of(&event);
            let who = if cache == first { &alice } else { &bob };
            let want = Expect {
                cache: Cache::Exactly(&cache),
                principal: who,
                ..snap(krb5::CREATED, &first, &alice)
            };
            check(&event, want).context("initial state")?;
            created.insert(cache);
        }
        ensure!(
            created == BTreeSet::from([first.clone(), bob_cache.clone()]),
            "SNAPSHOT created {created:?}, expected {first} and {bob_cache}"
        );
        let event = next_within(&mut events, Duration::from_secs(5)).await?;
        check(&event, snap(krb5::PRIMARY, &bob_cache, &bob)).context("initial primary")?;
        let event = next_within(&mut events, Duration::from_secs(5)).await?;
        ensure!(
            event.header().is(RecordType::Meta, meta::SYNC) && event.header().tag == tag,
            "expected SYNC (meta subtype {}) for tag {tag}, got {}",
            meta::SYNC,
            describe(&event)
        );
        // The first polls find what the snapshot told: no live record repeats it.
        quiet(&mut events, "the initial state").await?;

        // And the watch goes on from there.
        kdc.kswitch(UID, ALICE)?;
        let t = Instant::now();
        let mut figures = Figures::new("initial_state");
        let live = Expect {
            snapshot: false,
            ..snap(krb5::PRIMARY, &first, &alice)
        };
        expect_record(&mut events, &mut figures, "kswitch -p alice", t, live).await?;
        quiet(&mut events, "kswitch -p alice").await?;
        figures.check()
    }
    .await;
    result.with_context(|| daemon_log(&env))
}

/// Every `CredentialsCacheChanged` signal a connection receives (its match rule names no
/// path or sender: whatever the bus delivers of that name).
async fn signal_stream(conn: &zbus::Connection) -> Result<MessageStream> {
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(SUBSCRIPTION_INTERFACE)
        .member(SIGNAL_NAME)
        .build()?;
    Ok(MessageStream::for_match_rule(rule, conn, NonZeroUsize::new(64)).await?)
}

/// The next message of `stream` within `limit`, or `None`.
async fn next_message(stream: &mut MessageStream, limit: Duration) -> Result<Option<Message>> {
    let next = std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx));
    match tokio::time::timeout(limit, next).await {
        Err(_) => Ok(None),
        Ok(None) => bail!("the connection's message stream ended"),
        Ok(Some(message)) => Ok(Some(message?)),
    }
}

/// A received `CredentialsCacheChanged`.
#[derive(Debug)]
struct Signal {
    /// (cache, principal, what).
    body: (String, String, u32),
    path: String,
    destination: String,
    sender: String,
}

fn signal_parts(message: &Message) -> Result<Signal> {
    let header = message.header();
    let body: (String, String, u32) = message
        .body()
        .deserialize()
        .context("CredentialsCacheChanged's body is not (ssu)")?;
    let text = |s: Option<String>| s.unwrap_or_default();
    Ok(Signal {
        body,
        path: text(header.path().map(|p| p.to_string())),
        destination: text(header.destination().map(|d| d.to_string())),
        sender: text(header.sender().map(|s| s.to_string())),
    })
}

async fn signal() -> Result<()> {
    let _collection = PersistentCollection::claim(UID)?;
    let env = Env::start_with_config("krb5-signal", CONFIG).await?;
    let kdc = Kdc::start(&env.scratch.path)?;
    let (client, _holder) = client_as(&env, UID).await?;
    let (other, _other_holder) = connect_as_user(&env.bus.address, TEST_UID).await?;
    let root = env.client().await?;
    let mut mine = signal_stream(client.connection()).await?;
    let mut theirs = signal_stream(&other).await?;
    let mut roots = signal_stream(root.connection()).await?;

    let name = persistent_collection(UID);
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "krb5", &krb5_options(Some(&name)).option("signal", true))
        .await?;
    // A second subscription of the same client on the same collection, without "signal":
    // it gets records, and no signal is sent on its behalf.
    let quiet_sub = client.subscribe(SubscribeOptions::default()).await?;
    quiet_sub
        .add_watch(2, "krb5", &krb5_options(Some(&name)))
        .await?;
    let sub_path = sub.path().to_string();
    let quiet_path = quiet_sub.path().to_string();
    let mut events = sub.into_events();
    let mut quiet_events = quiet_sub.into_events();
    let me = client
        .connection()
        .unique_name()
        .context("no unique name")?
        .to_string();
    let daemon = zbus::fdo::DBusProxy::new(root.connection())
        .await?
        .get_name_owner("org.watchd.Watchd1".try_into()?)
        .await?
        .to_string();

    let result = async {
        let mut figures = Figures::new("signal");
        let first = format!("{name}:{UID}");
        let alice = principal(ALICE);
        for (step, subtype) in [("kinit alice", krb5::CREATED), ("kinit -R", krb5::CHANGED)] {
            if subtype == krb5::CREATED {
                kdc.kinit(UID, ALICE, ALICE_PASSWORD, None)?;
            } else {
                kdc.kinit_renew(UID, None)?;
            }
            let t = Instant::now();
            let message = next_message(&mut mine, Duration::from_secs(10))
                .await?
                .with_context(|| format!("{step}: no {SIGNAL_NAME} signal"))?;
            figures.note(format!("{step} -> signal"), t.elapsed());
            let Signal {
                body,
                path,
                destination,
                sender,
            } = signal_parts(&message)?;
            ensure!(
                body == (first.clone(), alice.clone(), u32::from(subtype)),
                "{step}: {SIGNAL_NAME}{body:?}, expected ({first}, {alice}, {subtype})"
            );
            ensure!(
                path == sub_path && destination == me && sender == daemon,
                "{step}: the signal came from {sender} at {path} to {destination}; expected \
                 from watchd ({daemon}) at {sub_path} (the signal=true subscription, not \
                 {quiet_path}) to {me}"
            );
            let want = Expect {
                subtype,
                cache: Cache::Exactly(&first),
                principal: &alice,
                collection: &name,
                tag: 1,
                snapshot: false,
            };
            expect_record(&mut events, &mut figures, step, t, want).await?;
            expect_record(
                &mut quiet_events,
                &mut figures,
                step,
                t,
                Expect { tag: 2, ..want },
            )
            .await?;
            // One signal per change: none for the subscription without "signal".
            if let Some(extra) = next_message(&mut mine, QUIET).await? {
                bail!("{step}: a second signal: {:?}", signal_parts(&extra)?);
            }
        }
        // Unicast: the other uid's and root's connections, with the same match rule, heard
        // nothing of either.
        for (who, stream) in [("uid 1001", &mut theirs), ("root", &mut roots)] {
            if let Some(message) = next_message(stream, QUIET).await? {
                bail!(
                    "{who} received {SIGNAL_NAME} meant for {me}: {:?}",
                    signal_parts(&message)?
                );
            }
        }
        figures.check()
    }
    .await;
    result.with_context(|| daemon_log(&env))
}

async fn refusals() -> Result<()> {
    let env = Env::start_with_config("krb5-refusals", CONFIG).await?;
    let (client, _holder) = client_as(&env, UID).await?;
    let before = client.status().await?.watches;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let foreign = persistent_collection(TEST_UID);
    let cases: [(&str, WatchOptions, &str, &str); 5] = [
        (
            "KEYRING:session:x",
            krb5_options(Some("KEYRING:session:x")),
            NOT_SUPPORTED,
            "KEYRING:session:x",
        ),
        ("KCM:", krb5_options(Some("KCM:")), NOT_SUPPORTED, "KCM"),
        (
            "KCM:1000",
            krb5_options(Some("KCM:1000")),
            NOT_SUPPORTED,
            "KCM",
        ),
        (
            "KEYRING:persistent:1001",
            krb5_options(Some(&foreign)),
            ACCESS_DENIED,
            "1001",
        ),
        (
            "cache as u32",
            WatchOptions::new().option("cache", 1000u32),
            INVALID_ARGUMENT,
            "cache",
        ),
    ];
    for (what, options, expected, needle) in cases {
        let result = sub.add_watch(1, "krb5", &options).await;
        let text = format!("{result:?}");
        let name = error_name(result).with_context(|| what.to_owned())?;
        ensure!(name == expected, "{what}: expected {expected}, got {text}");
        ensure!(
            text.contains(needle),
            "{what}: the message should mention {needle:?}: {text}"
        );
    }
    ensure!(
        client.status().await?.watches == before,
        "a refused AddWatch left a watch: Watches {} then {}",
        before,
        client.status().await?.watches
    );
    // The subscription is unharmed and tag 1 still free: a good watch takes it.
    let dir = env.scratch.join("ccaches");
    std::fs::create_dir_all(&dir)?;
    std::os::unix::fs::chown(&dir, Some(UID), Some(UID))?;
    let good = format!("FILE:{}", dir.join("cc").display());
    sub.add_watch(1, "krb5", &krb5_options(Some(&good)))
        .await
        .with_context(|| format!("after the refusals, {good}"))?;
    ensure!(
        client.status().await?.watches == before + 1,
        "Watches after one good AddWatch: {}",
        client.status().await?.watches
    );
    let mut events = sub.into_events();
    expect_silence(&mut events, Duration::from_millis(300))
        .await
        .context("refusals send no records")?;
    Ok(())
}

async fn default_cache() -> Result<()> {
    let _collection = PersistentCollection::claim(UID)?;
    // The realm first: its krb5.conf (default_ccache_name = KEYRING:persistent:%{uid}) goes
    // into the daemon's environment as KRB5_CONFIG.
    let realm = Scratch::new("krb5-default-realm")?;
    let kdc = Kdc::start(&realm.path)?;
    let env = Env::start_with_config_and_env(
        "krb5-default",
        CONFIG,
        &[("KRB5_CONFIG", OsStr::new(&kdc.krb5_conf))],
    )
    .await?;
    let (client, _holder) = client_as(&env, UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(5, "krb5", &krb5_options(None)).await?;
    let mut events = sub.into_events();
    let result = async {
        let mut figures = Figures::new("default_cache");
        let name = persistent_collection(UID);
        let first = format!("{name}:{UID}");
        kdc.kinit(UID, ALICE, ALICE_PASSWORD, None)?;
        let t = Instant::now();
        let want = Expect {
            subtype: krb5::CREATED,
            cache: Cache::Exactly(&first),
            principal: &principal(ALICE),
            collection: &name,
            tag: 5,
            snapshot: false,
        };
        expect_record(&mut events, &mut figures, "kinit alice", t, want).await?;
        quiet(&mut events, "kinit alice").await?;
        figures.check()
    }
    .await;
    result.with_context(|| daemon_log(&env))
}

/// Every record that arrives within `limit`.
async fn records_within(events: &mut EventStream, limit: Duration) -> Result<Vec<Event>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => return Ok(out),
            Ok(None) => bail!("the pipe ended after {} records", out.len()),
            Ok(Some(event)) => out.push(event?),
        }
    }
}

/// The watch names a collection, `KEYRING:persistent:1000`, not a key: when the persistent
/// keyring it lives in is replaced (it expires after 3 days without `KEYCTL_GET_PERSISTENT`,
/// which the daemon calls only once per watch, or is invalidated), the next kinit makes a
/// new one. The subscriber must hear of that cache (`created`), or at the very least be told
/// that its watch ended (a META record for its tag); silence forever is a bug.
async fn replaced_persistent_keyring() -> Result<()> {
    let collection = PersistentCollection::claim(UID)?;
    let env = Env::start_with_config("krb5-replaced", CONFIG).await?;
    let kdc = Kdc::start(&env.scratch.path)?;
    let (client, _holder) = client_as(&env, UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let name = persistent_collection(UID);
    sub.add_watch(1, "krb5", &krb5_options(Some(&name))).await?;
    let mut events = sub.into_events();
    let result = async {
        let mut figures = Figures::new("replaced_persistent_keyring");
        let first = format!("{name}:{UID}");
        let alice = principal(ALICE);
        let created = Expect {
            subtype: krb5::CREATED,
            cache: Cache::Exactly(&first),
            principal: &alice,
            collection: &name,
            tag: 1,
            snapshot: false,
        };
        kdc.kinit(UID, ALICE, ALICE_PASSWORD, None)?;
        let t = Instant::now();
        expect_record(&mut events, &mut figures, "kinit alice", t, created).await?;
        quiet(&mut events, "kinit alice").await?;

        let old = invalidate_persistent_keyring(UID)?;
        let gone = records_within(&mut events, QUIET).await?;
        kdc.kinit(UID, ALICE, ALICE_PASSWORD, None)?;
        let new = collection.tree()?.serial;
        ensure!(new != old, "kinit reused the invalidated keyring {old}");
        let after = records_within(&mut events, Duration::from_secs(3)).await?;
        let seen: Vec<String> = gone.iter().chain(&after).map(describe).collect();
        eprintln!(
            "replaced_persistent_keyring: persistent keyring {old} invalidated, {new} made by \
             kinit; records: {seen:?}"
        );
        let followed = after.iter().any(|e| check(e, created).is_ok());
        let ended = gone
            .iter()
            .chain(&after)
            .any(|e| e.header().record_type == RecordType::Meta as u32 && e.header().tag == 1);
        ensure!(
            followed || ended,
            "DAEMON BUG: uid {UID}'s persistent keyring {old} was replaced by {new} and kinit \
             made {first} in it, but the krb5 watch of {name} said nothing within 3 s: no \
             created record, no META record ending the watch (records: {seen:?})"
        );
        Ok(())
    }
    .await;
    result.with_context(|| daemon_log(&env))
}
