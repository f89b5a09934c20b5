//! Work one uid has in flight (method calls being served, polkit checks awaiting polkitd),
//! counted against a per-uid limit from `[limits]`. Past it the next request is refused at
//! once with `LimitExceeded` rather than queued: a queue one uid can fill would make every
//! other uid wait behind it, and a refusal costs the daemon nothing.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::identity::Uid;

/// One kind of work, counted per uid.
pub struct InFlight {
    /// What is counted, for the refusal ("calls in progress").
    what: &'static str,
    /// The configuration key of the limit, for the refusal.
    key: &'static str,
    counts: Mutex<HashMap<Uid, u32>>,
}

/// One unit of a uid's work: counted until dropped.
#[must_use = "the work is counted only while its slot is held"]
pub struct Slot {
    owner: Arc<InFlight>,
    uid: Uid,
}

impl InFlight {
    pub fn new(what: &'static str, key: &'static str) -> Arc<InFlight> {
        Arc::new(InFlight {
            what,
            key,
            counts: Mutex::default(),
        })
    }

    /// A slot for `uid`, or `LimitExceeded` when it already holds `limit`. The limit is
    /// passed each time so that a reload applies to the next request.
    pub fn enter(self: &Arc<Self>, uid: Uid, limit: u32) -> Result<Slot> {
        let mut counts = self.counts.lock().expect("in-flight counts poisoned");
        let held = counts.entry(uid).or_insert(0);
        if *held >= limit {
            let held = *held;
            drop(counts);
            tracing::info!(uid = %uid, held, limit, key = self.key, "refused: {} at the limit", self.what);
            return Err(Error::LimitExceeded(format!(
                "uid {uid} already has {held} {}, the limit ({}); try again once one is answered",
                self.what, self.key
            )));
        }
        *held += 1;
        Ok(Slot {
            owner: Arc::clone(self),
            uid,
        })
    }

    /// What `uid` holds now.
    pub fn held(&self, uid: Uid) -> u32 {
        let counts = self.counts.lock().expect("in-flight counts poisoned");
        counts.get(&uid).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().expect("in-flight counts poisoned");
        if let Some(held) = counts.get_mut(&self.uid) {
            *held -= 1;
            // No entry stays for a uid with nothing in flight: the map is as large as the
            // number of uids calling now, not of every uid that ever called.
            if *held == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_at_its_limit_is_refused_naming_the_key_and_others_are_not() {
        let calls = InFlight::new("calls in progress", "limits.max_pending_calls_per_uid");
        let held: Vec<Slot> = (0..2).map(|_| calls.enter(Uid(1000), 2).unwrap()).collect();
        let err = calls.enter(Uid(1000), 2).err().expect("refused");
        assert!(
            matches!(&err, Error::LimitExceeded(m) if m == "uid 1000 already has 2 calls in progress, the limit (limits.max_pending_calls_per_uid); try again once one is answered"),
            "{err:?}"
        );
        let other = calls
            .enter(Uid(1001), 2)
            .expect("another uid is not affected");
        drop(held);
        assert_eq!(calls.held(Uid(1000)), 0);
        assert!(
            calls.counts.lock().unwrap().len() == 1,
            "no entry left for 1000"
        );
        drop(
            calls
                .enter(Uid(1000), 2)
                .expect("slots come back when dropped"),
        );
        // A lowered limit (a reload) refuses the next request of a uid already past it.
        let _second = calls.enter(Uid(1001), 2).unwrap();
        assert!(calls.enter(Uid(1001), 1).is_err());
        drop(other);
    }
}
