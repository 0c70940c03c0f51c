//! The node's outbox: messages from the workers to the root connection's writer, bounded in
//! messages (the channel) and in bytes (a gate charged by the workers before sending and
//! credited by the writer once it has encoded the message), so outputs waiting for a slow
//! root never hold more than [`OUTBOX_BYTES`] whatever the items weigh.

use std::sync::Arc;

use protocol::Msg;
use protocol::gate::{ByteGate, CloseOnDrop, Held};
use tokio::sync::mpsc;

/// Item bytes of outputs messages queued for the writer at most (one message is always let
/// through when none is queued, however big).
pub const OUTBOX_BYTES: u64 = 16 << 20;

/// The item bytes `m` is charged (outputs, whole failed items, continuations, and the
/// outputs of a [`Msg::Partial`]).
pub fn charge(m: &Msg) -> u64 {
    m.item_bytes()
}

/// The sending side, cloned into every worker.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<(Msg, Held)>,
    gate: Arc<ByteGate>,
}

/// The writer's side: each message's bytes are given back once it is encoded; the gate
/// closes when this is dropped, so workers waiting for room stop waiting.
#[derive(Debug)]
pub struct OutboxRx {
    rx: mpsc::Receiver<(Msg, Held)>,
    _close: CloseOnDrop,
}

/// The root connection's writer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// An outbox of `messages` messages and `bytes` item bytes.
pub fn outbox(messages: usize, bytes: u64) -> (Outbox, OutboxRx) {
    let (tx, rx) = mpsc::channel(messages);
    let gate = ByteGate::new(bytes);
    (
        Outbox {
            tx,
            gate: gate.clone(),
        },
        OutboxRx {
            rx,
            _close: CloseOnDrop(gate),
        },
    )
}

impl Outbox {
    /// Sends from a worker thread, waiting for room in messages and bytes.
    ///
    /// # Errors
    /// When the writer is gone.
    pub fn blocking_send(&self, m: Msg) -> Result<(), Gone> {
        let held = self.gate.acquire(charge(&m)).ok_or(Gone)?;
        self.tx.blocking_send((m, held)).map_err(|_| Gone)
    }

    /// Sends from async code (replies to the root: small), waiting for room.
    ///
    /// # Errors
    /// When the writer is gone.
    pub async fn send(&self, m: Msg) -> Result<(), Gone> {
        let held = self.gate.acquire_async(charge(&m)).await.ok_or(Gone)?;
        self.tx.send((m, held)).await.map_err(|_| Gone)
    }
}

impl protocol::writer::Outgoing for OutboxRx {
    type Item = (Msg, Held);

    fn recv(&mut self) -> impl std::future::Future<Output = Option<(Msg, Held)>> + Send {
        self.rx.recv()
    }

    fn try_recv(&mut self) -> Option<(Msg, Held)> {
        self.rx.try_recv().ok()
    }

    /// Encodes the message, then gives its bytes back (outputs too big to encode go as
    /// their failure instead, so the root still learns the batch's fate).
    fn feed(
        &mut self,
        writer: &mut protocol::MessageWriter,
        (mut m, _held): (Msg, Held),
    ) -> Result<(), protocol::ProtocolError> {
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
        assert!(rx.try_recv().is_none(), "the second waits for room");
        drop(first);
        assert_eq!(t.join().unwrap(), Ok(()));
        let second = rt.block_on(rx.recv()).unwrap();
        drop(second);
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
