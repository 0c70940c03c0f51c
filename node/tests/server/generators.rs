//! Generators declared by the module: a task the module lists in its `pcluster.generators`
//! section must be declared a generator in the chain, or the setup fails naming it; without
//! the section the chain is trusted and a second emit fails the item at run time.

use protocol::handshake::Role;
use protocol::{ErrorKind, Ids, Items, Msg, Packed};

use crate::common::*;

/// `twice` emits each item twice; `once` emits it once.
const TASKS: &str = r#"
  (func (export "twice") (param $len i32) (result i32)
    (call $emit (i32.const 1024) (local.get $len))
    (call $emit (i32.const 1024) (local.get $len))
    (i32.const 0))
  (func (export "once") (param $len i32) (result i32)
    (call $emit (i32.const 1024) (local.get $len))
    (i32.const 0))
"#;

fn with_section() -> Vec<u8> {
    wat_module(&format!(
        r#"{TASKS} (@custom "pcluster.generators" "twice\n")"#
    ))
}

#[tokio::test]
async fn a_listed_generator_must_be_declared_one() {
    let node = start(config(None)).await;
    let mut root = connect(node.addr, Role::Root, None, None).await.unwrap();
    let chain = chain_of(with_section(), &[("once", false), ("twice", false)]);
    match setup(&mut root, 1, chain).await {
        Msg::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Setup);
            assert!(
                e.message.contains(
                    "task `twice` is a generator: set `generator = true` in its chain entry"
                ),
                "{}",
                e.message
            );
        }
        other => panic!("expected a setup error, got {other:?}"),
    }
    // Declared: the same module sets up, and an unlisted task need not be a generator.
    let chain = chain_of(with_section(), &[("once", false), ("twice", true)]);
    assert!(matches!(
        setup(&mut root, 1, chain).await,
        Msg::SetupDone(_)
    ));
}

#[tokio::test]
async fn without_the_section_the_run_time_check_stays() {
    let node = start(config(None)).await;
    let mut root = connect(node.addr, Role::Root, None, None).await.unwrap();
    let chain = chain_of(wat_module(TASKS), &[("twice", false)]);
    assert!(matches!(
        setup(&mut root, 1, chain).await,
        Msg::SetupDone(_)
    ));
    let items = Items {
        seq: 1,
        ids: Ids::Range { start: 0, count: 1 },
        items: ["a"].into_iter().collect::<Packed>(),
        stage: protocol::TaskIndex(0),
    };
    root.conn.write_message(&Msg::Items(items)).await.unwrap();
    match answer(&mut root.conn).await {
        Msg::Outputs(o) => {
            assert_eq!(o.counts.0, [0]);
            assert_eq!(o.failures.len(), 1);
            assert!(
                o.failures[0].message.contains("is not a generator"),
                "{}",
                o.failures[0].message
            );
        }
        other => panic!("expected outputs, got {other:?}"),
    }
}
