//! A throwaway virtual machine for what the test machines' own kernel cannot do: [`run`]
//! boots a kernel that has watch queues under `qemu-system-x86_64` with an initramfs
//! holding one program, runs it as root (as PID 1's child), and returns its exit status
//! and output.
//!
//! - **The kernel** ([`kernel`]) is built here from Debian's own source package, because
//!   no binary kernel in Debian has watch queues: `linux-image-amd64`, `-cloud`, `-rt` and
//!   `user-mode-linux`, 6.1 and 6.12 alike, ship `# CONFIG_WATCH_QUEUE is not set` (see
//!   `linux-config-6.1`). `apt-get download linux-source-6.1` (the version `linux-source`
//!   depends on), `tinyconfig` plus [`KERNEL_OPTIONS`] (a serial console, initramfs, ELF,
//!   proc/sys/devtmpfs, futexes, keys, watch queues, key notifications, and for the daemon
//!   unix sockets, epoll, eventfd, timerfd, signalfd and inotify), `make bzImage` under
//!   `nice`: 3.5 minutes on the test machines' 2 cores (with another build running). Only
//!   the bzImage and its `.config` are kept, in `target/vm/kernel/<package>_<version>/`,
//!   and reused while the fragment and the package version stay the same; the source
//!   (1.5 GB unpacked) and objects are removed.
//!   `WATCHD_VM_KERNEL=/path/to/bzImage` uses a kernel of one's own instead.
//! - **The initramfs** is written by [`Cpio`] (newc format, no tool needed): busybox
//!   (`busybox-static`), the program, the shared libraries `ldd` names for either, a
//!   `/dev/console` node, and an `/init` that mounts proc, sysfs and devtmpfs, prints
//!   [`BEGIN`], runs the program, prints [`EXIT`] with its status and reboots, which ends
//!   qemu (`-no-reboot`; a panic does too, `panic=-1`).
//! - **qemu** runs with KVM only where it works: `/dev/kvm` exists on the test machines but
//!   their CPUs have no vmx/svm, and qemu then hangs in the BIOS. Elsewhere it emulates
//!   (TCG: 3 s from starting qemu to its exit for the watch-queue probe).
//!   `WATCHD_VM_ACCEL=tcg|kvm` forces one.
//!   It is killed by its PID after [`BOOT_LIMIT`]. Each run's files live in
//!   `target/vm/run-<pid>-<n>/`, removed afterwards.
//!
//! A missing tool or package is an [`Unavailable`] error, so that a test can skip outside
//! CI and fail in it; [`PACKAGES`] names what to install.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::Process;

/// The Debian packages the VM needs: qemu, busybox, and the kernel's build tools.
pub const PACKAGES: &str =
    "qemu-system-x86 busybox-static make gcc libc6-dev flex bison bc libelf-dev xz-utils";

/// The kernel options on top of `tinyconfig`, all required to end up `=y`.
pub const KERNEL_OPTIONS: &[&str] = &[
    "64BIT",
    "PRINTK",
    "TTY",
    "SERIAL_8250",
    "SERIAL_8250_CONSOLE",
    "BLK_DEV_INITRD",
    "BINFMT_ELF",
    "BINFMT_SCRIPT",
    "PROC_FS",
    "SYSFS",
    "DEVTMPFS",
    "MULTIUSER",
    "FUTEX",
    "KEYS",
    "WATCH_QUEUE",
    "KEY_NOTIFICATIONS",
    // For the daemon itself (watchd-vm-probe): dbus-daemon and tokio's sockets, tokio's
    // epoll, eventfd and timers, the key poller's inotify (FILE credential caches).
    "NET",
    "UNIX",
    "EPOLL",
    "EVENTFD",
    "TIMERFD",
    "SIGNALFD",
    "INOTIFY_USER",
    "POSIX_TIMERS",
    "FILE_LOCKING",
    "SHMEM",
    // For the quota kind (watchd-vm-probe --quota): an ext4 image with the quota feature on
    // a loop device, the v2 quota format ext4's hidden quota files use, and the netlink
    // warnings the kind reads.
    "BLOCK",
    "BLK_DEV",
    "BLK_DEV_LOOP",
    "EXT4_FS",
    "QUOTA",
    "QFMT_V2",
    "QUOTA_NETLINK_INTERFACE",
];
/// Options turned off: the initramfs is not compressed, so no decompressors.
const KERNEL_OPTIONS_OFF: &[&str] = &[
    "RD_GZIP", "RD_BZIP2", "RD_LZMA", "RD_XZ", "RD_LZO", "RD_LZ4", "RD_ZSTD",
];

/// The line `/init` prints before it runs the program.
pub const BEGIN: &str = "WATCHD-VM-BEGIN";
/// The line `/init` prints after it, followed by a space and the exit status.
pub const EXIT: &str = "WATCHD-VM-EXIT";

/// How long one boot, run and power-off may take (emulated: ~3 s here).
pub const BOOT_LIMIT: Duration = Duration::from_secs(300);
/// How long each step of the kernel build may take.
const BUILD_LIMIT: Duration = Duration::from_secs(45 * 60);
/// How long downloading, unpacking or configuring the kernel may take.
const TOOL_LIMIT: Duration = Duration::from_secs(600);

pub use crate::{Unavailable, or_skip};

/// An [`Unavailable`] whose remedy is [`PACKAGES`].
fn unavailable(what: String) -> Unavailable {
    Unavailable {
        what,
        install: PACKAGES,
    }
}

/// What a program run in the VM did.
#[derive(Debug)]
pub struct VmOutput {
    /// Its exit status as the shell saw it (128 + N when killed by signal N).
    pub status: i32,
    /// Its output (stdout and stderr, on the serial console), `\r` removed.
    pub output: String,
    /// The whole console, kernel messages included.
    pub console: String,
    /// From starting qemu to qemu's exit.
    pub elapsed: Duration,
    /// The accelerators qemu was given (`tcg`, or `kvm` then `tcg`).
    pub accel: String,
}

impl VmOutput {
    /// Prints the probe's `ok` lines under `label`, then fails unless it exited 0 and
    /// reported every one of `checks` (each as a line `ok CHECK` or `ok CHECK: …`).
    pub fn expect_checks(&self, label: &str, checks: &[&str]) -> Result<()> {
        for line in self.output.lines().filter(|l| l.starts_with("ok ")) {
            println!("{label}: {line}");
        }
        ensure!(
            self.status == 0,
            "{label}: the probe exited with {}:\n{}",
            self.status,
            self.output
        );
        for check in checks {
            let line = format!("ok {check}");
            ensure!(
                self.output.lines().any(|l| l
                    .strip_prefix(&line)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))),
                "{label}: the probe did not report `{line}`:\n{}",
                self.output
            );
        }
        Ok(())
    }
}

/// Boots the watch-queue kernel with `binary` in an initramfs, runs it with `args` as root
/// and returns what it did. Fails with [`Unavailable`] when qemu, busybox or the kernel's
/// build tools are missing.
pub fn run(binary: &Path, args: &[&str]) -> Result<VmOutput> {
    run_with(binary, args, &Guest::default())
}

/// Runs `probe` (tests/probe/watchd_vm_probe.rs) in the VM with `args` before the paths of
/// the daemon and the bus there: this machine's `watchd` (`watchd`), its `dbus-daemon`, and
/// the passwd and group entries the bus policy names.
pub fn run_daemon_probe(probe: &Path, watchd: &Path, args: &[&str]) -> Result<VmOutput> {
    run_daemon_probe_with(probe, watchd, args, &[])
}

/// [`run_daemon_probe`] with `files` (path in the VM, contents) in the initramfs too. The
/// VM knows users 1000 and 1001 and group 3000 (1001 a member), for probes that run
/// clients as them.
pub fn run_daemon_probe_with(
    probe: &Path,
    watchd: &Path,
    args: &[&str],
    files: &[(&str, &[u8])],
) -> Result<VmOutput> {
    let mut guest = Guest {
        programs: vec![
            ("/bin/watchd", watchd),
            ("/bin/dbus-daemon", Path::new("/usr/bin/dbus-daemon")),
        ],
        files: vec![
            (
                "/etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\nu1000:x:1000:1000::/:/bin/sh\n\
                  u1001:x:1001:1001::/:/bin/sh\n",
            ),
            (
                "/etc/group",
                b"root:x:0:\nu1000:x:1000:\nu1001:x:1001:\nquota3000:x:3000:u1001\n",
            ),
        ],
    };
    guest.files.extend_from_slice(files);
    let mut all = args.to_vec();
    all.extend(["/bin/watchd", "/bin/dbus-daemon"]);
    run_with(probe, &all, &guest)
}

/// What else the VM's initramfs holds besides the program.
#[derive(Default)]
pub struct Guest<'a> {
    /// Programs copied in (with the shared libraries `ldd` names): path in the VM, path here.
    pub programs: Vec<(&'a str, &'a Path)>,
    /// Files written in: path in the VM, contents.
    pub files: Vec<(&'a str, &'a [u8])>,
}

/// [`run`], with `guest`'s programs and files in the initramfs too.
pub fn run_with(binary: &Path, args: &[&str], guest: &Guest<'_>) -> Result<VmOutput> {
    let qemu = tool("qemu-system-x86_64", "qemu-system-x86")?;
    let busybox = tool("busybox", "busybox-static")?;
    let kernel = kernel()?;

    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = RemoveOnDrop(vm_dir().join(format!(
        "run-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )));
    std::fs::create_dir_all(&dir.0)?;
    let initramfs = dir.0.join("initramfs.cpio");
    write_initramfs(&initramfs, &busybox, binary, args, guest)?;

    let accel = accelerators();
    let console_path = dir.0.join("console.log");
    let mut command = Command::new(&qemu);
    command
        .args(["-nographic", "-no-reboot", "-m", "512", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"]);
    for a in &accel {
        command.args(["-accel", a]);
    }
    command
        .stdin(Stdio::null())
        .stdout(File::create(&console_path)?)
        .stderr(File::create(dir.0.join("qemu.stderr"))?);
    let started = Instant::now();
    let mut qemu_process = Process::spawn(command, "qemu-system-x86_64")?;
    let exited = loop {
        if let Some(status) = qemu_process.child().try_wait()? {
            break Some(status);
        }
        if started.elapsed() > BOOT_LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    // Stops qemu by its PID if it is still running.
    drop(qemu_process);
    let console = String::from_utf8_lossy(&std::fs::read(&console_path)?).replace('\r', "");
    let stderr = std::fs::read_to_string(dir.0.join("qemu.stderr")).unwrap_or_default();
    let Some(qemu_status) = exited else {
        bail!(
            "the VM did not finish within {BOOT_LIMIT:?}; console:\n{}\nqemu: {stderr}",
            tail(&console, 40)
        );
    };
    let (status, output) = program_output(&console).with_context(|| {
        format!(
            "qemu exited ({qemu_status}) without the program's exit status; console:\n{}\nqemu: {stderr}",
            tail(&console, 40)
        )
    })?;
    Ok(VmOutput {
        status,
        output,
        console,
        elapsed,
        accel: accel.join(","),
    })
}

/// The program's status and the lines between [`BEGIN`] and [`EXIT`]. The BIOS's terminal
/// escapes (clear screen) can precede the first line.
fn program_output(console: &str) -> Option<(i32, String)> {
    let mut lines = console
        .lines()
        .skip_while(|l| !l.trim_end().ends_with(BEGIN))
        .skip(1);
    let mut output = String::new();
    for line in lines.by_ref() {
        if let Some((_, status)) = line.split_once(EXIT) {
            return Some((status.trim().parse().ok()?, output));
        }
        output.push_str(line);
        output.push('\n');
    }
    None
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `kvm` (with `tcg` behind it) where KVM can work, else `tcg`.
fn accelerators() -> Vec<String> {
    if let Ok(forced) = std::env::var("WATCHD_VM_ACCEL") {
        return vec![forced];
    }
    let cpu_has_virtualization = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    });
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if cpu_has_virtualization && kvm_opens {
        vec!["kvm".into(), "tcg".into()]
    } else {
        vec!["tcg".into()]
    }
}

/// `target/vm`, beside the profile directory this test binary is in.
pub fn vm_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .join("vm")
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `name` here, or [`Unavailable`] naming `package`.
fn tool(name: &str, package: &str) -> Result<PathBuf> {
    crate::tool(name, package, PACKAGES)
}

/// Runs `command` (killed by its process group after `limit`) with its output appended to
/// `log`; fails with the log's tail unless it exits 0.
pub fn run_logged(mut command: Command, log: &Path, what: &str, limit: Duration) -> Result<()> {
    let file = File::options().create(true).append(true).open(log)?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let mut process = Process::spawn(command, "a kernel build step")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = process.child().try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            // make's compilers are in its process group, which Process::spawn made.
            let group = nix::unistd::Pid::from_raw(process.pid() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = process.child().wait();
            bail!("{what} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        bail!(
            "{what} failed ({status}); {}:\n{}",
            log.display(),
            tail(&text, 30)
        );
    }
    Ok(())
}

/// `program args…`'s stdout, failing unless it exits 0 (for apt-cache, which only reads
/// local files).
fn stdout_of(program: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    ensure!(
        output.status.success(),
        "{} {args:?} failed ({}): {}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The watch-queue kernel's bzImage: `WATCHD_VM_KERNEL`, or the one built from Debian's
/// kernel source (built now when not cached; see the module's documentation).
pub fn kernel() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WATCHD_VM_KERNEL") {
        return Ok(PathBuf::from(path));
    }
    // One build at a time in this process.
    static BUILD: Mutex<()> = Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());

    let apt_cache = tool("apt-cache", "apt")?;
    let depends = stdout_of(&apt_cache, &["depends", "linux-source"])
        .map_err(|e| unavailable(format!("apt-cache knows no linux-source: {e:#}")))?;
    let package = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .filter(|p| p.starts_with("linux-source-"))
        .with_context(|| {
            format!("no linux-source-* in `apt-cache depends linux-source`: {depends}")
        })?
        .to_owned();
    let show = stdout_of(&apt_cache, &["show", "--no-all-versions", &package])?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .with_context(|| format!("no version of {package}"))?
        .trim()
        .to_owned();

    let dir = vm_dir()
        .join("kernel")
        .join(format!("{package}_{version}").replace(['/', ':'], "_"));
    let bz_image = dir.join("bzImage");
    let fragment = fragment();
    if bz_image.is_file()
        && std::fs::read_to_string(dir.join("fragment")).ok() == Some(fragment.clone())
    {
        return Ok(bz_image);
    }
    build_kernel(&package, &version, &dir)?;
    std::fs::write(dir.join("fragment"), fragment)?;
    Ok(bz_image)
}

/// What the cached kernel was configured with: a new list means a new build.
fn fragment() -> String {
    let on = KERNEL_OPTIONS.iter().map(|o| format!("CONFIG_{o}=y\n"));
    let off = KERNEL_OPTIONS_OFF
        .iter()
        .map(|o| format!("# CONFIG_{o} is not set\n"));
    on.chain(off).collect()
}

fn build_kernel(package: &str, version: &str, dir: &Path) -> Result<()> {
    let apt_get = tool("apt-get", "apt")?;
    let dpkg_deb = tool("dpkg-deb", "dpkg")?;
    let nice = tool("nice", "coreutils")?;
    for (name, package) in [
        ("make", "make"),
        ("gcc", "gcc"),
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
        ("xz", "xz-utils"),
        ("tar", "tar"),
        ("bash", "bash"),
    ] {
        tool(name, package)?;
    }
    if !Path::new("/usr/include/gelf.h").is_file() {
        return Err(
            unavailable("/usr/include/gelf.h not found (package libelf-dev)".into()).into(),
        );
    }

    let mut work = dir.as_os_str().to_owned();
    work.push(".build");
    let work = PathBuf::from(work);
    let _remove = RemoveOnDrop(work.clone());
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let log = work.join("build.log");
    let started = Instant::now();
    eprintln!(
        "vm: building a kernel with watch queues from {package} {version} (minutes; log {})",
        log.display()
    );

    let mut download = Command::new(&apt_get);
    download
        .args(["download", "-q", &format!("{package}={version}")])
        .current_dir(&work);
    run_logged(download, &log, "apt-get download", TOOL_LIMIT)?;
    let deb = std::fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;

    let mut unpack = Command::new("bash");
    unpack
        .args([
            "-o",
            "pipefail",
            "-c",
            r#""$1" --fsys-tarfile "$2" | tar -xOf - "./usr/src/$3.tar.xz" | tar -xJf - -C "$4""#,
            "unpack",
        ])
        .arg(&dpkg_deb)
        .arg(&deb)
        .arg(package)
        .arg(&work);
    run_logged(unpack, &log, "unpacking the kernel source", TOOL_LIMIT)?;
    std::fs::remove_file(&deb)?;
    let source = work.join(package);
    let objects = work.join("obj");
    std::fs::create_dir_all(&objects)?;
    let config = objects.join(".config");

    let make = |target: &str, jobs: usize| {
        let mut command = Command::new(&nice);
        command
            .args(["-n", "19", "make", "-s"])
            .arg(format!("-j{jobs}"))
            .arg("-C")
            .arg(&source)
            .arg(format!("O={}", objects.display()))
            .arg(target);
        command
    };
    run_logged(make("tinyconfig", 1), &log, "make tinyconfig", TOOL_LIMIT)?;
    let mut options = Command::new(source.join("scripts/config"));
    options.arg("--file").arg(&config);
    for option in KERNEL_OPTIONS {
        options.args(["--enable", option]);
    }
    for option in KERNEL_OPTIONS_OFF {
        options.args(["--disable", option]);
    }
    run_logged(options, &log, "scripts/config", TOOL_LIMIT)?;
    run_logged(
        make("olddefconfig", 1),
        &log,
        "make olddefconfig",
        TOOL_LIMIT,
    )?;
    let text = std::fs::read_to_string(&config)?;
    for option in KERNEL_OPTIONS {
        ensure!(
            text.lines().any(|l| l == format!("CONFIG_{option}=y")),
            "CONFIG_{option} did not end up =y in {package}'s tinyconfig (a dependency is missing)"
        );
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    run_logged(make("bzImage", jobs), &log, "make bzImage", BUILD_LIMIT)?;

    std::fs::create_dir_all(dir)?;
    std::fs::copy(objects.join("arch/x86/boot/bzImage"), dir.join("bzImage"))?;
    std::fs::copy(&config, dir.join("config"))?;
    eprintln!("vm: kernel built in {:.0?}", started.elapsed());
    Ok(())
}

/// The shared libraries `ldd` names for `binary` (none for a static one).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let ldd = tool("ldd", "libc-bin")?;
    let output = Command::new(ldd)
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .context("running ldd")?;
    // ldd fails ("not a dynamic executable") for a static binary.
    if !output.status.success() {
        return Ok(Vec::new());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line.trim(),
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// `s` quoted for the shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The VM's `/sbin/request-key`, which the kernel runs (as root, in the VM's only mount
/// namespace) for every `request_key(2)` that finds no key: it never instantiates the key,
/// so the key stays under construction until the helper is killed, by the PID it leaves in
/// [`REQUEST_KEY_HELPER_PID`] (watchd-vm-probe `--construction`).
const REQUEST_KEY_HELPER: &str = "#!/bin/busybox sh\n\
    echo $$ > /run/request-key.pid\n\
    exec /bin/busybox sleep 3600\n";
/// Where [`REQUEST_KEY_HELPER`] writes its PID.
pub const REQUEST_KEY_HELPER_PID: &str = "/run/request-key.pid";

/// The initramfs: busybox, `binary` as `/program`, their libraries, `/dev/console`, `/init`,
/// and a request-key helper that hangs ([`REQUEST_KEY_HELPER`]).
fn write_initramfs(
    path: &Path,
    busybox: &Path,
    binary: &Path,
    args: &[&str],
    guest: &Guest<'_>,
) -> Result<()> {
    let mut cpio = Cpio::create(path)?;
    for dir in ["bin", "dev", "proc", "run", "sys", "tmp"] {
        cpio.dir(dir)?;
    }
    cpio.char_device("dev/console", 5, 1)?;
    cpio.file_from("bin/busybox", busybox, 0o755)?;
    cpio.file_from("program", binary, 0o755)?;
    let mut libraries = shared_libraries(binary)?;
    libraries.extend(shared_libraries(busybox)?);
    for (name, source) in &guest.programs {
        cpio.file_from(name.trim_start_matches('/'), source, 0o755)?;
        libraries.extend(shared_libraries(source)?);
    }
    for (name, data) in &guest.files {
        cpio.file(name.trim_start_matches('/'), data, 0o644)?;
    }
    cpio.file("sbin/request-key", REQUEST_KEY_HELPER.as_bytes(), 0o755)?;
    libraries.sort();
    libraries.dedup();
    for library in libraries {
        let name = library.to_string_lossy().trim_start_matches('/').to_owned();
        cpio.file_from(&name, &library, 0o755)?;
    }
    let command: Vec<String> = std::iter::once("/program".to_owned())
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect();
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         echo {BEGIN}\n\
         {} 2>&1\n\
         echo \"{EXIT} $?\"\n\
         /bin/busybox reboot -f\n",
        command.join(" ")
    );
    cpio.file("init", init.as_bytes(), 0o755)?;
    cpio.finish()
}

/// A cpio archive in the kernel's initramfs format ("newc", Documentation/driver-api/
/// early-userspace/buffer-format.rst): per entry a 110-byte ASCII header, the name, the
/// data, each padded to 4 bytes; a `TRAILER!!!` entry ends it. Parent directories are added
/// as needed.
pub struct Cpio {
    out: BufWriter<File>,
    next_inode: u32,
    dirs: HashSet<String>,
}

impl Cpio {
    pub fn create(path: &Path) -> Result<Cpio> {
        Ok(Cpio {
            out: BufWriter::new(File::create(path)?),
            next_inode: 1,
            dirs: HashSet::new(),
        })
    }

    pub fn dir(&mut self, name: &str) -> Result<()> {
        if self.dirs.contains(name) {
            return Ok(());
        }
        self.parents(name)?;
        self.header(name, libc::S_IFDIR | 0o755, 0, (0, 0))?;
        self.dirs.insert(name.to_owned());
        Ok(())
    }

    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) -> Result<()> {
        self.parents(name)?;
        self.header(name, libc::S_IFCHR | 0o600, 0, (major, minor))
    }

    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) -> Result<()> {
        self.parents(name)?;
        self.header(name, libc::S_IFREG | mode, data.len(), (0, 0))?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    /// A regular file with `source`'s contents (symlinks followed).
    pub fn file_from(&mut self, name: &str, source: &Path, mode: u32) -> Result<()> {
        let mut file = File::open(source).with_context(|| source.display().to_string())?;
        let len = file.metadata()?.len() as usize;
        self.parents(name)?;
        self.header(name, libc::S_IFREG | mode, len, (0, 0))?;
        let copied = std::io::copy(&mut file, &mut self.out)?;
        ensure!(
            copied as usize == len,
            "{} changed while copied",
            source.display()
        );
        self.pad(len)
    }

    pub fn finish(mut self) -> Result<()> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(())
    }

    fn parents(&mut self, name: &str) -> Result<()> {
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) -> Result<()> {
        let size = u32::try_from(size).context("a file of 4 GiB or more")?;
        let inode = self.next_inode;
        self.next_inode += 1;
        let nlink = if mode & libc::S_IFMT == libc::S_IFDIR {
            2
        } else {
            1
        };
        let name_size = name.len() + 1;
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check
        let fields = [
            inode,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name_size as u32,
            0,
        ];
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08X}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name_size)
    }

    fn pad(&mut self, len: usize) -> Result<()> {
        let pad = len.next_multiple_of(4) - len;
        self.out.write_all(&[0; 3][..pad])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_output_after_bios_escapes() {
        let console = "SeaBIOS\nBooting from ROM...\n\x1bc\x1b[?7l\x1b[2JWATCHD-VM-BEGIN\n\
                       ok one\nFAIL two: why\nWATCHD-VM-EXIT 1\nreboot: Restarting system\n";
        assert_eq!(
            program_output(console),
            Some((1, "ok one\nFAIL two: why\n".to_owned()))
        );
        assert_eq!(program_output("WATCHD-VM-BEGIN\nok one\n"), None);
        assert_eq!(program_output("Kernel panic\n"), None);
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    /// The archive as the kernel reads it: 110-byte headers, names and data padded to 4.
    #[test]
    fn cpio_newc_layout() {
        let dir = std::env::temp_dir().join(format!("watchd-vm-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _remove = RemoveOnDrop(dir.clone());
        let path = dir.join("a.cpio");
        let mut cpio = Cpio::create(&path).unwrap();
        cpio.file("lib/x/f", b"hello", 0o644).unwrap();
        cpio.char_device("dev/console", 5, 1).unwrap();
        cpio.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();

        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            let header = std::str::from_utf8(&bytes[at..at + 110]).unwrap();
            assert_eq!(&header[..6], "070701");
            let field = |i: usize| u32::from_str_radix(&header[6 + 8 * i..14 + 8 * i], 16).unwrap();
            let (mode, size, rdev, name_size) =
                (field(1), field(6), (field(9), field(10)), field(11));
            let name_at = at + 110;
            let name = std::str::from_utf8(&bytes[name_at..name_at + name_size as usize - 1])
                .unwrap()
                .to_owned();
            assert_eq!(bytes[name_at + name_size as usize - 1], 0);
            let data_at = (name_at + name_size as usize).next_multiple_of(4);
            let data = bytes[data_at..data_at + size as usize].to_vec();
            at = (data_at + size as usize).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
            entries.push((name, mode, data, rdev));
        }
        assert_eq!(at, bytes.len());
        let dir_mode = libc::S_IFDIR | 0o755;
        assert_eq!(
            entries,
            [
                ("lib".to_owned(), dir_mode, vec![], (0, 0)),
                ("lib/x".to_owned(), dir_mode, vec![], (0, 0)),
                (
                    "lib/x/f".to_owned(),
                    libc::S_IFREG | 0o644,
                    b"hello".to_vec(),
                    (0, 0)
                ),
                ("dev".to_owned(), dir_mode, vec![], (0, 0)),
                (
                    "dev/console".to_owned(),
                    libc::S_IFCHR | 0o600,
                    vec![],
                    (5, 1)
                ),
            ]
        );
    }
}
