//! Installing: `make install` and the Debian package put every file where the README's
//! "Install" section says, the man pages render without a warning, the completions parse,
//! and the package holds exactly what `make install` does, installs, is removed down to its
//! conffile and purged down to nothing.
//!
//! What this proves, and what it does not: the package is installed into a throwaway root
//! (`dpkg --root`), never into this host's /usr or /etc, which the test checks it left alone.
//! dpkg runs the maintainer scripts chrooted into that root, with busybox as /bin/sh and
//! neither systemd nor deb-systemd-helper there, so they are shown to be valid shell that
//! tolerates their absence; what they do on a booted system (daemon-reload, stopping the
//! unit on removal) is for a test in a booted container. Dependencies are not installed in
//! the root (`--force-depends`); the test checks the package declares them instead. Both
//! builds use the binaries `cargo test` built (`PROFILE=dev`), so the test costs no release
//! build; `make` and `make deb` differ from that only in the profile.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use watchd_e2e::{Scratch, Trial, repo};

use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "packaging::make_install_puts_every_file_in_place_with_valid_pages_and_completions",
            make_install,
        ),
        trial(
            "packaging::the_deb_holds_what_make_install_does_and_removes_down_to_its_conffile",
            deb,
        ),
    ]
}

/// Every file installed, with its mode: the README's "Install" section lists the same.
const FILES: &[(&str, u32)] = &[
    ("etc/watchd/watchd.toml", 0o644),
    ("usr/bin/watchctl", 0o755),
    ("usr/bin/watchd", 0o755),
    ("usr/lib/systemd/system/watchd.service", 0o644),
    ("usr/share/bash-completion/completions/watchctl", 0o644),
    ("usr/share/dbus-1/interfaces/org.watchd.Watchd1.xml", 0o644),
    (
        "usr/share/dbus-1/system-services/org.watchd.Watchd1.service",
        0o644,
    ),
    ("usr/share/dbus-1/system.d/org.watchd.Watchd1.conf", 0o644),
    ("usr/share/doc/watchd/LICENSE-APACHE", 0o644),
    ("usr/share/doc/watchd/LICENSE-MIT", 0o644),
    ("usr/share/doc/watchd/README.md", 0o644),
    ("usr/share/doc/watchd/benchmarks.md", 0o644),
    ("usr/share/doc/watchd/credentials-cache-signals.md", 0o644),
    (
        "usr/share/doc/watchd/examples/50-watchd-example.rules",
        0o644,
    ),
    ("usr/share/doc/watchd/examples/Makefile", 0o644),
    ("usr/share/doc/watchd/examples/krb5-signal.py", 0o644),
    ("usr/share/doc/watchd/examples/watchd-dump.c", 0o644),
    ("usr/share/doc/watchd/examples/watchd-gdbus.c", 0o644),
    ("usr/share/doc/watchd/examples/watchd.h", 0o644),
    ("usr/share/doc/watchd/fuzzing.md", 0o644),
    ("usr/share/doc/watchd/protocol.md", 0o644),
    ("usr/share/doc/watchd/security.md", 0o644),
    ("usr/share/doc/watchd/watchctl.md", 0o644),
    ("usr/share/fish/vendor_completions.d/watchctl.fish", 0o644),
    ("usr/share/man/man1/watchctl-list.1", 0o644),
    ("usr/share/man/man1/watchctl-status.1", 0o644),
    ("usr/share/man/man1/watchctl-watch-devices.1", 0o644),
    ("usr/share/man/man1/watchctl-watch-files.1", 0o644),
    ("usr/share/man/man1/watchctl-watch-fserrors.1", 0o644),
    ("usr/share/man/man1/watchctl-watch-keys.1", 0o644),
    ("usr/share/man/man1/watchctl-watch-krb5.1", 0o644),
    ("usr/share/man/man1/watchctl-watch-mounts.1", 0o644),
    ("usr/share/man/man1/watchctl-watch-quota.1", 0o644),
    ("usr/share/man/man1/watchctl-watch-space.1", 0o644),
    ("usr/share/man/man1/watchctl-watch.1", 0o644),
    ("usr/share/man/man1/watchctl.1", 0o644),
    ("usr/share/man/man5/org.watchd.Watchd1.5", 0o644),
    ("usr/share/man/man5/watchd.toml.5", 0o644),
    ("usr/share/man/man8/watchd.8", 0o644),
    (
        "usr/share/polkit-1/actions/org.watchd.Watchd1.policy",
        0o644,
    ),
    ("usr/share/zsh/vendor-completions/_watchctl", 0o644),
];

/// The one conffile.
const CONFFILE: &str = "etc/watchd/watchd.toml";

/// What the host would have if a test leaked an install into it.
const HOST_PATHS: &[&str] = &[
    "/usr/bin/watchd",
    "/usr/lib/systemd/system/watchd.service",
    "/usr/share/dbus-1/system.d/org.watchd.Watchd1.conf",
    "/usr/share/polkit-1/actions/org.watchd.Watchd1.policy",
    "/etc/watchd",
];

/// `program` when it can run here. Outside CI a missing one skips the test (None, with the
/// reason printed); in CI, whose .ci/run installs it, it fails.
pub(crate) fn tool(program: &str, version_args: &[&str], from: &str) -> Result<Option<()>> {
    let ran = Command::new(program).args(version_args).output();
    if ran.as_ref().is_ok_and(|out| out.status.success()) {
        return Ok(Some(()));
    }
    let why = format!("{program} is not available (install: {from})");
    if std::env::var_os("CI").is_some() {
        bail!("{why}: .ci/run installs it, so CI does not skip this test");
    }
    eprintln!("SKIP: {why}");
    Ok(None)
}

/// Runs `command` to success; its stdout.
fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn make(args: &[&str]) -> Result<String> {
    run(Command::new("make")
        .arg("-C")
        .arg(repo())
        .arg("PROFILE=dev")
        .args(args))
}

/// Every file (and symlink) under `root`, relative to it, leaving out `except`.
fn files_under(root: &Path, except: &[&str]) -> Result<BTreeSet<String>> {
    fn walk(root: &Path, dir: &Path, except: &[&str], out: &mut BTreeSet<String>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
            let path = entry?.path();
            let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
            if except.contains(&relative.as_str()) {
                continue;
            }
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, except, out)?;
            } else {
                out.insert(relative);
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    walk(root, root, except, &mut out)?;
    Ok(out)
}

fn expected_files() -> BTreeSet<String> {
    FILES.iter().map(|(path, _)| (*path).to_owned()).collect()
}

async fn make_install() -> Result<()> {
    if tool("make", &["--version"], "make")?.is_none()
        || tool("groff", &["--version"], "groff-base")?.is_none()
        || tool("zsh", &["--version"], "zsh")?.is_none()
        || tool("fish", &["--version"], "fish")?.is_none()
    {
        return Ok(());
    }
    let scratch = Scratch::new("make-install")?;
    let root = scratch.join("root");
    // Generated files of its own: the package test reads build/ (its assets name it) at the
    // same time.
    let gen_dir = format!("GEN={}", scratch.join("gen").display());
    let install = |destdir: &Path, more: &[&str]| {
        let destdir = format!("DESTDIR={}", destdir.display());
        make(&[&["install", &gen_dir, &destdir][..], more].concat())
    };
    make(&[&gen_dir])?;
    install(&root, &[])?;

    let installed = files_under(&root, &[])?;
    ensure!(
        installed == expected_files(),
        "make install put {installed:#?}\nbut the list (and the README) says {:#?}",
        expected_files()
    );
    for (path, mode) in FILES {
        let meta = std::fs::metadata(root.join(path))?;
        ensure!(
            meta.permissions().mode() & 0o7777 == *mode,
            "{path} has mode {:o}, not {mode:o}",
            meta.permissions().mode() & 0o7777
        );
    }
    let conf = std::fs::read(root.join(CONFFILE))?;
    ensure!(
        conf == std::fs::read(repo().join("data/watchd.toml"))?,
        "{CONFFILE} is not data/watchd.toml"
    );
    check_unit(&root)?;
    check_pages(&root)?;
    check_completions(&root)?;

    // A configuration already in place is the administrator's: a second install keeps it.
    std::fs::write(root.join(CONFFILE), "# edited\n")?;
    install(&root, &[])?;
    ensure!(
        std::fs::read_to_string(root.join(CONFFILE))? == "# edited\n",
        "make install overwrote an existing {CONFFILE}"
    );
    make(&["uninstall", &format!("DESTDIR={}", root.display())])?;
    let left = files_under(&root, &[])?;
    ensure!(
        left == BTreeSet::from([CONFFILE.to_owned()]),
        "make uninstall left {left:#?}, not only the configuration"
    );

    // PREFIX moves the binaries, and the unit follows; the unit itself stays where systemd
    // reads it.
    let local = scratch.join("local");
    install(&local, &["PREFIX=/usr/local"])?;
    ensure!(local.join("usr/local/bin/watchd").is_file());
    let unit = std::fs::read_to_string(local.join("usr/lib/systemd/system/watchd.service"))?;
    ensure!(
        unit.lines().any(|l| l == "ExecStart=/usr/local/bin/watchd"),
        "with PREFIX=/usr/local the unit still says:\n{}",
        unit.lines()
            .find(|l| l.starts_with("ExecStart="))
            .unwrap_or("no ExecStart")
    );
    Ok(())
}

/// ExecStart= names the installed daemon, and every Documentation= names an installed file
/// (`man:NAME(SECTION)` or `file:///PATH`).
fn check_unit(root: &Path) -> Result<()> {
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/watchd.service"))?;
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .context("no ExecStart=")?;
    ensure!(
        root.join(exec.trim_start_matches('/')).is_file(),
        "ExecStart={exec} is not installed"
    );
    let mut docs = 0;
    for uri in unit
        .lines()
        .filter_map(|l| l.strip_prefix("Documentation="))
        .flat_map(str::split_whitespace)
    {
        let path = if let Some(page) = uri.strip_prefix("man:") {
            let (name, section) = page
                .strip_suffix(')')
                .and_then(|p| p.split_once('('))
                .with_context(|| format!("Documentation={uri} is not man:NAME(SECTION)"))?;
            PathBuf::from(format!("usr/share/man/man{section}/{name}.{section}"))
        } else if let Some(path) = uri.strip_prefix("file:///") {
            PathBuf::from(path)
        } else {
            bail!("Documentation={uri}: neither man: nor file:///");
        };
        ensure!(
            root.join(&path).is_file(),
            "Documentation={uri} points at {}, which is not installed",
            path.display()
        );
        docs += 1;
    }
    ensure!(docs >= 3, "the unit names only {docs} documents");
    Ok(())
}

/// Every page renders with all of groff's warnings on (-ww) and none given.
fn check_pages(root: &Path) -> Result<()> {
    for (path, _) in FILES
        .iter()
        .filter(|(p, _)| p.starts_with("usr/share/man/"))
    {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(root.join(path))
            .env("LC_ALL", "C.UTF-8")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && stderr.trim().is_empty(),
            "groff warns about {path}:\n{stderr}"
        );
    }
    Ok(())
}

/// Each shell parses its completion script without running it.
fn check_completions(root: &Path) -> Result<()> {
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/watchctl"),
        ("zsh", "usr/share/zsh/vendor-completions/_watchctl"),
        ("fish", "usr/share/fish/vendor_completions.d/watchctl.fish"),
    ] {
        let script = root.join(path);
        run(Command::new(shell).arg("-n").arg(&script))?;
        let text = std::fs::read_to_string(&script)?;
        ensure!(
            text.contains("subsystem") && text.contains("count") && text.contains("krb5"),
            "{path} does not complete watchctl's options"
        );
    }
    Ok(())
}

/// The files in a .deb (`dpkg-deb -c`), relative to its root, directories left out.
fn deb_files(deb: &Path) -> Result<BTreeSet<String>> {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    let mut files = BTreeSet::new();
    for line in listing.lines() {
        let path = line
            .split_whitespace()
            .nth(5)
            .with_context(|| format!("dpkg-deb -c printed {line:?}"))?;
        if !line.starts_with('d') {
            files.insert(path.trim_start_matches("./").to_owned());
        }
    }
    Ok(files)
}

/// The package's assets name build/ in the repository, which `make` (re)makes; under
/// `sudo cargo test` that leaves it to root, and the next `make` as the user could not
/// replace it. On drop, it is given to whoever owns the repository.
struct GivenBack(PathBuf);

impl Drop for GivenBack {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(repo) = std::fs::metadata(repo()) {
            let _ = Command::new("chown")
                .arg("-R")
                .arg(format!("{}:{}", repo.uid(), repo.gid()))
                .arg(&self.0)
                .status();
        }
    }
}

/// `make` and `make deb` (PROFILE=dev), the package written to `deb`. One at a time: the
/// package's assets name build/ in the repository, which `make` remakes.
pub(crate) fn build_deb(deb: &Path) -> Result<()> {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let _owner = GivenBack(repo().join("build"));
    make(&[])?;
    make(&[
        "deb",
        &format!("CARGO_DEB_FLAGS=--output {}", deb.display()),
    ])?;
    Ok(())
}

/// An installed package's name for `path`: man pages are compressed, as Debian wants.
fn in_package(path: &str) -> String {
    if path.starts_with("usr/share/man/") {
        format!("{path}.gz")
    } else {
        path.to_owned()
    }
}

async fn deb() -> Result<()> {
    if tool("make", &["--version"], "make")?.is_none()
        || tool(
            "cargo",
            &["deb", "--version"],
            "cargo install cargo-deb --locked",
        )?
        .is_none()
        || tool("dpkg-deb", &["--version"], "dpkg")?.is_none()
        || tool("busybox", &["true"], "busybox-static")?.is_none()
    {
        return Ok(());
    }
    let host_before: Vec<bool> = HOST_PATHS.iter().map(|p| Path::new(p).exists()).collect();
    let scratch = Scratch::new("deb")?;
    let deb = scratch.join("watchd.deb");
    build_deb(&deb)?;

    // The same files as make install, plus the copyright file Debian requires.
    let mut expected: BTreeSet<String> = FILES.iter().map(|(p, _)| in_package(p)).collect();
    expected.insert("usr/share/doc/watchd/copyright".into());
    let packaged = deb_files(&deb)?;
    ensure!(
        packaged == expected,
        "the package holds {packaged:#?}\nbut make install (and the README) has {expected:#?}"
    );
    let field = |name: &str| run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name));
    let depends = field("Depends")?;
    for needed in ["dbus", "procps", "libudev1", "libc6"] {
        ensure!(
            depends.split(',').any(|d| d.trim().starts_with(needed)),
            "Depends: {depends} lacks {needed}"
        );
    }
    ensure!(field("Recommends")?.trim() == "polkitd");
    let conffiles = run(Command::new("dpkg-deb")
        .args(["-I"])
        .arg(&deb)
        .arg("conffiles"))?;
    ensure!(
        conffiles.trim() == format!("/{CONFFILE}"),
        "conffiles: {conffiles:?}"
    );

    // A throwaway root: an empty dpkg database and a shell for the maintainer scripts.
    let root = scratch.join("root");
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(dir))?;
    }
    for file in ["status", "available"] {
        std::fs::write(admin.join(file), "")?;
    }
    std::fs::create_dir_all(root.join("bin"))?;
    let busybox = run(Command::new("sh").args(["-c", "command -v busybox"]))?;
    std::fs::copy(busybox.trim(), root.join("bin/sh"))?;
    let log = scratch.join("dpkg.log");
    let dpkg = |args: &[&str]| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .arg(format!("--log={}", log.display()))
            .args(["--force-depends", "--force-bad-path"])
            .args(args))
    };
    // Left out of every comparison: dpkg's own files and the shell put there above.
    let scaffolding = ["var", "bin/sh"];

    dpkg(&["-i", &deb.to_string_lossy()])?;
    let installed = files_under(&root, &scaffolding)?;
    ensure!(
        installed == expected,
        "dpkg -i installed {installed:#?}\nnot {expected:#?}"
    );

    dpkg(&["-r", "watchd"])?;
    let left = files_under(&root, &scaffolding)?;
    ensure!(
        left == BTreeSet::from([CONFFILE.to_owned()]),
        "dpkg -r left {left:#?}, not only the conffile"
    );
    ensure!(
        !root.join("usr").exists(),
        "dpkg -r left directories in /usr"
    );

    dpkg(&["-P", "watchd"])?;
    let left = files_under(&root, &scaffolding)?;
    ensure!(left.is_empty(), "dpkg -P left {left:#?}");
    ensure!(
        !root.join("etc/watchd").exists(),
        "dpkg -P left /etc/watchd"
    );

    let host_after: Vec<bool> = HOST_PATHS.iter().map(|p| Path::new(p).exists()).collect();
    ensure!(
        host_before == host_after,
        "the host's files changed: {HOST_PATHS:?} existed {host_before:?} before, {host_after:?} after"
    );
    Ok(())
}
