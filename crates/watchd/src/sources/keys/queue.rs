//! Key notifications from the kernel's watch queue, on kernels that have one
//! (`CONFIG_WATCH_QUEUE` and `CONFIG_KEY_NOTIFICATIONS`): what tells the poller
//! ([`super::poller`]) when to walk, instead of the poll interval. [`QueueWatches`] is the
//! poller's side: which keys of which roots are watched, and which roots a note names.
//!
//! A [`KeyQueue`] owns a notification pipe (`pipe2(O_NOTIFICATION_PIPE)`), sized and
//! filtered to key notes. [`KeyQueue::watch`] asks the kernel (`KEYCTL_WATCH_KEY`) to post
//! every change of a key or keyring into it; the kernel does so synchronously, inside the
//! system call that made the change. The read end is non-blocking and is what a poll loop
//! waits on ([`AsFd`]); [`KeyQueue::drain`] reads everything queued and turns it into
//! [`QueueRecord`]s. The write end is only kept open: the kernel writes, we never do, and a
//! pipe without writers would read as end-of-file.
//!
//! Each note starts with `struct watch_notification` (include/uapi/linux/watch_queue.h):
//! a 32-bit word holding `type:24` and `subtype:8`, then `info`, whose low 7 bits
//! (`WATCH_INFO_LENGTH`) give the note's length in bytes. A key note
//! (`struct key_notification`) adds the serial of the watched key and `aux`, the key that
//! was linked or unlinked. A read returns whole notes only, as many as fit; [`parse`] walks
//! them by their length and never past the bytes read.
//!
//! What the queue cannot say: which key changed *inside* a watched keyring other than by
//! link and unlink (each key needs its own watch), and anything about keys the daemon may
//! not View (`KEYCTL_WATCH_KEY` needs View, like `describe`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use watchd_proto::key;

use super::tree::{Condition, RootId, Tree};
use crate::sys::{self, KeySerial};

/// The watch id our watches carry in each note (`WATCH_INFO_ID`); one queue, one id.
const WATCH_ID: u8 = 1;
/// `sizeof(struct watch_notification)`: the smallest note.
const HEADER_LEN: usize = 8;
/// `sizeof(struct key_notification)`.
const KEY_NOTE_LEN: usize = 16;
/// `sizeof(struct watch_notification_removal)`: a removal note carrying the key's serial.
const REMOVAL_NOTE_LEN: usize = 16;
/// One read: far more than one note (at most 127 bytes), so a read never fails with ENOBUFS.
const READ_SIZE: usize = 4096;

/// One note from the queue, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRecord {
    /// Something happened to the watched key or keyring `serial`. `subtype` is the kernel's
    /// `NOTIFY_KEY_*` number, the same as [`watchd_proto::key`]'s constants
    /// (INSTANTIATED 0 … SETATTR 7); `aux` is the key linked into or unlinked from the
    /// keyring for LINKED and UNLINKED, and `None` for every other subtype.
    Key {
        serial: KeySerial,
        subtype: u8,
        aux: Option<KeySerial>,
    },
    /// A watch ended (`WATCH_META_REMOVAL_NOTIFICATION`): the watched key was destroyed
    /// (garbage-collected after it was invalidated, revoked, expired or unlinked
    /// everywhere), or it was unwatched. `serial` is the key's, when the kernel gave it.
    Removed { serial: Option<KeySerial> },
    /// Notes were lost (`WATCH_META_LOSS_NOTIFICATION`: the queue was full), or bytes
    /// could not be parsed: whatever the queue said since the last drain is incomplete,
    /// so the watched trees must be read again.
    Loss,
}

/// A notification pipe receiving key notifications; see the module's documentation.
#[derive(Debug)]
pub struct KeyQueue {
    read: File,
    write: OwnedFd,
    buf: Box<[u8]>,
}

impl KeyQueue {
    /// Opens a notification pipe with room for `notes` notes (clamped to 1 ..= 512; the
    /// kernel rounds up to whole pages of 32) and a filter that lets only key notes
    /// through (removal and loss notes always come). Fails with ENOPKG where the kernel has
    /// no watch queues.
    pub fn open(notes: u32) -> io::Result<KeyQueue> {
        let (read, write) = sys::pipe2_notification(libc::O_NONBLOCK)?;
        sys::ioctl_watch_queue_set_size(read.as_fd(), notes.clamp(1, sys::WATCH_QUEUE_MAX_NOTES))?;
        let keys = sys::watch_notification_type_filter {
            r#type: sys::WATCH_TYPE_KEY_NOTIFY,
            subtype_filter: [u32::MAX, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        sys::ioctl_watch_queue_set_filter(
            read.as_fd(),
            &sys::watch_notification_filter::new([keys]),
        )?;
        Ok(KeyQueue {
            read: File::from(read),
            write,
            buf: vec![0; READ_SIZE].into_boxed_slice(),
        })
    }

    /// Starts watching `key` (a key or keyring, or a special id such as
    /// `KEY_SPEC_SESSION_KEYRING`): from now on each change of it is queued. Needs View
    /// permission on it; watching the same key twice fails with EBUSY.
    pub fn watch(&self, key: KeySerial) -> io::Result<()> {
        sys::keyctl_watch_key(key, self.write.as_fd(), Some(WATCH_ID))
    }

    /// Stops watching `key`; the kernel queues a [`QueueRecord::Removed`] for it. Fails with
    /// EBADSLT when it was not watched (or is already destroyed).
    pub fn unwatch(&self, key: KeySerial) -> io::Result<()> {
        sys::keyctl_watch_key(key, self.write.as_fd(), None)
    }

    /// Reads every note queued now and appends what they say to `out`, in order. Returns
    /// when the pipe is empty; never blocks.
    pub fn drain(&mut self, out: &mut Vec<QueueRecord>) -> io::Result<()> {
        loop {
            match self.read.read(&mut self.buf) {
                // No writer left: cannot happen while we hold the write end.
                Ok(0) => return Ok(()),
                Ok(n) => parse(&self.buf[..n], out),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsFd for KeyQueue {
    /// The read end, readable (POLLIN) while notes are queued.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

/// Splits `struct watch_notification`'s first word into `type:24` and `subtype:8`, as the
/// C compiler lays out those bit-fields.
fn type_and_subtype(word: u32) -> (u32, u8) {
    if cfg!(target_endian = "little") {
        (word & 0x00ff_ffff, (word >> 24) as u8)
    } else {
        (word >> 8, word as u8)
    }
}

fn u32_at(note: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(note[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses the notes in `bytes` (what one read returned) into `out`. A note is as long as
/// its header says; a length shorter than the header or longer than what is left stops the
/// walk with a [`QueueRecord::Loss`] (nothing after it can be trusted), as does a key note
/// too short to name its key. Notes of other types and meta notes of other subtypes are
/// skipped.
pub fn parse(mut bytes: &[u8], out: &mut Vec<QueueRecord>) {
    while !bytes.is_empty() {
        if bytes.len() < HEADER_LEN {
            out.push(QueueRecord::Loss);
            return;
        }
        let len = (u32_at(bytes, 4) & sys::WATCH_INFO_LENGTH) as usize;
        if len < HEADER_LEN || len > bytes.len() {
            out.push(QueueRecord::Loss);
            return;
        }
        let (note, rest) = bytes.split_at(len);
        bytes = rest;
        let (note_type, subtype) = type_and_subtype(u32_at(note, 0));
        match note_type {
            sys::WATCH_TYPE_KEY_NOTIFY if len < KEY_NOTE_LEN => out.push(QueueRecord::Loss),
            sys::WATCH_TYPE_KEY_NOTIFY => {
                let serial = KeySerial(u32_at(note, 8) as i32);
                let aux = matches!(subtype, key::LINKED | key::UNLINKED)
                    .then(|| KeySerial(u32_at(note, 12) as i32));
                out.push(QueueRecord::Key {
                    serial,
                    subtype,
                    aux,
                });
            }
            sys::WATCH_TYPE_META => match subtype {
                sys::WATCH_META_LOSS_NOTIFICATION => out.push(QueueRecord::Loss),
                sys::WATCH_META_REMOVAL_NOTIFICATION => {
                    // The removal note's id is a u64; for keys it is the key's serial.
                    let serial = (len >= REMOVAL_NOTE_LEN).then(|| {
                        let id = u64::from_ne_bytes(note[8..16].try_into().expect("8 bytes"));
                        KeySerial(id as i32)
                    });
                    out.push(QueueRecord::Removed { serial });
                }
                _ => {}
            },
            _ => {}
        }
    }
}

/// Notes the watch queue holds before the kernel drops some (and says so): its maximum.
const QUEUE_NOTES: u32 = sys::WATCH_QUEUE_MAX_NOTES;

/// The kernel caps the key watches of a user (all of root's, here) at the open-file limit of
/// the task adding one, and the usual soft limit (1024) is a few hundred watched trees: take
/// the hard limit, as a daemon may. Beyond it, roots are polled.
fn allow_key_watches() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, "cannot raise the open-file limit; fewer keys can be watched");
    }
}

/// The poller's watch queue: the queue, and the roots each key is watched in it for.
pub(super) struct QueueWatches {
    queue: KeyQueue,
    /// The roots each key is watched in the queue for.
    owners: HashMap<KeySerial, HashSet<RootId>>,
}

impl AsFd for QueueWatches {
    /// The queue's read end, for the poller's poll set.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.queue.as_fd()
    }
}

/// What the notes read at once ask of the poller.
pub(super) struct Notes {
    /// The roots to walk again; `None`: every root (notes were lost).
    pub(super) dirty: Option<HashSet<RootId>>,
    /// What the kernel said, (key, subtype), for the walks to publish what they cannot see.
    pub(super) said: Vec<(KeySerial, u8)>,
}

impl QueueWatches {
    /// The kernel's watch queue, where the kernel has one (`None` elsewhere, or when it
    /// cannot be opened: keys are then polled).
    pub(super) fn open() -> Option<QueueWatches> {
        match KeyQueue::open(QUEUE_NOTES) {
            Ok(queue) => {
                allow_key_watches();
                Some(QueueWatches {
                    queue,
                    owners: HashMap::new(),
                })
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOPKG) => None,
            Err(e) => {
                tracing::warn!(error = %e, "the kernel has watch queues but one cannot be opened; polling keys instead");
                None
            }
        }
    }

    /// Reads what the queue has; `None` when it names no key.
    pub(super) fn read_notes(&mut self) -> Option<Notes> {
        let mut notes = Vec::new();
        if let Err(e) = self.queue.drain(&mut notes) {
            tracing::warn!(error = %e, "cannot read the key watch queue; walking every root");
            notes.push(QueueRecord::Loss);
        }
        let mut changed = HashSet::new();
        let mut said = Vec::new();
        let mut everything = false;
        for note in &notes {
            match note {
                QueueRecord::Key {
                    serial, subtype, ..
                } => {
                    changed.insert(*serial);
                    said.push((*serial, *subtype));
                }
                QueueRecord::Removed {
                    serial: Some(serial),
                } => {
                    changed.insert(*serial);
                }
                QueueRecord::Removed { serial: None } | QueueRecord::Loss => everything = true,
            }
        }
        if changed.is_empty() && !everything {
            return None;
        }
        let dirty = (!everything).then(|| {
            changed
                .iter()
                .filter_map(|serial| self.owners.get(serial))
                .flatten()
                .copied()
                .collect()
        });
        Some(Notes { dirty, said })
    }

    /// Has the watch queue report on the live keys of `tree` for a root (`queued` is what it
    /// reports on already), and no longer on keys that left it. True when the tree may have
    /// changed unseen: a key was newly watched, or vanished before it could be. `polled` is
    /// set while a key is refused for lack of room (a user's watches are capped at its
    /// open-file limit): the root is then polled.
    pub(super) fn watch_tree(
        &mut self,
        id: RootId,
        queued: &mut HashSet<KeySerial>,
        polled: &mut bool,
        tree: &Tree,
    ) -> bool {
        let QueueWatches {
            queue,
            owners: queue_owners,
        } = self;
        let mut unseen = false;
        let mut refused = false;
        // Revoked or expired keys are not watched anew: their records went out already, and the
        // kernel refuses them.
        let new: Vec<KeySerial> = tree
            .nodes
            .iter()
            .filter(|(s, n)| n.condition == Condition::Live && !queued.contains(s))
            .map(|(s, _)| *s)
            .collect();
        for serial in new {
            let owners = queue_owners.entry(serial).or_default();
            if owners.is_empty() {
                match queue.watch(serial) {
                    Ok(()) => unseen = true,
                    // A watch whose unwatch failed earlier is still there.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                    Err(e) => {
                        queue_owners.remove(&serial);
                        if e.raw_os_error() == Some(libc::EAGAIN) {
                            if !*polled && !refused {
                                tracing::warn!(root = id.0, key = %serial, "the kernel has no room for more key watches; polling this root");
                            }
                            refused = true;
                        } else {
                            // Revoked, invalidated or gone since the walk.
                            unseen = true;
                        }
                        continue;
                    }
                }
            }
            owners.insert(id);
            queued.insert(serial);
        }
        *polled = refused;
        let left: Vec<KeySerial> = queued
            .iter()
            .filter(|s| !tree.nodes.contains_key(s))
            .copied()
            .collect();
        for serial in left {
            let owners = queue_owners.get_mut(&serial).expect("owned when queued");
            if owners.len() > 1 {
                owners.remove(&id);
                queued.remove(&serial);
                continue;
            }
            match queue.unwatch(serial) {
                // EBADSLT: not watched (any more); ENOKEY, EKEYREVOKED, EKEYEXPIRED: the key is
                // dead and its watch goes with it.
                Err(e)
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::EBADSLT | libc::ENOKEY | libc::EKEYREVOKED | libc::EKEYEXPIRED)
                    ) =>
                {
                    // Kept and retried at the next pass (EACCES: the viewer may not view it now;
                    // its notes keep walking this root meanwhile).
                }
                _ => {
                    queue_owners.remove(&serial);
                    queued.remove(&serial);
                }
            }
        }
        unseen
    }

    /// Forgets a dropped root's kernel watches that could not be removed: they end when their
    /// keys are destroyed, and their notes name no root until then.
    pub(super) fn forget(&mut self, id: RootId, queued: &mut HashSet<KeySerial>) {
        for serial in queued.drain() {
            if let Some(owners) = self.owners.get_mut(&serial) {
                owners.remove(&id);
                if owners.is_empty() {
                    self.owners.remove(&serial);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(note_type: u32, subtype: u8, len: usize) -> Vec<u8> {
        let word = if cfg!(target_endian = "little") {
            note_type | u32::from(subtype) << 24
        } else {
            note_type << 8 | u32::from(subtype)
        };
        // A watch id in the info word too, as the kernel writes it: must not disturb the
        // length.
        let info = len as u32 | u32::from(WATCH_ID) << 8;
        let mut note = word.to_ne_bytes().to_vec();
        note.extend(info.to_ne_bytes());
        note
    }

    fn key_note(subtype: u8, serial: i32, aux: u32) -> Vec<u8> {
        let mut note = header(sys::WATCH_TYPE_KEY_NOTIFY, subtype, KEY_NOTE_LEN);
        note.extend(serial.to_ne_bytes());
        note.extend(aux.to_ne_bytes());
        note
    }

    fn parsed(bytes: &[u8]) -> Vec<QueueRecord> {
        let mut out = Vec::new();
        parse(bytes, &mut out);
        out
    }

    fn key(serial: i32, subtype: u8, aux: Option<i32>) -> QueueRecord {
        QueueRecord::Key {
            serial: KeySerial(serial),
            subtype,
            aux: aux.map(KeySerial),
        }
    }

    #[test]
    fn key_notes_in_one_read() {
        let mut bytes = key_note(key::LINKED, 100, 200);
        bytes.extend(key_note(key::UPDATED, 200, 0xdead));
        bytes.extend(key_note(key::UNLINKED, 100, 200));
        bytes.extend(key_note(key::INSTANTIATED, 300, (-126i32) as u32));
        assert_eq!(
            parsed(&bytes),
            [
                key(100, key::LINKED, Some(200)),
                key(200, key::UPDATED, None),
                key(100, key::UNLINKED, Some(200)),
                key(300, key::INSTANTIATED, None),
            ]
        );
    }

    #[test]
    fn every_subtype_keeps_its_number_and_aux_only_for_links() {
        for subtype in 0..=key::SETATTR {
            let aux = matches!(subtype, key::LINKED | key::UNLINKED).then_some(7);
            assert_eq!(
                parsed(&key_note(subtype, 5, 7)),
                [key(5, subtype, aux)],
                "{subtype}"
            );
        }
    }

    #[test]
    fn meta_notes() {
        let mut bytes = header(sys::WATCH_TYPE_META, sys::WATCH_META_LOSS_NOTIFICATION, 8);
        let mut removal = header(
            sys::WATCH_TYPE_META,
            sys::WATCH_META_REMOVAL_NOTIFICATION,
            16,
        );
        removal.extend(42u64.to_ne_bytes());
        bytes.extend(removal);
        bytes.extend(header(
            sys::WATCH_TYPE_META,
            sys::WATCH_META_REMOVAL_NOTIFICATION,
            8,
        ));
        assert_eq!(
            parsed(&bytes),
            [
                QueueRecord::Loss,
                QueueRecord::Removed {
                    serial: Some(KeySerial(42))
                },
                QueueRecord::Removed { serial: None },
            ]
        );
    }

    #[test]
    fn unknown_types_and_meta_subtypes_are_skipped_by_their_length() {
        let mut bytes = header(7, 3, 24);
        bytes.extend([0xff; 16]);
        bytes.extend(header(sys::WATCH_TYPE_META, 9, 12));
        bytes.extend([0xff; 4]);
        bytes.extend(key_note(key::REVOKED, 9, 0));
        assert_eq!(parsed(&bytes), [key(9, key::REVOKED, None)]);
    }

    #[test]
    fn a_longer_key_note_is_read_by_its_length() {
        let mut bytes = header(sys::WATCH_TYPE_KEY_NOTIFY, key::LINKED, 24);
        bytes.extend(1i32.to_ne_bytes());
        bytes.extend(2u32.to_ne_bytes());
        bytes.extend([0xff; 8]);
        bytes.extend(key_note(key::CLEARED, 1, 0));
        assert_eq!(
            parsed(&bytes),
            [key(1, key::LINKED, Some(2)), key(1, key::CLEARED, None)]
        );
    }

    #[test]
    fn length_zero_stops_with_loss() {
        let mut bytes = key_note(key::UPDATED, 1, 0);
        bytes.extend(header(sys::WATCH_TYPE_KEY_NOTIFY, key::UPDATED, 0));
        bytes.extend(key_note(key::UPDATED, 2, 0));
        assert_eq!(
            parsed(&bytes),
            [key(1, key::UPDATED, None), QueueRecord::Loss]
        );
    }

    #[test]
    fn length_below_the_header_stops_with_loss() {
        let bytes = header(sys::WATCH_TYPE_META, sys::WATCH_META_LOSS_NOTIFICATION, 4);
        assert_eq!(parsed(&bytes), [QueueRecord::Loss]);
    }

    #[test]
    fn a_note_longer_than_the_read_is_not_trusted() {
        let mut bytes = key_note(key::UPDATED, 1, 0);
        let mut long = header(sys::WATCH_TYPE_KEY_NOTIFY, key::UPDATED, 100);
        long.extend([0; 8]);
        bytes.extend(long);
        assert_eq!(
            parsed(&bytes),
            [key(1, key::UPDATED, None), QueueRecord::Loss]
        );
    }

    #[test]
    fn truncated_header_and_truncated_note() {
        let note = key_note(key::UPDATED, 1, 0);
        for cut in 1..note.len() {
            assert_eq!(parsed(&note[..cut]), [QueueRecord::Loss], "cut at {cut}");
        }
        assert_eq!(parsed(&[]), []);
    }

    #[test]
    fn a_key_note_too_short_for_its_key_is_loss() {
        let mut bytes = header(sys::WATCH_TYPE_KEY_NOTIFY, key::UPDATED, 12);
        bytes.extend(5i32.to_ne_bytes());
        bytes.extend(key_note(key::UPDATED, 6, 0));
        assert_eq!(
            parsed(&bytes),
            [QueueRecord::Loss, key(6, key::UPDATED, None)]
        );
    }

    #[test]
    fn open_fails_with_enopkg_or_works() {
        // Kernels without CONFIG_WATCH_QUEUE (the project's machines) refuse the pipe.
        match KeyQueue::open(16) {
            Ok(mut queue) => {
                let mut out = Vec::new();
                queue.drain(&mut out).unwrap();
                assert_eq!(out, []);
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOPKG), "{e}"),
        }
    }
}
