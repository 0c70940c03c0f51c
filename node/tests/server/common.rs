//! Helpers of the node's integration tests: a node on 127.0.0.1:0, clients speaking the
//! protocol by hand, WAT chains, and waits on a condition with a deadline.

#![allow(dead_code)] // Not every test module uses every helper.

use std::net::SocketAddr;
use std::time::Duration;

use pcluster_node::NodeConfig;
use protocol::auth::Token;
use protocol::handshake::{self, Role};
use protocol::{
    ChainSpec, Connection, Limits, Msg, NodeStatus, ProtocolError, SessionId, TaskSpec, Welcome,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long any wait of these tests may take before it counts as a failure.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A node running in this process; stopped when dropped.
pub struct TestNode {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a node on a free loopback port.
pub async fn start(config: NodeConfig) -> TestNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let stop = CancellationToken::new();
    tokio::spawn(pcluster_node::run(listener, config, stop.clone()));
    TestNode { addr, stop }
}

/// One worker, and a token when given.
pub fn config(token: Option<&str>) -> NodeConfig {
    NodeConfig {
        workers: 1,
        token: token.map(Token::new),
        ..NodeConfig::default()
    }
}

/// A client connection after its handshake.
pub struct Client {
    pub conn: Connection,
    pub welcome: Welcome,
    /// The client's own address: what the node calls this root.
    pub local: SocketAddr,
}

/// Connects to `addr` in `role`.
pub async fn connect(
    addr: SocketAddr,
    role: Role,
    token: Option<&str>,
    resume: Option<SessionId>,
) -> Result<Client, ProtocolError> {
    let stream = TcpStream::connect(addr).await?;
    let local = stream.local_addr()?;
    let token = token.map(Token::new);
    let (conn, welcome) =
        handshake::connect(stream, role, token.as_ref(), resume, 64 << 20, DEADLINE).await?;
    Ok(Client {
        conn,
        welcome,
        local,
    })
}

/// The node's next message that is not a heartbeat or a credit update.
pub async fn answer(conn: &mut Connection) -> Msg {
    let wait = async {
        loop {
            match conn.expect_message().await {
                Ok(Msg::Heartbeat | Msg::Credit(_)) => {}
                Ok(m) => return m,
                Err(e) => panic!("connection failed while waiting for an answer: {e}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("an answer within the deadline")
}

/// Whether the node closes `conn` within the deadline (reading past its messages).
pub async fn closed(conn: &mut Connection) -> bool {
    let wait = async {
        loop {
            match conn.read_message().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait).await.is_ok()
}

/// Sends a setup of `chain` as `session` and returns the node's answer.
pub async fn setup(client: &mut Client, session: u64, chain: ChainSpec) -> Msg {
    let setup = protocol::Setup {
        session: SessionId(session),
        chain,
        send_failed_items: false,
        tagged_items: false,
        withheld: Vec::new(),
        rtt_us: 0,
    };
    client
        .conn
        .write_message(&Msg::Setup(Box::new(setup)))
        .await
        .expect("send setup");
    answer(&mut client.conn).await
}

/// The node's status over a probe connection.
pub async fn status(addr: SocketAddr, token: Option<&str>) -> NodeStatus {
    let mut probe = connect(addr, Role::Probe, token, None)
        .await
        .expect("probe connects");
    probe
        .conn
        .write_message(&Msg::StatusRequest)
        .await
        .expect("ask status");
    match answer(&mut probe.conn).await {
        Msg::Status(s) => *s,
        other => panic!("expected a status, got {other:?}"),
    }
}

/// Polls `f` until it holds; panics naming `what` after the deadline.
pub async fn wait_for<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if let Err(e) = kit::poll(DEADLINE, what, f).await {
        panic!("{e}");
    }
}

/// The ABI's plumbing every WAT task module needs: memory, version, an input buffer at 1024
/// that grows the memory as needed, and the three imports.
const WAT_PRELUDE: &str = r#"
  (import "pcluster" "emit" (func $emit (param i32 i32)))
  (import "pcluster" "fail" (func $fail (param i32 i32)))
  (import "pcluster" "emit_batch" (func $emit_batch (param i32 i32)))
  (memory (export "memory") 2)
  (func (export "pcluster_abi_version") (result i32) (i32.const 1))
  (func (export "pcluster_input") (param $len i32) (result i32)
    (local $missing i32)
    (local.set $missing
      (i32.sub
        (i32.shr_u (i32.add (local.get $len) (i32.const 66559)) (i32.const 16))
        (memory.size)))
    (if (i32.gt_s (local.get $missing) (i32.const 0))
      (then
        (if (i32.eq (memory.grow (local.get $missing)) (i32.const -1))
          (then unreachable))))
    (i32.const 1024))
"#;

/// A WAT module: the prelude plus `body` (task functions, custom sections).
pub fn wat_module(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {WAT_PRELUDE} {body})")).expect("valid WAT")
}

/// `identity`: emits each item as it is.
pub const IDENTITY: &str = r#"
  (func (export "identity") (param $len i32) (result i32)
    (call $emit (i32.const 1024) (local.get $len))
    (i32.const 0))
"#;

/// A chain of `(function, generator)` tasks of one module.
pub fn chain_of(module: Vec<u8>, tasks: &[(&str, bool)]) -> ChainSpec {
    ChainSpec {
        name: "test".into(),
        version: "1".into(),
        modules: vec![module.into()],
        tasks: tasks
            .iter()
            .map(|&(function, generator)| TaskSpec {
                function: function.into(),
                module: 0,
                generator,
                args: Vec::new(),
                next: None,
                labels: Vec::new(),
            })
            .collect(),
        limits: Limits::default(),
    }
}

/// The one-task identity chain.
pub fn identity_chain() -> ChainSpec {
    chain_of(wat_module(IDENTITY), &[("identity", false)])
}

/// The bytes of the real example tasks (`tasks-example`, built for wasm32 with cargo when
/// out of date; a no-op when fresh). Needs the `wasm32-unknown-unknown` target.
pub fn tasks_example_wasm() -> Vec<u8> {
    static WASM: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    WASM.get_or_init(|| {
        let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tasks-example");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
            .current_dir(&crate_dir)
            // The example tasks are a workspace of their own, with their own target dir.
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("run cargo for tasks-example");
        assert!(
            status.success(),
            "building tasks-example failed ({status}); is the wasm32-unknown-unknown target \
             installed? (rustup target add wasm32-unknown-unknown)"
        );
        let wasm = crate_dir.join("target/wasm32-unknown-unknown/release/tasks_example.wasm");
        std::fs::read(&wasm).expect("read tasks_example.wasm")
    })
    .clone()
}

/// W1 as in the README: `w1_identity → w1_duplicate (generator) → w1_drop_odd`.
pub fn w1_chain() -> ChainSpec {
    chain_of(
        tasks_example_wasm(),
        &[
            ("w1_identity", false),
            ("w1_duplicate", true),
            ("w1_drop_odd", false),
        ],
    )
}
