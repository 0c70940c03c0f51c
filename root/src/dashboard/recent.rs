//! What happened lately: the last failed items and the nodes lost and rejoined (fed by the
//! scheduler through its observer hook), and the last warnings of this process (fed by a
//! `tracing` layer, [`log_layer`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::Context;

use super::ring::Ring;
use super::unix_ms;
use crate::ItemFailure;
use crate::scheduler::Observer;

/// Failures kept for the page.
pub const FAILURES_KEPT: usize = 50;
/// Log lines kept for the page.
pub const LOG_LINES_KEPT: usize = 50;
/// Characters of a failure's message or a log line shown; the rest is cut.
const TEXT_CHARS: usize = 500;

/// One failed item, as shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureLine {
    /// When the root learned of it (Unix time, ms).
    pub at_ms: u64,
    /// The failing task (empty for a poison item).
    pub task: String,
    /// The node it failed on.
    pub node: String,
    /// The input it descends from.
    pub input: u64,
    /// The start of the failing item, as text.
    pub item: String,
    /// What happened.
    pub message: String,
}

impl FailureLine {
    fn from_failure(f: &ItemFailure, at_ms: u64, names: Option<&InputNumbers>) -> FailureLine {
        FailureLine {
            at_ms,
            task: f.task.clone(),
            node: f.node.clone(),
            input: names.map_or(f.input.0, |n| (n.0)(f.input)),
            item: String::from_utf8_lossy(&f.item_start).into_owned(),
            message: cut(&f.message),
        }
    }
}

/// One log line, as shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// When (Unix time, ms).
    pub at_ms: u64,
    /// `WARN` or `ERROR`.
    pub level: String,
    /// The module that logged it.
    pub target: String,
    /// The message and its fields.
    pub message: String,
}

/// How often a node was lost and came back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Times it was lost.
    pub lost: u32,
    /// Times it was added again after a loss.
    pub rejoined: u32,
    /// Whether it is attached now.
    pub attached: bool,
}

impl Membership {
    /// The node is (again) attached.
    pub fn added(&mut self) {
        if self.lost > self.rejoined {
            self.rejoined += 1;
        }
        self.attached = true;
    }

    /// The node is gone.
    pub fn lost(&mut self) {
        self.lost += 1;
        self.attached = false;
    }
}

#[derive(Debug)]
struct Recent {
    failures: Ring<FailureLine>,
    members: HashMap<SocketAddr, Membership>,
}

/// The root's recent failures and membership changes, as the scheduler reports them.
#[derive(Debug)]
pub(crate) struct Recorder {
    inner: Mutex<Recent>,
    numbers: Option<InputNumbers>,
}

/// How the page numbers inputs (see [`Root::set_input_numbers`](crate::Root::set_input_numbers)):
/// their id when none is given.
#[derive(Clone)]
pub struct InputNumbers(pub std::sync::Arc<dyn Fn(crate::ItemId) -> u64 + Send + Sync>);

impl std::fmt::Debug for InputNumbers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputNumbers(..)")
    }
}

impl Recorder {
    pub fn new(numbers: Option<InputNumbers>) -> Recorder {
        Recorder {
            numbers,
            inner: Mutex::new(Recent {
                failures: Ring::new(FAILURES_KEPT),
                members: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last failures, oldest first.
    pub fn failures(&self) -> Vec<FailureLine> {
        self.lock().failures.iter().cloned().collect()
    }

    /// Every node seen, with its losses.
    pub fn members(&self) -> HashMap<SocketAddr, Membership> {
        self.lock().members.clone()
    }
}

impl Observer for Recorder {
    fn failure(&self, f: &ItemFailure) {
        let line = FailureLine::from_failure(f, unix_ms(), self.numbers.as_ref());
        self.lock().failures.push(line);
    }

    fn node_added(&self, addr: SocketAddr) {
        self.lock().members.entry(addr).or_default().added();
    }

    fn node_lost(&self, addr: SocketAddr) {
        self.lock().members.entry(addr).or_default().lost();
    }
}

/// The text cut to [`TEXT_CHARS`] characters.
fn cut(s: &str) -> String {
    match s.char_indices().nth(TEXT_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The last warnings and errors of this process (one process, one log).
static LOGS: Mutex<Ring<LogLine>> = Mutex::new(Ring::new(LOG_LINES_KEPT));

/// The last warnings and errors logged in this process, oldest first (only once
/// [`log_layer`] is installed).
pub fn recent_logs() -> Vec<LogLine> {
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// A `tracing` layer keeping this process's last warnings and errors for the dashboard
/// (filtered to WARN and above, so it enables no event the other layers do not).
pub fn log_layer<S>() -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    LogKeeper.with_filter(LevelFilter::WARN)
}

struct LogKeeper;

impl<S: Subscriber> Layer<S> for LogKeeper {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        let meta = event.metadata();
        let line = LogLine {
            at_ms: unix_ms(),
            level: meta.level().to_string(),
            target: meta.target().to_string(),
            message: cut(&text.0),
        };
        LOGS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
}

/// An event's message followed by its other fields as `name=value`.
#[derive(Default)]
struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}");
            if !rest.is_empty() {
                self.0.push(' ');
                self.0.push_str(&rest);
            }
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ItemId;

    fn failure(i: u64) -> ItemFailure {
        ItemFailure {
            input: ItemId(i),
            node: "127.0.0.2:6000".into(),
            task: "parse".into(),
            task_index: None,
            item_start: format!("item-{i}").into_bytes(),
            input_item: Vec::new(),
            message: "x".repeat(1000),
        }
    }

    #[test]
    fn keeps_the_last_failures_cut_short() {
        let r = Recorder::new(None);
        for i in 0..(FAILURES_KEPT as u64 + 5) {
            r.failure(&failure(i));
        }
        let f = r.failures();
        assert_eq!(f.len(), FAILURES_KEPT);
        assert_eq!(f[0].input, 5);
        assert_eq!(f[0].item, "item-5");
        assert_eq!(f[0].message.chars().count(), TEXT_CHARS + 1);
    }

    #[test]
    fn counts_losses_and_returns() {
        let r = Recorder::new(None);
        let a: SocketAddr = "127.0.0.2:6000".parse().unwrap();
        r.node_added(a);
        assert_eq!(
            r.members()[&a],
            Membership {
                lost: 0,
                rejoined: 0,
                attached: true
            }
        );
        r.node_lost(a);
        r.node_added(a);
        r.node_added(a); // a second add without a loss is no return
        r.node_lost(a);
        assert_eq!(
            r.members()[&a],
            Membership {
                lost: 2,
                rejoined: 1,
                attached: false
            }
        );
    }

    #[test]
    fn the_layer_keeps_warnings_only() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry().with(log_layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept");
            tracing::warn!(node = "n1", "kept {}", 42);
        });
        let logs = recent_logs();
        let mine: Vec<_> = logs.iter().filter(|l| l.message.contains("kept")).collect();
        assert_eq!(mine.len(), 1, "{logs:?}");
        assert_eq!(mine[0].message, "kept 42 node=n1");
        assert_eq!(mine[0].level, "WARN");
    }
}
