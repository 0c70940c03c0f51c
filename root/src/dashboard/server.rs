//! The dashboard's HTTP server: the page (`/`, embedded in the binary), the snapshot as JSON
//! (`/api/status`) and as server-sent events (`/api/events`, one a poll). Read-only: it
//! takes no input beyond the path, and knows nothing of the cluster token.
//!
//! Bounded: a semaphore is taken before each accept (connections at once) and before each
//! event stream. Unless served publicly it answers only requests whose `Host` is a loopback
//! name, so a web page elsewhere cannot read it through DNS rebinding.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::monitor::Monitor;
use super::snapshot::Snapshot;
use crate::RootError;

/// The page, with its script and style inline: nothing is fetched from elsewhere.
const PAGE: &str = include_str!("page.html");
/// Connections served at once.
const CONNECTIONS: usize = 128;
/// Event streams open at once.
const STREAMS: usize = 32;
/// What the page may do: its own inline script and style, and requests to this server.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'";

#[derive(Clone)]
struct App {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    streams: Arc<Semaphore>,
    public: bool,
}

/// Binds `addr` and serves the monitor's snapshots until the monitor stops; returns the
/// bound address.
///
/// # Errors
/// `addr` is not loopback and `public` is false, or it cannot be bound.
pub async fn serve(
    monitor: Monitor,
    addr: SocketAddr,
    public: bool,
) -> Result<SocketAddr, RootError> {
    if !public && !addr.ip().is_loopback() {
        return Err(RootError::DashboardNotLoopback { addr });
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RootError::DashboardBind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| RootError::DashboardBind { addr, source })?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            "dashboard on http://{bound}/ can be reached from other machines: it needs no token, \
             and its list of failures shows the start of failed items"
        );
    }
    let app = App {
        snapshots: monitor.subscribe(),
        streams: Arc::new(Semaphore::new(STREAMS)),
        public,
    };
    let mut ended = monitor.subscribe();
    let router = Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .fallback(not_found)
        .with_state(app);
    let listener = Bounded {
        listener,
        permits: Arc::new(Semaphore::new(CONNECTIONS)),
    };
    tokio::spawn(async move {
        // Serves until the monitor stops (its root is gone): the event streams end then too.
        let stopped = async move { while ended.changed().await.is_ok() {} };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::warn!("dashboard on {bound} stopped: {e}");
        }
        drop(monitor);
    });
    Ok(bound)
}

/// Whether the request names this server by a loopback name (or any name when public).
fn host_ok(headers: &HeaderMap, public: bool) -> bool {
    if public {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the dashboard answers only to a loopback host name\n",
    )
        .into_response()
}

fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn page(State(app): State<App>, headers: HeaderMap) -> Response {
    if !host_ok(&headers, app.public) {
        return forbidden();
    }
    let mut r = no_store(axum::response::Html(PAGE).into_response());
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

fn json(s: &Snapshot) -> String {
    // A snapshot holds only strings and numbers: it always serializes.
    serde_json::to_string(s).unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
}

async fn status(State(app): State<App>, headers: HeaderMap) -> Response {
    if !host_ok(&headers, app.public) {
        return forbidden();
    }
    let body = json(&app.snapshots.borrow());
    no_store(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn events(State(app): State<App>, headers: HeaderMap) -> Response {
    if !host_ok(&headers, app.public) {
        return forbidden();
    }
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many event streams\n").into_response();
    };
    let mut rx = app.snapshots.clone();
    rx.mark_changed();
    // Each stream holds its permit until the client goes or the monitor stops.
    let stream = futures_util::stream::unfold((rx, permit), |(mut rx, permit)| async move {
        rx.changed().await.ok()?;
        let data = json(&rx.borrow_and_update());
        Some((
            Ok::<_, Infallible>(Event::default().data(data)),
            (rx, permit),
        ))
    });
    no_store(
        Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response(),
    )
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// A listener that takes a permit before each accept and holds it for the connection.
struct Bounded {
    listener: TcpListener,
    permits: Arc<Semaphore>,
}

impl axum::serve::Listener for Bounded {
    type Io = Permitted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // The semaphore is never closed.
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                std::future::pending::<()>().await;
                continue;
            };
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    return (
                        Permitted {
                            stream,
                            _permit: permit,
                        },
                        peer,
                    );
                }
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::debug!("dashboard accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection holding its permit.
struct Permitted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Permitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Permitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        m
    }

    #[test]
    fn only_loopback_hosts_unless_public() {
        for ok in [
            "127.0.0.1:8080",
            "localhost:1",
            "LOCALHOST",
            "[::1]:80",
            "127.9.9.9",
        ] {
            assert!(host_ok(&host(ok), false), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "10.0.0.1:80",
            "[fe80::1]:80",
            "localhost.evil:1",
        ] {
            assert!(!host_ok(&host(bad), false), "{bad}");
            assert!(host_ok(&host(bad), true), "{bad}");
        }
        assert!(!host_ok(&HeaderMap::new(), false));
    }
}
