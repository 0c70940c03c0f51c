//! `LogLayer`: a `tracing` layer that sends every event as one line through a [`LogClient`].

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::client::LogClient;

/// The client's own diagnostics are not sent through the client: a failing connection would
/// otherwise report itself in a loop.
const OWN_TARGET: &str = "pcluster_logserver::client";

/// Formats each event as `<tag> <LEVEL> <target>: <message> key=value...` and sends it.
///
/// The tag tells senders apart (e.g. `node 127.0.0.2:6000`), since several processes on one
/// host share the source address the server sees.
#[derive(Debug, Clone)]
pub struct LogLayer {
    client: LogClient,
    tag: String,
}

impl LogLayer {
    /// A layer sending through `client`, prefixing each line with `tag`.
    pub fn new(client: LogClient, tag: String) -> LogLayer {
        LogLayer { client, tag }
    }

    /// The client this layer sends through, e.g. to flush it at exit.
    pub fn client(&self) -> &LogClient {
        &self.client
    }
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if let Some(line) = format_event(&self.tag, event) {
            self.client.send(line);
        }
    }
}

/// The line for `event`: `<tag> <LEVEL> <target>: <message> key=value...`; `None` for the
/// client's own diagnostics.
fn format_event(tag: &str, event: &Event<'_>) -> Option<String> {
    let meta = event.metadata();
    if meta.target().starts_with(OWN_TARGET) {
        return None;
    }
    let mut fields = Fields::default();
    event.record(&mut fields);
    let mut line = format!(
        "{tag} {} {}: {}",
        meta.level(),
        meta.target(),
        fields.message
    );
    if !fields.rest.is_empty() {
        if !fields.message.is_empty() {
            line.push(' ');
        }
        line.push_str(&fields.rest);
    }
    Some(line)
}

/// The message apart from the other fields, so that it comes first whatever the field order.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Fields {
    fn key(&mut self, field: &Field) {
        if !self.rest.is_empty() {
            self.rest.push(' ');
        }
        self.rest.push_str(field.name());
        self.rest.push('=');
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
            return;
        }
        self.key(field);
        // Quote only when needed, so `task=simple_task` stays greppable.
        if value.is_empty() || value.contains([' ', '"', '=']) {
            let _ = write!(self.rest, "{value:?}");
        } else {
            self.rest.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
            return;
        }
        self.key(field);
        let _ = write!(self.rest, "{value:?}");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Formats events as [`LogLayer`] does, into a list instead of a client.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Lines {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            if let Some(line) = format_event("node 127.0.0.2:6000", event) {
                self.0.lock().expect("lines").push(line);
            }
        }
    }

    fn lines(emit: impl FnOnce()) -> Vec<String> {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(lines.clone());
        tracing::subscriber::with_default(subscriber, emit);
        lines.0.lock().expect("lines").clone()
    }

    #[test]
    fn the_message_comes_first_then_the_fields() {
        let got = lines(|| {
            tracing::info!(target: "pcluster_node", worker = 3, task = "simple_task", "hello {}", "world");
            tracing::warn!(target: "t", reason = "two words", empty = "", "x");
            tracing::error!(target: "t", code = 7);
        });
        assert_eq!(
            got,
            [
                "node 127.0.0.2:6000 INFO pcluster_node: hello world worker=3 task=simple_task",
                "node 127.0.0.2:6000 WARN t: x reason=\"two words\" empty=\"\"",
                "node 127.0.0.2:6000 ERROR t: code=7",
            ]
        );
    }

    #[test]
    fn the_clients_own_diagnostics_are_not_sent() {
        let got = lines(|| {
            tracing::warn!(target: "pcluster_logserver::client", "cannot connect");
            tracing::info!(target: "pcluster_logserver::server", "listening");
        });
        assert_eq!(
            got,
            ["node 127.0.0.2:6000 INFO pcluster_logserver::server: listening"]
        );
    }
}
