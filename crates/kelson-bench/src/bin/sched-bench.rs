//! `sched-bench`: the scheduler benchmark of issue 4. Through the real stack — kelson-kv,
//! kelson-apiserver (`kelson_testsupport::ControlPlane`) and the real `kelson-scheduler`
//! binary — with simulated nodes (Node objects only: capacity, Ready, spread over 3 zones; no
//! kubelet), it measures for 5000 nodes / 10 000 pods:
//!
//! - **basic**: plain pods with cpu/memory requests;
//! - **zone spread**: every pod has a `topology.kubernetes.io/zone` spread constraint
//!   (maxSkew 1, DoNotSchedule) over its own label;
//! - **anti-affinity**: required pod anti-affinity on `kubernetes.io/hostname` within groups
//!   of at most half the node count (upstream's scheduler_perf SchedulingPodAntiAffinity
//!   shape, kept feasible);
//! - **algorithm alone**: the same Filter/Score code (`kelson_scheduler::framework::Algorithm`)
//!   on an in-memory snapshot of the same nodes, no API, to separate algorithm cost from the
//!   API path.
//!
//! End-to-end numbers: the pods are created by 64 concurrent clients while the scheduler runs
//! (as upstream's scheduler_perf does); one raw watch on the namespace sees `spec.nodeName`
//! appear. Throughput = pods / (first create sent -> last pod seen bound), which includes the
//! binding writes and their watch confirmation; latency per pod = create sent -> bound seen.
//! The pod create rate is printed too, because on 2 cores the creating clients and the API
//! server compete with the scheduler. The variants run one after another on one control plane
//! and the same nodes, each in its own namespace; earlier variants' pods stay bound (like
//! scheduler_perf's initPods), so later variants schedule onto partly filled nodes.
//!
//! The scheduler's own `/metrics` are scraped after each variant: it exports counters
//! (attempts scheduled / unschedulable / error, events dropped) and queue gauges, but no
//! algorithm-latency histogram, so algorithm latency comes from the in-process "algorithm
//! alone" row.
//!
//! Where the CPU goes: for every end-to-end row the CPU time of kelson-kv, the API server, the
//! scheduler and this program over the measured window (backlog: from the release to the last
//! bind) is read from `/proc/<pid>/stat` and printed per pod; on 2 cores, 1400 pods/s leaves
//! 1.43 ms of CPU per pod for all four together. After each row the namespace's Events are
//! counted: every bound pod must have its `Scheduled` event (the recorder may drop events
//! when its queue is full; a row that dropped some says so rather than looking cheaper).

#[path = "../api/report.rs"]
mod report;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kelson_scheduler::framework::Algorithm;
use kelson_scheduler::nodeinfo::{NodeInfo, PodInfo, Snapshot};
use kelson_scheduler::plugins::Weights;
use kelson_testsupport::{bin_path, free_port, ChildGuard, ControlPlane};
use kube::api::{Api, Patch, PatchParams, PostParams};
use report::{Hist, Line, Target};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

/// Benchmark kelson-scheduler end to end (API server + store) and alone; print a table.
#[derive(Parser, Debug)]
#[command(name = "sched-bench")]
struct Args {
    /// Smoke run: 500 nodes, 1000 pods per variant.
    #[arg(long)]
    quick: bool,
    /// Simulated nodes [default 5000, 500 with --quick].
    #[arg(long)]
    nodes: Option<usize>,
    /// Pods per variant [default 10000, 1000 with --quick].
    #[arg(long)]
    pods: Option<usize>,
    /// Concurrent clients creating pods (and nodes).
    #[arg(long, default_value_t = 64)]
    create_clients: usize,
    /// Variants to run: basic, spread, anti, algo. Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Variant>,
    /// How pods meet the scheduler: `live` = created while it runs (bounded by the create
    /// rate), `backlog` = created while it is stopped (SIGSTOP), then released at once
    /// (SIGCONT): the scheduler's own drain rate, binding writes included.
    #[arg(long, value_delimiter = ',', default_values_t = vec![Mode::Live, Mode::Backlog])]
    mode: Vec<Mode>,
    /// Give up on a variant after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Live,
    Backlog,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Live => "live",
            Mode::Backlog => "backlog",
        })
    }
}

/// Stops (`SIGSTOP`) or resumes (`SIGCONT`) process `pid`.
fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .context("running kill")?;
    if !st.success() {
        bail!("kill {sig} {pid} failed: {st}");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Variant {
    Basic,
    Spread,
    Anti,
    Algo,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Basic => "basic",
            Variant::Spread => "zone topology spread",
            Variant::Anti => "pod anti-affinity",
            Variant::Algo => "algorithm alone (no API)",
        }
    }

    /// Issue 4's end-to-end targets on this 2-core machine (pods/s).
    fn target(self) -> f64 {
        match self {
            Variant::Basic | Variant::Algo => 1400.0,
            Variant::Spread => 200.0,
            Variant::Anti => 150.0,
        }
    }

    /// kube-scheduler's scheduler_perf floors (pods/s), the anchor.
    fn anchor(self) -> &'static str {
        match self {
            Variant::Basic | Variant::Algo => "680",
            Variant::Spread => "85",
            Variant::Anti => "60",
        }
    }
}

const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

fn node(i: usize) -> Value {
    let name = format!("node-{i:05}");
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": ZONES[i % ZONES.len()],
        }},
        "status": {
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi"},
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

/// The pod of variant `v` number `i` (`groups`: anti-affinity group count).
fn pod(v: Variant, ns: &str, i: usize, groups: usize) -> Value {
    let name = format!("p-{i:06}");
    let mut spec = json!({
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": false,
        "containers": [{"name": "c", "image": "registry.example/bench:1.0",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]
    });
    let mut labels = json!({"app": "bench"});
    match v {
        Variant::Spread => {
            spec["topologySpreadConstraints"] = json!([{
                "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "bench"}}
            }]);
        }
        Variant::Anti => {
            let g = format!("g{}", i % groups);
            labels["group"] = json!(g);
            spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"group": g}}
            }]}});
        }
        Variant::Basic | Variant::Algo => {}
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": spec
    })
}

/// Anti-affinity groups: each group at most half the node count, so every pod fits.
fn anti_groups(pods: usize, nodes: usize) -> usize {
    (pods * 2).div_ceil(nodes.max(1)).max(1)
}

async fn create_nodes(client: &kube::Client, n: usize, conc: usize) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let errors: Vec<String> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let obj: Node = serde_json::from_value(node(i)).expect("static node literal");
                let name = obj.metadata.name.clone().unwrap_or_default();
                let created = match api.create(&PostParams::default(), &obj).await {
                    Ok(c) => c,
                    Err(e) => return Some(format!("create {name}: {e}")),
                };
                // Upstream drops status on create; set it through the status subresource then.
                if created
                    .status
                    .as_ref()
                    .and_then(|s| s.allocatable.as_ref())
                    .is_none()
                {
                    let st = json!({"status": node(i)["status"]});
                    if let Err(e) = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&st))
                        .await
                    {
                        return Some(format!("status {name}: {e}"));
                    }
                }
                None
            }
        })
        .buffer_unordered(conc)
        .filter_map(|e| async move { e })
        .collect()
        .await;
    if !errors.is_empty() {
        bail!("{} of {n} nodes failed; first: {}", errors.len(), errors[0]);
    }
    Ok(())
}

/// A plain HTTP/1.1 GET of the scheduler's metrics listener; the body.
async fn scrape(addr: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        anyhow::Ok(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("metrics scrape timed out")??;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(body.to_string())
}

/// `name value` samples (no labels) of a Prometheus text exposition.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// A counter or gauge by name; prometheus-client appends `_total` to counters.
fn metric(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.get(name)
        .or_else(|| m.get(&format!("{name}_total")))
        .copied()
        .unwrap_or(f64::NAN)
}

/// The processes whose CPU time a row reports: kelson-kv, API server, scheduler, this one.
#[derive(Clone, Copy)]
struct Procs {
    kv: Option<u32>,
    api: Option<u32>,
    sched: u32,
}

impl Procs {
    /// CPU seconds so far: [kelson-kv, API server, scheduler, bench].
    fn sample(&self) -> [f64; 4] {
        let get = |p: Option<u32>| p.and_then(report::cpu_seconds).unwrap_or(f64::NAN);
        [
            get(self.kv),
            get(self.api),
            get(Some(self.sched)),
            get(Some(std::process::id())),
        ]
    }
}

/// What the bench's watch needs of a pod watch event; everything else is skipped unparsed
/// (decoding 20 000 whole pods into `serde_json::Value` cost this process CPU the system
/// under test shares).
#[derive(Deserialize)]
struct WatchEv {
    object: WatchObj,
}

#[derive(Deserialize)]
struct WatchObj {
    #[serde(default)]
    metadata: WatchMeta,
    #[serde(default)]
    spec: WatchSpec,
}

#[derive(Deserialize, Default)]
struct WatchMeta {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WatchSpec {
    #[serde(default)]
    node_name: Option<String>,
}

struct E2e {
    ns: String,
    pods: usize,
    bound: usize,
    create_s: f64,
    total_s: f64,
    bind_window_s: f64,
    latency: Hist,
    create_errors: usize,
    first_error: Option<String>,
    /// CPU seconds over the measured window: [kelson-kv, API server, scheduler, bench].
    cpu: [f64; 4],
}

/// Creates `n` pods of variant `v` in a fresh namespace and waits until all are bound.
// One call site passes a row's knobs straight from the command line; a struct for them would
// only rename the arguments.
#[allow(clippy::too_many_arguments)]
async fn run_e2e(
    client: &kube::Client,
    v: Variant,
    n: usize,
    nodes: usize,
    conc: usize,
    timeout: Duration,
    paused: Option<u32>,
    procs: &Procs,
) -> anyhow::Result<E2e> {
    let ns = format!(
        "sched-{}-{}",
        format!("{v:?}").to_lowercase(),
        if paused.is_some() { "backlog" } else { "live" }
    );
    let nso: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &nso)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context("creating the namespace"),
    }
    // The watch starts at the namespace's current revision, before the first create.
    let req =
        http::Request::get(format!("/api/v1/namespaces/{ns}/pods?limit=1")).body(Vec::new())?;
    let list: Value = serde_json::from_str(&client.request_text(req).await?)?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("list without resourceVersion")?
        .to_string();
    let req = http::Request::get(format!(
        "/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion={rv}&timeoutSeconds={}",
        timeout.as_secs() + 60
    ))
    .body(Vec::new())?;
    let stream = client
        .request_stream(req)
        .await
        .context("opening the pod watch")?;
    let sent: Arc<Vec<OnceLock<Instant>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());
    // Bounded: after `timeout` the watcher hands back what it saw (a partial result is a
    // table note, not an aborted run).
    let watcher = tokio::spawn(async move {
        let mut bound_at: Vec<Option<Instant>> = vec![None; n];
        let mut count = 0usize;
        let mut lines = stream.lines();
        let read = async {
            while let Some(line) = lines.try_next().await? {
                let now = Instant::now();
                let ev: WatchEv = match serde_json::from_str(&line) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let obj = &ev.object;
                if obj.spec.node_name.as_deref().is_none_or(str::is_empty) {
                    continue;
                }
                let Some(i) = obj
                    .metadata
                    .name
                    .strip_prefix("p-")
                    .and_then(|s| s.parse::<usize>().ok())
                else {
                    continue;
                };
                if i < n && bound_at[i].is_none() {
                    bound_at[i] = Some(now);
                    count += 1;
                    if count == n {
                        break;
                    }
                }
            }
            anyhow::Ok(())
        };
        let res = tokio::time::timeout(timeout, read).await;
        match res {
            Ok(r) => r?,
            Err(_) => tracing::warn!("{count} of {n} pods bound when the watch gave up"),
        }
        anyhow::Ok(bound_at)
    });
    let groups = anti_groups(n, nodes);
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if let Some(pid) = paused {
        signal(pid, "-STOP")?;
    }
    let mut t0 = Instant::now();
    let mut cpu0 = procs.sample();
    let errors: Vec<String> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let p: Pod =
                serde_json::from_value(pod(v, &ns, i, groups)).expect("static pod literal");
            let sent = sent.clone();
            async move {
                let _ = sent[i].set(Instant::now());
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
    let create_s = t0.elapsed().as_secs_f64();
    if let Some(pid) = paused {
        // The clock starts when the scheduler may run: all pods wait in its backlog.
        t0 = Instant::now();
        cpu0 = procs.sample();
        signal(pid, "-CONT")?;
    }
    info!(
        "{}: {n} pods created in {create_s:.1} s ({} errors)",
        v.label(),
        errors.len()
    );
    let bound_at = watcher.await.context("watcher task panicked")??;
    let cpu1 = procs.sample();
    let cpu = std::array::from_fn(|i| cpu1[i] - cpu0[i]);
    let mut latency = Hist::default();
    let mut first_bind: Option<Instant> = None;
    let mut last_bind: Option<Instant> = None;
    let mut bound = 0;
    for (i, b) in bound_at.iter().enumerate() {
        if let (Some(b), Some(s)) = (b, sent[i].get()) {
            latency.record(b.saturating_duration_since((*s).max(t0)));
            first_bind = Some(first_bind.map_or(*b, |f| f.min(*b)));
            last_bind = Some(last_bind.map_or(*b, |l| l.max(*b)));
            bound += 1;
        }
    }
    let total_s = last_bind
        .map(|l| l.duration_since(t0).as_secs_f64())
        .unwrap_or(f64::NAN);
    let bind_window_s = first_bind
        .zip(last_bind)
        .map(|(f, l)| (l - f).as_secs_f64())
        .unwrap_or(f64::NAN);
    Ok(E2e {
        ns,
        pods: n,
        bound,
        create_s,
        total_s,
        bind_window_s,
        latency,
        create_errors: errors.len(),
        first_error: errors.into_iter().next(),
        cpu,
    })
}

/// Events with reason `Scheduled` in `ns` (paged LIST). The recorder writes them after the
/// binding, so this waits, bounded, until `want` are there or the count stops growing.
async fn scheduled_events(client: &kube::Client, ns: &str, want: usize) -> anyhow::Result<usize> {
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let mut last = usize::MAX;
    for _ in 0..20 {
        let mut count = 0;
        let mut lp = kube::api::ListParams::default().limit(2000);
        loop {
            let page = api.list(&lp).await.context("listing events")?;
            count += page
                .items
                .iter()
                .filter(|e| e.reason.as_deref() == Some("Scheduled"))
                .count();
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp = lp.continue_token(&c),
                None => break,
            }
        }
        if count >= want || count == last {
            return Ok(count);
        }
        last = count;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(last)
}

/// The algorithm alone: the daemon's Filter/Score code over an in-memory snapshot of the same
/// nodes, assuming each placed pod as the daemon's cache does (one snapshot updated in place
/// per assumed pod). Returns (pods/s, per-pod latency, failures).
fn run_algo(v: Variant, nodes: usize, pods: usize) -> (f64, Hist, usize) {
    let mut snap = Snapshot::new(
        (0..nodes)
            .map(|i| {
                let n: Node = serde_json::from_value(node(i)).expect("static node literal");
                Arc::new(NodeInfo::new(Arc::new(n)))
            })
            .collect(),
    );
    let groups = anti_groups(pods, nodes);
    let mut algo = Algorithm::new(Weights::default(), 0);
    let mut hist = Hist::default();
    let mut failures = 0;
    let t0 = Instant::now();
    for i in 0..pods {
        let mut p: Pod =
            serde_json::from_value(pod(v, "algo", i, groups)).expect("static pod literal");
        p.metadata.uid = Some(format!("uid-{i}"));
        let t = Instant::now();
        let pi = Arc::new(PodInfo::new(Arc::new(p.clone()), 0));
        match algo.schedule(pi, &snap) {
            Ok(idx) => {
                p.spec.get_or_insert_with(Default::default).node_name =
                    snap.nodes[idx].name.clone().into();
                snap.add_pod(idx, Arc::new(PodInfo::new(Arc::new(p), 0)));
            }
            Err(_) => failures += 1,
        }
        hist.record(t.elapsed());
    }
    (pods as f64 / t0.elapsed().as_secs_f64(), hist, failures)
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
    let nodes = a.nodes.unwrap_or(if a.quick { 500 } else { 5000 });
    let pods = a.pods.unwrap_or(if a.quick { 1000 } else { 10_000 });
    if nodes == 0 || pods == 0 || a.create_clients == 0 {
        bail!("--nodes, --pods and --create-clients must be positive");
    }
    let variants = if a.only.is_empty() {
        vec![
            Variant::Basic,
            Variant::Spread,
            Variant::Anti,
            Variant::Algo,
        ]
    } else {
        a.only.clone()
    };
    let t_all = Instant::now();
    let timeout = Duration::from_secs(a.timeout);
    let mut lines: Vec<Line> = Vec::new();
    let k = |n: usize| {
        if n.is_multiple_of(1000) {
            format!("{}k", n / 1000)
        } else {
            n.to_string()
        }
    };

    let e2e: Vec<Variant> = variants
        .iter()
        .copied()
        .filter(|v| *v != Variant::Algo)
        .collect();
    if !e2e.is_empty() {
        let cp = ControlPlane::start().await.context("starting kelson-kv + kelson-apiserver (build them first, same profile as this program)")?;
        let client = cp.client().await?;
        let t = Instant::now();
        create_nodes(&client, nodes, a.create_clients).await?;
        let node_s = t.elapsed().as_secs_f64();
        info!("{nodes} nodes created in {node_s:.1} s");
        lines.push(Line::new(
            format!("{} nodes created (setup)", k(nodes)),
            "nodes/s",
            Some(nodes as f64 / node_s),
        ));

        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = std::process::Command::new(bin_path("kelson-scheduler"));
        cmd.arg("--kubeconfig")
            .arg(cp.kubeconfig_path())
            .args(["--no-dbus", "--leader-elect=false", "--log-level", "warn"])
            .args(["--metrics-addr", &metrics_addr]);
        let mut sched =
            ChildGuard::spawn("kelson-scheduler", cmd, &cp.dir().join("scheduler.log"))?;
        let sched_pid = sched.pid();
        // Ready = metrics answer and the scheduler leads (no election: at once).
        let t = Instant::now();
        loop {
            if let Some(st) = sched.try_wait() {
                bail!("kelson-scheduler exited ({st}):\n{}", sched.log_tail(30));
            }
            if let Ok(body) = scrape(&metrics_addr).await {
                if samples(&body).get("scheduler_is_leader") == Some(&1.0) {
                    break;
                }
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!(
                    "kelson-scheduler not ready in 60 s:\n{}",
                    sched.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        info!("scheduler up in {:?}", t.elapsed());
        let port = cp
            .server_url()
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_string();
        let procs = Procs {
            kv: report::find_pid(
                "kelson-kv",
                &["--listen-client-urls", &cp.store().endpoint(0)],
            ),
            api: report::find_pid("kelson-apiserver", &["--secure-port", &port]),
            sched: sched_pid,
        };
        let mut scheduled_before = 0.0;
        let mut dropped_before = 0.0;
        for (v, mode) in e2e
            .iter()
            .flat_map(|v| a.mode.iter().map(move |m| (*v, *m)))
        {
            let paused = (mode == Mode::Backlog).then_some(sched_pid);
            let r = run_e2e(
                &client,
                v,
                pods,
                nodes,
                a.create_clients,
                timeout,
                paused,
                &procs,
            )
            .await?;
            let events = scheduled_events(&client, &r.ns, r.bound).await;
            let m = samples(&scrape(&metrics_addr).await.unwrap_or_default());
            let scheduled = metric(&m, "scheduler_schedule_attempts_scheduled");
            let dropped = metric(&m, "scheduler_events_dropped");
            let w = format!(
                "{} nodes / {} pods, {}, {mode}",
                k(nodes),
                k(r.pods),
                v.label()
            );
            let from = match mode {
                Mode::Live => "create",
                Mode::Backlog => "release",
            };
            let pps = (r.bound == r.pods).then(|| r.pods as f64 / r.total_s);
            let mut note = format!(
                "anchor (kube-scheduler floor) {}; creates took {:.1} s ({:.0}/s); binds spanned {:.1} s ({:.0}/s)",
                v.anchor(),
                r.create_s,
                r.pods as f64 / r.create_s,
                r.bind_window_s,
                r.pods as f64 / r.bind_window_s
            );
            if r.bound != r.pods {
                note.push_str(&format!("; only {} of {} bound", r.bound, r.pods));
            }
            if let Some(e) = &r.first_error {
                note.push_str(&format!("; {} create errors, first: {e}", r.create_errors));
            }
            lines.push(
                Line::new(&w, "pods/s end to end", pps)
                    .target(Target::AtLeast(v.target()))
                    .note(note),
            );
            lines.push(Line::new(
                &w,
                &format!("{from}->bound p50 ms"),
                r.latency.ms(0.5),
            ));
            lines.push(Line::new(
                &w,
                &format!("{from}->bound p99 ms"),
                r.latency.ms(0.99),
            ));
            let mut extra = format!(
                "/metrics: scheduled +{}, unschedulable {}, errors {}",
                scheduled - scheduled_before,
                metric(&m, "scheduler_schedule_attempts_unschedulable"),
                metric(&m, "scheduler_schedule_attempts_error")
            );
            if let Some(rss) = report::rss_mb(sched_pid) {
                extra.push_str(&format!("; RSS {rss:.0} MB"));
            }
            let per_pod = |c: f64| c * 1000.0 / r.pods as f64;
            lines.push(
                Line::new(&w, "scheduler CPU-s per 1k pods", Some(per_pod(r.cpu[2]))).note(extra),
            );
            let total: f64 = r.cpu.iter().sum();
            lines.push(
                Line::new(&w, "CPU ms per pod, all 4 processes", Some(per_pod(total))).note(
                    format!(
                        "kelson-kv {:.3}, API server {:.3}, scheduler {:.3}, bench {:.3} ms/pod (from the {})",
                        per_pod(r.cpu[0]),
                        per_pod(r.cpu[1]),
                        per_pod(r.cpu[2]),
                        per_pod(r.cpu[3]),
                        from
                    ),
                ),
            );
            lines.push(
                Line::new(
                    &w,
                    "Scheduled events",
                    events.as_ref().ok().map(|n| *n as f64),
                )
                .note(match &events {
                    Ok(_) => format!("recorder dropped {} events", dropped - dropped_before),
                    Err(e) => format!("counting failed: {e:#}"),
                }),
            );
            scheduled_before = scheduled;
            dropped_before = dropped;
        }
        drop(sched);
        drop(cp);
    }

    if variants.contains(&Variant::Algo) {
        for v in [Variant::Basic, Variant::Spread, Variant::Anti] {
            let (pps, hist, failures) = tokio::task::block_in_place(|| run_algo(v, nodes, pods));
            let w = format!(
                "{} nodes / {} pods, {}, algorithm alone",
                k(nodes),
                k(pods),
                v.label()
            );
            let note = if failures > 0 {
                format!("{failures} pods found no node")
            } else {
                String::new()
            };
            lines.push(Line::new(&w, "pods/s", Some(pps)).note(note));
            lines.push(Line::new(&w, "per-pod p50 ms", hist.ms(0.5)));
            lines.push(Line::new(&w, "per-pod p99 ms", hist.ms(0.99)));
        }
    }

    println!(
        "sched-bench ({} build; scheduler {}), {}; {} simulated nodes over {} zones, {} pods per variant, {} creating clients",
        report::profile(),
        bin_path("kelson-scheduler").display(),
        report::machine(),
        nodes,
        ZONES.len(),
        pods,
        a.create_clients
    );
    println!("total {:.0} s\n", t_all.elapsed().as_secs_f64());
    print!("{}", report::render(&lines));
    Ok(())
}
