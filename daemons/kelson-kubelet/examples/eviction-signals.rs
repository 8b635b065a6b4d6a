//! What one eviction housekeeping pass costs: observes the machine's eviction signals (and
//! optionally one directory's `du`, as pod ranking does per pod) N times and prints wall and
//! CPU time per call. Usage: `eviction-signals [N] [DIR]` (defaults: 2000, no du).

use std::time::Instant;

use kelson_kubelet::eviction::signals::{du, Machine, SignalSource};

/// utime + stime of this process, in seconds (from /proc/self/stat, clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let dir = args.next();
    let m = Machine::new("/var/lib".into(), None);
    let (w0, c0) = (Instant::now(), cpu_seconds());
    let mut signals = 0;
    for _ in 0..n {
        signals += m.observe().len();
    }
    let (wall, cpu) = (w0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    println!(
        "observe(): {n} calls, {} signals each; {:.1} µs wall, {:.1} µs CPU per call",
        signals / n.max(1),
        wall * 1e6 / n as f64,
        cpu * 1e6 / n as f64
    );
    if let Some(d) = dir {
        let (w0, c0) = (Instant::now(), cpu_seconds());
        let reps = 20;
        let mut r = (0, 0);
        for _ in 0..reps {
            r = du(std::path::Path::new(&d));
        }
        println!(
            "du({d}): {} bytes, {} inodes; {:.2} ms wall, {:.2} ms CPU per call",
            r.0,
            r.1,
            w0.elapsed().as_secs_f64() * 1e3 / reps as f64,
            (cpu_seconds() - c0) * 1e3 / reps as f64
        );
    }
}
