//! The pipe page budget. The daemon is root: pipes it made as root would count against
//! root's `fs.pipe-user-pages-soft`, and past it every root service without CAP_SYS_ADMIN or
//! CAP_SYS_RESOURCE gets 8 KiB pipes. So a subscriber's pipes are charged to its own uid,
//! also when the client grows them, one uid may hold only its share, and the daemon only
//! its total.
//!
//! Every test here runs in parallel with the others, all as root, sharing root's pipe
//! accounting: the assertions are on the daemon's own accounting, on what a root process
//! without the exempting capabilities gets, and on the pages charged to a uid nothing else
//! uses; the pages held stay far below the limit.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::fcntl::{FcntlArg, fcntl};
use watchd_client::{Client, SubscribeOptions, Subscription};
use watchd_e2e::polkit::{OTHER_UID, TEST_UID, connect_as_user};
use watchd_e2e::{Env, Trial};

use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "pipe_budget::one_uid_is_refused_at_its_share_and_root_services_keep_full_pipes",
            one_uid_is_refused_at_its_share,
        ),
        trial(
            "pipe_budget::the_daemons_budget_bounds_all_uids_together",
            the_daemons_budget_bounds_all_uids,
        ),
        trial(
            "pipe_budget::a_subscribers_pipes_count_against_its_own_uid_even_grown_by_the_client",
            pipes_are_charged_to_the_subscriber,
        ),
    ]
}

/// The largest depth: 256 packets, 256 pages, 1 MiB.
const DEPTH: u32 = 256;
/// The default `limits.max_pipe_pages_per_uid`.
const PER_UID: u32 = 1024;
/// More tries than the budget allows, few enough that a daemon without a budget stays far
/// below root's soft limit (16384 pages) while the test finds out.
const TRIES: u32 = 8;

const LIMIT_EXCEEDED: &str = "org.watchd.Watchd1.Error.LimitExceeded";

/// Subscribes at [`DEPTH`] until refused, [`TRIES`] times at most; returns what was granted
/// and the refusal's message.
async fn subscribe_until_refused(client: &Client) -> Result<(Vec<Subscription>, String)> {
    let mut held = Vec::new();
    for _ in 0..TRIES {
        match client
            .subscribe(SubscribeOptions { depth: Some(DEPTH) })
            .await
        {
            Ok(sub) => held.push(sub),
            Err(watchd_client::Error::Daemon { name, message }) if name == LIMIT_EXCEEDED => {
                return Ok((held, message));
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!(
        "{TRIES} subscriptions of {DEPTH} pages ({} pages) were all granted: no pipe page budget",
        TRIES * DEPTH
    )
}

/// The refusal names the budget, the usage and the configuration key.
fn expect_in(refusal: &str, parts: &[String]) -> Result<()> {
    for part in parts {
        ensure!(
            refusal.contains(part.as_str()),
            "{refusal:?} lacks {part:?}"
        );
    }
    Ok(())
}

fn pipe_pages(sub: &Subscription) -> Result<u32> {
    Ok(fcntl(sub.pipe(), FcntlArg::F_GETPIPE_SZ)? as u32 / 4096)
}

async fn one_uid_is_refused_at_its_share() -> Result<()> {
    let env = Env::start("pipe-budget-uid").await?;
    let (conn, _holder) = connect_as_user(&env.bus.address, OTHER_UID).await?;
    let client = Client::from_connection(conn);
    let (held, refusal) = subscribe_until_refused(&client).await?;
    ensure!(
        held.len() as u32 == PER_UID / DEPTH,
        "uid {OTHER_UID} was refused after {} subscriptions of {DEPTH} pages, not {}: {refusal}",
        held.len(),
        PER_UID / DEPTH
    );
    for sub in &held {
        ensure!(
            pipe_pages(sub)? == DEPTH,
            "a granted pipe holds {} pages, not the {DEPTH} asked",
            pipe_pages(sub)?
        );
    }
    expect_in(
        &refusal,
        &[
            format!("uid {OTHER_UID}'s subscriptions hold {PER_UID} pipe pages"),
            format!("depth {DEPTH} takes {DEPTH} more"),
            format!("budget of {PER_UID} pages (limits.max_pipe_pages_per_uid)"),
        ],
    )?;
    let log = env.daemon.log();
    ensure!(
        log.lines().any(|l| l.contains("pipe page budget")
            && l.contains(&format!("uid={OTHER_UID}"))
            && l.contains(&format!("pages={DEPTH}"))
            && l.contains(&format!("used={PER_UID}"))),
        "no refusal with uid, pages asked and used in the daemon's log:\n{log}"
    );

    // With uid 1000 at its share, a root process that lacks the capabilities the kernel
    // exempts still gets a full pipe and may grow it to the largest size.
    let unprivileged = unprivileged_root_pipe()?;
    ensure!(
        unprivileged == "65536 1048576",
        "a root process without CAP_SYS_ADMIN and CAP_SYS_RESOURCE got pipe sizes {unprivileged:?}, not 65536 then 1048576"
    );

    // Closing the pipes gives the pages back: the daemon sees each reader go on its own.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        match client
            .subscribe(SubscribeOptions { depth: Some(DEPTH) })
            .await
        {
            Ok(sub) => break sub,
            Err(e) if Instant::now() < deadline && e.dbus_name() == Some(LIMIT_EXCEEDED) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("the budget did not come back after the pipes closed: {e}"),
        }
    };
    ensure!(pipe_pages(&again)? == DEPTH);
    Ok(())
}

/// `F_GETPIPE_SZ` of a new pipe, then after `F_SETPIPE_SZ` to 1 MiB, as a root process with
/// CAP_SYS_ADMIN and CAP_SYS_RESOURCE gone from every set (a service the kernel does not
/// exempt from root's soft limit). Fails if the process still has either capability.
fn unprivileged_root_pipe() -> Result<String> {
    const SCRIPT: &str = r#"
import fcntl, os
status = dict(l.split(':\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\t' in l)
exempting = (1 << 21) | (1 << 24)  # CAP_SYS_ADMIN, CAP_SYS_RESOURCE
for key in ('CapEff', 'CapPrm', 'CapInh', 'CapAmb'):
    assert int(status[key], 16) & exempting == 0, f'{key} {status[key]}'
assert os.geteuid() == 0
r, w = os.pipe()
before = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
print(before, fcntl.fcntl(w, fcntl.F_GETPIPE_SZ))
"#;
    // Root gains every bounding-set capability at exec (and keeps inheritable ones): both
    // must go for the kernel to treat the process as unprivileged.
    let output = Command::new("setpriv")
        .args([
            "--inh-caps=-sys_admin,-sys_resource",
            "--bounding-set=-sys_admin,-sys_resource",
            "--",
            "/usr/bin/python3",
            "-c",
            SCRIPT,
        ])
        .output()
        .context("setpriv and /usr/bin/python3")?;
    ensure!(
        output.status.success(),
        "the unprivileged root process failed (EPERM from F_SETPIPE_SZ: root is past its soft limit): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

async fn the_daemons_budget_bounds_all_uids() -> Result<()> {
    let total = PER_UID + PER_UID / 2;
    let env = Env::start_with_config(
        "pipe-budget-total",
        &format!("[limits]\nmax_pipe_pages = {total}\n"),
    )
    .await?;
    let (first_conn, _first) = connect_as_user(&env.bus.address, OTHER_UID).await?;
    let (second_conn, _second) = connect_as_user(&env.bus.address, TEST_UID).await?;
    let (first, _) = subscribe_until_refused(&Client::from_connection(first_conn)).await?;
    ensure!(
        first.len() as u32 == PER_UID / DEPTH,
        "uid {OTHER_UID}'s share"
    );
    let (second, refusal) = subscribe_until_refused(&Client::from_connection(second_conn)).await?;
    let mine = (total - PER_UID) / DEPTH;
    ensure!(
        second.len() as u32 == mine,
        "uid {TEST_UID}, under its own share, got {} subscriptions where the daemon had room for {mine}: {refusal}",
        second.len()
    );
    expect_in(
        &refusal,
        &[
            format!(
                "the daemon's subscriptions hold {total} pipe pages (uid {TEST_UID}: {})",
                mine * DEPTH
            ),
            format!("budget of {total} pages (limits.max_pipe_pages)"),
        ],
    )?;
    let held: u32 = first
        .iter()
        .chain(&second)
        .map(|s| pipe_pages(s).unwrap_or(0))
        .sum();
    ensure!(
        held == total,
        "the granted pipes hold {held} pages, the budget is {total}"
    );
    Ok(())
}

/// `nobody`: the bus lets only users with a name connect, and nothing else in the suite (nor,
/// on a test machine, anything else) makes pipes as it, so the pages charged to it are this
/// test's alone.
const LONE_UID: u32 = 65534;

async fn pipes_are_charged_to_the_subscriber() -> Result<()> {
    let env = Env::start("pipe-budget-charge").await?;
    let (conn, _holder) = connect_as_user(&env.bus.address, LONE_UID).await?;
    let client = Client::from_connection(conn);
    let mut held = Vec::new();
    for _ in 0..PER_UID / DEPTH {
        held.push(
            client
                .subscribe(SubscribeOptions { depth: Some(2) })
                .await?,
        );
    }
    // The client holds the read end and may grow it past what the daemon granted and
    // counted. Who grows it decides only whether the kernel allows it, not whom it charges.
    for sub in &held {
        fcntl(sub.pipe(), FcntlArg::F_SETPIPE_SZ(1 << 20))?;
        ensure!(pipe_pages(sub)? == DEPTH);
    }
    let Some(charged) = pages_charged_to(LONE_UID)? else {
        eprintln!("SKIP the charge check: fs.pipe-user-pages-soft is 0 or too large to fill");
        return Ok(());
    };
    ensure!(
        (PER_UID..PER_UID + 16).contains(&charged),
        "uid {LONE_UID} is charged {charged} pipe pages (to within 16 pages under that), not the \
         {PER_UID} its pipes hold: they are charged to another user (root?)"
    );
    Ok(())
}

/// The pipe pages the kernel counts against `uid`, to within 16 pages under the figure
/// returned: a process of that uid without capabilities makes default (16-page) pipes until
/// the kernel shrinks one, which it does once the uid's total would pass the soft limit.
/// `None` when there is no soft limit, or one too large to fill here.
fn pages_charged_to(uid: u32) -> Result<Option<u32>> {
    const SCRIPT: &str = r#"
import fcntl, os
status = dict(l.split(':\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\t' in l)
assert int(status['CapEff'], 16) == 0, status['CapEff']
soft = int(open('/proc/sys/fs/pipe-user-pages-soft').read())
if soft == 0 or soft > 65536:
    print('none')
    raise SystemExit
pipes = []
while True:
    r, w = os.pipe()
    pipes.append((r, w))
    if fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) < 65536:
        break
print(soft - 16 * (len(pipes) - 1))
"#;
    // Two descriptors a pipe, for as many pipes as a soft limit of 65536 pages takes.
    let output = Command::new("prlimit")
        .arg("--nofile=9000:9000")
        .arg("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "--", "/usr/bin/python3", "-c", SCRIPT])
        .output()
        .context("prlimit, setpriv and /usr/bin/python3")?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    ensure!(
        output.status.success(),
        "the pipe probe as uid {uid} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    if stdout == "none" {
        return Ok(None);
    }
    Ok(Some(
        stdout
            .parse()
            .with_context(|| format!("probe said {stdout:?}"))?,
    ))
}
