//! What a credential-cache collection holds ([`Collection`]), read from a key tree
//! ([`Collection::from_keyring`], through [`KeyringFollower`], which the key poller calls
//! after every walk of the collection's keyring) or from files ([`super::files`]); the
//! events between two states of it ([`Collection::diff`]) and the records they become
//! ([`Krb5Change`]); and the marshalled names MIT keeps in caches ([`parse_principal`]).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use watchd_proto::{RecordBuilder, RecordType, attr, krb5};

use crate::event::{Change, Event, Fields};
use crate::hub::Hub;
use crate::sources::keys::{RootId, Tree, TreeObserver};
use crate::sys::KeySerial;

/// The key naming a collection's primary cache.
pub const PRIMARY_KEY: &str = "krb_ccache:primary";
/// The key holding a cache's default principal.
pub const PRINCIPAL_KEY: &str = "__krb5_princ__";

/// Where a keyring collection lives inside its anchor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyringCollection {
    /// The collection keyring's description: `_krb` or `_krb_NAME`.
    pub keyring: String,
    /// What cache names start with: `KEYRING:persistent:1000:`.
    pub prefix: String,
    /// The watched name, for the records' `collection` attribute.
    pub name: String,
}

impl KeyringCollection {
    /// What makes two watches' collections the same (they then share one followed root).
    pub fn key(&self) -> String {
        format!("{}\n{}\n{}", self.keyring, self.prefix, self.name)
    }
}

/// One cache as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheState {
    pub principal: String,
    /// Changes whenever the cache's credentials do.
    pub fingerprint: u64,
}

/// A collection (or a single cache) as last seen: caches by full name, and the primary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collection {
    pub primary: Option<String>,
    pub caches: BTreeMap<String, CacheState>,
}

/// One credential-cache event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheChange {
    pub subtype: u8,
    pub cache: String,
    pub principal: String,
}

impl Collection {
    /// The collection inside the key tree under `root` (empty when there is none yet).
    pub fn from_keyring(tree: &Tree, root: KeySerial, spec: &KeyringCollection) -> Collection {
        let Some(keyring) = tree.child(root, "keyring", &spec.keyring) else {
            return Collection::default();
        };
        let serial = keyring.info.serial;
        let primary = tree
            .child(serial, "user", PRIMARY_KEY)
            .and_then(|k| k.content.as_deref())
            .and_then(decode_primary)
            .map(|name| format!("{}{name}", spec.prefix));
        let mut caches = BTreeMap::new();
        for member in keyring.children.iter().flatten() {
            let Some(cache) = tree.node(*member).filter(|n| n.info.is_keyring()) else {
                continue;
            };
            let principal = tree
                .child(*member, "user", PRINCIPAL_KEY)
                .and_then(|k| k.content.as_deref())
                .and_then(|p| parse_principal(p).map(|(name, _)| name))
                .unwrap_or_default();
            let mut hasher = std::hash::DefaultHasher::new();
            for key in cache.children.iter().flatten() {
                key.hash(&mut hasher);
                tree.node(*key).and_then(|n| n.digest).hash(&mut hasher);
            }
            caches.insert(
                format!("{}{}", spec.prefix, cache.info.description),
                CacheState {
                    principal,
                    fingerprint: hasher.finish(),
                },
            );
        }
        Collection { primary, caches }
    }

    /// The events that turn `self` into `new`: destroyed, created, changed, then the primary.
    pub fn diff(&self, new: &Collection) -> Vec<CacheChange> {
        let change = |subtype, cache: &str, state: &CacheState| CacheChange {
            subtype,
            cache: cache.to_owned(),
            principal: state.principal.clone(),
        };
        let mut out = Vec::new();
        for (name, state) in &self.caches {
            if !new.caches.contains_key(name) {
                out.push(change(krb5::DESTROYED, name, state));
            }
        }
        for (name, state) in &new.caches {
            match self.caches.get(name) {
                None => out.push(change(krb5::CREATED, name, state)),
                Some(old) if old != state => out.push(change(krb5::CHANGED, name, state)),
                Some(_) => {}
            }
        }
        if let (Some(_), Some(primary)) = (&self.primary, &new.primary)
            && self.primary.as_ref() != Some(primary)
            && let Some(state) = new.caches.get(primary)
        {
            out.push(change(krb5::PRIMARY, primary, state));
        }
        out
    }

    /// The state as SNAPSHOT events: each cache created, then the primary.
    pub fn snapshot(&self) -> Vec<CacheChange> {
        let mut out: Vec<CacheChange> = self
            .caches
            .iter()
            .map(|(name, state)| CacheChange {
                subtype: krb5::CREATED,
                cache: name.clone(),
                principal: state.principal.clone(),
            })
            .collect();
        if let Some(primary) = &self.primary
            && let Some(state) = self.caches.get(primary)
        {
            out.push(CacheChange {
                subtype: krb5::PRIMARY,
                cache: primary.clone(),
                principal: state.principal.clone(),
            });
        }
        out
    }
}

/// The cache name in a `krb_ccache:primary` payload (big-endian version 1, length, name).
pub fn decode_primary(payload: &[u8]) -> Option<String> {
    let word = |at: usize| {
        Some(u32::from_be_bytes(
            payload.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    if word(0)? != 1 {
        return None;
    }
    let len = word(4)? as usize;
    String::from_utf8(payload.get(8..8 + len)?.to_vec()).ok()
}

/// A principal as MIT marshals it in version 3 and 4 caches (`__krb5_princ__`, and a
/// FILE cache after its header): big-endian name type, component count, the realm, then
/// the components, each a length and bytes. Returns "comp/comp@REALM" and the bytes used.
pub fn parse_principal(data: &[u8]) -> Option<(String, usize)> {
    let mut at = 0;
    let mut word = || {
        let w = u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        Some(w)
    };
    let _name_type = word()?;
    let count = word()?;
    if count > 64 {
        return None;
    }
    let mut parts = Vec::new();
    for _ in 0..=count {
        let len = u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        parts.push(String::from_utf8_lossy(data.get(at..at + len)?).into_owned());
        at += len;
    }
    let realm = parts.remove(0);
    Some((format!("{}@{realm}", parts.join("/")), at))
}

/// The default principal of a FILE cache (format version 3 or 4); `None` when the bytes
/// are not a cache (a file being written, or zeroed by kdestroy).
pub fn file_principal(data: &[u8]) -> Option<String> {
    let body = match data.get(..2)? {
        [5, 3] => data.get(2..)?,
        [5, 4] => {
            let header_len = u16::from_be_bytes(data.get(2..4)?.try_into().ok()?) as usize;
            data.get(4 + header_len..)?
        }
        _ => return None,
    };
    parse_principal(body).map(|(name, _)| name)
}

/// Which followed collection an event is of: a keyring one (a key poller root) or a file
/// one (a watch of the file thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CollectionId {
    Keyring(RootId),
    Files(u64),
}

/// A credential-cache event as watches match it and records carry it.
#[derive(Debug)]
pub struct Krb5Change {
    /// The followed collection it happened in.
    pub collection: CollectionId,
    /// The watched name.
    pub name: String,
    pub change: CacheChange,
}

impl Change for Krb5Change {
    fn encode(&self, builder: &mut RecordBuilder, _: RecordType) {
        let mut f = Fields::new(builder);
        f.bytes(attr::CACHE, self.change.cache.as_bytes());
        f.bytes(attr::PRINCIPAL, self.change.principal.as_bytes());
        f.bytes(attr::COLLECTION, self.name.as_bytes());
        f.finish();
    }
}

impl Krb5Change {
    pub(super) fn into_event(self, flags: u8) -> Event {
        Event::new(RecordType::Krb5, self.change.subtype, flags, Arc::new(self))
    }
}

pub fn publish(hub: &Hub, collection: CollectionId, name: &str, change: CacheChange) {
    let change = Krb5Change {
        collection,
        name: name.to_owned(),
        change,
    };
    hub.publish(&change.into_event(0));
}

/// Follows a keyring collection from above the key poller: after every walk of the
/// collection's anchor, reads the collection out of the tree and publishes how it changed.
pub struct KeyringFollower {
    spec: KeyringCollection,
    /// The collection as last seen. Used only under the key poller's registry lock (by
    /// its thread after a walk, by a snapshot), so never contended.
    last: Mutex<Collection>,
}

impl KeyringFollower {
    pub fn new(spec: KeyringCollection) -> KeyringFollower {
        KeyringFollower {
            spec,
            last: Mutex::new(Collection::default()),
        }
    }

    /// The watched name, for the records' `collection` attribute.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The collection as last seen.
    pub fn collection(&self) -> Collection {
        self.last.lock().expect("collection poisoned").clone()
    }
}

impl TreeObserver for KeyringFollower {
    fn kept_payloads(&self) -> &[&str] {
        // MIT's bookkeeping: names, not secrets.
        &[PRIMARY_KEY, PRINCIPAL_KEY]
    }

    fn walked(&self, id: RootId, tree: &Tree, root: KeySerial, hub: &Hub, first: bool) {
        let collection = Collection::from_keyring(tree, root, &self.spec);
        let mut last = self.last.lock().expect("collection poisoned");
        if !first {
            for change in last.diff(&collection) {
                publish(hub, CollectionId::Keyring(id), &self.spec.name, change);
            }
        }
        *last = collection;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marshal(parts: &[&str], realm: &str) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(1u32.to_be_bytes());
        out.extend((parts.len() as u32).to_be_bytes());
        for s in std::iter::once(&realm).chain(parts) {
            out.extend((s.len() as u32).to_be_bytes());
            out.extend(s.as_bytes());
        }
        out
    }

    #[test]
    fn principals_and_primary_names_decode() {
        let p = marshal(&["alice"], "WATCHD.TEST");
        assert_eq!(parse_principal(&p).unwrap().0, "alice@WATCHD.TEST");
        let p = marshal(&["HTTP", "host.example"], "R");
        assert_eq!(parse_principal(&p).unwrap().0, "HTTP/host.example@R");
        assert!(parse_principal(&p[..p.len() - 1]).is_none());
        let mut file = vec![5, 4, 0, 0];
        file.extend(marshal(&["bob"], "R"));
        assert_eq!(file_principal(&file).as_deref(), Some("bob@R"));
        assert_eq!(file_principal(&[0; 64]), None, "a zeroed file is no cache");
        let mut primary = 1u32.to_be_bytes().to_vec();
        primary.extend(4u32.to_be_bytes());
        primary.extend(b"1000");
        assert_eq!(decode_primary(&primary).as_deref(), Some("1000"));
    }

    #[test]
    fn collection_changes_become_cache_events() {
        let state = |p: &str, f| CacheState {
            principal: p.into(),
            fingerprint: f,
        };
        let a = Collection {
            primary: Some("c1".into()),
            caches: BTreeMap::from([("c1".into(), state("alice@R", 1))]),
        };
        assert_eq!(
            Collection::default()
                .diff(&a)
                .iter()
                .map(|c| c.subtype)
                .collect::<Vec<_>>(),
            vec![krb5::CREATED],
            "a first kinit makes a cache, and no primary switch"
        );
        let renewed = Collection {
            caches: BTreeMap::from([("c1".into(), state("alice@R", 2))]),
            ..a.clone()
        };
        assert_eq!(a.diff(&renewed)[0].subtype, krb5::CHANGED);
        let second = Collection {
            primary: Some("c2".into()),
            caches: BTreeMap::from([
                ("c1".into(), state("alice@R", 1)),
                ("c2".into(), state("bob@R", 5)),
            ]),
        };
        let changes = a.diff(&second);
        assert_eq!(
            changes
                .iter()
                .map(|c| (c.subtype, c.cache.as_str(), c.principal.as_str()))
                .collect::<Vec<_>>(),
            vec![
                (krb5::CREATED, "c2", "bob@R"),
                (krb5::PRIMARY, "c2", "bob@R")
            ]
        );
        assert_eq!(
            second
                .diff(&Collection::default())
                .iter()
                .map(|c| c.subtype)
                .collect::<Vec<_>>(),
            vec![krb5::DESTROYED, krb5::DESTROYED]
        );
    }
}
