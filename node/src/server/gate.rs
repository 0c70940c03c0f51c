//! Guests: connections that may not hold a slot for long. Without a token, every connection
//! that has not claimed the node; with one, every connection that has not proved it holds the
//! token (its first message opened with the connection's keys: a replayed handshake message
//! proves nothing). Past a cap a guest is evicted, so strangers holding connections open can
//! never lock a root out: a new connection always gets in, and it stops being a guest as soon
//! as it proves itself (or claims the node).
//!
//! The victim is the oldest guest *of the source with the most guests* ([`Guests::victim`]):
//! a host flooding the node with connections evicts its own, never a root connecting from
//! another address whose handshake is still in flight on a slow link.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

/// The guests of a node.
pub(super) struct Gate {
    cap: usize,
    guests: Mutex<Guests<CancellationToken>>,
}

impl Gate {
    /// A gate keeping at most `cap` guests (at least one).
    pub(super) fn new(cap: usize) -> Self {
        Gate {
            cap: cap.max(1),
            guests: Mutex::new(Guests::default()),
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
        evicted
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

/// The address guests are counted by: an IPv4 address, or an IPv6 address's /64 (a single
/// host usually holds a whole /64, and counting its addresses one by one would let it pass
/// for millions of hosts).
pub(super) fn source_of(ip: IpAddr) -> IpAddr {
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
pub(super) struct Guests<T> {
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
    pub(super) fn insert(&mut self, id: u64, peer: IpAddr, value: T) {
        self.remove(id);
        let source = source_of(peer);
        let stamp = self.next;
        self.next += 1;
        self.of.insert(id, (source, stamp, value));
        self.by_source.entry(source).or_default().insert(stamp, id);
    }

    /// Removes guest `id`; its value, if it was a guest.
    pub(super) fn remove(&mut self, id: u64) -> Option<T> {
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
    pub(super) fn len(&self) -> usize {
        self.of.len()
    }

    /// The guest to evict: the oldest of the source with the most guests; between sources
    /// with as many, the one whose oldest guest is the oldest.
    pub(super) fn victim(&self) -> Option<u64> {
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
    pub(super) fn pop_victim(&mut self) -> Option<(u64, T)> {
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
