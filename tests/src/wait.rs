//! Waiting on a condition with a deadline instead of sleeping for a guessed time: poll every
//! [`POLL_INTERVAL`] until the condition holds, or fail naming what was awaited.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::Error;

/// How often a condition is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` until it holds.
///
/// # Errors
/// [`Error::TimedOut`] naming `what` when it does not hold within `deadline`.
pub async fn poll<F, Fut>(deadline: Duration, what: &str, mut condition: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while !condition().await {
        if Instant::now() >= end {
            return Err(Error::TimedOut {
                what: what.to_owned(),
                after: deadline,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

/// Waits until something accepts TCP connections on `addr`.
///
/// # Errors
/// [`Error::TimedOut`] after `deadline`.
pub async fn wait_listening(addr: SocketAddr, deadline: Duration) -> Result<(), Error> {
    poll(
        deadline,
        &format!("something to listen on {addr}"),
        || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
    )
    .await
}

/// A TCP port on `ip` that was free a moment ago.
///
/// # Errors
/// When nothing can be bound on `ip`.
pub fn free_port(ip: IpAddr) -> Result<u16, Error> {
    let io = |source| Error::Io {
        action: "cannot bind a port on",
        path: ip.to_string().into(),
        source,
    };
    Ok(std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map_err(io)?
        .port())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[tokio::test]
    async fn poll_returns_once_the_condition_holds() {
        let mut calls = 0;
        poll(Duration::from_secs(10), "three calls", || {
            calls += 1;
            std::future::ready(calls == 3)
        })
        .await
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn poll_names_what_timed_out() {
        let err = poll(Duration::ZERO, "godot", || std::future::ready(false))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "timed out after 0ns waiting for godot");
    }

    #[tokio::test]
    async fn a_bound_port_listens_and_a_free_one_does_not() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        wait_listening(addr, Duration::from_secs(10)).await.unwrap();
        drop(listener);
        let port = free_port(ip).unwrap();
        let err = wait_listening(SocketAddr::new(ip, port), Duration::ZERO).await;
        assert!(matches!(err, Err(Error::TimedOut { .. })), "{err:?}");
    }
}
