//! `kv-bench`: runs the same workloads against a single-member real etcd and a single-member
//! kelson-kv, one after the other on the same machine, and prints a side-by-side Markdown table
//! with ratios oriented so that > 1.0 means kelson-kv is better, the targets from the issue and
//! PASS/MISS marks.
//!
//! Design choices, because they decide what the numbers mean:
//! - The servers never run at the same time: on a 2-core machine one would steal the other's
//!   CPU. The client load generator shares the machine with the server under test, identically
//!   for both.
//! - The throughput/latency rows share one server per implementation (started fresh for the
//!   run); each RSS row gets a fresh server per implementation, so memory reflects exactly the
//!   loaded keyspace and nothing else.
//! - Same durability for both (fsync on), plaintext loopback, default timings; see `server`.
//! - The put and range rows are driven by a lean HTTP/2 gRPC client (`grpc`) by default, or by
//!   the stock `etcd-client` crate with `--client etcd-client`; the generator shares the cores
//!   with the server, so its own CPU per request is printed as a row next to the server's. See
//!   `workload` for the load model.
//!
//! This is a program, not a test: it takes minutes at full size. `--quick` (1 s workloads,
//! 20k keys) validates the program itself.

mod grpc;
mod report;
mod server;
mod workload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tracing::{error, info};

use report::{Better, Line, Target};
use server::{Kind, Server};
use workload::{
    closed_loop, connect_load_pool, connect_pool, conns_for, preload, watch_fanout, ClientKind, Op,
};

/// Benchmark kelson-kv against etcd with identical workloads and print a comparison table.
#[derive(Parser, Debug)]
#[command(name = "kv-bench")]
struct Args {
    /// Seconds per throughput/latency workload [default: 10, 1 with --quick].
    #[arg(long)]
    duration: Option<f64>,
    /// Keys loaded for the RSS rows [default: 1000000, 20000 with --quick].
    #[arg(long)]
    keys: Option<u64>,
    /// Keys preloaded for the range rows.
    #[arg(long, default_value_t = 10_000)]
    range_keys: u64,
    /// Distinct keys the put workloads write to.
    #[arg(long, default_value_t = 100_000)]
    put_keyspace: u64,
    /// Value size in bytes for the put and range workloads.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Load generator for the put and range rows: the lean h2 gRPC client or the stock
    /// etcd-client crate (tonic).
    #[arg(long, value_enum, default_value_t = ClientKind::Lean)]
    client: ClientKind,
    /// Concurrent clients sharing one gRPC connection in the put and range rows.
    #[arg(long, default_value_t = workload::CLIENTS_PER_CONN)]
    clients_per_conn: usize,
    /// Watchers in the fan-out row.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Puts (events per watcher) in the fan-out row [default: 1000, 100 with --quick].
    #[arg(long)]
    watch_events: Option<usize>,
    /// Rows to run (comma-separated or repeated): put-seq, put-64, put-256, range-lin,
    /// range-ser, watch, rss-64, rss-256. Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Row>,
    /// kelson-kv binary [default: kelson-kv next to this program].
    #[arg(long)]
    kelson_bin: Option<PathBuf>,
    /// etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Run against etcd only (kelson-kv columns stay empty).
    #[arg(long, conflicts_with = "kelson_only")]
    etcd_only: bool,
    /// Run against kelson-kv only (etcd columns stay empty).
    #[arg(long)]
    kelson_only: bool,
    /// Smoke run: 1 s workloads, 20k keys, 100 watch events (unless given explicitly).
    #[arg(long)]
    quick: bool,
    /// Directory for the servers' temp data dirs [default: the system temp dir].
    #[arg(long)]
    data_root: Option<PathBuf>,
}

/// A selectable group of table lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Row {
    PutSeq,
    #[value(name = "put-64")]
    Put64,
    #[value(name = "put-256")]
    Put256,
    RangeLin,
    RangeSer,
    Watch,
    #[value(name = "rss-64")]
    Rss64,
    #[value(name = "rss-256")]
    Rss256,
}

const ALL_ROWS: [Row; 8] = [
    Row::PutSeq,
    Row::Put64,
    Row::Put256,
    Row::RangeLin,
    Row::RangeSer,
    Row::Watch,
    Row::Rss64,
    Row::Rss256,
];

/// Concurrency of the range rows.
const RANGE_CLIENTS: usize = 64;
/// Throughput targets: every row at least on par, the concurrent rows 1.5x.
const PAR: Target = Target::Ratio(1.0);
const CONCURRENT: Target = Target::Ratio(1.5);
/// Memory cap for kelson-kv with the full keyspace loaded, in MB.
const RSS_CAP_MB: f64 = 250.0;
/// Informational line on the put and range rows: server CPU time per successful request.
const CPU_METRIC: &str = "server CPU us/op";
/// Informational line on the put and range rows: the load generator's (this process's) CPU
/// time per successful request, so readers see what the client took from the shared cores.
const CLIENT_CPU_METRIC: &str = "client CPU us/op";

/// Effective settings after applying `--quick` defaults.
#[derive(Debug, Clone)]
struct Settings {
    duration: Duration,
    keys: u64,
    range_keys: u64,
    put_keyspace: u64,
    value_size: usize,
    clients_per_conn: usize,
    client: ClientKind,
    watchers: usize,
    watch_events: usize,
    rows: Vec<Row>,
    kinds: Vec<Kind>,
    kelson_bin: PathBuf,
    etcd_bin: PathBuf,
    data_root: Option<PathBuf>,
}

impl Settings {
    fn from_args(a: Args) -> anyhow::Result<Settings> {
        let duration = a.duration.unwrap_or(if a.quick { 1.0 } else { 10.0 });
        if !(duration.is_finite() && duration > 0.0 && duration <= 3600.0) {
            anyhow::bail!("--duration must be in (0, 3600] seconds, got {duration}");
        }
        let keys = a.keys.unwrap_or(if a.quick { 20_000 } else { 1_000_000 });
        if keys == 0
            || a.range_keys == 0
            || a.put_keyspace == 0
            || a.watchers == 0
            || a.clients_per_conn == 0
        {
            anyhow::bail!(
                "--keys, --range-keys, --put-keyspace, --watchers and --clients-per-conn must be positive"
            );
        }
        let watch_events = a.watch_events.unwrap_or(if a.quick { 100 } else { 1000 });
        if watch_events == 0 {
            anyhow::bail!("--watch-events must be positive");
        }
        let mut rows = if a.only.is_empty() {
            ALL_ROWS.to_vec()
        } else {
            a.only
        };
        rows.sort_by_key(|r| ALL_ROWS.iter().position(|x| x == r));
        rows.dedup();
        let kinds = match (a.etcd_only, a.kelson_only) {
            (true, _) => vec![Kind::Etcd],
            (_, true) => vec![Kind::Kelson],
            _ => vec![Kind::Etcd, Kind::Kelson],
        };
        let kelson_bin = match a.kelson_bin {
            Some(p) => p,
            None => std::env::current_exe()
                .context("locating this program")?
                .parent()
                .map(|d| d.join("kelson-kv"))
                .context("this program has no parent directory")?,
        };
        Ok(Settings {
            duration: Duration::from_secs_f64(duration),
            keys,
            range_keys: a.range_keys,
            put_keyspace: a.put_keyspace,
            value_size: a.value_size,
            clients_per_conn: a.clients_per_conn,
            client: a.client,
            watchers: a.watchers,
            watch_events,
            rows,
            kinds,
            kelson_bin,
            etcd_bin: a.etcd_bin,
            data_root: a.data_root,
        })
    }

    fn bin(&self, kind: Kind) -> &Path {
        match kind {
            Kind::Etcd => &self.etcd_bin,
            Kind::Kelson => &self.kelson_bin,
        }
    }
}

/// "1M", "20k", "1500": key counts as people say them.
fn human_count(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// The table's lines for `row`, in print order, before any value is filled in.
fn lines_for(row: Row, s: &Settings) -> Vec<Line> {
    let put = |clients: usize| {
        let plural = if clients == 1 { "" } else { "s" };
        format!("put {} B, {clients} client{plural}", s.value_size)
    };
    match row {
        Row::PutSeq => vec![
            Line::new(&put(1), "QPS", Better::Higher, PAR),
            Line::new(&put(1), "p50 ms", Better::Lower, PAR),
            Line::new(&put(1), "p99 ms", Better::Lower, PAR),
            Line::new(&put(1), CPU_METRIC, Better::Lower, Target::None),
            Line::new(&put(1), CLIENT_CPU_METRIC, Better::Lower, Target::None),
        ],
        Row::Put64 | Row::Put256 => {
            let c = if row == Row::Put64 { 64 } else { 256 };
            vec![
                Line::new(&put(c), "QPS", Better::Higher, CONCURRENT),
                Line::new(&put(c), "p99 ms", Better::Lower, PAR),
                Line::new(&put(c), CPU_METRIC, Better::Lower, Target::None),
                Line::new(&put(c), CLIENT_CPU_METRIC, Better::Lower, Target::None),
            ]
        }
        Row::RangeLin | Row::RangeSer => {
            let w = format!(
                "range {}, {RANGE_CLIENTS} clients, {} keys",
                if row == Row::RangeLin {
                    "linearizable"
                } else {
                    "serializable"
                },
                human_count(s.range_keys)
            );
            vec![
                Line::new(&w, "QPS", Better::Higher, CONCURRENT),
                Line::new(&w, "p99 ms", Better::Lower, PAR),
                Line::new(&w, CPU_METRIC, Better::Lower, Target::None),
                Line::new(&w, CLIENT_CPU_METRIC, Better::Lower, Target::None),
            ]
        }
        Row::Watch => {
            let w = format!(
                "watch fan-out, {} watchers x {} puts",
                s.watchers, s.watch_events
            );
            vec![Line::new(&w, "events/s", Better::Higher, PAR)]
        }
        Row::Rss64 | Row::Rss256 => {
            let size = if row == Row::Rss64 { 64 } else { 256 };
            let w = format!("{} keys x {size} B loaded", human_count(s.keys));
            vec![
                Line::new(&w, "RSS MB", Better::Lower, Target::AtMost(RSS_CAP_MB)),
                Line::new(&w, "load keys/s", Better::Higher, Target::None),
            ]
        }
    }
}

fn set(line: &mut Line, kind: Kind, v: Option<f64>) {
    match kind {
        Kind::Etcd => line.etcd = v,
        Kind::Kelson => line.kelson = v,
    }
}

fn add_note(line: &mut Line, kind: Kind, note: &str) {
    if !line.note.is_empty() {
        line.note.push_str("; ");
    }
    line.note.push_str(&format!("{}: {note}", kind.name()));
}

/// Runs one throughput/latency row against a running server and fills in its lines.
async fn run_row(row: Row, srv: &Server, s: &Settings, lines: &mut [Line]) -> anyhow::Result<()> {
    let kind = srv.kind();
    let ep = srv.endpoint();
    let put = |_| Op::Put {
        prefix: "bench/put/".into(),
        keyspace: s.put_keyspace,
        value_size: s.value_size,
    };
    let (clients, op) = match row {
        Row::PutSeq => (1, put(())),
        Row::Put64 => (64, put(())),
        Row::Put256 => (256, put(())),
        Row::RangeLin | Row::RangeSer => (
            RANGE_CLIENTS,
            Op::Range {
                prefix: "bench/range/".into(),
                keyspace: s.range_keys,
                serializable: row == Row::RangeSer,
            },
        ),
        Row::Watch => {
            let timeout = s.duration * 3 + Duration::from_secs(30);
            let r = watch_fanout(ep, s.watchers, s.watch_events, timeout).await?;
            info!(
                "{} watch: {}/{} events in {:?} = {:.0} events/s",
                kind.name(),
                r.delivered,
                r.expected,
                r.elapsed,
                r.events_per_sec()
            );
            set(&mut lines[0], kind, Some(r.events_per_sec()));
            if !r.complete() {
                let note = format!("only {} of {} events delivered", r.delivered, r.expected);
                add_note(&mut lines[0], kind, &note);
            }
            return Ok(());
        }
        Row::Rss64 | Row::Rss256 => unreachable!("RSS rows use their own servers"),
    };
    let pool = connect_load_pool(s.client, ep, conns_for(clients, s.clients_per_conn)).await?;
    let cpu_before = srv.cpu_time()?;
    let own_before = server::own_cpu_time()?;
    let r = closed_loop(&pool, clients, s.duration, op).await?;
    let cpu = srv.cpu_time()?.saturating_sub(cpu_before);
    let own = server::own_cpu_time()?.saturating_sub(own_before);
    // Server CPU per successful request (µs): the cost that must drop for the server to go
    // faster on a machine whose cores it shares with the load generator.
    let cpu_per_op = (r.ops > 0).then(|| cpu.as_secs_f64() * 1e6 / r.ops as f64);
    let client_cpu_per_op = (r.ops > 0).then(|| own.as_secs_f64() * 1e6 / r.ops as f64);
    info!(
        "{} {row:?}: {} ops, {} errors in {:?} = {:.0} QPS, p50 {:?} ms, p99 {:?} ms, server CPU {:?} ({:.1} µs/op), client CPU {:.1} µs/op",
        kind.name(),
        r.ops,
        r.errors,
        r.elapsed,
        r.qps(),
        r.quantile_ms(0.5),
        r.quantile_ms(0.99),
        cpu,
        cpu_per_op.unwrap_or(0.0),
        client_cpu_per_op.unwrap_or(0.0)
    );
    for line in lines.iter_mut() {
        let v = match line.metric.as_str() {
            "QPS" => Some(r.qps()),
            "p50 ms" => r.quantile_ms(0.5),
            "p99 ms" => r.quantile_ms(0.99),
            CPU_METRIC => cpu_per_op,
            CLIENT_CPU_METRIC => client_cpu_per_op,
            other => anyhow::bail!("no value for metric {other}"),
        };
        set(line, kind, v);
    }
    if r.errors > 0 {
        let note = format!(
            "{} errors (first: {})",
            r.errors,
            r.first_error.as_deref().unwrap_or("?")
        );
        add_note(&mut lines[0], kind, &note);
    }
    Ok(())
}

/// Loads `s.keys` keys of `size` bytes into a fresh server and records its RSS.
async fn run_rss(kind: Kind, size: usize, s: &Settings, lines: &mut [Line]) -> anyhow::Result<()> {
    let srv = Server::start(kind, s.bin(kind), s.data_root.as_deref()).await?;
    let idle = srv.rss_bytes()?;
    let pool = connect_pool(srv.endpoint(), 4).await?;
    let took = preload(&pool, "bench/rss/", s.keys, size).await?;
    // Let background work (compaction, flushes, allocator trimming) settle as it would in
    // service before sampling memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = srv.rss_bytes()?;
    let mb = rss as f64 / (1024.0 * 1024.0);
    let rate = s.keys as f64 / took.as_secs_f64().max(1e-9);
    info!(
        "{} loaded {} x {size} B in {took:?} ({rate:.0} keys/s); RSS idle {:.1} MB, loaded {mb:.1} MB",
        kind.name(),
        s.keys,
        idle as f64 / 1048576.0
    );
    set(&mut lines[0], kind, Some(mb));
    set(&mut lines[1], kind, Some(rate));
    Ok(())
}

fn machine_description() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "unknown OS".into());
    format!("{cores} cores, {os}, Linux {}", kernel.trim())
}

fn etcd_version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown etcd version".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let s = Settings::from_args(Args::parse())?;
    for kind in &s.kinds {
        let bin = s.bin(*kind);
        if !bin.is_file() {
            anyhow::bail!(
                "{} binary not found at {} (build it: `cargo build --release -p kelson-kv`, or pass --kelson-bin/--etcd-bin)",
                kind.name(),
                bin.display()
            );
        }
    }

    let mut table: Vec<(Row, Vec<Line>)> = s.rows.iter().map(|&r| (r, lines_for(r, &s))).collect();
    let is_rss = |r: Row| matches!(r, Row::Rss64 | Row::Rss256);

    if s.rows.iter().any(|&r| !is_rss(r)) {
        for &kind in &s.kinds {
            info!("starting {} for the throughput rows", kind.name());
            let mut srv = Server::start(kind, s.bin(kind), s.data_root.as_deref()).await?;
            if s.rows
                .iter()
                .any(|r| matches!(r, Row::RangeLin | Row::RangeSer))
            {
                let pool = connect_pool(srv.endpoint(), 4).await?;
                preload(&pool, "bench/range/", s.range_keys, s.value_size)
                    .await
                    .context("preloading the range keyspace")?;
            }
            for (row, lines) in table.iter_mut().filter(|(r, _)| !is_rss(*r)) {
                if let Err(e) = run_row(*row, &srv, &s, lines).await {
                    error!("{} {row:?} failed: {e:#}", kind.name());
                    add_note(&mut lines[0], kind, &format!("failed: {e:#}"));
                    // A dead server fails every later row; say so once, clearly.
                    srv.check_alive()?;
                }
            }
        }
    }
    for (row, lines) in table.iter_mut().filter(|(r, _)| is_rss(*r)) {
        let size = if *row == Row::Rss64 { 64 } else { 256 };
        for &kind in &s.kinds {
            info!("starting a fresh {} for {row:?}", kind.name());
            if let Err(e) = run_rss(kind, size, &s, lines).await {
                error!("{} {row:?} failed: {e:#}", kind.name());
                add_note(&mut lines[0], kind, &format!("failed: {e:#}"));
            }
        }
    }

    let lines: Vec<Line> = table.into_iter().flat_map(|(_, l)| l).collect();
    let (pass, miss) = report::summary(&lines);
    println!(
        "kv-bench: {} vs kelson-kv ({}), {}",
        etcd_version(&s.etcd_bin),
        s.kelson_bin.display(),
        machine_description()
    );
    println!(
        "workloads {:?} each; single member, fsync on, plaintext loopback; put/range load generator: {}; ratio > 1.0 means kelson-kv is better (kelson/etcd for throughput, etcd/kelson for latency and RSS)\n",
        s.duration,
        s.client.name()
    );
    print!("{}", report::render(&lines));
    println!("\n{pass} PASS, {miss} MISS");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> anyhow::Result<Settings> {
        let mut v = vec!["kv-bench"];
        v.extend_from_slice(args);
        Settings::from_args(Args::try_parse_from(v)?)
    }

    #[test]
    fn quick_changes_defaults_but_not_explicit_flags() {
        let s = settings(&["--quick"]).unwrap();
        assert_eq!(s.duration, Duration::from_secs(1));
        assert_eq!(s.keys, 20_000);
        assert_eq!(s.watch_events, 100);
        let s = settings(&["--quick", "--keys", "5000", "--duration", "0.5"]).unwrap();
        assert_eq!(s.keys, 5000);
        assert_eq!(s.duration, Duration::from_millis(500));
        let s = settings(&[]).unwrap();
        assert_eq!(s.duration, Duration::from_secs(10));
        assert_eq!(s.keys, 1_000_000);
        assert_eq!(s.rows, ALL_ROWS.to_vec());
        assert_eq!(s.kinds, vec![Kind::Etcd, Kind::Kelson]);
        assert!(s.kelson_bin.ends_with("kelson-kv"));
        assert_eq!(s.client, ClientKind::Lean);
        let s = settings(&["--client", "etcd-client"]).unwrap();
        assert_eq!(s.client, ClientKind::EtcdClient);
        assert!(settings(&["--client", "tonic"]).is_err());
    }

    #[test]
    fn only_selects_rows_in_table_order() {
        let s = settings(&[
            "--only",
            "rss-64,put-seq",
            "--only",
            "put-seq",
            "--etcd-only",
        ])
        .unwrap();
        assert_eq!(s.rows, vec![Row::PutSeq, Row::Rss64]);
        assert_eq!(s.kinds, vec![Kind::Etcd]);
        assert!(settings(&["--only", "nope"]).is_err());
        let s = settings(&["--only", "put-64,put-256,rss-256"]).unwrap();
        assert_eq!(s.rows, vec![Row::Put64, Row::Put256, Row::Rss256]);
    }

    #[test]
    fn bad_numbers_are_errors() {
        assert!(settings(&["--duration", "0"]).is_err());
        assert!(settings(&["--duration", "-1"]).is_err());
        assert!(settings(&["--keys", "0"]).is_err());
        assert!(settings(&["--clients-per-conn", "0"]).is_err());
        assert!(settings(&["--watch-events", "0"]).is_err());
        assert!(settings(&["--etcd-only", "--kelson-only"]).is_err());
    }

    #[test]
    fn lines_carry_the_issue_targets() {
        let s = settings(&[]).unwrap();
        let put = lines_for(Row::Put256, &s);
        assert_eq!(put[0].metric, "QPS");
        assert_eq!(put[0].target, Target::Ratio(1.5));
        assert_eq!(put[1].better, Better::Lower);
        let seq = lines_for(Row::PutSeq, &s);
        assert!(seq
            .iter()
            .filter(|l| l.metric != CPU_METRIC && l.metric != CLIENT_CPU_METRIC)
            .all(|l| l.target == Target::Ratio(1.0)));
        // The CPU lines are evidence, not goals.
        assert_eq!(put[2].metric, CPU_METRIC);
        assert_eq!(put[2].target, Target::None);
        assert_eq!(put[3].metric, CLIENT_CPU_METRIC);
        assert_eq!(put[3].target, Target::None);
        let range = lines_for(Row::RangeSer, &s);
        assert_eq!(range.last().unwrap().metric, CLIENT_CPU_METRIC);
        let rss = lines_for(Row::Rss64, &s);
        assert_eq!(rss[0].target, Target::AtMost(250.0));
        assert!(rss[0].workload.starts_with("1M keys x 64 B"));
        assert_eq!(human_count(20_000), "20k");
        assert_eq!(human_count(1234), "1234");
    }
}
