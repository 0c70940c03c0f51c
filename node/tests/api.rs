//! The node crate's public API, by use: [`pcluster_node::run`] serves a listener with a
//! [`NodeConfig`] until its cancellation token fires; roots and probes talk to it with the
//! protocol crate. Here: status, a chain set up from a WAT module, a batch through it with
//! one failing item, a typed setup error, and a clean stop. Everything on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use pcluster_node::{NodeConfig, RequestError, SetupError};
use protocol::auth::Token;
use protocol::handshake::{self, Role};
use protocol::{
    ChainSpec, Connection, ErrorKind, Ids, Items, Limits, Msg, NodeState, Packed, SessionId, Setup,
    TaskIndex, TaskSpec, WireError,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);
const TOKEN: &str = "cluster secret";

/// A task module: `shout` emits its item with a `!` appended, and fails items that start
/// with `x` (status 1, message via `fail`).
fn shout_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
          (import "pcluster" "emit" (func $emit (param i32 i32)))
          (import "pcluster" "fail" (func $fail (param i32 i32)))
          (memory (export "memory") 2)
          (data (i32.const 16) "no x please")
          (func (export "pcluster_abi_version") (result i32) (i32.const 1))
          (func (export "pcluster_input") (param i32) (result i32) (i32.const 1024))
          (func (export "shout") (param $len i32) (result i32)
            (if (i32.eq (i32.load8_u (i32.const 1024)) (i32.const 120))
              (then (call $fail (i32.const 16) (i32.const 11)) (return (i32.const 1))))
            (i32.store8 (i32.add (i32.const 1024) (local.get $len)) (i32.const 33))
            (call $emit (i32.const 1024) (i32.add (local.get $len) (i32.const 1)))
            (i32.const 0)))"#,
    )
    .expect("valid WAT")
}

fn chain(function: &str) -> ChainSpec {
    ChainSpec {
        name: "api".into(),
        version: "1".into(),
        modules: vec![shout_module().into()],
        tasks: vec![TaskSpec {
            function: function.into(),
            module: 0,
            generator: false,
            args: Vec::new(),
            next: None,
            labels: Vec::new(),
        }],
        limits: Limits::default(),
    }
}

async fn connect(addr: SocketAddr, role: Role) -> Connection {
    let stream = TcpStream::connect(addr).await.unwrap();
    let token = Token::new(TOKEN);
    let (conn, welcome) = handshake::connect(stream, role, Some(&token), None, 64 << 20, DEADLINE)
        .await
        .unwrap();
    assert_eq!(welcome.workers, 2);
    conn
}

/// The next message that is not a heartbeat or a credit update.
async fn answer(conn: &mut Connection) -> Msg {
    loop {
        match tokio::time::timeout(DEADLINE, conn.expect_message()).await {
            Ok(Ok(Msg::Heartbeat | Msg::Credit(_))) => {}
            Ok(Ok(msg)) => return msg,
            other => panic!("no answer: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_a_chain_and_stops_when_told() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = NodeConfig {
        workers: 2,
        token: Some(Token::new(TOKEN)),
        ..NodeConfig::default()
    };
    let node = tokio::spawn(pcluster_node::run(listener, config, stop.clone()));

    // A probe asks for the status.
    let mut probe = connect(addr, Role::Probe).await;
    probe.write_message(&Msg::StatusRequest).await.unwrap();
    let Msg::Status(status) = answer(&mut probe).await else {
        panic!("expected a status");
    };
    assert_eq!((status.state, status.workers), (NodeState::Free, 2));

    // A root sets a chain up: a missing export is a setup error naming the task.
    let mut root = connect(addr, Role::Root).await;
    let setup = |function| {
        Msg::Setup(Box::new(Setup {
            session: SessionId(1),
            chain: chain(function),
            // Failures then carry the whole item, for a root that tries items again.
            send_failed_items: true,
            tagged_items: false,
            withheld: Vec::new(),
            rtt_us: 0,
        }))
    };
    root.write_message(&setup("whisper")).await.unwrap();
    match answer(&mut root).await {
        Msg::Error(WireError {
            kind: ErrorKind::Setup,
            message,
        }) => assert!(message.contains("task 0 `whisper`"), "{message}"),
        other => panic!("expected a setup error, got {other:?}"),
    }
    root.write_message(&setup("shout")).await.unwrap();
    let Msg::SetupDone(done) = answer(&mut root).await else {
        panic!("expected SetupDone");
    };
    assert!(done.credit.items > 0);

    // A batch within the credit: outputs come with each input's completion; the failing
    // item fails alone, naming its task.
    let items: Packed = ["hello", "xylophone", "world"].into_iter().collect();
    let batch = Items {
        seq: 1,
        ids: Ids::Range { start: 0, count: 3 },
        items,
        stage: TaskIndex(0),
    };
    root.write_message(&Msg::Items(batch)).await.unwrap();
    let (mut outputs, mut failures, mut done) = (Vec::new(), Vec::new(), 0);
    while done < 3 {
        let Msg::Outputs(o) = answer(&mut root).await else {
            panic!("expected outputs");
        };
        done += o.counts.0.len();
        outputs.extend(o.items.iter().map(<[u8]>::to_vec));
        failures.extend(o.failures);
    }
    assert_eq!(outputs, [&b"hello!"[..], b"world!"]);
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].index, 1);
    assert_eq!(
        failures[0].task.as_ref().map(|t| t.name.as_str()),
        Some("shout")
    );
    assert_eq!(failures[0].message, "no x please");
    assert_eq!(failures[0].item.as_deref(), Some(&b"xylophone"[..]));

    // The root says goodbye; the node is free again. Then the node stops when told.
    root.write_message(&Msg::Bye).await.unwrap();
    // The node frees itself, then closes the connection: its close is the signal.
    let closed = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(_)) = root.read_message().await {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the node closes the connection after the goodbye"
    );
    probe.write_message(&Msg::StatusRequest).await.unwrap();
    assert!(
        matches!(answer(&mut probe).await, Msg::Status(s) if s.state == NodeState::Free),
        "the node is free after the root's goodbye"
    );
    stop.cancel();
    let stopped = tokio::time::timeout(DEADLINE, node).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}

#[test]
fn errors_are_typed_and_travel_as_wire_kinds() {
    let refusal = RequestError::from(SetupError::NoTasks);
    let wire = WireError::from(&refusal);
    assert_eq!(wire.kind, ErrorKind::Setup);
    assert_eq!(wire.message, "the chain has no tasks");
    let too_big = RequestError::ItemTooLarge { size: 10, limit: 8 };
    assert_eq!(WireError::from(&too_big).kind, ErrorKind::TooLarge);
}
