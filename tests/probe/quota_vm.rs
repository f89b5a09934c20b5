//! `watchd-vm-probe --quota`: the quota kind on a kernel with quotas. The VM's initramfs
//! holds an ext4 image made with `-O quota` ([`IMAGE`]); the probe attaches it to a loop
//! device, mounts it with limits enforced, sets limits for user 1000 and group 3000 with
//! quotactl(2), and starts subscribers as other processes of their own uids and groups
//! (the bus vouches for those): uid 1000, uid 1001 (a member of group 3000), root with
//! `all`, and uid 1000 asking for `all`, which must be refused. Then uid 1000, with group
//! 3000, writes past its soft and hard limits and deletes the file. Each subscriber must see
//! exactly the warnings that concern it, with the device, the mount point and who caused it
//! only where that is its own uid (or it is root's `all` watch). The probe also listens on
//! the netlink group itself and prints the kernel's bytes (for the parser's unit tests).
//!
//! The daemon decides without polkitd (none runs in the VM), from an actions file in which
//! `watch-superblock` is allowed to any user, as an administrator would make it to let users
//! without a session watch their own quota; `watch-other-users-quota` keeps its default
//! (administrators only).

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use watchd::sources::quota::{self as source, wire};
use watchd_client::{Client, SubscribeOptions, WatchOptions};
use watchd_e2e::sys::{QuotaLimits, quotactl_set_limits, quotactl_space_used};
use watchd_proto::{RecordType, attr, quota, superblock};

/// Where the image is in the VM.
pub const IMAGE: &str = "/quota.img";
const DEVICE: &str = "/dev/loop0";
const MOUNT: &str = "/mnt/quota";
const ACTIONS: &str = "/run/watchd-vm/quota-actions.policy";
/// The daemon's configuration added for this run.
pub const CONFIG: &str = "\n[authorization]\nmode = \"fallback\"\nactions_file = \"/run/watchd-vm/quota-actions.policy\"\n";

const USER: u32 = 1000;
const OTHER: u32 = 1001;
const GROUP: u32 = 3000;
/// How long a subscriber may take to see what it waits for (an emulated CPU).
const PATIENCE: Duration = Duration::from_secs(60);

/// The actions file the daemon reads: watchd's, with `watch-superblock` allowed to anyone.
pub fn write_actions_file() -> Result<()> {
    let shipped = include_str!("../../data/org.watchd.Watchd1.policy");
    let start = shipped
        .find("<action id=\"org.watchd.Watchd1.watch-superblock\">")
        .context("no watch-superblock action")?;
    let end = start
        + shipped[start..]
            .find("</action>")
            .context("unclosed action")?;
    let action = shipped[start..end].replace(
        "<allow_any>auth_admin</allow_any>",
        "<allow_any>yes</allow_any>",
    );
    if let Some(dir) = Path::new(ACTIONS).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        ACTIONS,
        format!("{}{action}{}", &shipped[..start], &shipped[end..]),
    )?;
    Ok(())
}

/// The roles the probe plays in processes of their own: `--quota-client UID GID GROUPS
/// ADDRESS ALL` and `--quota-write UID GID PATH KIB` / `--quota-unlink UID GID PATH`.
pub fn child_role(args: &[String]) -> Option<ExitCode> {
    let role = args.first()?.as_str();
    if !matches!(role, "--quota-client" | "--quota-write" | "--quota-unlink") {
        return None;
    }
    let result = (|| {
        let number = |i: usize| -> Result<u32> {
            args.get(i)
                .context("missing argument")?
                .parse()
                .context("not a number")
        };
        let (uid, gid) = (number(1)?, number(2)?);
        let groups: Vec<u32> = match role {
            "--quota-client" => args
                .get(3)
                .context("no groups")?
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        become_user(uid, gid, &groups)?;
        match role {
            "--quota-client" => client(
                args.get(4).context("no address")?,
                args.get(5).map_or("", String::as_str),
            ),
            "--quota-write" => write(
                Path::new(args.get(3).context("no path")?),
                u64::from(number(4)?),
            ),
            _ => {
                std::fs::remove_file(args.get(3).context("no path")?)?;
                nix::unistd::sync();
                println!("unlinked");
                Ok(())
            }
        }
    })();
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error {e:#}");
            ExitCode::FAILURE
        }
    })
}

/// Drops root for `uid`, `gid` and `groups` (this process is single-threaded here).
fn become_user(uid: u32, gid: u32, groups: &[u32]) -> Result<()> {
    let groups: Vec<nix::unistd::Gid> = groups.iter().map(|&g| g.into()).collect();
    nix::unistd::setgroups(&groups)?;
    nix::unistd::setgid(gid.into())?;
    nix::unistd::setuid(uid.into())?;
    Ok(())
}

/// A subscriber: one quota watch with the options of `spec` ("all", "initial", or
/// `key=value` string options, comma-separated; `min_interval_s` a number); prints `ready`
/// (or `refused …`), then one line per record (see [`Seen`]).
fn client(address: &str, spec: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = Client::connect(Some(address)).await?;
        let sub = client.subscribe(SubscribeOptions::default()).await?;
        let mut options = WatchOptions::new();
        for word in spec.split(',').filter(|w| !w.is_empty()) {
            options = match word.split_once('=') {
                None if word == "initial" => options.initial(true),
                None => options.option(word, true),
                Some(("min_interval_s", n)) => options.option("min_interval_s", n.parse::<u32>()?),
                Some((key, value)) => options.option(key, value),
            };
        }
        if let Err(e) = sub.add_watch(1, "quota", &options).await {
            println!("refused {e}");
            return Ok(());
        }
        println!("ready");
        std::io::stdout().flush()?;
        let mut events = sub.into_events();
        while let Some(event) = events.next().await {
            let event = event?;
            let r = event.record();
            let h = event.header();
            let mounts: Vec<String> = r
                .attrs()
                .filter_map(Result::ok)
                .filter(|a| a.id == attr::MOUNTED_ON)
                .map(|a| String::from_utf8_lossy(a.value).into_owned())
                .collect();
            let n = |id| r.get_u64(id).map_or(-1, |v| v as i64);
            println!(
                "R {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
                h.record_type,
                h.subtype,
                h.flags,
                r.get_u32(attr::QUOTA_TYPE).map_or(-1, i64::from),
                r.get_u64(attr::QUOTA_ID).map_or(-1, |v| v as i64),
                r.get_u32(attr::QUOTA_WARNING).map_or(-1, i64::from),
                r.get_str(attr::QUOTA_WARNING_NAME)
                    .as_deref()
                    .unwrap_or("-"),
                r.get_u32(attr::MAJOR).map_or(-1, i64::from),
                r.get_u32(attr::MINOR).map_or(-1, i64::from),
                r.get_u64(attr::QUOTA_CAUSED_BY).map_or(-1, |v| v as i64),
                if mounts.is_empty() {
                    "-".to_owned()
                } else {
                    mounts.join(",")
                },
                r.get_str(attr::RESOURCE).as_deref().unwrap_or("-"),
                n(attr::QUOTA_USED),
                n(attr::QUOTA_ROOM),
                n(attr::QUOTA_SOFT_LIMIT),
                n(attr::QUOTA_HARD_LIMIT),
                n(attr::THRESHOLD),
                n(attr::MARGIN),
            );
            std::io::stdout().flush()?;
        }
        anyhow::Ok(())
    })
}

/// Appends `kib` KiB to `path` in 4 KiB writes, then syncs; prints what it wrote and
/// whether the kernel said EDQUOT.
fn write(path: &Path, kib: u64) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let chunk = [0x5au8; 4096];
    let mut written = 0;
    let mut edquot = false;
    while written < kib * 1024 {
        match file.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::EDQUOT) => {
                edquot = true;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let _ = file.sync_all();
    println!("wrote {written} edquot={edquot}");
    Ok(())
}

/// One record a subscriber printed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    record_type: u32,
    subtype: u8,
    flags: u8,
    quota_type: i64,
    id: i64,
    warning: i64,
    name: String,
    major: i64,
    minor: i64,
    caused_by: i64,
    mounts: String,
    /// The usage records' fields; "-" and -1 in the kernel's warnings.
    resource: String,
    used: i64,
    room: i64,
    soft: i64,
    hard: i64,
    threshold: i64,
    margin: i64,
}

impl Seen {
    fn parse(line: &str) -> Option<Seen> {
        let f: Vec<&str> = line.strip_prefix("R ")?.split(' ').collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
        Some(Seen {
            record_type: f.first()?.parse().ok()?,
            subtype: f.get(1)?.parse().ok()?,
            flags: f.get(2)?.parse().ok()?,
            quota_type: n(3)?,
            id: n(4)?,
            warning: n(5)?,
            name: (*f.get(6)?).to_owned(),
            major: n(7)?,
            minor: n(8)?,
            caused_by: n(9)?,
            mounts: (*f.get(10)?).to_owned(),
            resource: (*f.get(11)?).to_owned(),
            used: n(12)?,
            room: n(13)?,
            soft: n(14)?,
            hard: n(15)?,
            threshold: n(16)?,
            margin: n(17)?,
        })
    }

    fn is(&self, quota_type: u32, id: u32, name: &str) -> bool {
        self.quota_type == i64::from(quota_type) && self.id == i64::from(id) && self.name == name
    }

    /// A usage record of this subtype about this quota's space.
    fn usage(&self, subtype: u8, quota_type: u32, id: u32) -> bool {
        self.subtype == subtype
            && self.quota_type == i64::from(quota_type)
            && self.id == i64::from(id)
            && self.resource == "space"
    }
}

/// A probe child and the lines it prints, read by a thread.
struct Role {
    child: Child,
    lines: Receiver<String>,
    label: &'static str,
}

impl Role {
    fn start(label: &'static str, args: &[String]) -> Result<Role> {
        let mut child = Command::new("/program")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        let stdout = child.stdout.take().context("piped")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Role {
            child,
            lines,
            label,
        })
    }

    /// The next line, within [`PATIENCE`].
    fn line(&self) -> Result<String> {
        self.lines
            .recv_timeout(PATIENCE)
            .with_context(|| format!("{}: nothing printed within {PATIENCE:?}", self.label))
    }

    /// Nothing printed for `quiet`.
    fn quiet_for(&self, quiet: Duration) -> Result<()> {
        match self.lines.recv_timeout(quiet) {
            Ok(line) => bail!("{}: printed {line:?}, expected nothing", self.label),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(()),
            Err(e) => bail!("{}: {e}", self.label),
        }
    }

    /// Records until one that `done` accepts (included).
    fn records_until(&self, done: impl Fn(&Seen) -> bool) -> Result<Vec<Seen>> {
        let mut seen = Vec::new();
        loop {
            let line = self.line().with_context(|| format!("after {seen:?}"))?;
            let record = Seen::parse(&line)
                .with_context(|| format!("{}: unexpected line {line:?}", self.label))?;
            let last = done(&record);
            seen.push(record);
            if last {
                return Ok(seen);
            }
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a role to its end; returns its output.
fn run_role(args: &[String]) -> Result<String> {
    let out = Command::new("/program").args(args).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "{args:?} failed: {text}");
    Ok(text)
}

/// The mount options that enforce the image's user and group limits.
const ENFORCED: &str = "usrquota,grpquota";

/// Mounts the image's loop device at [`MOUNT`] with `options` (none: usage counted, limits
/// not enforced).
fn mount_image(options: Option<&str>) -> Result<()> {
    nix::mount::mount(
        Some(DEVICE),
        MOUNT,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        options,
    )
    .with_context(|| format!("mounting the quota image with options {options:?}"))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|&a| a.to_owned()).collect()
}

/// A subscriber's arguments: `uid` (its own gid), its groups, the watch's options.
fn client_args(address: &str, uid: u32, groups: &str, spec: &str) -> Vec<String> {
    let mut args = strings(&["--quota-client"]);
    args.extend([uid.to_string(), uid.to_string(), groups.to_owned()]);
    args.push(address.to_owned());
    args.push(spec.to_owned());
    args
}

/// The checks, in order; returns how many passed.
pub async fn checks(client: &Client, address: &str) -> Result<u32> {
    let mut count = 0;
    let status = client.status().await?;
    let described = status
        .source_details
        .get("quota")
        .context("status lists no quota source")?;
    ensure!(
        described.contains("VFS_DQUOT"),
        "status: the quota source says {described:?}"
    );
    println!("ok status: quota: {described}");
    count += 1;

    // The filesystem: the image on a loop device, limits enforced for users and groups.
    std::fs::create_dir_all(MOUNT)?;
    let losetup = Command::new("/bin/busybox")
        .args(["losetup", DEVICE, IMAGE])
        .output()?;
    ensure!(
        losetup.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&losetup.stderr)
    );
    mount_image(Some(ENFORCED))?;
    let device = CString::new(DEVICE)?;
    quotactl_set_limits(
        &device,
        quota::USER,
        USER,
        QuotaLimits {
            block_soft_kib: 64,
            block_hard_kib: 128,
            ..Default::default()
        },
    )
    .context("Q_SETQUOTA for user 1000")?;
    quotactl_set_limits(
        &device,
        quota::GROUP,
        GROUP,
        QuotaLimits {
            block_soft_kib: 32,
            block_hard_kib: 1024,
            ..Default::default()
        },
    )
    .context("Q_SETQUOTA for group 3000")?;
    let dir = Path::new(MOUNT).join("u");
    std::fs::create_dir_all(&dir)?;
    chown(&dir, Some(USER), Some(GROUP))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    println!(
        "ok filesystem: ext4 with quota on {DEVICE} at {MOUNT}, limits for uid {USER} and gid {GROUP}"
    );
    count += 1;

    // The kernel's own bytes, to print and to parse.
    let (raw, family, _) =
        source::join_events()?.map_err(|why| anyhow::anyhow!("no quota netlink family: {why}"))?;

    let user = Role::start("uid 1000", &client_args(address, USER, "1000", ""))?;
    let member = Role::start("uid 1001", &client_args(address, OTHER, "1001,3000", ""))?;
    let admin = Role::start("root all", &client_args(address, 0, "0", "all"))?;
    let pretender = Role::start("uid 1000 all", &client_args(address, USER, "1000", "all"))?;
    for role in [&user, &member, &admin] {
        let line = role.line()?;
        ensure!(line == "ready", "{}: {line}", role.label);
    }
    println!("ok subscribed: uid 1000, uid 1001 (group 3000) and root (all)");
    count += 1;
    let refusal = pretender.line()?;
    ensure!(
        refusal.starts_with("refused") && refusal.contains("watch-other-users-quota"),
        "uid 1000's all watch: {refusal}"
    );
    println!("ok all refused to uid 1000: {refusal}");
    count += 1;

    // uid 1000 with group 3000 writes: past the group's soft limit (32 KiB) and its own
    // (64 KiB), then into its hard limit (128 KiB); then deletes the file.
    let file = dir.join("a").display().to_string();
    let as_writer = |role: &str| {
        let mut args = strings(&[role]);
        args.extend([USER.to_string(), GROUP.to_string(), file.clone()]);
        args
    };
    let mut first = as_writer("--quota-write");
    first.push("80".into());
    let wrote = run_role(&first)?;
    ensure!(wrote.contains("edquot=false"), "first write: {wrote}");
    let mut second = as_writer("--quota-write");
    second.push("100".into());
    let wrote = run_role(&second)?;
    ensure!(
        wrote.contains("edquot=true"),
        "the write past the hard limit: {wrote}"
    );
    let used = quotactl_space_used(&device, quota::USER, USER)?;
    println!("ok written: {} (uid 1000 uses {used} bytes)", wrote.trim());
    count += 1;
    run_role(&as_writer("--quota-unlink"))?;

    let mount_point = MOUNT.to_owned();
    // The default thresholds (10 %) also see uid 1000's quota fill: those records come
    // with the warnings, from the same filesystem, without who caused them.
    let check_common = |label: &str, seen: &[Seen], caused: i64| -> Result<()> {
        for s in seen {
            ensure!(
                s.record_type == RecordType::Superblock as u32
                    && [
                        superblock::QUOTA,
                        superblock::QUOTA_LOW,
                        superblock::QUOTA_STILL_LOWER,
                        superblock::QUOTA_RECOVERED
                    ]
                    .contains(&s.subtype),
                "{label}: not a quota record: {s:?}"
            );
            ensure!(
                (s.major, s.minor) == (7, 0) && s.mounts == mount_point,
                "{label}: wrong device or mount point: {s:?}"
            );
            ensure!(
                s.caused_by
                    == if s.subtype == superblock::QUOTA {
                        caused
                    } else {
                        -1
                    },
                "{label}: caused_by {s:?}, expected {caused}"
            );
        }
        Ok(())
    };

    let seen = user.records_until(|s| s.is(quota::USER, USER, "block_soft_below"))?;
    ensure!(
        seen.iter()
            .all(|s| s.quota_type == i64::from(quota::USER) && s.id == i64::from(USER)),
        "uid 1000 got warnings not about itself: {seen:?}"
    );
    check_common("uid 1000", &seen, i64::from(USER))?;
    for name in ["block_soft_exceeded", "block_hard_exceeded"] {
        ensure!(
            seen.iter().any(|s| s.is(quota::USER, USER, name)),
            "uid 1000 did not get {name}: {seen:?}"
        );
    }
    let names: Vec<&str> = seen.iter().map(|s| s.name.as_str()).collect();
    println!("ok uid 1000's own warnings: {}", names.join(", "));
    count += 1;

    let seen = member.records_until(|s| s.is(quota::GROUP, GROUP, "block_soft_below"))?;
    ensure!(
        seen.iter()
            .all(|s| s.quota_type == i64::from(quota::GROUP) && s.id == i64::from(GROUP)),
        "uid 1001 got warnings of uid 1000's own quota: {seen:?}"
    );
    check_common("uid 1001", &seen, -1)?;
    ensure!(
        seen.iter()
            .any(|s| s.is(quota::GROUP, GROUP, "block_soft_exceeded")),
        "uid 1001 did not get group 3000's block_soft_exceeded: {seen:?}"
    );
    let names: Vec<&str> = seen.iter().map(|s| s.name.as_str()).collect();
    println!(
        "ok uid 1001 got group 3000's warnings only, without who caused them: {}",
        names.join(", ")
    );
    count += 1;

    let seen = admin.records_until(|s| s.is(quota::GROUP, GROUP, "block_soft_below"))?;
    check_common("root all", &seen, i64::from(USER))?;
    ensure!(
        seen.iter()
            .all(|s| s.subtype == superblock::QUOTA || s.id == 0),
        "root's all watch got another user's usage thresholds (all is for warnings only): {seen:?}"
    );
    for (quota_type, id, name) in [
        (quota::USER, USER, "block_soft_exceeded"),
        (quota::USER, USER, "block_hard_exceeded"),
        (quota::GROUP, GROUP, "block_soft_exceeded"),
        (quota::USER, USER, "block_soft_below"),
    ] {
        ensure!(
            seen.iter().any(|s| s.is(quota_type, id, name)),
            "root's all watch did not get {name} of {quota_type}/{id}: {seen:?}"
        );
    }
    println!(
        "ok root's all watch: {} warnings of both, with who caused them",
        seen.len()
    );
    count += 1;

    count += raw_bytes(&raw, family.id)?;
    drop((user, member, admin, pretender));
    count += thresholds(address, &device, &dir)?;
    let _ = nix::mount::umount(MOUNT);
    Ok(count)
}

/// Usage thresholds, where the kernel warns of nothing: hard limits only (uid 1000: 1 MiB,
/// group 3000: 2 MiB), and writes that stay under them. uid 1000 watches with the line at
/// 20 % of its limit and steps of 10 %; uid 1001, a member of group 3000, at 60 %. uid 1000
/// (with group 3000) writes 850 KiB, then 130 KiB more, then deletes the file: uid 1000 must
/// get quota_low, quota_still_lower and quota_recovered about its own quota, with
/// quotactl's numbers, and no kernel warning; uid 1001 quota_low and quota_recovered about
/// the group's, never uid 1000's; a watch set after the first write starts with a snapshot
/// quota_low.
fn thresholds(address: &str, device: &CString, dir: &Path) -> Result<u32> {
    const USER_HARD: i64 = 1 << 20;
    const GROUP_HARD: i64 = 2 << 20;
    let mut count = 0;
    for (quota_type, id, hard_kib) in [(quota::USER, USER, 1024), (quota::GROUP, GROUP, 2048)] {
        quotactl_set_limits(
            device,
            quota_type,
            id,
            QuotaLimits {
                block_hard_kib: hard_kib,
                ..Default::default()
            },
        )?;
    }
    let steps = "min_interval_s=0,step=10%";
    let user = Role::start(
        "uid 1000 thresholds",
        &client_args(address, USER, "1000", &format!("below=20%,{steps}")),
    )?;
    let member = Role::start(
        "uid 1001 thresholds",
        &client_args(address, OTHER, "1001,3000", &format!("below=60%,{steps}")),
    )?;
    for role in [&user, &member] {
        let line = role.line()?;
        ensure!(line == "ready", "{}: {line}", role.label);
    }
    let file = dir.join("b").display().to_string();
    let as_writer = |role: &str, kib: Option<&str>| {
        let mut args = strings(&[role]);
        args.extend([USER.to_string(), GROUP.to_string(), file.clone()]);
        args.extend(kib.map(str::to_owned));
        args
    };
    let wrote = run_role(&as_writer("--quota-write", Some("850")))?;
    ensure!(wrote.contains("edquot=false"), "first write: {wrote}");
    let used = i64::try_from(quotactl_space_used(device, quota::USER, USER)?)?;
    let seen = user.records_until(|s| s.usage(superblock::QUOTA_LOW, quota::USER, USER))?;
    let low = seen.last().context("no record")?;
    // A look may land during the write: the record says what quotactl said then.
    ensure!(
        low.used <= used
            && low.hard == USER_HARD
            && low.soft == 0
            && low.room == USER_HARD - low.used
            && low.room < low.threshold
            && low.threshold == USER_HARD / 5
            && low.margin == USER_HARD / 10
            && low.flags == 0,
        "uid 1000's quota_low does not say what quotactl says (used {used} after the write): {low:?}"
    );
    println!(
        "ok uid 1000's quota_low before its hard limit: {} bytes left of 1 MiB, below {}",
        low.room, low.threshold
    );
    count += 1;

    let late = Role::start(
        "uid 1000 initial",
        &client_args(address, USER, "1000", &format!("below=20%,{steps},initial")),
    )?;
    ensure!(late.line()? == "ready", "the late watch was refused");
    let first = late.records_until(|s| {
        s.record_type == RecordType::Meta as u32 && s.subtype == watchd_proto::meta::SYNC
    })?;
    ensure!(
        first.len() == 2
            && first[0].usage(superblock::QUOTA_LOW, quota::USER, USER)
            && first[0].flags & watchd_proto::FLAG_SNAPSHOT != 0
            && first[0].used == used,
        "a watch set while low does not start with a snapshot quota_low, then SYNC: {first:?}"
    );
    // Its thresholds are looked at every second this close to the line: a live quota_low
    // after the snapshot would come within that.
    late.quiet_for(Duration::from_secs(3))
        .context("a live record after the snapshot")?;
    drop(late);
    println!("ok a watch set while low starts with a snapshot quota_low");
    count += 1;

    // Group 3000's limit removed while uid 1001 is low about it: quota_recovered, no limit.
    let seen_by_member =
        member.records_until(|s| s.usage(superblock::QUOTA_LOW, quota::GROUP, GROUP))?;
    quotactl_set_limits(device, quota::GROUP, GROUP, QuotaLimits::default())?;
    let lifted =
        member.records_until(|s| s.usage(superblock::QUOTA_RECOVERED, quota::GROUP, GROUP))?;
    let wrote = run_role(&as_writer("--quota-write", Some("130")))?;
    ensure!(wrote.contains("edquot=false"), "second write: {wrote}");
    let lower =
        user.records_until(|s| s.usage(superblock::QUOTA_STILL_LOWER, quota::USER, USER))?;
    run_role(&as_writer("--quota-unlink", None))?;
    let recovered =
        user.records_until(|s| s.usage(superblock::QUOTA_RECOVERED, quota::USER, USER))?;
    let all: Vec<&Seen> = seen.iter().chain(&lower).chain(&recovered).collect();
    ensure!(
        all.iter().all(|s| s.quota_type == i64::from(quota::USER)
            && s.id == i64::from(USER)
            && s.subtype != superblock::QUOTA
            && (s.major, s.minor) == (7, 0)
            && s.mounts == MOUNT),
        "uid 1000 got more than its own thresholds (a kernel warning, or another quota): {all:?}"
    );
    let names: Vec<u8> = all.iter().map(|s| s.subtype).collect();
    ensure!(
        names
            == [
                superblock::QUOTA_LOW,
                superblock::QUOTA_STILL_LOWER,
                superblock::QUOTA_RECOVERED
            ],
        "uid 1000's thresholds came as {all:?}"
    );
    println!(
        "ok uid 1000's thresholds without kernel warnings: quota_low, quota_still_lower ({} bytes left), quota_recovered",
        lower.last().map_or(-1, |s| s.room)
    );
    count += 1;

    let seen: Vec<&Seen> = seen_by_member.iter().chain(&lifted).collect();
    ensure!(
        seen.iter().all(|s| s.quota_type == i64::from(quota::GROUP)
            && s.id == i64::from(GROUP)
            && s.subtype != superblock::QUOTA),
        "uid 1001 got more than group 3000's thresholds: {seen:?}"
    );
    ensure!(
        seen.iter()
            .any(|s| s.usage(superblock::QUOTA_LOW, quota::GROUP, GROUP)
                && s.hard == GROUP_HARD
                && s.threshold == GROUP_HARD * 3 / 5),
        "uid 1001 got no quota_low of group 3000 at 60 % of 2 MiB: {seen:?}"
    );
    ensure!(
        lifted
            .last()
            .is_some_and(|s| s.hard == 0 && s.soft == 0 && s.used > 0),
        "the recovery when group 3000's limit was removed: {lifted:?}"
    );
    member
        .quiet_for(Duration::from_secs(3))
        .context("uid 1001 after its group's limit was removed")?;
    println!(
        "ok uid 1001 got group 3000's thresholds only: quota_low, and quota_recovered when the limit was removed"
    );
    count += 1;

    // Low again, then the filesystem unmounted: the quota is gone, and so is the warning.
    // The unmount also shows that no watch keeps the filesystem busy.
    run_role(&as_writer("--quota-write", Some("900")))?;
    user.records_until(|s| s.usage(superblock::QUOTA_LOW, quota::USER, USER))?;
    nix::mount::umount(MOUNT).context("unmounting the quota filesystem under watches")?;
    let gone = user.records_until(|s| s.subtype == superblock::QUOTA_RECOVERED)?;
    ensure!(
        gone.last()
            .is_some_and(|s| s.usage(superblock::QUOTA_RECOVERED, quota::USER, USER)
                && s.hard == 0
                && s.mounts == "-"),
        "uid 1000's quota_low was not ended when its filesystem was unmounted: {gone:?}"
    );
    println!("ok an unmount ends a low quota with quota_recovered, and no watch kept it busy");
    count += 1;

    // Mounted again without usrquota: usage is counted, limits are not enforced. No write
    // fails, the kernel warns of nothing, and neither does the daemon, though uid 1000's
    // 900 KiB are near its 1 MiB and then past it.
    let open_mount = || std::fs::File::open(MOUNT).map(std::os::fd::OwnedFd::from);
    mount_image(None)?;
    let counted = quotactl_space_used(device, quota::USER, USER)
        .context("usage is not counted without usrquota")?;
    let enforced = watchd::sys::quotactl_fd_limits_enforced(open_mount()?.as_fd(), quota::USER)?;
    ensure!(
        counted >= 900 * 1024 && !enforced,
        "without usrquota: {counted} bytes counted, limits enforced: {enforced}"
    );
    let wrote = run_role(&as_writer("--quota-write", Some("300")))?;
    ensure!(
        wrote.contains("edquot=false"),
        "a write past an unenforced limit: {wrote}"
    );
    user.quiet_for(Duration::from_secs(3))
        .context("a threshold record about limits that are not enforced")?;
    nix::mount::umount(MOUNT)?;
    mount_image(Some(ENFORCED))?;
    ensure!(
        watchd::sys::quotactl_fd_limits_enforced(open_mount()?.as_fd(), quota::USER)?,
        "with usrquota the limits are not said to be enforced"
    );
    println!(
        "ok limits counted but not enforced give no threshold record: {counted} bytes of a 1 MiB limit, then past it"
    );
    count += 1;
    Ok(count)
}

/// What the probe's own socket received: each message printed in hex and parsed.
fn raw_bytes(socket: &std::os::fd::OwnedFd, family_id: u16) -> Result<u32> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut warnings = Vec::new();
    loop {
        match watchd::sys::netlink_recv(socket.as_fd(), &mut buf) {
            Ok(len) => {
                for message in wire::messages(&buf[..len]) {
                    let message = message?;
                    if message.kind == family_id {
                        let bytes = &buf[..len];
                        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                        warnings.push((wire::warning(&message)?, hex));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => bail!("reading the probe's own netlink socket: {e}"),
        }
    }
    ensure!(
        !warnings.is_empty(),
        "the probe's own socket got no warning"
    );
    for (warning, hex) in &warnings {
        println!("bytes {warning:?} {hex}");
    }
    ensure!(
        warnings.iter().any(|(w, _)| w.quota_type == quota::USER
            && w.id == 1000
            && w.warning == 6
            && w.major == 7),
        "no user block_soft_exceeded among the kernel's messages"
    );
    println!("ok the kernel's bytes: {} warnings parsed", warnings.len());
    Ok(1)
}
