//! Guests by source: the connections a server may evict, and which one goes first. The
//! victim is the oldest guest *of the source with the most guests*, so one host flooding a
//! node or a log server with connections evicts its own, never a root's or a node's
//! connecting from elsewhere. Pure bookkeeping, with no lock and no clock: the servers' gates
//! (`node/src/server/gate.rs`, `logserver/src/gate.rs`) hold it under their own lock.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};

/// The address guests are counted by: an IPv4 address, or an IPv6 address's /64 (a single
/// host usually holds a whole /64, and counting its addresses one by one would let it pass
/// for millions of hosts).
pub fn source_of(ip: IpAddr) -> IpAddr {
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
pub struct Guests<T> {
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
    pub fn insert(&mut self, id: u64, peer: IpAddr, value: T) {
        self.remove(id);
        let source = source_of(peer);
        let stamp = self.next;
        self.next += 1;
        self.of.insert(id, (source, stamp, value));
        self.by_source.entry(source).or_default().insert(stamp, id);
    }

    /// Removes guest `id`; its value, if it was a guest.
    pub fn remove(&mut self, id: u64) -> Option<T> {
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
    pub fn len(&self) -> usize {
        self.of.len()
    }

    /// No guests.
    pub fn is_empty(&self) -> bool {
        self.of.is_empty()
    }

    /// The guest to evict: the oldest of the source with the most guests; between sources
    /// with as many, the one whose oldest guest is the oldest.
    pub fn victim(&self) -> Option<u64> {
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
    pub fn pop_victim(&mut self) -> Option<(u64, T)> {
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
