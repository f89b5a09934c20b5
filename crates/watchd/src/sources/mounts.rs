//! Mount topology as each caller sees it, from the caller's own `/proc/PID/mountinfo`.
//!
//! A watch is bound to its caller's view of the mount tree (mount namespace and root
//! directory): a client in a container sees its container's mounts, and nobody else's. Each
//! view that someone watches is followed by one thread: the kernel flags the open mountinfo
//! with `POLLPRI` on every change in the namespace, and each wake-up costs a full re-read and
//! a diff against the last table, keyed by mount id. Changes that come and go between two
//! reads are not seen (fanotify mount events, kernel ≥ 6.15, will close that gap behind the
//! same [`MountChange`] type). The table lock is held while a diff is published and while a
//! new watch takes its snapshot, so a watch sees each change once: in its snapshot or live.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use watchd_proto::{FLAG_SNAPSHOT, RecordBuilder, RecordType, attr, mount};

use crate::access::{self, CallerProcess, MountView};
use crate::error::{Error, Result};
use crate::event::{Change, Event, Fields};
use crate::hub::Hub;
use crate::identity::{Caller, Uid};
use crate::options::Options;
use crate::source::Source;
use crate::watch::{Kind, Scope};

/// The kind clients name in `AddWatch`.
pub const KIND: Kind = Kind("mounts");

/// A mount id: mountinfo's first field in this version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MountId(pub u64);

/// One line of mountinfo, unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub id: MountId,
    pub parent: MountId,
    pub major: u32,
    pub minor: u32,
    pub root: Vec<u8>,
    pub mount_point: Vec<u8>,
    pub options: String,
    /// Optional fields ("shared:1 master:2"), empty for a private mount.
    pub propagation: String,
    pub fs_type: String,
    pub source: Vec<u8>,
    pub super_options: String,
}

impl MountEntry {
    /// Same filesystem at the same place in it: otherwise a reused id is a new mount.
    fn same_mount(&self, other: &MountEntry) -> bool {
        (
            self.major,
            self.minor,
            &self.root,
            &self.fs_type,
            &self.source,
        ) == (
            other.major,
            other.minor,
            &other.root,
            &other.fs_type,
            &other.source,
        )
    }

    fn changes_from(&self, old: &MountEntry) -> u32 {
        let mut changed = 0;
        if self.options != old.options {
            changed |= mount::CHANGED_OPTIONS;
        }
        if self.super_options != old.super_options {
            changed |= mount::CHANGED_SUPER_OPTIONS;
        }
        if self.propagation != old.propagation {
            changed |= mount::CHANGED_PROPAGATION;
        }
        if self.parent != old.parent {
            changed |= mount::CHANGED_PARENT;
        }
        changed
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash…).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (field[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let text = |f: &[u8]| String::from_utf8_lossy(f).into_owned();
    let mut fields = line.split(|&c| c == b' ');
    let mut next = || fields.next();
    let id = MountId(std::str::from_utf8(next()?).ok()?.parse().ok()?);
    let parent = MountId(std::str::from_utf8(next()?).ok()?.parse().ok()?);
    let (major, minor) = std::str::from_utf8(next()?).ok()?.split_once(':')?;
    let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
    let root = unescape(next()?);
    let mount_point = unescape(next()?);
    let options = text(next()?);
    let mut propagation = Vec::new();
    loop {
        match next()? {
            b"-" => break,
            tag => propagation.push(text(tag)),
        }
    }
    Some(MountEntry {
        id,
        parent,
        major,
        minor,
        root,
        mount_point,
        options,
        propagation: propagation.join(" "),
        fs_type: text(next()?),
        source: unescape(next()?),
        super_options: text(next()?),
    })
}

/// Parses a whole mountinfo file; lines that do not parse are skipped (and counted).
pub fn parse_mountinfo(text: &[u8]) -> (Vec<MountEntry>, usize) {
    let mut bad = 0;
    let entries = text
        .split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            parse_line(l).or_else(|| {
                bad += 1;
                None
            })
        })
        .collect();
    (entries, bad)
}

/// Where a mount event was seen: the namespace (for the record) and the followed view (for
/// matching: one namespace seen from two roots is two views).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub ns: u64,
    pub view: u64,
}

/// A mount event as watches match it and records carry it.
#[derive(Debug)]
pub struct MountChange {
    pub entry: Arc<MountEntry>,
    pub origin: Origin,
    pub old_mount_point: Option<Vec<u8>>,
    pub changed: u32,
}

impl MountChange {
    pub fn into_event(self, subtype: u8, flags: u8) -> Event {
        Event::new(RecordType::Mount, subtype, flags, Arc::new(self))
    }
}

impl Change for MountChange {
    /// Most useful fields first, so that if paths are huge it is the least useful that give way.
    fn encode(&self, builder: &mut RecordBuilder, _: RecordType) {
        let e = &self.entry;
        let mut f = Fields::new(builder);
        f.u64(attr::MOUNT_ID, e.id.0);
        f.u64(attr::PARENT_ID, e.parent.0);
        f.u32(attr::MAJOR, e.major);
        f.u32(attr::MINOR, e.minor);
        f.u64(attr::MNT_NS, self.origin.ns);
        if self.changed != 0 {
            f.u32(attr::CHANGED, self.changed);
        }
        f.bytes(attr::MOUNT_POINT, &e.mount_point);
        f.bytes(attr::FS_TYPE, e.fs_type.as_bytes());
        f.bytes(attr::SOURCE, &e.source);
        f.bytes(attr::MOUNT_OPTIONS, e.options.as_bytes());
        if let Some(old) = &self.old_mount_point {
            f.bytes(attr::OLD_MOUNT_POINT, old);
        }
        f.bytes(attr::SUPER_OPTIONS, e.super_options.as_bytes());
        f.bytes(attr::PROPAGATION, e.propagation.as_bytes());
        f.bytes(attr::ROOT, &e.root);
        f.finish();
    }
}

/// Which mounts a watch covers: the caller's view, optionally only at or under a path.
#[derive(Clone)]
pub struct MountScope {
    pub view: u64,
    pub under: Option<Vec<u8>>,
    /// Keeps the view followed while the watch exists (none in unit tests).
    pub lease: Option<Arc<ViewLease>>,
}

impl PartialEq for MountScope {
    fn eq(&self, other: &Self) -> bool {
        (self.view, &self.under) == (other.view, &other.under)
    }
}

impl Eq for MountScope {}

impl std::fmt::Debug for MountScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountScope")
            .field("view", &self.view)
            .field("under", &self.under.as_deref().map(String::from_utf8_lossy))
            .finish()
    }
}

impl MountScope {
    /// Every mount of a view that nothing follows (tests and benchmarks feed it events).
    pub fn everything(view: u64) -> Self {
        MountScope {
            view,
            under: None,
            lease: None,
        }
    }

    pub fn covers_change(&self, change: &MountChange) -> bool {
        change.origin.view == self.view
            && match &self.under {
                None => true,
                Some(dir) => {
                    is_at_or_under(&change.entry.mount_point, dir)
                        || change
                            .old_mount_point
                            .as_deref()
                            .is_some_and(|old| is_at_or_under(old, dir))
                }
            }
    }
}

impl Scope for MountScope {
    fn covers(&self, event: &Event) -> bool {
        event
            .subject::<MountChange>()
            .is_some_and(|change| self.covers_change(change))
    }
}

fn is_at_or_under(path: &[u8], dir: &[u8]) -> bool {
    dir == b"/"
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
}

/// The events that turn table `old` into table `new`: detaches (children first), then moves
/// and changes, then attaches (parents first).
pub fn diff(
    old: &[Arc<MountEntry>],
    new: &[Arc<MountEntry>],
    origin: Origin,
) -> Vec<(u8, MountChange)> {
    let change = |entry: &Arc<MountEntry>, old_mount_point, changed| MountChange {
        entry: entry.clone(),
        origin,
        old_mount_point,
        changed,
    };
    let old_by_id: HashMap<MountId, &Arc<MountEntry>> = old.iter().map(|e| (e.id, e)).collect();
    let new_by_id: HashMap<MountId, &Arc<MountEntry>> = new.iter().map(|e| (e.id, e)).collect();
    let mut detached = Vec::new();
    for before in old.iter().rev() {
        match new_by_id.get(&before.id) {
            Some(after) if after.same_mount(before) => {}
            _ => detached.push((mount::DETACH, change(before, None, 0))),
        }
    }
    let mut modified = Vec::new();
    let mut attached = Vec::new();
    for after in new {
        match old_by_id.get(&after.id) {
            Some(before) if after.same_mount(before) => {
                let changed = after.changes_from(before);
                if after.mount_point != before.mount_point {
                    modified.push((
                        mount::MOVE,
                        change(after, Some(before.mount_point.clone()), changed),
                    ));
                } else if changed != 0 {
                    modified.push((mount::CHANGE, change(after, None, changed)));
                }
            }
            _ => attached.push((mount::ATTACH, change(after, None, 0))),
        }
    }
    detached.extend(modified);
    detached.extend(attached);
    detached
}

/// A view's mount table as last read.
struct Table {
    mounts: Vec<Arc<MountEntry>>,
    file: File,
    buf: Vec<u8>,
}

impl Table {
    fn reread(&mut self) -> io::Result<Vec<Arc<MountEntry>>> {
        self.buf.clear();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut self.buf)?;
        let (entries, bad) = parse_mountinfo(&self.buf);
        if bad > 0 {
            tracing::warn!(lines = bad, "skipped mountinfo lines that did not parse");
        }
        Ok(entries.into_iter().map(Arc::new).collect())
    }
}

/// One view of the mount tree being followed, by a thread of its own.
struct FollowedView {
    origin: Origin,
    table: Mutex<Table>,
}

/// Held by every watch on a view. Its only content is the write end of the view thread's
/// stop pipe: when the last watch goes, the pipe closes and the thread ends.
pub struct ViewLease {
    view: Arc<FollowedView>,
    _stop: OwnedFd,
}

pub struct MountSource {
    hub: Arc<Hub>,
    views: Mutex<HashMap<(Uid, MountView), Weak<ViewLease>>>,
    next_view: AtomicU64,
}

impl MountSource {
    /// Views are followed only while someone watches them; nothing runs until then.
    pub fn new(hub: Arc<Hub>) -> Arc<MountSource> {
        Arc::new(MountSource {
            hub,
            views: Mutex::new(HashMap::new()),
            next_view: AtomicU64::new(1),
        })
    }

    /// The lease on the caller's view, shared with every other watch on it.
    /// Views are shared only between callers of one uid: a caller cannot plant a view (say,
    /// by changing namespace while it is being opened) that another user's watches join.
    fn lease(&self, process: &CallerProcess<'_>, uid: Uid) -> Result<Arc<ViewLease>> {
        let view = process.mount_view()?;
        // The open file pins the namespace it was opened in; the view read on both sides of
        // the open proves it is the one `view` names.
        let file = process.mountinfo()?;
        if process.mount_view()? != view {
            return Err(Error::Failed(
                "the caller changed mount namespace while its watch was being set".into(),
            ));
        }
        let key = (uid, view);
        let mut views = self.views.lock().expect("mount views poisoned");
        views.retain(|_, lease| lease.strong_count() > 0);
        if let Some(lease) = views.get(&key).and_then(Weak::upgrade) {
            return Ok(lease);
        }
        let origin = Origin {
            ns: view.ns,
            view: self.next_view.fetch_add(1, Ordering::Relaxed),
        };
        let mut table = Table {
            mounts: Vec::new(),
            file,
            buf: Vec::with_capacity(64 * 1024),
        };
        table.mounts = table
            .reread()
            .map_err(|e| Error::Failed(format!("cannot read the caller's mountinfo: {e}")))?;
        let (stop_read, stop_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| Error::Failed(format!("cannot make a pipe: {e}")))?;
        let view = Arc::new(FollowedView {
            origin,
            table: Mutex::new(table),
        });
        let (follower, hub) = (view.clone(), self.hub.clone());
        std::thread::Builder::new()
            .name(format!("mounts-{}", origin.view))
            .spawn(move || follow(&follower, &hub, stop_read))
            .map_err(|e| Error::Failed(format!("cannot start a thread: {e}")))?;
        tracing::info!(
            ns = origin.ns,
            uid = %uid,
            view = origin.view,
            "following a mount namespace"
        );
        let lease = Arc::new(ViewLease {
            view,
            _stop: stop_write,
        });
        views.insert(key, Arc::downgrade(&lease));
        Ok(lease)
    }
}

/// Re-reads the view's mountinfo on every change until the last lease is dropped.
fn follow(view: &FollowedView, hub: &Hub, stop: OwnedFd) {
    let watched = match view
        .table
        .lock()
        .expect("mount table poisoned")
        .file
        .try_clone()
    {
        Ok(file) => file,
        Err(e) => return tracing::error!(error = %e, "cannot follow a mount namespace"),
    };
    loop {
        let mut fds = [
            PollFd::new(watched.as_fd(), PollFlags::POLLPRI),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return tracing::error!(error = %e, "stopped following a mount namespace: poll failed");
            }
        }
        if fds[1].any().unwrap_or(true) {
            return tracing::info!(
                view = view.origin.view,
                "no watch left on a mount namespace: stopped following it"
            );
        }
        let mut table = view.table.lock().expect("mount table poisoned");
        match table.reread() {
            Ok(mounts) => {
                for (subtype, change) in diff(&table.mounts, &mounts, view.origin) {
                    hub.publish(&change.into_event(subtype, 0));
                }
                table.mounts = mounts;
            }
            Err(e) => {
                tracing::error!(error = %e, "re-reading mountinfo failed; retrying on the next change")
            }
        }
    }
}

impl Source for MountSource {
    fn kind(&self) -> Kind {
        KIND
    }

    fn describe(&self) -> String {
        "the caller's /proc/PID/mountinfo, re-read on every change (POLLPRI)".into()
    }

    /// Mount watches are bound to the caller's own view of the mount tree.
    fn scope(&self, options: &mut Options, caller: &Caller) -> Result<Arc<dyn Scope>> {
        let under = match options.take_string("path")? {
            None => None,
            Some(path) => Some(access::resolve_path(caller, &path)?),
        };
        let lease = self.lease(&CallerProcess::new(caller)?, caller.uid)?;
        Ok(Arc::new(MountScope {
            view: lease.view.origin.view,
            under,
            lease: Some(lease),
        }))
    }

    fn option_names(&self) -> &'static [&'static str] {
        &["path"]
    }

    fn with_snapshot(&self, scope: &dyn Scope, then: &mut dyn FnMut(&[Event])) {
        let Some(MountScope {
            lease: Some(lease), ..
        }) = scope.downcast::<MountScope>()
        else {
            return then(&[]);
        };
        let view = &lease.view;
        let table = view.table.lock().expect("mount table poisoned");
        let snapshot: Vec<Event> = table
            .mounts
            .iter()
            .map(|entry| {
                let change = MountChange {
                    entry: entry.clone(),
                    origin: view.origin,
                    old_mount_point: None,
                    changed: 0,
                };
                change.into_event(mount::ATTACH, FLAG_SNAPSHOT)
            })
            .collect();
        then(&snapshot);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 25 0:35 / /mnt/with\\040space rw master:3 - tmpfs my\\134src rw,size=1024k
";

    /// An attach in view `view` (namespace `view` too, for simplicity).
    const ORIGIN: Origin = Origin { ns: 1, view: 1 };

    fn table(text: &[u8]) -> Vec<Arc<MountEntry>> {
        parse_mountinfo(text).0.into_iter().map(Arc::new).collect()
    }

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_optional_fields() {
        let (entries, bad) = parse_mountinfo(SAMPLE);
        assert_eq!((entries.len(), bad), (3, 0));
        let e = &entries[2];
        assert_eq!(
            (e.id, e.parent, e.major, e.minor),
            (MountId(40), MountId(25), 0, 35)
        );
        assert_eq!(e.mount_point, b"/mnt/with space");
        assert_eq!(e.source, b"my\\src");
        assert_eq!(
            (e.propagation.as_str(), e.fs_type.as_str()),
            ("master:3", "tmpfs")
        );
        assert_eq!(e.super_options, "rw,size=1024k");
        assert_eq!(parse_mountinfo(b"garbage line\n").1, 1);
    }

    #[test]
    fn diff_reports_attach_detach_move_and_change_in_a_safe_order() {
        let before = table(SAMPLE);
        let after = table(
            b"\
22 1 0:21 / /proc ro,nosuid shared:5 - proc proc rw
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 25 0:35 / /srv/moved rw master:3 - tmpfs my\\134src rw,size=1024k
41 25 0:36 / /mnt/new rw - tmpfs tmpfs rw
42 41 0:37 / /mnt/new/child rw - tmpfs tmpfs rw
",
        );
        let events: Vec<_> = diff(&before, &after, ORIGIN)
            .into_iter()
            .map(|(s, c)| {
                (
                    s,
                    String::from_utf8(c.entry.mount_point.clone()).unwrap(),
                    c.changed,
                )
            })
            .collect();
        assert_eq!(
            events,
            vec![
                (mount::CHANGE, "/proc".into(), mount::CHANGED_OPTIONS),
                (mount::MOVE, "/srv/moved".into(), 0),
                (mount::ATTACH, "/mnt/new".into(), 0),
                (mount::ATTACH, "/mnt/new/child".into(), 0),
            ]
        );
        let gone: Vec<_> = diff(&after, &before, ORIGIN)
            .into_iter()
            .filter(|(s, _)| *s == mount::DETACH)
            .collect();
        let order: Vec<_> = gone.iter().map(|(_, c)| c.entry.id.0).collect();
        assert_eq!(order, vec![42, 41], "children detach before their parents");
    }

    #[test]
    fn a_reused_mount_id_on_another_filesystem_is_a_detach_and_an_attach() {
        let before = table(b"40 25 0:35 / /mnt/a rw - tmpfs tmpfs rw\n");
        let after = table(b"40 25 0:99 / /mnt/a rw - tmpfs other rw\n");
        let subtypes: Vec<_> = diff(&before, &after, ORIGIN)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(subtypes, vec![mount::DETACH, mount::ATTACH]);
    }

    #[test]
    fn path_scope_matches_at_or_under_the_directory_and_either_end_of_a_move() {
        let scope = MountScope {
            under: Some(b"/mnt".to_vec()),
            ..MountScope::everything(1)
        };
        let at = |p: &str, old: Option<&str>, view| {
            let mut entry = parse_mountinfo(SAMPLE).0.remove(2);
            entry.mount_point = p.as_bytes().to_vec();
            scope.covers_change(&MountChange {
                entry: Arc::new(entry),
                origin: Origin { ns: 1, view },
                old_mount_point: old.map(|o| o.as_bytes().to_vec()),
                changed: 0,
            })
        };
        assert!(at("/mnt", None, 1) && at("/mnt/x/y", None, 1));
        assert!(!at("/mntx", None, 1) && !at("/", None, 1));
        assert!(at("/srv", Some("/mnt/x"), 1), "moved out of the directory");
        assert!(!at("/mnt/x", None, 2), "another view of the mount tree");
    }
}
