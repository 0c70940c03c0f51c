//! Guests: connections that may not hold a slot for long. Without a token, every connection
//! that has not claimed the node; with one, every connection that has not proved it holds the
//! token (its first message opened with the connection's keys: a replayed handshake message
//! proves nothing). Past a cap a guest is evicted, so strangers holding connections open can
//! never lock a root out: a new connection always gets in, and it stops being a guest as soon
//! as it proves itself (or claims the node).
//!
//! The victim is the oldest guest *of the source with the most guests* (`protocol::guests`):
//! a host flooding the node with connections evicts its own, never a root connecting from
//! another address whose handshake is still in flight on a slow link.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::guests::Guests;
use tokio_util::sync::CancellationToken;

/// The guests of a node.
pub(super) struct Gate {
    cap: usize,
    guests: Mutex<Guests<CancellationToken>>,
    /// Guests evicted since the node started.
    evicted: AtomicU64,
}

impl Gate {
    /// A gate keeping at most `cap` guests (at least one).
    pub(super) fn new(cap: usize) -> Self {
        Gate {
            cap: cap.max(1),
            guests: Mutex::new(Guests::default()),
            evicted: AtomicU64::new(0),
        }
    }

    /// Admits connection `id` from `peer` as a guest, ended through `kick`; past the cap
    /// evicts (cancels) guests, each the oldest of the source with the most, and returns how
    /// many.
    pub(super) fn enter(&self, id: u64, peer: IpAddr, kick: &CancellationToken) -> usize {
        let mut guests = self.guests.lock().unwrap_or_else(|e| e.into_inner());
        guests.insert(id, peer, kick.clone());
        let mut evicted = 0;
        while guests.len() > self.cap {
            let Some((_, victim)) = guests.pop_victim() else {
                break;
            };
            victim.cancel();
            evicted += 1;
        }
        self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }

    /// Guests evicted since the node started.
    pub(super) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Connection `id` is a guest no more (it proved itself, claimed the node, or ended).
    pub(super) fn leave(&self, id: u64) {
        let mut guests = self.guests.lock().unwrap_or_else(|e| e.into_inner());
        guests.remove(id);
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

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP address")
    }

    #[test]
    fn past_the_cap_the_oldest_guest_is_evicted_and_members_are_never() {
        let gate = Gate::new(2);
        let kicks: Vec<CancellationToken> = (0..4).map(|_| CancellationToken::new()).collect();
        let peer = ip("127.0.0.1");
        assert_eq!(gate.enter(1, peer, &kicks[0]), 0);
        assert_eq!(gate.enter(2, peer, &kicks[1]), 0);
        gate.leave(2); // proved itself: a member now
        assert_eq!(gate.enter(3, peer, &kicks[2]), 0);
        assert_eq!(gate.enter(4, peer, &kicks[3]), 1);
        assert!(kicks[0].is_cancelled(), "the oldest guest goes");
        assert!(!kicks[1].is_cancelled(), "a member is never evicted");
        assert!(!kicks[2].is_cancelled() && !kicks[3].is_cancelled());
        assert_eq!(gate.len(), 2);
        gate.leave(3);
        gate.leave(4);
        gate.leave(4);
        assert_eq!(gate.len(), 0);
    }

    #[test]
    fn a_flooding_source_evicts_its_own_guests_never_an_older_one_from_elsewhere() {
        let gate = Gate::new(4);
        let root = CancellationToken::new();
        // The root's handshake is in flight: the oldest guest of all.
        assert_eq!(gate.enter(1, ip("10.0.0.1"), &root), 0);
        let flood: Vec<CancellationToken> = (0..100).map(|_| CancellationToken::new()).collect();
        for (i, kick) in flood.iter().enumerate() {
            gate.enter(100 + i as u64, ip("10.0.0.9"), kick);
        }
        assert!(!root.is_cancelled(), "the root survives the flood");
        assert_eq!(gate.len(), 4);
        // The flood lost its oldest, kept its newest three.
        assert!(flood[..97].iter().all(CancellationToken::is_cancelled));
        assert!(flood[97..].iter().all(|k| !k.is_cancelled()));
    }
}
