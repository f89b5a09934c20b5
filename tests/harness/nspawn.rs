//! A throwaway Debian 12 system for what only a whole system shows (the package on a booted
//! systemd, the README's commands on a fresh machine): [`root`] makes a minimal Debian root
//! once, [`Container`] runs it under `systemd-nspawn`, booted or not, on a tmpfs overlay so
//! that every run starts from the same clean root.
//!
//! - **The root** is `debootstrap --variant=minbase --include=`[`PACKAGES`] `bookworm`
//!   (about 40 to 90 s and 280 MB), kept in `target/nspawn/bookworm-minbase/root/` and
//!   reused while [`PACKAGES`] stay the same (the list is written beside it), as the VM's
//!   kernel is (`vm.rs`). Nothing a container does reaches it: `--volatile=overlay` puts a
//!   tmpfs over the whole tree.
//! - **The container** runs with `--register=no --keep-unit`, so neither systemd-machined
//!   nor a host systemd is needed (these machines' PID 1 is not systemd; `machinectl` has
//!   nothing to talk to), and is stopped by its PID ([`Container`]'s drop: SIGTERM, which
//!   nspawn turns into a clean poweroff of a booted container, then SIGKILL).
//!   `SYSTEMD_SECCOMP=0` in nspawn's own environment turns off nspawn's seccomp filter
//!   (which refuses `keyctl`, `add_key` and, unknown to systemd 252, `statmount` and
//!   `listmount`), so that inside the container the only filters are the ones the units ask
//!   for: the test then checks the shipped unit's own filter, not nspawn's. The container
//!   shares the host's network (apt, cargo) and sees the host's uevents.
//! - **Commands** are run in it with `nsenter --all` on its init (all its namespaces and its
//!   root), through `setpriv` (as another user if asked, with `--pdeathsig KILL`, so that
//!   stopping the nsenter this test holds by PID stops the command too).
//!
//! A missing `debootstrap` or `systemd-nspawn` is an [`Unavailable`] error, for the test to
//! skip outside CI and fail in it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::Process;
use crate::vm::{run_logged, tail};

/// The Debian release of the root.
pub const SUITE: &str = "bookworm";
/// Where debootstrap fetches it (the host's apt uses the same).
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// What `--include=` adds to minbase: a booted systemd with the system bus, logind and an
/// activatable polkitd (the list), procps (the package depends on it: its unit's
/// ExecReload runs kill), and sudo (the README's commands are run by a user with sudo).
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "polkitd",
    "udev",
    "procps",
    "sudo",
];
/// The host packages this needs.
pub const HOST_PACKAGES: &str = "debootstrap systemd-container";

/// How long debootstrap may take.
const DEBOOTSTRAP_LIMIT: Duration = Duration::from_secs(15 * 60);
/// How long a container may take to start its init.
const START_LIMIT: Duration = Duration::from_secs(30);

pub use crate::{Unavailable, or_skip};

fn tool(name: &str, package: &str) -> Result<PathBuf> {
    crate::tool(name, package, HOST_PACKAGES)
}

/// One container at a time in this process: each is a whole system, on 2 cores.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `target/nspawn`, beside the profile directory this test binary is in.
fn nspawn_dir() -> PathBuf {
    crate::vm::vm_dir().with_file_name("nspawn")
}

/// The minbase root, made now (debootstrap) unless the cached one has [`PACKAGES`].
pub fn root() -> Result<PathBuf> {
    tool("systemd-nspawn", "systemd-container")?;
    static BUILD: Mutex<()> = Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let dir = nspawn_dir().join(format!("{SUITE}-minbase"));
    let root = dir.join("root");
    let key = format!("{SUITE} {MIRROR} {}\n", PACKAGES.join(","));
    if root.join("usr/bin/systemctl").is_file()
        && std::fs::read_to_string(dir.join("packages"))
            .ok()
            .as_deref()
            == Some(&key)
    {
        return Ok(root);
    }
    let debootstrap = tool("debootstrap", "debootstrap")?;
    let build = dir.with_extension("build");
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build)?;
    let log = build.join("debootstrap.log");
    let started = Instant::now();
    eprintln!(
        "nspawn: debootstrap {SUITE} into {} (a minute or two; log {})",
        build.display(),
        log.display()
    );
    let mut command = Command::new(debootstrap);
    command
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(build.join("root"))
        .arg(MIRROR);
    let made = run_logged(command, &log, "debootstrap", DEBOOTSTRAP_LIMIT);
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&build);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::rename(build.join("root"), &root)?;
    std::fs::write(dir.join("packages"), key)?;
    let _ = std::fs::remove_dir_all(&build);
    eprintln!("nspawn: root made in {:.0?}", started.elapsed());
    Ok(root)
}

/// What a command run in the container did.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A running `systemd-nspawn` container, stopped by its PID when dropped.
pub struct Container {
    nspawn: Option<Process>,
    /// The container's PID 1 (systemd, or nspawn's stub init), as this host numbers it.
    init: u32,
    pub name: String,
    /// Where nspawn's output (the console) goes, and the commands' output files.
    dir: PathBuf,
    /// Whether /run/systemd/nspawn was there before: nspawn makes it, and leaves its empty
    /// directories on a /run that is not a tmpfs.
    run_dir_existed: bool,
    next: u32,
}

const NSPAWN_RUN_DIR: &str = "/run/systemd/nspawn";

impl Container {
    /// Boots `root` (`systemd-nspawn -b`); returns once its init runs (not once the system
    /// is up: [`Container::wait_running`]). `extra` are more nspawn options (`--bind-ro=`).
    pub fn boot(name: &str, root: &Path, dir: &Path, extra: &[String]) -> Result<Container> {
        Container::start(name, root, dir, extra, &["--boot"], &[])
    }

    /// Starts `root` without booting: nspawn's stub init as PID 1 and `sleep infinity` as
    /// PID 2, commands run beside it with [`Container::command`].
    pub fn idle(name: &str, root: &Path, dir: &Path, extra: &[String]) -> Result<Container> {
        Container::start(
            name,
            root,
            dir,
            extra,
            &["--as-pid2"],
            &["sleep", "infinity"],
        )
    }

    fn start(
        name: &str,
        root: &Path,
        dir: &Path,
        extra: &[String],
        mode: &[&str],
        payload: &[&str],
    ) -> Result<Container> {
        let nspawn = tool("systemd-nspawn", "systemd-container")?;
        let run_dir_existed = Path::new(NSPAWN_RUN_DIR).exists();
        let console = dir.join(format!("{name}.console"));
        let mut command = Command::new(nspawn);
        command
            .env("SYSTEMD_SECCOMP", "0")
            .arg("--directory")
            .arg(root)
            .arg(format!("--machine={name}"))
            .args([
                "--register=no",
                "--keep-unit",
                "--volatile=overlay",
                "--console=read-only",
            ])
            .args(mode)
            .args(extra)
            .arg("--")
            .args(payload)
            .stdin(Stdio::null())
            .stdout(File::create(&console)?)
            .stderr(File::create(dir.join(format!("{name}.nspawn")))?);
        let mut process = Process::spawn(command, "systemd-nspawn")?;
        let ours = std::fs::metadata("/proc/self/ns/pid")?.ino();
        let mut init = None;
        let waited = crate::wait_until(START_LIMIT, "the container's init", || {
            process.check_running()?;
            init = children(process.pid()).into_iter().find(|pid| {
                std::fs::metadata(format!("/proc/{pid}/ns/pid")).is_ok_and(|m| m.ino() != ours)
            });
            Ok(init.is_some())
        });
        let container = Container {
            nspawn: Some(process),
            init: init.unwrap_or(0),
            name: name.to_owned(),
            dir: dir.to_owned(),
            run_dir_existed,
            next: 0,
        };
        if let Err(e) = waited {
            bail!("{e:#}; nspawn said:\n{}", container.nspawn_output());
        }
        // The container's init is up once it has a root of its own.
        let host_root = std::fs::metadata("/")?.ino();
        crate::wait_until(START_LIMIT, "the container's root", || {
            Ok(
                std::fs::metadata(container.path("/usr")).is_ok_and(|m| m.ino() != host_root)
                    && container.path("/etc/os-release").is_file(),
            )
        })?;
        Ok(container)
    }

    /// nspawn's messages and the console's last lines.
    pub fn nspawn_output(&self) -> String {
        let read = |suffix: &str| {
            std::fs::read_to_string(self.dir.join(format!("{}.{suffix}", self.name)))
                .unwrap_or_default()
        };
        format!(
            "{}\nconsole:\n{}",
            read("nspawn"),
            tail(&read("console"), 30)
        )
    }

    /// The container's PID 1 as this host numbers it.
    pub fn init_pid(&self) -> u32 {
        self.init
    }

    /// `path` inside the container, as this host reaches it (through its init's root).
    pub fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.init))
    }

    /// `program` to run in the container, as root (`user` None) or as `user`, with a
    /// clean environment (the user's own from `setpriv --reset-env`).
    pub fn command(&self, user: Option<&str>, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            .args(["--all", "--target", &self.init.to_string(), "--"])
            .args(["setpriv", "--pdeathsig", "KILL"]);
        if let Some(user) = user {
            command.args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                "--reset-env",
            ]);
        }
        command.arg("--").arg(program);
        command
    }

    /// Runs `command` (from [`Container::command`]) to its end, `limit` at most.
    pub fn run(&mut self, mut command: Command, limit: Duration) -> Result<Ran> {
        let n = self.next;
        self.next += 1;
        let out = self.dir.join(format!("{}.cmd{n}.out", self.name));
        let err = self.dir.join(format!("{}.cmd{n}.err", self.name));
        command
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?);
        let what = format!("{command:?}");
        let mut process = Process::spawn(command, "a command in the container")?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = process.child().try_wait()? {
                break status;
            }
            if started.elapsed() > limit {
                drop(process);
                bail!(
                    "{what} did not finish within {limit:?}; its output:\n{}\n{}",
                    tail(&std::fs::read_to_string(&out).unwrap_or_default(), 30),
                    tail(&std::fs::read_to_string(&err).unwrap_or_default(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Ran {
            status,
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        })
    }

    /// `args` run as `user` (None: root) to success within a minute; its stdout. The error
    /// says `what` failed, with the command's output.
    pub fn ok(&mut self, what: &str, user: Option<&str>, args: &[&str]) -> Result<String> {
        let mut command = self.command(user, args[0]);
        command.args(&args[1..]);
        let ran = self.run(command, Duration::from_secs(60))?;
        ensure!(
            ran.status.success(),
            "{what}: `{}` failed ({}):\n{}{}",
            args.join(" "),
            ran.status,
            ran.stdout,
            ran.stderr
        );
        Ok(ran.stdout)
    }

    /// `args` started as `user` and left running, stdout and stderr to `output`; stopped by
    /// its PID when dropped.
    pub fn spawn(
        &self,
        user: Option<&str>,
        args: &[&str],
        output: &Path,
        what: &'static str,
    ) -> Result<Process> {
        let mut command = self.command(user, args[0]);
        let file = File::create(output)?;
        command
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        Process::spawn(command, what)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM: nspawn powers a booted container off (a second or two), then SIGKILL.
        drop(self.nspawn.take());
        let _ = std::fs::remove_dir(Path::new(NSPAWN_RUN_DIR).join("propagate").join(&self.name));
        if !self.run_dir_existed {
            for dir in ["propagate", "locks", ""] {
                let _ = std::fs::remove_dir(Path::new(NSPAWN_RUN_DIR).join(dir));
            }
        }
    }
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Waits until `file` has a line containing every one of `parts` (`limit` at most); returns
/// that line, or fails naming `what` with the file's contents.
pub fn wait_for_line(file: &Path, parts: &[&str], limit: Duration, what: &str) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return Ok(line.to_owned());
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: no line with all of {parts:?} within {limit:?}; {} has:\n{text}",
                file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `process` exits (`limit` at most); its status.
pub fn wait_for_exit(process: &mut Process, limit: Duration, what: &str) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = process.child().try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Context for a step: `step` in the error.
pub trait Step<T> {
    fn step(self, step: &str) -> Result<T>;
}

impl<T> Step<T> for Result<T> {
    fn step(self, step: &str) -> Result<T> {
        self.with_context(|| format!("step: {step}"))
    }
}
