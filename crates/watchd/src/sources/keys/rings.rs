//! Possession: what a root is anchored on ([`Anchor`]) and how the poller thread comes to
//! possess it ([`resolve`]), the walk ring each root has and the store that keeps them
//! ([`Rings`], [`WalkRing`]), and the links a walk ring holds to a tree's keys ([`Holds`]).
//! The module map in [`super`] tells why.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io;

use super::tree::{Condition, RootId, Tree};
use super::viewer::{ThreadCreds, Viewer};
use crate::error::{Error, Result};
use crate::sys::{self, KeySerial};

/// Which key a watch names, before it is looked up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Anchor {
    /// `@user` of this uid.
    User(u32),
    /// `@user-session` of this uid.
    UserSession(u32),
    /// `@persistent` of this uid.
    Persistent(u32),
    /// A key by serial.
    Serial(KeySerial),
}

/// Every key permission of the possessor (`KEY_POS_ALL`).
const KEY_POS_ALL: u32 = 0x3f00_0000;
/// The possessor's Search permission.
const KEY_POS_SEARCH: u32 = 0x0800_0000;
/// The owner's View and Link permissions.
const KEY_USR_VIEW_LINK: u32 = 0x0011_0000;
/// The owner's View and Write permissions.
const KEY_USR_VIEW_WRITE: u32 = 0x0005_0000;
/// What every walk ring is called: the thread keyring holds one link per name, so linking
/// a root's ring displaces the ring linked before it.
const WALK_RING_NAME: &CStr = c"watchd:walk";

/// A root's possession anchor. Every key call makes the kernel search the calling thread's
/// keyrings for the key, to tell whether the caller possesses it; with every root's keys
/// linked into one thread keyring, keys of the same name (every krb5 cache has a
/// `__krb5_princ__`) made each search descend into all the roots: quadratic. So each root
/// has a keyring of its own, `ring`, holding the root and its tree, and the thread keyring
/// links only the ring of the root being walked. `holder`, named after the root, keeps the
/// ring alive in the thread's store, which grants no Search: no lookup descends into it.
pub(super) struct WalkRing {
    holder: KeySerial,
    pub(super) ring: KeySerial,
}

/// The thread's own keyrings: the store that keeps every root's [`WalkRing`] alive, and
/// the walk ring linked into the thread keyring now.
pub(super) struct Rings {
    /// The unsearchable keyring that keeps every root's [`WalkRing`] alive.
    store: KeySerial,
    /// The walk ring linked into the thread keyring now.
    possessed: Option<KeySerial>,
}

/// Makes the thread's store: a keyring in the thread keyring without Search permission.
fn make_store() -> io::Result<KeySerial> {
    let store = sys::add_key(
        c"keyring",
        c"watchd:roots",
        &[],
        sys::KEY_SPEC_THREAD_KEYRING,
    )?;
    // A keyring without Search is not possessed even from the thread keyring (the
    // kernel's lookup needs Search on what it finds), so its owner, root, may write it.
    sys::keyctl_setperm(store, (KEY_POS_ALL & !KEY_POS_SEARCH) | KEY_USR_VIEW_WRITE)?;
    Ok(store)
}

impl Rings {
    /// Makes the thread's store (in the calling thread's keyring).
    pub(super) fn new() -> io::Result<Rings> {
        Ok(Rings {
            store: make_store()?,
            possessed: None,
        })
    }

    /// Makes root `id`'s walk ring (as root: the store is root's).
    pub(super) fn make_walk_ring(&mut self, id: RootId) -> io::Result<WalkRing> {
        let name = CString::new(format!("watchd:root:{}", id.0)).expect("no NUL in digits");
        // Made in the thread keyring, where we possess it, then moved to the store.
        let holder = sys::add_key(c"keyring", &name, &[], sys::KEY_SPEC_THREAD_KEYRING)?;
        let made = (|| -> io::Result<KeySerial> {
            let ring = sys::add_key(c"keyring", WALK_RING_NAME, &[], holder)?;
            // Linking it into the thread keyring later happens without possession: the
            // owner (root) needs Link.
            sys::keyctl_setperm(ring, KEY_POS_ALL | KEY_USR_VIEW_LINK)?;
            sys::keyctl_link(holder, self.store)?;
            Ok(ring)
        })();
        let _ = sys::keyctl_unlink(holder, sys::KEY_SPEC_THREAD_KEYRING);
        Ok(WalkRing {
            holder,
            ring: made?,
        })
    }

    /// Lets go of a walk ring: with it go the links it held.
    pub(super) fn drop_walk_ring(&mut self, walk_ring: &WalkRing) {
        if self.possessed == Some(walk_ring.ring) {
            let _ = sys::keyctl_unlink(walk_ring.ring, sys::KEY_SPEC_THREAD_KEYRING);
            self.possessed = None;
        }
        let _ = sys::keyctl_unlink(walk_ring.holder, self.store);
    }

    /// Links `ring` into the thread keyring, displacing the ring linked before.
    /// `uid` is the fsuid the thread wears now.
    pub(super) fn possess(&mut self, ring: KeySerial, uid: u32) -> io::Result<()> {
        if self.possessed == Some(ring) {
            return Ok(());
        }
        // The ring grants Link to its owner, root: link with fsuid 0 for a moment.
        if uid != 0 {
            sys::setfsuid(0);
        }
        let linked = sys::keyctl_link(ring, sys::KEY_SPEC_THREAD_KEYRING);
        if uid != 0 {
            sys::setfsuid(uid);
        }
        linked?;
        self.possessed = Some(ring);
        Ok(())
    }
}

/// A key's name as a keyring indexes it.
type KeyName = (String, String);

fn name_of(tree: &Tree, serial: KeySerial) -> Option<KeyName> {
    tree.node(serial)
        .map(|n| (n.info.key_type.clone(), n.info.description.clone()))
}

/// The links a root's walk ring holds to keys of its tree.
///
/// A keyring keeps one link per (type, description), and `KEYCTL_UNLINK` removes whatever
/// holds that name: so a name is held for one key at a time. A second key of the same name
/// in one tree (two krb5 caches each have a `__krb5_princ__`) is not held; its
/// disappearance then reads as unlinked, never as invalidated. Linking it anyway would
/// displace the first.
pub(super) struct Holds {
    ring: KeySerial,
    by_serial: HashMap<KeySerial, KeyName>,
    by_name: HashMap<KeyName, KeySerial>,
}

impl Holds {
    pub(super) fn new(ring: KeySerial) -> Holds {
        Holds {
            ring,
            by_serial: HashMap::new(),
            by_name: HashMap::new(),
        }
    }

    /// Whether the ring's link under this key's name is this key's.
    pub(super) fn contains(&self, serial: KeySerial) -> bool {
        self.by_serial
            .get(&serial)
            .is_some_and(|name| self.by_name.get(name) == Some(&serial))
    }

    /// Links `serial` into the ring; false when it cannot be held.
    fn hold(&mut self, serial: KeySerial, name: KeyName) -> bool {
        if self.by_serial.contains_key(&serial) {
            return true;
        }
        if self.by_name.contains_key(&name) || sys::keyctl_link(serial, self.ring).is_err() {
            return false;
        }
        self.by_name.insert(name.clone(), serial);
        self.by_serial.insert(serial, name);
        true
    }

    /// Counts the link a lookup made itself (`KEYCTL_GET_PERSISTENT`, or linking `@user`).
    pub(super) fn adopt(&mut self, serial: KeySerial, tree: &Tree) {
        let name = name_of(tree, serial).unwrap_or_default();
        self.by_name.insert(name.clone(), serial);
        self.by_serial.insert(serial, name);
    }

    /// Unlinks `serial`, if the name is still its own.
    fn release(&mut self, serial: KeySerial) {
        let Some(name) = self.by_serial.remove(&serial) else {
            return;
        };
        if self.by_name.get(&name) == Some(&serial) {
            self.by_name.remove(&name);
            // ENOKEY when the key is already gone (its links went with it).
            let _ = sys::keyctl_unlink(serial, self.ring);
        }
    }

    pub(super) fn release_all(&mut self) {
        let held: Vec<KeySerial> = self.by_serial.keys().copied().collect();
        for serial in held {
            self.release(serial);
        }
    }
}

/// Links into the walk ring whatever this root's tree has that it did not hold yet, and
/// lets go of what left it. A key we may not link is simply not held.
pub(super) fn hold_tree(holds: &mut Holds, tree: &Tree, root: KeySerial, nested: bool) {
    let wanted: HashSet<KeySerial> = if nested {
        tree.nodes
            .iter()
            .filter(|(_, n)| n.condition == Condition::Live)
            .map(|(s, _)| *s)
            .collect()
    } else {
        HashSet::from([root])
    };
    for serial in &wanted {
        // The root's link is made by the lookup; one we could not make then is not retried
        // (the caller's rights did not allow it).
        if *serial == root || holds.by_serial.contains_key(serial) {
            continue;
        }
        if let Some(name) = name_of(tree, *serial) {
            holds.hold(*serial, name);
        }
    }
    let released: Vec<KeySerial> = holds
        .by_serial
        .keys()
        .filter(|s| **s != root && !wanted.contains(s))
        .copied()
        .collect();
    for serial in released {
        holds.release(serial);
    }
}

/// Looks up the root key as its viewer and links it into the root's walk `ring`. Returns
/// the serial and whether the link was made.
pub(super) fn resolve(
    anchor: &Anchor,
    viewer: &Viewer,
    creds: &mut ThreadCreds,
    rings: &mut Rings,
    buf: &mut Vec<u8>,
    ring: KeySerial,
) -> Result<(KeySerial, bool)> {
    let denied = |e: io::Error, what: &str| match e.raw_os_error() {
        Some(libc::ENOKEY) => Error::NotFound(format!("{what} does not exist")),
        Some(libc::EACCES) | Some(libc::EPERM) => {
            Error::AccessDenied(format!("uid {} may not watch {what}", viewer.uid))
        }
        _ => Error::Failed(format!("cannot look up {what}: {e}")),
    };
    rings
        .possess(ring, creds.uid)
        .map_err(|e| Error::Failed(format!("cannot take a keyring to follow keys in: {e}")))?;
    match anchor {
        Anchor::Persistent(uid) => {
            creds.take(&ThreadCreds::root());
            let serial = sys::keyctl_get_persistent(*uid, ring)
                .map_err(|e| denied(e, &format!("the persistent keyring of uid {uid}")))?;
            Ok((serial, true))
        }
        Anchor::User(uid) | Anchor::UserSession(uid) => {
            let (special, what) = match anchor {
                Anchor::User(_) => (sys::KEY_SPEC_USER_KEYRING, "user"),
                _ => (sys::KEY_SPEC_USER_SESSION_KEYRING, "user session"),
            };
            creds.take(&ThreadCreds::root());
            let result = with_real_uid(*uid, || {
                let serial = sys::keyctl_get_keyring_id(special, true)?;
                sys::keyctl_link(serial, ring)?;
                Ok(serial)
            });
            let serial =
                result.map_err(|e| denied(e, &format!("the {what} keyring of uid {uid}")))?;
            Ok((serial, true))
        }
        Anchor::Serial(serial) => {
            creds.take(&ThreadCreds::of(viewer));
            let viewable = sys::keyctl_describe(*serial, buf);
            creds.take(&ThreadCreds::root());
            viewable.map_err(|e| denied(e, &format!("key {serial}")))?;
            Ok((*serial, link_as_possessed(*serial, ring, viewer, creds)))
        }
    }
}

/// Links key `serial` into `ring` with the rights its viewer has in a login session: its
/// own, plus possession of what its user and user-session keyrings reach (a key's owner
/// usually has View only, and Link needs possession). Those keyrings are linked into the
/// ring for the moment of the link and unlinked after it. False when it cannot be linked:
/// the walk then sees only what the viewer's permissions show.
fn link_as_possessed(
    serial: KeySerial,
    ring: KeySerial,
    viewer: &Viewer,
    creds: &mut ThreadCreds,
) -> bool {
    let link_as_viewer = |creds: &mut ThreadCreds| {
        creds.take(&ThreadCreds::of(viewer));
        let linked = sys::keyctl_link(serial, ring).is_ok();
        creds.take(&ThreadCreds::root());
        linked
    };
    if link_as_viewer(creds) {
        return true;
    }
    for special in [
        sys::KEY_SPEC_USER_KEYRING,
        sys::KEY_SPEC_USER_SESSION_KEYRING,
    ] {
        let lent = with_real_uid(viewer.uid, || {
            let keyring = sys::keyctl_get_keyring_id(special, false)?;
            sys::keyctl_link(keyring, ring)?;
            Ok(keyring)
        });
        let Ok(keyring) = lent else {
            continue;
        };
        let linked = link_as_viewer(creds);
        if keyring != serial {
            let _ = sys::keyctl_unlink(keyring, ring);
        }
        if linked {
            return true;
        }
    }
    false
}

/// Runs `f` with the thread's real uid and fsuid set to `uid` (effective uid and
/// capabilities stay root's), then restores both.
fn with_real_uid<T>(uid: u32, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    sys::setresuid_this_thread(Some(uid), None, None)?;
    sys::setfsuid(uid);
    let result = f();
    sys::setfsuid(0);
    sys::setresuid_this_thread(Some(0), None, None)
        .expect("the key thread cannot take back real uid 0 (it keeps CAP_SETUID)");
    result
}
