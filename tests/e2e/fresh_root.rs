//! The README's two commands on a fresh Debian 12 (issue 13 item 1): in the minbase root
//! of `nspawn::root` (not booted: neither command needs systemd), with nothing but a rustup
//! toolchain in an ordinary user's PATH and sudo, `./demo.sh` and `./test.sh` are run in a
//! copy of the repository exactly as the README prints them, as that user. Each must
//! install what it needs, build as the user and leave nothing of root's in the copy.
//!
//! - **The toolchain** is this host's, bind-mounted read-only (`RUSTUP_HOME` at
//!   /opt/rustup, `CARGO_HOME/bin` at /opt/cargo/bin), and linked where rustup's installer
//!   puts it (`~/.rustup`, `~/.cargo/bin`), with the `~/.cargo/env` line it adds to
//!   `~/.profile`; the commands run in a login shell. `~/.cargo` itself is the user's own,
//!   empty at first: crates are fetched from crates.io. cargo-deb comes with the toolchain's
//!   bin directory (CI installs it before the tests); read-only, it could not be installed.
//! - **The network's certificate authorities**: the host's local ones
//!   (/usr/local/share/ca-certificates, e.g. an HTTPS proxy's) are copied in, as a fresh
//!   machine on that network has them; the ca-certificates package the commands install
//!   puts them in the bundle cargo uses.
//! - **sudo** is given without a password (`NOPASSWD`), standing in for the password a
//!   user would type.
//! - **The demo** runs two rounds (`DEMO_ROUNDS=2`, which the README names).
//! - **The suite** runs with a filter, `-- mounts::` with two `--skip`s (the mount tests,
//!   on both backends, but for a timing test and one that cannot work from a checkout on a
//!   mount of its own: [`FILTER`]), not whole: inside this container the rest would mostly
//!   test the container, not the commands. The device tests want
//!   udevd and a writable /sys (nspawn mounts it read-only), the key tests the host's
//!   keyrings (not namespaced), the VM tests build a kernel (4 minutes) and boot qemu, the
//!   booted test would nest this container in itself. The filter still makes `./test.sh`
//!   install every package of the list, build the whole workspace and its tests as the
//!   user, and run the mount tests as root through sudo (private mount namespaces, a
//!   dbus-daemon, the daemon under the unit's capabilities, real mounts, both backends).
//!   What it costs: the packages (~1-2 minutes to fetch), the crates, and a debug build of
//!   the workspace on 2 cores (several minutes).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use watchd_e2e::nspawn::{self, Container, Step};
use watchd_e2e::{Scratch, Trial, repo};

use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![trial(
        "booted::fresh_root::the_readme_commands_work_as_printed_for_a_user_with_rustup",
        readme_commands,
    )]
}

/// The user, with this uid (the first a fresh Debian gives).
const USER: &str = "bob";
const UID: u32 = 1000;
/// Where the copy of the repository is in the container.
const CHECKOUT: &str = "/srv/watchd";
/// The e2e tests `./test.sh` runs in the container (see the module's documentation): the
/// mount tests, but for two. The burst of 1,000 mounts needs a reader that keeps up in real
/// time (before its reader was SCHED_FIFO it failed on these loaded 2 cores outside any
/// container too: 1727 of 2000 records). The chroot test chroots into a bind mount of `/`
/// that is not recursive, so a checkout on a mount of its own (here the bind-mounted
/// /srv/watchd; on a host, a separate /home) is not in it and watchctl is not found.
const FILTER: &str =
    "mounts:: --skip a_burst_of_1000_mounts --skip a_caller_in_a_chroot_sees_mount_points";
/// What rustup's installer writes to ~/.cargo/env (and sources from ~/.profile).
const RUSTUP_ENV: &str = "#!/bin/sh\n# rustup shell setup\ncase \":${PATH}:\" in\n    *:\"$HOME/.cargo/bin\":*) ;;\n    *) export PATH=\"$HOME/.cargo/bin:$PATH\" ;;\nesac\n";
/// How long each command may take (packages, crates, a build on 2 shared cores).
const LIMIT: Duration = Duration::from_secs(40 * 60);

/// The files git tracks (and untracked ones it does not ignore) copied to `to`, owned by
/// `uid`: a checkout without target/ or build/.
fn copy_repository(to: &Path, uid: u32) -> Result<()> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo())
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .context("git ls-files")?;
    ensure!(out.status.success(), "git ls-files failed");
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name)?;
        let from = repo().join(name);
        if !from.is_file() {
            continue;
        }
        let dest = to.join(name);
        std::fs::create_dir_all(dest.parent().expect("a file has a parent"))?;
        std::fs::copy(&from, &dest).with_context(|| format!("copying {name}"))?;
    }
    let chown = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(to)
        .status()?;
    ensure!(chown.success(), "chown -R {uid} {}", to.display());
    Ok(())
}

/// The host's rustup home and cargo bin directory: the test runs under the toolchain's
/// cargo, which names RUSTUP_HOME; CARGO_HOME likewise, else the rustup defaults.
fn toolchain() -> Result<(PathBuf, PathBuf)> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let var = |name: &str, default: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(default)))
    };
    let rustup = var("RUSTUP_HOME", ".rustup").context("no RUSTUP_HOME nor HOME")?;
    let cargo_bin = var("CARGO_HOME", ".cargo")
        .context("no CARGO_HOME nor HOME")?
        .join("bin");
    if !rustup.join("toolchains").is_dir() || !cargo_bin.join("cargo").is_file() {
        return Err(nspawn::Unavailable {
            what: format!(
                "no rustup toolchain here ({} and {})",
                rustup.display(),
                cargo_bin.display()
            ),
            install: "rustup",
        }
        .into());
    }
    if !cargo_bin.join("cargo-deb").is_file() {
        return Err(nspawn::Unavailable {
            what: format!("no cargo-deb in {}", cargo_bin.display()),
            install: "cargo install cargo-deb --locked --version 3.8.0",
        }
        .into());
    }
    Ok((rustup, cargo_bin))
}

async fn readme_commands() -> Result<()> {
    let _one = nspawn::one_at_a_time();
    let started = Instant::now();
    let Some((rustup, cargo_bin)) = nspawn::or_skip("fresh_root", toolchain())? else {
        return Ok(());
    };
    let Some(root) = nspawn::or_skip("fresh_root", nspawn::root())? else {
        return Ok(());
    };
    let scratch = Scratch::new("fresh-root")?;
    let checkout = scratch.join("watchd");
    copy_repository(&checkout, UID).step("copy the repository")?;

    let name = format!("watchd-fresh-{}", std::process::id());
    let mut c = Container::idle(
        &name,
        &root,
        &scratch.path,
        &[
            format!("--bind-ro={}:/opt/rustup", rustup.display()),
            format!("--bind-ro={}:/opt/cargo/bin", cargo_bin.display()),
            format!("--bind={}:{CHECKOUT}", checkout.display()),
        ],
    )
    .step("start the container")?;
    let result = steps(&mut c, &checkout, started);
    let outcome = result.map_err(|e| anyhow::anyhow!("{e:#}\n\nnspawn:\n{}", c.nspawn_output()));
    drop(c);
    // What the build left is the test's uid's; the scratch directory goes all the same.
    println!("fresh_root: done after {:.0?}", started.elapsed());
    outcome
}

fn steps(c: &mut Container, checkout: &Path, started: Instant) -> Result<()> {
    // The user, as a fresh Debian 12 with rustup has them: in group sudo, the toolchain
    // where rustup's installer puts it, and its line in ~/.profile.
    c.ok(
        "add the user",
        None,
        &[
            "useradd",
            "--create-home",
            "--uid",
            &UID.to_string(),
            "--groups",
            "sudo",
            "--shell",
            "/bin/bash",
            USER,
        ],
    )?;
    std::fs::write(
        c.path(&format!("/etc/sudoers.d/{USER}")),
        format!("{USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"),
    )?;
    // The network's own certificate authorities, as the host trusts them (a site's local
    // CAs, such as an HTTPS proxy's): ca-certificates, once the commands install it, adds
    // them to the container's bundle, and cargo reaches crates.io.
    let local_cas = Path::new("/usr/local/share/ca-certificates");
    if let Ok(entries) = std::fs::read_dir(local_cas) {
        let to = c.path("/usr/local/share/ca-certificates");
        std::fs::create_dir_all(&to)?;
        for entry in entries.flatten() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    let home = c.path(&format!("/home/{USER}"));
    std::fs::create_dir_all(home.join(".cargo"))?;
    std::os::unix::fs::symlink("/opt/rustup", home.join(".rustup"))?;
    std::os::unix::fs::symlink("/opt/cargo/bin", home.join(".cargo/bin"))?;
    std::fs::write(home.join(".cargo/env"), RUSTUP_ENV)?;
    let mut profile = std::fs::read_to_string(home.join(".profile"))?;
    profile.push_str("\n. \"$HOME/.cargo/env\"\n");
    std::fs::write(home.join(".profile"), profile)?;
    for made in [".cargo", ".cargo/env", ".cargo/bin", ".rustup"] {
        std::os::unix::fs::lchown(home.join(made), Some(UID), Some(UID))?;
    }
    let version = c
        .ok(
            "the user's toolchain",
            Some(USER),
            &["bash", "-lc", "cargo --version"],
        )
        .step("the user's rustup toolchain")?;
    println!("fresh_root: {USER} has {}", version.trim());
    let path = c.ok(
        "the user's PATH",
        Some(USER),
        &["bash", "-lc", "command -v cargo"],
    )?;
    ensure!(
        path.trim() == format!("/home/{USER}/.cargo/bin/cargo"),
        "cargo should come from ~/.cargo/bin, not {path:?}"
    );
    let ci = if std::env::var_os("CI").is_some() {
        "export CI=true; "
    } else {
        ""
    };

    // Try it: ./demo.sh, two rounds.
    let demo = run_as_user(c, &format!("{ci}cd {CHECKOUT} && DEMO_ROUNDS=2 ./demo.sh"))
        .step("README, Try it: ./demo.sh")?;
    let attaches = demo.lines().filter(|l| l.contains("mount attach")).count();
    ensure!(
        attaches >= 2 && demo.contains("mount detach"),
        "step: ./demo.sh printed {attaches} attaches (two rounds expected, with detaches):\n{}",
        watchd_e2e::vm::tail(&demo, 40)
    );
    owned_by_user(checkout).step("after ./demo.sh")?;
    println!(
        "fresh_root: ./demo.sh passed after {:.0?}",
        started.elapsed()
    );

    // The old habit, sudo ./demo.sh: the build is the user's all the same (with the user's
    // login PATH; here nothing is left to build), the demo root's.
    let sudo_demo = run_as_user(c, &format!("cd {CHECKOUT} && sudo DEMO_ROUNDS=1 ./demo.sh"))
        .step("sudo ./demo.sh")?;
    ensure!(
        sudo_demo.contains(&format!("building as {USER}, not root"))
            && sudo_demo.contains("mount attach"),
        "step: sudo ./demo.sh should build as {USER} and show events:\n{}",
        watchd_e2e::vm::tail(&sudo_demo, 40)
    );
    owned_by_user(checkout).step("after sudo ./demo.sh")?;

    // Test it: ./test.sh, filtered.
    let tests = run_as_user(c, &format!("{ci}cd {CHECKOUT} && ./test.sh -- {FILTER}"))
        .step("README, Test it: ./test.sh")?;
    let e2e = tests
        .split("Running e2e/main.rs")
        .nth(1)
        .context("step: ./test.sh ran no e2e binary")?;
    let result = e2e
        .lines()
        .find(|l| l.starts_with("test result:"))
        .context("step: the e2e binary printed no result")?;
    let passed: usize = result
        .split_whitespace()
        .zip(result.split_whitespace().skip(1))
        .find(|(_, word)| word.trim_end_matches(';') == "passed")
        .and_then(|(n, _)| n.parse().ok())
        .with_context(|| format!("cannot read {result:?}"))?;
    ensure!(
        result.contains("ok.") && passed >= 5 && !e2e.contains("SKIP"),
        "step: ./test.sh -- {FILTER}: the e2e tests should run as root and pass: {result}\n{}",
        watchd_e2e::vm::tail(e2e, 40)
    );
    owned_by_user(checkout).step("after ./test.sh")?;
    println!(
        "fresh_root: ./test.sh -- {FILTER} passed ({result}) after {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// `script` run by the user in a login shell, to success within [`LIMIT`]; its output.
fn run_as_user(c: &mut Container, script: &str) -> Result<String> {
    // niced: the build must not slow the tests running beside this one on 2 cores.
    let mut command = c.command(Some(USER), "nice");
    command.args(["-n", "19", "bash", "-lc", &format!("{script} 2>&1")]);
    let ran = c.run(command, LIMIT)?;
    if !ran.status.success() {
        bail!(
            "`{script}` as {USER} failed ({}):\n{}{}",
            ran.status,
            watchd_e2e::vm::tail(&ran.stdout, 60),
            ran.stderr
        );
    }
    Ok(ran.stdout)
}

/// Nothing under `dir` belongs to anyone but the user: root built nothing there.
fn owned_by_user(dir: &Path) -> Result<()> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.uid() != UID && found.len() < 20 {
                found.push(entry.path());
            }
            if meta.is_dir() {
                walk(&entry.path(), found)?;
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(dir, &mut found)?;
    ensure!(
        found.is_empty(),
        "files not the user's in the checkout (root built or wrote there): {found:#?}"
    );
    Ok(())
}
