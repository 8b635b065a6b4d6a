//! The side-by-side table: one line per (workload, metric), etcd's and kelson-kv's values, their
//! ratio oriented so that **> 1.0 always means kelson-kv is better** (kelson/etcd for
//! throughput, etcd/kelson for latency and memory), the target from the issue and a PASS/MISS
//! mark.
//!
//! The table is printed as Markdown so it can be pasted into `docs/benchmarks.md` unchanged.
//! A value that was not measured (etcd-only runs, a failed workload) shows as `-`, and its mark
//! as `-`: a missing number is never a PASS.

use std::fmt::Write as _;

/// Which direction is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// The goal a line is marked against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The oriented ratio must be at least this.
    Ratio(f64),
    /// kelson-kv's value must be at most this (same unit as the line).
    AtMost(f64),
    /// Informational line without a goal.
    None,
}

/// The mark of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Pass,
    Miss,
    NotMeasured,
}

impl Mark {
    fn as_str(self) -> &'static str {
        match self {
            Mark::Pass => "PASS",
            Mark::Miss => "MISS",
            Mark::NotMeasured => "-",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Line {
    pub workload: String,
    pub metric: String,
    pub better: Better,
    pub target: Target,
    pub etcd: Option<f64>,
    pub kelson: Option<f64>,
    /// Anything a reader must know about these numbers (errors, incomplete delivery).
    pub note: String,
}

impl Line {
    pub fn new(workload: &str, metric: &str, better: Better, target: Target) -> Line {
        Line {
            workload: workload.to_string(),
            metric: metric.to_string(),
            better,
            target,
            etcd: None,
            kelson: None,
            note: String::new(),
        }
    }

    /// kelson relative to etcd, oriented so > 1.0 means kelson-kv is better.
    pub fn ratio(&self) -> Option<f64> {
        let (e, k) = (self.etcd?, self.kelson?);
        let (num, den) = match self.better {
            Better::Higher => (k, e),
            Better::Lower => (e, k),
        };
        (den > 0.0 && num.is_finite()).then(|| num / den)
    }

    pub fn mark(&self) -> Mark {
        match self.target {
            Target::Ratio(min) => match self.ratio() {
                Some(r) if r >= min => Mark::Pass,
                Some(_) => Mark::Miss,
                None => Mark::NotMeasured,
            },
            Target::AtMost(max) => match self.kelson {
                Some(k) if k <= max => Mark::Pass,
                Some(_) => Mark::Miss,
                None => Mark::NotMeasured,
            },
            Target::None => Mark::NotMeasured,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::Ratio(r) => format!(">= {r:.1}x"),
            Target::AtMost(v) => format!("<= {}", fmt_value(v)),
            Target::None => "-".into(),
        }
    }
}

/// A value with precision suited to its size (QPS in the thousands, latencies in ms).
pub fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(fmt_value).unwrap_or_else(|| "-".into())
}

/// Renders the lines as an aligned Markdown table.
pub fn render(lines: &[Line]) -> String {
    let header = [
        "workload",
        "metric",
        "etcd",
        "kelson-kv",
        "ratio (>1 = kelson better)",
        "target",
        "mark",
        "note",
    ];
    let rows: Vec<[String; 8]> = lines
        .iter()
        .map(|l| {
            [
                l.workload.clone(),
                l.metric.clone(),
                opt(l.etcd),
                opt(l.kelson),
                l.ratio()
                    .map(|r| format!("{r:.2}x"))
                    .unwrap_or_else(|| "-".into()),
                l.target_text(),
                l.mark().as_str().to_string(),
                l.note.clone(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        out.push('|');
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(out, " {c:<w$} |");
        }
        out.push('\n');
    };
    line(&mut out, &header);
    let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(
        &mut out,
        &dashes.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for r in &rows {
        line(&mut out, &r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// Counts of PASS and MISS marks.
pub fn summary(lines: &[Line]) -> (usize, usize) {
    lines.iter().fold((0, 0), |(p, m), l| match l.mark() {
        Mark::Pass => (p + 1, m),
        Mark::Miss => (p, m + 1),
        Mark::NotMeasured => (p, m),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(better: Better, target: Target, e: Option<f64>, k: Option<f64>) -> Line {
        let mut l = Line::new("w", "m", better, target);
        l.etcd = e;
        l.kelson = k;
        l
    }

    #[test]
    fn ratio_is_oriented_so_above_one_means_kelson_better() {
        // Throughput: kelson 2000 vs etcd 1000 → 2x better.
        let l = line(
            Better::Higher,
            Target::Ratio(1.5),
            Some(1000.0),
            Some(2000.0),
        );
        assert_eq!(l.ratio(), Some(2.0));
        assert_eq!(l.mark(), Mark::Pass);
        // Latency: kelson 4 ms vs etcd 2 ms → 0.5x (worse).
        let l = line(Better::Lower, Target::Ratio(1.0), Some(2.0), Some(4.0));
        assert_eq!(l.ratio(), Some(0.5));
        assert_eq!(l.mark(), Mark::Miss);
        // Exactly on target passes.
        let l = line(Better::Higher, Target::Ratio(1.5), Some(100.0), Some(150.0));
        assert_eq!(l.mark(), Mark::Pass);
    }

    #[test]
    fn missing_or_zero_values_are_never_a_pass() {
        let l = line(Better::Higher, Target::Ratio(1.0), Some(1000.0), None);
        assert_eq!(l.ratio(), None);
        assert_eq!(l.mark(), Mark::NotMeasured);
        let l = line(Better::Higher, Target::Ratio(1.0), Some(0.0), Some(5.0));
        assert_eq!(l.ratio(), None);
        let l = line(Better::Lower, Target::Ratio(1.0), Some(1.0), Some(0.0));
        assert_eq!(l.ratio(), None);
        let l = line(Better::Lower, Target::None, Some(1.0), Some(0.5));
        assert_eq!(l.mark(), Mark::NotMeasured);
    }

    #[test]
    fn absolute_cap_checks_kelson_only() {
        let l = line(
            Better::Lower,
            Target::AtMost(250.0),
            Some(900.0),
            Some(240.0),
        );
        assert_eq!(l.mark(), Mark::Pass);
        let l = line(
            Better::Lower,
            Target::AtMost(250.0),
            Some(100.0),
            Some(251.0),
        );
        assert_eq!(l.mark(), Mark::Miss);
        let l = line(Better::Lower, Target::AtMost(250.0), Some(100.0), None);
        assert_eq!(l.mark(), Mark::NotMeasured);
    }

    #[test]
    fn table_is_aligned_markdown_with_every_line() {
        let lines = vec![
            line(
                Better::Higher,
                Target::Ratio(1.5),
                Some(1234.5),
                Some(2469.0),
            ),
            line(
                Better::Lower,
                Target::AtMost(250.0),
                Some(300.0),
                Some(260.0),
            ),
        ];
        let t = render(&lines);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 4, "{t}");
        assert!(rows[0].contains("ratio (>1 = kelson better)"));
        assert!(rows[1].starts_with("| ---"));
        assert!(rows[2].contains("2.00x") && rows[2].contains("PASS"), "{t}");
        assert!(
            rows[3].contains("<= 250") && rows[3].contains("MISS"),
            "{t}"
        );
        let widths: Vec<usize> = rows.iter().map(|r| r.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{t}");
        assert_eq!(summary(&lines), (1, 1));
    }

    #[test]
    fn values_are_formatted_by_magnitude() {
        assert_eq!(fmt_value(12345.6), "12346");
        assert_eq!(fmt_value(12.34), "12.3");
        assert_eq!(fmt_value(1.234), "1.23");
        assert_eq!(fmt_value(f64::NAN), "-");
    }
}
