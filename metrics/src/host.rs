//! Which `Host` a server bound to loopback answers: a loopback name only, so a web page
//! elsewhere cannot read it through DNS rebinding. A server bound elsewhere answers any.

use axum::http::{HeaderMap, header};

/// Whether the request names this server by a loopback name (or any name when `public`).
pub fn host_ok(headers: &HeaderMap, public: bool) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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
