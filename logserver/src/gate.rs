//! Guests: connections that may not hold a slot for long. With a token, every connection that
//! has not proved it holds it, which takes a first record that opens with the connection's
//! keys (the handshake alone proves nothing: a replayed first message completes it); without
//! one, every connection that has not sent a line yet. A connection silent for a while (the
//! server's `guest_idle`) becomes a guest again.
//!
//! The server holds at most `max_connections`; a full server evicts a guest for a newcomer
//! rather than refusing it, and refuses only when every slot holds a member. The victim is
//! the oldest guest *of the source with the most guests* ([`Guests::victim`]), so one host
//! flooding the server evicts its own connections, not a node's from elsewhere.
//!
//! The same bookkeeping guards a node's guests (`node/src/server/gate.rs`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

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

/// The address guests are counted by: an IPv4 address, or an IPv6 address's /64 (a single
/// host usually holds a whole /64, and counting its addresses one by one would let it pass
/// for millions of hosts).
pub(crate) fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Guests by source, each source's in the order they became guests, each with a `T` (the
/// token that ends it): the bookkeeping behind the gate, with no lock and no clock.
#[derive(Debug)]
pub(crate) struct Guests<T> {
    /// Stamps guests in the order they arrive; never reused.
    next: u64,
    /// Each guest's source, stamp and value.
    of: HashMap<u64, (IpAddr, u64, T)>,
    /// Each source's guests, oldest first: stamp → id. No empty entries.
    by_source: HashMap<IpAddr, BTreeMap<u64, u64>>,
}

impl<T> Default for Guests<T> {
    fn default() -> Self {
        Guests {
            next: 0,
            of: HashMap::new(),
            by_source: HashMap::new(),
        }
    }
}

impl<T> Guests<T> {
    /// Adds guest `id` from `peer` as the newest guest (replacing it if it was one).
    pub(crate) fn insert(&mut self, id: u64, peer: IpAddr, value: T) {
        self.remove(id);
        let source = source_of(peer);
        let stamp = self.next;
        self.next += 1;
        self.of.insert(id, (source, stamp, value));
        self.by_source.entry(source).or_default().insert(stamp, id);
    }

    /// Removes guest `id`; its value, if it was a guest.
    pub(crate) fn remove(&mut self, id: u64) -> Option<T> {
        let (source, stamp, value) = self.of.remove(&id)?;
        if let Some(queue) = self.by_source.get_mut(&source) {
            queue.remove(&stamp);
            if queue.is_empty() {
                self.by_source.remove(&source);
            }
        }
        Some(value)
    }

    /// Guests now.
    pub(crate) fn len(&self) -> usize {
        self.of.len()
    }

    /// The guest to evict: the oldest of the source with the most guests; between sources
    /// with as many, the one whose oldest guest is the oldest.
    pub(crate) fn victim(&self) -> Option<u64> {
        self.by_source
            .values()
            .filter_map(|queue| {
                let (&stamp, &id) = queue.first_key_value()?;
                Some((queue.len(), std::cmp::Reverse(stamp), id))
            })
            .max()
            .map(|(_, _, id)| id)
    }

    /// Removes the [`victim`](Self::victim) and returns it with its value.
    pub(crate) fn pop_victim(&mut self) -> Option<(u64, T)> {
        let id = self.victim()?;
        self.remove(id).map(|value| (id, value))
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

    #[test]
    fn the_victim_is_the_oldest_of_the_source_with_most_guests_ties_to_the_oldest() {
        let mut guests = Guests::default();
        assert_eq!(guests.victim(), None);
        guests.insert(1, ip("10.0.0.1"), ());
        guests.insert(2, ip("10.0.0.2"), ());
        // One guest each: the oldest of all.
        assert_eq!(guests.victim(), Some(1));
        guests.insert(3, ip("10.0.0.2"), ());
        guests.insert(4, ip("10.0.0.3"), ());
        // 10.0.0.2 has the most: its oldest, although 1 is older.
        assert_eq!(guests.pop_victim(), Some((2, ())));
        // Now one each again: 1, then 3, then 4.
        assert_eq!(guests.pop_victim(), Some((1, ())));
        assert_eq!(guests.pop_victim(), Some((3, ())));
        assert_eq!(guests.pop_victim(), Some((4, ())));
        assert_eq!(guests.pop_victim(), None);
        assert_eq!(guests.len(), 0);
        assert!(guests.by_source.is_empty(), "no empty sources are kept");
    }

    #[test]
    fn a_guest_entering_again_becomes_the_newest_and_removal_is_idempotent() {
        let mut guests = Guests::default();
        guests.insert(1, ip("10.0.0.1"), 'a');
        guests.insert(2, ip("10.0.0.1"), 'b');
        guests.insert(1, ip("10.0.0.1"), 'c');
        assert_eq!(guests.len(), 2);
        assert_eq!(guests.victim(), Some(2));
        assert_eq!(guests.remove(2), Some('b'));
        assert_eq!(guests.remove(2), None);
        assert_eq!(guests.pop_victim(), Some((1, 'c')));
    }

    #[test]
    fn ipv6_guests_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa::1")),
            source_of(ip("2001:db8:1:2:bbbb::7"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_of(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        let mut guests = Guests::default();
        guests.insert(1, ip("10.0.0.1"), ());
        for id in 2..5 {
            guests.insert(id, format!("2001:db8::{id}").parse().unwrap(), ());
        }
        // Three addresses of one /64 are one source with three guests.
        assert_eq!(guests.victim(), Some(2));
    }
}
