//! The user's handlers and what they are handed: outputs, failures, and the completion of
//! each input.

use std::time::Duration;

use protocol::{ItemId, Packed};
use tokio::sync::oneshot;

use super::Counters;
use super::observer::SharedObserver;
use crate::ItemFailure;
use crate::error::RootError;

pub(crate) type Reply<T = ()> = oneshot::Sender<Result<T, RootError>>;

/// Receives what the root hands over, on the scheduler task in delivery order: for each
/// input its outputs, then its failures, then its completion. One object can keep state
/// across the three (e.g. an output file and its journal).
pub trait Handler: Send {
    /// An output of input `input`.
    fn output(&mut self, input: ItemId, item: &[u8]);

    /// A big output of input `input` as a shared slice of the frame it arrived in, so it
    /// can be kept or handed to another thread without a copy. By default, [`Handler::output`].
    fn output_shared(&mut self, input: ItemId, item: bytes::Bytes) {
        self.output(input, &item);
    }

    /// An item that failed.
    fn failure(&mut self, f: ItemFailure) {
        tracing::warn!("{f}");
    }

    /// An input is complete (called only when [`Handler::wants_done`] says so).
    fn done(&mut self, d: InputDone) {
        let _ = d;
    }

    /// Whether completions are wanted: the fastest path skips them.
    fn wants_done(&self) -> bool {
        false
    }

    /// A node says what its setup of the chain is doing while that takes long (a Python
    /// environment being built). By default, logged (`tracing`, info).
    fn progress(&mut self, node: std::net::SocketAddr, message: &str) {
        tracing::info!(node = %node, "setup: {message}");
    }

    /// Nothing more waits to be handed over at the moment (or [`IDLE_EVERY`] passed while
    /// outputs kept coming): a handler that gathers outputs should pass them on now, so
    /// results leave as their inputs complete.
    fn idle(&mut self) {}

    /// `None` while the handler can take more. When what it hands on waits for a slow
    /// consumer (a pipe nobody reads, a slow disk), a future that ends once it has room
    /// again: meanwhile the root takes no outputs from the nodes and sends them no new
    /// inputs, yet keeps its connections alive. A handler must never block instead: the
    /// root's runtime would stall, heartbeats included, and the nodes would drop the root.
    fn room(&mut self) -> Option<Room> {
        None
    }
}

/// A future that ends once a handler has room again ([`Handler::room`]).
pub type Room = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The longest a busy root goes without calling [`Handler::idle`].
pub const IDLE_EVERY: Duration = Duration::from_millis(100);

/// An input is complete: all its outputs and failures were handed over, just before this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputDone {
    /// The input.
    pub input: ItemId,
    /// Outputs it produced.
    pub outputs: u32,
    /// Its items that failed (in any task).
    pub failed: u32,
    /// How often it was tried: more than once after node losses, or when an item of it
    /// was retried (`retries`; the most tries of any of its items).
    pub attempts: u32,
    /// Time from its first dispatch to its completion.
    pub elapsed: Duration,
}

type OutputFn = Box<dyn FnMut(ItemId, &[u8]) + Send>;
type FailureFn = Box<dyn FnMut(ItemFailure) + Send>;
type DoneFn = Box<dyn FnMut(InputDone) + Send>;
type ProgressFn = Box<dyn FnMut(std::net::SocketAddr, &str) + Send>;

/// A [`Handler`] of closures.
struct Closures {
    output: OutputFn,
    failure: FailureFn,
    done: Option<DoneFn>,
    progress: Option<ProgressFn>,
}

impl Handler for Closures {
    #[inline]
    fn output(&mut self, input: ItemId, item: &[u8]) {
        (self.output)(input, item);
    }

    fn failure(&mut self, f: ItemFailure) {
        (self.failure)(f);
    }

    fn done(&mut self, d: InputDone) {
        if let Some(f) = self.done.as_mut() {
            f(d);
        }
    }

    fn wants_done(&self) -> bool {
        self.done.is_some()
    }

    fn progress(&mut self, node: std::net::SocketAddr, message: &str) {
        match self.progress.as_mut() {
            Some(f) => f(node, message),
            None => tracing::info!(node = %node, "setup: {message}"),
        }
    }
}

/// The user's handlers: closures (built with [`Handlers::new`] and the `on_*` methods) or
/// one [`Handler`].
pub struct Handlers {
    inner: HandlersInner,
    /// Sees failures first (the dashboard), when one watches.
    pub(super) observer: Option<SharedObserver>,
}

enum HandlersInner {
    Closures(Closures),
    Handler(Box<dyn Handler>),
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("done", &self.wants_done())
            .finish_non_exhaustive()
    }
}

impl Handlers {
    /// Outputs go to `output`; failures are logged as warnings.
    pub fn new(output: impl FnMut(ItemId, &[u8]) + Send + 'static) -> Handlers {
        Handlers {
            inner: HandlersInner::Closures(Closures {
                output: Box::new(output),
                failure: Box::new(|f| tracing::warn!("{f}")),
                done: None,
                progress: None,
            }),
            observer: None,
        }
    }

    /// Everything goes to `handler`.
    pub fn from_handler(handler: impl Handler + 'static) -> Handlers {
        Handlers {
            inner: HandlersInner::Handler(Box::new(handler)),
            observer: None,
        }
    }

    /// Failed items go to `failure` (closures only: a [`Handler`] has its own).
    #[must_use]
    pub fn on_failure(mut self, failure: impl FnMut(ItemFailure) + Send + 'static) -> Handlers {
        if let HandlersInner::Closures(c) = &mut self.inner {
            c.failure = Box::new(failure);
        }
        self
    }

    /// Each completed input is reported to `done` after its outputs and failures (closures
    /// only: a [`Handler`] has its own).
    #[must_use]
    pub fn on_done(mut self, done: impl FnMut(InputDone) + Send + 'static) -> Handlers {
        if let HandlersInner::Closures(c) = &mut self.inner {
            c.done = Some(Box::new(done));
        }
        self
    }

    /// What nodes say of a long setup goes to `progress` (closures only: a [`Handler`] has
    /// its own).
    #[must_use]
    pub fn on_progress(
        mut self,
        progress: impl FnMut(std::net::SocketAddr, &str) + Send + 'static,
    ) -> Handlers {
        if let HandlersInner::Closures(c) = &mut self.inner {
            c.progress = Some(Box::new(progress));
        }
        self
    }

    pub(crate) fn progress(&mut self, node: std::net::SocketAddr, message: &str) {
        self.get().progress(node, message);
    }

    fn get(&mut self) -> &mut dyn Handler {
        match &mut self.inner {
            HandlersInner::Closures(c) => c,
            HandlersInner::Handler(h) => h.as_mut(),
        }
    }

    #[inline]
    pub(crate) fn output(&mut self, input: ItemId, item: &[u8]) {
        match &mut self.inner {
            HandlersInner::Closures(c) => (c.output)(input, item),
            HandlersInner::Handler(h) => h.output(input, item),
        }
    }

    /// `item`, a slice of `data`: a big one shared when the data is (a frame as it
    /// arrived), so the handler may keep it without a copy.
    #[inline]
    pub(crate) fn output_in(&mut self, input: ItemId, item: &[u8], data: &protocol::Data) {
        if item.len() >= protocol::split::SPLIT_BYTES
            && let HandlersInner::Handler(h) = &mut self.inner
            && let Some(shared) = data.shared_slice(item)
        {
            h.output_shared(input, shared);
        } else {
            self.output(input, item);
        }
    }

    pub(crate) fn failure(&mut self, f: ItemFailure) {
        if let Some(o) = &self.observer {
            o.failure(&f);
        }
        self.get().failure(f);
    }

    /// Whether completions are wanted (the fast path skips them otherwise).
    #[inline]
    pub(crate) fn wants_done(&self) -> bool {
        match &self.inner {
            HandlersInner::Closures(c) => c.wants_done(),
            HandlersInner::Handler(h) => h.wants_done(),
        }
    }

    pub(crate) fn done(&mut self, d: InputDone) {
        self.get().done(d);
    }

    pub(crate) fn idle(&mut self) {
        self.get().idle();
    }

    /// Whether the handler has room: `None`, or a future that ends once it has.
    pub(crate) fn room(&mut self) -> Option<Room> {
        match &mut self.inner {
            HandlersInner::Closures(_) => None,
            HandlersInner::Handler(h) => h.room(),
        }
    }

    /// Hands over one held input.
    pub(crate) fn deliver(&mut self, d: Delivery, counters: &mut Counters) {
        for item in &d.outputs {
            self.output(d.done.input, item);
        }
        counters.outputs += d.outputs.len() as u64;
        counters.failed += d.failures.len() as u64;
        counters.completed += 1;
        for f in d.failures {
            self.failure(f);
        }
        self.done(d.done);
    }
}

/// One input's results, held for ordered delivery (or built for a failure the root itself
/// decides, such as a poison item).
#[derive(Debug)]
pub(crate) struct Delivery {
    pub outputs: Packed,
    pub failures: Vec<ItemFailure>,
    pub done: InputDone,
}

impl Delivery {
    /// An input that failed as a whole.
    pub fn failed(input: ItemId, failure: ItemFailure, attempts: u32, elapsed: Duration) -> Self {
        Delivery {
            outputs: Packed::new(),
            failures: vec![failure],
            done: InputDone {
                input,
                outputs: 0,
                failed: 1,
                attempts,
                elapsed,
            },
        }
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> u64 {
        (self.outputs.bytes() + self.outputs.len() * 4) as u64
            + self
                .failures
                .iter()
                .map(|f| (f.input_item.len() + f.message.len() + f.item_start.len()) as u64)
                .sum::<u64>()
    }
}
