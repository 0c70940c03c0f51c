//! The channel from the node connections to the scheduler, bounded in messages and in the
//! item bytes they carry: a reader takes room for a message's outputs before queueing it and
//! the scheduler gives the room back as it takes the message, so outputs waiting for the
//! scheduler never hold more than [`RootOptions::outputs_bytes`](crate::RootOptions) whatever
//! the items weigh. A full channel stops the readers, and TCP then stops the nodes.

use std::sync::Arc;

use protocol::Msg;
use protocol::gate::{ByteGate, CloseOnDrop, Held};
use tokio::sync::mpsc;

use crate::conn::Event;

/// The item bytes `e` is charged ([`Msg::item_bytes`]; a node lost is charged nothing).
pub(crate) fn charge(e: &Event) -> u64 {
    match e {
        Event::Msg(_, m) => Msg::item_bytes(m),
        _ => 0,
    }
}

/// The sending side, cloned into every connection's reader.
#[derive(Clone, Debug)]
pub(crate) struct EventsTx {
    tx: mpsc::Sender<(Event, Held)>,
    room: Arc<ByteGate>,
}

/// The scheduler's side; closes the room when dropped, so readers waiting for it stop.
#[derive(Debug)]
pub(crate) struct EventsRx {
    rx: mpsc::Receiver<(Event, Held)>,
    _close: CloseOnDrop,
}

/// The scheduler is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// A channel of `messages` messages and `bytes` item bytes (at least 1).
pub(crate) fn channel(messages: usize, bytes: u64) -> (EventsTx, EventsRx) {
    let (tx, rx) = mpsc::channel(messages);
    let room = ByteGate::new(bytes.max(1));
    (
        EventsTx {
            tx,
            room: room.clone(),
        },
        EventsRx {
            rx,
            _close: CloseOnDrop(room),
        },
    )
}

impl EventsTx {
    /// Queues `e`, waiting for room in messages and bytes.
    ///
    /// # Errors
    /// When the scheduler is gone.
    pub(crate) async fn send(&self, e: Event) -> Result<(), Closed> {
        let held = self.room.acquire_async(charge(&e)).await.ok_or(Closed)?;
        self.tx.send((e, held)).await.map_err(|_| Closed)
    }
}

impl EventsRx {
    /// The next event; its bytes are free again (the scheduler handles it before it takes
    /// another).
    pub(crate) async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await.map(|(e, _held)| e)
    }

    /// Whether no event waits now.
    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use protocol::{NodeId, Outputs, Packed, U32s};

    use super::*;

    fn outputs(bytes: usize) -> Event {
        let items: Packed = [vec![7u8; bytes]].into_iter().collect();
        Event::Msg(
            NodeId(1),
            Msg::Outputs(Outputs {
                seq: 1,
                first: 0,
                counts: U32s(vec![1]),
                items,
                failures: vec![],
                continuations: vec![],
            }),
        )
    }

    /// Whether `f` is still waiting after a while (a wait that should not end cannot be
    /// waited for).
    async fn blocked(f: impl std::future::Future) -> bool {
        tokio::time::timeout(Duration::from_millis(50), f)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn readers_wait_for_bytes_and_a_gone_scheduler_stops_them() {
        let (tx, mut rx) = channel(64, 100);
        tx.send(outputs(60)).await.unwrap();
        // 60 more bytes do not fit until the first message is taken; an event without
        // bytes always does.
        assert!(blocked(tx.send(outputs(60))).await, "waits for room");
        tx.send(Event::Gone(
            NodeId(2),
            "closed".into(),
            crate::scheduler::Blame::Items,
        ))
        .await
        .unwrap();
        let second = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(outputs(60)).await }
        });
        assert!(matches!(rx.recv().await, Some(Event::Msg(..))));
        assert_eq!(
            second.await.unwrap(),
            Ok(()),
            "room once the first is taken"
        );
        assert!(matches!(rx.recv().await, Some(Event::Gone(..))));
        assert!(matches!(rx.recv().await, Some(Event::Msg(..))));
        // One message bigger than the bound passes alone.
        tx.send(outputs(500)).await.unwrap();
        assert!(blocked(tx.send(outputs(1))).await, "nothing beside it");
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(outputs(1)).await }
        });
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err(Closed));
        assert_eq!(tx.send(outputs(1)).await, Err(Closed));
    }
}
