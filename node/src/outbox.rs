//! The node's outbox: messages from the workers to the root connection's writer, bounded in
//! messages (the channel) and in bytes (a gate charged by the workers before sending and
//! credited by the writer once it has encoded the message), so outputs waiting for a slow
//! root never hold more than [`OUTBOX_BYTES`] whatever the items weigh.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use protocol::Msg;
use tokio::sync::mpsc;

/// Item bytes of outputs messages queued for the writer at most (one message is always let
/// through when none is queued, however big).
pub const OUTBOX_BYTES: u64 = 16 << 20;

/// The item bytes `m` is charged (outputs, whole failed items, continuations, and the
/// outputs of a [`Msg::Partial`]).
pub fn charge(m: &Msg) -> u64 {
    m.item_bytes()
}

/// Bytes held by messages on their way to the writer.
#[derive(Debug)]
struct Gate {
    state: Mutex<GateState>,
    freed: Condvar,
    limit: u64,
}

#[derive(Debug, Default)]
struct GateState {
    held: u64,
    closed: bool,
}

impl Gate {
    /// Waits until `bytes` fit (or nothing is held); false once the writer is gone.
    fn acquire(&self, bytes: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if s.closed {
                return false;
            }
            if s.held == 0 || s.held + bytes <= self.limit {
                s.held += bytes;
                return true;
            }
            s = self.freed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.held = s.held.saturating_sub(bytes);
        drop(s);
        self.freed.notify_all();
    }

    fn close(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.freed.notify_all();
    }
}

/// The sending side, cloned into every worker.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Msg>,
    gate: Arc<Gate>,
}

/// The writer's side: gives back each message's bytes once taken; closes the gate when
/// dropped, so workers waiting for room stop waiting.
#[derive(Debug)]
pub struct OutboxRx {
    rx: mpsc::Receiver<Msg>,
    gate: Arc<Gate>,
}

/// The root connection's writer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// An outbox of `messages` messages and `bytes` item bytes.
pub fn outbox(messages: usize, bytes: u64) -> (Outbox, OutboxRx) {
    let (tx, rx) = mpsc::channel(messages);
    let gate = Arc::new(Gate {
        state: Mutex::default(),
        freed: Condvar::new(),
        limit: bytes,
    });
    (
        Outbox {
            tx,
            gate: gate.clone(),
        },
        OutboxRx { rx, gate },
    )
}

impl Outbox {
    /// Sends from a worker thread, waiting for room in messages and bytes.
    ///
    /// # Errors
    /// When the writer is gone.
    pub fn blocking_send(&self, m: Msg) -> Result<(), Gone> {
        let bytes = charge(&m);
        if !self.gate.acquire(bytes) {
            return Err(Gone);
        }
        self.tx.blocking_send(m).map_err(|_| {
            self.gate.release(bytes);
            Gone
        })
    }

    /// Sends from async code (replies to the root: small), waiting for room.
    ///
    /// # Errors
    /// When the writer is gone.
    pub async fn send(&self, m: Msg) -> Result<(), Gone> {
        let bytes = charge(&m);
        if bytes > 0 {
            let gate = self.gate.clone();
            let ok = tokio::task::spawn_blocking(move || gate.acquire(bytes))
                .await
                .unwrap_or(false);
            if !ok {
                return Err(Gone);
            }
        }
        self.tx.send(m).await.map_err(|_| {
            self.gate.release(bytes);
            Gone
        })
    }
}

impl OutboxRx {
    /// `m` has left the outbox (encoded into the writer's buffer, or dropped): its bytes
    /// are free again.
    pub fn taken(&self, m: &Msg) {
        self.gate.release(charge(m));
    }
}

impl Drop for OutboxRx {
    fn drop(&mut self) {
        self.gate.close();
    }
}

impl protocol::writer::Outgoing for OutboxRx {
    type Item = Msg;

    fn recv(&mut self) -> impl std::future::Future<Output = Option<Msg>> + Send {
        self.rx.recv()
    }

    fn try_recv(&mut self) -> Option<Msg> {
        self.rx.try_recv().ok()
    }

    /// Gives the message's bytes back, then encodes it (outputs too big to encode go as
    /// their failure instead, so the root still learns the batch's fate).
    fn feed(
        &mut self,
        writer: &mut protocol::MessageWriter,
        mut m: Msg,
    ) -> Result<(), protocol::ProtocolError> {
        self.taken(&m);
        match (writer.feed_mut(&mut m), &m) {
            (Err(e), Msg::Outputs(o)) => {
                tracing::error!("cannot send outputs of batch {}: {e}", o.seq);
                writer.feed(&Msg::Outputs(crate::worker::undeliverable(
                    o,
                    &e.to_string(),
                )))
            }
            (r, _) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::writer::Outgoing as _;
    use protocol::{Outputs, Packed, U32s};

    fn outputs(bytes: usize) -> Msg {
        let items: Packed = [vec![7u8; bytes]].into_iter().collect();
        Msg::Outputs(Outputs {
            seq: 1,
            first: 0,
            counts: U32s(vec![1]),
            items,
            failures: vec![],
            continuations: vec![],
        })
    }

    #[test]
    fn senders_wait_for_bytes_and_a_closed_writer_wakes_them() {
        let (tx, mut rx) = outbox(64, 100);
        tx.blocking_send(outputs(60)).unwrap();
        // A second message of 60 bytes does not fit until the first is taken.
        let t = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.blocking_send(outputs(60)))
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = rt.block_on(rx.recv()).unwrap();
        assert_eq!(rx.try_recv(), None, "the second waits for room");
        rx.taken(&first);
        assert_eq!(t.join().unwrap(), Ok(()));
        let second = rt.block_on(rx.recv()).unwrap();
        rx.taken(&second);
        // One message bigger than the bound passes alone.
        tx.blocking_send(outputs(500)).unwrap();
        let blocked = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.blocking_send(outputs(1)))
        };
        drop(rx);
        assert_eq!(blocked.join().unwrap(), Err(Gone));
        assert_eq!(tx.blocking_send(Msg::Heartbeat), Err(Gone));
    }
}
