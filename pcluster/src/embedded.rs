//! The embedded local cluster: a log server and nodes inside this process on loopback, used
//! by `pcluster run` when no `--nodes` or `--scan` is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A log server and nodes running inside this process on loopback.
pub struct LocalCluster {
    pub log: SocketAddr,
    pub nodes: Vec<SocketAddr>,
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LocalCluster {
    /// Starts a log server writing to `log_file` and `nodes` nodes with `workers` workers
    /// each, all on 127.0.0.1 with free ports.
    pub async fn start(
        log_file: PathBuf,
        nodes: usize,
        workers: u32,
        token: Option<protocol::auth::Token>,
    ) -> anyhow::Result<LocalCluster> {
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let log = listener.local_addr()?;
        let config = logserver::ServerConfig {
            outfile: log_file,
            echo_stdout: false,
            // The root's log client proves the cluster token, so the embedded server asks it.
            token: token.clone(),
            ..Default::default()
        };
        let s = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = logserver::run(listener, config, s).await {
                tracing::error!("embedded log server: {e}");
            }
        }));
        let mut addrs = Vec::new();
        for _ in 0..nodes {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            let config = node::NodeConfig {
                workers,
                token: token.clone(),
                // The user's own code on the user's own machine, behind a fresh token.
                native: node::native::NativeConfig {
                    allow: token.is_some(),
                    ..Default::default()
                },
                ..Default::default()
            };
            let s = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = node::run(listener, config, s).await {
                    tracing::error!("embedded node: {e}");
                }
            }));
        }
        Ok(LocalCluster {
            log,
            nodes: addrs,
            shutdown,
            tasks,
        })
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}
