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
        let meta = event.metadata();
        if meta.target().starts_with(OWN_TARGET) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = format!(
            "{} {} {}: {}",
            self.tag,
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
        self.client.send(line);
    }
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
