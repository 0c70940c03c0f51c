//! What every subcommand shares: the token argument, logging (tracing to the terminal and
//! the log server), the async runtime, signal handling, `host:port` parsing, and the servers'
//! `--port-file`.

use std::io::IsTerminal as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use protocol::auth::Token;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct TokenArg {
    /// Cluster token: peers prove they hold it (a Noise handshake keyed by it; it never
    /// crosses the wire), and every connection is encrypted. Without it, anyone who reaches
    /// the port can use the server. Prefer --token-file: other users can read argv.
    #[arg(long, env = "PCLUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the cluster token (`pcluster key new` writes one), readable by its
    /// owner only; it wins over --token.
    #[arg(long, env = "PCLUSTER_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Accept a token shorter than 16 characters. Anyone who captures one handshake (a
    /// host the root scans, a fake log server) can guess such a token offline.
    #[arg(long)]
    pub weak_token: bool,
}

impl TokenArg {
    /// The token, from --token-file or --token.
    ///
    /// # Errors
    /// When the file cannot be read, is empty, or others may read it; when the token is
    /// weak and --weak-token was not given.
    pub fn token(&self) -> anyhow::Result<Option<Token>> {
        let text = match (&self.token_file, self.token.as_deref()) {
            (Some(path), _) => crate::commands::key::read(path)?,
            (None, Some(t)) if !t.is_empty() => t.to_owned(),
            (None, _) => return Ok(None),
        };
        if protocol::auth::is_weak(&text) && !self.weak_token {
            anyhow::bail!(
                "the token has {} characters: one captured handshake lets anyone guess a \
                 token under {} offline. Make a key with `pcluster key new FILE` and pass \
                 --token-file FILE (or --weak-token to use this one anyway)",
                text.chars().count(),
                protocol::auth::MIN_TOKEN_CHARS
            );
        }
        Ok(Some(Token::new(text)))
    }
}

/// Refuses to serve a non-loopback address without a token unless `insecure`: anyone who
/// reaches it could `what`, and everything would cross the network in the clear.
pub fn check_exposure(
    addr: SocketAddr,
    token: bool,
    insecure: bool,
    what: &str,
) -> anyhow::Result<()> {
    if token || insecure || addr.ip().is_loopback() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {addr} without a cluster token: anyone who can reach it could \
         {what}, and all traffic would be unencrypted. Set --token (or PCLUSTER_TOKEN), \
         listen on loopback, or pass --insecure on a network you trust"
    )
}

/// Where our own diagnostics go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Console {
    Stdout,
    Stderr,
}

/// Colour only on a terminal, and never with `NO_COLOR` set (<https://no-color.org>).
pub fn use_colour(console: Console) -> bool {
    let terminal = match console {
        Console::Stdout => std::io::stdout().is_terminal(),
        Console::Stderr => std::io::stderr().is_terminal(),
    };
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Logging: the console plus, when given, the log server as `(address, tag, token)`; the
/// token answers a log server that requires one. `PCLUSTER_LOG` overrides `default_level`.
pub fn init_tracing(
    console: Console,
    log_server: Option<(String, String, Option<Token>)>,
    default_level: &str,
) -> Option<logserver::LogClient> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("PCLUSTER_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level))
    };
    let ansi = use_colour(console);
    let fmt: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> = match console {
        Console::Stdout => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stdout)
            .with_filter(filter())
            .boxed(),
        Console::Stderr => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let (remote, client) = match log_server {
        Some((addr, tag, token)) => {
            let client = logserver::LogClient::new(addr, token);
            let layer = logserver::LogLayer::new(client.clone(), tag)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
            (Some(layer), Some(client))
        }
        None => (None, None),
    };
    // The dashboard lists this process's last warnings (WARN and above only).
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(remote)
        .with(root::dashboard::log_layer())
        .try_init();
    client
}

/// The builder of chain modules for the command line: it says on stderr what takes time
/// (building task crates and Python components).
pub fn builder() -> pcluster_build::Builder {
    pcluster_build::Builder::new().with_progress(|what| eprintln!("pcluster: {what}"))
}

pub fn runtime(multi: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    rt.context("cannot start the async runtime")
}

/// The signals a command stops on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    /// The exit status a shell reports for a process ended by this signal.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// Waits for the next SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn next_signal() -> Signal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            std::future::pending::<()>().await;
            unreachable!()
        };
        tokio::select! {
            _ = int.recv() => Signal::Interrupt,
            _ = term.recv() => Signal::Terminate,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        Signal::Interrupt
    }
}

/// Cancels the token on SIGINT or SIGTERM (for servers: decide, then tell).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        next_signal().await;
        t.cancel();
    });
    token
}

/// Splits `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address; a missing port
/// is `default_port`.
///
/// # Errors
/// A port that is not a number, or an empty host.
pub fn split_host_port(s: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    let s = s.trim();
    let port = |p: &str| {
        p.parse::<u16>()
            .with_context(|| format!("bad port `{p}` in `{s}`"))
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .with_context(|| format!("missing `]` in `{s}`"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, port(p)?),
            None if after.is_empty() => (host, default_port),
            None => anyhow::bail!("unexpected `{after}` after `]` in `{s}`"),
        }
    } else if s.parse::<std::net::Ipv6Addr>().is_ok() {
        (s, default_port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, port(p)?),
            None => (s, default_port),
        }
    };
    anyhow::ensure!(!host.is_empty(), "no host in `{s}`");
    Ok((host.to_string(), port))
}

/// Resolves `host` (a name or an address) with `port`.
///
/// # Errors
/// The name does not resolve.
pub async fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))
}

/// Parses and resolves a node address given as `host[:port]`.
///
/// # Errors
/// As [`split_host_port`] and [`resolve`].
pub async fn node_addr(s: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    let (host, port) = split_host_port(s, default_port)?;
    resolve(&host, port).await
}

/// Nodes named on the command line or in a file, with the port of entries that name none.
#[derive(clap::Args, Debug)]
pub struct NodeList {
    /// Node addresses (`host[:port]`, `[v6]:port`).
    #[arg(required_unless_present_any = ["nodes_file", "nodes_dns"])]
    pub nodes: Vec<String>,
    /// Node addresses in a file, one `host[:port]` a line (`#` comments), after those given.
    #[arg(long, value_name = "FILE")]
    pub nodes_file: Option<PathBuf>,
    /// Every A/AAAA record of NAME (`NAME[:PORT]`) as a node address, after those given.
    #[arg(long, value_name = "NAME")]
    pub nodes_dns: Option<String>,
    /// Port of entries that name none.
    #[arg(short, long, default_value_t = protocol::DEFAULT_NODE_PORT)]
    pub port: u16,
}

impl NodeList {
    /// Each entry, resolved, then the file's and the name's addresses not given before.
    ///
    /// # Errors
    /// As [`node_addr`] and [`crate::discovery::Sources::read_once`].
    pub async fn resolve(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            out.push(node_addr(n, self.port).await?);
        }
        let sources = crate::discovery::Sources {
            nodes_file: self.nodes_file.clone(),
            nodes_dns: self.nodes_dns.clone(),
            port: self.port,
            rescan: None,
        };
        sources.read_once(&mut out).await?;
        Ok(out)
    }
}

/// The address of a server's `--port-file`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PortFileArg {
    /// Once listening, write the bound `IP:PORT` to this file (with `--port 0`, the port chosen).
    #[arg(long, value_name = "PATH")]
    pub port_file: Option<PathBuf>,
}

impl PortFileArg {
    /// Writes `addr` and a newline to the file, if one was asked for: to `PATH.tmp` first, then
    /// renamed, so a reader polling the file sees nothing or the whole line, never a part.
    ///
    /// # Errors
    /// The file cannot be written or renamed.
    pub fn write(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let Some(path) = &self.port_file else {
            return Ok(());
        };
        write_atomically(path, &format!("{addr}\n"))
    }
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// A fresh random token (hex), for an embedded cluster only this process may use.
///
/// # Errors
/// The OS random source failed.
pub fn fresh_token() -> anyhow::Result<Token> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    Ok(Token::new(hex::encode(bytes)))
}

/// Raises this process's soft limit on open files to its hard limit: a server holds a socket
/// per client (4,096 by default), past the usual soft limit of 1,024. Best effort: the limit
/// stays as it was when the system refuses.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none() || limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit {
        // No hard limit: the kernel's own cap (`fs.nr_open`) still applies, 2^20 by default.
        current: limit.maximum.or(Some(1 << 20)),
        maximum: limit.maximum,
    };
    if let Err(e) = setrlimit(Resource::Nofile, raised) {
        tracing::debug!(error = %e, "cannot raise the limit on open files");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_forms() {
        let p = |s| split_host_port(s, 6000).unwrap();
        assert_eq!(p("127.0.0.2"), ("127.0.0.2".into(), 6000));
        assert_eq!(p("127.0.0.2:16000"), ("127.0.0.2".into(), 16000));
        assert_eq!(p("node-a"), ("node-a".into(), 6000));
        assert_eq!(p("node-a:7"), ("node-a".into(), 7));
        assert_eq!(p("[::1]:6001"), ("::1".into(), 6001));
        assert_eq!(p("[::1]"), ("::1".into(), 6000));
        assert_eq!(p("::1"), ("::1".into(), 6000));
        assert_eq!(p(" fe80::2 "), ("fe80::2".into(), 6000));
    }

    #[test]
    fn bad_addresses_are_named() {
        let e = split_host_port("127.0.0.2:x", 1).unwrap_err().to_string();
        assert!(e.contains("bad port `x`"), "{e}");
        assert!(split_host_port("[::1", 1).is_err());
        assert!(split_host_port(":6000", 1).is_err());
        assert!(split_host_port("[::1]x", 1).is_err());
    }

    #[tokio::test]
    async fn port_applies_to_entries_without_one() {
        let a = node_addr("127.0.0.2", 16000).await.unwrap();
        assert_eq!(a, "127.0.0.2:16000".parse().unwrap());
        let a = node_addr("[::1]:9", 16000).await.unwrap();
        assert_eq!(a, "[::1]:9".parse().unwrap());
    }

    #[test]
    fn the_port_file_holds_the_whole_address_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("pcluster-port-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("addr");
        let arg = PortFileArg {
            port_file: Some(path.clone()),
        };
        arg.write("127.0.0.2:16000".parse().unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "127.0.0.2:16000\n");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["addr"], "no temporary file is left");
        std::fs::remove_dir_all(&dir).unwrap();
        // None asked for: nothing written, no error.
        PortFileArg::default()
            .write("127.0.0.2:1".parse().unwrap())
            .unwrap();
    }

    #[test]
    fn signals_exit_like_a_shell_reports_them() {
        assert_eq!(Signal::Interrupt.exit_code(), 130);
        assert_eq!(Signal::Terminate.exit_code(), 143);
    }
}
