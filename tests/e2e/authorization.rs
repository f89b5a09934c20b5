//! Who may watch what: polkit decides per kind of watch (the real polkitd, with test rules),
//! the actions file's defaults decide when polkitd is absent, and objects are checked as the
//! caller: paths with the caller's rights, mounts in the caller's own namespace.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use watchd_client::{Client, SubscribeOptions, WatchOptions};
use watchd_e2e::polkit::{OTHER_UID, Polkit, TEST_UID, connect_as_user, user_name};
use watchd_e2e::{Env, Process, Trial, mounts};
use watchd_proto::mount;

use crate::{error_name, expect_mount, expect_silence, trial};

const DENIED: &str = "org.watchd.Watchd1.Error.AccessDenied";
const WATCH_MOUNTS: &str = "org.watchd.Watchd1.watch-mounts";

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "auth::polkit_lets_a_user_watch_the_mounts_it_can_see",
            polkit_allows,
        ),
        trial(
            "auth::a_polkit_rule_denying_a_user_is_an_error_naming_the_action",
            polkit_rule_denies,
        ),
        trial(
            "auth::an_auth_admin_answer_is_refused_without_and_with_the_interactive_flag",
            auth_admin_refused,
        ),
        trial(
            "auth::with_polkitd_gone_the_actions_file_defaults_decide",
            polkitd_stopped_fallback,
        ),
        trial(
            "auth::forced_polkit_mode_refuses_while_polkitd_is_absent",
            forced_polkit_mode,
        ),
        trial(
            "auth::a_path_the_caller_cannot_reach_is_refused_though_root_could",
            unreachable_path,
        ),
        trial(
            "auth::a_symlink_planted_by_the_caller_cannot_redirect_the_daemon",
            planted_symlinks,
        ),
        trial(
            "auth::a_caller_cannot_change_another_users_subscription",
            not_your_subscription,
        ),
        trial(
            "auth::a_process_that_is_no_longer_the_bus_verified_user_is_refused",
            identity_changed,
        ),
        trial(
            "auth::a_client_in_its_own_mount_namespace_sees_its_mounts_only",
            namespace_isolation,
        ),
    ]
}

/// A client whose bus connection belongs to `uid` (its credentials are a live process of
/// that uid, kept alive by the returned holder).
pub(crate) async fn client_as(env: &Env, uid: u32) -> Result<(Client, Process)> {
    let (conn, holder) = connect_as_user(&env.bus.address, uid).await?;
    Ok((Client::from_connection(conn), holder))
}

fn dir(env: &Env) -> String {
    env.scratch.path.to_str().expect("utf-8 scratch").to_owned()
}

/// Adds a mounts watch under the scratch directory as `uid`.
async fn add_mounts_watch(
    env: &Env,
    client: &Client,
    options: WatchOptions,
) -> Result<(), watchd_client::Error> {
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "mounts", &options.path(dir(env))).await
}

/// The error must be AccessDenied and name the action.
fn expect_denied(result: Result<(), watchd_client::Error>, needle: &str) -> Result<String> {
    let text = format!("{result:?}");
    ensure!(
        error_name(result)? == DENIED,
        "expected AccessDenied, got {text}"
    );
    ensure!(
        text.contains(needle),
        "the error should mention {needle:?}: {text}"
    );
    Ok(text)
}

async fn polkit_allows() -> Result<()> {
    let env = Env::start("pk-allow").await?;
    let polkit = Polkit::start(&env.bus.address, &env.scratch.path, "").await?;
    let status = env.client().await?.status().await?;
    ensure!(
        status.authorization == "polkit",
        "status shows polkit deciding: {status:?}"
    );
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "mounts", &WatchOptions::new().path(dir(&env)))
        .await?;
    let mut events = sub.into_events();
    let target = env.scratch.join("pk");
    mounts::tmpfs(&target, "pk", "size=1m")?;
    expect_mount(&mut events, mount::ATTACH, &target).await?;
    ensure!(
        env.daemon.log().contains(&format!("uid={OTHER_UID}")),
        "the decision is logged with the uid"
    );
    drop(polkit);
    Ok(())
}

async fn polkit_rule_denies() -> Result<()> {
    let env = Env::start("pk-deny").await?;
    let denied_user = user_name(TEST_UID)?;
    let rules = format!(
        "polkit.addRule(function(action, subject) {{
            if (action.id == '{WATCH_MOUNTS}' && subject.user == '{denied_user}') return polkit.Result.NO;
        }});"
    );
    let _polkit = Polkit::start(&env.bus.address, &env.scratch.path, &rules).await?;
    let (denied, _h1) = client_as(&env, TEST_UID).await?;
    expect_denied(
        add_mounts_watch(&env, &denied, WatchOptions::new()).await,
        WATCH_MOUNTS,
    )?;
    let (allowed, _h2) = client_as(&env, OTHER_UID).await?;
    add_mounts_watch(&env, &allowed, WatchOptions::new())
        .await
        .context("the rule names only uid 1001")?;
    let log = env.daemon.log();
    ensure!(
        log.lines().any(|l| l.contains(WATCH_MOUNTS)
            && l.contains(&format!("uid={TEST_UID}"))
            && l.contains("pid=")
            && l.contains(&dir(&env))
            && l.contains("denied")),
        "the refusal is logged with uid, pid, action, object and result:\n{log}"
    );
    Ok(())
}

async fn auth_admin_refused() -> Result<()> {
    let env = Env::start("pk-admin").await?;
    let rules = format!(
        "polkit.addRule(function(action, subject) {{
            if (action.id == '{WATCH_MOUNTS}' && subject.user != 'root') return polkit.Result.AUTH_ADMIN;
        }});"
    );
    let _polkit = Polkit::start(&env.bus.address, &env.scratch.path, &rules).await?;
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    let text = expect_denied(
        add_mounts_watch(&env, &client, WatchOptions::new()).await,
        WATCH_MOUNTS,
    )?;
    ensure!(
        text.contains("ALLOW_INTERACTIVE_AUTHORIZATION"),
        "says how to be asked: {text}"
    );
    // With the flag there is still no authentication agent: refused, cleanly.
    let text = expect_denied(
        add_mounts_watch(&env, &client, WatchOptions::new().interactive(true)).await,
        WATCH_MOUNTS,
    )?;
    ensure!(
        !text.contains("ALLOW_INTERACTIVE_AUTHORIZATION"),
        "a different reason: {text}"
    );
    // Root needs no authentication, and the daemon still serves.
    add_mounts_watch(&env, &env.client().await?, WatchOptions::new()).await?;
    Ok(())
}

async fn polkitd_stopped_fallback() -> Result<()> {
    let env = Env::start("pk-stop").await?;
    let rules = format!(
        "polkit.addRule(function(action, subject) {{
            if (action.id == '{WATCH_MOUNTS}') return polkit.Result.NO;
        }});"
    );
    let polkit = Polkit::start(&env.bus.address, &env.scratch.path, &rules).await?;
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    expect_denied(
        add_mounts_watch(&env, &client, WatchOptions::new()).await,
        WATCH_MOUNTS,
    )?;
    polkit.stop();
    let root = env.client().await?;
    let mut status = root.status().await?;
    for _ in 0..100 {
        if status.authorization.starts_with("fallback") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = root.status().await?;
    }
    ensure!(
        status.authorization.starts_with("fallback"),
        "status says the fallback decides: {status:?}"
    );
    // watch-mounts defaults to yes for anyone: the same request now passes.
    add_mounts_watch(&env, &client, WatchOptions::new())
        .await
        .context("the fallback allows watch-mounts")?;
    ensure!(
        env.daemon.log().contains("Fallback"),
        "the log says who decided"
    );
    Ok(())
}

async fn forced_polkit_mode() -> Result<()> {
    let env = Env::start_with_config("pk-forced", "[authorization]\nmode = \"polkit\"\n").await?;
    let status = env.client().await?.status().await?;
    ensure!(status.authorization.contains("forced"), "{status:?}");
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    expect_denied(
        add_mounts_watch(&env, &client, WatchOptions::new()).await,
        "polkit",
    )?;
    Ok(())
}

/// `scratch/private/<name>`, where `private` is root's alone (0700): root reaches `name`,
/// nobody else does.
fn root_only_dir(env: &Env, name: &str) -> Result<std::path::PathBuf> {
    let private = env.scratch.join("private");
    std::fs::create_dir_all(private.join(name))?;
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    Ok(private.join(name))
}

async fn unreachable_path() -> Result<()> {
    let env = Env::start("unreachable").await?;
    let inner = root_only_dir(&env, "inner")?.to_str().unwrap().to_owned();
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    expect_denied(
        sub.add_watch(1, "mounts", &WatchOptions::new().path(inner.clone()))
            .await,
        "may not reach",
    )?;
    // Root can reach it: the check was made as the caller, not as the daemon.
    let root_sub = env
        .client()
        .await?
        .subscribe(SubscribeOptions::default())
        .await?;
    root_sub
        .add_watch(1, "mounts", &WatchOptions::new().path(inner))
        .await?;
    // A path that does not exist is NotFound, for the caller as for root.
    let missing = env.scratch.join("missing").to_str().unwrap().to_owned();
    let result = sub
        .add_watch(2, "mounts", &WatchOptions::new().path(missing))
        .await;
    ensure!(error_name(result)? == "org.watchd.Watchd1.Error.NotFound");
    Ok(())
}

async fn planted_symlinks() -> Result<()> {
    let env = Env::start("symlinks").await?;
    let secret = root_only_dir(&env, "secret")?;
    let open = env.scratch.join("open");
    std::fs::create_dir_all(&open)?;
    std::os::unix::fs::symlink(secret, open.join("to-secret"))?;
    // Resolved by a daemon thread, /proc/self/root would be the daemon's root.
    std::os::unix::fs::symlink("/proc/self/root/etc", open.join("magic"))?;
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    for (tag, link, needle) in [
        (1, "to-secret", "may not reach"),
        (2, "magic", "outside the caller's root"),
    ] {
        let path = open.join(link).to_str().unwrap().to_owned();
        expect_denied(
            sub.add_watch(tag, "mounts", &WatchOptions::new().path(path))
                .await,
            needle,
        )
        .with_context(|| format!("symlink {link}"))?;
    }
    Ok(())
}

async fn not_your_subscription() -> Result<()> {
    let env = Env::start("not-yours").await?;
    let (owner, _h1) = client_as(&env, OTHER_UID).await?;
    let sub = owner.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "mounts", &WatchOptions::new().path(dir(&env)))
        .await?;
    let (intruder, _h2) = client_as(&env, TEST_UID).await?;
    let conn = intruder.connection();
    let call = |method: &'static str| {
        let path = sub.path().to_owned();
        async move {
            let result = match method {
                "AddWatch" => {
                    let options = std::collections::HashMap::<&str, zbus::Variant<'_>>::new();
                    conn.call_method(
                        Some("org.watchd.Watchd1"),
                        &path,
                        Some("org.watchd.Watchd1.Subscription"),
                        method,
                        &(2u64, "mounts", options),
                    )
                    .await
                }
                _ => {
                    conn.call_method(
                        Some("org.watchd.Watchd1"),
                        &path,
                        Some("org.watchd.Watchd1.Subscription"),
                        method,
                        &(1u64,),
                    )
                    .await
                }
            };
            match result {
                Err(zbus::Error::MethodError(name, message, _)) => {
                    Ok((name.to_string(), message.unwrap_or_default()))
                }
                other => bail!("{method} by another uid should be refused, got {other:?}"),
            }
        }
    };
    for method in ["AddWatch", "RemoveWatch", "Resync"] {
        let (name, message) = call(method).await?;
        ensure!(
            name == DENIED
                && message.contains("belongs to another user")
                && !message.contains(&OTHER_UID.to_string()),
            "{method}: refused, without naming the owner: {name}: {message}"
        );
    }
    ensure!(owner.status().await?.watches == 1, "nothing changed");
    Ok(())
}

/// The bus vouches for the uid that connected; if the process behind the connection is
/// someone else by the time it calls (a reused pid looks exactly like this), the daemon must
/// not describe that someone else's namespace, root or groups as the caller's.
async fn identity_changed() -> Result<()> {
    let env = Env::start("identity").await?;
    // Connects as root (the pre-exec connect runs before setpriv), then becomes uid 1000.
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid",
            &OTHER_UID.to_string(),
            "--regid",
            &OTHER_UID.to_string(),
            "--clear-groups",
            "sleep",
            "300",
        ])
        .stdin(Stdio::null());
    let (conn, holder) = watchd_e2e::polkit::connect_from(&env.bus.address, command, 0).await?;
    let switched = || -> Result<bool> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", holder.pid()))?;
        Ok(status.lines().any(|l| {
            l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some(&OTHER_UID.to_string())
        }))
    };
    watchd_e2e::wait_until(Duration::from_secs(5), "setpriv to switch uid", switched)?;
    let client = Client::from_connection(conn);
    let text = expect_denied(
        add_mounts_watch(&env, &client, WatchOptions::new()).await,
        "not the caller any more",
    )
    .with_context(|| env.daemon.log())?;
    ensure!(text.contains(&format!("uid {OTHER_UID}")), "{text}");
    ensure!(client.status().await?.watches == 0, "nothing was set up");
    Ok(())
}

/// Lines from a child's stdout, on a thread.
async fn namespace_isolation() -> Result<()> {
    let env = Env::start("namespaces").await?;
    let dir = dir(&env);
    // A client in a mount namespace of its own ("a container").
    let mut contained = Command::new("unshare");
    contained
        .args(["--mount", "--propagation", "private", "--"])
        .arg(watchd_e2e::watchctl_bin())
        .args([
            "--bus-address",
            &env.bus.address,
            "watch",
            "mounts",
            "--json",
            "--path",
            &dir,
        ])
        .stdout(Stdio::piped());
    let mut contained = Process::spawn(contained, "watchctl in its own mount namespace")?;
    let contained_lines = watchd_e2e::stdout_lines(&mut contained);
    // A client in the test's (the "host's") namespace.
    let mut host = env.watch_scratch(1, WatchOptions::new()).await?;
    let root = env.client().await?;
    for _ in 0..500 {
        if root.status().await?.watches == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(
        root.status().await?.watches == 2,
        "the contained client did not set its watch"
    );

    // A mount in the container's namespace: only the contained client hears of it.
    let inside = env.scratch.join("inside");
    std::fs::create_dir_all(&inside)?;
    let status = Command::new("nsenter")
        .args([
            "-t",
            &contained.pid().to_string(),
            "-m",
            "--",
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "container",
        ])
        .arg(&inside)
        .status()?;
    ensure!(status.success(), "mount inside the client's namespace");
    let line = contained_lines
        .recv_timeout(Duration::from_secs(10))
        .context("the contained client saw nothing")?;
    let v: serde_json::Value = serde_json::from_str(&line)?;
    ensure!(
        v["event"] == "attach"
            && v["source"] == "container"
            && v["mount_point"] == inside.to_str().unwrap(),
        "{line}"
    );
    expect_silence(&mut host, Duration::from_millis(300))
        .await
        .context("the host client must not see the container's mount")?;

    // A mount in the host's namespace: only the host client hears of it.
    let outside = env.scratch.join("outside");
    mounts::tmpfs(&outside, "host", "size=1m")?;
    expect_mount(&mut host, mount::ATTACH, &outside).await?;
    if let Ok(line) = contained_lines.recv_timeout(Duration::from_millis(300)) {
        bail!("the contained client saw a host mount: {line}");
    }
    Ok(())
}
