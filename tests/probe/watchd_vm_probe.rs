//! watchd-vm-probe: the daemon itself on a kernel with watch queues. Run as root inside the
//! VM of e2e/key_watch_queue.rs, it starts a private `dbus-daemon` (the same bus
//! configuration and policy as the other end-to-end tests) and `watchd` with a 60 s key poll
//! interval, watches root's `@user` keyring through the client library, changes keys with
//! `add_key(2)`/`keyctl(2)`, and checks that each change arrives as the kernel's subtype
//! with the right serials in far less than one poll interval: only the watch queue can
//! have told the daemon. One line per check (`ok NAME: …` or `FAIL NAME: …`), then a
//! summary.
//!
//! Usage: `watchd-vm-probe WATCHD DBUS_DAEMON`. Exit status: 0 every check passed, 1 one
//! failed (the rest are skipped: they build on each other), 2 the probe could not start.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use watchd::sys::{self, KeySerial};
use watchd_client::{Client, EventStream, SubscribeOptions, WatchOptions};
use watchd_proto::{RecordType, attr, key};

/// The key poll interval the daemon is given: a record faster than this came from the queue.
const POLL_INTERVAL_MS: u64 = 60_000;
/// What each record must beat (slack for an emulated CPU; still 1/20 of the interval).
const WITHIN: Duration = Duration::from_secs(3);
const RUN_DIR: &str = "/run/watchd-vm";

const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
const KEY_SPEC_USER_KEYRING: libc::c_long = -4;
const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
const KEYCTL_UPDATE: libc::c_long = 2;
const KEYCTL_REVOKE: libc::c_long = 3;
const KEYCTL_SETPERM: libc::c_long = 5;
const KEYCTL_CLEAR: libc::c_long = 7;
const KEYCTL_LINK: libc::c_long = 8;
const KEYCTL_UNLINK: libc::c_long = 9;
const KEYCTL_SET_TIMEOUT: libc::c_long = 15;
const KEYCTL_INVALIDATE: libc::c_long = 21;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [watchd, dbus_daemon] = &args[..] else {
        println!("usage: watchd-vm-probe WATCHD DBUS_DAEMON");
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
    let client = match runtime.block_on(start(watchd, dbus_daemon, &mut children)) {
        Ok(client) => client,
        Err(e) => {
            println!("SETUP FAILED: {e:#}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(checks(&client));
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

/// Starts the bus and the daemon; returns a client once the daemon answers.
async fn start(watchd: &Path, dbus_daemon: &Path, children: &mut Children) -> Result<Client> {
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
    let address = format!("unix:path={}", socket.display());
    wait_for(|| socket.exists(), "the bus socket").await?;
    std::fs::write(
        dir.join("watchd.toml"),
        format!("[sources]\ndevices = false\n\n[keys]\npoll_interval_ms = {POLL_INTERVAL_MS}\n"),
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
async fn checks(client: &Client) -> Result<u32> {
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

    // The probe possesses root's user keyring through a session keyring of its own, as a
    // login session does: a key's owner gets View only, updating it needs possession.
    keyctl(KEYCTL_JOIN_SESSION_KEYRING, 0, 0, 0).context("joining a session keyring")?;
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
    let mut events = sub.into_events();

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
    Ok(count + 1)
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

fn keyctl(op: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long) -> Result<i64> {
    // SAFETY: the operations called through here take only integers.
    let ret = unsafe { libc::syscall(libc::SYS_keyctl, op, a, b, c, 0 as libc::c_long) };
    if ret < 0 {
        bail!("keyctl({op}): {}", std::io::Error::last_os_error());
    }
    Ok(ret)
}

fn update(key: u32, payload: &[u8]) -> Result<i64> {
    // SAFETY: the payload pointer is valid for its length; the kernel only reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_UPDATE,
            key as libc::c_long,
            payload.as_ptr(),
            payload.len(),
            0 as libc::c_long,
        )
    };
    if ret < 0 {
        bail!("KEYCTL_UPDATE: {}", std::io::Error::last_os_error());
    }
    Ok(ret)
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
