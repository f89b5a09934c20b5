//! A throwaway Kerberos realm on loopback, the MIT client tools run as another uid against
//! it, and a root's-eye view of the kernel keyrings MIT krb5 keeps tickets in.
//!
//! - [`Kdc::start`]: realm [`REALM`] with principals [`ALICE`] and [`BOB`], entirely inside a
//!   directory of the test's scratch directory: `kdc.conf`, `krb5.conf`, the database and
//!   its stash, the KDC's log. `krb5kdc` runs in the foreground on 127.0.0.1 (UDP and TCP)
//!   on a free port and is stopped by its PID on drop. Nothing is written to `/etc`: every
//!   tool gets `KRB5_CONFIG` (and `KRB5_KDC_PROFILE`) pointing into the scratch directory,
//!   and every `KRB5*` variable of the test's own environment is removed.
//! - [`Kdc::kinit`], [`Kdc::kinit_renew`], [`Kdc::kswitch`], [`Kdc::kdestroy`],
//!   [`Kdc::klist`], [`Kdc::collection`]: the client tools as another uid (password on
//!   stdin), failing with their stderr. The realm's default ccache is
//!   `KEYRING:persistent:%{uid}`; a `FILE:` cache is one [`Kdc::file_ccache`] away.
//! - [`PersistentCollection::claim`]: exclusive use of one uid's `KEYRING:persistent:UID`
//!   for a test, cleaned up on drop; [`persistent_keyring`], [`persistent_keyring_tree`],
//!   [`read_key`], [`primary_cache`]: what is in it, read by root with `keyctl`.
//!
//! Kernel keyrings, as found on the test machines (Debian's krb5 1.20, keyutils 1.6):
//!
//! - **Keyrings are not namespaced by mount namespace.** A persistent keyring is per uid
//!   (and per user namespace), so a test's kinit into `KEYRING:persistent:1000` changes the
//!   host's uid 1000. Hence [`PersistentCollection`]: one test at a time in this process
//!   (a mutex), a refusal if the uid has caches of another realm (a real user's tickets),
//!   and on drop `kdestroy -A` and the invalidation of the persistent keyring when nothing
//!   but krb5's empty `_krb` is left in it, which is the state of a machine that never had
//!   one (`/proc/key-users` has no line for the uid again).
//! - **No session-keyring trouble for the client tools.** krb5 asks for
//!   `KEYCTL_GET_PERSISTENT(-1, KEY_SPEC_PROCESS_KEYRING)`: the persistent keyring is linked
//!   into a *process* keyring the tool gets of its own, not into the session keyring it
//!   inherited from the root test runner (`_uid_ses.0`, or a PAM session keyring, which
//!   uid 1000 could not write). So `kinit` runs as uid 1000 with plain `setuid`, no
//!   `keyctl session` around it.
//! - **Root reads nothing without possession.** krb5's keys are `alswrv` for the possessor
//!   and `v` (view) for the owner, nothing for others, and root gets no bypass: without
//!   possession `keyctl describe`/`print` as root fail with EACCES, and even uid 1000
//!   itself can describe but not read them. The helpers here run `keyctl` as root in a
//!   new anonymous session keyring (`keyctl session - ...`), link the persistent keyring
//!   into it (`keyctl get_persistent @s UID`, which needs CAP_SETUID for another uid) and
//!   read through that link; the session keyring dies with the process, so nothing stays
//!   linked to the test runner's keyrings. Each call resets the persistent keyring's
//!   3-day expiry (harmless in a test, not something a daemon should do per poll).
//! - **Admin tools touch root's keyrings unless told not to.** `kadmin.local` opens the
//!   default ccache; with our `krb5.conf` that is `KEYRING:persistent:0`, and it creates
//!   root's persistent keyring with a `_krb` in it. The realm's admin tools and the KDC
//!   therefore run with `KRB5CCNAME=MEMORY:`.

use std::collections::HashSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::Process;
use crate::polkit::as_user;

/// The throwaway realm.
pub const REALM: &str = "WATCHD.TEST";
/// The first principal (`alice@WATCHD.TEST`) and its password.
pub const ALICE: &str = "alice";
pub const ALICE_PASSWORD: &str = "alice-password";
/// The second principal (`bob@WATCHD.TEST`) and its password.
pub const BOB: &str = "bob";
pub const BOB_PASSWORD: &str = "bob-password";
/// The uid whose `KEYRING:persistent:UID` the key tests fill (DESIGN.md §6).
pub const KEYRING_UID: u32 = crate::polkit::OTHER_UID;
/// The renewable lifetime every [`Kdc::kinit`] asks for, so `kinit -R` works.
pub const RENEWABLE: &str = "1d";

const MASTER_PASSWORD: &str = "watchd-test-master-password";
/// How long one client tool may take (they take milliseconds).
const TOOL_LIMIT: Duration = Duration::from_secs(30);
/// Debian installs the KDC and admin tools in /usr/sbin, which a CI's PATH may lack.
const SEARCH_PATH: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The Debian packages the realm and the tools come from.
pub const PACKAGES: &str = "krb5-kdc krb5-admin-server krb5-user keyutils";

/// `user@REALM`.
pub fn principal(user: &str) -> String {
    format!("{user}@{REALM}")
}

/// The password [`Kdc::start`] gave `user` ([`ALICE`] or [`BOB`]).
pub fn password(user: &str) -> Result<&'static str> {
    match user {
        ALICE => Ok(ALICE_PASSWORD),
        BOB => Ok(BOB_PASSWORD),
        _ => bail!("no principal {user} in {REALM}"),
    }
}

/// `KEYRING:persistent:UID`, the collection of `uid`.
pub fn persistent_collection(uid: u32) -> String {
    format!("KEYRING:persistent:{uid}")
}

/// A running KDC for [`REALM`]; stopped by its PID when dropped. Its files stay in the
/// scratch directory (removed with it).
pub struct Kdc {
    /// Where everything of this realm is: `<scratch>/krb5-N`.
    pub dir: PathBuf,
    /// The clients' profile (`KRB5_CONFIG`).
    pub krb5_conf: PathBuf,
    /// The KDC's profile (`KRB5_KDC_PROFILE`).
    pub kdc_conf: PathBuf,
    /// The port the KDC listens on at 127.0.0.1, UDP and TCP.
    pub port: u16,
    /// The KDC's log (`[logging] kdc = FILE:`): one line per AS/TGS request.
    pub log: PathBuf,
    process: Process,
}

impl Kdc {
    /// Creates the realm in a new directory of `scratch` and starts its KDC, waiting until
    /// it serves. Takes about 0.1 s.
    pub fn start(scratch: &Path) -> Result<Kdc> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let krb5kdc = tool("krb5kdc", "krb5-kdc")?;
        let kdb5_util = tool("kdb5_util", "krb5-kdc")?;
        let kadmin_local = tool("kadmin.local", "krb5-admin-server")?;
        tool("kinit", "krb5-user")?;
        tool("keyctl", "keyutils")?;

        let dir = scratch.join(format!("krb5-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir)?;
        // The client tools run as other uids and read krb5.conf from here.
        add_mode(scratch, 0o711)?;
        add_mode(&dir, 0o755)?;
        let krb5_conf = dir.join("krb5.conf");
        let kdc_conf = dir.join("kdc.conf");
        let log = dir.join("kdc.log");

        // The database does not depend on the port: made once, whatever port the KDC gets.
        let mut port = free_port()?;
        write_config(&dir, port)?;
        let admin = |program: &Path| {
            let mut command = Command::new(program);
            clean_env(&mut command);
            command
                .env("KRB5_CONFIG", &krb5_conf)
                .env("KRB5_KDC_PROFILE", &kdc_conf)
                // Else kadmin.local opens KEYRING:persistent:0 (see the module's notes).
                .env("KRB5CCNAME", "MEMORY:watchd-test-admin");
            command
        };
        let mut create = admin(&kdb5_util);
        create.args(["create", "-s", "-r", REALM, "-P", MASTER_PASSWORD]);
        run(create, None, "kdb5_util create")?;
        for (user, pw) in [(ALICE, ALICE_PASSWORD), (BOB, BOB_PASSWORD)] {
            let mut add = admin(&kadmin_local);
            add.args([
                "-r",
                REALM,
                "-q",
                &format!("addprinc -pw {pw} -maxrenewlife 7d {user}"),
            ]);
            let out = run(add, None, "kadmin.local addprinc")?;
            let created = format!("Principal \"{}\" created.", principal(user));
            ensure!(
                out.stdout.contains(&created),
                "kadmin.local did not create {user}:\n{}{}",
                out.stdout,
                out.stderr
            );
        }

        // The port was free a moment ago; someone may take it before the KDC binds it, in
        // which case krb5kdc exits at once ("Address already in use") and we try another.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let mut command = admin(&krb5kdc);
            command
                .args(["-n", "-r", REALM])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("krb5kdc.stderr"))?);
            let mut process = Process::spawn(command, "krb5kdc")?;
            let new_log = || {
                let text = std::fs::read(&log).unwrap_or_default();
                let start = (log_start as usize).min(text.len());
                String::from_utf8_lossy(&text[start..]).into_owned()
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            let exited = loop {
                if let Some(status) = process.child().try_wait()? {
                    break Some(status);
                }
                if new_log().contains("commencing operation")
                    && TcpStream::connect(("127.0.0.1", port)).is_ok()
                {
                    break None;
                }
                if Instant::now() > deadline {
                    bail!(
                        "krb5kdc did not start serving within 10 s; its log:\n{}",
                        new_log()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            match exited {
                None => {
                    return Ok(Kdc {
                        dir,
                        krb5_conf,
                        kdc_conf,
                        port,
                        log,
                        process,
                    });
                }
                Some(_) if attempt < 5 && new_log().contains("Address already in use") => {
                    port = free_port()?;
                    write_config(&dir, port)?;
                }
                Some(status) => bail!(
                    "krb5kdc exited ({status}) on port {port}; its log:\n{}\nits stderr:\n{}",
                    new_log(),
                    std::fs::read_to_string(dir.join("krb5kdc.stderr")).unwrap_or_default()
                ),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The KDC's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `program` (a client tool: kinit, klist, kswitch, kdestroy, kvno...) to be run as
    /// `uid` (uid and gid `uid`, no supplementary groups) with this realm's `KRB5_CONFIG`,
    /// no other `KRB5*` variable, stdin from /dev/null and `/` as working directory.
    pub fn command(&self, program: &str, uid: u32) -> Command {
        let mut command = Command::new(program);
        clean_env(&mut command);
        command
            .env("KRB5_CONFIG", &self.krb5_conf)
            .current_dir("/")
            .stdin(Stdio::null());
        as_user(&mut command, uid);
        command
    }

    /// `kinit -r 1d [-c CCACHE] user` as `uid`, the password on stdin. Without `ccache`, the
    /// default: `KEYRING:persistent:UID`, where kinit reuses the collection's cache of that
    /// principal, or the primary cache if it is empty or has the same principal, or else
    /// creates a new cache (`krb_ccache_XXXXXXX`) and makes it primary. With `ccache`
    /// (`FILE:...`, or `KEYRING:persistent:UID:NAME`), that very cache, never switched to.
    pub fn kinit(&self, uid: u32, user: &str, pw: &str, ccache: Option<&str>) -> Result<()> {
        let mut command = self.command("kinit", uid);
        command.args(["-r", RENEWABLE]);
        if let Some(cc) = ccache {
            command.args(["-c", cc]);
        }
        command.arg(principal(user));
        run(command, Some(pw), &format!("kinit {user} as uid {uid}"))?;
        Ok(())
    }

    /// `kinit -R [-c CCACHE]` as `uid`: renews the cache's TGT (the default cache: the
    /// collection's primary).
    pub fn kinit_renew(&self, uid: u32, ccache: Option<&str>) -> Result<()> {
        let mut command = self.command("kinit", uid);
        command.arg("-R");
        if let Some(cc) = ccache {
            command.args(["-c", cc]);
        }
        run(command, None, &format!("kinit -R as uid {uid}"))?;
        Ok(())
    }

    /// `kswitch -p user@REALM` as `uid`: makes the default collection's cache of that
    /// principal the primary one.
    pub fn kswitch(&self, uid: u32, user: &str) -> Result<()> {
        let mut command = self.command("kswitch", uid);
        command.args(["-p", &principal(user)]);
        run(command, None, &format!("kswitch -p {user} as uid {uid}"))?;
        Ok(())
    }

    /// `kdestroy`, `kdestroy -A` or `kdestroy -c CCACHE` as `uid`.
    pub fn kdestroy(&self, uid: u32, which: Destroy<'_>) -> Result<()> {
        let mut command = self.command("kdestroy", uid);
        match which {
            Destroy::Primary => {}
            Destroy::All => {
                command.arg("-A");
            }
            Destroy::Cache(cc) => {
                command.args(["-c", cc]);
            }
        }
        run(command, None, &format!("kdestroy ({which:?}) as uid {uid}"))?;
        Ok(())
    }

    /// `klist -A` as `uid`: every cache of the default collection with its tickets
    /// (`Ticket cache: KEYRING:persistent:1000:1000`, `Default principal: alice@...`, ...).
    /// Fails if the collection has no cache.
    pub fn klist(&self, uid: u32) -> Result<String> {
        let mut command = self.command("klist", uid);
        command.arg("-A");
        Ok(run(command, None, &format!("klist -A as uid {uid}"))?.stdout)
    }

    /// `klist -c CCACHE` as `uid`: that one cache.
    pub fn klist_cache(&self, uid: u32, ccache: &str) -> Result<String> {
        let mut command = self.command("klist", uid);
        command.args(["-c", ccache]);
        Ok(run(command, None, &format!("klist -c {ccache} as uid {uid}"))?.stdout)
    }

    /// `klist -l` as `uid`: the default collection's caches, primary first.
    pub fn collection(&self, uid: u32) -> Result<Vec<CacheEntry>> {
        let command = self.command("klist", uid);
        list_collection(command, uid)
    }

    /// A `FILE:` ccache name for `uid` in a directory of this realm's owned by `uid`
    /// (mode 0700; kinit writes a temporary file there and renames it over the cache).
    pub fn file_ccache(&self, uid: u32, name: &str) -> Result<String> {
        let dir = self.dir.join(format!("ccaches-{uid}"));
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid))
            .with_context(|| format!("chown {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(format!("FILE:{}", dir.join(name).display()))
    }
}

/// What [`Kdc::kdestroy`] destroys.
#[derive(Debug, Clone, Copy)]
pub enum Destroy<'a> {
    /// The default cache: the collection's primary.
    Primary,
    /// Every cache of the default collection (`-A`).
    All,
    /// That cache (`-c`).
    Cache(&'a str),
}

/// One line of `klist -l`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// `alice@WATCHD.TEST`.
    pub principal: String,
    /// `KEYRING:persistent:1000:1000`, `KEYRING:persistent:1000:krb_ccache_XXXXXXX`.
    pub cache: String,
}

/// Exclusive use of `KEYRING:persistent:UID` by one test of this process, and its cleanup.
/// Keyrings are global per uid (not per mount namespace), so tests that put caches there
/// take turns, and what they leave is removed from the host when this is dropped:
/// `kdestroy -A`, then, if only krb5's `_krb` keyring with its `krb_ccache:primary` is
/// left, the persistent keyring itself is invalidated. Another run of the suite at the
/// same time on the same machine would still collide: one at a time.
pub struct PersistentCollection {
    uid: u32,
    _turn: MutexGuard<'static, ()>,
}

impl PersistentCollection {
    /// Waits for the collection of `uid`, refuses if it holds caches of a realm other than
    /// [`REALM`] (somebody's real tickets, which the cleanup would destroy), and destroys
    /// leftovers of [`REALM`] (an interrupted run).
    pub fn claim(uid: u32) -> Result<PersistentCollection> {
        static TURN: Mutex<()> = Mutex::new(());
        let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let caches = list_collection(bare_tool("klist", uid), uid)?;
        let foreign: Vec<&CacheEntry> = caches
            .iter()
            .filter(|c| !c.principal.ends_with(&format!("@{REALM}")))
            .collect();
        ensure!(
            foreign.is_empty(),
            "uid {uid} has Kerberos caches of its own in {}: {foreign:?}; the key tests would \
             destroy them, so they refuse to run on this machine as it is",
            persistent_collection(uid)
        );
        if !caches.is_empty() {
            eprintln!(
                "note: destroying caches of {REALM} left in {} by an earlier run: {caches:?}",
                persistent_collection(uid)
            );
            destroy_all(uid)?;
        }
        Ok(PersistentCollection { uid, _turn: turn })
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// `KEYRING:persistent:UID`.
    pub fn name(&self) -> String {
        persistent_collection(self.uid)
    }

    /// See [`persistent_keyring`].
    pub fn tree(&self) -> Result<Key> {
        persistent_keyring(self.uid)
    }

    /// See [`primary_cache`].
    pub fn primary(&self) -> Result<Option<Primary>> {
        primary_cache(self.uid)
    }

    /// See [`read_key`].
    pub fn read_key(&self, serial: i32) -> Result<Vec<u8>> {
        read_key(self.uid, serial)
    }
}

impl Drop for PersistentCollection {
    fn drop(&mut self) {
        if let Err(e) = release(self.uid) {
            eprintln!(
                "warning: cleaning {} up failed: {e:#}",
                persistent_collection(self.uid)
            );
        }
    }
}

/// `kdestroy -A` of the persistent collection, then the persistent keyring itself if only
/// krb5's bookkeeping is left in it.
fn release(uid: u32) -> Result<()> {
    destroy_all(uid)?;
    let tree = persistent_keyring(uid)?;
    let only_bookkeeping = tree.children.iter().all(|k| {
        k.is_keyring("_krb")
            && k.children
                .iter()
                .all(|c| c.kind == "user" && c.description == "krb_ccache:primary")
    });
    if only_bookkeeping {
        in_possession(uid, r#"exec keyctl invalidate "$P""#)?;
    } else {
        eprintln!(
            "note: leaving uid {uid}'s persistent keyring, which holds more than krb5's \
             bookkeeping:\n{}",
            tree.render()
        );
    }
    Ok(())
}

/// `kdestroy -A` of `KEYRING:persistent:UID`, needing no realm.
fn destroy_all(uid: u32) -> Result<()> {
    let mut command = bare_tool("kdestroy", uid);
    command.arg("-A");
    run(command, None, &format!("kdestroy -A as uid {uid}"))?;
    Ok(())
}

/// A client tool as `uid` on `KEYRING:persistent:UID` with an empty profile.
fn bare_tool(program: &str, uid: u32) -> Command {
    let mut command = Command::new(program);
    clean_env(&mut command);
    command
        .env("KRB5_CONFIG", "/dev/null")
        .env("KRB5CCNAME", persistent_collection(uid))
        .current_dir("/")
        .stdin(Stdio::null());
    as_user(&mut command, uid);
    command
}

/// Runs `klist -l` (the command given, without arguments) and parses it. An empty
/// collection makes klist exit 1 after its header.
fn list_collection(mut command: Command, uid: u32) -> Result<Vec<CacheEntry>> {
    command.arg("-l");
    let out = output(command, None, &format!("klist -l as uid {uid}"))?;
    let mut lines = out.stdout.lines();
    let header = lines.next().unwrap_or_default();
    ensure!(
        header.starts_with("Principal name") && lines.next().unwrap_or_default().starts_with('-'),
        "klist -l as uid {uid} ({}): unexpected output:\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let entries: Vec<CacheEntry> = lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut fields = line.split_whitespace();
            match (fields.next(), fields.next()) {
                (Some(p), Some(c)) => Ok(CacheEntry {
                    principal: p.to_owned(),
                    cache: c.to_owned(),
                }),
                _ => bail!("klist -l: cannot parse {line:?}"),
            }
        })
        .collect::<Result<_>>()?;
    ensure!(
        out.status.success() || entries.is_empty(),
        "klist -l as uid {uid} failed ({}): {}",
        out.status,
        out.stderr
    );
    Ok(entries)
}

/// The content of `uid`'s persistent keyring as `keyctl show` prints it, read by root in
/// possession of it (see the module's notes). Creates the keyring if it does not exist,
/// and resets its expiry.
pub fn persistent_keyring_tree(uid: u32) -> Result<String> {
    in_possession(uid, r#"exec keyctl show "$P""#)
}

/// [`persistent_keyring_tree`], parsed: the persistent keyring (`_persistent.UID`) with
/// its descendants.
pub fn persistent_keyring(uid: u32) -> Result<Key> {
    let text = persistent_keyring_tree(uid)?;
    Key::parse_tree(&text).with_context(|| format!("parsing keyctl show:\n{text}"))
}

/// Invalidates `uid`'s persistent keyring, as its expiry (3 days without
/// `KEYCTL_GET_PERSISTENT`) or an administrator's `keyctl invalidate` would: the caches in
/// it go with it, and the next `kinit` makes a new persistent keyring (a new serial).
/// Returns the serial invalidated.
pub fn invalidate_persistent_keyring(uid: u32) -> Result<i32> {
    let out = in_possession(uid, r#"echo "$P" && exec keyctl invalidate "$P""#)?;
    out.trim()
        .parse()
        .with_context(|| format!("keyctl get_persistent printed {out:?}"))
}

/// The payload of key `serial`, read by root in possession of `uid`'s persistent keyring
/// (so only keys reachable from it).
pub fn read_key(uid: u32, serial: i32) -> Result<Vec<u8>> {
    let out = possession_command(uid, &format!("exec keyctl pipe {serial}"))
        .output()
        .context("keyctl (package keyutils)")?;
    ensure!(
        out.status.success(),
        "keyctl pipe {serial} (uid {uid}'s keyring): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// The collection's `krb_ccache:primary` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    pub serial: i32,
    /// The primary cache's keyring, as named in the payload: `1000`, `krb_ccache_XXXXXXX`.
    pub name: String,
}

/// `_krb`'s `krb_ccache:primary` in `uid`'s persistent keyring with its payload decoded
/// (big-endian version 1, big-endian length, name); `None` if there is none.
pub fn primary_cache(uid: u32) -> Result<Option<Primary>> {
    let tree = persistent_keyring(uid)?;
    let Some(key) = tree
        .child("keyring", "_krb")
        .and_then(|krb| krb.child("user", "krb_ccache:primary"))
    else {
        return Ok(None);
    };
    let payload = read_key(uid, key.serial)?;
    Ok(Some(Primary {
        serial: key.serial,
        name: decode_primary(&payload)?,
    }))
}

/// The cache name in a `krb_ccache:primary` payload.
pub fn decode_primary(payload: &[u8]) -> Result<String> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(
            payload.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    let (Some(version), Some(len)) = (word(0), word(4)) else {
        bail!("krb_ccache:primary payload too short: {payload:02x?}");
    };
    ensure!(version == 1, "krb_ccache:primary version {version}");
    let name = payload
        .get(8..8 + len as usize)
        .with_context(|| format!("krb_ccache:primary payload truncated: {payload:02x?}"))?;
    Ok(String::from_utf8(name.to_vec())?)
}

/// One key of a `keyctl show` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub serial: i32,
    /// `keyctl show`'s permission column, e.g. `--alswrv`: the possessor's, then the
    /// owner's (view only for krb5's keys).
    pub perm: String,
    pub uid: u32,
    pub gid: u32,
    /// `keyring`, `user`, `big_key`.
    pub kind: String,
    pub description: String,
    /// Empty for a key that is not a keyring.
    pub children: Vec<Key>,
}

impl Key {
    /// The direct child of that type and description.
    pub fn child(&self, kind: &str, description: &str) -> Option<&Key> {
        self.children
            .iter()
            .find(|k| k.kind == kind && k.description == description)
    }

    pub fn is_keyring(&self, description: &str) -> bool {
        self.kind == "keyring" && self.description == description
    }

    /// The child keyrings (in `_krb`: one per cache).
    pub fn keyrings(&self) -> impl Iterator<Item = &Key> {
        self.children.iter().filter(|k| k.kind == "keyring")
    }

    /// The direct children's descriptions.
    pub fn names(&self) -> Vec<&str> {
        self.children
            .iter()
            .map(|k| k.description.as_str())
            .collect()
    }

    /// The direct children's serials.
    pub fn serials(&self) -> HashSet<i32> {
        self.children.iter().map(|k| k.serial).collect()
    }

    /// This key and its descendants, one per line, indented: for error messages.
    pub fn render(&self) -> String {
        fn walk(key: &Key, depth: usize, out: &mut String) {
            out.push_str(&format!(
                "{:indent$}{} {}: {} (uid {})\n",
                "",
                key.serial,
                key.kind,
                key.description,
                key.uid,
                indent = depth * 2
            ));
            for child in &key.children {
                walk(child, depth + 1, out);
            }
        }
        let mut out = String::new();
        walk(self, 0, &mut out);
        out
    }

    /// Parses `keyctl show ID`: a `Keyring` header, then `SERIAL PERM UID GID  TREE TYPE:
    /// DESCRIPTION` lines whose tree part (`\_ ` after 4 columns per level, `|` for
    /// siblings still to come) gives the depth.
    pub fn parse_tree(text: &str) -> Result<Key> {
        let mut stack: Vec<Key> = Vec::new();
        for line in text.lines() {
            if line.trim().is_empty() || line.trim() == "Keyring" {
                continue;
            }
            let (depth, key) = parse_line(line)?;
            ensure!(
                depth <= stack.len() && (depth > 0 || stack.is_empty()),
                "line at depth {depth} under a tree of depth {}: {line:?}",
                stack.len()
            );
            while stack.len() > depth {
                let done = stack.pop().expect("non-empty");
                stack
                    .last_mut()
                    .context("a second root")?
                    .children
                    .push(done);
            }
            stack.push(key);
        }
        while stack.len() > 1 {
            let done = stack.pop().expect("non-empty");
            stack.last_mut().expect("non-empty").children.push(done);
        }
        stack.pop().context("no keys in keyctl show's output")
    }
}

fn parse_line(line: &str) -> Result<(usize, Key)> {
    let mut rest = line;
    let mut fields = Vec::new();
    for _ in 0..4 {
        rest = rest.trim_start();
        let end = rest
            .find(' ')
            .with_context(|| format!("short line {line:?}"))?;
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    // `rest` is now the tree part: "  keyring: x" at the root, "   \_ keyring: x" below it,
    // "       \_ ..." (or "   |   \_ ...") a level further.
    let (depth, entry) = match rest.find("\\_ ") {
        Some(at) => ((at + 1) / 4, &rest[at + 3..]),
        None => (0, rest.trim_start()),
    };
    let (kind, description) = entry
        .split_once(": ")
        .with_context(|| format!("no `type: description` in {line:?}"))?;
    let number = |s: &str| -> Result<u32> {
        // keyctl prints ids with %d: -1 (no group) as -1.
        Ok(s.parse::<i64>()
            .with_context(|| format!("{s:?} in {line:?}"))? as u32)
    };
    Ok((
        depth,
        Key {
            serial: fields[0]
                .parse()
                .with_context(|| format!("serial in {line:?}"))?,
            perm: fields[1].to_owned(),
            uid: number(fields[2])?,
            gid: number(fields[3])?,
            kind: kind.to_owned(),
            description: description.to_owned(),
            children: Vec::new(),
        },
    ))
}

/// The shell `script` run as root in a new anonymous session keyring into which `uid`'s
/// persistent keyring is linked (possession), with `$P` holding that keyring's serial. The
/// session keyring goes with the process: the test runner's own keyrings are not touched.
fn in_possession(uid: u32, script: &str) -> Result<String> {
    let out = possession_command(uid, script)
        .output()
        .context("keyctl (package keyutils)")?;
    ensure!(
        out.status.success(),
        "`{script}` in possession of uid {uid}'s persistent keyring: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `keyctl session - sh -c 'P=$(keyctl get_persistent @s UID) && SCRIPT'`: `keyctl
/// session -` joins a new anonymous session keyring and runs the program in it (saying
/// "Joined session keyring: N" on stderr).
fn possession_command(uid: u32, script: &str) -> Command {
    let mut command = Command::new("keyctl");
    command
        .args(["session", "-", "sh", "-c"])
        .arg(format!(
            "P=$(keyctl get_persistent @s {uid}) || exit 1\n{script}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A tool's output, decoded.
struct Output {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` with `stdin` fed to it, and fails unless it exits 0.
fn run(command: Command, stdin: Option<&str>, what: &str) -> Result<Output> {
    let out = output(command, stdin, what)?;
    ensure!(
        out.status.success(),
        "{what} failed ({}):\nstderr: {}\nstdout: {}",
        out.status,
        out.stderr.trim_end(),
        out.stdout.trim_end()
    );
    Ok(out)
}

/// Runs `command` with `stdin` fed to it, killed (by its PID) after [`TOOL_LIMIT`].
fn output(mut command: Command, stdin: Option<&str>, what: &str) -> Result<Output> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {what} (packages: {PACKAGES})"))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().context("stdin")?;
        // A tool that exits without reading gives EPIPE: its exit status tells.
        let _ = pipe.write_all(format!("{text}\n").as_bytes());
    }
    let pid = child.id();
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(child.wait_with_output());
    });
    let out = match receive.recv_timeout(TOOL_LIMIT) {
        Ok(out) => out.with_context(|| format!("waiting for {what}"))?,
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            bail!("{what} did not finish within {TOOL_LIMIT:?}");
        }
    };
    Ok(Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Removes every `KRB5*` variable of the test's environment (KRB5CCNAME, KRB5_CONFIG,
/// KRB5_TRACE...) from `command`'s.
fn clean_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KRB5") {
            command.env_remove(name);
        }
    }
}

/// The path of `name`, looked for in PATH and the sbin directories.
fn tool(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SEARCH_PATH.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found: install the package {package} ({PACKAGES})"))
}

/// A port free on 127.0.0.1 for both UDP and TCP just now.
fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let udp = UdpSocket::bind(("127.0.0.1", 0)).context("binding a UDP socket")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP on 127.0.0.1 after 100 tries")
}

/// `kdc.conf` and `krb5.conf` for the realm in `dir` with its KDC on `port`.
fn write_config(dir: &Path, port: u16) -> Result<()> {
    let d = dir.display();
    let kdc_conf = format!(
        "[kdcdefaults]
 kdc_listen = 127.0.0.1:{port}
 kdc_tcp_listen = 127.0.0.1:{port}

[realms]
 {REALM} = {{
  database_name = {d}/principal
  key_stash_file = {d}/stash
  acl_file = {d}/kadm5.acl
  max_life = 10h
  max_renewable_life = 7d
  supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
 }}

[logging]
 kdc = FILE:{d}/kdc.log
 admin_server = FILE:{d}/kadmin.log
 default = FILE:{d}/krb5.log
"
    );
    // No DNS (there is none), no reverse lookups; the KDC by address, UDP first as usual
    // (messages over 1465 bytes go by TCP).
    let krb5_conf = format!(
        "[libdefaults]
 default_realm = {REALM}
 default_ccache_name = KEYRING:persistent:%{{uid}}
 dns_lookup_kdc = false
 dns_lookup_realm = false
 dns_canonicalize_hostname = false
 rdns = false
 forwardable = true

[realms]
 {REALM} = {{
  kdc = 127.0.0.1:{port}
 }}

[domain_realm]
 localhost = {REALM}
"
    );
    let write = |name: &str, text: &str| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| path.display().to_string())?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(())
    };
    write("kdc.conf", &kdc_conf)?;
    write("krb5.conf", &krb5_conf)
}

/// Adds the `bits` to a path's permissions (never removes any).
fn add_mode(path: &Path, bits: u32) -> Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode & bits != bits {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | bits))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keyctl_show() {
        let text = "Keyring
 457809797 ---lswrv   1000 65534  keyring: _persistent.1000
 101498266 --alswrv   1000  1000   \\_ keyring: _krb
   3829901 --alswrv   1000  1000       \\_ user: krb_ccache:primary
  73598842 --alswrv   1000  1000       \\_ keyring: krb_ccache_982aa73
 686087194 --alswrv   1000  1000       |   \\_ user: __krb5_princ__
 206977817 --alswrv   1000  1000       |   \\_ user: krbtgt/WATCHD.TEST@WATCHD.TEST
 146286093 --alswrv   1000  1000       \\_ keyring: 1000
 925441136 --alswrv   1000  1000           \\_ user: __krb5_princ__
 613082179 --alswrv   1000  1000           \\_ user: krb5_ccache_conf_data/fast_avail/krbtgt\\/WATCHD.TEST\\@WATCHD.TEST@X-CACHECONF:
";
        let root = Key::parse_tree(text).unwrap();
        assert_eq!(root.description, "_persistent.1000");
        assert_eq!(root.gid, 65534);
        let krb = root.child("keyring", "_krb").unwrap();
        assert_eq!(
            krb.names(),
            ["krb_ccache:primary", "krb_ccache_982aa73", "1000"]
        );
        let first = krb.child("keyring", "1000").unwrap();
        assert_eq!(first.serial, 146286093);
        assert_eq!(first.children.len(), 2);
        assert_eq!(
            first.children[1].description,
            "krb5_ccache_conf_data/fast_avail/krbtgt\\/WATCHD.TEST\\@WATCHD.TEST@X-CACHECONF:"
        );
        let other = krb.child("keyring", "krb_ccache_982aa73").unwrap();
        assert_eq!(
            other.names(),
            ["__krb5_princ__", "krbtgt/WATCHD.TEST@WATCHD.TEST"]
        );
    }

    #[test]
    fn decodes_the_primary_payload() {
        assert_eq!(
            decode_primary(&[0, 0, 0, 1, 0, 0, 0, 4, b'1', b'0', b'0', b'0']).unwrap(),
            "1000"
        );
        assert!(decode_primary(&[0, 0, 0, 1, 0, 0, 0, 9, b'1']).is_err());
    }
}
