//! `api-bench`: the API server benchmark of issue 7. Starts kelson-kv + kelson-apiserver (via
//! `kelson_testsupport::ControlPlane`: one kelson-kv member with mutual TLS, the API server in
//! front of it, an admin client certificate) and prints a Markdown table:
//!
//! - **CRUD**: create / get / update (PUT with the last resourceVersion) / delete of Pods,
//!   latency p50/p99 and throughput at 1, 16 and 64 closed-loop clients;
//! - **open loop**: pod creates, then deletes, offered at a fixed rate (1000/s) regardless of
//!   answers; latency is measured from each request's *scheduled* send time, so a stalled
//!   server cannot hide its queueing (no coordinated omission). Target: p99 <= 50 ms;
//! - **watch**: 1000 watchers on one namespace, pods created at a steady pace; delivery latency
//!   from the create request's send time to the watcher's receipt of the ADDED event;
//! - **LIST** of 10k pods, full and paginated (`limit=500`), time to the last byte; target
//!   <= 300 ms for the full list;
//! - **RSS** of the API server with 10k pods stored (after the lists). Target <= 200 MB.
//! - **seq** (only with `--only seq`): creates, then deletes, one request at a time over one
//!   HTTP/2 connection: the CPU each process spends per operation with no queueing, the
//!   figure to compare two builds by on a noisy machine. `--callgrind` zeroes and dumps the
//!   counters of an API server run under `valgrind --tool=callgrind` around the create phase
//!   (instruction counts per create: deterministic).
//!
//! Client: the stock `kube` crate (`kube::Client` over HTTPS with the admin client
//! certificate), the way every Kelson component and most operators talk to the API server.
//! The typed calls (CRUD, open loop) include the client's JSON encode/decode; the LIST and
//! watch rows use the raw byte stream (`request_text` / `request_stream`) so client-side
//! decoding of 10k pods does not count against the server. The client shares the 2 cores with
//! the server; the table header says which build profile ran.
//!
//! This is a program, not a test: about 2-3 minutes in release; `--quick` (1 s phases, 1000
//! listed pods, 100 watchers) checks the program itself in well under a minute.

#[path = "../api/report.rs"]
mod report;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kelson_testsupport::{ControlPlane, ControlPlaneOpts};
use kube::api::{Api, DeleteParams, PostParams};
use report::{Hist, Line, Target};
use serde_json::json;
use tracing::info;

/// Benchmark kelson-apiserver (over kelson-kv) with the kube client and print a table.
#[derive(Parser, Debug)]
#[command(name = "api-bench")]
struct Args {
    /// Smoke run: 1 s phases, 1000 listed pods, 100 watchers x 20 events, 1 s open loop.
    #[arg(long)]
    quick: bool,
    /// Seconds per closed-loop CRUD phase (create, get, update) [default 5, 1 with --quick].
    #[arg(long)]
    duration: Option<f64>,
    /// Closed-loop client counts for the CRUD rows.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Offered rate of the open-loop rows, writes per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of open-loop load per row [default 10, 1 with --quick].
    #[arg(long)]
    open_seconds: Option<f64>,
    /// Pods stored for the LIST and RSS rows [default 10000, 1000 with --quick].
    #[arg(long)]
    list_pods: Option<usize>,
    /// Watchers in the watch row [default 1000, 100 with --quick].
    #[arg(long)]
    watchers: Option<usize>,
    /// Pods created (events per watcher) in the watch row [default 100, 20 with --quick].
    #[arg(long)]
    watch_events: Option<usize>,
    /// Pace of the creates in the watch row, per second.
    #[arg(long, default_value_t = 50)]
    watch_rate: u32,
    /// Row groups to run: crud, open, watch, list (list includes RSS). Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Group>,
    /// Extra kelson-apiserver flag, repeatable (e.g. `--apiserver-arg=--watch-cache=false` for
    /// the store-only baseline).
    #[arg(long = "apiserver-arg", allow_hyphen_values = true)]
    apiserver_args: Vec<String>,
    /// Drive the open-loop rows over one HTTP/2 connection (as client-go does) instead of the
    /// kube client's pool of HTTP/1.1 connections (one per request in flight).
    #[arg(long)]
    h2: bool,
    /// Operations per phase of the `seq` rows [default 2000, 200 with --quick].
    #[arg(long)]
    seq_ops: Option<usize>,
    /// Around the `seq` create phase, switch on, zero and dump the callgrind counters of the
    /// API server (run it under `valgrind --tool=callgrind --instr-atstart=no`, e.g. through a
    /// wrapper script named `kelson-apiserver` next to this program).
    #[arg(long)]
    callgrind: bool,
}

/// A kube client whose requests share one multiplexed HTTP/2 connection (the stock
/// `kube::Client` speaks HTTP/1.1 only, so an open loop opens a TLS connection per request in
/// flight and measures handshakes instead of the server).
async fn h2_client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    use kube::client::ConfigExt;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let connector = config.rustls_https_connector()?;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let svc = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .service(http);
    Ok(kube::Client::new(svc, config.default_namespace))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    Crud,
    Open,
    Watch,
    List,
    Seq,
}

const MUTATING_P99_MS: f64 = 50.0;
const LIST_MS: f64 = 300.0;
const RSS_MB: f64 = 200.0;

/// A small but realistic pod: labels, one container with requests, no scheduler running so it
/// stays Pending (admission adds the service account token volume as upstream's does).
fn pod(ns: &str, name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench", "tier": "web"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "c", "image": "registry.example/bench:1.0",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}
            }]
        }
    }))
    .expect("static pod literal")
}

async fn ensure_namespace(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {ns}")),
    }
}

/// Result of one phase: latencies, successful ops, errors (with the first one), wall time.
#[derive(Default)]
struct Phase {
    hist: Hist,
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    /// CPU seconds used during the phase by the API server, kelson-kv and this program.
    cpu: Option<[f64; 3]>,
}

impl Phase {
    fn merge(&mut self, o: Phase) {
        self.hist.add(&o.hist);
        self.ops += o.ops;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    fn ok(&mut self, started: Instant) {
        self.hist.record(started.elapsed());
        self.ops += 1;
    }

    fn err(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    fn per_sec(&self) -> Option<f64> {
        let s = self.elapsed.as_secs_f64();
        (self.ops > 0 && s > 0.0).then(|| self.ops as f64 / s)
    }

    fn note(&self) -> String {
        let mut note = String::new();
        if let Some(c) = self.cpu.filter(|_| self.ops > 0) {
            let per = |v: f64| report::fmt_value(v * 1000.0 / self.ops as f64);
            note = format!(
                "CPU ms/op: apiserver {}, kelson-kv {}, client {}",
                per(c[0]),
                per(c[1]),
                per(c[2])
            );
        }
        if let Some(e) = &self.first_error {
            if !note.is_empty() {
                note.push_str("; ");
            }
            note.push_str(&format!(
                "{} errors, first: {}",
                self.errors,
                truncate(e, 120)
            ));
        }
        note
    }

    /// QPS, p50 and p99 lines for `workload`, the p99 judged against `p99_target`.
    fn lines(&self, workload: &str, p99_target: Target) -> Vec<Line> {
        vec![
            Line::new(workload, "ops/s", self.per_sec()).note(self.note()),
            Line::new(workload, "p50 ms", self.hist.ms(0.50)),
            Line::new(workload, "p99 ms", self.hist.ms(0.99)).target(p99_target),
        ]
    }
}

/// CPU seconds used so far by the API server, kelson-kv and this program: the cheap profile
/// of where a phase's time went (the three share the 2 cores).
#[derive(Clone, Copy)]
struct Procs {
    api: u32,
    kv: Option<u32>,
}

impl Procs {
    fn sample(&self) -> [f64; 3] {
        let get = |p: Option<u32>| p.and_then(report::cpu_seconds).unwrap_or(f64::NAN);
        [
            get(Some(self.api)),
            get(self.kv),
            get(Some(std::process::id())),
        ]
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

/// One closed-loop CRUD round with `clients` tasks, each owning its own pods (so updates with
/// the last seen resourceVersion never conflict). Returns create, get, update, delete phases.
async fn crud(
    client: &kube::Client,
    procs: Procs,
    ns: &str,
    clients: usize,
    dur: Duration,
) -> anyhow::Result<[Phase; 4]> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let run_phase = |kind: usize, owned: Vec<Vec<Pod>>| {
        let api = api.clone();
        async move {
            let cpu0 = procs.sample();
            let start = Instant::now();
            let deadline = start + dur;
            let tasks = owned.into_iter().enumerate().map(|(c, mut pods)| {
                let api = api.clone();
                tokio::spawn(async move {
                    let mut ph = Phase::default();
                    let mut i = 0usize;
                    match kind {
                        // create until the deadline
                        0 => {
                            while Instant::now() < deadline {
                                let name = format!("crud-{clients}-{c}-{i}");
                                i += 1;
                                let t = Instant::now();
                                match api
                                    .create(&PostParams::default(), &pod(api_ns(&api), &name))
                                    .await
                                {
                                    Ok(p) => {
                                        ph.ok(t);
                                        pods.push(p);
                                    }
                                    Err(e) => ph.err(e),
                                }
                            }
                        }
                        // get round-robin over own pods until the deadline
                        1 => {
                            while Instant::now() < deadline && !pods.is_empty() {
                                let name = pods[i % pods.len()]
                                    .metadata
                                    .name
                                    .clone()
                                    .unwrap_or_default();
                                i += 1;
                                let t = Instant::now();
                                match api.get(&name).await {
                                    Ok(_) => ph.ok(t),
                                    Err(e) => ph.err(e),
                                }
                            }
                        }
                        // update (PUT, last resourceVersion) round-robin until the deadline
                        2 => {
                            while Instant::now() < deadline && !pods.is_empty() {
                                let k = i % pods.len();
                                i += 1;
                                let mut p = pods[k].clone();
                                p.metadata
                                    .labels
                                    .get_or_insert_with(Default::default)
                                    .insert("gen".into(), i.to_string());
                                let name = p.metadata.name.clone().unwrap_or_default();
                                let t = Instant::now();
                                match api.replace(&name, &PostParams::default(), &p).await {
                                    Ok(p) => {
                                        ph.ok(t);
                                        pods[k] = p;
                                    }
                                    Err(e) => ph.err(e),
                                }
                            }
                        }
                        // delete every own pod (bounded by what was created)
                        _ => {
                            let dp = DeleteParams {
                                grace_period_seconds: Some(0),
                                ..Default::default()
                            };
                            for p in pods.drain(..) {
                                let name = p.metadata.name.clone().unwrap_or_default();
                                let t = Instant::now();
                                match api.delete(&name, &dp).await {
                                    Ok(_) => ph.ok(t),
                                    Err(e) => ph.err(e),
                                }
                            }
                        }
                    }
                    (ph, pods)
                })
            });
            let results = futures::future::join_all(tasks).await;
            let mut total = Phase::default();
            let mut owned = Vec::new();
            for r in results {
                let (ph, pods) = r.context("CRUD client task panicked")?;
                total.merge(ph);
                owned.push(pods);
            }
            total.elapsed = start.elapsed();
            let cpu1 = procs.sample();
            total.cpu = Some([cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], cpu1[2] - cpu0[2]]);
            anyhow::Ok((total, owned))
        }
    };
    let (create, owned) = run_phase(0, vec![Vec::new(); clients]).await?;
    let (get, owned) = run_phase(1, owned).await?;
    let (update, owned) = run_phase(2, owned).await?;
    let (delete, _) = run_phase(3, owned).await?;
    Ok([create, get, update, delete])
}

/// `callgrind_control <flag> <pid>` (the `seq` rows under `--callgrind`).
fn callgrind_control(flag: &str, pid: u32) -> anyhow::Result<()> {
    let out = std::process::Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .output()
        .context("running callgrind_control (valgrind installed?)")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {flag} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `n` creates, then `n` deletes, one at a time: latency without queueing and the CPU per
/// operation of each process (after a warm-up of the connection and the caches).
async fn seq(
    api: &Api<Pod>,
    procs: Procs,
    n: usize,
    callgrind: bool,
) -> anyhow::Result<(Phase, Phase)> {
    let ns = api_ns(api).to_string();
    for i in 0..20 {
        let name = format!("warm-{i}");
        api.create(&PostParams::default(), &pod(&ns, &name)).await?;
        api.delete(&name, &DeleteParams::default()).await?;
    }
    if callgrind {
        callgrind_control("--instr=on", procs.api)?;
        callgrind_control("-z", procs.api)?;
    }
    let mut create = Phase::default();
    let cpu0 = procs.sample();
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        match api
            .create(&PostParams::default(), &pod(&ns, &format!("seq-{i:06}")))
            .await
        {
            Ok(_) => create.ok(t),
            Err(e) => create.err(e),
        }
    }
    create.elapsed = start.elapsed();
    let cpu1 = procs.sample();
    if callgrind {
        callgrind_control("-d", procs.api)?;
    }
    let mut delete = Phase::default();
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        match api.delete(&format!("seq-{i:06}"), &dp).await {
            Ok(_) => delete.ok(t),
            Err(e) => delete.err(e),
        }
    }
    delete.elapsed = start.elapsed();
    let cpu2 = procs.sample();
    let d = |a: [f64; 3], b: [f64; 3]| Some([b[0] - a[0], b[1] - a[1], b[2] - a[2]]);
    create.cpu = d(cpu0, cpu1);
    delete.cpu = d(cpu1, cpu2);
    Ok((create, delete))
}

fn api_ns(api: &Api<Pod>) -> &str {
    api.namespace().unwrap_or("default")
}

/// Open loop: `rate` requests per second for `dur`, each issued at its scheduled time whatever
/// the server does; latency from the scheduled time. `op(i)` issues request `i`.
async fn open_loop<F, Fut>(rate: u32, dur: Duration, op: F) -> anyhow::Result<Phase>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>> + Send + 'static,
{
    let total = (rate as f64 * dur.as_secs_f64()).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let late = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + period * i as u32;
        tokio::time::sleep_until(due).await;
        let due = due.into_std();
        if due.elapsed() > Duration::from_millis(5) {
            // The generator itself fell behind (CPU starved): counted, and latency still runs
            // from the due time, so it shows in the percentiles.
            late.fetch_add(1, Ordering::Relaxed);
        }
        let fut = op(i);
        tasks.push(tokio::spawn(async move {
            let r = fut.await;
            (due, Instant::now(), r)
        }));
    }
    let mut ph = Phase::default();
    for t in tasks {
        let (due, done, r) = t.await.context("open-loop task panicked")?;
        match r {
            Ok(()) => {
                ph.hist.record(done.saturating_duration_since(due));
                ph.ops += 1;
            }
            Err(e) => ph.err(e),
        }
    }
    ph.elapsed = start.elapsed();
    let late = late.load(Ordering::Relaxed);
    if late > 0 {
        let n = format!("{late} sends >5 ms late (generator starved)");
        ph.first_error = Some(match ph.first_error.take() {
            Some(e) => format!("{e}; {n}"),
            None => n,
        });
    }
    Ok(ph)
}

/// Creates `n` pods in `ns` with `conc` closed-loop workers (untimed setup); returns errors.
async fn bulk_create(api: &Api<Pod>, prefix: &str, n: usize, conc: usize) -> anyhow::Result<()> {
    let ns = api_ns(api).to_string();
    let errors: Vec<String> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let p = pod(&ns, &format!("{prefix}-{i:06}"));
            async move {
                match api.create(&PostParams::default(), &p).await {
                    Ok(_) => None,
                    Err(kube::Error::Api(s)) if s.code == 409 => None,
                    Err(e) => Some(e.to_string()),
                }
            }
        })
        .buffer_unordered(conc)
        .filter_map(|e| async move { e })
        .collect()
        .await;
    if !errors.is_empty() {
        bail!(
            "{} of {n} creates failed; first: {}",
            errors.len(),
            errors[0]
        );
    }
    Ok(())
}

/// Extracts the number after `marker` in a watch event line (our pods are named
/// `<marker><digits>`), without decoding the JSON: 1000 watchers decoding every pod would
/// measure the client, not the server.
fn index_after(line: &str, marker: &str) -> Option<usize> {
    let start = line.find(marker)? + marker.len();
    let digits: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

struct WatchResult {
    hist: Hist,
    delivered: u64,
    expected: u64,
    watchers_failed: usize,
    first_error: Option<String>,
}

async fn watch_fanout(
    client: &kube::Client,
    ns: &str,
    watchers: usize,
    events: usize,
    rate: u32,
) -> anyhow::Result<WatchResult> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    // A raw list: kelson-apiserver does not serve PartialObjectMetadataList (406), so
    // `list_metadata` is not an option; only `metadata.resourceVersion` is read.
    let (_, body) = timed_get(client, &format!("/api/v1/namespaces/{ns}/pods?limit=1")).await?;
    let list: serde_json::Value = serde_json::from_str(&body).context("decoding the list")?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("list without resourceVersion")?
        .to_string();
    const MARKER: &str = "\"wbench-";
    // Send times, indexed by pod number; written before the create goes out.
    let sent: Arc<Vec<parking_lot_free::Slot>> = Arc::new(
        (0..events)
            .map(|_| parking_lot_free::Slot::default())
            .collect(),
    );
    let t0 = Instant::now();
    // Open every watch first (bounded concurrency for the TLS handshakes), then write.
    let streams: Vec<_> = futures::stream::iter(0..watchers)
        .map(|_| {
            let client = client.clone();
            let uri = format!(
                "/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion={rv}&timeoutSeconds=600"
            );
            async move {
                let req = http::Request::get(uri).body(Vec::new())?;
                anyhow::Ok(client.request_stream(req).await?)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut opened = Vec::new();
    let mut watchers_failed = 0;
    let mut first_error = None;
    for s in streams {
        match s {
            Ok(s) => opened.push(s),
            Err(e) => {
                watchers_failed += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    info!(
        "{} watches open in {:?} ({watchers_failed} failed)",
        opened.len(),
        t0.elapsed()
    );
    let deadline = Duration::from_secs(60) + Duration::from_secs_f64(events as f64 / rate as f64);
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|stream| {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut hist = Hist::default();
                let mut got = 0usize;
                let mut lines = stream.lines();
                let read = async {
                    while let Some(line) = lines.try_next().await? {
                        let now = Instant::now();
                        if !line.contains("\"ADDED\"") {
                            continue;
                        }
                        if let Some(i) = index_after(&line, MARKER) {
                            if let Some(at) = sent.get(i).and_then(|s| s.get()) {
                                hist.record(now.saturating_duration_since(at));
                                got += 1;
                                if got == events {
                                    break;
                                }
                            }
                        }
                    }
                    anyhow::Ok(())
                };
                let _ = tokio::time::timeout(deadline, read).await;
                (hist, got)
            })
        })
        .collect();
    let wapi = api.clone();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    for i in 0..events {
        tokio::time::sleep_until(start + period * i as u32).await;
        let p = pod(ns, &format!("wbench-{i:06}"));
        sent[i].set(Instant::now());
        if let Err(e) = wapi.create(&PostParams::default(), &p).await {
            first_error.get_or_insert(format!("create: {e}"));
        }
    }
    let mut hist = Hist::default();
    let mut delivered = 0u64;
    for t in tasks {
        let (h, got) = t.await.context("watcher task panicked")?;
        hist.add(&h);
        delivered += got as u64;
    }
    Ok(WatchResult {
        hist,
        delivered,
        expected: (watchers * events) as u64,
        watchers_failed,
        first_error,
    })
}

/// A write-once instant shared between the writer and the watchers without a lock.
mod parking_lot_free {
    use std::sync::OnceLock;
    use std::time::Instant;

    #[derive(Default)]
    pub struct Slot(OnceLock<Instant>);

    impl Slot {
        pub fn set(&self, t: Instant) {
            let _ = self.0.set(t);
        }
        pub fn get(&self) -> Option<Instant> {
            self.0.get().copied()
        }
    }
}

/// GET `path` and return (time to the last byte, body).
async fn timed_get(client: &kube::Client, path: &str) -> anyhow::Result<(Duration, String)> {
    let req = http::Request::get(path).body(Vec::new())?;
    let t = Instant::now();
    let body = client.request_text(req).await?;
    Ok((t.elapsed(), body))
}

#[derive(serde::Deserialize)]
struct ListShape {
    metadata: ListMetaShape,
    items: Vec<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct ListMetaShape {
    #[serde(rename = "continue", default)]
    cont: Option<String>,
}

/// Full LIST (`reps` times) and paginated LIST (`limit`, `reps` full walks) of `ns`; checks
/// every walk returns `expect` items. Each kind fails on its own (a server that cannot answer
/// the full list may still page), so one failure does not hide the other row.
async fn list_rows(
    client: &kube::Client,
    ns: &str,
    expect: usize,
    reps: usize,
    limit: usize,
) -> (
    anyhow::Result<(Vec<Duration>, usize)>,
    anyhow::Result<Vec<Duration>>,
) {
    let full = async {
        let mut full = Vec::new();
        let mut bytes = 0;
        for _ in 0..reps {
            let (d, body) = timed_get(client, &format!("/api/v1/namespaces/{ns}/pods")).await?;
            let parsed: ListShape = serde_json::from_str(&body).context("decoding the LIST")?;
            if parsed.items.len() != expect {
                bail!(
                    "LIST returned {} pods, expected {expect}",
                    parsed.items.len()
                );
            }
            bytes = body.len();
            full.push(d);
        }
        anyhow::Ok((full, bytes))
    }
    .await;
    let paged = async {
        let mut paged = Vec::new();
        for _ in 0..reps {
            let mut total = Duration::ZERO;
            let mut items = 0;
            let mut cont: Option<String> = None;
            for _page in 0..(expect / limit + 2) {
                let mut path = format!("/api/v1/namespaces/{ns}/pods?limit={limit}");
                if let Some(c) = &cont {
                    path.push_str("&continue=");
                    path.push_str(&urlencode(c));
                }
                let (d, body) = timed_get(client, &path).await?;
                total += d;
                let parsed: ListShape = serde_json::from_str(&body).context("decoding a page")?;
                items += parsed.items.len();
                cont = parsed.metadata.cont.filter(|c| !c.is_empty());
                if cont.is_none() {
                    break;
                }
            }
            if items != expect || cont.is_some() {
                bail!(
                    "paginated LIST returned {items} pods (continue left: {}), expected {expect}",
                    cont.is_some()
                );
            }
            paged.push(total);
        }
        anyhow::Ok(paged)
    }
    .await;
    (full, paged)
}

/// Percent-encodes a continue token for a query string (tokens are base64: `+`, `/`, `=`).
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn median(v: &mut [Duration]) -> Option<f64> {
    v.sort();
    v.get(v.len() / 2).map(|d| d.as_secs_f64() * 1000.0)
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
    let a = Args::parse();
    let q = a.quick;
    let dur = Duration::from_secs_f64(a.duration.unwrap_or(if q { 1.0 } else { 5.0 }));
    let open_dur = Duration::from_secs_f64(a.open_seconds.unwrap_or(if q { 1.0 } else { 10.0 }));
    let list_pods = a.list_pods.unwrap_or(if q { 1000 } else { 10_000 });
    let watchers = a.watchers.unwrap_or(if q { 100 } else { 1000 });
    let watch_events = a.watch_events.unwrap_or(if q { 20 } else { 100 });
    if a.rate == 0
        || a.watch_rate == 0
        || a.clients.contains(&0)
        || watch_events == 0
        || list_pods == 0
    {
        bail!("--rate, --watch-rate, --clients, --watch-events and --list-pods must be positive");
    }
    let groups = if a.only.is_empty() {
        vec![Group::Crud, Group::Open, Group::Watch, Group::List]
    } else {
        a.only.clone()
    };
    let seq_ops = a.seq_ops.unwrap_or(if q { 200 } else { 2000 });

    let t_all = Instant::now();
    // The API server runs at `--log-level info` (no per-request lines); the store is kelson-kv
    // with fsync on, as in production.
    let mut opts = ControlPlaneOpts::default();
    opts.apiserver_args.clone_from(&a.apiserver_args);
    let cp = ControlPlane::start_with(opts).await.context(
        "starting kelson-kv + kelson-apiserver (build them first, same profile as this program)",
    )?;
    let port = cp
        .server_url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let api_pid = report::find_pid("kelson-apiserver", &["--secure-port", &port])
        .context("finding the API server's pid")?;
    let kv_url = cp.store().endpoint(0);
    let procs = Procs {
        api: api_pid,
        kv: report::find_pid("kelson-kv", &["--listen-client-urls", &kv_url]),
    };
    let client = cp.client().await?;
    info!(
        "control plane up in {:?} (apiserver pid {api_pid})",
        t_all.elapsed()
    );
    let rss0 = report::rss_mb(api_pid);

    let mut lines: Vec<Line> = Vec::new();
    lines.push(Line::new("API server idle, empty store", "RSS MB", rss0));

    if groups.contains(&Group::Crud) {
        ensure_namespace(&client, "bench-crud").await?;
        for &c in &a.clients {
            let [create, get, update, delete] = crud(&client, procs, "bench-crud", c, dur).await?;
            let plural = if c == 1 { "" } else { "s" };
            for (name, ph) in [
                ("create", &create),
                ("get", &get),
                ("update", &update),
                ("delete", &delete),
            ] {
                info!(
                    "crud {c} {name}: {} ops {} errors in {:?}, p50 {:?} p99 {:?} ms",
                    ph.ops,
                    ph.errors,
                    ph.elapsed,
                    ph.hist.ms(0.5),
                    ph.hist.ms(0.99)
                );
                lines.extend(ph.lines(&format!("pod {name}, {c} client{plural}"), Target::None));
            }
        }
    }

    if groups.contains(&Group::Seq) {
        ensure_namespace(&client, "bench-seq").await?;
        let api: Api<Pod> = Api::namespaced(h2_client(cp.kubeconfig_path()).await?, "bench-seq");
        let rss_before = report::rss_mb(api_pid);
        let (create, delete) = seq(&api, procs, seq_ops, a.callgrind).await?;
        for (name, ph) in [("create", &create), ("delete", &delete)] {
            info!(
                "seq {name}: {} ops {} errors in {:?}, p50 {:?} p99 {:?} ms; {}",
                ph.ops,
                ph.errors,
                ph.elapsed,
                ph.hist.ms(0.5),
                ph.hist.ms(0.99),
                ph.note()
            );
            let w = format!("pod {name}, sequential over HTTP/2 ({seq_ops})");
            lines.extend(ph.lines(&w, Target::None));
            if let Some(c) = ph.cpu.filter(|_| ph.ops > 0) {
                let us = |v: f64| Some(v * 1e6 / ph.ops as f64);
                lines.push(Line::new(&w, "API server CPU us/op", us(c[0])));
                lines.push(Line::new(&w, "kelson-kv CPU us/op", us(c[1])));
            }
        }
        lines.push(
            Line::new(
                "API server after the sequential rows",
                "RSS MB",
                report::rss_mb(api_pid),
            )
            .note(format!(
                "{} MB before",
                rss_before.map(report::fmt_value).unwrap_or_default()
            )),
        );
    }

    if groups.contains(&Group::Open) {
        ensure_namespace(&client, "bench-open").await?;
        let open_client = if a.h2 {
            h2_client(cp.kubeconfig_path()).await?
        } else {
            client.clone()
        };
        let api: Api<Pod> = Api::namespaced(open_client, "bench-open");
        let a2 = api.clone();
        let cpu0 = procs.sample();
        let mut create = open_loop(a.rate, open_dur, move |i| {
            let api = a2.clone();
            let p = pod("bench-open", &format!("open-{i:06}"));
            async move { api.create(&PostParams::default(), &p).await.map(|_| ()) }
        })
        .await?;
        let cpu1 = procs.sample();
        let a2 = api.clone();
        let mut delete = open_loop(a.rate, open_dur, move |i| {
            let api = a2.clone();
            async move {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                api.delete(&format!("open-{i:06}"), &dp).await.map(|_| ())
            }
        })
        .await?;
        let cpu2 = procs.sample();
        let d = |a: [f64; 3], b: [f64; 3]| Some([b[0] - a[0], b[1] - a[1], b[2] - a[2]]);
        create.cpu = d(cpu0, cpu1);
        delete.cpu = d(cpu1, cpu2);
        for (name, ph) in [("create", &create), ("delete", &delete)] {
            info!(
                "open {name}: {} ops {} errors in {:?}, p50 {:?} p99 {:?} ms",
                ph.ops,
                ph.errors,
                ph.elapsed,
                ph.hist.ms(0.5),
                ph.hist.ms(0.99)
            );
            let w = format!("pod {name}, open loop {}/s offered", a.rate);
            let mut ls = ph.lines(&w, Target::AtMost(MUTATING_P99_MS));
            ls[0].metric = "achieved/s".into();
            lines.extend(ls);
        }
        let s = (create.elapsed + delete.elapsed).as_secs_f64();
        let busy = (cpu2[0] - cpu0[0]) / s;
        lines.push(
            Line::new(
                "open loop, API server CPU",
                "cores busy",
                Some(busy).filter(|v| v.is_finite()),
            )
            .note(format!(
                "of 2; kelson-kv {}, client {}",
                report::fmt_value((cpu2[1] - cpu0[1]) / s),
                report::fmt_value((cpu2[2] - cpu0[2]) / s)
            )),
        );
    }

    if groups.contains(&Group::Watch) {
        ensure_namespace(&client, "bench-watch").await?;
        let r = watch_fanout(&client, "bench-watch", watchers, watch_events, a.watch_rate).await?;
        info!(
            "watch: {}/{} delivered, p50 {:?} p99 {:?} ms",
            r.delivered,
            r.expected,
            r.hist.ms(0.5),
            r.hist.ms(0.99)
        );
        let w = format!(
            "watch, {watchers} watchers x {watch_events} creates at {}/s",
            a.watch_rate
        );
        let mut note = String::new();
        if r.delivered != r.expected {
            note = format!("{} of {} events delivered", r.delivered, r.expected);
        }
        if r.watchers_failed > 0 || r.first_error.is_some() {
            note.push_str(&format!(
                " {} watchers failed; {}",
                r.watchers_failed,
                truncate(r.first_error.as_deref().unwrap_or(""), 100)
            ));
        }
        lines.push(Line::new(&w, "delivery p50 ms", r.hist.ms(0.5)).note(note));
        lines.push(Line::new(&w, "delivery p99 ms", r.hist.ms(0.99)));
        lines.push(Line::new(
            &w,
            "RSS MB (watches open)",
            report::rss_mb(api_pid),
        ));
    }

    if groups.contains(&Group::List) {
        ensure_namespace(&client, "bench-list").await?;
        let api: Api<Pod> = Api::namespaced(client.clone(), "bench-list");
        let t = Instant::now();
        bulk_create(&api, "list", list_pods, 64).await?;
        let load_s = t.elapsed().as_secs_f64();
        info!("{list_pods} pods loaded in {load_s:.1} s");
        let k = if list_pods.is_multiple_of(1000) {
            format!("{}k", list_pods / 1000)
        } else {
            list_pods.to_string()
        };
        let rss_loaded = report::rss_mb(api_pid);
        let reps = if q { 3 } else { 5 };
        let cpu0 = procs.sample();
        let (full_r, paged_r) = list_rows(&client, "bench-list", list_pods, reps, 500).await;
        let err_note = |e: &anyhow::Error| format!("FAILED: {}", truncate(&format!("{e:#}"), 160));
        let (mut full, bytes, full_err) = match full_r {
            Ok((f, b)) => (f, b, None),
            Err(e) => (Vec::new(), 0, Some(err_note(&e))),
        };
        let (mut paged, paged_err) = match paged_r {
            Ok(p) => (p, None),
            Err(e) => (Vec::new(), Some(err_note(&e))),
        };
        let cpu1 = procs.sample();
        // Per full walk (one full LIST + one paginated walk per rep); the client's share
        // includes its JSON check of every answer, outside the timed window.
        let per = |i: usize| report::fmt_value((cpu1[i] - cpu0[i]) * 1000.0 / (2 * reps) as f64);
        let best_full = full.iter().min().map(|d| d.as_secs_f64() * 1000.0);
        lines.push(
            Line::new(
                format!("LIST {k} pods, full"),
                "median ms",
                median(&mut full),
            )
            .target(Target::AtMost(LIST_MS))
            .note(full_err.unwrap_or_else(|| {
                format!(
                    "{:.1} MB JSON, best {}; CPU ms per walk: apiserver {}, kelson-kv {}, client {}",
                    bytes as f64 / 1e6,
                    best_full.map(report::fmt_value).unwrap_or_default(),
                    per(0),
                    per(1),
                    per(2)
                )
            })),
        );
        lines.push(
            Line::new(
                format!("LIST {k} pods, limit=500 pages"),
                "median ms (all pages)",
                median(&mut paged),
            )
            .note(paged_err.unwrap_or_default()),
        );
        lines.push(Line::new(
            format!("{k} pods loaded (64 clients)"),
            "creates/s",
            Some(list_pods as f64 / load_s),
        ));
        lines.push(
            Line::new(
                format!("API server with {k} pods stored"),
                "RSS MB",
                report::rss_mb(api_pid),
            )
            .target(Target::AtMost(RSS_MB))
            .note(format!(
                "after the LISTs; {} MB right after loading",
                rss_loaded.map(report::fmt_value).unwrap_or_default()
            )),
        );
    }

    let apiserver_bin = kelson_testsupport::bin_path("kelson-apiserver");
    println!(
        "api-bench ({} build of the bench; API server {}), {}; kube client over HTTPS with an admin client cert; kelson-kv single member, fsync on, mutual TLS",
        report::profile(),
        apiserver_bin.display(),
        report::machine()
    );
    println!(
        "CRUD phases {dur:?} each; open loop {open_dur:?} per row; total {:.0} s\n",
        t_all.elapsed().as_secs_f64()
    );
    print!("{}", report::render(&lines));
    Ok(())
}
