//! polkitd failing under the daemon (the real polkitd, on the test's bus): hung with SIGSTOP
//! in the middle of checks, or killed and started again. A hung polkitd costs its callers a
//! `Timeout` after `authorization.timeout_ms` and nobody else anything; one uid's waiting
//! checks and calls are bounded (`LimitExceeded` at once past them); a restarted polkitd
//! answers the next check without the daemon being restarted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use watchd_client::{Client, SubscribeOptions, Subscription, WatchOptions};
use watchd_e2e::polkit::{OTHER_UID, Polkit, TEST_UID, user_name};
use watchd_e2e::{Env, Trial, mounts, send_signal, wait_for_log_line};
use watchd_proto::mount;

use crate::authorization::client_as;
use crate::{error_name, expect_mount, trial};

const ERR: &str = "org.watchd.Watchd1.Error.";
const WATCH_MOUNTS: &str = "org.watchd.Watchd1.watch-mounts";

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "polkit_faults::a_hung_polkitd_times_out_its_callers_and_holds_up_no_other_uid",
            hung_polkitd,
        ),
        trial(
            "polkit_faults::a_restarted_polkitd_decides_again_without_restarting_watchd",
            restarted_polkitd,
        ),
        trial(
            "polkit_faults::in_forced_polkit_mode_a_killed_polkitd_is_a_clear_refusal_until_it_is_back",
            restarted_polkitd_forced,
        ),
    ]
}

fn scratch(env: &Env) -> String {
    env.scratch.path.to_str().expect("utf-8 scratch").to_owned()
}

/// polkitd stopped with SIGSTOP, continued (SIGCONT) when dropped, whatever the test did:
/// a stopped process would ignore the SIGTERM that stops it at the end.
struct Stopped(u32);

impl Stopped {
    fn new(polkit: &Polkit) -> Result<Stopped> {
        send_signal(polkit.pid(), Signal::SIGSTOP)?;
        Ok(Stopped(polkit.pid()))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = send_signal(self.0, Signal::SIGCONT);
    }
}

/// The call must have failed with watchd's error `name`, its text saying `needle`.
fn expect_error<T: std::fmt::Debug>(
    result: Result<T, watchd_client::Error>,
    name: &str,
    needle: &str,
) -> Result<()> {
    let text = format!("{result:?}");
    let got = error_name(result.map(drop))?;
    ensure!(got == format!("{ERR}{name}"), "expected {name}, got {text}");
    ensure!(
        text.contains(needle),
        "the error should say {needle:?}: {text}"
    );
    Ok(())
}

/// Runs `call`, which must answer (either way) within `limit`; returns its result and how
/// long it took.
async fn timed<T>(
    what: &str,
    limit: Duration,
    call: impl std::future::Future<Output = T>,
) -> Result<(T, Duration)> {
    let start = Instant::now();
    let result = tokio::time::timeout(limit, call)
        .await
        .with_context(|| format!("{what} got no answer within {limit:?}"))?;
    Ok((result, start.elapsed()))
}

const TIMEOUT_MS: u64 = 4000;

async fn hung_polkitd() -> Result<()> {
    let config = format!(
        "[authorization]\ntimeout_ms = {TIMEOUT_MS}\n\
         [limits]\nmax_pending_calls_per_uid = 3\nmax_polkit_checks_per_uid = 2\n"
    );
    let env = Env::start_with_config("pk-hung", &config).await?;
    let polkit = Polkit::start(&env.bus.address, &env.scratch.path, "").await?;
    let dir = scratch(&env);
    // uid 1001 watches the scratch directory's mounts before polkitd hangs.
    let (bystander, _h1) = client_as(&env, TEST_UID).await?;
    let watched = bystander.subscribe(SubscribeOptions::default()).await?;
    watched
        .add_watch(1, "mounts", &WatchOptions::new().path(dir.clone()))
        .await?;
    let mut events = watched.into_events();
    // uid 1000's subscription, and the calls it will leave waiting on polkitd.
    let (hog, _h2) = client_as(&env, OTHER_UID).await?;
    let hog_sub = hog.subscribe(SubscribeOptions::default()).await?;

    let stopped = Stopped::new(&polkit)?;
    let started = Instant::now();
    let options = WatchOptions::new().path(dir.clone());
    let add = |tag: u64| hog_sub.add_watch(tag, "mounts", &options);
    let waiting = async { tokio::join!(add(1), add(2)) };
    let others = async {
        // Both checks are with polkitd (the daemon logs each one it asks).
        let asked = || {
            env.daemon
                .log()
                .lines()
                .filter(|l| l.contains("asking polkitd") && l.contains("uid=1000"))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while asked() < 2 {
            ensure!(
                Instant::now() < deadline,
                "uid 1000's checks never reached polkitd"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut lines = Vec::new();
        // uid 1000's third check: refused at once, not queued.
        let (third, took) = timed("a third check", Duration::from_secs(1), add(3)).await?;
        expect_error(third, "LimitExceeded", "limits.max_polkit_checks_per_uid")?;
        lines.push(format!(
            "uid 1000, a 3rd AddWatch: LimitExceeded in {took:?}"
        ));
        // A lowered call limit (SIGHUP) applies to uid 1000's next call: its two waiting
        // calls now fill it.
        let file = env.scratch.join("watchd.toml");
        std::fs::write(
            &file,
            config.replace("calls_per_uid = 3", "calls_per_uid = 2"),
        )?;
        send_signal(env.daemon.pid(), Signal::SIGHUP)?;
        wait_for_log_line(&env.daemon, &["max_pending_calls_per_uid: 3 -> 2"])?;
        let (list, took) = timed(
            "uid 1000's ListSubscriptions",
            Duration::from_secs(1),
            hog.list_subscriptions(),
        )
        .await?;
        expect_error(list, "LimitExceeded", "limits.max_pending_calls_per_uid")?;
        lines.push(format!(
            "uid 1000, ListSubscriptions: LimitExceeded in {took:?}"
        ));
        // uid 1001's calls that need no polkit answer are answered at once.
        let limit = Duration::from_secs(1);
        let (status, took) = timed("uid 1001's status", limit, bystander.status()).await?;
        ensure!(
            status?.authorization == "polkit",
            "polkitd still owns its name"
        );
        lines.push(format!("uid 1001, status: {took:?}"));
        let (sub, took) = timed(
            "uid 1001's Subscribe",
            limit,
            bystander.subscribe(SubscribeOptions::default()),
        )
        .await?;
        let sub: Subscription = sub?;
        lines.push(format!("uid 1001, Subscribe: {took:?}"));
        let (list, took) = timed("uid 1001's list", limit, bystander.list_subscriptions()).await?;
        ensure!(list?.len() == 2, "uid 1001 lists its two subscriptions");
        lines.push(format!("uid 1001, ListSubscriptions: {took:?}"));
        // Closing: the pipe's read end goes, and so does the subscription.
        let before = bystander.status().await?.subscriptions;
        drop(sub);
        let mut closed = false;
        for _ in 0..100 {
            if bystander.status().await?.subscriptions == before - 1 {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ensure!(closed, "a closed subscription ends while polkitd hangs");
        // The subscription made before keeps delivering.
        let target = env.scratch.join("during");
        mounts::tmpfs(&target, "during", "size=1m")?;
        let start = Instant::now();
        expect_mount(&mut events, mount::ATTACH, &target).await?;
        lines.push(format!("uid 1001, a mount event: {:?}", start.elapsed()));
        Ok::<_, anyhow::Error>(lines)
    };
    let ((first, second), lines) = tokio::join!(waiting, others);
    let waited = started.elapsed();
    let lines = lines?;
    for line in &lines {
        println!("  {line}");
    }
    for result in [first, second] {
        expect_error(result, "Timeout", "authorization.timeout_ms")?;
    }
    let timeout = Duration::from_millis(TIMEOUT_MS);
    ensure!(
        waited >= timeout && waited < timeout + Duration::from_secs(3),
        "the waiting checks failed after {waited:?}, the timeout being {timeout:?}"
    );
    println!("  uid 1000, 2 AddWatch on a stopped polkitd: Timeout after {waited:?}");
    wait_for_log_line(&env.daemon, &["polkitd did not answer in time", "uid=1000"])?;

    // polkitd goes on: checks are answered again, by polkitd.
    drop(stopped);
    let (again, took) = timed("uid 1000's AddWatch after SIGCONT", timeout, add(4)).await?;
    again.context("uid 1000's AddWatch once polkitd runs again")?;
    println!("  uid 1000, AddWatch after SIGCONT: {took:?}");
    ensure!(
        env.daemon.log().contains("decider=Polkit"),
        "polkit decided, not the fallback"
    );
    drop(polkit);
    let mut env = env;
    env.daemon.process.check_running()?;
    Ok(())
}

/// A rule that denies uid 1001 watch-mounts: AccessDenied then shows polkitd decided, and
/// the actions file's default (yes) shows the fallback did.
fn deny_rule() -> Result<String> {
    let user = user_name(TEST_UID)?;
    Ok(format!(
        "polkit.addRule(function(action, subject) {{
            if (action.id == '{WATCH_MOUNTS}' && subject.user == '{user}') return polkit.Result.NO;
        }});"
    ))
}

async fn add_mounts_watch(env: &Env, client: &Client) -> Result<(), watchd_client::Error> {
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "mounts", &WatchOptions::new().path(scratch(env)))
        .await
}

/// polkitd's name is gone from the bus once it was killed.
async fn wait_until_gone(env: &Env) -> Result<()> {
    let root = env.client().await?;
    for _ in 0..500 {
        if root.status().await?.authorization != "polkit" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("polkitd's name stayed on the bus after it was killed")
}

async fn restarted_polkitd() -> Result<()> {
    let env = Env::start("pk-restart").await?;
    let rules = deny_rule()?;
    let polkit = Polkit::start(&env.bus.address, &env.scratch.path, &rules).await?;
    let (client, _holder) = client_as(&env, TEST_UID).await?;
    expect_error(
        add_mounts_watch(&env, &client).await,
        "AccessDenied",
        WATCH_MOUNTS,
    )?;
    let first_pid = polkit.pid();
    polkit.stop();
    wait_until_gone(&env).await?;
    // "auto": polkitd is neither running nor activatable on this bus, the defaults decide.
    add_mounts_watch(&env, &client)
        .await
        .context("with polkitd gone, the actions file's default (yes) decides")?;
    let polkit = Polkit::start(&env.bus.address, &env.scratch.path, &rules).await?;
    ensure!(polkit.pid() != first_pid, "a new polkitd");
    let text = format!("{:?}", add_mounts_watch(&env, &client).await);
    ensure!(
        text.contains("AccessDenied") && text.contains("polkit denied it"),
        "the restarted polkitd's rule decides again: {text}"
    );
    let status = env.client().await?.status().await?;
    ensure!(status.authorization == "polkit", "{status:?}");
    drop(polkit);
    Ok(())
}

async fn restarted_polkitd_forced() -> Result<()> {
    let env =
        Env::start_with_config("pk-restart-forced", "[authorization]\nmode = \"polkit\"\n").await?;
    let polkit = Polkit::start(&env.bus.address, &env.scratch.path, "").await?;
    let (client, _holder) = client_as(&env, TEST_UID).await?;
    add_mounts_watch(&env, &client)
        .await
        .context("polkitd allows watch-mounts")?;
    polkit.stop();
    // Between kill and restart: refused at once, saying polkit could not decide.
    let (refused, took) = timed(
        "AddWatch with polkitd gone",
        Duration::from_secs(2),
        add_mounts_watch(&env, &client),
    )
    .await?;
    expect_error(refused, "AccessDenied", "polkit could not decide")?;
    println!("  AddWatch with polkitd killed: AccessDenied in {took:?}");
    let polkit = Polkit::start(&env.bus.address, &env.scratch.path, "").await?;
    add_mounts_watch(&env, &client)
        .await
        .context("the restarted polkitd answers without watchd being restarted")?;
    drop(polkit);
    Ok(())
}
