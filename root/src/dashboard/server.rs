//! The dashboard's HTTP server: the page (`/`, embedded in the binary), the snapshot as JSON
//! (`/api/status`), as server-sent events (`/api/events`, one a poll) and as Prometheus
//! metrics (`/metrics`). Read-only: it takes no input beyond the path, and knows nothing of
//! the cluster token.
//!
//! Bounded: a semaphore is taken before each accept (connections at once) and before each
//! event stream. Unless served publicly it answers only requests whose `Host` is a loopback
//! name, so a web page elsewhere cannot read it through DNS rebinding.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{Bounded, host_ok};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

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
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(app);
    let listener = Bounded::new(listener, CONNECTIONS);
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

/// The snapshot as Prometheus metrics (see [`super::prometheus`]).
async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if !host_ok(&headers, app.public) {
        return forbidden();
    }
    let body = super::prometheus::render(&app.snapshots.borrow());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}
