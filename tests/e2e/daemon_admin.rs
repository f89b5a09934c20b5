//! What administrators expect of a daemon: one instance per bus (a second one exits naming
//! the first, which keeps serving), SIGHUP reloads the configuration (a good file applies
//! to new requests and keeps every subscription, a bad one is refused and logged, the old
//! values staying), `watchd --check-config` checks a file without starting anything, and
//! a daemon denied keyctl(2) (a container's seccomp filter) serves every other kind and says
//! why keys are unavailable.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::signal::Signal;
use watchd::conf::Config;
use watchd_client::{Client, EventStream, SubscribeOptions, WatchOptions};
use watchd_e2e::{
    Bus, Daemon, Env, Scratch, Trial, mounts, run_watchd_to_exit, send_signal, wait_for_log_line,
};
use watchd_proto::mount;

use crate::{expect_mount, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "daemon_admin::a_second_daemon_on_the_bus_exits_naming_the_first_which_keeps_serving",
            second_daemon,
        ),
        trial(
            "daemon_admin::sighup_applies_new_limits_to_new_requests_and_keeps_subscriptions",
            reload_good,
        ),
        trial(
            "daemon_admin::sighup_with_a_bad_file_logs_the_error_and_keeps_the_old_limits",
            reload_bad,
        ),
        trial(
            "daemon_admin::check_config_prints_every_effective_key_or_the_error",
            check_config,
        ),
        trial(
            "daemon_admin::denied_keyctl_the_daemon_serves_mounts_and_lists_keys_and_krb5_as_unavailable",
            keyctl_denied,
        ),
    ]
}

const LIMIT_EXCEEDED: &str = "org.watchd.Watchd1.Error.LimitExceeded";

/// A mount in the scratch directory reaches `events`: the subscription is alive and served.
async fn still_receives(env: &Env, events: &mut EventStream, name: &str) -> Result<()> {
    let target = env.scratch.join(name);
    mounts::tmpfs(&target, "admin", "size=1m")?;
    expect_mount(events, mount::ATTACH, &target).await?;
    mounts::unmount(&target)?;
    expect_mount(events, mount::DETACH, &target).await?;
    Ok(())
}

/// Subscribes until refused (at most `tries` times); returns how many were granted, the
/// subscriptions themselves and the refusal's message.
async fn subscribe_until_refused(
    client: &Client,
    tries: usize,
) -> Result<(Vec<watchd_client::Subscription>, String)> {
    let mut held = Vec::new();
    for _ in 0..tries {
        match client.subscribe(SubscribeOptions::default()).await {
            Ok(sub) => held.push(sub),
            Err(watchd_client::Error::Daemon { name, message }) if name == LIMIT_EXCEEDED => {
                return Ok((held, message));
            }
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("{tries} subscriptions were all granted")
}

async fn second_daemon() -> Result<()> {
    let mut env = Env::start("admin-second").await?;
    let mut events = env.watch_scratch(1, WatchOptions::new()).await?;
    let first = env.daemon.pid();
    let (status, log) = run_watchd_to_exit(&env.bus, &env.scratch.path, "second", "")?;
    ensure!(
        !status.success(),
        "the second watchd exited with {status}; its log:\n{log}"
    );
    let expected = format!(
        "org.watchd.Watchd1 on {} is already owned by PID {first}",
        env.bus.address
    );
    ensure!(
        log.contains(&expected) && log.contains("ERROR"),
        "the second watchd's log lacks {expected:?} at error level:\n{log}"
    );
    // It stopped before starting any source.
    ensure!(
        !log.contains("pipe page budgets"),
        "the second watchd set up its hub before giving up:\n{log}"
    );
    env.daemon.process.check_running()?;
    let conn = zbus::connection::Builder::address(env.bus.address.as_str())
        .build()
        .await?;
    let owner = zbus::fdo::DBusProxy::new(&conn)
        .await?
        .get_connection_unix_process_id("org.watchd.Watchd1".try_into()?)
        .await?;
    ensure!(
        owner == first,
        "org.watchd.Watchd1 now belongs to PID {owner}, not {first}"
    );
    still_receives(&env, &mut events, "after-second").await?;
    let status = env.client().await?.status().await?;
    ensure!(
        status.subscriptions == 1,
        "the first daemon's state changed: {status:?}"
    );
    Ok(())
}

async fn reload_good() -> Result<()> {
    let mut env =
        Env::start_with_config("admin-reload", "[limits]\nmax_subscriptions_per_uid = 2\n").await?;
    let mut events = env.watch_scratch(1, WatchOptions::new()).await?;
    let client = env.client().await?;
    let (held, refusal) = subscribe_until_refused(&client, 4).await?;
    ensure!(
        held.len() == 1,
        "granted {} more under a limit of 2: {refusal}",
        held.len()
    );
    // Raised to 4 and a smaller default depth; krb5 off, which only a restart applies.
    std::fs::write(
        env.scratch.join("watchd.toml"),
        "[limits]\nmax_subscriptions_per_uid = 4\n[pipe]\ndefault_depth = 4\n[sources]\nkrb5 = false\n",
    )?;
    send_signal(env.daemon.pid(), Signal::SIGHUP)?;
    wait_for_log_line(
        &env.daemon,
        &[
            "applied to new requests",
            "limits.max_subscriptions_per_uid: 2 -> 4",
            "pipe.default_depth: 16 -> 4",
        ],
    )?;
    wait_for_log_line(&env.daemon, &["next start", "sources.krb5: true -> false"])?;
    env.daemon.process.check_running()?;
    still_receives(&env, &mut events, "after-raise").await?;
    let (more, refusal) = subscribe_until_refused(&client, 4).await?;
    ensure!(
        more.len() == 2 && refusal.contains("limits.max_subscriptions_per_uid"),
        "after raising the limit to 4, {} more were granted (expected 2): {refusal}",
        more.len()
    );
    let pages = fcntl(more[0].pipe(), FcntlArg::F_GETPIPE_SZ)? / 4096;
    ensure!(
        pages == 4,
        "a new subscription got {pages} pages, not the new default depth 4"
    );
    ensure!(
        more[0].depth().await? == 4,
        "the new subscription's depth is not 4"
    );
    ensure!(
        held[0].depth().await? == 16,
        "an earlier subscription's depth changed"
    );
    // Lowered below what uid 0 holds now (4): nothing already made ends, new ones are refused.
    std::fs::write(
        env.scratch.join("watchd.toml"),
        "[limits]\nmax_subscriptions_per_uid = 1\n",
    )?;
    send_signal(env.daemon.pid(), Signal::SIGHUP)?;
    wait_for_log_line(&env.daemon, &["limits.max_subscriptions_per_uid: 4 -> 1"])?;
    let status = client.status().await?;
    ensure!(
        status.subscriptions == 4,
        "a lowered limit ended subscriptions: {status:?}"
    );
    let (none, refusal) = subscribe_until_refused(&client, 1).await?;
    ensure!(
        none.is_empty() && refusal.contains("already holds 4 subscriptions"),
        "{refusal}"
    );
    still_receives(&env, &mut events, "after-lower").await?;
    env.daemon.process.check_running()?;
    // What only a restart applies stays as it runs: krb5 is still served.
    let sources = client.status().await?.sources;
    ensure!(
        sources.iter().any(|s| s == "krb5"),
        "krb5 stopped on reload: {sources:?}"
    );
    Ok(())
}

async fn reload_bad() -> Result<()> {
    let mut env = Env::start_with_config(
        "admin-reload-bad",
        "[limits]\nmax_subscriptions_per_uid = 2\n",
    )
    .await?;
    let mut events = env.watch_scratch(1, WatchOptions::new()).await?;
    for (name, text, error) in [
        (
            "invalid value",
            "[limits]\nmax_subscriptions_per_uid = 8\n[pipe]\ndefault_depth = 300\n",
            "pipe.default_depth must be 2..=pipe.max_depth (256), not 300",
        ),
        (
            "unknown key",
            "[limits]\nmax_subscriptions_per_uid = 8\nmax_subscription = 3\n",
            "unknown field `max_subscription`",
        ),
    ] {
        std::fs::write(env.scratch.join("watchd.toml"), text)?;
        let before = env.daemon.log().len();
        send_signal(env.daemon.pid(), Signal::SIGHUP)?;
        wait_for_log_line(
            &env.daemon,
            &["ERROR", "configuration refused", "watchd.toml"],
        )
        .and_then(|_| {
            watchd_e2e::wait_until(
                std::time::Duration::from_secs(10),
                "the error logged",
                || Ok(env.daemon.log()[before..].contains(error)),
            )
        })
        .with_context(|| {
            format!(
                "{name}: the log does not name {error:?}:\n{}",
                env.daemon.log()
            )
        })?;
        env.daemon.process.check_running()?;
        ensure!(
            !env.daemon.log().contains("applied to new requests"),
            "{name}: part of a refused file was applied"
        );
        still_receives(&env, &mut events, "after-bad").await?;
    }
    // The old limit (2) stands: one more subscription, then a refusal naming it.
    let client = env.client().await?;
    let (held, refusal) = subscribe_until_refused(&client, 4).await?;
    ensure!(
        held.len() == 1 && refusal.contains("limits.max_subscriptions_per_uid"),
        "after refused reloads, {} more were granted (expected 1 under the old limit 2): {refusal}",
        held.len()
    );
    let pages = fcntl(held[0].pipe(), FcntlArg::F_GETPIPE_SZ)? / 4096;
    ensure!(
        pages == 16,
        "the default depth is no longer 16: {pages} pages"
    );
    Ok(())
}

async fn check_config() -> Result<()> {
    let scratch = watchd_e2e::Scratch::new("admin-check")?;
    let good = scratch.join("good.toml");
    std::fs::write(
        &good,
        "[limits]\nmax_subscriptions_per_uid = 5\n[sources]\nkrb5 = false\n",
    )?;
    // A bus address that nothing serves: checking must not need (or try) a bus.
    let run = |args: &[&std::path::Path]| {
        Command::new(watchd_e2e::watchd_bin())
            .arg("--bus-address")
            .arg("unix:path=/nonexistent/bus")
            .arg("--check-config")
            .args(args)
            .output()
    };
    let out = run(&[&good])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "--check-config on a good file: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected = Config::default();
    expected.limits.max_subscriptions_per_uid = 5;
    expected.sources.krb5 = false;
    // Every key, defaults included, in sections a configuration file can say again.
    for (key, value) in expected.values() {
        let (section, key) = key.split_once('.').context("section.key")?;
        ensure!(
            stdout.contains(&format!("[{section}]"))
                && stdout.contains(&format!("{key} = {value}")),
            "{section}.{key} = {value} is missing from:\n{stdout}"
        );
    }
    let printed = scratch.join("printed.toml");
    std::fs::write(&printed, &*stdout)?;
    let reread = Config::load(&printed, true)?;
    ensure!(
        reread == expected,
        "the printed values read back as {reread:?}"
    );
    ensure!(stdout.contains("is valid"), "{stdout}");

    let bad = scratch.join("bad.toml");
    for (text, error) in [
        (
            "[pipe]\nmax_depth = 512\n",
            "pipe.max_depth must be 2..=256 packets, not 512",
        ),
        ("[limits\n", "TOML parse error"),
    ] {
        std::fs::write(&bad, text)?;
        let out = run(&[&bad])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && out.stdout.is_empty(),
            "--check-config on {text:?}: {} with output {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        ensure!(
            stderr.contains("bad.toml") && stderr.contains(error),
            "--check-config on {text:?}: stderr lacks the file or {error:?}:\n{stderr}"
        );
    }
    let missing = scratch.join("missing.toml");
    let out = run(&[&missing])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("missing.toml"),
        "--check-config on a file that does not exist: {}",
        out.status
    );
    Ok(())
}

/// systemd-nspawn's default filter fails keyctl(2) and add_key(2) with EPERM. The daemon
/// used to exit at start there ("the keys source needs keyctl(2)"), serving nothing.
async fn keyctl_denied() -> Result<()> {
    let scratch = Scratch::new("admin-keyctl-denied")?;
    let bus = Bus::start(&scratch.path)?;
    let denied = [libc::SYS_keyctl, libc::SYS_add_key, libc::SYS_request_key];
    let daemon = Daemon::start_denying(&bus, &scratch.path, "", &denied).await?;
    let mut env = Env {
        daemon,
        bus,
        scratch,
    };
    let client = env.client().await?;
    let details = client.status().await?.source_details;
    for kind in ["keys", "krb5"] {
        let said = details.get(kind).map(String::as_str).unwrap_or_default();
        ensure!(
            said.starts_with("unavailable:") && said.contains("keyctl"),
            "status says of {kind}: {said:?} (all: {details:?})"
        );
    }
    let subscription = client.subscribe(SubscribeOptions::default()).await?;
    match subscription
        .add_watch(1, "keys", &WatchOptions::new())
        .await
    {
        Err(e) if e.dbus_name() == Some("org.watchd.Watchd1.Error.NotSupported") => {
            ensure!(e.to_string().contains("keyctl"), "the refusal: {e}");
        }
        other => anyhow::bail!("a keys watch with keyctl denied: {other:?}"),
    }
    let mut events = env.watch_scratch(1, WatchOptions::new()).await?;
    still_receives(&env, &mut events, "keyctl-denied").await?;
    ensure!(
        ["keys", "krb5"].iter().all(|kind| env
            .daemon
            .log()
            .contains(&format!("{kind} watches are unavailable"))),
        "the log does not say why:\n{}",
        env.daemon.log()
    );
    env.daemon.process.check_running()
}
