//! Pod startup benchmark: created → Running and → Ready latency (p50/p99) for pods created one
//! by one and all at once, and the kubelet's RSS and CPU with 0 and N running pods.
//!
//! It starts a control plane (kelson-kv + kelson-apiserver), a private containerd and one
//! kelson-kubelet (the same fixture as the integration tests; pods are bound by setting
//! `spec.nodeName` at creation, as a scheduler's Binding would), creates busybox pods (image
//! present, no probes) and watches their status. An example rather than a `src/bin` binary
//! because it reuses the test fixtures (dev-dependencies) and is a program that prints a
//! table, not a timed test.
//!
//! ```text
//! cargo build -p kelson-kv -p kelson-apiserver -p kelson-kubelet
//! cargo run -p kelson-kubelet --example pod-startup-bench -- [--pods 100]
//! # a release kubelet: cargo build --release -p kelson-kubelet and
//! # KELSON_KUBELET_BIN=target/release/kelson-kubelet cargo run … (needs root)
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use parking_lot::Mutex;
use serde_json::json;

#[derive(Default, Clone, Copy)]
struct Seen {
    created: Option<Instant>,
    running: Option<Instant>,
    ready: Option<Instant>,
}

type Book = Arc<Mutex<HashMap<String, Seen>>>;

fn observe(book: &Book, p: &Pod) {
    let name = p.metadata.name.clone().unwrap_or_default();
    let st = p.status.clone().unwrap_or_default();
    let now = Instant::now();
    let mut b = book.lock();
    let e = b.entry(name).or_default();
    if e.running.is_none() && st.phase.as_deref() == Some("Running") {
        e.running = Some(now);
    }
    let ready = st
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if e.ready.is_none() && ready {
        e.ready = Some(now);
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// (RSS in MiB, CPU seconds used so far) of a process.
fn usage(pid: u32) -> (f64, f64) {
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After "pid (comm)": state is field 0, utime 11, stime 12.
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (rss_kb / 1024.0, ticks / hz.max(1.0))
}

/// RSS and average CPU (% of one core) over `window`.
async fn sample(pid: u32, window: Duration) -> (f64, f64) {
    let (_, c0) = usage(pid);
    tokio::time::sleep(window).await;
    let (rss, c1) = usage(pid);
    (rss, (c1 - c0) / window.as_secs_f64() * 100.0)
}

fn spec(node: &str, name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"bench": "1"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": common::BUSYBOX, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}],
        },
    }))
    .expect("pod")
}

fn report(label: &str, book: &Book, names: &[String]) {
    let b = book.lock();
    let mut running = Vec::new();
    let mut ready = Vec::new();
    for n in names {
        let Some(s) = b.get(n) else { continue };
        let Some(c) = s.created else { continue };
        if let Some(r) = s.running {
            running.push(r.saturating_duration_since(c));
        }
        if let Some(r) = s.ready {
            ready.push(r.saturating_duration_since(c));
        }
    }
    println!(
        "{label:<12} {:>4} pods | →Running p50 {:>6.0} ms p99 {:>6.0} ms | →Ready p50 {:>6.0} ms p99 {:>6.0} ms",
        names.len(),
        pct(&mut running, 0.5).as_secs_f64() * 1000.0,
        pct(&mut running, 0.99).as_secs_f64() * 1000.0,
        pct(&mut ready, 0.5).as_secs_f64() * 1000.0,
        pct(&mut ready, 0.99).as_secs_f64() * 1000.0,
    );
}

async fn wait_all_ready(book: &Book, names: &[String], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let done = {
            let b = book.lock();
            names
                .iter()
                .filter(|n| b.get(*n).is_some_and(|s| s.ready.is_some()))
                .count()
        };
        if done == names.len() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{done}/{} pods Ready after {limit:?}",
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn delete_all(node: &common::TestNode) -> anyhow::Result<()> {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    node.pods
        .delete_collection(&dp, &ListParams::default().labels("bench=1"))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = node
            .cri
            .list_pod_sandboxes(HashMap::from([(
                "io.kelson.node".to_string(),
                node.node_name.clone(),
            )]))
            .await?
            .len();
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{left} sandboxes left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--pods")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // Examples live in target/<profile>/examples; the fixtures find binaries through
    // CARGO_TARGET_DIR/debug.
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        if let Some(t) = std::env::current_exe()?.ancestors().nth(3) {
            std::env::set_var("CARGO_TARGET_DIR", t);
        }
    }
    let node = common::TestNode::start(30, &["--max-pods=250".into()]).await;
    let pid = node.kubelet.as_ref().map(|k| k.pid()).unwrap_or(0);
    let book: Book = Default::default();
    let watch = {
        let (book, api) = (book.clone(), node.pods.clone());
        tokio::spawn(async move {
            let mut s = watcher::watcher(api, watcher::Config::default().labels("bench=1")).boxed();
            while let Some(ev) = s.next().await {
                match ev {
                    Ok(Event::Apply(p)) | Ok(Event::InitApply(p)) => observe(&book, &p),
                    _ => {}
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss0, cpu0) = sample(pid, Duration::from_secs(5)).await;

    // One by one: each pod is created after the previous one is Ready.
    let mut seq = Vec::new();
    for i in 0..n {
        let name = format!("seq-{i}");
        book.lock().entry(name.clone()).or_default().created = Some(Instant::now());
        node.pods
            .create(&PostParams::default(), &spec(&node.node_name, &name))
            .await?;
        seq.push(name);
        wait_all_ready(&book, &seq[i..], Duration::from_secs(30)).await?;
    }
    report("one-by-one", &book, &seq);
    let (rss_seq, _) = usage(pid);
    delete_all(&node).await?;

    // All at once.
    let names: Vec<String> = (0..n).map(|i| format!("burst-{i}")).collect();
    let (_, c_before) = usage(pid);
    let t0 = Instant::now();
    let creates = names.iter().map(|name| {
        let (book, api, node_name) = (book.clone(), node.pods.clone(), node.node_name.clone());
        async move {
            book.lock().entry(name.clone()).or_default().created = Some(Instant::now());
            api.create(&PostParams::default(), &spec(&node_name, name))
                .await
        }
    });
    for r in futures::future::join_all(creates).await {
        r?;
    }
    wait_all_ready(&book, &names, Duration::from_secs(300)).await?;
    let burst_wall = t0.elapsed();
    let (_, c_after) = usage(pid);
    report("all-at-once", &book, &names);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_n, cpu_n) = sample(pid, Duration::from_secs(10)).await;
    println!(
        "kubelet      0 pods: RSS {rss0:.1} MiB, CPU {cpu0:.1}% | after one-by-one: RSS {rss_seq:.1} MiB | {n} pods running: RSS {rss_n:.1} MiB, CPU {cpu_n:.1}% (steady) | burst: {:.1} CPU s over {:.1} s",
        c_after - c_before,
        burst_wall.as_secs_f64()
    );
    delete_all(&node).await?;
    watch.abort();
    Ok(())
}
