//! [`ByteGate`]: a bound in bytes on what one side hands another through a queue bounded in
//! items, for every such handoff of the project (a node's outbox, the root's channel from
//! its connections, `pcluster run`'s reader and writer). The giver takes room before
//! handing something over, from a thread ([`ByteGate::acquire`]) or a task
//! ([`ByteGate::acquire_async`]); a [`Held`] guard travels with it and gives the room back
//! when dropped. Room is given while the bytes fit, or to a piece alone when nothing is
//! held, so one piece past the whole bound still passes. Closing the gate (the taking side
//! ends, [`CloseOnDrop`]) frees every waiting giver.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use tokio::sync::Notify;

/// Bytes handed over and not yet done with.
#[derive(Debug)]
pub struct ByteGate {
    state: Mutex<State>,
    /// Wakes threads waiting for room.
    freed: Condvar,
    /// Wakes tasks waiting for room.
    freed_async: Notify,
    limit: u64,
}

#[derive(Debug, Default)]
struct State {
    held: u64,
    closed: bool,
}

/// What trying for room gave.
enum Try {
    Room(Held),
    Full,
    Closed,
}

impl ByteGate {
    /// A gate of `limit` bytes.
    pub fn new(limit: u64) -> Arc<ByteGate> {
        Arc::new(ByteGate {
            state: Mutex::default(),
            freed: Condvar::new(),
            freed_async: Notify::new(),
            limit,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_take(self: &Arc<Self>, s: &mut State, bytes: u64) -> Try {
        if s.closed {
            return Try::Closed;
        }
        if s.held == 0 || s.held.saturating_add(bytes) <= self.limit {
            s.held += bytes;
            return Try::Room(Held {
                bytes,
                gate: self.clone(),
            });
        }
        Try::Full
    }

    /// Waits on this thread until `bytes` fit; `None` once the gate is closed.
    pub fn acquire(self: &Arc<Self>, bytes: u64) -> Option<Held> {
        let mut s = self.lock();
        loop {
            match self.try_take(&mut s, bytes) {
                Try::Room(held) => return Some(held),
                Try::Closed => return None,
                Try::Full => s = self.freed.wait(s).unwrap_or_else(PoisonError::into_inner),
            }
        }
    }

    /// Waits in this task until `bytes` fit; `None` once the gate is closed.
    pub async fn acquire_async(self: &Arc<Self>, bytes: u64) -> Option<Held> {
        loop {
            // Registered before looking, so a release between the look and the wait wakes it.
            let freed = self.freed_async.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // The lock is let go before waiting.
            let tried = self.try_take(&mut self.lock(), bytes);
            match tried {
                Try::Room(held) => return Some(held),
                Try::Closed => return None,
                Try::Full => freed.await,
            }
        }
    }

    /// Takes room for `bytes` at once, past the limit if need be: for a giver that must not
    /// wait (a task on the root's runtime), which then gives nothing more until
    /// [`ByteGate::acquire_async`] finds room. `None` once the gate is closed.
    pub fn take(self: &Arc<Self>, bytes: u64) -> Option<Held> {
        let mut s = self.lock();
        if s.closed {
            return None;
        }
        s.held = s.held.saturating_add(bytes);
        Some(Held {
            bytes,
            gate: self.clone(),
        })
    }

    fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut s = self.lock();
        s.held = s.held.saturating_sub(bytes);
        drop(s);
        self.wake();
    }

    fn wake(&self) {
        self.freed.notify_all();
        self.freed_async.notify_waiters();
    }

    /// Wakes every waiting giver for good: nothing more is taken.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake();
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.lock().held
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
#[derive(Debug)]
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
        assert_eq!(gate.held(), 0);
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

    #[test]
    fn taking_never_waits_and_past_the_limit_the_gate_is_full() {
        let gate = ByteGate::new(100);
        let a = gate.take(80).unwrap();
        let b = gate.take(80).unwrap();
        assert_eq!(gate.held(), 160, "past the limit, at once");
        drop(a);
        assert_eq!(gate.held(), 80);
        drop(b);
        gate.close();
        assert!(gate.take(1).is_none(), "a closed gate gives no room");
    }

    #[tokio::test]
    async fn a_task_waits_for_room_and_for_the_close() {
        let gate = ByteGate::new(100);
        let a = gate.acquire_async(100).await.unwrap();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire_async(50).await.map(|h| h.bytes) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room while 100 bytes are held");
        drop(a);
        assert_eq!(waiting.await.unwrap(), Some(50));
        let b = gate.acquire_async(100).await.unwrap();
        let closed = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire_async(1).await.is_none() }
        });
        tokio::task::yield_now().await;
        gate.close();
        assert!(closed.await.unwrap());
        drop(b);
    }
}
