//! W1 through `pcluster run --dashboard` while a real Prometheus (when installed) scrapes
//! the dashboard's `/metrics` every second: serving metrics must cost the run nothing. Long
//! enough (the RSS row's items) for several scrapes; that row is its peer.

use std::path::Path;

use kit::{Job, Pcluster, Prometheus};

use super::cluster::Cluster;
use super::{Floors, Row, w1_process};

/// The row; its note says how many scrapes saw the run (none without Prometheus).
pub async fn w1_dashboard(
    pcluster: &Pcluster,
    cluster: &Cluster,
    dir: &Path,
    n: u64,
    floors: Floors,
) -> anyhow::Result<Row> {
    let ip = std::net::Ipv4Addr::LOCALHOST.into();
    let addr = kit::free_addr(ip)?;
    let prometheus = match Prometheus::exe() {
        Some(_) => {
            let job = Job {
                name: "root",
                targets: vec![addr],
            };
            Some(Prometheus::start(ip, &[job]).await?)
        }
        None => None,
    };
    let extra = ["--dashboard".to_string(), addr.to_string()];
    let name = if prometheus.is_some() {
        "W1 `pcluster run --dashboard`, Prometheus 1 s"
    } else {
        "W1 `pcluster run --dashboard`"
    };
    let mut row = w1_process(pcluster, cluster, dir, name, n, floors, &extra)?;
    if let Some(p) = prometheus {
        // The scrape ending the run may land in the next second: wait for it.
        let scraped = kit::poll_for(
            std::time::Duration::from_secs(5),
            "Prometheus to have scraped the run",
            || async {
                // `up` is 1 for each scrape that reached the dashboard: only while it ran.
                let seen = p
                    .query("sum_over_time(up{job=\"root\"}[10m])")
                    .await
                    .ok()??;
                (seen > 0.0).then_some(seen)
            },
        )
        .await
        .unwrap_or(0.0);
        row.note = format!("{}; {scraped} scrapes during the run", row.note);
    }
    Ok(row)
}
