//! A slow link on loopback: a TCP proxy that hands on every byte a fixed time after it read
//! it, each way (25 ms each way is a 50 ms round trip), for tests of what a handshake in flight
//! on a slow link must survive.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::Error;

/// Chunks in flight one way: with 64 KiB reads, far more than a loopback link carries in the
/// delays tests use, so the delay, not this bound, sets the pace.
const CHUNKS: usize = 256;
const READ_SIZE: usize = 64 << 10;

/// A running proxy; dropping it closes it and every connection through it.
#[derive(Debug)]
pub struct DelayProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a port of `ip` that the OS chooses and relays each connection to
    /// `upstream`, every byte `one_way` late in each direction.
    ///
    /// # Errors
    /// When nothing can be bound on `ip`.
    pub async fn start(
        ip: IpAddr,
        upstream: SocketAddr,
        one_way: Duration,
    ) -> Result<DelayProxy, Error> {
        let io = |source| Error::Io {
            action: "cannot bind a proxy on",
            path: ip.to_string().into(),
            source,
        };
        let listener = TcpListener::bind((ip, 0)).await.map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let task = tokio::spawn(async move {
            // Owned here: aborting this task drops the set, which aborts every relay.
            let mut relays = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                relays.spawn(relay(client, upstream, one_way));
                // Reap the finished ones so the set does not grow with every connection.
                while relays.try_join_next().is_some() {}
            }
        });
        Ok(DelayProxy { addr, task })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection both ways until both ends have closed.
async fn relay(client: TcpStream, upstream: SocketAddr, one_way: Duration) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        delayed(client_read, server_write, one_way),
        delayed(server_read, client_write, one_way),
    );
}

/// Copies `from` to `to`, each chunk `delay` after it was read, then closes `to`'s side.
async fn delayed(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS);
    let read = async move {
        let mut buf = vec![0u8; READ_SIZE];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .await
                    .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            // The link's latency itself, not a wait for anything.
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_whole_and_late_by_the_round_trip() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        let one_way = Duration::from_millis(40);
        let proxy = DelayProxy::start("127.0.0.1".parse().unwrap(), upstream, one_way)
            .await
            .unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let started = Instant::now();
        let (mut r, mut w) = s.split();
        let write = async {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let read = r.read_to_end(&mut back);
        let ((), got) = tokio::join!(write, read);
        got.unwrap();
        assert_eq!(back, sent);
        assert!(started.elapsed() >= 2 * one_way, "{:?}", started.elapsed());
    }
}
