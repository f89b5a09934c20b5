//! One walk of a followed root's tree with the poller thread's credentials
//! ([`Reader::walk`]), and the guarded reads it makes: a read of a key under construction
//! is cut short by the thread's timer, the key marked [`Condition::Pending`] and tried
//! again later (the module map in [`super`] tells why).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tree::{Condition, Node, Tree};
use super::viewer::{Described, KeyInfo};
use crate::sys::{self, KeySerial};

/// Most keys one tree walk visits: a watch on a huge keyring costs a bounded amount.
pub const MAX_TREE_KEYS: usize = 4096;

/// How long a read of a key under construction may wait for its request-key helper before
/// the thread's timer cuts it short. A read of any other key never sleeps that way, so
/// this bounds a pass's delay per key under construction met, not the pass.
const CUT_AFTER: Duration = Duration::from_millis(20);
/// The longest wait before a key still under construction is tried again.
const RETRY_AT_MOST: Duration = Duration::from_secs(60);

/// A key found under construction, and when to try reading it again (the wait doubles
/// each time it is still not done, from the poll interval to [`RETRY_AT_MOST`]).
struct Pending {
    next_try: Instant,
    wait: Duration,
}

/// What a guarded `KEYCTL_READ` gave.
enum Read {
    /// The payload (or a keyring's list) is `buf[..len]`.
    Done(usize),
    /// Refused or failed, as a read of any key can be.
    Failed,
    /// The key is under construction: not read (this pass), nothing waited for it.
    Pending,
}

/// What the poller thread reads keys with: one buffer, the key for payload digests, and
/// what it knows of keys under construction.
pub(super) struct Reader {
    pub(super) buf: Vec<u8>,
    digests: std::hash::RandomState,
    /// Cuts a wait for a key under construction short ([`Reader::arm`]); `None` where
    /// the timer could not be made (then such a read waits, as it would without one).
    cutter: Option<sys::ThreadTimer>,
    /// Keys whose read was cut short: under construction when last tried.
    pending: HashMap<KeySerial, Pending>,
    /// A pending key was tried again in this pass: no other one is.
    retry_spent: bool,
    /// The first wait before a pending key is tried again: the poll interval.
    first_retry: Duration,
}

impl Reader {
    pub(super) fn new(cutter: Option<sys::ThreadTimer>, first_retry: Duration) -> Reader {
        Reader {
            buf: Vec::with_capacity(4096),
            digests: std::hash::RandomState::new(),
            cutter,
            pending: HashMap::new(),
            retry_spent: false,
            first_retry,
        }
    }

    /// Whether some key was under construction when last read.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Starts a pass that may read keys: from now on, the thread's timer interrupts it
    /// every [`CUT_AFTER`], so a read waiting for a key's construction returns within that
    /// time. Two system calls per pass, none per key.
    pub(super) fn arm(&mut self) {
        self.retry_spent = false;
        if let Some(cutter) = &self.cutter
            && let Err(e) = cutter.set(CUT_AFTER, CUT_AFTER)
        {
            tracing::debug!(error = %e, "cannot arm the key thread's timer");
        }
    }

    /// Ends the pass [`Reader::arm`] started.
    pub(super) fn disarm(&mut self) {
        if let Some(cutter) = &self.cutter {
            let _ = cutter.set(Duration::ZERO, Duration::ZERO);
        }
    }

    /// `KEYCTL_READ` of `serial` into `buf`, unless the key was under construction when
    /// last tried and is not due for a retry (at most one retry per pass). A read the
    /// timer cut short (the kernel turns the interrupted wait into ENOKEY, or EINTR) marks
    /// the key pending; the first time, with a warning.
    fn read(&mut self, serial: KeySerial, uid: u32) -> Read {
        if let Some(pending) = self.pending.get(&serial) {
            if self.retry_spent || Instant::now() < pending.next_try {
                return Read::Pending;
            }
            self.retry_spent = true;
        }
        let before = sys::interrupts();
        match sys::keyctl_read(serial, &mut self.buf) {
            Ok(len) => {
                self.pending.remove(&serial);
                Read::Done(len)
            }
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOKEY | libc::EINTR))
                    && sys::interrupts() != before =>
            {
                self.cut_short(serial, uid);
                Read::Pending
            }
            Err(_) => {
                self.pending.remove(&serial);
                Read::Failed
            }
        }
    }

    fn cut_short(&mut self, serial: KeySerial, uid: u32) {
        let now = Instant::now();
        match self.pending.entry(serial) {
            std::collections::hash_map::Entry::Occupied(entry) => {
                let pending = entry.into_mut();
                pending.wait = (pending.wait * 2).min(RETRY_AT_MOST);
                pending.next_try = now + pending.wait;
                tracing::debug!(key = %serial, uid, retry_in = ?pending.wait, "a key is still under construction");
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                tracing::warn!(key = %serial, uid, cut_after = ?CUT_AFTER, "reading a key under construction was cut short (its request-key helper has not finished); it is tried again later and nothing waits for it meanwhile");
                entry.insert(Pending {
                    next_try: now + self.first_retry,
                    wait: self.first_retry,
                });
            }
        }
    }

    /// Forgets pending keys that no followed tree holds any more.
    pub(super) fn forget_finished<'a>(&mut self, trees: impl Iterator<Item = &'a Tree>) {
        if self.pending.is_empty() {
            return;
        }
        let still: HashSet<KeySerial> = trees
            .flat_map(|tree| tree.nodes.iter())
            .filter(|(_, n)| n.condition == Condition::Pending)
            .map(|(s, _)| *s)
            .collect();
        self.pending.retain(|s, _| still.contains(s));
    }

    /// Walks the tree under `root` with the thread's current credentials: the root, its
    /// members, and for nested walks everything below, breadth first, at most
    /// [`MAX_TREE_KEYS`]. Keys the walk may not view are left out. Fails only when the root
    /// itself cannot be described (and is not merely revoked).
    /// `uid` is the viewer the thread wears, for the log; `kept` the descriptions of keys
    /// whose payloads are kept whole ([`Node::content`]).
    pub(super) fn walk(
        &mut self,
        root: KeySerial,
        nested: bool,
        old: &Tree,
        uid: u32,
        kept: &[&str],
    ) -> io::Result<Tree> {
        let mut tree = Tree {
            nodes: HashMap::with_capacity(old.nodes.len()),
            order: Vec::with_capacity(old.order.len()),
        };
        let mut queue = VecDeque::from([root]);
        while let Some(serial) = queue.pop_front() {
            if tree.nodes.contains_key(&serial) || tree.nodes.len() >= MAX_TREE_KEYS {
                continue;
            }
            let known = || {
                old.node(serial)
                    .map_or_else(|| Arc::new(KeyInfo::unknown(serial)), |n| n.info.clone())
            };
            let (info, condition) = match sys::keyctl_describe(serial, &mut self.buf) {
                Ok(len) => match Described::parse(&self.buf[..len]) {
                    Some(described) => (reuse(old, serial, described), Condition::Live),
                    None => continue,
                },
                Err(e) => match e.raw_os_error() {
                    Some(libc::EKEYREVOKED) => (known(), Condition::Revoked),
                    Some(libc::ENOKEY) | Some(libc::EKEYEXPIRED) if serial != root => {
                        (known(), Condition::Unavailable)
                    }
                    Some(libc::EACCES) if serial != root => continue,
                    _ if serial == root && e.raw_os_error() != Some(libc::EKEYREVOKED) => {
                        return Err(e);
                    }
                    _ => continue,
                },
            };
            let mut node = Node {
                info,
                condition,
                digest: None,
                content: None,
                children: None,
            };
            let expand = serial == root || nested;
            if condition == Condition::Live && expand {
                match self.read(serial, uid) {
                    Read::Failed => {}
                    Read::Pending => node.condition = Condition::Pending,
                    Read::Done(len) if node.info.is_keyring() => {
                        let members: Vec<KeySerial> = self.buf[..len]
                            .chunks_exact(4)
                            .map(|c| KeySerial(i32::from_ne_bytes(c.try_into().expect("4 bytes"))))
                            .collect();
                        if nested {
                            queue.extend(members.iter().copied());
                        }
                        node.children = Some(members);
                    }
                    Read::Done(len) => {
                        let payload = &mut self.buf[..len];
                        node.digest = Some(self.digests.hash_one(&*payload));
                        if kept.contains(&node.info.description.as_str()) {
                            node.content = Some(Arc::from(&*payload));
                        }
                        // Payloads can be secrets (tickets, passwords): none stays in our memory.
                        payload.fill(0);
                    }
                }
            }
            tree.order.push(serial);
            tree.nodes.insert(serial, node);
        }
        Ok(tree)
    }
}

/// The old tree's `Arc` when nothing changed, so unchanged keys cost no allocation.
fn reuse(old: &Tree, serial: KeySerial, described: Described<'_>) -> Arc<KeyInfo> {
    match old.node(serial) {
        Some(n) if Described::of(&n.info) == described => n.info.clone(),
        _ => Arc::new(described.into_info(serial)),
    }
}
