//! [`ByteGate`]: a bound in bytes on what one thread hands another, for `pcluster run`'s
//! reader (batches read ahead of the root) and its output writer (outputs not yet written).
//! A [`Held`] guard travels with what was handed over and gives its bytes back when dropped;
//! closing the gate (when the taking side ends, [`CloseOnDrop`]) frees a waiting giver.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Bytes handed over and not yet done with.
#[derive(Debug)]
pub struct ByteGate {
    state: Mutex<State>,
    freed: Condvar,
    limit: u64,
}

#[derive(Debug, Default)]
struct State {
    held: u64,
    closed: bool,
}

impl ByteGate {
    pub fn new(limit: u64) -> Arc<ByteGate> {
        Arc::new(ByteGate {
            state: Mutex::default(),
            freed: Condvar::new(),
            limit,
        })
    }

    /// Waits while the limit is reached, then counts `bytes` (so the last piece let in may
    /// pass the limit: a batch of 1 MiB and one item still has a second behind it, and one
    /// past the whole limit goes alone); `None` once the taking side is gone
    /// ([`ByteGate::close`]).
    pub fn acquire(self: &Arc<Self>, bytes: u64) -> Option<Held> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if s.closed {
                return None;
            }
            if s.held < self.limit {
                s.held += bytes;
                return Some(Held {
                    bytes,
                    gate: self.clone(),
                });
            }
            s = self.freed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn release(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.held = s.held.saturating_sub(bytes);
        drop(s);
        self.freed.notify_all();
    }

    /// Wakes a waiting giver for good: nothing more is taken.
    pub fn close(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.freed.notify_all();
    }
}

/// Bytes handed over, counted until this is dropped.
#[derive(Debug)]
pub struct Held {
    bytes: u64,
    gate: Arc<ByteGate>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gate.release(self.bytes);
    }
}

/// Closes the gate when the taking side ends, whichever way it ends (a panic included), so a
/// giver waiting for room stops instead of waiting forever.
pub struct CloseOnDrop(pub Arc<ByteGate>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_giver_waits_past_the_limit_until_something_is_taken() {
        let gate = ByteGate::new(100);
        let a = gate.acquire(60).unwrap();
        let b = gate.acquire(40).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let c = gate.acquire(10);
                tx.send(c.is_some()).unwrap();
                c
            })
        };
        // Full: the third piece waits (a generous wait that must end empty).
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(a);
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(true));
        drop(waiter.join().unwrap());
        drop(b);
        // A piece past the whole limit passes alone.
        let big = gate.acquire(1_000).unwrap();
        drop(big);
        assert_eq!(gate.state.lock().unwrap().held, 0);
    }

    #[test]
    fn closing_wakes_a_waiting_giver() {
        let gate = ByteGate::new(10);
        let held = gate.acquire(10).unwrap();
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.acquire(5).is_none())
        };
        drop(CloseOnDrop(gate.clone()));
        assert!(waiter.join().unwrap(), "a closed gate gives no room");
        drop(held);
    }
}
