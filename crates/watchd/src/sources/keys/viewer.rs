//! Whose eyes a key watch sees with: a key as `KEYCTL_DESCRIBE` shows it ([`KeyInfo`]),
//! the kernel's View check for a watch's viewer ([`Viewer::may_view`]), what a caller may
//! view when it asks ([`check_viewable`], [`viewer_of`]), and the credentials the poller
//! thread takes to walk a viewer's tree ([`ThreadCreds`]).

use crate::access;
use crate::error::{Error, Result};
use crate::identity::Caller;
use crate::sys::{self, KeySerial};

/// Permission bit View, in each of the four permission bytes.
const KEY_VIEW: u32 = 0x01;
/// Group permissions: all six bits of the group byte.
const KEY_GROUP_ALL: u32 = 0x3f00;

/// One key as `KEYCTL_DESCRIBE` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub serial: KeySerial,
    pub key_type: String,
    pub uid: u32,
    pub gid: u32,
    pub perm: u32,
    pub description: String,
}

impl KeyInfo {
    /// Parses "type;uid;gid;perm;description" (the description may itself contain ';').
    pub fn parse(serial: KeySerial, text: &[u8]) -> Option<KeyInfo> {
        Described::parse(text).map(|d| d.into_info(serial))
    }

    /// What a key that can no longer be described is known by.
    pub(super) fn unknown(serial: KeySerial) -> KeyInfo {
        KeyInfo {
            serial,
            key_type: String::new(),
            uid: u32::MAX,
            gid: u32::MAX,
            perm: 0,
            description: String::new(),
        }
    }

    pub fn is_keyring(&self) -> bool {
        self.key_type == "keyring"
    }
}

/// `KEYCTL_DESCRIBE`'s answer, borrowed from the buffer: comparing it with what is known
/// costs no allocation.
#[derive(PartialEq, Eq)]
pub(super) struct Described<'a> {
    key_type: &'a str,
    uid: u32,
    gid: u32,
    perm: u32,
    description: &'a str,
}

impl<'a> Described<'a> {
    pub(super) fn parse(text: &'a [u8]) -> Option<Described<'a>> {
        let text = std::str::from_utf8(text).ok()?;
        let mut fields = text.splitn(5, ';');
        Some(Described {
            key_type: fields.next()?,
            uid: fields.next()?.parse().ok()?,
            gid: fields.next()?.parse().ok()?,
            perm: u32::from_str_radix(fields.next()?, 16).ok()?,
            description: fields.next()?,
        })
    }

    pub(super) fn of(info: &'a KeyInfo) -> Described<'a> {
        Described {
            key_type: &info.key_type,
            uid: info.uid,
            gid: info.gid,
            perm: info.perm,
            description: &info.description,
        }
    }

    pub(super) fn into_info(self, serial: KeySerial) -> KeyInfo {
        KeyInfo {
            serial,
            key_type: self.key_type.to_owned(),
            uid: self.uid,
            gid: self.gid,
            perm: self.perm,
            description: self.description.to_owned(),
        }
    }
}

/// Whose eyes a watch sees keys with: the kernel's `key_task_permission`, less the
/// possession the daemon cannot know the caller has, which `possessor` stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Viewer {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The watch is on the caller's own keyring (or set by an administrator), whose keys
    /// the caller possesses: possessor permissions count.
    pub possessor: bool,
}

impl Viewer {
    pub fn may_view(&self, key: &KeyInfo) -> bool {
        let perm = key.perm;
        let mut granted = if key.uid == self.uid {
            perm >> 16
        } else if perm & KEY_GROUP_ALL != 0
            && (key.gid == self.gid || self.groups.contains(&key.gid))
        {
            perm >> 8
        } else {
            perm
        };
        if self.possessor {
            granted |= perm >> 24;
        }
        granted & KEY_VIEW != 0
    }
}

/// The credentials the poller thread has taken, to switch only when they change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ThreadCreds {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) groups: Vec<u32>,
}

impl ThreadCreds {
    pub(super) fn root() -> ThreadCreds {
        ThreadCreds {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    pub(super) fn of(viewer: &Viewer) -> ThreadCreds {
        ThreadCreds {
            uid: viewer.uid,
            gid: viewer.gid,
            groups: viewer.groups.clone(),
        }
    }

    /// Switches the calling thread (whose credentials `self` is) to `wanted`.
    pub(super) fn take(&mut self, wanted: &ThreadCreds) {
        if *self == *wanted {
            return;
        }
        // Groups and gid while fsuid is still root's; back to root in the reverse order.
        if wanted.uid != 0 {
            sys::setfsuid(0);
        }
        let mut taken = wanted.clone();
        if sys::setgroups_this_thread(&wanted.groups).is_err() {
            // Fewer rights, never another viewer's: no supplementary groups (recorded as
            // such, so the next switch tries again).
            let _ = sys::setgroups_this_thread(&[]);
            taken.groups.clear();
        }
        sys::setfsgid(wanted.gid);
        sys::setfsuid(wanted.uid);
        *self = taken;
    }
}

/// What the caller may view of key `serial`, asked of the kernel as the caller (its fsuid,
/// fsgid and groups, and none of the daemon's possession).
pub(super) fn check_viewable(caller: &Caller, serial: KeySerial) -> Result<()> {
    let described = access::as_caller(caller, |_| {
        let mut buf = Vec::new();
        sys::keyctl_describe(serial, &mut buf)
    })?;
    described.map(drop).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOKEY) => Error::NotFound(format!("key {serial} does not exist")),
        Some(libc::EACCES) => {
            Error::AccessDenied(format!("uid {} may not view key {serial}", caller.uid))
        }
        Some(libc::EKEYREVOKED) => Error::NotFound(format!("key {serial} has been revoked")),
        _ => Error::Failed(format!("cannot describe key {serial}: {e}")),
    })
}

/// The caller's eyes: its uid, fsgid and groups.
pub fn viewer_of(caller: &Caller, possessor: bool) -> Result<Viewer> {
    let creds = access::CallerProcess::new(caller)?.fs_creds()?;
    Ok(Viewer {
        uid: creds.uid,
        gid: creds.gid,
        groups: creds.groups,
        possessor,
    })
}

/// A key of uid 1000 named `k<serial>`, for the tests of this folder.
#[cfg(test)]
pub(super) fn info(serial: i32, key_type: &str, perm: u32) -> std::sync::Arc<KeyInfo> {
    std::sync::Arc::new(KeyInfo {
        serial: KeySerial(serial),
        key_type: key_type.into(),
        uid: 1000,
        gid: 1000,
        perm,
        description: format!("k{serial}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_text_parses_with_semicolons_in_the_description() {
        let k = KeyInfo::parse(KeySerial(5), b"user;1000;1000;3f010000;a;b").unwrap();
        assert_eq!(
            (k.uid, k.perm, k.description.as_str()),
            (1000, 0x3f01_0000, "a;b")
        );
        assert!(KeyInfo::parse(KeySerial(5), b"user;x;1000;3f010000;a").is_none());
    }

    #[test]
    fn viewers_get_exactly_one_of_user_group_other_plus_possessor() {
        let mut key = (*info(9, "user", 0x3f010000)).clone();
        let owner = Viewer {
            uid: 1000,
            gid: 1000,
            groups: vec![],
            possessor: false,
        };
        let stranger = Viewer {
            uid: 1001,
            gid: 1001,
            groups: vec![],
            possessor: false,
        };
        assert!(owner.may_view(&key));
        assert!(!stranger.may_view(&key));
        key.perm = 0x3f000100;
        let member = Viewer {
            uid: 1001,
            gid: 1001,
            groups: vec![1000],
            possessor: false,
        };
        assert!(
            !owner.may_view(&key),
            "the owner's byte is used, not the group's"
        );
        assert!(member.may_view(&key));
        key.perm = 0x01000000;
        assert!(!owner.may_view(&key));
        assert!(
            Viewer {
                possessor: true,
                ..owner
            }
            .may_view(&key)
        );
    }
}
