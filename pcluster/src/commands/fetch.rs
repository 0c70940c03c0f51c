//! Reading a run's dashboard from another process: one `GET /api/status` over HTTP/1.1 (a
//! kept crate, hyper), its JSON read back into a [`Snapshot`]. `pcluster top --run` polls it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use root::dashboard::Snapshot;

/// The longest a fetch may take, connecting included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest snapshot read (50 failures and 50 log lines of 500 characters, many nodes).
const MAX_BODY: usize = 16 << 20;

/// The snapshot the dashboard at `addr` serves now.
///
/// # Errors
/// Unreachable, not a pcluster dashboard, or too slow.
pub async fn snapshot(addr: SocketAddr) -> anyhow::Result<Snapshot> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch(addr))
        .await
        .with_context(|| format!("the dashboard at {addr} did not answer within 5 s"))?
}

async fn fetch(addr: SocketAddr) -> anyhow::Result<Snapshot> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach the dashboard at {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection is driven beside the request, and ends with it.
    let driver = tokio::spawn(conn);
    // The dashboard answers only requests that name it by a loopback host unless public;
    // the address itself is such a name when it is loopback, and the host it was bound to
    // otherwise.
    let req = hyper::Request::get("/api/status")
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let res = sender.send_request(req).await?;
    if !res.status().is_success() {
        bail!("the dashboard at {addr} answered {}", res.status());
    }
    let body = Limited::new(res.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the dashboard at {addr}: {e}"))?
        .to_bytes();
    driver.abort();
    serde_json::from_slice(&body)
        .with_context(|| format!("{addr} does not serve a pcluster run's dashboard"))
}
