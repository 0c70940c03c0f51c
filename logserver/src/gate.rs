//! Guests: connections that may not hold a slot for long. With a token, every connection that
//! has not proved it holds it, which takes a first record that opens with the connection's
//! keys (the handshake alone proves nothing: a replayed first message completes it); without
//! one, every connection that has not sent a line yet. A connection silent for a while (the
//! server's `guest_idle`) becomes a guest again.
//!
//! The server holds at most `max_connections`; a full server evicts a guest for a newcomer
//! rather than refusing it, and refuses only when every slot holds a member. The victim is
//! the oldest guest *of the source with the most guests* (`protocol::guests`), so one host
//! flooding the server evicts its own connections, not a node's from elsewhere.
//!
//! The same bookkeeping guards a node's guests (`node/src/server/gate.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use protocol::guests::Guests;
use tokio_util::sync::CancellationToken;

/// Whether a connection got a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// It is in, as a guest; `evicted` guests were closed to make room.
    Admitted { evicted: usize },
    /// Every slot holds a member: closed.
    Full,
}

/// The log server's connections: members, and guests that may be evicted.
#[derive(Debug)]
pub(crate) struct Gate {
    cap: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Each member's address (to count it by should it become a guest again) and token.
    members: HashMap<u64, (IpAddr, CancellationToken)>,
    guests: Guests<CancellationToken>,
}

impl State {
    fn len(&self) -> usize {
        self.members.len() + self.guests.len()
    }
}

impl Gate {
    /// A gate holding at most `cap` connections (at least one).
    pub(crate) fn new(cap: usize) -> Self {
        Gate {
            cap: cap.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits connection `id` from `peer` as a guest, ended through `kick`, evicting a guest
    /// when the server is full; refuses it when every slot holds a member.
    pub(crate) fn enter(&self, id: u64, peer: IpAddr, kick: &CancellationToken) -> Admission {
        let mut state = self.lock();
        let mut evicted = 0;
        while state.len() >= self.cap {
            let Some((_, victim)) = state.guests.pop_victim() else {
                return Admission::Full;
            };
            victim.cancel();
            evicted += 1;
        }
        state.guests.insert(id, peer, kick.clone());
        Admission::Admitted { evicted }
    }

    /// Evicts one guest, to free its file descriptor when the process has none left; whether
    /// there was one.
    pub(crate) fn evict_one(&self) -> bool {
        let victim = self.lock().guests.pop_victim();
        victim.map(|(_, kick)| kick.cancel()).is_some()
    }

    /// Guest `id` proved itself (or sent a line): a member, never evicted while it talks.
    /// False when it is no guest (e.g. evicted meanwhile).
    pub(crate) fn promote(&self, id: u64, peer: IpAddr) -> bool {
        let mut state = self.lock();
        match state.guests.remove(id) {
            Some(kick) => {
                state.members.insert(id, (peer, kick));
                true
            }
            None => false,
        }
    }

    /// Member `id` has been silent too long: a guest again, the newest.
    pub(crate) fn demote(&self, id: u64) {
        let mut state = self.lock();
        if let Some((peer, kick)) = state.members.remove(&id) {
            state.guests.insert(id, peer, kick);
        }
    }

    /// Connection `id` has ended.
    pub(crate) fn leave(&self, id: u64) {
        let mut state = self.lock();
        state.members.remove(&id);
        state.guests.remove(id);
    }

    /// Members and guests now.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.members.len(), state.guests.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP address")
    }

    fn kicks(n: usize) -> Vec<CancellationToken> {
        (0..n).map(|_| CancellationToken::new()).collect()
    }

    #[test]
    fn a_full_server_evicts_a_guest_for_a_newcomer_and_refuses_only_when_all_are_members() {
        let gate = Gate::new(2);
        let k = kicks(5);
        let peer = ip("127.0.0.1");
        assert_eq!(
            gate.enter(1, peer, &k[0]),
            Admission::Admitted { evicted: 0 }
        );
        assert_eq!(
            gate.enter(2, peer, &k[1]),
            Admission::Admitted { evicted: 0 }
        );
        assert!(gate.promote(1, peer));
        // Full: the guest goes, the newcomer gets in.
        assert_eq!(
            gate.enter(3, peer, &k[2]),
            Admission::Admitted { evicted: 1 }
        );
        assert!(k[1].is_cancelled() && !k[0].is_cancelled());
        assert!(
            !gate.promote(2, peer),
            "an evicted guest cannot become a member"
        );
        assert!(gate.promote(3, peer));
        assert_eq!(gate.enter(4, peer, &k[3]), Admission::Full);
        assert_eq!(gate.counts(), (2, 0));
        // A silent member is a guest again, and goes for the next newcomer.
        gate.demote(1);
        assert_eq!(gate.counts(), (1, 1));
        assert_eq!(
            gate.enter(5, peer, &k[4]),
            Admission::Admitted { evicted: 1 }
        );
        assert!(k[0].is_cancelled() && !k[2].is_cancelled());
        gate.leave(3);
        gate.leave(5);
        gate.leave(5);
        assert_eq!(gate.counts(), (0, 0));
    }

    #[test]
    fn a_flood_from_one_source_evicts_its_own_guests_first() {
        let gate = Gate::new(8);
        let node = CancellationToken::new();
        assert!(matches!(
            gate.enter(1, ip("127.0.0.2"), &node),
            Admission::Admitted { .. }
        ));
        let flood = kicks(1000);
        for (i, kick) in flood.iter().enumerate() {
            let admitted = gate.enter(10 + i as u64, ip("127.0.0.5"), kick);
            assert!(matches!(admitted, Admission::Admitted { .. }));
        }
        assert!(!node.is_cancelled(), "a guest of another source survives");
        assert_eq!(flood.iter().filter(|k| !k.is_cancelled()).count(), 7);
        assert!(gate.evict_one());
        assert!(
            !node.is_cancelled(),
            "even when evicting for a file descriptor"
        );
        assert_eq!(gate.counts(), (0, 7));
    }
}
