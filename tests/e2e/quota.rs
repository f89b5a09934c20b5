//! The `quota` kind: the kernel's quota warnings (generic netlink family VFS_DQUOT), and
//! usage thresholds before `EDQUOT` (quotactl_fd(2)).
//!
//! On this machine (quotas in its kernel, but no quota format, so no filesystem with
//! quotas; the family registered): the kind starts and says where its warnings and
//! readings come from (or, on a kernel without either, is listed as unavailable with why),
//! a user's own watch is accepted when the administrator allows `watch-superblock`, `all`
//! needs `watch-other-users-quota` (refused to uid 1000, allowed to root), and bad options
//! (thresholds included) get clear errors.
//!
//! In the VM (`watchd_e2e::vm`, a kernel built with ext4, quotas and their netlink
//! interface): `watchd-vm-probe --quota` mounts an ext4 image with quotas, sets limits, and
//! checks what each subscriber gets when uid 1000 writes past its soft and hard limits, then
//! what the thresholds say when it writes close to hard limits without reaching them (see
//! tests/probe/quota_vm.rs).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use watchd_client::{Client, SubscribeOptions, WatchOptions};
use watchd_e2e::polkit::{OTHER_UID, connect_as_user};
use watchd_e2e::{Env, Scratch, Trial, vm};

use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "quota::the_kind_starts_where_the_kernel_has_the_family_or_says_why_not",
            kind_starts,
        ),
        trial(
            "quota::a_users_own_watch_is_accepted_and_all_needs_an_administrator",
            authorization,
        ),
        trial("quota::bad_options_get_clear_errors", bad_options),
        Trial::test(
            "quota::warnings_reach_only_the_users_they_concern_in_a_vm",
            || in_a_vm().map_err(|e| format!("{e:#}").into()),
        ),
    ]
}

/// The daemon's configuration: decisions from `actions`, never polkitd.
fn config(actions: &Path) -> String {
    format!(
        "[sources]\ndevices = false\n\n[authorization]\nmode = \"fallback\"\nactions_file = \"{}\"\n",
        actions.display()
    )
}

/// watchd's actions file with `watch-superblock` allowed to any user, written in `scratch`.
fn superblock_for_everyone(scratch: &Scratch) -> Result<std::path::PathBuf> {
    let shipped = std::fs::read_to_string(watchd_e2e::polkit::actions_file())?;
    let start = shipped
        .find("<action id=\"org.watchd.Watchd1.watch-superblock\">")
        .context("no watch-superblock action")?;
    let end = start + shipped[start..].find("</action>").context("unclosed")?;
    let action = shipped[start..end].replace(
        "<allow_any>auth_admin</allow_any>",
        "<allow_any>yes</allow_any>",
    );
    let path = scratch.join("actions.policy");
    std::fs::write(
        &path,
        format!("{}{action}{}", &shipped[..start], &shipped[end..]),
    )?;
    Ok(path)
}

async fn add(client: &Client, options: WatchOptions) -> Result<(), String> {
    let sub = client
        .subscribe(SubscribeOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    sub.add_watch(1, "quota", &options)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Whether the daemon lists the kind as unavailable (`kind_starts` says why).
async fn unavailable(env: &Env) -> Result<bool> {
    Ok(env
        .client()
        .await?
        .status()
        .await?
        .source_details
        .get("quota")
        .is_some_and(|d| d.starts_with("unavailable")))
}

async fn kind_starts() -> Result<()> {
    let env = Env::start_with_config("quota-kind", "[sources]\ndevices = false\n").await?;
    let status = env.client().await?.status().await?;
    let described = status
        .source_details
        .get("quota")
        .context("status lists no quota source")?;
    // What this kernel has, asked the same way the daemon asks.
    let readings = watchd::sys::quotactl_fd_probe().is_ok();
    match watchd::sources::quota::join_events()? {
        Ok((_, family, group)) => {
            ensure!(
                described.contains("VFS_DQUOT")
                    && described.contains(&format!("id {}", family.id))
                    && described.contains(&format!("({group})")),
                "the kernel has VFS_DQUOT (id {}, group {group}); status says {described:?}",
                family.id
            );
        }
        Err(why) => {
            ensure!(
                described.starts_with(if readings {
                    "no kernel warnings"
                } else {
                    "unavailable"
                }) && described.contains("VFS_DQUOT"),
                "the kernel has no quota family ({why}); status says {described:?}"
            );
        }
    }
    let thresholds = if readings {
        "usage thresholds: quotactl_fd(2) of each watcher's own user and group quotas"
    } else {
        "no usage thresholds: "
    };
    ensure!(
        described.contains(thresholds),
        "quotactl_fd(2) is {}here; status says {described:?}",
        if readings { "" } else { "not " }
    );
    println!("quota: {described}");
    Ok(())
}

async fn authorization() -> Result<()> {
    let scratch = Scratch::new("quota-authorization")?;
    let actions = superblock_for_everyone(&scratch)?;
    let env = Env::start_with_config("quota-auth", &config(&actions)).await?;
    if unavailable(&env).await? {
        return Ok(()); // kind_starts says why; nothing here can be set
    }
    let (conn, _holder) = connect_as_user(&env.bus.address, OTHER_UID).await?;
    let user = Client::from_connection(conn);
    add(&user, WatchOptions::new())
        .await
        .map_err(|e| anyhow::anyhow!("uid 1000's own quota watch: {e}"))?;
    let refused = add(&user, WatchOptions::new().option("all", true))
        .await
        .err()
        .context("uid 1000's all watch was accepted")?;
    ensure!(
        refused.contains("AccessDenied") && refused.contains("watch-other-users-quota"),
        "uid 1000's all watch: {refused}"
    );
    // all=false is the user's own watch.
    add(&user, WatchOptions::new().option("all", false))
        .await
        .map_err(|e| anyhow::anyhow!("uid 1000's all=false watch: {e}"))?;
    let root = env.client().await?;
    add(&root, WatchOptions::new().option("all", true))
        .await
        .map_err(|e| anyhow::anyhow!("root's all watch: {e}"))?;

    // The shipped defaults, without polkitd: watch-superblock is for administrators.
    let default = Env::start_with_config(
        "quota-default",
        &config(&watchd_e2e::polkit::actions_file()),
    )
    .await?;
    let (conn, _holder) = connect_as_user(&default.bus.address, OTHER_UID).await?;
    let refused = add(&Client::from_connection(conn), WatchOptions::new())
        .await
        .err()
        .context("uid 1000's own watch was accepted under the shipped defaults")?;
    ensure!(
        refused.contains("watch-superblock"),
        "uid 1000's own watch, shipped defaults: {refused}"
    );
    Ok(())
}

async fn bad_options() -> Result<()> {
    let env = Env::start_with_config("quota-options", "[sources]\ndevices = false\n").await?;
    if unavailable(&env).await? {
        return Ok(());
    }
    let root = env.client().await?;
    let wrong_type = add(&root, WatchOptions::new().option("all", "yes"))
        .await
        .err()
        .context("all=\"yes\" was accepted")?;
    ensure!(
        wrong_type.contains("InvalidArgument")
            && wrong_type.contains("option 'all' must be of type 'b', not 's'"),
        "all as a string: {wrong_type}"
    );
    let unknown = add(&root, WatchOptions::new().option("uid", 1000u32))
        .await
        .err()
        .context("option uid was accepted")?;
    ensure!(
        unknown.contains("'uid'") && unknown.contains("all") && unknown.contains("inodes_below"),
        "an unknown option: {unknown}"
    );
    if watchd::sys::quotactl_fd_probe().is_err() {
        let refused = add(&root, WatchOptions::new().option("below", "20%"))
            .await
            .err()
            .context("thresholds were accepted without quotactl_fd(2)")?;
        ensure!(
            refused.contains("NotSupported") && refused.contains("quotactl_fd"),
            "thresholds without quotactl_fd(2): {refused}"
        );
        return Ok(());
    }
    for (options, expected) in [
        (
            WatchOptions::new().option("below", "110%"),
            "option 'below': '110%' is not a percentage from 0 to 100",
        ),
        (
            WatchOptions::new().option("inodes_step", "many"),
            "option 'inodes_step': 'many' is neither a percentage",
        ),
        (
            WatchOptions::new()
                .option("below", "none")
                .option("step", "5%"),
            "option 'step' means nothing with 'below' \"none\"",
        ),
        (
            WatchOptions::new().option("min_interval_s", "600"),
            "option 'min_interval_s' must be of type 'u', not 's'",
        ),
    ] {
        let refused = add(&root, options)
            .await
            .err()
            .with_context(|| format!("accepted; expected {expected:?}"))?;
        ensure!(
            refused.contains("InvalidArgument") && refused.contains(expected),
            "expected {expected:?}: {refused}"
        );
    }
    add(
        &root,
        WatchOptions::new()
            .option("below", "512M")
            .option("inodes_below", "none")
            .option("min_interval_s", 0u32),
    )
    .await
    .map_err(|e| anyhow::anyhow!("valid thresholds were refused: {e}"))?;
    Ok(())
}

/// Every check `watchd-vm-probe --quota` makes; each must print `ok NAME`.
const VM_CHECKS: &[&str] = &[
    "status",
    "filesystem",
    "subscribed",
    "all refused to uid 1000",
    "written",
    "uid 1000's own warnings",
    "uid 1001 got group 3000's warnings only, without who caused them",
    "root's all watch",
    "the kernel's bytes",
    "uid 1000's quota_low before its hard limit",
    "a watch set while low starts with a snapshot quota_low",
    "uid 1000's thresholds without kernel warnings",
    "uid 1001 got group 3000's thresholds only",
    "an unmount ends a low quota with quota_recovered, and no watch kept it busy",
    "limits counted but not enforced give no threshold record",
];

fn in_a_vm() -> Result<()> {
    let probe = Path::new(env!("CARGO_BIN_EXE_watchd-vm-probe"));
    let watchd = watchd_e2e::fresh_watchd()?;
    let Some(mkfs) = vm::or_skip(
        "quota",
        watchd_e2e::tool("mkfs.ext4", "e2fsprogs", "e2fsprogs"),
    )?
    else {
        return Ok(());
    };
    let scratch = Scratch::new("quota-vm")?;
    let image = scratch.join("quota.img");
    std::fs::File::create(&image)?.set_len(4 << 20)?;
    let made = Command::new(mkfs)
        .args(["-q", "-F", "-O", "quota,^has_journal", "-E"])
        .arg("quotatype=usrquota:grpquota")
        .arg(&image)
        .output()?;
    ensure!(
        made.status.success(),
        "mkfs.ext4 -O quota: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let bytes = std::fs::read(&image)?;
    let Some(out) = vm::or_skip(
        "quota",
        vm::run_daemon_probe_with(probe, &watchd, &["--quota"], &[("/quota.img", &bytes)]),
    )?
    else {
        return Ok(());
    };
    eprintln!(
        "quota: the VM ({}) ran dbus-daemon, watchd, four subscribers and the writes in {:.1?}",
        out.accel, out.elapsed
    );
    for line in out.output.lines().filter(|l| l.starts_with("bytes ")) {
        println!("quota: {line}");
    }
    out.expect_checks("quota", VM_CHECKS)
}
