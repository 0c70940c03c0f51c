//! Who holds a node: one root at a time, told apart by connection; an orphaned node is free
//! for a new root at once; `Release` frees a node from a live but stuck root; the claim is
//! atomic when roots race.

use protocol::handshake::Role;
use protocol::{ErrorKind, Ids, Items, Msg, NodeState, Packed, ProtocolError, SessionId};

use crate::common::*;

fn busy_holder(msg: &Msg) -> Option<&protocol::Holder> {
    match msg {
        Msg::Error(e) => match &e.kind {
            ErrorKind::Busy(holder) => Some(holder),
            _ => None,
        },
        _ => None,
    }
}

/// Sends one item and returns its outputs.
async fn one_item(client: &mut Client, seq: u64, item: &[u8]) -> Vec<Vec<u8>> {
    let items = Items {
        seq,
        ids: Ids::Range { start: 0, count: 1 },
        items: [item].into_iter().collect::<Packed>(),
        stage: protocol::TaskIndex(0),
    };
    client
        .conn
        .write_message(&Msg::Items(items))
        .await
        .expect("send items");
    match answer(&mut client.conn).await {
        Msg::Outputs(o) => o.items.iter().map(<[u8]>::to_vec).collect(),
        other => panic!("expected outputs, got {other:?}"),
    }
}

#[tokio::test]
async fn another_root_is_told_who_holds_the_node_and_cannot_touch_it() {
    let node = start(config(None)).await;
    let mut owner = connect(node.addr, Role::Root, None, None).await.unwrap();
    assert_eq!(owner.welcome.busy_with, None);
    assert!(matches!(
        setup(&mut owner, 1, identity_chain()).await,
        Msg::SetupDone(_)
    ));

    let mut other = connect(node.addr, Role::Root, None, None).await.unwrap();
    let holder = other
        .welcome
        .busy_with
        .clone()
        .expect("told the node is busy");
    assert_eq!(holder.root, owner.local.to_string());
    let refused = setup(&mut other, 2, identity_chain()).await;
    assert_eq!(
        busy_holder(&refused).map(|h| &h.root),
        Some(&holder.root),
        "{refused:?}"
    );
    for msg in [Msg::Reset, Msg::Pause, Msg::Resume] {
        other.conn.write_message(&msg).await.unwrap();
        let answer = answer(&mut other.conn).await;
        assert!(busy_holder(&answer).is_some(), "{msg:?}: {answer:?}");
    }

    // The owner's chain is untouched and still runs.
    let s = status(node.addr, None).await;
    assert_eq!(s.state, NodeState::Busy);
    assert_eq!(s.root, Some(owner.local.to_string()));
    assert_eq!(s.chain, Some(("test".into(), "1".into())));
    assert_eq!(
        one_item(&mut owner, 1, b"still mine").await,
        [b"still mine"]
    );
}

#[tokio::test]
async fn a_node_whose_root_is_gone_takes_a_new_root_at_once() {
    // A grace period longer than the test: the takeover cannot be waiting for its end.
    let node = start(pcluster_node::NodeConfig {
        orphan_grace: std::time::Duration::from_secs(600),
        ..config(None)
    })
    .await;
    let mut first = connect(node.addr, Role::Root, None, None).await.unwrap();
    assert!(matches!(
        setup(&mut first, 1, identity_chain()).await,
        Msg::SetupDone(_)
    ));
    drop(first);
    wait_for("the node to see its root gone", || async {
        status(node.addr, None).await.state == NodeState::Orphaned
    })
    .await;

    let mut second = connect(node.addr, Role::Root, None, None).await.unwrap();
    assert_eq!(second.welcome.busy_with, None, "an orphaned node is free");
    assert!(matches!(
        setup(&mut second, 2, identity_chain()).await,
        Msg::SetupDone(_)
    ));
    let s = status(node.addr, None).await;
    assert_eq!(s.state, NodeState::Busy);
    assert_eq!(s.root, Some(second.local.to_string()));
    assert_eq!(one_item(&mut second, 1, b"x").await, [b"x"]);
}

#[tokio::test]
async fn the_same_session_on_a_new_connection_takes_its_node_back() {
    let node = start(config(None)).await;
    let mut old = connect(node.addr, Role::Root, None, None).await.unwrap();
    assert!(matches!(
        setup(&mut old, 7, identity_chain()).await,
        Msg::SetupDone(_)
    ));
    // The node still sees the old connection alive, as after a network cut it has not
    // noticed yet.
    let mut new = connect(node.addr, Role::Root, None, Some(SessionId(7)))
        .await
        .unwrap();
    assert_eq!(new.welcome.busy_with, None);
    assert!(matches!(
        setup(&mut new, 7, identity_chain()).await,
        Msg::SetupDone(_)
    ));
    assert!(closed(&mut old.conn).await, "the old connection is closed");
    assert_eq!(one_item(&mut new, 1, b"y").await, [b"y"]);
}

#[tokio::test]
async fn release_frees_the_node_and_closes_the_holders_connection() {
    let token = Some("s3cret");
    let node = start(config(token)).await;
    let mut owner = connect(node.addr, Role::Root, token, None).await.unwrap();
    assert!(matches!(
        setup(&mut owner, 1, identity_chain()).await,
        Msg::SetupDone(_)
    ));

    // Without the token there is no connection to send a release on.
    let stranger = connect(node.addr, Role::Probe, None, None).await;
    assert!(matches!(stranger, Err(ProtocolError::Auth(_))));

    let mut probe = connect(node.addr, Role::Probe, token, None).await.unwrap();
    probe.conn.write_message(&Msg::Release).await.unwrap();
    match answer(&mut probe.conn).await {
        Msg::Released(r) => {
            let holder = r.was_held_by.expect("someone held the node");
            assert_eq!(holder.root, owner.local.to_string());
        }
        other => panic!("expected Released, got {other:?}"),
    }
    assert!(
        closed(&mut owner.conn).await,
        "the holder's connection is closed, so its root sees the node lost"
    );
    let s = status(node.addr, token).await;
    assert_eq!((s.state, s.root, s.chain), (NodeState::Free, None, None));

    probe.conn.write_message(&Msg::Release).await.unwrap();
    assert_eq!(
        answer(&mut probe.conn).await,
        Msg::Released(protocol::Released { was_held_by: None })
    );
    let mut next = connect(node.addr, Role::Root, token, None).await.unwrap();
    assert!(matches!(
        setup(&mut next, 2, identity_chain()).await,
        Msg::SetupDone(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_roots_claim_the_node_exactly_once() {
    let node = start(config(None)).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(connect(node.addr, Role::Root, None, None).await.unwrap());
    }
    let chain = identity_chain();
    let mut race = tokio::task::JoinSet::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let chain = chain.clone();
        race.spawn(async move {
            let answer = setup(&mut c, i as u64 + 100, chain).await;
            (c, answer)
        });
    }
    let answers: Vec<(Client, Msg)> = race.join_all().await;
    let won: Vec<&(Client, Msg)> = answers
        .iter()
        .filter(|(_, a)| matches!(a, Msg::SetupDone(_)))
        .collect();
    assert_eq!(
        won.len(),
        1,
        "{:?}",
        answers.iter().map(|a| &a.1).collect::<Vec<_>>()
    );
    let winner = won[0].0.local.to_string();
    for (c, a) in &answers {
        if c.local.to_string() != winner {
            assert_eq!(busy_holder(a).map(|h| &h.root), Some(&winner), "{a:?}");
        }
    }
    assert_eq!(status(node.addr, None).await.root, Some(winner));
}
