//! The dashboard (feature `dashboard`): a live web page of a run or of a set of nodes, light
//! enough to leave on. [`Root::serve_dashboard`] serves one for a run; [`Monitor`] with
//! [`serve`] serves one for nodes alone; `pcluster top` draws the same [`Snapshot`] in a
//! terminal.
//!
//! It costs nothing on the per-item path: once a second the monitor asks the scheduler for
//! the counters it keeps anyway and probes each node's status on a status connection (never
//! on the scheduler task); failures and node losses reach it through the scheduler's
//! observer hook, which runs only when an item fails or a node comes or goes.
//!
//! - `ring`: bounded rings, rates and the ETA;
//! - `recent`: the last failures, node losses, and this process's last warnings;
//! - `snapshot`: what is shown, as one serializable value;
//! - `monitor`: the background task building snapshots;
//! - `prometheus`: the snapshot as Prometheus metrics;
//! - `server`: the HTTP server, its page (`page.html`), JSON, server-sent events and metrics.

mod monitor;
mod prometheus;
mod recent;
mod ring;
mod server;
mod snapshot;

use std::net::SocketAddr;

pub use monitor::{CHART_SAMPLES, Monitor, POLL, WatchNodes};
pub use recent::{FAILURES_KEPT, InputNumbers, LOG_LINES_KEPT, Membership, log_layer, recent_logs};
pub use ring::{CounterSamples, Ring, eta_s};
pub use server::serve;
pub use snapshot::{
    FailureLine, LogLine, NodeShown, NodeView, RunProgress, Snapshot, TaskView, task_totals,
};

use crate::{Root, RootError};

impl Root {
    /// Tells how many inputs will be fed in all (e.g. the lines of an input file), so that
    /// progress can show done / total and an ETA. Only shown, never enforced.
    pub fn set_expected_total(&self, total: u64) {
        self.expected_total.send_replace(Some(total));
    }

    /// Numbers inputs on the dashboard with `number` (e.g. their line in an input file)
    /// instead of their id; takes effect for dashboards served after this call.
    pub fn set_input_numbers(&self, number: impl Fn(crate::ItemId) -> u64 + Send + Sync + 'static) {
        if let Ok(mut n) = self.input_numbers.lock() {
            *n = Some(InputNumbers(std::sync::Arc::new(number)));
        }
    }

    /// Serves a live dashboard of this root's run on `addr` (port 0: any free port) until
    /// the root closes; returns the address bound. The page shows the run's progress (see
    /// [`Root::set_expected_total`] for done / total and an ETA), every node, every task,
    /// the last failures and this process's last warnings (once [`log_layer`] is installed).
    ///
    /// It is read-only and never asks for the cluster token. A non-loopback `addr` needs
    /// `public`, and logs a warning: the failures it lists show the start of failed items.
    ///
    /// # Errors
    /// A non-loopback address without `public`, an address that cannot be bound, or the
    /// root has shut down.
    pub async fn serve_dashboard(
        &self,
        addr: SocketAddr,
        public: bool,
    ) -> Result<SocketAddr, RootError> {
        if !public && !addr.ip().is_loopback() {
            return Err(RootError::DashboardNotLoopback { addr });
        }
        let monitor = Monitor::for_root(self).await?;
        serve(monitor, addr, public).await
    }
}

/// Now, as Unix time in milliseconds.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
