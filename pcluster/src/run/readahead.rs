//! The reader's read-ahead, bounded in bytes: batches read and not yet handed to the root.
//! The channel to the root bounds them in batches, but a batch is up to 1 MiB of
//! items or one item as long as `--max-item` allows, so the bytes need a bound of their own.
//! It is small on purpose: every buffer in flight between the reader, the nodes and the
//! writer is memory the kernel copies into and out of after it has left the cache.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Bytes of read batches not yet handed to the root.
#[derive(Debug)]
pub struct ReadAhead {
    state: Mutex<State>,
    freed: Condvar,
    limit: u64,
}

#[derive(Debug, Default)]
struct State {
    held: u64,
    closed: bool,
}

impl ReadAhead {
    pub fn new(limit: u64) -> Arc<ReadAhead> {
        Arc::new(ReadAhead {
            state: Mutex::default(),
            freed: Condvar::new(),
            limit,
        })
    }

    /// Waits while the limit is reached, then counts `bytes` (so the last batch let in may
    /// pass the limit: a batch of 1 MiB and one item still has a second behind it, and one
    /// past the whole limit goes alone); `None` once the run no longer takes batches
    /// ([`ReadAhead::close`]).
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

    /// Wakes a waiting reader for good: the run takes no more batches.
    pub fn close(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.freed.notify_all();
    }
}

/// A batch's bytes, counted until it is dropped (once its items are handed to the root).
#[derive(Debug)]
pub struct Held {
    bytes: u64,
    gate: Arc<ReadAhead>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gate.release(self.bytes);
    }
}

/// Closes the read-ahead when the run's feeding ends, whichever way it ends, so a reader
/// waiting for room stops instead of waiting forever.
pub struct CloseOnDrop(pub Arc<ReadAhead>);

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
    fn the_reader_waits_past_the_limit_until_a_batch_is_taken() {
        let gate = ReadAhead::new(100);
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
        // Full: the third batch waits (a generous wait that must end empty).
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(a);
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(true));
        drop(waiter.join().unwrap());
        drop(b);
        // A batch past the whole limit passes alone.
        let big = gate.acquire(1_000).unwrap();
        drop(big);
        assert_eq!(gate.state.lock().unwrap().held, 0);
    }

    #[test]
    fn closing_wakes_a_waiting_reader() {
        let gate = ReadAhead::new(10);
        let held = gate.acquire(10).unwrap();
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.acquire(5).is_none())
        };
        drop(CloseOnDrop(gate.clone()));
        assert!(waiter.join().unwrap(), "a closed read-ahead gives no room");
        drop(held);
    }
}
