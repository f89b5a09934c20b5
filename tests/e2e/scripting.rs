//! Clients for scripts and other languages (issue 13 items 6 and 7): `watchctl watch` with
//! several kinds in one subscription, `--time iso`, `--format keyctl`, `watchctl list`, and
//! the C example built with gdbus-codegen (docs/examples/watchd-gdbus.c).

use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use watchd_e2e::polkit::{OTHER_UID, as_user};
use watchd_e2e::{Env, Process, Trial, mounts, repo, stdout_lines};

use crate::keys::keyctl_as;
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "scripting::watchctl_watches_several_kinds_in_one_subscription_and_lists_them",
            several_kinds_and_list,
        ),
        trial(
            "scripting::watchctl_text_lines_name_the_watch_and_take_an_iso_date",
            text_lines_name_the_watch,
        ),
        trial(
            "scripting::watchctl_format_keyctl_prints_keyctl_watch_lines",
            format_keyctl,
        ),
        trial(
            "scripting::watchctl_with_several_watches_ends_when_each_has_ended",
            ends_when_each_watch_has_ended,
        ),
        trial(
            "scripting::the_gdbus_example_builds_and_prints_live_mount_events",
            gdbus_example,
        ),
        trial(
            "scripting::watchctl_reconnect_outlives_a_restart_and_prints_the_state_again",
            reconnects_after_a_restart,
        ),
    ]
}

/// How long a line may take to come.
const LINE: Duration = Duration::from_secs(10);

/// The next line of `lines` that `wanted` accepts, skipping the others (records of other
/// kinds that a busy host may bring), within [`LINE`].
fn line_where(lines: &Receiver<String>, wanted: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + LINE;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return Ok(line),
            Ok(line) => skipped.push(line),
            Err(RecvTimeoutError::Timeout) => bail!("no such line; skipped: {skipped:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                bail!("the output ended; skipped: {skipped:?}")
            }
        }
    }
}

fn json_where(lines: &Receiver<String>, wanted: impl Fn(&Value) -> bool) -> Result<Value> {
    let line = line_where(lines, |line| {
        serde_json::from_str::<Value>(line).is_ok_and(|v| wanted(&v))
    })?;
    Ok(serde_json::from_str(&line)?)
}

/// Waits until the daemon holds `subscriptions` subscriptions and `watches` watches.
async fn wait_for_counts(env: &Env, subscriptions: u32, watches: u32) -> Result<()> {
    let client = env.client().await?;
    let deadline = Instant::now() + LINE;
    loop {
        let status = client.status().await?;
        if (status.subscriptions, status.watches) == (subscriptions, watches) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "expected {subscriptions} subscriptions and {watches} watches, the daemon has {} and {}",
            status.subscriptions,
            status.watches
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `watchctl list --json`, run as `uid`.
fn list_as(env: &Env, uid: u32) -> Result<Value> {
    let mut command = env.watchctl();
    command.args(["list", "--json"]);
    as_user(&mut command, uid);
    let out = command.output()?;
    ensure!(
        out.status.success(),
        "watchctl list as uid {uid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `watch mounts … -- devices …`: one subscription with a watch of each kind, tags 1 and 2,
/// each kind with its own options (the device watch alone asks for the initial state); the
/// JSON lines say which watch they are from. `watchctl list` shows that subscription to its
/// owner and not to another user.
async fn several_kinds_and_list() -> Result<()> {
    let env = Env::start("several-kinds").await?;
    let dir = env.scratch.join("several");
    std::fs::create_dir_all(&dir)?;
    let mut command = env.watchctl();
    command
        .args(["watch", "mounts", "--path", dir.to_str().unwrap(), "--json"])
        .args([
            "--",
            "devices",
            "--sysname",
            "watchd-e2e-none-*",
            "--initial",
        ])
        .stdout(Stdio::piped());
    let mut watchctl = Process::spawn(command, "watchctl watch mounts -- devices")?;
    let lines = stdout_lines(&mut watchctl);

    // The device watch's initial state: no device matches, so only its SYNC.
    let sync = json_where(&lines, |v| v["event"] == "sync")?;
    ensure!(
        sync["type"] == "meta" && sync["tag"] == 2 && sync["kind"] == "devices",
        "{sync}"
    );
    wait_for_counts(&env, 1, 2).await?;

    let listed = list_as(&env, 0)?;
    let subscriptions = listed["subscriptions"]
        .as_array()
        .context("subscriptions")?;
    ensure!(subscriptions.len() == 1, "one subscription: {listed}");
    let sub = &subscriptions[0];
    ensure!(
        sub["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/org/watchd/Watchd1/subscription/"))
            && sub["depth"] == 16,
        "{sub}"
    );
    ensure!(
        sub["watches"]
            == serde_json::json!([{"tag": 1, "kind": "mounts"}, {"tag": 2, "kind": "devices"}]),
        "{sub}"
    );
    let kinds = listed["kinds"].as_array().context("kinds")?;
    for kind in ["mounts", "devices", "keys", "krb5"] {
        ensure!(
            kinds
                .iter()
                .any(|k| k["kind"] == kind && k["backend"].as_str().is_some_and(|b| !b.is_empty())),
            "{kind} and its backend in {listed}"
        );
    }
    // The text form: the same subscription on one line, its watches as TAG:KIND.
    let out = env.watchctl().arg("list").output()?;
    let text = String::from_utf8(out.stdout)?;
    let path = sub["path"].as_str().unwrap_or_default();
    ensure!(
        out.status.success()
            && text.starts_with("kinds:\n  mounts ")
            && text.contains(&format!(
                "your subscriptions:\n  {path}  depth=16  1:mounts 2:devices\n"
            )),
        "{text}"
    );
    // Another user sees the kinds, and none of root's subscriptions.
    let theirs = list_as(&env, OTHER_UID)?;
    ensure!(theirs["subscriptions"] == serde_json::json!([]), "{theirs}");
    ensure!(theirs["kinds"] == listed["kinds"], "{theirs}");

    let target = dir.join("a");
    mounts::tmpfs(&target, "several-kinds", "size=1m")?;
    let attach = json_where(&lines, |v| v["event"] == "attach")?;
    ensure!(
        attach["tag"] == 1
            && attach["kind"] == "mounts"
            && attach["mount_point"] == target.to_str().unwrap()
            && attach["source"] == "several-kinds",
        "{attach}"
    );
    watchctl.check_running()?;
    Ok(())
}

/// Whether `text` starts with an ISO 8601 date and time to the millisecond with an offset,
/// `2026-12-05T21:14:03.123+00:00`, followed by two spaces.
fn starts_with_iso_time(text: &str) -> bool {
    const SHAPE: &str = "dddd-dd-ddTdd:dd:dd.ddd+dd:dd  ";
    text.len() > SHAPE.len()
        && text.bytes().zip(SHAPE.bytes()).all(|(c, s)| match s {
            b'd' => c.is_ascii_digit(),
            b'+' => c == b'+' || c == b'-',
            _ => c == s,
        })
}

/// Text lines of a command with two watches name theirs (`[2 mounts]`), and `--time iso`
/// starts them with the date.
async fn text_lines_name_the_watch() -> Result<()> {
    let env = Env::start("text-lines").await?;
    let (one, two) = (env.scratch.join("one"), env.scratch.join("two"));
    std::fs::create_dir_all(&one)?;
    std::fs::create_dir_all(&two)?;
    let mut command = env.watchctl();
    command
        .args(["watch", "mounts", "--path", one.to_str().unwrap()])
        .args([
            "--time",
            "iso",
            "--",
            "mounts",
            "--path",
            two.to_str().unwrap(),
        ])
        .stdout(Stdio::piped());
    let mut watchctl = Process::spawn(command, "watchctl watch mounts -- mounts")?;
    let lines = stdout_lines(&mut watchctl);
    wait_for_counts(&env, 1, 2).await?;

    let target = two.join("b");
    mounts::tmpfs(&target, "text-lines", "size=1m")?;
    let line = line_where(&lines, |line| line.contains("attach"))?;
    ensure!(starts_with_iso_time(&line), "{line}");
    let rest = &line["2026-12-05T21:14:03.123+00:00  ".len()..];
    let expected = format!("[2 mounts]  mount attach   {}  tmpfs", target.display());
    ensure!(rest.starts_with(&expected), "{line}");
    Ok(())
}

/// How `process` exited, waiting [`LINE`] at most.
fn exit_status(process: &mut Process) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + LINE;
    loop {
        if let Some(status) = process.child().try_wait()? {
            return Ok(status);
        }
        ensure!(
            Instant::now() < deadline,
            "pid {} did not exit",
            process.pid()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The poll interval the keyctl test runs the daemon with.
const KEY_CONFIG: &str = "[keys]\npoll_interval_ms = 250\n";

/// A keyring of root's, made for one test and gone with it.
struct Keyring(u32);

impl Drop for Keyring {
    fn drop(&mut self) {
        let _ = keyctl_as(
            0,
            &format!("keyctl invalidate {} 2>/dev/null; true", self.0),
        );
    }
}

fn keyctl(script: &str) -> Result<u32> {
    let out = keyctl_as(0, script)?;
    out.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("{script}: not a key serial: {out:?}"))
}

/// `watchctl watch keys RING --nested --format keyctl` prints keyutils' `keyctl watch`
/// lines for real changes to a keyring of its own, and `RING gc` when the keyring goes,
/// after which it exits 0 (its one watch has ended); `-- END --` when the pipe ends.
async fn format_keyctl() -> Result<()> {
    let env = Env::start_with_config("keyctl-format", KEY_CONFIG).await?;
    let ring = Keyring(keyctl("keyctl newring watchd-e2e-keyctl-format @u")?);
    let r = ring.0;
    let mut command = env.watchctl();
    command
        .args([
            "watch",
            "keys",
            &r.to_string(),
            "--nested",
            "--format",
            "keyctl",
        ])
        .stdout(Stdio::piped());
    let mut watchctl = Process::spawn(command, "watchctl watch keys --format keyctl")?;
    let lines = stdout_lines(&mut watchctl);
    wait_for_counts(&env, 1, 1).await?;

    let expect = |what: &str, expected: String| -> Result<()> {
        let line = lines
            .recv_timeout(LINE)
            .with_context(|| format!("no line for {what}"))?;
        ensure!(line == expected, "{what}: {line:?}, not {expected:?}");
        Ok(())
    };
    let k = keyctl(&format!("keyctl add user watchd-e2e-k one {r}"))?;
    expect("add", format!("{r} link {k}"))?;
    keyctl_as(0, &format!("keyctl update {k} two"))?;
    expect("update", format!("{k} upd"))?;
    keyctl_as(0, &format!("keyctl unlink {k} {r}"))?;
    expect("unlink", format!("{r} unlk {k}"))?;
    // A poller tells a keyring emptied of one key from an unlink only by the kernel's word
    // for it; of several keys at once, it is a clear.
    let added = keyctl_as(
        0,
        &format!("keyctl add user watchd-e2e-k2 x {r} && keyctl add user watchd-e2e-k3 y {r}"),
    )?;
    let mut expected: Vec<String> = added.lines().map(|k| format!("{r} link {k}")).collect();
    let mut got = Vec::new();
    for what in ["add k2", "add k3"] {
        got.push(lines.recv_timeout(LINE).context(what)?);
    }
    // Both may come from one poll, in either order.
    expected.sort();
    got.sort();
    ensure!(got == expected, "{got:?}, not {expected:?}");
    keyctl_as(0, &format!("keyctl clear {r}"))?;
    expect("clear", format!("{r} clr"))?;
    keyctl_as(0, &format!("keyctl setperm {r} 0x3f3f0000"))?;
    expect("setperm", format!("{r} attr"))?;

    // The watched keyring invalidated: keyctl's gc line last, then watchctl ends.
    keyctl_as(0, &format!("keyctl invalidate {r}"))?;
    let status = exit_status(&mut watchctl).context("after gc")?;
    ensure!(status.success(), "{status}");
    let rest: Vec<String> = lines.try_iter().collect();
    ensure!(
        rest.last() == Some(&format!("{r} gc"))
            && rest[..rest.len() - 1]
                .iter()
                .all(|l| *l == format!("{r} inv")),
        "after invalidate: {rest:?}"
    );

    // The pipe ending (the daemon stopped) is keyctl's `-- END --`; watchctl exits 3.
    let mut command = env.watchctl();
    command
        .args(["watch", "keys", "@user", "--format", "keyctl"])
        .stdout(Stdio::piped());
    let mut watchctl = Process::spawn(command, "watchctl watch keys @user --format keyctl")?;
    let lines = stdout_lines(&mut watchctl);
    wait_for_counts(&env, 1, 1).await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(env.daemon.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let end = lines.recv_timeout(LINE).context("no line at the end")?;
    ensure!(end == "-- END --", "{end}");
    let status = exit_status(&mut watchctl).context("at the pipe's end")?;
    ensure!(status.code() == Some(3), "{status}");
    Ok(())
}

/// Two key watches in one command: the first keyring going ends its watch and not the
/// command; the second going ends both, and watchctl exits 0.
async fn ends_when_each_watch_has_ended() -> Result<()> {
    let env = Env::start_with_config("each-ended", KEY_CONFIG).await?;
    let first = Keyring(keyctl("keyctl newring watchd-e2e-each-1 @u")?);
    let second = Keyring(keyctl("keyctl newring watchd-e2e-each-2 @u")?);
    let mut command = env.watchctl();
    command
        .args(["watch", "keys", &first.0.to_string()])
        .args(["--", "keys", &second.0.to_string()])
        .stdout(Stdio::piped());
    let mut watchctl = Process::spawn(command, "watchctl watch keys -- keys")?;
    let lines = stdout_lines(&mut watchctl);
    wait_for_counts(&env, 1, 2).await?;

    keyctl_as(0, &format!("keyctl invalidate {}", first.0))?;
    let ended = line_where(&lines, |line| line.contains("ended"))?;
    ensure!(
        ended.contains(&format!("  [1 keys]  watch 1 ended: \"key {}\"", first.0)),
        "{ended}"
    );
    // The other watch goes on: the command with it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    watchctl.check_running()?;
    let k = keyctl(&format!("keyctl add user watchd-e2e-each x {}", second.0))?;
    let linked = line_where(&lines, |line| line.contains("linked"))?;
    ensure!(
        linked.contains(&format!(
            "  [2 keys]  key linked        key={}  aux={k}",
            second.0
        )),
        "{linked}"
    );

    keyctl_as(0, &format!("keyctl invalidate {}", second.0))?;
    let ended = line_where(&lines, |line| line.contains("ended"))?;
    ensure!(ended.contains("  [2 keys]  watch 2 ended: "), "{ended}");
    let status = exit_status(&mut watchctl).context("after both watches ended")?;
    ensure!(status.success(), "{status}");
    Ok(())
}

/// docs/examples/watchd-gdbus.c, built out of the tree with its Makefile (gdbus-codegen
/// makes the proxy from dbus/org.watchd.Watchd1.xml), run twice against the daemon: with
/// the bus's address as `-a`, and from `$DBUS_SYSTEM_BUS_ADDRESS`. Both print the mount.
async fn gdbus_example() -> Result<()> {
    let env = Env::start("gdbus").await?;
    let build = env.scratch.join("gdbus-build");
    std::fs::create_dir_all(&build)?;
    let out = Command::new("make")
        .arg("-f")
        .arg(repo().join("docs/examples/Makefile"))
        .arg("CFLAGS=-O2 -Wall -Wextra -Werror")
        .current_dir(&build)
        .output()
        .context("make (packages make, gcc, pkg-config, libglib2.0-dev, libglib2.0-dev-bin)")?;
    ensure!(
        out.status.success(),
        "building the GDBus example failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let binary = build.join("watchd-gdbus");
    let dir = env.scratch.join("gdbus");
    std::fs::create_dir_all(&dir)?;
    let path_option = format!("path={}", dir.display());

    let mut by_argument = Command::new(&binary);
    by_argument
        .args(["-a", &env.bus.address, "mounts", &path_option])
        .stdout(Stdio::piped());
    let mut by_argument = Process::spawn(by_argument, "watchd-gdbus -a")?;
    let mut by_environment = Command::new(&binary);
    by_environment
        .args(["mounts", &path_option, "initial=true"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &env.bus.address)
        .stdout(Stdio::piped());
    let mut by_environment = Process::spawn(by_environment, "watchd-gdbus")?;
    let lines = [
        stdout_lines(&mut by_argument),
        stdout_lines(&mut by_environment),
    ];
    wait_for_counts(&env, 2, 2).await?;
    // initial=true was sent as a boolean: the SYNC of an empty initial state comes first.
    let sync = line_where(&lines[1], |_| true)?;
    ensure!(sync.starts_with("tag=1 seq=1 meta sync"), "{sync}");

    let target = dir.join("c");
    mounts::tmpfs(&target, "gdbus-source", "size=1m")?;
    for (lines, what) in lines.iter().zip(["-a", "$DBUS_SYSTEM_BUS_ADDRESS"]) {
        let line = line_where(lines, |line| line.contains("attach"))?;
        println!("{what}: {line}");
        ensure!(line.starts_with("tag=1 seq="), "{what}: {line}");
        for needle in [
            " mount attach ".to_owned(),
            format!(" mount_point={} ", target.display()),
            " fs_type=tmpfs ".to_owned(),
            " source=gdbus-source ".to_owned(),
        ] {
            ensure!(line.contains(&needle), "{what}: {line:?} lacks {needle:?}");
        }
    }
    by_argument.check_running()?;
    by_environment.check_running()?;
    Ok(())
}

/// `watch --reconnect` outlives a restart of watchd: the pipe ends, watchctl says so, waits
/// for the daemon, subscribes again and prints the current state first (changes made while
/// it was away are in it), then live records again.
async fn reconnects_after_a_restart() -> Result<()> {
    let env = Env::start("reconnect").await?;
    let dir = env
        .scratch
        .path
        .to_str()
        .context("utf-8 scratch")?
        .to_owned();
    let mut command = env.watchctl();
    command
        .args(["watch", "mounts", "--json", "--reconnect", "--path", &dir])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(env.scratch.join("watchctl.err"))?);
    let mut watchctl = Process::spawn(command, "watchctl watch --reconnect")?;
    let lines = stdout_lines(&mut watchctl);
    let client = env.client().await?;
    for _ in 0..500 {
        if client.status().await?.watches == 1 {
            break;
        }
        watchctl.check_running()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Env {
        daemon,
        bus,
        scratch,
    } = env;
    drop(daemon); // stopped by its PID: every pipe ends
    let away = scratch.join("made-while-away");
    mounts::tmpfs(&away, "away", "size=16k")?;
    let _daemon = watchd_e2e::Daemon::start(&bus, &scratch.path, "", false).await?;
    let away_text = away.to_str().context("utf-8")?;
    json_where(&lines, |v| {
        v["event"] == "attach" && v["snapshot"] == true && v["mount_point"] == away_text
    })
    .with_context(|| {
        let said = std::fs::read_to_string(scratch.join("watchctl.err")).unwrap_or_default();
        format!("after the restart, the current state with the mount made meanwhile (watchctl said: {said})")
    })?;
    watchctl.check_running()?;
    let after = scratch.join("after");
    mounts::tmpfs(&after, "after", "size=16k")?;
    let after_text = after.to_str().context("utf-8")?;
    json_where(&lines, |v| {
        v["event"] == "attach" && v["snapshot"] == false && v["mount_point"] == after_text
    })
    .context("then live records again")?;
    Ok(())
}
