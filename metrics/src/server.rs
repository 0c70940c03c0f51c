//! A small HTTP server of `/metrics`: each scrape renders the families afresh. Bounded in
//! connections; bound to loopback it answers only loopback host names.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Bounded;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Connections served at once: a few Prometheus servers and curious operators.
const CONNECTIONS: usize = 16;

/// What a scrape renders.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct App {
    render: Render,
    public: bool,
}

/// Serves `render`'s text at `/metrics` on `listener` until `shutdown`; returns the
/// address served.
///
/// # Errors
/// The listener has no local address.
pub fn serve(
    listener: TcpListener,
    render: Render,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    let app = App {
        render,
        public: !bound.ip().is_loopback(),
    };
    let router = Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "see /metrics\n") })
        .with_state(app);
    let listener = Bounded::new(listener, CONNECTIONS);
    tokio::spawn(async move {
        let stopped = async move { shutdown.cancelled().await };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::warn!("metrics on {bound} stopped: {e}");
        }
    });
    Ok(bound)
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if !crate::host_ok(&headers, app.public) {
        return (StatusCode::FORBIDDEN, "loopback host names only\n").into_response();
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], (app.render)()).into_response()
}
