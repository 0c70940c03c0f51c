//! A watcher of the scheduler's rare events (failed items, nodes joining or lost), for the
//! dashboard. It is never on the per-item path: it is called only when an item fails or a
//! node comes or goes, and costs one `Option` check when nobody watches.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::ItemFailure;

/// Sees events as the scheduler handles them, on the scheduler task: keep each call short.
pub(crate) trait Observer: Send + Sync {
    /// An item failed (called before the user's failure handler gets it).
    fn failure(&self, f: &ItemFailure);
    /// A node was added (again, after a loss).
    fn node_added(&self, addr: SocketAddr);
    /// A node was lost.
    fn node_lost(&self, addr: SocketAddr);
}

/// A shared observer.
pub(crate) type SharedObserver = Arc<dyn Observer>;
