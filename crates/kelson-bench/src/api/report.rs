//! Shared pieces of `api-bench` and `sched-bench`: a latency histogram, a one-column result
//! table with targets and PASS/MISS marks (printed as Markdown, ready for
//! `docs/benchmarks.md`), and `/proc` helpers to find a daemon's pid and read its RSS.
//!
//! Unlike kv-bench's side-by-side table there is no reference implementation running next to
//! ours (no kube-apiserver on this machine), so each line carries one value and, where the
//! issue sets one, an absolute target. A value that was not measured shows as `-` and is never
//! a PASS.

// Compiled into both binaries (`#[path]`), each of which uses a subset.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies in microseconds, 3 significant digits, up to 10 minutes.
#[derive(Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Hist {
    pub fn record(&mut self, d: Duration) {
        // Saturate instead of failing: one absurd sample must not abort a benchmark.
        self.0.saturating_record((d.as_micros() as u64).max(1));
    }

    pub fn add(&mut self, other: &Hist) {
        // Same bounds on both sides, so this cannot fail; ignore rather than panic anyway.
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile (0..=1) in milliseconds, `None` when empty.
    pub fn ms(&self, q: f64) -> Option<f64> {
        (!self.0.is_empty()).then(|| self.0.value_at_quantile(q) as f64 / 1000.0)
    }
}

/// How a line's value is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
    None,
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Line {
    pub workload: String,
    pub metric: String,
    pub value: Option<f64>,
    pub target: Target,
    pub note: String,
}

impl Line {
    pub fn new(workload: impl Into<String>, metric: &str, value: Option<f64>) -> Line {
        Line {
            workload: workload.into(),
            metric: metric.to_string(),
            value,
            target: Target::None,
            note: String::new(),
        }
    }

    pub fn target(mut self, t: Target) -> Line {
        self.target = t;
        self
    }

    pub fn note(mut self, n: impl Into<String>) -> Line {
        self.note = n.into();
        self
    }

    /// `Some(true)` PASS, `Some(false)` MISS, `None` for no target or no value.
    pub fn pass(&self) -> Option<bool> {
        let v = self.value.filter(|v| v.is_finite())?;
        match self.target {
            Target::AtMost(t) => Some(v <= t),
            Target::AtLeast(t) => Some(v >= t),
            Target::None => None,
        }
    }
}

/// A value with precision suited to its size.
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

/// Renders the lines as an aligned Markdown table.
pub fn render(lines: &[Line]) -> String {
    let header = ["workload", "metric", "value", "target", "mark", "note"];
    let rows: Vec<[String; 6]> = lines
        .iter()
        .map(|l| {
            [
                l.workload.clone(),
                l.metric.clone(),
                l.value.map(fmt_value).unwrap_or_else(|| "-".into()),
                match l.target {
                    Target::AtMost(t) => format!("<= {}", fmt_value(t)),
                    Target::AtLeast(t) => format!(">= {}", fmt_value(t)),
                    Target::None => "-".into(),
                },
                match l.pass() {
                    Some(true) => "PASS".into(),
                    Some(false) => "MISS".into(),
                    None => "-".into(),
                },
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
    let (p, m) = lines.iter().fold((0, 0), |(p, m), l| match l.pass() {
        Some(true) => (p + 1, m),
        Some(false) => (p, m + 1),
        None => (p, m),
    });
    let _ = writeln!(out, "\n{p} PASS, {m} MISS");
    out
}

/// The pid of the process whose command line has `exe_name` as its program and contains every
/// one of `args` (used to find the API server a `ControlPlane` started, by its port).
pub fn find_pid(exe_name: &str, args: &[&str]) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let parts: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        // The program itself, or a wrapper running it (valgrind's command line names it).
        let prog_matches = parts
            .iter()
            .take_while(|p| !p.is_empty())
            .any(|p| p.rsplit('/').next() == Some(exe_name));
        if prog_matches && args.iter().all(|a| parts.iter().any(|p| p == a)) {
            return Some(pid);
        }
    }
    None
}

/// `VmRSS` of a process in MB (MiB), `None` if it cannot be read.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// User+system CPU seconds a process has used so far (`/proc/<pid>/stat`), for "where does
/// the time go" notes.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space on every mainstream
    // architecture (sysconf would need `unsafe`, forbidden in this workspace).
    Some(ticks / 100.0)
}

/// The build profile of this program ("release" or "debug"), for the table header.
pub fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The machine, for the table header.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown OS".into());
    format!("{cores} cores, {os}")
}
