//! A hostile chain cannot take a node past `--memory-mb`. Tasks written by hand in WAT make
//! the host hold what the guest's own memory cap does not count: ten million empty outputs
//! from one call, a batch whose every item fails with a 4 MiB message, a module with four
//! memories. Each fails alone with a clear error while W1 items beside them in the same run
//! come out exact, and the node process's peak RSS (`VmHWM`) stays within its `--memory-mb`.

use std::net::SocketAddr;
use std::time::Duration;

use kit::{Field, Process, status_kib};
use root::{Limits, TaskSpec};
use tokio::time::timeout;

use crate::common::*;

const LONG: Duration = Duration::from_secs(120);
const NODE_MEMORY_MB: u64 = 512;

/// Items starting with `!` are attacks: `!e` emits ten million empty outputs, `!f` fails
/// with a 4 MiB message (through `emit_batch` in a batch, through `fail` alone); any other
/// item passes through unchanged. Inputs land at 64 KiB, records are built at 1 MiB, the
/// message lies at 2 MiB.
const HOSTILE: &str = r#"(module
  (import "pcluster" "emit" (func $emit (param i32 i32)))
  (import "pcluster" "fail" (func $fail (param i32 i32)))
  (import "pcluster" "emit_batch" (func $emit_batch (param i32 i32)))
  (memory (export "memory") 100)
  (func (export "pcluster_abi_version") (result i32) i32.const 1)
  (func (export "pcluster_input") (param i32) (result i32) i32.const 65536)
  (func (export "hostile") (param $len i32) (result i32) (local $i i32)
    (if (i32.eqz (local.get $len)) (then (call $emit (i32.const 65536) (i32.const 0)) (return (i32.const 0))))
    (if (i32.ne (i32.load8_u (i32.const 65536)) (i32.const 33))
      (then (call $emit (i32.const 65536) (local.get $len)) (return (i32.const 0))))
    (if (i32.eq (i32.load8_u (i32.const 65537)) (i32.const 101))
      (then
        (loop $l
          (call $emit (i32.const 0) (i32.const 0))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 10000000))))
        (return (i32.const 0))))
    (call $fail (i32.const 2097152) (i32.const 4194304))
    (i32.const 1))
  (func (export "pcluster_batch.hostile") (param $count i32) (param $len i32) (result i32)
    (local $i i32) (local $p i32) (local $n i32)
    (local.set $p (i32.add (i32.const 65536) (i32.mul (local.get $count) (i32.const 4))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $n (i32.load (i32.add (i32.const 65536) (i32.mul (local.get $i) (i32.const 4)))))
        (if (i32.and (i32.gt_u (local.get $n) (i32.const 0))
                     (i32.eq (i32.load8_u (local.get $p)) (i32.const 33)))
          (then
            (if (i32.eq (i32.load8_u (i32.add (local.get $p) (i32.const 1))) (i32.const 101))
              (then (return (i32.const 1))))
            (i32.store (i32.const 2097144) (local.get $i))
            (i32.store (i32.const 2097148) (i32.const 0x80400000))
            (call $emit_batch (i32.const 2097144) (i32.const 4194312)))
          (else
            (i32.store (i32.const 1048576) (local.get $i))
            (i32.store (i32.const 1048580) (local.get $n))
            (memory.copy (i32.const 1048584) (local.get $p) (local.get $n))
            (call $emit_batch (i32.const 1048576) (i32.add (local.get $n) (i32.const 8)))))
        (local.set $p (i32.add (local.get $p) (local.get $n)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0)))"#;

/// A module declaring four memories of 16 MiB, each growable.
const FOUR_MEMORIES: &str = r#"(module
  (import "pcluster" "emit" (func $emit (param i32 i32)))
  (memory (export "memory") 256)
  (memory $b 256) (memory $c 256) (memory $d 256)
  (func (export "pcluster_abi_version") (result i32) i32.const 1)
  (func (export "pcluster_input") (param i32) (result i32) i32.const 1024)
  (func (export "grow") (param $len i32) (result i32)
    (drop (memory.grow $b (i32.const 256)))
    (call $emit (i32.const 1024) (local.get $len))
    i32.const 0))"#;

fn task(function: &str, module: u32) -> TaskSpec {
    TaskSpec {
        function: function.into(),
        module,
        generator: function != "hostile",
        args: vec![],
        next: None,
        labels: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tasks_fail_alone_and_the_node_stays_within_its_memory() {
    let dir = temp_dir("hostile");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let memory = NODE_MEMORY_MB.to_string();
    let (node, port) = node_process("127.0.0.1", 0, log_port, 2, &["--memory-mb", &memory]).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let root = root_with(&[addr]).await;

    // The attacks first, then W1's three tasks: every W1 item passes the attacker.
    let mut spec = w1();
    spec.name = "hostile".into();
    spec.modules.push(wat::parse_str(HOSTILE).unwrap().into());
    spec.tasks.insert(0, task("hostile", 1));
    spec.limits = Limits {
        memory_mb: 32,
        ..Limits::default()
    };
    for t in &mut spec.tasks[1..] {
        t.generator = t.function == "w1_duplicate";
    }
    let c = setup_collect(&root, spec).await.unwrap();
    let n = 200_000;
    let mut inputs = w1_inputs(n);
    let attacks = ["!e", "!f", "!e", "!f"];
    for (k, attack) in attacks.iter().enumerate() {
        inputs.insert(k * 40_000 + 7, (*attack).to_string());
    }
    inputs.extend(std::iter::repeat_n("!f".to_string(), 300));
    root.feed(inputs).await.unwrap();
    timeout(LONG, root.wait_empty()).await.unwrap().unwrap();
    assert_same(&c.texts(), &w1_expected(n));
    let failures = c.failures();
    assert_eq!(
        failures.len(),
        attacks.len() + 300,
        "each attack fails alone"
    );
    for f in &failures {
        assert_eq!(f.task, "hostile");
        let said = if f.item_start == b"!e" {
            "outputs of this work unit exceed"
        } else {
            "[message of 4194304 bytes cut]"
        };
        assert!(
            f.message.contains(said) || f.message.contains("[cut]"),
            "{:?}: {:?}",
            String::from_utf8_lossy(&f.item_start),
            (f.message.len(), f.message.trim_start_matches('\0'))
        );
    }

    // More memories than one: refused at setup, saying why.
    let mut spec = chain("four", &[]);
    spec.modules = vec![wat::parse_str(FOUR_MEMORIES).unwrap().into()];
    spec.tasks = vec![task("grow", 0)];
    let err = setup_collect(&root, spec).await.err().expect("refused");
    assert!(err.to_string().contains("memor"), "{err}");

    // The node serves on: W1 exact.
    let mut spec = w1();
    spec.limits.memory_mb = 32;
    let c = setup_collect(&root, spec).await.unwrap();
    root.feed(w1_inputs(10_000)).await.unwrap();
    timeout(LONG, root.wait_empty()).await.unwrap().unwrap();
    assert_same(&c.texts(), &w1_expected(10_000));

    let peak = status_kib(Process::Pid(node.id()), Field::PeakRss).expect("VmHWM") / 1024;
    assert!(
        peak <= NODE_MEMORY_MB,
        "node peak RSS {peak} MiB > --memory-mb {NODE_MEMORY_MB}"
    );
}
