//! Per-task counters through the whole node: W1 with the real example tasks (whose SDK
//! exports batch entries, so the node runs them batched) on ten items, every counter exact.

use protocol::handshake::Role;
use protocol::{Ids, Items, Msg, Packed};

use crate::common::*;

#[tokio::test]
async fn w1_on_ten_items_counts_exactly() {
    let chain = w1_chain();
    let node = start(config(None)).await;
    let mut root = connect(node.addr, Role::Root, None, None).await.unwrap();
    assert!(matches!(
        setup(&mut root, 1, chain).await,
        Msg::SetupDone(_)
    ));
    let items: Packed = (0..10).map(|i| format!("item-{i}")).collect();
    let batch = Items {
        seq: 1,
        ids: Ids::Range {
            start: 0,
            count: 10,
        },
        items,
        stage: protocol::TaskIndex(0),
    };
    root.conn.write_message(&Msg::Items(batch)).await.unwrap();
    let mut outputs = Vec::new();
    let mut done = 0;
    while done < 10 {
        match answer(&mut root.conn).await {
            Msg::Outputs(o) => {
                assert!(o.failures.is_empty(), "{:?}", o.failures);
                done += o.counts.0.len();
                outputs.extend(
                    o.items
                        .iter()
                        .map(|i| String::from_utf8_lossy(i).into_owned()),
                );
            }
            other => panic!("expected outputs, got {other:?}"),
        }
    }
    outputs.sort();
    let expected: Vec<String> = ["item-0", "item-2", "item-4", "item-6", "item-8"]
        .iter()
        .flat_map(|s| [s.to_string(), s.to_string()])
        .collect();
    assert_eq!(outputs, expected);

    let tasks = status(node.addr, None).await.tasks;
    let counts: Vec<_> = tasks
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
        .collect();
    assert_eq!(
        counts,
        [
            ("w1_identity", 10, 10, 0, 0),
            ("w1_duplicate", 10, 20, 0, 0),
            ("w1_drop_odd", 20, 10, 10, 0),
        ]
    );
}
