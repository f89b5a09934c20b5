//! Key watches: real keys in uid 1000's user keyring, changed with `keyctl` as that user,
//! seen through the daemon's poller in the kernel's own vocabulary; and what another user
//! can and cannot see of them.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use watchd_client::{Client, EventStream, SubscribeOptions, WatchOptions};
use watchd_e2e::polkit::{OTHER_UID, TEST_UID, as_user, connect_as_user};
use watchd_e2e::{Env, Process, Trial, vm};
use watchd_proto::{RecordType, attr, key, meta};

use crate::{error_name, expect_silence, next_within, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "keys::operations_in_the_user_keyring_arrive_as_the_kernels_subtypes",
            operations_arrive_as_kernel_subtypes,
        ),
        trial(
            "keys::another_user_can_neither_watch_nor_receive_them",
            another_user_cannot_watch_or_receive,
        ),
        trial(
            "keys::initial_state_lists_the_tree",
            initial_state_lists_the_tree,
        ),
        trial(
            "keys::persistent_keyrings_are_linked_once_and_let_go",
            persistent_keyrings_linked_once_and_let_go,
        ),
        trial(
            "keys::same_named_keys_of_two_watched_keyrings_are_each_reported_invalidated",
            same_named_keys_each_invalidated,
        ),
        trial("keys::bad_key_options_are_refused", bad_key_options),
        Trial::test(
            "keys::a_key_under_construction_stalls_no_other_key_change_in_a_vm",
            || under_construction_in_a_vm().map_err(|e| format!("{e:#}").into()),
        ),
    ]
}

/// Every check `watchd-vm-probe --construction` makes; each must print `ok NAME`.
const CONSTRUCTION_CHECKS: &[&str] = &[
    "pending linked",
    "update meanwhile",
    "add meanwhile",
    "update again meanwhile",
    "still pending",
    "helper killed",
];

/// A key under construction, whose request-key helper hangs, is linked into a watched
/// keyring; changes to other keys of that keyring must still arrive within seconds while it
/// stays under construction (the probe checks /proc/keys' `U` flag before and after).
///
/// Run in the VM of `watchd_e2e::vm`: the kernel runs `/sbin/request-key` in its initial
/// mount namespace, and on the test machines that usermode helper cannot run at all
/// (`request_key` fails with ENOENT at once, whatever /etc/request-key.d says), while the
/// VM's initramfs is ours and its helper hangs. The VM's kernel has watch queues: the key
/// thread walks the keyring on the kernel's note of the link, through the same walk and
/// read as the poller.
fn under_construction_in_a_vm() -> Result<()> {
    let probe = std::path::Path::new(env!("CARGO_BIN_EXE_watchd-vm-probe"));
    let watchd = watchd_e2e::fresh_watchd()?;
    let Some(out) = vm::or_skip(
        "keys",
        vm::run_daemon_probe(probe, &watchd, &["--construction"]),
    )?
    else {
        return Ok(());
    };
    out.expect_checks("keys (VM)", CONSTRUCTION_CHECKS)
}

/// The poll interval the tests run the daemon with.
const INTERVAL: Duration = Duration::from_millis(250);
const CONFIG: &str = "[keys]\npoll_interval_ms = 250\n";
/// A record must follow the change within one interval; the rest is scheduling slack.
const WITHIN: Duration = Duration::from_millis(1250);

/// uid 1000's user keyring is one per machine: one test at a time changes it.
static USER_KEYRING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `script` as `uid` in a fresh session keyring that links the user's `@u`, so that
/// the user possesses its own keys (as in a login session) and may update, revoke or
/// setperm them. Returns stdout, trimmed.
pub(crate) fn keyctl_as(uid: u32, script: &str) -> Result<String> {
    let mut command = Command::new("keyctl");
    command.args([
        "session",
        "-",
        "sh",
        "-c",
        &format!("keyctl link @u @s >/dev/null && {script}"),
    ]);
    as_user(&mut command, uid);
    let out = command
        .output()
        .context("running keyctl (package keyutils)")?;
    ensure!(
        out.status.success(),
        "keyctl as uid {uid}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn serial(text: &str) -> Result<u32> {
    text.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("not a key serial: {text:?}"))
}

async fn client_as(env: &Env, uid: u32) -> Result<(Client, Process)> {
    let (conn, holder) = connect_as_user(&env.bus.address, uid).await?;
    Ok((Client::from_connection(conn), holder))
}

/// The next record must be a key record `subtype` about `key_id` (with `aux`), arriving
/// within [`WITHIN`] of `since`.
async fn expect_key(
    stream: &mut EventStream,
    what: &str,
    since: Instant,
    subtype: u8,
    key_id: u32,
    aux: Option<u32>,
) -> Result<()> {
    let event = next_within(stream, WITHIN + Duration::from_secs(2)).await?;
    let elapsed = since.elapsed();
    let record = event.record();
    let got = (
        event.header().record_type,
        event.header().subtype,
        record.get_u32(attr::KEY_ID),
        record.get_u32(attr::AUX),
    );
    if got != (RecordType::Key as u32, subtype, Some(key_id), aux) {
        bail!(
            "{what}: expected key subtype {subtype} key {key_id} aux {aux:?}, got type {} \
             subtype {} key {:?} aux {:?} ({:?})",
            got.0,
            got.1,
            got.2,
            got.3,
            record.get_str(attr::DESCRIPTION)
        );
    }
    ensure!(
        elapsed <= WITHIN,
        "{what}: arrived after {elapsed:?}, more than one {INTERVAL:?} poll interval and slack"
    );
    println!("{what}: {} ms", elapsed.as_millis());
    Ok(())
}

async fn watch_user_keyring(client: &Client, options: WatchOptions) -> Result<EventStream> {
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "keys", &options.option("key", "@user"))
        .await?;
    Ok(sub.into_events())
}

async fn operations_arrive_as_kernel_subtypes() -> Result<()> {
    let _one_at_a_time = USER_KEYRING.lock().await;
    let env = Env::start_with_config("keys-ops", CONFIG).await?;
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    let user = serial(&keyctl_as(
        OTHER_UID,
        "keyctl show @u | head -2 | tail -1 | awk '{print $1}'",
    )?)?;
    let mut events =
        watch_user_keyring(&client, WatchOptions::new().option("nested", true)).await?;
    let cleanup = Cleanup(Vec::new());
    let mut cleanup = cleanup;

    let t = Instant::now();
    let ring = serial(&keyctl_as(OTHER_UID, "keyctl newring watchd-test-ring @u")?)?;
    cleanup.0.push(ring);
    expect_key(&mut events, "newring", t, key::LINKED, user, Some(ring)).await?;

    let t = Instant::now();
    let k1 = serial(&keyctl_as(
        OTHER_UID,
        "keyctl add user watchd-test-k1 one @u",
    )?)?;
    cleanup.0.push(k1);
    expect_key(&mut events, "add", t, key::LINKED, user, Some(k1)).await?;

    let t = Instant::now();
    keyctl_as(OTHER_UID, &format!("keyctl update {k1} two"))?;
    expect_key(&mut events, "update", t, key::UPDATED, k1, None).await?;

    let t = Instant::now();
    keyctl_as(OTHER_UID, &format!("keyctl link {k1} {ring}"))?;
    expect_key(&mut events, "link", t, key::LINKED, ring, Some(k1)).await?;

    let t = Instant::now();
    keyctl_as(OTHER_UID, &format!("keyctl unlink {k1} {ring}"))?;
    expect_key(&mut events, "unlink", t, key::UNLINKED, ring, Some(k1)).await?;

    let t = Instant::now();
    keyctl_as(OTHER_UID, &format!("keyctl setperm {k1} 0x3f0b0000"))?;
    expect_key(&mut events, "setperm", t, key::SETATTR, k1, None).await?;

    let t = Instant::now();
    keyctl_as(OTHER_UID, &format!("keyctl revoke {k1}"))?;
    expect_key(&mut events, "revoke", t, key::REVOKED, k1, None).await?;

    let k2 = serial(&keyctl_as(
        OTHER_UID,
        "keyctl add user watchd-test-k2 x @u",
    )?)?;
    cleanup.0.push(k2);
    expect_key(
        &mut events,
        "add k2",
        Instant::now(),
        key::LINKED,
        user,
        Some(k2),
    )
    .await?;
    let t = Instant::now();
    keyctl_as(OTHER_UID, &format!("keyctl invalidate {k2}"))?;
    expect_key(&mut events, "invalidate", t, key::INVALIDATED, k2, None).await?;

    let both = keyctl_as(
        OTHER_UID,
        &format!(
            "keyctl add user watchd-test-k3 a {ring} && keyctl add user watchd-test-k4 b {ring}"
        ),
    )?;
    let added: Vec<u32> = both.lines().filter_map(|l| l.trim().parse().ok()).collect();
    ensure!(added.len() == 2, "two keys added: {both:?}");
    // Both may land in one poll or two; either way, two links into the ring.
    let mut linked = Vec::new();
    while linked.len() < 2 {
        let event = next_within(&mut events, WITHIN * 2).await?;
        let r = event.record();
        ensure!(
            event.header().is(RecordType::Key, key::LINKED)
                && r.get_u32(attr::KEY_ID) == Some(ring),
            "expected links into the ring, got subtype {} key {:?}",
            event.header().subtype,
            r.get_u32(attr::KEY_ID)
        );
        linked.extend(r.get_u32(attr::AUX));
    }
    linked.sort();
    let mut expected = added.clone();
    expected.sort();
    ensure!(linked == expected, "linked {linked:?}, added {expected:?}");
    let t = Instant::now();
    keyctl_as(OTHER_UID, &format!("keyctl clear {ring}"))?;
    expect_key(&mut events, "clear", t, key::CLEARED, ring, None).await?;
    drop(cleanup);
    Ok(())
}

/// Two watched keyrings each hold a key of the same name, as every krb5 cache holds a
/// `__krb5_princ__`. The daemon holds a link to each (one keyring of its own per watched
/// root), so each one's invalidation reads as invalidated, not as a mere unlink.
async fn same_named_keys_each_invalidated() -> Result<()> {
    let _one_at_a_time = USER_KEYRING.lock().await;
    let env = Env::start_with_config("keys-same-name", CONFIG).await?;
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    let made = keyctl_as(
        OTHER_UID,
        "a=$(keyctl newring watchd-test-a @u) && b=$(keyctl newring watchd-test-b @u) && \
         echo $a && echo $b && keyctl add user watchd-test-same one $a && \
         keyctl add user watchd-test-same two $b",
    )?;
    let serials: Vec<u32> = made.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let [ring_a, ring_b, key_a, key_b] = serials[..] else {
        bail!("two keyrings and two keys made: {made:?}");
    };
    let _cleanup = Cleanup(vec![ring_a, ring_b]);
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    for (tag, ring) in [(1, ring_a), (2, ring_b)] {
        let options = WatchOptions::new()
            .option("key", ring.to_string())
            .option("nested", true);
        sub.add_watch(tag, "keys", &options).await?;
    }
    let mut events = sub.into_events();
    for key in [key_b, key_a] {
        let t = Instant::now();
        keyctl_as(OTHER_UID, &format!("keyctl invalidate {key}"))?;
        expect_key(&mut events, "invalidate", t, key::INVALIDATED, key, None).await?;
    }
    expect_silence(&mut events, INTERVAL * 2).await?;
    Ok(())
}

/// Unlinks the test's keys from uid 1000's user keyring, whatever happened.
struct Cleanup(Vec<u32>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for serial in &self.0 {
            let _ = keyctl_as(
                OTHER_UID,
                &format!("keyctl unlink {serial} @u 2>/dev/null; true"),
            );
        }
    }
}

async fn another_user_cannot_watch_or_receive() -> Result<()> {
    let _one_at_a_time = USER_KEYRING.lock().await;
    let env = Env::start_with_config("keys-other", CONFIG).await?;
    let k = serial(&keyctl_as(
        OTHER_UID,
        "keyctl add user watchd-test-private secret @u",
    )?)?;
    let _cleanup = Cleanup(vec![k]);
    let (stranger, _holder) = client_as(&env, TEST_UID).await?;
    let sub = stranger.subscribe(SubscribeOptions::default()).await?;

    // By serial: the kernel, asked as uid 1001, says no.
    let by_serial = sub
        .add_watch(1, "keys", &WatchOptions::new().option("key", k.to_string()))
        .await;
    ensure!(
        error_name(by_serial)? == "org.watchd.Watchd1.Error.AccessDenied",
        "uid 1001 watched uid 1000's key by serial"
    );
    // By naming uid 1000's keyring: the admin action, which an unprivileged caller lacks.
    let by_uid = sub
        .add_watch(
            2,
            "keys",
            &WatchOptions::new()
                .option("key", "@user")
                .option("uid", OTHER_UID),
        )
        .await;
    ensure!(
        error_name(by_uid)? == "org.watchd.Watchd1.Error.AccessDenied",
        "uid 1001 watched uid 1000's user keyring"
    );
    ensure!(
        env.daemon
            .log()
            .contains("org.watchd.Watchd1.watch-other-users-keys"),
        "the refusal names the admin action:\n{}",
        env.daemon.log()
    );

    // Its own user keyring, nested: uid 1000's changes never show up there.
    sub.add_watch(
        3,
        "keys",
        &WatchOptions::new()
            .option("key", "@user")
            .option("nested", true),
    )
    .await?;
    let mut events = sub.into_events();
    keyctl_as(OTHER_UID, &format!("keyctl update {k} changed"))?;
    let k2 = serial(&keyctl_as(
        OTHER_UID,
        "keyctl add user watchd-test-other x @u",
    )?)?;
    let _cleanup2 = Cleanup(vec![k2]);
    expect_silence(&mut events, INTERVAL * 4).await?;

    // And uid 1000 itself does see its own key by serial.
    let (owner, _holder2) = client_as(&env, OTHER_UID).await?;
    let sub = owner.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "keys", &WatchOptions::new().option("key", k.to_string()))
        .await?;
    let mut events = sub.into_events();
    let t = Instant::now();
    keyctl_as(OTHER_UID, &format!("keyctl setperm {k} 0x3f030000"))?;
    expect_key(&mut events, "owner's setperm", t, key::SETATTR, k, None).await?;
    Ok(())
}

async fn initial_state_lists_the_tree() -> Result<()> {
    let _one_at_a_time = USER_KEYRING.lock().await;
    let env = Env::start_with_config("keys-initial", CONFIG).await?;
    let ring = serial(&keyctl_as(
        OTHER_UID,
        "keyctl newring watchd-test-initial @u",
    )?)?;
    // New keyrings give their owner View only: the owner (and so the daemon, which looks as
    // the owner) could not list this one without possessing it.
    keyctl_as(OTHER_UID, &format!("keyctl setperm {ring} 0x3f3f0000"))?;
    let inner = serial(&keyctl_as(
        OTHER_UID,
        &format!("keyctl add user watchd-test-inner v {ring}"),
    )?)?;
    let _cleanup = Cleanup(vec![ring]);
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    let sub = client
        .subscribe(SubscribeOptions { depth: Some(64) })
        .await?;
    sub.add_watch(
        7,
        "keys",
        &WatchOptions::new()
            .option("key", ring.to_string())
            .option("nested", true)
            .initial(true),
    )
    .await?;
    let mut events = sub.into_events();
    let mut seen = Vec::new();
    loop {
        let event = next_within(&mut events, Duration::from_secs(5)).await?;
        let h = event.header();
        if h.is(RecordType::Meta, meta::SYNC) {
            ensure!(h.tag == 7, "SYNC carries the watch's tag");
            break;
        }
        ensure!(event.is_snapshot(), "initial records are SNAPSHOT");
        let r = event.record();
        seen.push((h.subtype, r.get_u32(attr::KEY_ID), r.get_u32(attr::AUX)));
    }
    ensure!(
        seen == vec![
            (key::INSTANTIATED, Some(ring), None),
            (key::INSTANTIATED, Some(inner), None),
            (key::LINKED, Some(ring), Some(inner)),
        ],
        "initial state {seen:?}"
    );
    Ok(())
}

/// A process that possesses uid's persistent keyring, through a session keyring of its own
/// that links it for as long as the process runs, and reads the keyring's usage count from
/// /proc/keys when asked. One reader for the whole test: a fresh session per reading left
/// a reference behind for a moment after each (keyring links are put after an RCU grace
/// period and dead session keyrings by the key garbage collector), where this one's single
/// link stays constant, so every reading is exact.
struct PersistentReader {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
    serial: u32,
}

impl PersistentReader {
    fn start(uid: u32) -> Result<PersistentReader> {
        let script = format!(
            "k=$(keyctl get_persistent @s {uid}) || exit 1; echo $k; \
             while read cmd arg; do case $cmd in \
             usage) grep \"^$(printf %08x $k) \" /proc/keys || echo none;; \
             add) keyctl add user \"$arg\" x $k || echo none;; \
             unlink) keyctl unlink \"$arg\" $k >/dev/null 2>&1; echo done;; \
             esac; done"
        );
        let mut child = Command::new("keyctl")
            .args(["session", "-", "sh", "-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let input = child.stdin.take().context("reader stdin")?;
        let output = std::io::BufReader::new(child.stdout.take().context("reader stdout")?);
        let mut reader = PersistentReader {
            child,
            input,
            output,
            serial: 0,
        };
        reader.serial = serial(&reader.answer()?)?;
        Ok(reader)
    }

    fn answer(&mut self) -> Result<String> {
        use std::io::BufRead;
        let mut line = String::new();
        ensure!(
            self.output.read_line(&mut line)? > 0,
            "the persistent keyring reader ended"
        );
        Ok(line.trim().to_owned())
    }

    fn ask(&mut self, request: &str) -> Result<String> {
        use std::io::Write;
        writeln!(self.input, "{request}")?;
        self.input.flush()?;
        self.answer()
    }

    /// The keyring's usage count now.
    fn usage(&mut self) -> Result<u32> {
        let line = self.ask("usage")?;
        line.split_whitespace()
            .nth(2)
            .and_then(|u| u.parse().ok())
            .with_context(|| format!("usage in {line:?}"))
    }

    /// The usage count once it has held still for two poll intervals.
    fn steady_usage(&mut self) -> Result<u32> {
        let mut last = self.usage()?;
        let mut since = Instant::now();
        watchd_e2e::wait_until(Duration::from_secs(10), "a steady usage count", || {
            let now = self.usage()?;
            if now != last {
                (last, since) = (now, Instant::now());
            }
            Ok(since.elapsed() >= INTERVAL * 2)
        })?;
        Ok(last)
    }

    /// Adds a user key named `name` to the keyring; its serial.
    fn add(&mut self, name: &str) -> Result<u32> {
        serial(&self.ask(&format!("add {name}"))?)
    }

    fn unlink(&mut self, key: u32) -> Result<()> {
        self.ask(&format!("unlink {key}")).map(drop)
    }
}

impl Drop for PersistentReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn persistent_keyrings_linked_once_and_let_go() -> Result<()> {
    let _claim = watchd_e2e::krb5::PersistentCollection::claim(OTHER_UID)?;
    let env = Env::start_with_config("keys-persistent", CONFIG).await?;
    let mut reader = PersistentReader::start(OTHER_UID)?;
    // Readings made by fresh sessions (the collection's claim makes some) leave references
    // behind for a moment: the baseline is the count once it holds still.
    let before = reader.steady_usage()?;
    let persistent = reader.serial;
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "keys", &WatchOptions::new().option("key", "@persistent"))
        .await?;
    let (control, mut events) = sub.split();
    let limit = Duration::from_secs(5);
    watchd_e2e::wait_until(limit, "the daemon's link to the persistent keyring", || {
        Ok(reader.usage()? == before + 1)
    })
    .with_context(|| {
        format!(
            "usage {before} → {}\n{}",
            reader.usage().unwrap_or(0),
            env.daemon.log()
        )
    })?;
    // The daemon walks the keyring again (a key linked into it is reported) and still holds
    // exactly one link: the persistent keyring is not linked again per walk.
    let probe = reader.add("watchd-test-stays")?;
    let linked = async {
        loop {
            let event = next_within(&mut events, WITHIN * 4).await?;
            let record = event.record();
            if event.header().is(RecordType::Key, key::LINKED)
                && record.get_u32(attr::KEY_ID) == Some(persistent)
                && record.get_u32(attr::AUX) == Some(probe)
            {
                return anyhow::Ok(());
            }
        }
    }
    .await;
    reader.unlink(probe)?;
    linked.context("the key linked into the watched persistent keyring")?;
    let mut during = 0;
    watchd_e2e::wait_until(limit, "one link after the walk", || {
        during = reader.usage()?;
        Ok(during == before + 1)
    })
    .with_context(|| {
        format!(
            "while watched, the daemon holds exactly one link (usage {before} → {during})\n{}",
            env.daemon.log()
        )
    })?;
    control.remove_watch(1).await?;
    watchd_e2e::wait_until(limit, "the daemon's link to go", || {
        Ok(reader.usage()? == before)
    })
    .with_context(|| {
        format!(
            "after the watch, the daemon's link is gone (usage {before} → {during} → {})",
            reader.usage().unwrap_or(0)
        )
    })?;
    Ok(())
}

async fn bad_key_options() -> Result<()> {
    let env = Env::start_with_config("keys-bad", CONFIG).await?;
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let cases: [(WatchOptions, &str); 5] = [
        (
            WatchOptions::new().option("key", "@nope"),
            "InvalidArgument",
        ),
        (WatchOptions::new().option("key", "-4"), "InvalidArgument"),
        (WatchOptions::new().option("key", 7u32), "InvalidArgument"),
        (
            WatchOptions::new()
                .option("key", "12345")
                .option("uid", OTHER_UID),
            "InvalidArgument",
        ),
        (WatchOptions::new().option("key", "999999999"), "NotFound"),
    ];
    for (tag, (options, expected)) in (1..).zip(cases) {
        let got = error_name(sub.add_watch(tag, "keys", &options).await)?;
        ensure!(
            got == format!("org.watchd.Watchd1.Error.{expected}"),
            "case {tag}: expected {expected}, got {got}"
        );
    }
    Ok(())
}
