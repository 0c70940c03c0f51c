//! Native Python tasks from the node's side, against a root that does not play by the rules:
//! a node not started with `--allow-native` refuses Python sources even when the root leaves
//! the `native` label off their task (so placement let them through), saying why; and a node
//! that allows them refuses a bundle whose paths would leave its directory.

use protocol::native::{NativeBundle, NativeFile};
use protocol::{ChainSpec, Limits, TaskSpec};

use crate::common::{local_node, root_with, setup_collect};

fn bundle_chain(path: &str) -> ChainSpec {
    let bundle = NativeBundle {
        module: "tasks".into(),
        requirements: Vec::new(),
        files: vec![NativeFile {
            path: path.into(),
            bytes: b"def f(item):\n    return item\n".to_vec(),
        }],
    };
    ChainSpec {
        name: "native".into(),
        version: "1".into(),
        modules: vec![serde_bytes::ByteBuf::from(bundle.encode())],
        tasks: vec![TaskSpec {
            function: "f".into(),
            module: 0,
            generator: false,
            args: Vec::new(),
            next: None,
            // No `native` label: a root that should not have sent it here.
            labels: Vec::new(),
        }],
        limits: Limits::default(),
    }
}

#[tokio::test]
async fn a_node_without_allow_native_refuses_python_sources_whatever_the_root_says() {
    let (addr, stop) = local_node("127.0.0.1", 0, 1, None).await;
    let root = root_with(&[addr]).await;
    let Err(err) = setup_collect(&root, bundle_chain("tasks/__init__.py")).await else {
        panic!("the setup is accepted");
    };
    let message = err.to_string();
    assert!(
        message.contains("does not run native Python tasks"),
        "{message}"
    );
    assert!(message.contains("--allow-native"), "{message}");
    root.close().await.unwrap();
    stop.cancel();
}

#[test]
fn a_bundle_that_would_write_outside_its_directory_is_refused() {
    let spec = bundle_chain("../escape.py");
    let natives = node::native::Natives::new(
        node::native::NativeConfig {
            allow: true,
            ..Default::default()
        },
        Some(&std::env::temp_dir().join(format!("pcluster-it-native-{}", std::process::id()))),
    );
    let err = natives
        .prepare(&spec.modules[0], &|_| ())
        .expect_err("refused");
    assert!(err.to_string().contains("unsafe path"), "{err}");
}
