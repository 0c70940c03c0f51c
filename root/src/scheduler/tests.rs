//! The scheduler on a paused clock against fake nodes played in this process over in-memory
//! pipes: each test scripts what nodes answer (or do not) and checks what the user's
//! handlers get. Time only moves when every task waits, so a timeout of minutes takes
//! microseconds and every run is the same.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{
    ChainSpec, Connection, Continuation, Credit, FailedTask, Failure, Items, Limits, Msg, Outputs,
    Packed, Partial, SetupDone, TaskIndex, TaskSpec, U32s,
};

use tokio::sync::Notify;

use super::Cmd;
use crate::{Handlers, ItemFailure, ItemId, Root, RootOptions};

/// What a fake node does with a batch.
enum Act {
    /// Sends these messages.
    Reply(Vec<Msg>),
    /// Sends these, then drops the connection (the root sees the node lost).
    ReplyThenVanish(Vec<Msg>),
    /// Holds the batch forever, still sending heartbeats.
    Hold,
}

type Script = Box<dyn FnMut(&Items) -> Act + Send>;

/// Plays a node on `conn`: sets any chain up, answers batches by `script`, and sends a
/// heartbeat every second, as a node does.
async fn play(mut conn: Connection, mut script: Script) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let msg = tokio::select! {
            m = conn.read_message() => m,
            _ = tick.tick() => {
                if conn.write_message(&Msg::Heartbeat).await.is_err() { return; }
                continue;
            }
        };
        let replies = match msg {
            Ok(Some(Msg::Setup(_))) => vec![Msg::SetupDone(SetupDone {
                compiled: 0,
                cached: 0,
                credit: Credit {
                    items: 1024,
                    bytes: 1 << 20,
                },
            })],
            Ok(Some(Msg::Items(items))) => match script(&items) {
                Act::Reply(r) => r,
                Act::ReplyThenVanish(r) => {
                    for m in &r {
                        let _ = conn.write_message(m).await;
                    }
                    return;
                }
                Act::Hold => Vec::new(),
            },
            Ok(Some(Msg::Bye) | None) | Err(_) => return,
            Ok(Some(_)) => Vec::new(),
        };
        for m in &replies {
            if conn.write_message(m).await.is_err() {
                return;
            }
        }
    }
}

/// Attaches a fake node named `port` (127.0.0.9:`port`) playing `script`.
async fn fake(root: &Root, port: u16, script: Script) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let addr = SocketAddr::from(([127, 0, 0, 9], port));
    let max = protocol::DEFAULT_MAX_FRAME;
    tokio::spawn(play(Connection::in_memory(theirs, max, addr), script));
    root.call(|reply| Cmd::Attach {
        addr,
        conn: Box::new(Connection::in_memory(ours, max, addr)),
        workers: 1,
        labels: Vec::new(),
        reply,
    })
    .await
    .expect("attach a fake node");
}

/// Each item of a batch back as its one output.
fn echo(items: &Items) -> Msg {
    outputs(items, |_| true)
}

/// The outputs of the inputs of `items` that `keep` says (the others: no output).
fn outputs(items: &Items, keep: impl Fn(&[u8]) -> bool) -> Msg {
    let mut out = Packed::new();
    let counts = items
        .items
        .iter()
        .map(|item| {
            if keep(item) {
                out.push(item);
                1
            } else {
                0
            }
        })
        .collect();
    Msg::Outputs(Outputs {
        seq: items.seq,
        first: 0,
        counts: U32s(counts),
        items: out,
        failures: Vec::new(),
        continuations: Vec::new(),
    })
}

fn chain(tasks: usize) -> ChainSpec {
    ChainSpec {
        name: "fake".into(),
        version: "1".into(),
        modules: Vec::new(),
        tasks: (0..tasks)
            .map(|i| TaskSpec {
                function: format!("t{i}"),
                module: 0,
                generator: false,
                args: Vec::new(),
                next: None,
                labels: Vec::new(),
            })
            .collect(),
        limits: Limits::default(),
    }
}

/// An output as the handler got it: its input and its bytes.
type Output = (ItemId, Vec<u8>);

/// What the handlers got.
#[derive(Clone, Default)]
struct Got {
    outputs: Arc<Mutex<Vec<Output>>>,
    failures: Arc<Mutex<Vec<ItemFailure>>>,
}

impl Got {
    fn outputs(&self) -> Vec<Output> {
        self.outputs.lock().unwrap().clone()
    }

    fn sorted_texts(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .outputs()
            .iter()
            .map(|(_, o)| String::from_utf8_lossy(o).into_owned())
            .collect();
        v.sort();
        v
    }

    fn failures(&self) -> Vec<ItemFailure> {
        self.failures.lock().unwrap().clone()
    }
}

async fn set_up(root: &Root, tasks: usize) -> Got {
    let got = Got::default();
    let (o, f) = (got.outputs.clone(), got.failures.clone());
    let handlers = Handlers::new(move |id, item| o.lock().unwrap().push((id, item.to_vec())))
        .on_failure(move |fail| f.lock().unwrap().push(fail));
    root.setup_handlers(chain(tasks), handlers)
        .await
        .expect("setup");
    got
}

/// Waits until every input fed is done; a wait that would never end fails the test after a
/// (virtual) hour instead of hanging it.
async fn done(root: &Root) {
    tokio::time::timeout(Duration::from_secs(3600), root.wait_empty())
        .await
        .expect("every input done within an hour of the paused clock")
        .expect("wait_empty");
}

fn items(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("item-{i}")).collect()
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_completion_is_handed_over_once() {
    let root = Root::new(RootOptions::default());
    // The first two inputs' completion comes three times: twice alone, then with the rest.
    fake(
        &root,
        1,
        Box::new(|b| {
            let first = outputs_of_first(b, 2);
            Act::Reply(vec![first.clone(), first, echo(b)])
        }),
    )
    .await;
    let got = set_up(&root, 1).await;
    root.feed(items(5)).await.unwrap();
    done(&root).await;
    assert_eq!(got.sorted_texts(), items(5));
}

/// Told once a fake node has got a batch: the test goes on from there.
fn took() -> (Arc<Notify>, Arc<Notify>) {
    let n = Arc::new(Notify::new());
    (n.clone(), n)
}

#[tokio::test(start_paused = true)]
async fn a_lost_nodes_inputs_run_elsewhere_once() {
    let root = Root::new(RootOptions::default());
    // The first node answers for the first two inputs of its batch, then vanishes; the
    // second joins after that.
    let (tell, told) = took();
    fake(
        &root,
        1,
        Box::new(move |b| {
            tell.notify_one();
            Act::ReplyThenVanish(vec![outputs_of_first(b, 2)])
        }),
    )
    .await;
    let got = set_up(&root, 1).await;
    root.feed(items(6)).await.unwrap();
    told.notified().await;
    fake(&root, 2, Box::new(|b| Act::Reply(vec![echo(b)]))).await;
    done(&root).await;
    assert_eq!(got.sorted_texts(), items(6), "each output once");
    let c = root.counters().await.unwrap();
    assert_eq!(
        c.redispatched, 4,
        "the inputs not answered went again: {c:?}"
    );
}

/// Outputs of the first `n` inputs of a batch only.
fn outputs_of_first(items: &Items, n: usize) -> Msg {
    let mut out = Packed::new();
    for item in items.items.iter().take(n) {
        out.push(item);
    }
    Msg::Outputs(Outputs {
        seq: items.seq,
        first: 0,
        counts: U32s(vec![1; n.min(items.items.len())]),
        items: out,
        failures: Vec::new(),
        continuations: Vec::new(),
    })
}

#[tokio::test(start_paused = true)]
async fn parts_sent_ahead_by_a_node_lost_before_completion_are_never_handed_over() {
    let root = Root::new(RootOptions::default());
    // Input 0's outputs go ahead in a part ("ahead"), then the node is lost.
    let (tell, told) = took();
    fake(
        &root,
        1,
        Box::new(move |b| {
            tell.notify_one();
            Act::ReplyThenVanish(vec![Msg::Partial(Partial {
                seq: b.seq,
                index: 0,
                items: ["ahead"].into_iter().collect(),
            })])
        }),
    )
    .await;
    let got = set_up(&root, 1).await;
    root.feed(items(3)).await.unwrap();
    told.notified().await;
    fake(&root, 2, Box::new(|b| Act::Reply(vec![echo(b)]))).await;
    done(&root).await;
    assert_eq!(got.sorted_texts(), items(3), "no part of the lost node");
}

#[tokio::test(start_paused = true)]
async fn a_node_that_holds_items_and_completes_none_is_lost_after_its_limit() {
    let options = RootOptions::default();
    let limit = Duration::from_millis(Limits::default().deadline_ms) + options.heartbeat_timeout;
    let root = Root::new(options);
    let (tell, told) = took();
    fake(
        &root,
        1,
        Box::new(move |_| {
            tell.notify_one();
            Act::Hold
        }),
    )
    .await;
    let got = set_up(&root, 1).await;
    root.feed(items(4)).await.unwrap();
    // The second node joins once the first holds everything.
    told.notified().await;
    let started = tokio::time::Instant::now();
    fake(&root, 2, Box::new(|b| Act::Reply(vec![echo(b)]))).await;
    done(&root).await;
    let waited = started.elapsed();
    assert_eq!(got.sorted_texts(), items(4));
    assert!(
        waited >= limit && waited <= limit + Duration::from_secs(3),
        "lost after {waited:?}, the limit is {limit:?}"
    );
}

/// A failure of every item in task 0, with the item, so it may be tried again.
fn fail_all(items: &Items) -> Msg {
    Msg::Outputs(Outputs {
        seq: items.seq,
        first: 0,
        counts: U32s(vec![0; items.items.len()]),
        items: Packed::new(),
        failures: items
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| Failure {
                index: i as u32,
                task: Some(FailedTask {
                    index: TaskIndex(0),
                    name: "t0".into(),
                }),
                item_start: item.to_vec(),
                item: Some(item.to_vec()),
                message: "always fails".into(),
            })
            .collect(),
        continuations: Vec::new(),
    })
}

#[tokio::test(start_paused = true)]
async fn an_item_failing_past_its_retries_fails_its_input_once() {
    let tries = Arc::new(Mutex::new(0usize));
    let root = Root::new(RootOptions {
        retries: 2,
        ..RootOptions::default()
    });
    let t = tries.clone();
    fake(
        &root,
        1,
        Box::new(move |b| {
            *t.lock().unwrap() += b.items.len();
            Act::Reply(vec![fail_all(b)])
        }),
    )
    .await;
    let got = set_up(&root, 1).await;
    root.feed(["doomed"]).await.unwrap();
    done(&root).await;
    assert_eq!(*tries.lock().unwrap(), 3, "the first try and two retries");
    let failures = got.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].message, "always fails");
    assert!(got.outputs().is_empty());
    assert_eq!(root.counters().await.unwrap().retried, 2);
}

#[tokio::test(start_paused = true)]
async fn an_input_lost_with_every_node_that_took_it_fails_as_poison() {
    let root = Root::new(RootOptions::default());
    for port in 1..=3 {
        fake(&root, port, Box::new(|_| Act::ReplyThenVanish(Vec::new()))).await;
    }
    let got = set_up(&root, 1).await;
    root.feed(["deadly"]).await.unwrap();
    done(&root).await;
    let failures = got.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].task.is_empty(), "a poison item names no task");
    assert_eq!(failures[0].input_item, b"deadly");
}

#[tokio::test(start_paused = true)]
async fn ordered_delivery_keeps_the_feed_order_across_a_lost_node() {
    let root = Root::new(RootOptions {
        keep_order: true,
        batch_items: 2,
        ..RootOptions::default()
    });
    // The first node takes the first batch and vanishes; the second answers everything.
    let first = Arc::new(Mutex::new(true));
    fake(
        &root,
        1,
        Box::new(move |_| {
            if std::mem::take(&mut *first.lock().unwrap()) {
                Act::ReplyThenVanish(Vec::new())
            } else {
                Act::Hold
            }
        }),
    )
    .await;
    let got = set_up(&root, 1).await;
    fake(&root, 2, Box::new(|b| Act::Reply(vec![echo(b)]))).await;
    root.feed(items(6)).await.unwrap();
    done(&root).await;
    let texts: Vec<String> = got
        .outputs()
        .iter()
        .map(|(_, o)| String::from_utf8_lossy(o).into_owned())
        .collect();
    assert_eq!(texts, items(6), "in feed order");
}

#[tokio::test(start_paused = true)]
async fn work_handed_back_by_a_node_lost_later_runs_elsewhere_once() {
    let root = Root::new(RootOptions::default());
    // The first node completes the input handing two items back for task 1, then is lost
    // with the next batch it gets (those items).
    let answered = Arc::new(Mutex::new(false));
    let (tell, told) = took();
    fake(
        &root,
        1,
        Box::new(move |b| {
            if std::mem::replace(&mut *answered.lock().unwrap(), true) {
                tell.notify_one();
                return Act::ReplyThenVanish(Vec::new());
            }
            let Msg::Outputs(mut o) = outputs(b, |_| false) else {
                unreachable!("outputs builds Outputs")
            };
            o.continuations.push(Continuation {
                index: 0,
                stage: TaskIndex(1),
                items: ["a", "b"].into_iter().collect(),
            });
            Act::Reply(vec![Msg::Outputs(o)])
        }),
    )
    .await;
    let got = set_up(&root, 2).await;
    root.feed(["seed"]).await.unwrap();
    // The second node joins once the first was lost with the handed-back items.
    told.notified().await;
    fake(
        &root,
        2,
        Box::new(|b| {
            if b.stage == TaskIndex(1) {
                Act::Reply(vec![echo(b)])
            } else {
                Act::Hold
            }
        }),
    )
    .await;
    done(&root).await;
    assert_eq!(got.sorted_texts(), ["a", "b"]);
    assert!(got.failures().is_empty(), "{:?}", got.failures());
}

/// A script that counts the batches it gets (and says so on `took`), then acts as `act` says.
fn counting(calls: &Arc<Mutex<usize>>, took: Arc<Notify>, act: fn(&Items) -> Act) -> Script {
    let calls = calls.clone();
    Box::new(move |b| {
        *calls.lock().unwrap() += 1;
        took.notify_one();
        act(b)
    })
}

#[tokio::test(start_paused = true)]
async fn a_removed_idle_node_gets_nothing_more_and_is_let_go() {
    let root = Root::new(RootOptions::default());
    let first = Arc::new(Mutex::new(0));
    let took = Arc::new(Notify::new());
    fake(
        &root,
        1,
        counting(&first, took, |b| Act::Reply(vec![echo(b)])),
    )
    .await;
    let got = set_up(&root, 1).await;
    root.feed(items(3)).await.unwrap();
    done(&root).await;
    let addr = SocketAddr::from(([127, 0, 0, 9], 1));
    assert!(root.remove_node(addr).await.unwrap(), "it was attached");
    // It held nothing: it is gone before the next call is answered.
    assert_eq!(root.nodes().await.unwrap(), Vec::<SocketAddr>::new());
    assert!(!root.remove_node(addr).await.unwrap(), "it is gone");
    fake(&root, 2, Box::new(|b| Act::Reply(vec![echo(b)]))).await;
    root.feed(["late"]).await.unwrap();
    done(&root).await;
    assert_eq!(*first.lock().unwrap(), 1, "no batch after its removal");
    assert_eq!(got.outputs().len(), 4);
    assert_eq!(
        root.counters().await.unwrap().redispatched,
        0,
        "leaving is no loss"
    );
}

#[tokio::test(start_paused = true)]
async fn a_removed_node_gets_no_new_items_and_what_it_held_runs_once() {
    let root = Root::new(RootOptions::default());
    // The first node holds its batch and never answers; it is removed while holding it.
    let first = Arc::new(Mutex::new(0));
    let (tell, told) = took();
    fake(&root, 1, counting(&first, tell, |_| Act::Hold)).await;
    let got = set_up(&root, 1).await;
    root.feed(items(6)).await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 9], 1));
    told.notified().await;
    assert!(root.remove_node(addr).await.unwrap());
    assert!(
        root.nodes().await.unwrap().contains(&addr),
        "it stays while it holds items"
    );
    fake(&root, 2, Box::new(|b| Act::Reply(vec![echo(b)]))).await;
    let more: Vec<String> = (6..12).map(|i| format!("item-{i}")).collect();
    root.feed(&more).await.unwrap();
    // What the first node held comes back once it is lost (silent), and runs on the second.
    done(&root).await;
    assert_eq!(*first.lock().unwrap(), 1, "no batch after its removal");
    let mut want = items(12);
    want.sort();
    assert_eq!(got.sorted_texts(), want, "each output once");
    assert_eq!(
        root.nodes().await.unwrap(),
        [SocketAddr::from(([127, 0, 0, 9], 2))]
    );
}

/// Attaches a peer that never says anything, not even a heartbeat (a node stopped before it
/// answered its setup); the returned end must be held, or the peer looks closed.
async fn silent(root: &Root, port: u16) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let addr = SocketAddr::from(([127, 0, 0, 9], port));
    let max = protocol::DEFAULT_MAX_FRAME;
    root.call(|reply| Cmd::Attach {
        addr,
        conn: Box::new(Connection::in_memory(ours, max, addr)),
        workers: 1,
        labels: Vec::new(),
        reply,
    })
    .await
    .expect("attach a silent peer");
    theirs
}

/// A node that never answers its setup is lost after the heartbeat timeout and dropped from
/// the run: the setup succeeds on the other node, which runs every input.
#[tokio::test(start_paused = true)]
async fn a_node_lost_during_setup_is_dropped_while_another_sets_the_chain_up() {
    let root = Root::new(RootOptions::default());
    fake(&root, 1, Box::new(|b| Act::Reply(vec![echo(b)]))).await;
    let _stopped = silent(&root, 2).await;
    let got = set_up(&root, 1).await;
    root.feed(items(50)).await.unwrap();
    done(&root).await;
    let mut want = items(50);
    want.sort();
    assert_eq!(got.sorted_texts(), want);
    assert_eq!(root.counters().await.unwrap().nodes, 1);
}

/// With `min_nodes` 2, the same loss fails the setup, naming the node and why.
#[tokio::test(start_paused = true)]
async fn a_setup_that_reaches_fewer_than_min_nodes_fails() {
    let root = Root::new(RootOptions {
        min_nodes: 2,
        ..RootOptions::default()
    });
    fake(&root, 1, Box::new(|b| Act::Reply(vec![echo(b)]))).await;
    let _stopped = silent(&root, 2).await;
    let err = root
        .setup_handlers(chain(1), Handlers::new(|_, _| {}))
        .await
        .expect_err("one node of two set up");
    let text = err.to_string();
    assert!(
        text.contains("127.0.0.9:2") && text.contains("node lost during setup"),
        "{text}"
    );
}

/// A handler with no room once it got its first outputs, until `open` is notified (a
/// reader of `pcluster run`'s stdout that does not read).
struct SlowReader {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    open: Arc<Notify>,
    waited: bool,
}

impl crate::Handler for SlowReader {
    fn output(&mut self, _: ItemId, item: &[u8]) {
        self.got.lock().unwrap().push(item.to_vec());
    }

    fn room(&mut self) -> Option<crate::Room> {
        if self.waited || self.got.lock().unwrap().is_empty() {
            return None;
        }
        self.waited = true;
        let open = self.open.clone();
        Some(Box::pin(async move { open.notified().await }))
    }
}

/// Outputs that wait on a slow handler far past the node's completion limit: the node is
/// not silent (its outputs wait on us), nothing is sent again, and each output arrives once.
#[tokio::test(start_paused = true)]
async fn outputs_waiting_on_a_slow_handler_do_not_make_their_node_silent() {
    let root = Root::new(RootOptions::default());
    fake(&root, 1, Box::new(|b| Act::Reply(vec![echo(b)]))).await;
    let (got, open) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Notify::new()));
    let reader = SlowReader {
        got: got.clone(),
        open: open.clone(),
        waited: false,
    };
    root.setup_handlers(chain(1), Handlers::from_handler(reader))
        .await
        .expect("setup");
    root.feed(items(5000)).await.unwrap();
    // The reader away for ten minutes; the limit is the task's deadline plus 10 s.
    tokio::time::sleep(Duration::from_secs(600)).await;
    open.notify_one();
    done(&root).await;
    let mut texts: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .map(|o| String::from_utf8_lossy(o).into_owned())
        .collect();
    texts.sort();
    let mut want = items(5000);
    want.sort();
    assert_eq!(texts, want, "each output once");
    assert_eq!(root.counters().await.unwrap().redispatched, 0);
}
