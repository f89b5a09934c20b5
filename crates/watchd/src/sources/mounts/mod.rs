//! Mount topology as each caller sees it: attaches, detaches, moves and option changes.
//!
//! A watch is bound to its caller's view of the mount tree (mount namespace and root
//! directory): a client in a container sees its container's mounts, and nobody else's. Two
//! backends follow a view, each on a thread of its own while someone watches it:
//! - [`namespace`] (kernel 6.15+): fanotify mount events of the namespace, looked up with
//!   `statmount(2)`; every change is seen, at a cost independent of the number of mounts.
//!   One group and one mark per namespace, shared by every watch on it.
//! - [`mountinfo`] (the fallback): the caller's mountinfo re-read and diffed on each change.
//!
//! Both publish the same [`MountChange`]s, and hold their table still while a new watch
//! takes its snapshot, so a watch sees each change once: in its snapshot or live.
#![forbid(unsafe_code)]

pub mod mountinfo;
pub mod namespace;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use nix::fcntl::OFlag;
use watchd_proto::{FLAG_SNAPSHOT, RecordBuilder, RecordType, attr, mount};

use crate::access::{self, CallerProcess, MountView};
use crate::conf::MountEvents;
use crate::error::{Error, Result};
use crate::event::{Change, Event, Fields};
use crate::hub::Hub;
use crate::identity::{Caller, Uid};
use crate::options::Options;
use crate::source::Source;
use crate::watch::{Kind, Scope};

pub use mountinfo::parse_mountinfo;

/// The kind clients name in `AddWatch`.
pub const KIND: Kind = Kind("mounts");

/// A mount id as mountinfo shows it (reused after unmount).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MountId(pub u64);

/// The kernel's 64-bit mount ids (never reused while the system runs), where the backend
/// knows them (statmount does, mountinfo does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniqueIds {
    pub id: u64,
    pub parent: u64,
}

/// One mount, as a line of mountinfo shows it (unescaped), from either backend.
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
    pub unique: Option<UniqueIds>,
    /// Known only by its unique id ([`MountEntry::gone`]). A flag of its own, not an empty
    /// `fs_type`: a mountinfo line with an empty type field (two spaces in a row) parsed into
    /// an entry that passed for gone, whose record then lost its ids and paths (found by
    /// fuzz/src/targets/mountinfo.rs; fuzz/regressions/mountinfo/).
    pub gone: bool,
}

impl MountEntry {
    /// A mount known only by its unique id: it was gone before it could be looked at.
    pub fn gone(unique_id: u64) -> MountEntry {
        MountEntry {
            id: MountId(0),
            parent: MountId(0),
            major: 0,
            minor: 0,
            root: Vec::new(),
            mount_point: Vec::new(),
            options: String::new(),
            propagation: String::new(),
            fs_type: String::new(),
            source: Vec::new(),
            super_options: String::new(),
            unique: Some(UniqueIds {
                id: unique_id,
                parent: 0,
            }),
            gone: true,
        }
    }

    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// What tables are keyed by: the unique id where known.
    fn key(&self) -> u64 {
        self.unique.map_or(self.id.0, |u| u.id)
    }

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

/// Where a mount event was seen: the namespace (for the record) and the feed that saw it
/// (for matching: a namespace followed through fanotify is one feed for all its watchers;
/// through mountinfo, each caller's view is one).
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
    pub fn new(entry: Arc<MountEntry>, origin: Origin) -> MountChange {
        MountChange {
            entry,
            origin,
            old_mount_point: None,
            changed: 0,
        }
    }

    pub fn into_event(self, subtype: u8, flags: u8) -> Event {
        Event::new(RecordType::Mount, subtype, flags, Arc::new(self))
    }
}

impl Change for MountChange {
    /// Most useful fields first, so that if paths are huge it is the least useful that give
    /// way. A mount gone before it was looked at has only its unique id and namespace.
    fn encode(&self, builder: &mut RecordBuilder, _: RecordType) {
        let e = &self.entry;
        let mut f = Fields::new(builder);
        if !e.is_gone() {
            f.u64(attr::MOUNT_ID, e.id.0);
            f.u64(attr::PARENT_ID, e.parent.0);
        }
        if let Some(unique) = e.unique {
            f.u64(attr::MOUNT_UNIQUE_ID, unique.id);
            if !e.is_gone() {
                f.u64(attr::PARENT_UNIQUE_ID, unique.parent);
            }
        }
        f.u64(attr::MNT_NS, self.origin.ns);
        if e.is_gone() {
            return f.finish();
        }
        f.u32(attr::MAJOR, e.major);
        f.u32(attr::MINOR, e.minor);
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
    /// The feed ([`Origin::view`]) whose changes this watch gets.
    pub view: u64,
    pub under: Option<Vec<u8>>,
    /// Keeps the feed followed while the watch exists (none in unit tests).
    pub lease: Option<Arc<Lease>>,
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

    /// A mount gone before it was looked at has no known mount point: only watches of the
    /// whole tree ("/" or no path) get it.
    pub fn covers_change(&self, change: &MountChange) -> bool {
        change.origin.view == self.view
            && match &self.under {
                None => true,
                Some(dir) => {
                    (!change.entry.is_gone() && is_at_or_under(&change.entry.mount_point, dir)
                        || change.entry.is_gone() && dir == b"/")
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

    /// A feed's notices (a LOSS when its kernel queue overflowed) go to the watches it feeds.
    fn in_audience(&self, feed: u64) -> bool {
        feed == self.view
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
    let old_by_id: HashMap<u64, &Arc<MountEntry>> = old.iter().map(|e| (e.key(), e)).collect();
    let new_by_id: HashMap<u64, &Arc<MountEntry>> = new.iter().map(|e| (e.key(), e)).collect();
    let mut detached = Vec::new();
    for before in old.iter().rev() {
        match new_by_id.get(&before.key()) {
            Some(after) if after.same_mount(before) => {}
            _ => detached.push((mount::DETACH, change(before, None, 0))),
        }
    }
    let mut modified = Vec::new();
    let mut attached = Vec::new();
    for after in new {
        match old_by_id.get(&after.key()) {
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

/// `mounts` as SNAPSHOT attaches of feed `origin`: a new watch's initial state.
fn snapshot<'a>(mounts: impl Iterator<Item = &'a Arc<MountEntry>>, origin: Origin) -> Vec<Event> {
    mounts
        .map(|entry| {
            MountChange::new(entry.clone(), origin).into_event(mount::ATTACH, FLAG_SNAPSHOT)
        })
        .collect()
}

/// A feed followed by a thread of its own for as long as this exists: dropping it closes
/// the write end of the thread's stop pipe, and the thread ends.
pub struct Followed<S> {
    pub state: Arc<S>,
    _stop: OwnedFd,
}

impl<S: Send + Sync + 'static> Followed<S> {
    /// Starts thread `name` running `follow(state, stop)`.
    fn start(
        name: String,
        state: S,
        follow: impl FnOnce(&S, OwnedFd) + Send + 'static,
    ) -> Result<Followed<S>> {
        let (stop_read, stop_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| Error::Failed(format!("cannot make a pipe: {e}")))?;
        let state = Arc::new(state);
        let followed = state.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || follow(&followed, stop_read))
            .map_err(|e| Error::Failed(format!("cannot start a thread: {e}")))?;
        Ok(Followed {
            state,
            _stop: stop_write,
        })
    }
}

/// Held by every watch on a view: keeps its feed followed.
pub enum Lease {
    Mountinfo(Followed<mountinfo::View>),
    Namespace(Arc<Followed<namespace::Namespace>>),
}

impl Lease {
    fn origin(&self) -> Origin {
        match self {
            Lease::Mountinfo(view) => view.state.origin,
            Lease::Namespace(ns) => ns.state.origin,
        }
    }
}

/// Which backend follows mount namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Namespace,
    Mountinfo,
}

impl Backend {
    /// The configured backend; "auto" takes fanotify and statmount when the kernel (and any
    /// seccomp filter around the daemon) allows them, and says why not when it falls back.
    pub fn choose(configured: MountEvents) -> std::io::Result<Backend> {
        match configured {
            MountEvents::Mountinfo => Ok(Backend::Mountinfo),
            MountEvents::Fanotify => namespace::probe().map(|()| Backend::Namespace),
            MountEvents::Auto => Ok(match namespace::probe() {
                Ok(()) => Backend::Namespace,
                Err(e) => {
                    tracing::info!(error = %e, "no fanotify mount events or statmount here: following mountinfo");
                    Backend::Mountinfo
                }
            }),
        }
    }
}

pub struct MountSource {
    hub: Arc<Hub>,
    backend: Backend,
    views: Mutex<HashMap<(Uid, MountView), Weak<Lease>>>,
    namespaces: Mutex<HashMap<u64, Weak<Followed<namespace::Namespace>>>>,
    next_feed: AtomicU64,
}

impl MountSource {
    /// Views are followed only while someone watches them; nothing runs until then.
    pub fn new(hub: Arc<Hub>, backend: Backend) -> Arc<MountSource> {
        Arc::new(MountSource {
            hub,
            backend,
            views: Mutex::new(HashMap::new()),
            namespaces: Mutex::new(HashMap::new()),
            next_feed: AtomicU64::new(1),
        })
    }

    /// The lease on the caller's view, shared with every other watch on it.
    /// Views are shared only between callers of one uid: a caller cannot plant a view (say,
    /// by changing namespace while it is being opened) that another user's watches join.
    fn lease(&self, process: &CallerProcess<'_>, uid: Uid) -> Result<Arc<Lease>> {
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
        let lease = Arc::new(match self.backend {
            Backend::Namespace => match self.namespace_lease(process, view, &file)? {
                Some(lease) => lease,
                None => self.mountinfo_lease(view, file)?,
            },
            Backend::Mountinfo => self.mountinfo_lease(view, file)?,
        });
        tracing::info!(
            ns = view.ns,
            uid = %uid,
            feed = lease.origin().view,
            backend = match *lease { Lease::Mountinfo(_) => "mountinfo", Lease::Namespace(_) => "fanotify" },
            "following a mount namespace"
        );
        views.insert(key, Arc::downgrade(&lease));
        Ok(lease)
    }

    fn mountinfo_lease(&self, view: MountView, file: std::fs::File) -> Result<Lease> {
        let origin = Origin {
            ns: view.ns,
            view: self.next_feed.fetch_add(1, Ordering::Relaxed),
        };
        let state = mountinfo::View::open(origin, file)
            .map_err(|e| Error::Failed(format!("cannot read the caller's mountinfo: {e}")))?;
        let hub = self.hub.clone();
        Followed::start(
            format!("mounts-{}", origin.view),
            state,
            move |view, stop| view.follow(&hub, stop),
        )
        .map(Lease::Mountinfo)
    }

    /// The namespace's shared feed, if it gives this caller's view: statmount resolves mount
    /// points against the namespace's root, so a caller whose root is elsewhere (a chroot)
    /// is followed through its own mountinfo instead (`None`), as is a namespace that
    /// cannot be followed through fanotify (no group left).
    fn namespace_lease(
        &self,
        process: &CallerProcess<'_>,
        view: MountView,
        caller_mountinfo: &std::fs::File,
    ) -> Result<Option<Lease>> {
        let ns_fd = process.mount_namespace()?;
        // The descriptor itself names the namespace: no race with the caller moving.
        let ns_ino = rustix::fs::fstat(&ns_fd)
            .map_err(|e| failed(e.into()))?
            .st_ino;
        if ns_ino != view.ns {
            return Err(Error::Failed(
                "the caller changed mount namespace while its watch was being set".into(),
            ));
        }
        let mut namespaces = self.namespaces.lock().expect("mount namespaces poisoned");
        namespaces.retain(|_, ns| ns.strong_count() > 0);
        let followed = match namespaces.get(&view.ns).and_then(Weak::upgrade) {
            Some(followed) => followed,
            None => {
                let origin = Origin {
                    ns: view.ns,
                    view: self.next_feed.fetch_add(1, Ordering::Relaxed),
                };
                let poll_file = caller_mountinfo.try_clone().map_err(failed)?;
                let state = match namespace::Namespace::open(origin, ns_fd.as_fd(), poll_file) {
                    Ok(state) => state,
                    // Out of fanotify groups (fs.fanotify.max_user_groups), say: this view
                    // is still followed, the old way.
                    Err(e) => {
                        tracing::warn!(ns = view.ns, error = %e, "cannot follow a mount namespace through fanotify: following the caller's mountinfo");
                        return Ok(None);
                    }
                };
                let hub = self.hub.clone();
                let followed = Arc::new(Followed::start(
                    format!("mountns-{}", origin.view),
                    state,
                    move |ns, stop| ns.follow(&hub, stop),
                )?);
                namespaces.insert(view.ns, Arc::downgrade(&followed));
                followed
            }
        };
        if followed.state.agrees_with_mountinfo(caller_mountinfo) {
            Ok(Some(Lease::Namespace(followed)))
        } else {
            tracing::info!(
                ns = view.ns,
                "the caller's root is not its mount namespace's: following its mountinfo"
            );
            Ok(None)
        }
    }
}

fn failed(e: std::io::Error) -> Error {
    Error::Failed(format!("cannot follow the caller's mount namespace: {e}"))
}

impl Source for MountSource {
    fn kind(&self) -> Kind {
        KIND
    }

    fn describe(&self) -> String {
        match self.backend {
            Backend::Namespace => "fanotify mount events of each watched namespace, looked up with statmount(2) (options changes: mountinfo POLLPRI, then statmount)".into(),
            Backend::Mountinfo => "the caller's /proc/PID/mountinfo, re-read on every change (POLLPRI)".into(),
        }
    }

    /// Mount watches are bound to the caller's own view of the mount tree.
    fn scope(&self, options: &mut Options, caller: &Caller) -> Result<Arc<dyn Scope>> {
        let under = match options.take_string("path")? {
            None => None,
            Some(path) => Some(access::resolve_path(caller, &path)?),
        };
        let lease = self.lease(&CallerProcess::new(caller)?, caller.uid)?;
        Ok(Arc::new(MountScope {
            view: lease.origin().view,
            under,
            lease: Some(lease),
        }))
    }

    fn option_names(&self) -> &'static [&'static str] {
        &["path"]
    }

    fn with_snapshot(&self, scope: &dyn Scope, then: &mut dyn FnMut(&[Event])) {
        match scope
            .downcast::<MountScope>()
            .and_then(|s| s.lease.as_deref())
        {
            Some(Lease::Mountinfo(view)) => view.state.with_snapshot(then),
            Some(Lease::Namespace(ns)) => ns.state.with_snapshot(then),
            None => then(&[]),
        }
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
