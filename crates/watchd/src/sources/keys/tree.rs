//! What one walk of a followed root finds ([`Tree`], [`Node`]), how two walks differ in the
//! kernel's notification subtypes ([`diff`], [`Notice`]), the state as SNAPSHOT notices
//! ([`snapshot`]), the event a notice becomes ([`KeyChange`]), and what may follow a
//! root's walks from above ([`TreeObserver`]).

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use watchd_proto::{RecordBuilder, RecordType, attr, key};

use super::viewer::KeyInfo;
use crate::event::{Change, Fields};
use crate::hub::Hub;
use crate::sys::KeySerial;

/// A key that is still listed but cannot be used: not yet instantiated, negative,
/// invalidated (until the garbage collector unlinks it), revoked or expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Live,
    /// Under construction: `request_key(2)` made and linked it, and its request-key helper
    /// has not instantiated it yet. Reading it would wait for the helper ([`Pending`]), so
    /// it is described but neither read, held nor watched until a retry finds it done.
    Pending,
    Revoked,
    Unavailable,
}

impl Condition {
    /// Live or still under construction: its changes are reported, its loss too.
    fn is_usable(self) -> bool {
        matches!(self, Condition::Live | Condition::Pending)
    }
}

/// One key of a walked tree.
#[derive(Clone, Debug)]
pub struct Node {
    pub info: Arc<KeyInfo>,
    pub condition: Condition,
    /// A keyed digest of the payload, for keys the walk may read.
    pub digest: Option<u64>,
    /// The payload itself, only for keys a root's observer asks to keep
    /// ([`super::TreeObserver::kept_payloads`]).
    pub content: Option<Arc<[u8]>>,
    /// A keyring's members, for keyrings the walk may read.
    pub children: Option<Vec<KeySerial>>,
}

/// A watched key and, for nested watches, everything below it, as one walk found it.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub nodes: HashMap<KeySerial, Node>,
    /// Walk order: the root first, then breadth first.
    pub order: Vec<KeySerial>,
}

impl Tree {
    pub fn node(&self, serial: KeySerial) -> Option<&Node> {
        self.nodes.get(&serial)
    }

    /// The keyring `parent`'s member keyring or key with this type and description.
    pub fn child(&self, parent: KeySerial, key_type: &str, description: &str) -> Option<&Node> {
        self.node(parent)?
            .children
            .as_ref()?
            .iter()
            .filter_map(|c| self.node(*c))
            .find(|n| n.info.key_type == key_type && n.info.description == description)
    }
}

/// What `KEYCTL_DESCRIBE` says of a key that has gone from where it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Still alive somewhere: it was unlinked.
    Alive,
    /// No longer usable (ENOKEY, EKEYREVOKED, EKEYEXPIRED).
    Gone,
}

/// One notification, in the kernel's terms: about `key`, with `aux` for (un)links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub subtype: u8,
    pub key: Arc<KeyInfo>,
    pub aux: Option<KeySerial>,
}

/// The notifications that turn tree `old` into tree `new`. `probe` tells what became of a
/// key that left a keyring; `held` whether the poller held a link to it (then a gone key
/// was invalidated, since our link would otherwise keep it alive).
pub fn diff(
    old: &Tree,
    new: &Tree,
    probe: &mut dyn FnMut(KeySerial) -> Probe,
    held: &dyn Fn(KeySerial) -> bool,
) -> Vec<Notice> {
    let mut out = Vec::new();
    let notice = |subtype, key: &Arc<KeyInfo>, aux| Notice {
        subtype,
        key: key.clone(),
        aux,
    };
    for serial in &new.order {
        let n = &new.nodes[serial];
        let Some(o) = old.nodes.get(serial) else {
            continue;
        };
        match (o.condition, n.condition) {
            (Condition::Unavailable | Condition::Pending, Condition::Live) => {
                out.push(notice(key::INSTANTIATED, &n.info, None))
            }
            (Condition::Live | Condition::Pending, Condition::Revoked) => {
                out.push(notice(key::REVOKED, &n.info, None))
            }
            (Condition::Live | Condition::Pending, Condition::Unavailable) => {
                out.push(notice(key::INVALIDATED, &n.info, None))
            }
            _ => {}
        }
        if o.condition.is_usable() && n.condition.is_usable() {
            if (o.info.uid, o.info.gid, o.info.perm) != (n.info.uid, n.info.gid, n.info.perm) {
                out.push(notice(key::SETATTR, &n.info, None));
            }
            if o.digest.is_some() && n.digest.is_some() && o.digest != n.digest {
                out.push(notice(key::UPDATED, &n.info, None));
            }
        }
        let (Some(was), Some(now)) = (&o.children, &n.children) else {
            continue;
        };
        if was == now {
            continue;
        }
        let now_set: HashSet<_> = now.iter().collect();
        let was_set: HashSet<_> = was.iter().collect();
        let mut unlinked = Vec::new();
        for child in was.iter().filter(|c| !now_set.contains(c)) {
            let before = old.nodes.get(child);
            if before.is_some_and(|b| !b.condition.is_usable()) {
                // Already reported (revoked, invalidated): the collector just tidied up.
                continue;
            }
            match probe(*child) {
                Probe::Gone if held(*child) => {
                    let info = before
                        .map_or_else(|| Arc::new(KeyInfo::unknown(*child)), |b| b.info.clone());
                    out.push(notice(key::INVALIDATED, &info, None));
                }
                _ => unlinked.push(*child),
            }
        }
        if now.is_empty() && unlinked.len() >= 2 && unlinked.len() == was.len() {
            out.push(notice(key::CLEARED, &n.info, None));
        } else {
            for child in unlinked {
                out.push(notice(key::UNLINKED, &n.info, Some(child)));
            }
        }
        for child in now.iter().filter(|c| !was_set.contains(c)) {
            out.push(notice(key::LINKED, &n.info, Some(*child)));
        }
    }
    out
}

/// The state of a tree as SNAPSHOT notices: each key instantiated, then each keyring's links.
pub fn snapshot(tree: &Tree) -> Vec<Notice> {
    let live = |s: &KeySerial| tree.nodes.get(s).filter(|n| n.condition == Condition::Live);
    let mut out: Vec<Notice> = tree
        .order
        .iter()
        .filter_map(live)
        .map(|n| Notice {
            subtype: key::INSTANTIATED,
            key: n.info.clone(),
            aux: None,
        })
        .collect();
    for node in tree.order.iter().filter_map(live) {
        for child in node.children.iter().flatten() {
            out.push(Notice {
                subtype: key::LINKED,
                key: node.info.clone(),
                aux: Some(*child),
            });
        }
    }
    out
}

/// Whether a walk found keys under construction.
pub(super) fn has_pending(tree: &Tree) -> bool {
    tree.nodes
        .values()
        .any(|n| n.condition == Condition::Pending)
}

/// Whether two walks found the same keys in the same conditions: then the holds stay.
pub(super) fn same_members(old: &Tree, new: &Tree) -> bool {
    old.order == new.order
        && new
            .nodes
            .iter()
            .all(|(s, n)| old.nodes.get(s).is_some_and(|o| o.condition == n.condition))
}

/// Names a followed root for as long as it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RootId(pub u64);

/// A key event as watches match it and records carry it.
#[derive(Debug)]
pub struct KeyChange {
    pub root: RootId,
    /// The serial the watch named (its root).
    pub watched: KeySerial,
    pub notice: Notice,
}

impl Change for KeyChange {
    fn encode(&self, builder: &mut RecordBuilder, record_type: RecordType) {
        let key = &self.notice.key;
        let mut f = Fields::new(builder);
        f.u32(attr::KEY_ID, key.serial.0 as u32);
        if let Some(aux) = self.notice.aux {
            f.u32(attr::AUX, aux.0 as u32);
        }
        f.u32(attr::WATCHED_KEY, self.watched.0 as u32);
        if record_type == RecordType::Meta {
            f.bytes(attr::OBJECT, format!("key {}", self.watched).as_bytes());
            f.bytes(attr::REASON, b"the watched key is gone");
        } else {
            f.u32(attr::KEY_UID, key.uid);
            f.u32(attr::KEY_GID, key.gid);
            f.u32(attr::PERM, key.perm);
            f.bytes(attr::KEY_TYPE, key.key_type.as_bytes());
            f.bytes(attr::DESCRIPTION, key.description.as_bytes());
        }
        f.finish();
    }
}

/// Follows a root's walks from above: the krb5 source reads credential-cache collections
/// out of key trees this way. The poller knows no implementation of it.
pub trait TreeObserver: Any + Send + Sync {
    /// Descriptions of keys whose payloads the walks keep whole in [`Node::content`]
    /// (bookkeeping that names things; never a secret).
    ///
    /// [`Node::content`]: Node::content
    fn kept_payloads(&self) -> &[&str];

    /// Called by the poller thread after each walk of root `id`, whose key is now `root`,
    /// with the registry locked: `first` for the walk that registers the root (no watch
    /// sees it yet: nothing is to be published), then after every walk that follows; with
    /// an empty tree when the anchor is gone for good.
    fn walked(&self, id: RootId, tree: &Tree, root: KeySerial, hub: &Hub, first: bool);
}

/// A root's observer, and what makes two requests' observers the same: requests with the
/// same `key` share one root, and the observer of the request that made it.
#[derive(Clone)]
pub struct Observer {
    pub key: String,
    pub hook: Arc<dyn TreeObserver>,
}

impl PartialEq for Observer {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Observer {}

impl std::hash::Hash for Observer {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Observer").field(&self.key).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::keys::viewer::info;

    fn node(serial: i32, children: Option<Vec<i32>>, digest: Option<u64>) -> Node {
        let key_type = if children.is_some() {
            "keyring"
        } else {
            "user"
        };
        Node {
            info: info(serial, key_type, 0x3f010000),
            condition: Condition::Live,
            digest,
            content: None,
            children: children.map(|c| c.into_iter().map(KeySerial).collect()),
        }
    }

    fn tree(nodes: Vec<Node>) -> Tree {
        let order = nodes.iter().map(|n| n.info.serial).collect();
        Tree {
            nodes: nodes.into_iter().map(|n| (n.info.serial, n)).collect(),
            order,
        }
    }

    fn subtypes(notices: &[Notice]) -> Vec<(u8, i32, Option<i32>)> {
        notices
            .iter()
            .map(|n| (n.subtype, n.key.serial.0, n.aux.map(|a| a.0)))
            .collect()
    }

    fn run(old: &Tree, new: &Tree, alive: &[i32], held: &[i32]) -> Vec<(u8, i32, Option<i32>)> {
        let mut probe = |s: KeySerial| {
            if alive.contains(&s.0) {
                Probe::Alive
            } else {
                Probe::Gone
            }
        };
        subtypes(&diff(old, new, &mut probe, &|s| held.contains(&s.0)))
    }

    #[test]
    fn key_changes_map_to_the_kernel_subtypes() {
        let old = tree(vec![
            node(1, Some(vec![2, 3, 4]), None),
            node(2, None, Some(7)),
            node(3, None, Some(1)),
            node(4, None, Some(1)),
        ]);
        let mut updated = node(2, None, Some(8));
        let mut chmod = node(3, None, Some(1));
        Arc::make_mut(&mut chmod.info).perm = 0x3f030000;
        let mut revoked = node(4, None, Some(1));
        revoked.condition = Condition::Revoked;
        updated.children = None;
        let new = tree(vec![
            node(1, Some(vec![2, 3, 4, 5]), None),
            updated,
            chmod,
            revoked,
            node(5, None, Some(3)),
        ]);
        assert_eq!(
            run(&old, &new, &[], &[]),
            vec![
                (key::LINKED, 1, Some(5)),
                (key::UPDATED, 2, None),
                (key::SETATTR, 3, None),
                (key::REVOKED, 4, None),
            ]
        );
    }

    #[test]
    fn a_key_that_left_is_unlinked_if_alive_and_invalidated_if_we_held_it() {
        let old = tree(vec![
            node(1, Some(vec![2, 3]), None),
            node(2, None, Some(1)),
            node(3, None, Some(1)),
        ]);
        let new = tree(vec![node(1, Some(vec![]), None)]);
        // One alive, one gone while held: no "cleared", since one was invalidated.
        assert_eq!(
            run(&old, &new, &[2], &[3]),
            vec![(key::INVALIDATED, 3, None), (key::UNLINKED, 1, Some(2))]
        );
        // Gone but never held: it may just have died with its last link.
        assert_eq!(run(&old, &new, &[2], &[]), vec![(key::CLEARED, 1, None)]);
    }

    #[test]
    fn a_keyring_that_lost_several_keys_at_once_was_cleared_one_key_was_unlinked() {
        let old = tree(vec![node(1, Some(vec![2, 3]), None)]);
        let new = tree(vec![node(1, Some(vec![]), None)]);
        assert_eq!(
            run(&old, &new, &[2, 3], &[2, 3]),
            vec![(key::CLEARED, 1, None)]
        );
        let old = tree(vec![node(1, Some(vec![2]), None)]);
        assert_eq!(
            run(&old, &new, &[2], &[2]),
            vec![(key::UNLINKED, 1, Some(2))]
        );
    }

    #[test]
    fn an_invalidated_key_still_listed_is_reported_once() {
        let old = tree(vec![node(1, Some(vec![2]), None), node(2, None, Some(1))]);
        let mut dead = node(2, None, None);
        dead.condition = Condition::Unavailable;
        let listed = tree(vec![node(1, Some(vec![2]), None), dead]);
        assert_eq!(
            run(&old, &listed, &[], &[2]),
            vec![(key::INVALIDATED, 2, None)]
        );
        let collected = tree(vec![node(1, Some(vec![]), None)]);
        assert_eq!(run(&listed, &collected, &[], &[2]), vec![]);
    }

    #[test]
    fn a_key_under_construction_is_linked_then_instantiated_or_unlinked() {
        let pending = || {
            let mut n = node(2, None, None);
            n.condition = Condition::Pending;
            n
        };
        let empty = tree(vec![node(1, Some(vec![]), None)]);
        let requested = tree(vec![node(1, Some(vec![2]), None), pending()]);
        assert_eq!(
            run(&empty, &requested, &[], &[]),
            vec![(key::LINKED, 1, Some(2))]
        );
        assert_eq!(run(&requested, &requested, &[], &[]), vec![]);
        assert!(snapshot(&requested).iter().all(|n| n.key.serial.0 != 2));
        let done = tree(vec![node(1, Some(vec![2]), None), node(2, None, Some(7))]);
        assert_eq!(
            run(&requested, &done, &[], &[]),
            vec![(key::INSTANTIATED, 2, None)]
        );
        // Unlinked while still under construction: it was usable, so the unlink is told.
        assert_eq!(
            run(&requested, &empty, &[2], &[]),
            vec![(key::UNLINKED, 1, Some(2))]
        );
    }
}
