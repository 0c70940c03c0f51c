//! Families of samples, written in Prometheus' text format. A scrape builds a [`Families`]
//! from the server's counters, then [`Families::render`]s it; nothing is kept between scrapes.
//!
//! Names follow Prometheus' conventions: counters end in `_total`, values are in base units
//! (bytes, seconds), and every family has a help text.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

/// The families of one scrape, in the order they were added.
#[derive(Debug, Default)]
pub struct Families {
    list: Vec<MetricFamily>,
}

/// One family, taking samples.
#[derive(Debug)]
pub struct Family<'a> {
    family: &'a mut MetricFamily,
}

impl Families {
    /// A counter family `name` (ending in `_total`) described by `help`.
    pub fn counter(&mut self, name: &str, help: &str) -> Family<'_> {
        debug_assert!(name.ends_with("_total"), "{name}");
        self.family(name, help, MetricType::COUNTER)
    }

    /// A gauge family `name` described by `help`.
    pub fn gauge(&mut self, name: &str, help: &str) -> Family<'_> {
        self.family(name, help, MetricType::GAUGE)
    }

    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> Family<'_> {
        let mut f = MetricFamily::default();
        f.set_name(name.to_owned());
        f.set_help(help.to_owned());
        f.set_field_type(kind);
        let at = self.list.len();
        self.list.push(f);
        Family {
            family: &mut self.list[at],
        }
    }

    /// The families in the text format; families without samples are left out.
    pub fn render(&self) -> String {
        let kept: Vec<MetricFamily> = self
            .list
            .iter()
            .filter(|f| !f.get_metric().is_empty())
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(kept.len() * 160);
        // Every family is well formed by construction (a name, a type, samples of that
        // type), so the encoder has nothing to refuse; say so rather than serve a half page.
        if let Err(e) = TextEncoder::new().encode(&kept, &mut out) {
            return format!("# metrics could not be encoded: {e}\n");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Family<'_> {
    /// Adds a sample with `labels` (name, value) and `value`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(name, value)| {
                    let mut l = LabelPair::default();
                    l.set_name((*name).to_owned());
                    l.set_value((*value).to_owned());
                    l
                })
                .collect(),
        );
        match self.family.get_field_type() {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        self.family.mut_metric().push(m);
        self
    }

    /// Adds a sample of an integer count (counts fit a float exactly up to 2^53).
    pub fn count(&mut self, labels: &[(&str, &str)], value: u64) -> &mut Self {
        self.sample(labels, value as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_written_with_help_type_and_escaped_labels() {
        let mut f = Families::default();
        f.counter("pcluster_task_items_out_total", "Items a task emitted.")
            .count(&[("task", "w1"), ("node", "127.0.0.2:7070")], 5)
            .count(&[("task", "say \"hi\"\n"), ("node", "n")], 7);
        f.gauge("pcluster_node_workers", "Worker threads.")
            .count(&[], 2);
        f.gauge("pcluster_unused", "No samples: left out.");
        let text = f.render();
        assert!(text.contains("# HELP pcluster_task_items_out_total Items a task emitted.\n"));
        assert!(text.contains("# TYPE pcluster_task_items_out_total counter\n"));
        assert!(
            text.contains("pcluster_task_items_out_total{task=\"w1\",node=\"127.0.0.2:7070\"} 5\n")
        );
        assert!(text.contains(r#"task="say \"hi\"\n""#), "{text}");
        assert!(text.contains("# TYPE pcluster_node_workers gauge\npcluster_node_workers 2\n"));
        assert!(!text.contains("pcluster_unused"), "{text}");
    }
}
