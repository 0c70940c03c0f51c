//! Waiting on a condition with a deadline instead of sleeping for a guessed time: poll every
//! [`POLL_INTERVAL`] until the condition holds, or fail naming what was awaited. Also an
//! address that surely refuses connections, for tests of what happens when nothing listens.

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
    poll_for(deadline, what, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// Polls `find` until it finds something, and returns that.
///
/// # Errors
/// [`Error::TimedOut`] naming `what` when it finds nothing within `deadline`.
pub async fn poll_for<T, F, Fut>(deadline: Duration, what: &str, mut find: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(found) = find().await {
            return Ok(found);
        }
        let now = Instant::now();
        if now >= end {
            return Err(Error::TimedOut {
                what: what.to_owned(),
                after: deadline,
            });
        }
        // The one polling wait of the tests, for conditions nothing signals (a file's
        // contents, another process's state): never past the deadline.
        tokio::time::sleep(POLL_INTERVAL.min(end - now)).await;
    }
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

/// An address on `ip` that refuses connections, and the socket that holds it: bound but not
/// listening, so nothing can accept there and no one else can take the port while it lives.
///
/// # Errors
/// When nothing can be bound on `ip`.
pub fn refusing_addr(ip: IpAddr) -> Result<(tokio::net::TcpSocket, SocketAddr), Error> {
    let io = |source| Error::Io {
        action: "cannot bind a port on",
        path: ip.to_string().into(),
        source,
    };
    let socket = match ip {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(io)?;
    socket.bind(SocketAddr::new(ip, 0)).map_err(io)?;
    let addr = socket.local_addr().map_err(io)?;
    Ok((socket, addr))
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
    async fn poll_for_returns_what_it_found() {
        let mut calls = 0;
        let found = poll_for(Duration::from_secs(10), "the third call", || {
            calls += 1;
            std::future::ready((calls == 3).then_some(calls * 10))
        })
        .await
        .unwrap();
        assert_eq!(found, 30);
    }

    #[tokio::test]
    async fn a_listener_listens_and_a_refusing_address_does_not() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        wait_listening(addr, Duration::from_secs(10)).await.unwrap();
        let (_held, refusing) = refusing_addr(ip).unwrap();
        let refused = tokio::net::TcpStream::connect(refusing).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        let err = wait_listening(refusing, Duration::ZERO).await;
        assert!(matches!(err, Err(Error::TimedOut { .. })), "{err:?}");
    }
}
