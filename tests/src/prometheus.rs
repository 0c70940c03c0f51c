//! A real Prometheus server (Debian's `prometheus`) for tests and the bench: it scrapes the
//! given targets every second, and answers instant queries through its HTTP API. Its data
//! lives in a temporary directory, gone with the guard.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Child, Error, TempDir, http_get, poll, url_encode};

/// How long Prometheus may take to start and say it is ready.
const READY: Duration = Duration::from_secs(60);

/// A running Prometheus; dropping it stops it and removes its data.
pub struct Prometheus {
    addr: SocketAddr,
    _child: Child,
    _dir: TempDir,
}

/// One scrape job: its name and its targets (`host:port`, serving `/metrics`).
pub struct Job<'a> {
    /// The job's name (the `job` label).
    pub name: &'a str,
    /// Its targets.
    pub targets: Vec<SocketAddr>,
}

impl Prometheus {
    /// The `prometheus` executable on PATH, if any.
    #[must_use]
    pub fn exe() -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("prometheus"))
                .find(|p| p.is_file())
        })
    }

    /// Starts Prometheus on `ip` (a port the OS gives), scraping `jobs` every second;
    /// returns once it is ready.
    ///
    /// # Errors
    /// No `prometheus` on PATH, it cannot start, or it is not ready within a minute.
    pub async fn start(ip: IpAddr, jobs: &[Job<'_>]) -> Result<Prometheus, Error> {
        let exe =
            Prometheus::exe().ok_or(Error::Missing("prometheus (Debian's package prometheus)"))?;
        let dir = crate::temp_dir("prometheus")?;
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_text(jobs)).map_err(Error::io("cannot write", &config))?;
        let addr = free_addr(ip)?;
        let mut cmd = Command::new(exe);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir.path())?);
        let child = Child::spawn(&mut cmd)?;
        // Ready to answer is not yet scraping: its discovery hands the targets over a few
        // seconds later. Wait until every target is active.
        let targets: usize = jobs.iter().map(|j| j.targets.len()).sum();
        poll(READY, "Prometheus to scrape every target", || async move {
            match http_get(addr, "/api/v1/targets").await {
                Ok((200, body)) => body.matches("\"scrapeUrl\"").count() >= targets,
                _ => false,
            }
        })
        .await?;
        Ok(Prometheus {
            addr,
            _child: child,
            _dir: dir,
        })
    }

    /// Where it serves its API.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value of instant query `expr` now: `None` when it has no result (yet); the first
    /// sample's value when it has several.
    ///
    /// # Errors
    /// Prometheus does not answer, or answers with an error.
    pub async fn query(&self, expr: &str) -> Result<Option<f64>, Error> {
        let path = format!("/api/v1/query?query={}", url_encode(expr));
        let (code, body) = http_get(self.addr, &path).await.map_err(Error::io(
            "cannot query Prometheus at",
            Path::new(&self.addr.to_string()),
        ))?;
        if code != 200 {
            return Err(Error::Command {
                command: format!("GET {path}"),
                stderr: format!("HTTP {code}: {body}"),
            });
        }
        Ok(first_value(&body))
    }
}

/// A `prometheus.yml` scraping `jobs` every second.
fn config_text(jobs: &[Job<'_>]) -> String {
    let mut text =
        String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
    for job in jobs {
        let targets: Vec<String> = job.targets.iter().map(|t| format!("'{t}'")).collect();
        text.push_str(&format!(
            "  - job_name: '{}'\n    static_configs:\n      - targets: [{}]\n",
            job.name,
            targets.join(", ")
        ));
    }
    text
}

/// The first sample's value in a query answer (`"value":[time,"1234"]`).
fn first_value(body: &str) -> Option<f64> {
    let after = body.split_once("\"value\":[")?.1;
    let value = after.split_once(',')?.1.split_once(']')?.0;
    value.trim().trim_matches('"').parse().ok()
}

/// An address on `ip` that was free a moment ago, for servers that take no port 0 they
/// could tell (Prometheus, `--metrics` of a node).
///
/// # Errors
/// Nothing can be bound on `ip`.
pub fn free_addr(ip: IpAddr) -> Result<SocketAddr, Error> {
    let l = std::net::TcpListener::bind((ip, 0)).map_err(Error::io(
        "cannot bind a port on",
        Path::new(&ip.to_string()),
    ))?;
    l.local_addr().map_err(Error::io(
        "cannot read the port bound on",
        Path::new(&ip.to_string()),
    ))
}

fn log_file(dir: &Path) -> Result<std::fs::File, Error> {
    let path = dir.join("prometheus.log");
    std::fs::File::create(&path).map_err(Error::io("cannot create", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_configs_are_read_and_written() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1765100000.1,"200000"]}]}}"#;
        assert_eq!(first_value(body), Some(200000.0));
        assert_eq!(first_value(r#"{"data":{"result":[]}}"#), None);
        let text = config_text(&[Job {
            name: "nodes",
            targets: vec!["127.0.0.2:9464".parse().unwrap()],
        }]);
        assert!(text.contains("job_name: 'nodes'"), "{text}");
        assert!(text.contains("targets: ['127.0.0.2:9464']"), "{text}");
    }
}
