//! [`BlockingRoot`]: the root API for callers without an async runtime. It runs the root on
//! a one-thread tokio runtime of its own, so the scheduler keeps streaming between calls.

use std::net::SocketAddr;

use protocol::Packed;

use crate::{
    ChainSpec, Counters, FedIds, ItemFailure, ItemId, NodeStatuses, Root, RootError, RootOptions,
    ScanReport,
};

/// A [`Root`] driven by blocking calls. Do not use it from inside an async runtime.
#[derive(Debug)]
pub struct BlockingRoot {
    root: Root,
    rt: tokio::runtime::Runtime,
}

impl BlockingRoot {
    /// A root with no nodes yet.
    ///
    /// # Errors
    /// When the runtime cannot start.
    pub fn new(options: RootOptions) -> std::io::Result<BlockingRoot> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pcluster-root")
            .enable_all()
            .build()?;
        let root = rt.block_on(async { Root::new(options) });
        Ok(BlockingRoot { root, rt })
    }

    /// See [`Root::add_node`].
    ///
    /// # Errors
    /// As there.
    pub fn add_node(&self, addr: SocketAddr) -> Result<(), RootError> {
        self.rt.block_on(self.root.add_node(addr))
    }

    /// See [`Root::search_nodes`].
    ///
    /// # Errors
    /// As there.
    pub fn search_nodes(
        &self,
        network: ipnetwork::IpNetwork,
        port: u16,
    ) -> Result<ScanReport, RootError> {
        self.rt.block_on(self.root.search_nodes(network, port))
    }

    /// See [`Root::setup_with`].
    ///
    /// # Errors
    /// As there.
    pub fn setup_with(
        &self,
        chain: ChainSpec,
        on_output: impl FnMut(ItemId, &[u8]) + Send + 'static,
        on_failure: impl FnMut(ItemFailure) + Send + 'static,
    ) -> Result<(), RootError> {
        self.rt
            .block_on(self.root.setup_with(chain, on_output, on_failure))
    }

    /// See [`Root::feed`].
    ///
    /// # Errors
    /// As there.
    pub fn feed<I, T>(&self, items: I) -> Result<FedIds, RootError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.rt.block_on(self.root.feed(items))
    }

    /// See [`Root::feed_packed`].
    ///
    /// # Errors
    /// As there.
    pub fn feed_packed(&self, items: Packed) -> Result<FedIds, RootError> {
        self.rt.block_on(self.root.feed_packed(items))
    }

    /// See [`Root::wait_input`].
    ///
    /// # Errors
    /// As there.
    pub fn wait_input(&self) -> Result<(), RootError> {
        self.rt.block_on(self.root.wait_input())
    }

    /// See [`Root::wait_empty`].
    ///
    /// # Errors
    /// As there.
    pub fn wait_empty(&self) -> Result<(), RootError> {
        self.rt.block_on(self.root.wait_empty())
    }

    /// See [`Root::reset`].
    ///
    /// # Errors
    /// As there.
    pub fn reset(&self) -> Result<(), RootError> {
        self.rt.block_on(self.root.reset())
    }

    /// See [`Root::pause`].
    ///
    /// # Errors
    /// As there.
    pub fn pause(&self) -> Result<(), RootError> {
        self.rt.block_on(self.root.pause())
    }

    /// See [`Root::resume`].
    ///
    /// # Errors
    /// As there.
    pub fn resume(&self) -> Result<(), RootError> {
        self.rt.block_on(self.root.resume())
    }

    /// See [`Root::counters`].
    ///
    /// # Errors
    /// As there.
    pub fn counters(&self) -> Result<Counters, RootError> {
        self.rt.block_on(self.root.counters())
    }

    /// See [`Root::status`].
    ///
    /// # Errors
    /// As there.
    pub fn status(&self) -> Result<NodeStatuses, RootError> {
        self.rt.block_on(self.root.status())
    }

    /// See [`Root::close`].
    ///
    /// # Errors
    /// As there.
    pub fn close(self) -> Result<(), RootError> {
        self.rt.block_on(self.root.close_shared())
    }
}

/// Frees the nodes: without this the runtime would stop the scheduler before it said
/// goodbye, and the nodes would wait for the root's connection to time out.
impl Drop for BlockingRoot {
    fn drop(&mut self) {
        let _ = self.rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), self.root.close_shared()).await
        });
    }
}
