//! Unit tests of the worker: a unit of W1-like chains (WAT modules with and without batch
//! exports) through one worker in the test's thread, checking outputs, failures and every
//! per-task counter exactly.

use std::sync::Arc;

use protocol::{ChainSpec, Limits, Outputs, Packed, TaskCounters, TaskSpec};

use super::pool::PoolShared;
use super::thread::Worker;
use super::{Batch, Unit};
use crate::engine::compile_local;

/// Tasks `identity`, `duplicate`, `drop_odd` and `fail_odd` (odd = the item's last byte is
/// odd, as for `item-3`), each as a plain export and, when `batched`, as a batch export.
fn w1_module(batched: bool) -> Vec<u8> {
    let tasks = ["identity", "duplicate", "drop_odd", "fail_odd"];
    let mut exports = String::new();
    for (mode, name) in tasks.iter().enumerate() {
        exports += &format!(
            r#"(func (export "{name}") (param i32) (result i32)
                 (call $single (local.get 0) (i32.const {mode})))"#
        );
        if batched {
            exports += &format!(
                r#"(func (export "pcluster_batch.{name}") (param i32 i32) (result i32)
                     (call $batch (local.get 0) (local.get 1) (i32.const {mode})))"#
            );
        }
    }
    let wat = format!(
        r#"(module
  (import "pcluster" "emit" (func $emit (param i32 i32)))
  (import "pcluster" "fail" (func $fail (param i32 i32)))
  (import "pcluster" "emit_batch" (func $emit_batch (param i32 i32)))
  (memory (export "memory") 4)
  (data (i32.const 16) "odd")
  (func (export "pcluster_abi_version") (result i32) (i32.const 1))
  (func (export "pcluster_input") (param i32) (result i32) (i32.const 1024))
  ;; How many times to emit an item at $ptr of $len bytes: 1, 2, 1 or 0, 1 or -1 (fail).
  (func $reps (param $ptr i32) (param $len i32) (param $mode i32) (result i32)
    (local $odd i32)
    (local.set $odd
      (i32.and (i32.load8_u (i32.sub (i32.add (local.get $ptr) (local.get $len)) (i32.const 1)))
               (i32.const 1)))
    (if (result i32) (i32.eq (local.get $mode) (i32.const 0)) (then (i32.const 1))
      (else (if (result i32) (i32.eq (local.get $mode) (i32.const 1)) (then (i32.const 2))
        (else (if (result i32) (i32.eq (local.get $mode) (i32.const 2))
          (then (i32.xor (local.get $odd) (i32.const 1)))
          (else (if (result i32) (local.get $odd) (then (i32.const -1)) (else (i32.const 1))))))))))
  (func $single (param $len i32) (param $mode i32) (result i32)
    (local $reps i32)
    (local.set $reps (call $reps (i32.const 1024) (local.get $len) (local.get $mode)))
    (if (i32.eq (local.get $reps) (i32.const -1))
      (then (call $fail (i32.const 16) (i32.const 3)) (return (i32.const 1))))
    (block $done (loop $again
      (br_if $done (i32.eqz (local.get $reps)))
      (call $emit (i32.const 1024) (local.get $len))
      (local.set $reps (i32.sub (local.get $reps) (i32.const 1)))
      (br $again)))
    (i32.const 0))
  ;; Lengths at 1024, items after them; records written after the items.
  (func $batch (param $count i32) (param $len i32) (param $mode i32) (result i32)
    (local $i i32) (local $item i32) (local $n i32) (local $out i32) (local $start i32)
    (local $reps i32)
    (local.set $item (i32.add (i32.const 1024) (i32.shl (local.get $count) (i32.const 2))))
    (local.set $out (i32.add (i32.const 1024) (local.get $len)))
    (local.set $start (local.get $out))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
      (local.set $n (i32.load (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 2)))))
      (local.set $reps (call $reps (local.get $item) (local.get $n) (local.get $mode)))
      (if (i32.eq (local.get $reps) (i32.const -1))
        (then
          (i32.store (local.get $out) (local.get $i))
          (i32.store (i32.add (local.get $out) (i32.const 4)) (i32.const 0x80000003))
          (memory.copy (i32.add (local.get $out) (i32.const 8)) (i32.const 16) (i32.const 3))
          (local.set $out (i32.add (local.get $out) (i32.const 11)))
          (local.set $reps (i32.const 0))))
      (block $emitted (loop $rep
        (br_if $emitted (i32.eqz (local.get $reps)))
        (i32.store (local.get $out) (local.get $i))
        (i32.store (i32.add (local.get $out) (i32.const 4)) (local.get $n))
        (memory.copy (i32.add (local.get $out) (i32.const 8)) (local.get $item) (local.get $n))
        (local.set $out (i32.add (local.get $out) (i32.add (i32.const 8) (local.get $n))))
        (local.set $reps (i32.sub (local.get $reps) (i32.const 1)))
        (br $rep)))
      (local.set $item (i32.add (local.get $item) (local.get $n)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (call $emit_batch (local.get $start) (i32.sub (local.get $out) (local.get $start)))
    (i32.const 0))
  {exports})"#
    );
    wat::parse_str(wat).expect("valid WAT")
}

/// Runs `item-0` … `item-9` as one unit through `tasks` (`(function, generator)`), batched
/// or not, on a worker that never splits a fan-out; returns the outputs and each task's
/// counters.
fn run_ten(batched: bool, tasks: &[(&str, bool)]) -> (Outputs, Vec<TaskCounters>) {
    run_ten_on(batched, tasks, false)
}

/// As [`run_ten`], on a worker of a node's pool (with no other worker idle) when `pool`.
fn run_ten_on(batched: bool, tasks: &[(&str, bool)], pool: bool) -> (Outputs, Vec<TaskCounters>) {
    let spec = ChainSpec {
        name: "w1".into(),
        version: "1".into(),
        modules: vec![w1_module(batched).into()],
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
    };
    let chain = compile_local(&spec).expect("compiles");
    // In a pool, nothing measured yet (so the cost of what follows a generator is unknown).
    let mut shared = PoolShared::new(Arc::new(chain), 1, if pool { None } else { Some(1) });
    shared.hand_back = pool;
    // The worker running the unit is busy: no other is idle.
    shared.idle.store(0, std::sync::atomic::Ordering::Relaxed);
    let shared = Arc::new(shared);
    let mut worker = Worker::new(shared.clone(), 0, "test".into()).expect("instantiates");
    let (tx, _rx) = crossbeam_channel::bounded(1);
    let items: Packed = (0..10).map(|i| format!("item-{i}")).collect();
    let unit = Unit {
        batch: Arc::new(Batch {
            seq: 0,
            items,
            stage: 0,
            held: Default::default(),
        }),
        first: 0,
        count: 10,
        byte_start: 0,
    };
    let outputs = worker
        .run_unit(&unit, &tx)
        .expect("with no other worker idle, nothing is left to others");
    (outputs, shared.task_counters())
}

/// `(name, in, out, dropped, failed)` of each task.
fn counts(tasks: &[TaskCounters]) -> Vec<(&str, u64, u64, u64, u64)> {
    tasks
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.items_in,
                t.items_out,
                t.dropped,
                t.failed,
            )
        })
        .collect()
}

const W1: [(&str, bool); 3] = [
    ("identity", false),
    ("duplicate", true),
    ("drop_odd", false),
];

#[test]
fn w1_counters_are_exact_item_by_item_and_batched() {
    for batched in [false, true] {
        let (out, tasks) = run_ten(batched, &W1);
        assert_eq!(
            counts(&tasks),
            [
                ("identity", 10, 10, 0, 0),
                ("duplicate", 10, 20, 0, 0),
                ("drop_odd", 20, 10, 10, 0),
            ],
            "batched: {batched}"
        );
        assert_eq!(out.counts.0, [2, 0, 2, 0, 2, 0, 2, 0, 2, 0]);
        assert!(out.failures.is_empty());
    }
}

#[test]
fn failed_items_count_as_failed_not_dropped() {
    let tasks = [
        ("duplicate", true),
        ("fail_odd", false),
        ("drop_odd", false),
    ];
    for batched in [false, true] {
        let (out, tasks) = run_ten(batched, &tasks);
        assert_eq!(
            counts(&tasks),
            [
                ("duplicate", 10, 20, 0, 0),
                ("fail_odd", 20, 10, 0, 10),
                ("drop_odd", 10, 10, 0, 0),
            ],
            "batched: {batched}"
        );
        assert_eq!(out.failures.len(), 10);
        assert!(out.failures.iter().all(|f| f.message == "odd"), "{out:?}");
    }
}

#[test]
fn a_task_that_is_no_generator_fails_items_it_emits_twice_for() {
    for batched in [false, true] {
        let (out, tasks) = run_ten(batched, &[("duplicate", false)]);
        assert_eq!(
            counts(&tasks),
            [("duplicate", 10, 0, 0, 10)],
            "batched: {batched}"
        );
        assert!(
            out.failures
                .iter()
                .all(|f| f.message.contains("is not a generator")),
            "{out:?}"
        );
    }
}

#[test]
fn units_and_credit_follow_the_measured_speed_within_bounds() {
    let spec = ChainSpec {
        name: "c".into(),
        version: "1".into(),
        modules: vec![w1_module(false).into()],
        tasks: vec![TaskSpec {
            function: "identity".into(),
            module: 0,
            generator: false,
            args: Vec::new(),
            next: None,
            labels: Vec::new(),
        }],
        limits: Limits::default(),
    };
    let chain = compile_local(&spec).expect("compiles");
    let chain = Arc::new(chain);
    // (ns per item) -> (unit size, credit items) for two workers.
    for (avg, unit, items) in [
        (Some(1_000), 2_000, 100_000),
        (Some(1), 4_096, 2 * 512 * 1024),
        (Some(1_000_000_000), 1, 2),
        (None, 1, 4),
    ] {
        let shared = PoolShared::new(chain.clone(), 2, avg);
        assert_eq!(shared.unit_size(), unit, "{avg:?} ns");
        let credit = shared.credit();
        assert_eq!(credit.items, items, "{avg:?} ns");
        assert_eq!(credit.bytes, 32 << 20);
    }
    // A root 50 ms away: the window covers the round trip too.
    let shared = PoolShared::new(chain, 2, Some(1_000));
    shared
        .rtt_ns
        .store(50_000_000, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(shared.credit().items, 200_000);
}

#[test]
fn a_fan_out_past_what_the_worker_finishes_soon_goes_back_as_continuations() {
    // `duplicate` emits 20 items; `identity` after it was never measured, so the worker keeps
    // a few and hands the rest back, each run tagged with its input and the next task.
    let (out, tasks) = run_ten_on(false, &[("duplicate", true), ("identity", false)], true);
    let kept = out.items.len();
    let handed: usize = out.continuations.iter().map(|c| c.items.len()).sum();
    assert_eq!((kept, handed), (super::grant::KEEP_UNKNOWN, 20 - kept));
    assert_eq!(out.counts.0.iter().sum::<u32>() as usize, kept);
    assert!(
        out.continuations
            .iter()
            .all(|c| c.stage == protocol::TaskIndex(1) && c.index < 10),
        "{out:?}"
    );
    // Inputs of handed-back items are those past the kept ones, in order.
    let inputs: Vec<u32> = out.continuations.iter().map(|c| c.index).collect();
    assert_eq!(inputs, (2..10).collect::<Vec<u32>>());
    assert_eq!(
        counts(&tasks)[1].1,
        kept as u64,
        "identity ran on the kept items only"
    );
}
