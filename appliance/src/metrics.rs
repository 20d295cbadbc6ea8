//! Prometheus text exposition: the one encoder behind `GET /metrics` and
//! each channel's `metrics.prom`. The modules that own counters add their
//! samples to an [`Exposition`] (`export` methods beside the counters); it
//! keeps one `# HELP`/`# TYPE` per family however many channels or nodes
//! add samples to it, escapes label values, and renders the text once.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the daemon restarts).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    /// Rendered label sets (`a="1",b="2"`, empty for none) and values.
    samples: Vec<(String, f64)>,
}

/// Metric families in the order they were first added, with their samples.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Adds a counter sample.
    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, Kind::Counter, help, labels, value);
    }

    /// Adds a gauge sample.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, Kind::Gauge, help, labels, value);
    }

    /// Adds a sample to family `name`, declaring the family the first time
    /// (a later declaration's kind and help are those of the first).
    pub fn sample(&mut self, name: &'static str, kind: Kind, help: &'static str, labels: &[(&str, &str)], value: f64) {
        let labels = render_labels(labels);
        self.family(name, kind, help).samples.push((labels, value));
    }

    /// Declares a family without adding a sample: its `# HELP` and `# TYPE`
    /// appear even while nothing reports it.
    pub fn declare(&mut self, name: &'static str, kind: Kind, help: &'static str) {
        self.family(name, kind, help);
    }

    fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) -> &mut Family {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(at) => at,
            None => {
                self.families.push(Family { name, kind, help, samples: Vec::new() });
                self.families.len() - 1
            }
        };
        debug_assert_eq!(self.families[at].kind, kind, "{name} declared as two kinds");
        &mut self.families[at]
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", f.name, f.help, f.name, f.kind.name());
            for (labels, v) in &f.samples {
                let v = render_value(*v);
                if labels.is_empty() {
                    let _ = writeln!(out, "{} {v}", f.name);
                } else {
                    let _ = writeln!(out, "{}{{{labels}}} {v}", f.name);
                }
            }
        }
        out
    }
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

fn render_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        v.to_string()
    }
}

/// Adds HTTP responses counted by status class (1xx..5xx) as family `name`.
pub fn status_classes(out: &mut Exposition, name: &'static str, help: &'static str, counts: &[AtomicU64; 5]) {
    for (i, n) in counts.iter().enumerate() {
        let class = format!("{}xx", i + 1);
        out.counter(name, help, &[("code", &class)], n.load(Ordering::Relaxed) as f64);
    }
}

/// A 0/1 gauge value.
pub fn flag(on: bool) -> f64 {
    f64::from(u8::from(on))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn families_keep_one_header_and_their_samples_together() {
        let mut e = Exposition::new();
        e.counter("x_total", "Frames.", &[("channel", "a")], 1.0);
        e.gauge("y", "Seconds.", &[("channel", "a")], 0.5);
        e.counter("x_total", "Frames.", &[("channel", "b")], 2.0);
        e.gauge("z", "Plain.", &[], 3.0);
        let text = e.render();
        assert_eq!(text.matches("# TYPE x_total counter").count(), 1, "{text}");
        assert_eq!(text.matches("# HELP x_total Frames.").count(), 1, "{text}");
        let a = text.find("x_total{channel=\"a\"} 1\n").unwrap();
        let b = text.find("x_total{channel=\"b\"} 2\n").unwrap();
        let y = text.find("# HELP y ").unwrap();
        assert!(a < b && b < y, "a family's samples stay together, families in first-added order:\n{text}");
        assert!(text.contains("# TYPE y gauge\ny{channel=\"a\"} 0.5\n"), "{text}");
        assert!(text.ends_with("# TYPE z gauge\nz 3\n"), "no braces without labels: {text}");
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.rsplit_once(' ').is_some_and(|(_, v)| v.parse::<f64>().is_ok())),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped_and_special_values_spelled_as_prometheus_reads_them() {
        let mut e = Exposition::new();
        e.gauge("g", "G.", &[("node", "a\"b\\c\nd"), ("k", "v")], f64::NAN);
        e.gauge("g", "G.", &[], f64::INFINITY);
        e.gauge("g", "G.", &[], f64::NEG_INFINITY);
        let text = e.render();
        assert!(text.contains("g{node=\"a\\\"b\\\\c\\nd\",k=\"v\"} NaN\n"), "{text}");
        assert!(text.contains("g +Inf\n") && text.contains("g -Inf\n"), "{text}");
        assert_eq!(text.lines().count(), 5, "{text}");
    }

    #[test]
    fn a_declared_family_without_samples_still_has_its_header() {
        let mut e = Exposition::new();
        e.declare("w", Kind::Gauge, "Weights.");
        assert_eq!(e.render(), "# HELP w Weights.\n# TYPE w gauge\n");
        assert_eq!(Exposition::new().render(), "");
    }
}
