//! watchd-vm-probe: the daemon itself on a kernel with watch queues. Run as root inside the
//! VM of e2e/key_watch_queue.rs, it starts a private `dbus-daemon` (the same bus
//! configuration and policy as the other end-to-end tests) and `watchd` with a 60 s key poll
//! interval, watches root's `@user` keyring through the client library, changes keys with
//! `add_key(2)`/`keyctl(2)`, and checks that each change arrives as the kernel's subtype
//! with the right serials in far less than one poll interval: only the watch queue can
//! have told the daemon. One line per check (`ok NAME: …` or `FAIL NAME: …`), then a
//! summary.
//!
//! With `--construction` it checks instead that a key under construction stalls nothing: a
//! `request_key(2)` whose helper (the VM's `/sbin/request-key`, which hangs) never
//! finishes leaves a key linked into the watched keyring but not instantiated, and every
//! other change must still arrive within seconds while it stays so.
//!
//! With `--quota` it checks the quota kind instead, on an ext4 image with quotas (see
//! `quota_vm.rs`).
//!
//! Usage: `watchd-vm-probe [--idle-bench | --construction | --quota] WATCHD DBUS_DAEMON`. Exit status: 0 every check
//! passed, 1 one failed (the rest are skipped: they build on each other), 2 the probe could
//! not start.
//!
//! With `--idle-bench` it measures instead (benches/key_queue_vm.rs): the daemon's CPU
//! while 1, 100 and 1,000 keyrings laid out like small krb5 caches are watched and nothing
//! changes, its keys thread's wake-ups, its memory, and the delay from a key update to the
//! client's read, printed as a markdown table.
#![forbid(unsafe_code)]

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use watchd::sys::{self, KeySerial};
use watchd_client::{Client, EventStream, SubscribeOptions, WatchOptions};
use watchd_e2e::sys::{
    IntegerOp, KEYCTL_CLEAR, KEYCTL_GET_KEYRING_ID, KEYCTL_INVALIDATE, KEYCTL_LINK, KEYCTL_REVOKE,
    KEYCTL_SET_TIMEOUT, KEYCTL_SETPERM, KEYCTL_UNLINK,
};
use watchd_proto::{RecordType, attr, key};

/// The key poll interval the daemon is given: a record faster than this came from the queue.
const POLL_INTERVAL_MS: u64 = 60_000;
/// What each record must beat (slack for an emulated CPU; still 1/20 of the interval).
const WITHIN: Duration = Duration::from_secs(3);
const RUN_DIR: &str = "/run/watchd-vm";

const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
const KEY_SPEC_USER_KEYRING: libc::c_long = -4;

#[path = "quota_vm.rs"]
mod quota_vm;

fn main() -> ExitCode {
    let words: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = quota_vm::child_role(&words) {
        return code;
    }
    let mut args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let bench = args.first().is_some_and(|a| a == "--idle-bench");
    let construction = args.first().is_some_and(|a| a == "--construction");
    let quota = args.first().is_some_and(|a| a == "--quota");
    if bench || construction || quota {
        args.remove(0);
    }
    let [watchd, dbus_daemon] = &args[..] else {
        println!(
            "usage: watchd-vm-probe [--idle-bench | --construction | --quota] WATCHD DBUS_DAEMON"
        );
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            println!("SETUP FAILED: tokio: {e}");
            return ExitCode::from(2);
        }
    };
    let mut children = Children(Vec::new());
    let extra_config = if quota {
        if let Err(e) = quota_vm::write_actions_file() {
            println!("SETUP FAILED: {e:#}");
            return ExitCode::from(2);
        }
        quota_vm::CONFIG
    } else {
        ""
    };
    let client = match runtime.block_on(start(watchd, dbus_daemon, &mut children, extra_config)) {
        Ok(client) => client,
        Err(e) => {
            println!("SETUP FAILED: {e:#}");
            return ExitCode::from(2);
        }
    };
    if bench {
        let daemon = children.0.last().map(Child::id).unwrap_or_default();
        let measured = runtime.block_on(idle_bench(&client, daemon));
        drop(client);
        drop(children);
        return match measured {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("FAIL {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let daemon = children.0.last().map(Child::id).unwrap_or_default();
    let outcome = if quota {
        runtime.block_on(quota_vm::checks(&client, &bus_address()))
    } else if construction {
        runtime.block_on(under_construction(&client))
    } else {
        runtime.block_on(checks(&client, daemon))
    };
    drop(client);
    drop(children);
    match outcome {
        Ok(count) => {
            println!("probe: {count} checks, 0 failed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAIL {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Children stopped by PID when the probe ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The private bus's address.
fn bus_address() -> String {
    format!("unix:path={RUN_DIR}/bus.socket")
}

/// Starts the bus and the daemon (its configuration with `extra_config` appended); returns
/// a client once the daemon answers.
async fn start(
    watchd: &Path,
    dbus_daemon: &Path,
    children: &mut Children,
    extra_config: &str,
) -> Result<Client> {
    let dir = Path::new(RUN_DIR);
    std::fs::create_dir_all(dir)?;
    let socket = dir.join("bus.socket");
    let policy = dir.join("org.watchd.Watchd1.conf");
    std::fs::write(&policy, include_str!("../../dbus/org.watchd.Watchd1.conf"))?;
    let bus_config = include_str!("../../dbus/private-bus.conf.in")
        .replace("@SOCKET@", &socket.display().to_string())
        .replace("@POLICY@", &policy.display().to_string());
    std::fs::write(dir.join("bus.conf"), bus_config)?;
    children.0.push(
        Command::new(dbus_daemon)
            .arg(format!("--config-file={}", dir.join("bus.conf").display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .stdin(Stdio::null())
            .spawn()
            .context("starting dbus-daemon")?,
    );
    let address = bus_address();
    wait_for(|| socket.exists(), "the bus socket").await?;
    std::fs::write(
        dir.join("watchd.toml"),
        format!(
            "[sources]\ndevices = false\n\n[keys]\npoll_interval_ms = {POLL_INTERVAL_MS}\n\n\
             [limits]\nmax_subscriptions_per_uid = 64\nmax_watches_per_subscription = 128\n\
             max_watches_per_uid = 2048\n{extra_config}"
        ),
    )?;
    children.0.push(
        Command::new(watchd)
            .arg("--bus-address")
            .arg(&address)
            .arg("--config")
            .arg(dir.join("watchd.toml"))
            .env("WATCHD_LOG", "info")
            .stdin(Stdio::null())
            .spawn()
            .context("starting watchd")?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answered = async {
            let client = Client::connect(Some(&address)).await?;
            client.status().await?;
            anyhow::Ok(client)
        };
        match answered.await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() > deadline => return Err(e.context("watchd never answered")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn wait_for(done: impl Fn() -> bool, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        ensure!(Instant::now() < deadline, "{what} did not appear");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The checks, in order; returns how many passed.
async fn checks(client: &Client, daemon: u32) -> Result<u32> {
    let mut count = 0;
    let status = client.status().await?;
    let keys = status
        .source_details
        .get("keys")
        .context("status lists no keys source")?;
    ensure!(
        keys.contains("watch queue"),
        "status: the keys source says {keys:?}, not the watch queue"
    );
    println!("ok status: keys: {keys}");
    count += 1;

    // This kernel is built without fanotify: the daemon still serves every other kind, lists
    // files as unavailable with why, and refuses a files watch saying so.
    let files = status
        .source_details
        .get("files")
        .context("status lists no files source")?;
    ensure!(
        files.starts_with("unavailable:") && files.contains("fanotify"),
        "status: the files source says {files:?}"
    );
    {
        let subscription = client.subscribe(SubscribeOptions::default()).await?;
        let refused = subscription
            .add_watch(1, "files", &WatchOptions::new().path("/"))
            .await;
        match refused {
            Err(e) if e.dbus_name() == Some("org.watchd.Watchd1.Error.NotSupported") => {}
            other => bail!("a files watch on a kernel without fanotify: {other:?}"),
        }
    }
    println!("ok files unavailable: {files}");
    count += 1;

    let (user, mut events) = watch_user_keyring(client).await?;

    let mut step = async |name: &str,
                          change: &mut dyn FnMut() -> Result<u32>,
                          expect: &dyn Fn(u32) -> (u8, u32, Option<u32>)|
           -> Result<u32> {
        let t = Instant::now();
        let made = change().with_context(|| format!("{name}: the key operation"))?;
        let (subtype, key_id, aux) = expect(made);
        expect_key(&mut events, name, t, subtype, key_id, aux).await?;
        count += 1;
        Ok(made)
    };
    let ring = step(
        "newring",
        &mut || add_key("keyring", "vm-ring", b"", KEY_SPEC_USER_KEYRING),
        &|ring| (key::LINKED, user, Some(ring)),
    )
    .await?;
    let k1 = step(
        "add",
        &mut || add_key("user", "vm-k1", b"one", KEY_SPEC_USER_KEYRING),
        &|k1| (key::LINKED, user, Some(k1)),
    )
    .await?;
    step("update", &mut || update(k1, b"two").map(|_| k1), &|k1| {
        (key::UPDATED, k1, None)
    })
    .await?;
    // The same payload again: no comparison can see it, the kernel's note says it.
    step(
        "update again",
        &mut || update(k1, b"two").map(|_| k1),
        &|k1| (key::UPDATED, k1, None),
    )
    .await?;
    step(
        "link",
        &mut || keyctl(KEYCTL_LINK, k1.into(), ring.into(), 0).map(|_| k1),
        &|k1| (key::LINKED, ring, Some(k1)),
    )
    .await?;
    step(
        "unlink",
        &mut || keyctl(KEYCTL_UNLINK, k1.into(), ring.into(), 0).map(|_| k1),
        &|k1| (key::UNLINKED, ring, Some(k1)),
    )
    .await?;
    step(
        "setperm",
        &mut || keyctl(KEYCTL_SETPERM, k1.into(), 0x3f0b_0000, 0).map(|_| k1),
        &|k1| (key::SETATTR, k1, None),
    )
    .await?;
    // An expiry time: KEYCTL_DESCRIBE does not show it; the kernel's note does.
    step(
        "set timeout",
        &mut || keyctl(KEYCTL_SET_TIMEOUT, k1.into(), 3600, 0).map(|_| k1),
        &|k1| (key::SETATTR, k1, None),
    )
    .await?;
    step(
        "revoke",
        &mut || keyctl(KEYCTL_REVOKE, k1.into(), 0, 0).map(|_| k1),
        &|k1| (key::REVOKED, k1, None),
    )
    .await?;
    let k2 = step(
        "add k2",
        &mut || add_key("user", "vm-k2", b"x", KEY_SPEC_USER_KEYRING),
        &|k2| (key::LINKED, user, Some(k2)),
    )
    .await?;
    step(
        "invalidate",
        &mut || keyctl(KEYCTL_INVALIDATE, k2.into(), 0, 0).map(|_| k2),
        &|k2| (key::INVALIDATED, k2, None),
    )
    .await?;
    for name in ["vm-k3", "vm-k4"] {
        step(
            "add into the ring",
            &mut || add_key("user", name, b"y", ring.into()),
            &|k| (key::LINKED, ring, Some(k)),
        )
        .await?;
    }
    step(
        "clear",
        &mut || keyctl(KEYCTL_CLEAR, ring.into(), 0, 0).map(|_| ring),
        &|ring| (key::CLEARED, ring, None),
    )
    .await?;
    // The invalidated and revoked keys are unlinked by the kernel's collector in its own
    // time; those links were reported already, so nothing more may come.
    match tokio::time::timeout(Duration::from_secs(2), events.next()).await {
        Err(_) => {}
        Ok(other) => bail!("silence: expected nothing once the keys settled, got {other:?}"),
    }
    println!("ok silence: no record for 2 s after the last change");

    // Closing the pipe ends the subscription and its watch: the daemon must let go of every
    // kernel watch, and with nothing watched its keys thread has no timer either. Changes to
    // the formerly watched keys must then not wake it at all.
    drop(events);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sample(daemon)?;
    let key = add_key("user", "vm-after", b"a", KEY_SPEC_USER_KEYRING)?;
    for payload in [b"b", b"c", b"d"] {
        update(key, payload)?;
    }
    keyctl(KEYCTL_LINK, key.into(), ring.into(), 0)?;
    keyctl(KEYCTL_CLEAR, ring.into(), 0, 0)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sample(daemon)?;
    ensure!(
        after.keys_switches == before.keys_switches,
        "unwatched: the keys thread woke {} times after its only watch was removed",
        after.keys_switches - before.keys_switches
    );
    println!("ok unwatched: no wake-up of the keys thread for changes after the watch went");
    Ok(count + 2)
}

/// The next record must be key record `subtype` about `key_id` (with `aux`), within
/// [`WITHIN`] of `since`.
async fn expect_key(
    events: &mut EventStream,
    name: &str,
    since: Instant,
    subtype: u8,
    key_id: u32,
    aux: Option<u32>,
) -> Result<()> {
    let event = match tokio::time::timeout(WITHIN, events.next()).await {
        Err(_) => {
            bail!("{name}: no record within {WITHIN:?} (poll interval {POLL_INTERVAL_MS} ms)")
        }
        Ok(None) => bail!("{name}: the pipe ended"),
        Ok(Some(event)) => event?,
    };
    let elapsed = since.elapsed();
    let record = event.record();
    let got = (
        event.header().record_type,
        event.header().subtype,
        record.get_u32(attr::KEY_ID),
        record.get_u32(attr::AUX),
    );
    ensure!(
        got == (RecordType::Key as u32, subtype, Some(key_id), aux),
        "{name}: expected key subtype {subtype} key {key_id} aux {aux:?}, got type {} subtype {} \
         key {:?} aux {:?}",
        got.0,
        got.1,
        got.2,
        got.3
    );
    println!("ok {name}: {:.1} ms", elapsed.as_secs_f64() * 1000.0);
    Ok(())
}

fn keyctl(op: IntegerOp, a: libc::c_long, b: libc::c_long, c: libc::c_long) -> Result<i64> {
    watchd_e2e::sys::keyctl(op, a, b, c).with_context(|| format!("keyctl({op:?})"))
}

/// `KEYCTL_UPDATE`: `key`'s payload replaced.
fn update(key: u32, payload: &[u8]) -> Result<()> {
    watchd_e2e::sys::keyctl_update(key as i32, payload).context("KEYCTL_UPDATE")
}

/// `add_key(2)` through the daemon's own wrapper; `keyring` is a serial or special id.
fn add_key(
    key_type: &str,
    description: &str,
    payload: &[u8],
    keyring: libc::c_long,
) -> Result<u32> {
    let key_type = CString::new(key_type)?;
    let description = CString::new(description)?;
    let keyring = KeySerial(i32::try_from(keyring)?);
    Ok(sys::add_key(&key_type, &description, payload, keyring)?.0 as u32)
}

/// Possesses root's user keyring through a session keyring of the probe's own, as a login
/// session does (a key's owner gets View only, updating it needs possession), and watches
/// it, nested. Returns its serial and the records.
async fn watch_user_keyring(client: &Client) -> Result<(u32, EventStream)> {
    sys::keyctl_join_new_session_keyring().context("joining a session keyring")?;
    keyctl(
        KEYCTL_LINK,
        KEY_SPEC_USER_KEYRING,
        KEY_SPEC_SESSION_KEYRING,
        0,
    )
    .context("linking @u into @s")?;
    let user = keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 1, 0)? as u32;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(
        1,
        "keys",
        &WatchOptions::new()
            .option("key", "@user")
            .option("nested", true),
    )
    .await?;
    Ok((user, sub.into_events()))
}

/// `--construction`: a key under construction in the watched keyring, and changes to other
/// keys that must arrive meanwhile. Returns how many checks passed.
async fn under_construction(client: &Client) -> Result<u32> {
    let (user, mut events) = watch_user_keyring(client).await?;
    let t = Instant::now();
    let other = add_key("user", "vm-other", b"one", KEY_SPEC_USER_KEYRING)?;
    expect_key(&mut events, "add before", t, key::LINKED, user, Some(other)).await?;

    // request_key(2) blocks until the helper ends: on a thread of its own, released at the
    // end by killing the helper by its PID.
    let t = Instant::now();
    let helper = KillHelper;
    let requester = std::thread::spawn(|| request_key("user", "vm-hang:x", "data"));
    let pending = next_key(&mut events, "pending linked").await?;
    ensure!(
        pending.0 == key::LINKED && pending.1 == user && pending.2.is_some(),
        "pending linked: expected a link into @u ({user}), got {pending:?}"
    );
    let pending = pending.2.expect("checked");
    ensure!(
        under_construction_now(pending)?,
        "pending linked: key {pending} is not under construction (/proc/keys flag U)"
    );
    println!(
        "ok pending linked: key {pending}, under construction, linked into @u after {} ms",
        t.elapsed().as_millis()
    );
    let mut count = 1;

    let t = Instant::now();
    update(other, b"two")?;
    expect_key(
        &mut events,
        "update meanwhile",
        t,
        key::UPDATED,
        other,
        None,
    )
    .await?;
    count += 1;
    let t = Instant::now();
    let added = add_key("user", "vm-added", b"x", KEY_SPEC_USER_KEYRING)?;
    expect_key(
        &mut events,
        "add meanwhile",
        t,
        key::LINKED,
        user,
        Some(added),
    )
    .await?;
    count += 1;
    let t = Instant::now();
    update(other, b"three")?;
    expect_key(
        &mut events,
        "update again meanwhile",
        t,
        key::UPDATED,
        other,
        None,
    )
    .await?;
    count += 1;
    ensure!(
        under_construction_now(pending)?,
        "still pending: key {pending} is no longer under construction, so the changes above \
         prove nothing"
    );
    println!("ok still pending: key {pending} was under construction throughout");
    count += 1;

    helper.kill()?;
    let requested = requester
        .join()
        .map_err(|_| anyhow::anyhow!("the request_key thread panicked"))?;
    ensure!(
        requested.is_err(),
        "request_key succeeded although its helper was killed"
    );
    println!("ok helper killed: request_key returned ({requested:?})");
    Ok(count + 1)
}

/// Kills the VM's hanging request-key helper by the PID it wrote, at the latest when
/// dropped: a `request_key(2)` waits for it uninterruptibly, and the probe could not exit.
struct KillHelper;

impl KillHelper {
    fn kill(self) -> Result<()> {
        let result = kill_helper();
        std::mem::forget(self);
        result
    }
}

impl Drop for KillHelper {
    fn drop(&mut self) {
        let _ = kill_helper();
    }
}

fn kill_helper() -> Result<()> {
    let pid: i32 = std::fs::read_to_string(watchd_e2e::vm::REQUEST_KEY_HELPER_PID)
        .context("the request-key helper's PID")?
        .trim()
        .parse()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .with_context(|| format!("killing the request-key helper {pid}"))
}

/// The next record, as (subtype, key, aux), within [`WITHIN`].
async fn next_key(events: &mut EventStream, name: &str) -> Result<(u8, u32, Option<u32>)> {
    let event = match tokio::time::timeout(WITHIN, events.next()).await {
        Err(_) => bail!("{name}: no record within {WITHIN:?}"),
        Ok(None) => bail!("{name}: the pipe ended"),
        Ok(Some(event)) => event?,
    };
    let record = event.record();
    ensure!(
        event.header().record_type == RecordType::Key as u32,
        "{name}: not a key record"
    );
    Ok((
        event.header().subtype,
        record.get_u32(attr::KEY_ID).context("no key id")?,
        record.get_u32(attr::AUX),
    ))
}

/// Whether /proc/keys flags `serial` as under construction (`U`, the fifth flag).
fn under_construction_now(serial: u32) -> Result<bool> {
    let keys = std::fs::read_to_string("/proc/keys")?;
    let id = format!("{serial:08x}");
    let line = keys
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id.as_str()))
        .with_context(|| format!("key {serial} is not in /proc/keys:\n{keys}"))?;
    let flags = line.split_whitespace().nth(1).unwrap_or_default();
    Ok(flags.contains('U'))
}

/// `request_key(2)` into root's user keyring, with callout info so that the kernel runs
/// the request-key helper when no key is found. Blocks until the helper ends.
fn request_key(key_type: &str, description: &str, callout: &str) -> Result<u32> {
    let key_type = CString::new(key_type)?;
    let description = CString::new(description)?;
    let callout = CString::new(callout)?;
    let keyring = KEY_SPEC_USER_KEYRING as i32;
    let serial = watchd_e2e::sys::request_key(&key_type, &description, &callout, keyring)
        .context("request_key")?;
    Ok(serial as u32)
}

/// Keyrings measured: as in benches/key_poll.rs.
const BENCH_SIZES: [usize; 3] = [1, 100, 1000];
/// Each idle window.
const WINDOW: Duration = Duration::from_secs(10);

/// The `--idle-bench` measurement; see the module's documentation.
async fn idle_bench(client: &Client, daemon: u32) -> Result<()> {
    sys::keyctl_join_new_session_keyring().context("joining a session keyring")?;
    keyctl(
        KEYCTL_LINK,
        KEY_SPEC_USER_KEYRING,
        KEY_SPEC_SESSION_KEYRING,
        0,
    )?;
    let holder = add_key("keyring", "vm-bench", b"", KEY_SPEC_USER_KEYRING)?;
    let credential = [0x5a_u8; 1200];
    let mut rings: Vec<(u32, u32)> = Vec::new();
    let mut subscriptions = Vec::new();
    let mut timed: Option<EventStream> = None;
    println!(
        "| keyrings watched | daemon CPU % of one core | keys thread wake-ups in {} s | \
         daemon RSS MiB | update → read() ms, median / max of 10 |",
        WINDOW.as_secs()
    );
    println!("|---:|---:|---:|---:|---:|");
    for size in BENCH_SIZES {
        while rings.len() < size {
            let n = rings.len();
            let ring = add_key(
                "keyring",
                &format!("krb_ccache_bench_{n}"),
                b"",
                holder.into(),
            )?;
            let principal = add_key("user", "__krb5_princ__", &[0x11; 48], ring.into())?;
            add_key("user", "krbtgt/BENCH@BENCH", &credential, ring.into())?;
            add_key("user", "host/bench@BENCH", &credential, ring.into())?;
            let options = WatchOptions::new()
                .option("key", ring.to_string())
                .option("nested", true);
            if n == 0 {
                let sub = client.subscribe(SubscribeOptions::default()).await?;
                sub.add_watch(1, "keys", &options).await?;
                timed = Some(sub.into_events());
            } else {
                if (n - 1).is_multiple_of(100) {
                    subscriptions.push(client.subscribe(SubscribeOptions::default()).await?);
                }
                let sub = subscriptions.last().expect("made above");
                sub.add_watch(n as u64 + 1, "keys", &options).await?;
            }
            rings.push((ring, principal));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = sample(daemon)?;
        tokio::time::sleep(WINDOW).await;
        let after = sample(daemon)?;
        let cpu = (after.run_ns - before.run_ns) as f64 / WINDOW.as_nanos() as f64 * 100.0;
        let events = timed.as_mut().expect("keyring 0 is watched");
        let mut delays = Vec::new();
        for i in 0..10u8 {
            let t = Instant::now();
            update(rings[0].1, &[i; 48])?;
            expect_key(events, "bench update", t, key::UPDATED, rings[0].1, None).await?;
            delays.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        delays.sort_by(f64::total_cmp);
        println!(
            "| {size} | {cpu:.3} | {} | {:.1} | {:.1} / {:.1} |",
            after.keys_switches - before.keys_switches,
            after.rss_kib as f64 / 1024.0,
            delays[delays.len() / 2],
            delays[delays.len() - 1]
        );
    }
    Ok(())
}

/// The daemon's CPU time (utime + stime of /proc/PID/stat, in ns: the VM's kernel has no
/// schedstats), its keys thread's context switches (each a wake-up), and its RSS.
struct Sample {
    run_ns: u64,
    keys_switches: u64,
    rss_kib: u64,
}

fn sample(pid: u32) -> Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command, which ends at the last ')': utime and stime are the 14th
    // and 15th fields of the line, the 12th and 13th after it.
    let after_comm = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<u64> = after_comm
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten();
    let tick_ns = 1_000_000_000 / ticks.unwrap_or(100).max(1) as u64;
    let mut out = Sample {
        run_ns: (fields[10] + fields[11]) * tick_ns,
        keys_switches: 0,
        rss_kib: status_field(Path::new(&format!("/proc/{pid}/status")), "VmRSS")?,
    };
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        if std::fs::read_to_string(dir.join("comm"))?.trim() == "keys" {
            out.keys_switches = status_field(&dir.join("status"), "voluntary_ctxt_switches")?;
        }
    }
    Ok(out)
}

/// A number field of a /proc status file ("VmRSS:   7000 kB" → 7000).
fn status_field(path: &Path, name: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{name} in {}", path.display()))
}
