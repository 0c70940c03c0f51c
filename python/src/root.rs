//! [`Root`] (`pcluster._native.Root`): the root library for Python. It owns a tokio runtime
//! and a `pcluster_root::Root` on it; every call that may wait releases the GIL and wakes
//! every [`SIGNAL_POLL`] to let Python handle signals, so Ctrl-C raises `KeyboardInterrupt`.
//! The handlers are called on the runtime's thread with the GIL held; the first exception
//! one raises is re-raised by the next waiting call.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use protocol::auth::Token;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use root::{Handlers, ItemFailure, RootError, RootOptions};

use crate::PclusterError;

/// How often a waiting call looks at Python's signals: short enough that Ctrl-C feels
/// immediate, long enough to cost nothing.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// How long closing waits for the nodes to say goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Wakes a thread parked in [`Root::wait_for`].
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// The first exception a handler raised, kept for the next waiting call.
type HandlerError = Arc<Mutex<Option<PyErr>>>;

fn error(e: RootError) -> PyErr {
    PclusterError::new_err(e.to_string())
}

/// The root, for Python.
#[pyclass(module = "pcluster._native", frozen)]
pub struct Root {
    rt: tokio::runtime::Runtime,
    /// `None` once closed. An `Arc` so a call can use the root without holding this lock.
    root: Mutex<Option<Arc<root::Root>>>,
    /// Whether the current root tags items (see [`Root::ensure_tagged`]).
    tagged: Mutex<bool>,
    token: Option<String>,
    handler_error: HandlerError,
}

fn options(token: Option<&str>, tagged: bool) -> RootOptions {
    RootOptions {
        token: token.map(Token::new),
        // With Python tasks, items between Python code travel tagged by type (docs/ABI.md).
        tagged_items: tagged,
        ..RootOptions::default()
    }
}

impl Root {
    fn current(&self) -> PyResult<Arc<root::Root>> {
        self.root
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| PclusterError::new_err("the root is closed"))
    }

    /// Runs `fut` on the runtime without the GIL, looking at Python's signals every
    /// [`SIGNAL_POLL`]; a pending exception (KeyboardInterrupt) drops the future and is raised.
    fn wait<T, F>(&self, py: Python<'_>, fut: F) -> PyResult<T>
    where
        F: Future<Output = Result<T, RootError>> + Send,
        T: Send,
    {
        self.wait_for(py, async { fut.await.map_err(error) })
    }

    /// [`Root::wait`] for a future whose errors are Python's already.
    fn wait_for<T, F>(&self, py: Python<'_>, fut: F) -> PyResult<T>
    where
        F: Future<Output = PyResult<T>> + Send,
        T: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            // The handlers run on the root's runtime, which cannot wait on itself.
            return Err(PclusterError::new_err(
                "a Root's methods cannot be called from inside its output or failure handler",
            ));
        }
        let mut fut = std::pin::pin!(fut);
        // Polled here rather than by `block_on`, and woken by the thread's own park timeout:
        // Ctrl-C is then answered within SIGNAL_POLL whatever the runtime does (its timers
        // are driven by its one worker, which a busy or stuck handler would hold).
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        loop {
            let step = py.detach(|| {
                let mut cx = Context::from_waker(&waker);
                let _runtime = self.rt.enter();
                let until = Instant::now() + SIGNAL_POLL;
                loop {
                    if let Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
                        return Some(r);
                    }
                    let now = Instant::now();
                    if now >= until {
                        return None;
                    }
                    std::thread::park_timeout(until - now);
                }
            });
            match step {
                Some(result) => {
                    self.raise_handler_error()?;
                    return result;
                }
                None => py.check_signals()?,
            }
        }
    }

    fn raise_handler_error(&self) -> PyResult<()> {
        match self
            .handler_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Makes the root's item tagging match the chain's: the tagging is a root option, so a
    /// root of the other kind is replaced by one with the same nodes (closing frees them at
    /// once, so they are added again straight away).
    fn ensure_tagged(&self, py: Python<'_>, tagged: bool) -> PyResult<()> {
        let mut current = self.tagged.lock().unwrap_or_else(PoisonError::into_inner);
        if *current == tagged {
            return Ok(());
        }
        let old = self.current()?;
        let nodes = self.wait(py, old.nodes())?;
        self.wait(py, old.close_shared())?;
        let new = self
            .rt
            .block_on(async { Arc::new(root::Root::new(options(self.token.as_deref(), tagged))) });
        *self.root.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&new));
        *current = tagged;
        for node in nodes {
            self.wait(py, new.add_node(node))?;
        }
        Ok(())
    }
}

/// `host:port` (or a name that resolves) to its socket addresses.
fn resolve(addr: &str) -> PyResult<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| PyValueError::new_err(format!("bad node address {addr:?}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(PyValueError::new_err(format!(
            "node address {addr:?} resolves to nothing"
        )));
    }
    Ok(addrs)
}

/// Calls a Python handler with the GIL; keeps its first exception.
fn call(
    handler: &Py<PyAny>,
    errors: &HandlerError,
    args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyTuple>>,
) {
    Python::attach(|py| {
        if let Err(e) = args(py).and_then(|a| handler.call1(py, a)) {
            let mut first = errors.lock().unwrap_or_else(PoisonError::into_inner);
            if first.is_none() {
                *first = Some(e);
            }
        }
    });
}

#[pymethods]
impl Root {
    /// A root with no nodes; `token` is the cluster token (None: nodes without a token).
    #[new]
    #[pyo3(signature = (token=None))]
    fn new(token: Option<String>) -> PyResult<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pcluster-root")
            .enable_all()
            .build()
            .map_err(|e| PclusterError::new_err(format!("cannot start the root's runtime: {e}")))?;
        let root =
            rt.block_on(async { Arc::new(root::Root::new(options(token.as_deref(), false))) });
        Ok(Root {
            rt,
            root: Mutex::new(Some(root)),
            tagged: Mutex::new(false),
            token,
            handler_error: Arc::default(),
        })
    }

    /// Connects to the node at `addr` (`host:port`) and adds it; a name that resolves to
    /// several addresses (`localhost`: ::1 and 127.0.0.1) uses the first that answers.
    fn add_node(&self, py: Python<'_>, addr: &str) -> PyResult<()> {
        let root = self.current()?;
        let mut last = None;
        for a in resolve(addr)? {
            match self.wait(py, root.add_node(a)) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_instance_of::<PclusterError>(py) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| PclusterError::new_err(format!("no address for {addr}"))))
    }

    /// Scans `network` on `port`, adds the free nodes found; returns how many were added.
    fn search_nodes(&self, py: Python<'_>, network: &str, port: u16) -> PyResult<usize> {
        let net: ipnetwork::IpNetwork = network
            .parse()
            .map_err(|e| PyValueError::new_err(format!("bad network {network:?}: {e}")))?;
        let root = self.current()?;
        let report = self.wait(py, root.search_nodes(net, port))?;
        Ok(report.free.len())
    }

    /// Adds a node at every address `name` resolves to (each A/AAAA record once) on `port`;
    /// returns how many were added (the others did not answer or are held by another root).
    fn search_dns(&self, py: Python<'_>, name: &str, port: u16) -> PyResult<usize> {
        let root = self.current()?;
        let added = self.wait(py, root.search_dns(name, port))?;
        Ok(added.iter().filter(|(_, r)| r.is_ok()).count())
    }

    /// Sets the chain file at `path` up on every node (`name`/`version` override the
    /// file's). `on_output(bytes)` gets every output; `on_failure(input, node, task,
    /// item_start, input_item, message)` every failed item.
    #[pyo3(signature = (path, name, version, on_output, on_failure, tagged))]
    // One argument per keyword of the Python call; a struct would only move them.
    #[allow(clippy::too_many_arguments)]
    fn setup(
        &self,
        py: Python<'_>,
        path: &str,
        name: Option<String>,
        version: Option<String>,
        on_output: Option<Py<PyAny>>,
        on_failure: Option<Py<PyAny>>,
        tagged: bool,
    ) -> PyResult<()> {
        // Loading may build the tasks (componentize-py, cargo: seconds to minutes): on a
        // blocking thread, so that Ctrl-C stops the wait (the build runs on to its end).
        let path = path.to_owned();
        let loading = self.rt.spawn_blocking(move || {
            // The edge of the package: a person waits on a build of seconds.
            let builder =
                pcluster_build::Builder::new().with_progress(|what| eprintln!("pcluster: {what}"));
            root::chain::load(path.as_ref(), &builder)
        });
        let mut chain = self.wait_for(py, async move {
            match loading.await {
                Ok(loaded) => loaded.map_err(error),
                Err(e) => Err(PclusterError::new_err(format!(
                    "loading the chain failed: {e}"
                ))),
            }
        })?;
        if let Some(n) = name {
            chain.name = n;
        }
        if let Some(v) = version {
            chain.version = v;
        }
        self.ensure_tagged(py, tagged)?;
        self.handler_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let errors = Arc::clone(&self.handler_error);
        let mut handlers = Handlers::new(move |_input, item: &[u8]| {
            if let Some(h) = &on_output {
                call(h, &errors, |py| {
                    pyo3::types::PyTuple::new(py, [PyBytes::new(py, item)])
                });
            }
        });
        let errors = Arc::clone(&self.handler_error);
        handlers = handlers.on_failure(move |f: ItemFailure| match &on_failure {
            Some(h) => call(h, &errors, |py| {
                (
                    f.input.0,
                    f.node.as_str(),
                    f.task.as_str(),
                    PyBytes::new(py, &f.item_start),
                    PyBytes::new(py, &f.input_item),
                    f.message.as_str(),
                )
                    .into_pyobject(py)
            }),
            None => eprintln!("pcluster: {f}"),
        });
        // Nodes building a Python environment say so: setup may take minutes.
        handlers =
            handlers.on_progress(|node, message| eprintln!("pcluster: node {node}: {message}"));
        let root = self.current()?;
        self.wait(py, root.setup_handlers(chain, handlers))
    }

    /// Queues encoded items (a list of bytes); waits while the root's queue is full. Returns
    /// the id of the first and how many.
    fn feed(&self, py: Python<'_>, items: &Bound<'_, PyList>) -> PyResult<(u64, u64)> {
        let root = self.current()?;
        let batch = root.options().batch_items;
        let mut batches = Vec::with_capacity(items.len() / batch + 1);
        let mut packed = protocol::Packed::with_capacity(batch, 0);
        for item in items.iter() {
            let bytes = item.cast::<PyBytes>().map_err(|_| {
                PyValueError::new_err("feed takes bytes here (pcluster.Root encodes items)")
            })?;
            packed.push(bytes.as_bytes());
            if packed.len() >= batch {
                batches.push(std::mem::replace(
                    &mut packed,
                    protocol::Packed::with_capacity(batch, 0),
                ));
            }
        }
        batches.push(packed);
        let mut first = None;
        let mut count = 0;
        for b in batches {
            let ids = self.wait(py, root.feed_packed(b))?;
            first.get_or_insert(ids.first.0);
            count += ids.count;
        }
        Ok((first.unwrap_or(0), count))
    }

    /// Returns when the root's queue has room for more input.
    fn wait_input(&self, py: Python<'_>) -> PyResult<()> {
        let root = self.current()?;
        self.wait(py, root.wait_input())
    }

    /// Returns when every fed item is processed and every output handed over.
    fn wait_empty(&self, py: Python<'_>) -> PyResult<()> {
        let root = self.current()?;
        self.wait(py, root.wait_empty())
    }

    /// Stops the workers and drops the chain and the queue; the nodes stay.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        let root = self.current()?;
        self.wait(py, root.reset())
    }

    /// Nodes take no new items until `resume`.
    fn pause(&self, py: Python<'_>) -> PyResult<()> {
        let root = self.current()?;
        self.wait(py, root.pause())
    }

    /// Undoes `pause`.
    fn resume(&self, py: Python<'_>) -> PyResult<()> {
        let root = self.current()?;
        self.wait(py, root.resume())
    }

    /// The nodes attached, as `host:port`.
    fn nodes(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let root = self.current()?;
        let nodes = self.wait(py, root.nodes())?;
        Ok(nodes.iter().map(ToString::to_string).collect())
    }

    /// Each node's status as JSON (`{"addr": …, "status": {…}}` or `{"addr": …, "error": …}`).
    fn status_json(&self, py: Python<'_>) -> PyResult<String> {
        let root = self.current()?;
        let statuses = self.wait(py, root.status())?;
        let list: Vec<serde_json::Value> = statuses
            .into_iter()
            .map(|(addr, s)| match s {
                Ok(s) => serde_json::json!({ "addr": addr.to_string(), "status": s }),
                Err(e) => serde_json::json!({ "addr": addr.to_string(), "error": e.to_string() }),
            })
            .collect();
        serde_json::to_string(&list).map_err(|e| PclusterError::new_err(e.to_string()))
    }

    /// Frees the nodes; later calls fail. Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let root = self
            .root
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(root) = root {
            // Like every wait, Ctrl-C interrupts it (the nodes then free themselves when the
            // root's connections close).
            self.wait_for(py, async move {
                match tokio::time::timeout(CLOSE_TIMEOUT, root.close_shared()).await {
                    Ok(closed) => closed.map_err(error),
                    Err(_) => Err(PclusterError::new_err(
                        "the nodes did not answer the goodbye in time",
                    )),
                }
            })?;
        }
        Ok(())
    }
}

/// Frees the nodes when the object goes away unclosed; without the GIL, since closing hands
/// the last outputs to the handlers, which take it.
impl Drop for Root {
    fn drop(&mut self) {
        let root = self
            .root
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(root) = root {
            let rt = &self.rt;
            let close = || {
                let _ = rt.block_on(async {
                    tokio::time::timeout(CLOSE_TIMEOUT, root.close_shared()).await
                });
            };
            Python::attach(|py| py.detach(close));
        }
    }
}
