//! Guests: connections that may not hold a slot for long. Without a token, every connection
//! that has not claimed the node; with one, every connection that has not authenticated.
//! Past a cap the oldest guest is evicted, so strangers holding connections open can never
//! lock a root out: a new connection always gets in, and it stops being a guest as soon as
//! it proves itself (or claims the node).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

/// The guests of a node, oldest first.
pub(super) struct Gate {
    cap: usize,
    guests: Mutex<VecDeque<(u64, CancellationToken)>>,
}

impl Gate {
    /// A gate keeping at most `cap` guests (at least one).
    pub(super) fn new(cap: usize) -> Self {
        Gate {
            cap: cap.max(1),
            guests: Mutex::new(VecDeque::new()),
        }
    }

    /// Admits connection `id` as a guest, ended through `kick`; evicts (cancels) the oldest
    /// guests past the cap and returns how many.
    pub(super) fn enter(&self, id: u64, kick: &CancellationToken) -> usize {
        let mut guests = self.guests.lock().unwrap_or_else(|e| e.into_inner());
        guests.push_back((id, kick.clone()));
        let mut evicted = 0;
        while guests.len() > self.cap {
            if let Some((_, oldest)) = guests.pop_front() {
                oldest.cancel();
                evicted += 1;
            }
        }
        evicted
    }

    /// Connection `id` is a guest no more (it proved itself, claimed the node, or ended).
    pub(super) fn leave(&self, id: u64) {
        let mut guests = self.guests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = guests.iter().position(|(g, _)| *g == id) {
            guests.remove(at);
        }
    }

    /// Guests now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.guests.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_the_oldest_guest_is_evicted_and_members_are_never() {
        let gate = Gate::new(2);
        let kicks: Vec<CancellationToken> = (0..4).map(|_| CancellationToken::new()).collect();
        assert_eq!(gate.enter(1, &kicks[0]), 0);
        assert_eq!(gate.enter(2, &kicks[1]), 0);
        gate.leave(2); // proved itself: a member now
        assert_eq!(gate.enter(3, &kicks[2]), 0);
        assert_eq!(gate.enter(4, &kicks[3]), 1);
        assert!(kicks[0].is_cancelled(), "the oldest guest goes");
        assert!(!kicks[1].is_cancelled(), "a member is never evicted");
        assert!(!kicks[2].is_cancelled() && !kicks[3].is_cancelled());
        assert_eq!(gate.len(), 2);
        gate.leave(3);
        gate.leave(4);
        gate.leave(4);
        assert_eq!(gate.len(), 0);
    }
}
