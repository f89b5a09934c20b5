//! The Debian package on a booted systemd (issue 13 item 3): a Debian 12 container
//! (`systemd-nspawn -b`, the root from `nspawn::root`) with the system dbus-daemon, logind
//! and a bus-activated polkitd. The package is installed with dpkg, the unit enabled and
//! started with systemctl, and real clients (`watchctl`, `busctl`) as root and as an
//! ordinary user use the system bus, each step failing with what it expected.
//!
//! What comes from where: mounts are made in the container's own mount namespace, which
//! the clients share; device events are the host kernel's uevents for a loop device this
//! test attaches on the host and changes (`change` written to its `uevent` file), because
//! the container has neither /dev/loop-control nor a writable /sys (so no udevd, and
//! `udevadm trigger` cannot write there): the daemon reads kernel uevents, as it does in
//! any container, and the container shares the host's network namespace, where they are
//! multicast. After the restart, `watchctl watch --reconnect` subscribes again by itself.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use watchd_e2e::nspawn::{self, Container, Step, wait_for_exit, wait_for_line};
use watchd_e2e::{Scratch, Trial, repo};

use crate::packaging;
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![trial(
        "booted::the_package_on_a_booted_debian_12_serves_the_system_bus",
        package_on_booted_systemd,
    )]
}

/// The ordinary user made in the container.
const USER: &str = "alice";
/// Where the test mounts a tmpfs in the container.
const MOUNT_POINT: &str = "/mnt/booted";
/// How long a client may take to print what it was sent.
const SEEN: Duration = Duration::from_secs(10);
/// The highest exposure `systemd-analyze security` may give the running unit.
const MAX_EXPOSURE: f64 = 4.5;
const MANAGER: [&str; 3] = [
    "org.watchd.Watchd1",
    "/org/watchd/Watchd1",
    "org.watchd.Watchd1.Manager",
];

/// A loop device attached on the host for this test, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Result<Loop> {
        std::fs::write(file, vec![0u8; 1 << 20])?;
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .context("losetup (util-linux)")?;
        ensure!(
            out.status.success(),
            "losetup --find --show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Loop(String::from_utf8(out.stdout)?.trim().to_owned()))
    }

    fn name(&self) -> &str {
        self.0.trim_start_matches("/dev/")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["--detach", &self.0])
            .status();
    }
}

async fn package_on_booted_systemd() -> Result<()> {
    if packaging::tool("make", &["--version"], "make")?.is_none()
        || packaging::tool(
            "cargo",
            &["deb", "--version"],
            "cargo install cargo-deb --locked",
        )?
        .is_none()
    {
        return Ok(());
    }
    let _one = nspawn::one_at_a_time();
    let started = Instant::now();
    let Some(root) = nspawn::or_skip("booted", nspawn::root())? else {
        return Ok(());
    };
    println!("booted: root ready after {:.0?}", started.elapsed());
    let scratch = Scratch::new("booted")?;
    let share = scratch.join("share");
    std::fs::create_dir_all(&share)?;
    packaging::build_deb(&share.join("watchd.deb")).step("make deb")?;
    println!("booted: package built after {:.0?}", started.elapsed());

    let name = format!("watchd-booted-{}", std::process::id());
    let mut c = Container::boot(
        &name,
        &root,
        &scratch.path,
        &[format!("--bind-ro={}:/srv/watchd-test", share.display())],
    )
    .step("boot the container")?;
    let result = steps(&mut c, &scratch.path);
    let outcome = result
        .map_err(|e| anyhow::anyhow!("{e:#}\n\nnspawn and the console:\n{}", c.nspawn_output()));
    drop(c);
    println!("booted: done after {:.0?}", started.elapsed());
    outcome
}

/// `systemctl is-active watchd`.
fn active(c: &mut Container) -> Result<String> {
    let mut command = c.command(None, "systemctl");
    command.args(["is-active", "watchd"]);
    Ok(c.run(command, Duration::from_secs(30))?
        .stdout
        .trim()
        .to_owned())
}

fn main_pid(c: &mut Container) -> Result<u32> {
    let pid = c.ok(
        "the unit's MainPID",
        None,
        &[
            "systemctl",
            "show",
            "--property=MainPID",
            "--value",
            "watchd",
        ],
    )?;
    pid.trim().parse().context("MainPID")
}

/// Mounts a tmpfs named `source` at [`MOUNT_POINT`] in the container; each of `watchers`
/// (a client's output, who it is) must print its attach.
fn mount_seen(c: &mut Container, source: &str, watchers: &[(&Path, &str)]) -> Result<()> {
    c.ok(
        "mount a tmpfs",
        None,
        &["mount", "-t", "tmpfs", source, MOUNT_POINT],
    )?;
    for (out, who) in watchers {
        let source = format!("source={source}");
        wait_for_line(out, &["mount attach", MOUNT_POINT, &source], SEEN, who)?;
    }
    Ok(())
}

fn steps(c: &mut Container, dir: &Path) -> Result<()> {
    let manager = c.path("/run/systemd/private");
    watchd_e2e::wait_until(Duration::from_secs(60), "systemd's socket", || {
        Ok(manager.exists())
    })
    .step("boot: the container's systemd")?;
    let running = c.run(
        {
            let mut command = c.command(None, "systemctl");
            command.args(["is-system-running", "--wait"]);
            command
        },
        Duration::from_secs(90),
    )?;
    ensure!(
        running.stdout.trim() == "running",
        "step: boot: systemctl is-system-running says {:?} {:?}, not running; failed units:\n{}",
        running.stdout.trim(),
        running.stderr.trim(),
        c.ok(
            "list failed units",
            None,
            &["systemctl", "--failed", "--no-legend"]
        )?
    );

    // Install: dpkg, offline (the root has the dependencies). The package enables nothing.
    c.ok(
        "install the package",
        None,
        &["dpkg", "-i", "/srv/watchd-test/watchd.deb"],
    )
    .step("dpkg -i")?;
    let mut command = c.command(None, "systemctl");
    command.args(["is-enabled", "watchd"]);
    let enabled = c.run(command, Duration::from_secs(30))?.stdout;
    ensure!(
        enabled.trim() == "disabled",
        "step: after dpkg -i the unit should be disabled (bus activation starts it), is {enabled:?}"
    );
    ensure!(
        active(c)? == "inactive",
        "step: dpkg -i must not start watchd"
    );
    let polkit_before = {
        let mut command = c.command(None, "systemctl");
        command.args(["is-active", "polkit"]);
        c.run(command, Duration::from_secs(30))?.stdout
    };

    c.ok(
        "enable and start",
        None,
        &["systemctl", "enable", "--now", "watchd"],
    )
    .step("systemctl enable --now watchd")?;
    ensure!(
        active(c)? == "active",
        "step: systemctl enable --now: watchd is not active"
    );
    let pid = main_pid(c)?;
    let status = std::fs::read_to_string(c.path(&format!("/proc/{pid}/status")))?;
    ensure!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
        "step: the daemon runs without the unit's system call filter (Seccomp: 2 expected):\n{status}"
    );

    // statmount, listmount and fanotify under the shipped unit's filter.
    let details = c
        .ok("SourceDetails", None, &{
            let mut args = vec!["busctl", "get-property"];
            args.extend(MANAGER);
            args.push("SourceDetails");
            args
        })
        .step("busctl get-property SourceDetails")?;
    let mounts = details
        .split("\"mounts\" \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .with_context(|| format!("step: SourceDetails has no mounts entry: {details}"))?;
    ensure!(
        mounts.starts_with("fanotify mount events"),
        "step: statmount/listmount/fanotify under the unit's filter: the mount source says {mounts:?}, not \"fanotify mount events\" (the unit's SystemCallFilter= refuses them)"
    );
    // quotactl_fd(2) under the same filter: the quota kind's usage thresholds.
    let quota = details
        .split("\"quota\" \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .with_context(|| format!("step: SourceDetails has no quota entry: {details}"))?;
    ensure!(
        quota.contains("usage thresholds: quotactl_fd(2)"),
        "step: quotactl_fd under the unit's filter: the quota source says {quota:?} (the unit's SystemCallFilter= refuses it?)"
    );
    println!("booted: quota: {quota}");
    let status_text = c.ok("watchctl status", None, &["watchctl", "status"])?;
    ensure!(
        status_text.contains("mounts: fanotify mount events")
            && status_text.contains("authorization: polkit"),
        "step: watchctl status should say fanotify mount events and polkit:\n{status_text}"
    );
    println!("booted: mounts: {mounts}");

    // systemd-analyze security on the running unit.
    let security = c
        .ok(
            "systemd-analyze security",
            None,
            &[
                "systemd-analyze",
                "security",
                "--no-pager",
                "watchd.service",
            ],
        )
        .step("systemd-analyze security")?;
    let line = security
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .context("step: systemd-analyze security printed no exposure level")?;
    let exposure: f64 = line
        .split_once("watchd.service:")
        .and_then(|(_, s)| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("cannot read the exposure in {line:?}"))?;
    ensure!(
        exposure <= MAX_EXPOSURE,
        "step: systemd-analyze security rates the running unit {exposure}, above {MAX_EXPOSURE}:\n{security}"
    );
    println!("booted: {}", line.trim());

    // Clients as root and as an ordinary user on the system bus.
    c.ok("add the user", None, &["useradd", "--create-home", USER])?;
    c.ok("make the mount point", None, &["mkdir", "-p", MOUNT_POINT])?;
    let device = Loop::attach(&dir.join("loop.img")).step("attach a loop device on the host")?;
    let watch_mounts = [
        "watchctl",
        "watch",
        "mounts",
        "--path",
        MOUNT_POINT,
        "--initial",
    ];
    let root_out = dir.join("root-mounts.out");
    let user_out = dir.join("user-mounts.out");
    let devices_out = dir.join("user-devices.out");
    let mut root_mounts = c.spawn(None, &watch_mounts, &root_out, "root's watchctl")?;
    // The same watch, told to outlive a restart of the daemon.
    let reconnect_out = dir.join("root-reconnect.out");
    let mut root_reconnect = c.spawn(
        None,
        &[&watch_mounts[..], &["--reconnect"]].concat(),
        &reconnect_out,
        "root's watchctl --reconnect",
    )?;
    let mut user_mounts = c.spawn(Some(USER), &watch_mounts, &user_out, "the user's watchctl")?;
    let mut user_devices = c.spawn(
        Some(USER),
        &[
            "watchctl",
            "watch",
            "devices",
            "--subsystem",
            "block",
            "--sysname",
            device.name(),
            "--initial",
        ],
        &devices_out,
        "the user's device watchctl",
    )?;
    for (out, what) in [
        (&root_out, "root's mount watch"),
        (&user_out, "the user's mount watch"),
        (&devices_out, "the user's device watch"),
        (&reconnect_out, "root's mount watch with --reconnect"),
    ] {
        wait_for_line(out, &["snapshot complete"], SEEN, what).step("subscribe")?;
    }
    wait_for_line(
        &devices_out,
        &["[snapshot]", device.name()],
        SEEN,
        "the device snapshot",
    )
    .step("the user's initial devices")?;
    for user in [None, Some(USER)] {
        let reply = c
            .ok("busctl Subscribe", user, &{
                let mut args = vec!["busctl", "call"];
                args.extend(MANAGER);
                args.extend(["Subscribe", "a{sv}", "1", "depth", "u", "16"]);
                args
            })
            .with_context(|| format!("step: busctl call Subscribe as {user:?}"))?;
        ensure!(
            reply.starts_with("ho ") && reply.contains("/org/watchd/Watchd1/subscription/"),
            "step: busctl Subscribe as {user:?} replied {reply:?}"
        );
    }

    let watchers = [(&*root_out, "root"), (&*user_out, "the user")];
    mount_seen(c, "booted1", &watchers).step("a tmpfs mounted in the container")?;
    let uevent = format!("/sys/block/{}/uevent", device.name());
    std::fs::write(&uevent, "change").with_context(|| format!("writing {uevent}"))?;
    wait_for_line(
        &devices_out,
        &["device change", device.name()],
        SEEN,
        "the user",
    )
    .step("a device change")?;
    println!("booted: root and {USER} saw the mount, {USER} the device change");

    // polkit decides: the system polkitd, started by the bus for the first question.
    let polkit_after = c.ok("polkit", None, &["systemctl", "is-active", "polkit"])?;
    ensure!(
        polkit_before.trim() == "inactive" && polkit_after.trim() == "active",
        "step: polkitd should be started by the bus: before {polkit_before:?}, after {polkit_after:?}"
    );
    let mut command = c.command(Some(USER), "watchctl");
    command.args(["watch", "keys", "--uid", "0"]);
    let refused = c.run(command, Duration::from_secs(30))?;
    ensure!(
        !refused.status.success()
            && refused
                .stderr
                .contains("org.watchd.Watchd1.Error.AccessDenied")
            && refused.stderr.contains("watch-other-users-keys"),
        "step: {USER} watching root's keys (auth_admin) should be refused by polkit: {refused:?}"
    );

    // The journal holds each decision, structured.
    let journal = c.ok(
        "the journal",
        None,
        &["journalctl", "--unit=watchd", "--output=json", "--no-pager"],
    )?;
    let uid = c.ok("the user's uid", None, &["id", "-u", USER])?;
    for (action, result) in [
        ("org.watchd.Watchd1.watch-mounts", "allowed"),
        ("org.watchd.Watchd1.watch-devices", "allowed"),
        ("org.watchd.Watchd1.watch-other-users-keys", "denied"),
    ] {
        let found = journal.lines().any(|line| {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                return false;
            };
            let field = |name: &str| entry.get(name).and_then(|v| v.as_str());
            field("MESSAGE") == Some("authorization")
                && field("F_ACTION") == Some(action)
                && field("F_RESULT") == Some(result)
                && field("F_UID") == Some(uid.trim())
                && field("F_DECIDER") == Some("Polkit")
        });
        ensure!(
            found,
            "step: journalctl -u watchd -o json has no authorization entry {action} {result} for uid {} decided by polkit",
            uid.trim()
        );
    }

    // systemctl reload: the file is read again, the subscriptions stay.
    let config = std::fs::read_to_string(repo().join("data/watchd.toml"))?;
    ensure!(config.contains("max_subscriptions_per_uid = 64"));
    std::fs::write(
        c.path("/etc/watchd/watchd.toml"),
        config.replace(
            "max_subscriptions_per_uid = 64",
            "max_subscriptions_per_uid = 2",
        ),
    )?;
    let before_reload = main_pid(c)?;
    c.ok("reload", None, &["systemctl", "reload", "watchd"])
        .step("systemctl reload watchd")?;
    let deadline = Instant::now() + SEEN;
    let refused = loop {
        // timeout: a subscription still allowed would wait for events.
        let mut command = c.command(Some(USER), "timeout");
        command.args(["5", "watchctl", "watch", "mounts"]);
        let ran = c.run(command, Duration::from_secs(30))?;
        if ran.stderr.contains("LimitExceeded") || Instant::now() > deadline {
            break ran;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(
        refused
            .stderr
            .contains("org.watchd.Watchd1.Error.LimitExceeded"),
        "step: after the reload (max_subscriptions_per_uid = 2) {USER}'s third subscription should be refused: {refused:?}"
    );
    ensure!(
        main_pid(c)? == before_reload,
        "step: systemctl reload restarted the daemon"
    );
    c.ok("unmount", None, &["umount", MOUNT_POINT])?;
    for (out, who) in watchers {
        wait_for_line(out, &["mount detach", MOUNT_POINT, "booted1"], SEEN, who)
            .step("after the reload, a subscription made before it")?;
    }
    mount_seen(c, "booted2", &watchers).step("after the reload, a subscription made before it")?;
    println!("booted: reload applied the new limit, subscriptions kept");

    // systemctl restart: every client sees the end of its pipe.
    c.ok("restart", None, &["systemctl", "restart", "watchd"])
        .step("systemctl restart watchd")?;
    for (process, out, who) in [
        (&mut root_mounts, &root_out, "root's mount watch"),
        (&mut user_mounts, &user_out, "the user's mount watch"),
        (&mut user_devices, &devices_out, "the user's device watch"),
    ] {
        let status = wait_for_exit(process, SEEN, who).step("systemctl restart: end of file")?;
        let text = std::fs::read_to_string(out)?;
        ensure!(
            status.code() == Some(3) && text.contains("the subscription ended"),
            "step: systemctl restart: {who} should end with status 3 (pipe ended), got {status}:\n{text}"
        );
    }
    ensure!(
        main_pid(c)? != before_reload,
        "step: restart kept the same daemon"
    );
    // watchctl --reconnect stayed, subscribed again and printed the current state.
    root_reconnect
        .check_running()
        .step("systemctl restart: watchctl --reconnect should outlive it")?;
    let again = wait_for_line(
        &reconnect_out,
        &["[snapshot]", "source=booted2"],
        SEEN,
        "root's mount watch with --reconnect",
    )
    .step("after the restart, watchctl --reconnect prints the initial state again")?;
    ensure!(
        std::fs::read_to_string(&reconnect_out)?.contains("subscribed again"),
        "step: watchctl --reconnect should say it subscribed again, printed:\n{again}"
    );
    drop(root_reconnect);

    // Bus activation: stopped, a call starts it.
    c.ok("stop", None, &["systemctl", "stop", "watchd"])?;
    ensure!(
        active(c)? != "active",
        "step: systemctl stop left watchd active"
    );
    let sources = c
        .ok("a call", Some(USER), &{
            let mut args = vec!["busctl", "get-property"];
            args.extend(MANAGER);
            args.push("Sources");
            args
        })
        .step("bus activation: a call to the stopped service")?;
    ensure!(
        sources.contains("\"mounts\""),
        "step: bus activation: Sources = {sources}"
    );
    ensure!(
        active(c)? == "active",
        "step: bus activation: the call did not start watchd.service"
    );
    println!("booted: stopped, then started by a call on the bus");

    // Removal stops the unit and leaves only the conffile.
    c.ok("remove the package", None, &["dpkg", "-r", "watchd"])
        .step("dpkg -r")?;
    ensure!(active(c)? != "active", "step: dpkg -r left watchd running");
    ensure!(
        c.path("/etc/watchd/watchd.toml").is_file() && !c.path("/usr/bin/watchd").exists(),
        "step: dpkg -r should remove the binary and keep the conffile"
    );
    Ok(())
}
