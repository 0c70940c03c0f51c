//! Inputs whose outputs exceed one message (the 64 MiB frame), with real node processes on
//! loopback: each such input's outputs arrive exactly once, also when a node is killed
//! (SIGKILL) while it sends them; and a peer that sends an input's first outputs ahead and
//! then drops dead delivers none of them: the input runs again whole on a real node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{Msg, Partial};
use root::{ChainSpec, Root, RootOptions};

use crate::common::*;

const LONG: Duration = Duration::from_secs(120);
/// Bytes of each input: three duplications make 8 outputs, 72 MiB, past the 64 MiB frame.
const INPUT_BYTES: usize = 9 << 20;

/// `w1_duplicate` three times: every input comes out 8 times.
fn octuple() -> ChainSpec {
    chain(
        "octuple",
        &[
            ("w1_duplicate", true, ""),
            ("w1_duplicate", true, ""),
            ("w1_duplicate", true, ""),
        ],
    )
}

/// Input `i`: `i` and a dash, padded to [`INPUT_BYTES`].
fn input(i: usize) -> Vec<u8> {
    let mut v = format!("{i}-").into_bytes();
    v.resize(INPUT_BYTES, b'.');
    v
}

/// Outputs per input id, each checked against the input as it arrives (none is kept).
#[derive(Clone, Default)]
struct Tally {
    per_input: Arc<Mutex<HashMap<u64, u32>>>,
    wrong: Arc<AtomicU64>,
}

impl Tally {
    async fn setup(&self, root: &Root, first: u64) {
        let (per, wrong) = (self.per_input.clone(), self.wrong.clone());
        root.setup_with(
            octuple(),
            move |id, item| {
                if item != input((id.0 - first) as usize).as_slice() {
                    wrong.fetch_add(1, Ordering::SeqCst);
                }
                *per.lock().unwrap().entry(id.0).or_default() += 1;
            },
            |f| panic!("no input fails: {f}"),
        )
        .await
        .expect("setup");
    }

    /// Every input of `ids` came out exactly 8 times, each time right.
    fn check(&self, ids: std::ops::Range<u64>) {
        assert_eq!(self.wrong.load(Ordering::SeqCst), 0, "outputs differ");
        let per = self.per_input.lock().unwrap();
        for id in ids.clone() {
            assert_eq!(per.get(&id), Some(&8), "input {id}: {per:?}");
        }
        assert_eq!(per.len(), ids.count(), "{per:?}");
    }
}

/// Two node processes, inputs of 72 MiB of outputs each: all arrive, exactly once. Then a
/// second run, with the second node killed (SIGKILL) once it has taken inputs: node one runs
/// them again and every output still arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_past_the_frame_limit_arrive_once_even_when_a_node_dies() {
    let dir = temp_dir("partial");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (_one, port) = node_process("127.0.23.2", 0, log_port, 1, &[]).await;
    let (mut two, _) = node_process("127.0.23.3", port, log_port, 1, &[]).await;
    let nodes: [SocketAddr; 2] = [
        format!("127.0.23.2:{port}").parse().unwrap(),
        format!("127.0.23.3:{port}").parse().unwrap(),
    ];

    let root = Root::with_nodes(RootOptions::default(), &nodes)
        .await
        .unwrap();
    let tally = Tally::default();
    tally.setup(&root, 0).await;
    let n = 4;
    let ids = root.feed((0..n).map(input)).await.unwrap();
    root.wait_empty().await.unwrap();
    tally.check(ids.first.0..ids.first.0 + n as u64);
    root.close().await.unwrap();
    // The nodes free themselves when they read the first root's goodbye.
    poll_until(LONG, "both nodes free", || async {
        let mut free = true;
        for node in nodes {
            free &= root::node_status(node, &RootOptions::default())
                .await
                .is_ok_and(|s| s.state == protocol::NodeState::Free);
        }
        free
    })
    .await;

    let root = Root::with_nodes(RootOptions::default(), &nodes)
        .await
        .unwrap();
    let tally = Tally::default();
    tally.setup(&root, 0).await;
    let n = 6;
    let ids = root.feed((0..n).map(input)).await.unwrap();
    poll_until(LONG, "node two to take an input", || async {
        root::node_status(nodes[1], &RootOptions::default())
            .await
            .is_ok_and(|s| s.tasks.first().is_some_and(|t| t.items_in > 0))
    })
    .await;
    two.signal("-KILL").unwrap();
    assert!(!two.wait_exit(LONG).await.unwrap().success());
    root.wait_empty().await.unwrap();
    tally.check(ids.first.0..ids.first.0 + n as u64);
    let c = root.counters().await.unwrap();
    eprintln!("{c:?}");
    assert_eq!(
        (c.completed, c.failed, c.outputs),
        (n as u64, 0, 8 * n as u64)
    );
    root.close().await.unwrap();
}

/// A peer that takes items, sends outputs of each input ahead (`Partial`) and closes its
/// connection before completing any: the root hands none of them over and the inputs run
/// again on the real node, so each output arrives exactly once and none of the peer's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_sent_ahead_by_a_node_that_dies_are_never_delivered() {
    let dir = temp_dir("partial-ghost");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (_real, port) = node_process("127.0.23.4", 0, log_port, 1, &[]).await;
    let real: SocketAddr = format!("127.0.23.4:{port}").parse().unwrap();
    let ghosts = Arc::new(AtomicU64::new(0));
    let ghost = dies_after_parts(ghosts.clone()).await;

    // The ghost alone first, so it surely takes inputs; the real node joins once it has.
    let root = Root::with_nodes(RootOptions::default(), &[ghost])
        .await
        .unwrap();
    let tally = Tally::default();
    tally.setup(&root, 0).await;
    let n = 3;
    let ids = root.feed((0..n).map(input)).await.unwrap();
    poll_until(LONG, "the ghost to send parts", || async {
        ghosts.load(Ordering::SeqCst) > 0
    })
    .await;
    root.add_node(real).await.unwrap();
    root.wait_empty().await.unwrap();
    tally.check(ids.first.0..ids.first.0 + n as u64);
    let c = root.counters().await.unwrap();
    assert!(c.redispatched > 0, "{c:?}");
    root.close().await.unwrap();
}

/// A peer that answers setup, and for each batch sends one wrong output of every input ahead
/// (`Partial`), then closes the connection. Counts the parts it sent.
async fn dies_after_parts(sent: Arc<AtomicU64>) -> SocketAddr {
    scripted_node("127.0.23.5", "ghost", move |mut conn| {
        let sent = sent.clone();
        async move {
            while let Ok(Some(msg)) = conn.read_message().await {
                match msg {
                    Msg::Setup(_)
                        if conn.write_message(&setup_done(16, 64 << 20)).await.is_err() =>
                    {
                        return;
                    }
                    Msg::Items(items) => {
                        for index in 0..items.items.len() as u32 {
                            let part = Msg::Partial(Partial {
                                seq: items.seq,
                                index,
                                items: ["ghost output"].into_iter().collect(),
                            });
                            if conn.write_message(&part).await.is_err() {
                                return;
                            }
                            sent.fetch_add(1, Ordering::SeqCst);
                        }
                        // Dead before any completion.
                        return;
                    }
                    _ => {}
                }
            }
        }
    })
    .await
}
