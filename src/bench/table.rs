//! The printed result: one markdown table, `figure | this project | baseline
//! (same run) | ratio`. The ratio is always this project's figure over the
//! comparison's, in percent: for throughput higher is better, for latency and
//! memory (compared with their targets) lower is.

use std::fmt::Write;

/// How a figure is printed.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    PerSec,
    Millis,
    MiB,
    Secs,
    /// A plain count.
    Count,
    /// A small fraction, such as calls per transition.
    Fraction,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Unit::PerSec => format!("{}/s", thousands(v.round() as u64)),
            Unit::Millis => format!("{v:.2} ms"),
            Unit::MiB => format!("{v:.1} MiB"),
            Unit::Secs => format!("{v:.1} s"),
            Unit::Count => thousands(v.round() as u64),
            Unit::Fraction => format!("{v:.4}"),
        }
    }
}

/// What a figure is compared with.
#[derive(Debug, Clone)]
pub enum Comparison {
    /// A baseline measured in the same run.
    Measured { label: String, value: f64 },
    /// A baseline that could not be measured, and why.
    Missing { label: String },
    /// The target for this figure.
    Target { value: f64 },
    /// Nothing to compare with.
    None,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub figure: String,
    pub value: f64,
    pub unit: Unit,
    pub comparison: Comparison,
}

impl Row {
    pub fn new(figure: impl Into<String>, value: f64, unit: Unit, comparison: Comparison) -> Self {
        Self { figure: figure.into(), value, unit, comparison }
    }
}

/// A measured baseline, or n/a with the reason when there is none.
pub fn baseline(label: &str, value: Option<f64>) -> Comparison {
    match value {
        Some(value) => Comparison::Measured { label: label.to_owned(), value },
        None => Comparison::Missing { label: label.to_owned() },
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn render(rows: &[Row]) -> String {
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            let (base, ratio) = match &r.comparison {
                Comparison::Measured { label, value } => (
                    format!("{} ({label})", r.unit.format(*value)),
                    format!("{:.0}%", 100.0 * r.value / value.max(1e-9)),
                ),
                Comparison::Missing { label } => (format!("n/a ({label})"), "n/a".to_owned()),
                // A target of none: a ratio says nothing, met or not does.
                Comparison::Target { value } if *value == 0.0 => (
                    format!("target {}", r.unit.format(*value)),
                    if r.value == 0.0 { "met" } else { "missed" }.to_owned(),
                ),
                Comparison::Target { value } => (
                    format!("target {}", r.unit.format(*value).replace("/s", "/s or more")),
                    format!("{:.0}%", 100.0 * r.value / value.max(1e-9)),
                ),
                Comparison::None => ("—".to_owned(), "—".to_owned()),
            };
            [r.figure.clone(), r.unit.format(r.value), base, ratio]
        })
        .collect();
    let header = ["figure", "this project", "baseline (same run)", "ratio"];
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String; 4]| {
        let mut s = String::from("|");
        for (c, w) in cols.iter().zip(widths) {
            let _ = write!(s, " {c}{} |", " ".repeat(w - c.chars().count()));
        }
        s
    };
    let mut out = line(&header.map(String::from));
    out.push('\n');
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for row in &cells {
        out.push('\n');
        out.push_str(&line(row));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_ratio_against_the_baseline_and_n_a_without_one() {
        let rows = [
            Row::new("e2e", 3_210.4, Unit::PerSec, baseline("raw_amqp", Some(12_842.0))),
            Row::new("304", 9_000.0, Unit::PerSec, baseline("bare_axum: not built", None)),
            Row::new("rss", 50.0, Unit::MiB, Comparison::Target { value: 100.0 }),
            Row::new("p50", 1.5, Unit::Millis, Comparison::None),
            Row::new("throttled", 0.0, Unit::Count, Comparison::Target { value: 0.0 }),
        ];
        let table = render(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 7, "{table}");
        assert!(lines[2].contains("3,210/s") && lines[2].contains("12,842/s (raw_amqp)") && lines[2].contains("| 25% "), "{table}");
        assert!(lines[3].contains("n/a (bare_axum: not built)") && lines[3].contains("| n/a "), "{table}");
        assert!(lines[4].contains("target 100.0 MiB") && lines[4].contains("50%"), "{table}");
        assert!(lines[6].contains("target 0") && lines[6].contains("| met "), "{table}");
        assert!(lines.iter().all(|l| l.chars().count() == lines[0].chars().count()), "{table}");
    }
}
