//! A plain HTTP `GET` for tests and the bench: HTTP/1.0, so the body is never chunked, with
//! a deadline on the whole exchange.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The whole exchange must end within this.
const DEADLINE: Duration = Duration::from_secs(10);

/// `GET path` from `addr` (with `Host: 127.0.0.1`); returns the status code and the body.
///
/// # Errors
/// The connection fails, or no whole answer comes within ten seconds.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(DEADLINE, exchange)
        .await
        .map_err(|_| {
            std::io::Error::other(format!("no answer from {addr} within {DEADLINE:?}"))
        })??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// `s` with every byte outside `A-Z a-z 0-9 - _ . ~` percent-encoded, for a query string.
#[must_use]
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            super::url_encode("sum(x{task=\"a b\"})"),
            "sum%28x%7Btask%3D%22a%20b%22%7D%29"
        );
    }
}
