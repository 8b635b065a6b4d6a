//! dns-bench: queries/s and latency percentiles of kelson-dns's query path over UDP on
//! loopback, for cluster names and for forwarded names served from the cache.
//!
//! It runs the real server (`Listeners` over a `Dns` with a synthetic zone) in-process — no API
//! server is needed, the zone is built from generated Services and EndpointSlices exactly as
//! the daemon builds it — with a stub upstream on loopback for the forwarded names, warms the
//! cache, then lets N concurrent clients (each its own UDP socket, one query in flight) query
//! for a fixed time. Prints a table; a benchmark program, not a timed test.
//!
//! Usage: `dns-bench [--services 1000] [--seconds 2] [--clients 1,8,32]`

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kelson_dns::forward::{Forwarder, ForwarderOptions};
use kelson_dns::server::Listeners;
use kelson_dns::stub::StubUpstream;
use kelson_dns::zone::{Zone, ZoneState};
use kelson_dns::Dns;

struct Args {
    services: usize,
    seconds: u64,
    clients: Vec<usize>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        services: 1000,
        seconds: 2,
        clients: vec![1, 8, 32],
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{k} needs a value"))?;
        match k.as_str() {
            "--services" => a.services = v.parse()?,
            "--seconds" => a.seconds = v.parse()?,
            "--clients" => a.clients = v.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?,
            _ => anyhow::bail!("unknown flag {k}"),
        }
    }
    Ok(a)
}

fn synthetic(n: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for i in 0..n {
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        svcs.push(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                "spec": {"clusterIP": ip, "clusterIPs": [ip],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
            }))
            .unwrap(),
        );
    }
    // One in ten services also has a headless twin with 10 endpoints.
    for i in 0..n / 10 {
        svcs.push(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("hl-{i}"), "namespace": "bench"},
                "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}
            }))
            .unwrap(),
        );
        let eps: Vec<_> = (0..10)
            .map(|j| {
                serde_json::json!({"addresses": [format!("10.244.{}.{}", i % 250, j + 1)],
                                   "conditions": {"ready": true}})
            })
            .collect();
        slices.push(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("hl-{i}-x"), "namespace": "bench",
                             "labels": {"kubernetes.io/service-name": format!("hl-{i}")}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                "endpoints": eps
            }))
            .unwrap(),
        );
    }
    (svcs, slices)
}

fn query_bytes(id: u16, name: &Name, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name.clone(), t));
    m.to_vec().unwrap()
}

struct Outcome {
    hist: Histogram<u64>,
    ok: u64,
    lost: u64,
    bad: u64,
}

async fn client(
    server: SocketAddr,
    names: Arc<Vec<(Name, RecordType)>>,
    seed: usize,
    until: Instant,
) -> Outcome {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    let mut out = Outcome {
        hist: Histogram::new_with_bounds(1, 10_000_000, 3).unwrap(),
        ok: 0,
        lost: 0,
        bad: 0,
    };
    let mut buf = vec![0u8; 4096];
    let mut i = seed;
    while Instant::now() < until {
        let (name, t) = &names[i % names.len()];
        i += 1;
        let id = (i % 65536) as u16;
        let q = query_bytes(id, name, *t);
        let start = Instant::now();
        sock.send(&q).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let n = sock.recv(&mut buf).await?;
                if let Ok(m) = Message::from_vec(&buf[..n]) {
                    if m.metadata.id == id {
                        return Ok::<_, std::io::Error>(m);
                    }
                }
            }
        })
        .await;
        match got {
            Ok(Ok(m))
                if m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty() =>
            {
                out.ok += 1;
                let _ = out.hist.record(start.elapsed().as_micros().max(1) as u64);
            }
            Ok(_) => out.bad += 1,
            Err(_) => out.lost += 1,
        }
    }
    out
}

/// Seconds: applying the initial list to a [`ZoneState`], then the median cost of one added
/// ClusterIP service and of one changed headless endpoint, each followed by a snapshot
/// (what the daemon does per event burst).
fn incremental_costs(
    svcs: &[Service],
    slices: &[EndpointSlice],
    records: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let t = Instant::now();
    let mut z = ZoneState::new("cluster.local", 5);
    for s in svcs {
        z.apply_service(s.clone());
    }
    for e in slices {
        z.apply_slice(e.clone());
    }
    // Held like the daemon holds the published snapshot, so changes pay copy-on-write.
    let mut held = z.snapshot(true);
    let init = t.elapsed().as_secs_f64();
    if z.record_count() != records {
        anyhow::bail!(
            "incremental zone has {} records, full build {records}",
            z.record_count()
        );
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut one = Vec::new();
    let mut headless = Vec::new();
    for r in 0..21 {
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("added-{r}"), "namespace": "bench"},
            "spec": {"clusterIP": format!("10.97.0.{}", r + 1),
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))?;
        let t = Instant::now();
        z.apply_service(s);
        held = z.snapshot(true);
        one.push(t.elapsed().as_secs_f64());
        if let Some(e) = slices.get(r % slices.len().max(1)) {
            let mut e = e.clone();
            e.endpoints[0].addresses = vec![format!("10.250.0.{}", r + 1)];
            let t = Instant::now();
            z.apply_slice(e);
            held = z.snapshot(true);
            headless.push(t.elapsed().as_secs_f64());
        }
    }
    drop(held);
    let hl = if headless.is_empty() {
        0.0
    } else {
        median(headless)
    };
    Ok((init, median(one), hl))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let names_ext: Vec<String> = (0..100).map(|i| format!("h{i}.example.test")).collect();
    let recs: Vec<(&str, Ipv4Addr, u32)> = names_ext
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), Ipv4Addr::new(192, 0, 2, i as u8), 3600))
        .collect();
    let upstream = StubUpstream::start("127.0.0.1:0".parse()?, "example.test", &recs, 60).await?;

    let (svcs, slices) = synthetic(a.services);
    let sr: Vec<&Service> = svcs.iter().collect();
    let er: Vec<&EndpointSlice> = slices.iter().collect();
    let t = Instant::now();
    let zone = Zone::build("cluster.local", 5, &sr, &er, true);
    let build = t.elapsed();
    let records = zone.record_count();
    let (incr_init, incr_one, incr_headless) = incremental_costs(&svcs, &slices, records)?;
    let fwd = Forwarder::new(ForwarderOptions {
        upstreams: vec![upstream.addr()],
        timeout: Duration::from_secs(2),
        cache_size: 10_000,
        max_ttl: 3600,
        max_negative_ttl: 1800,
    });
    let dns = Arc::new(Dns::new(zone, fwd));
    let listeners = Listeners::bind(dns.clone(), &["127.0.0.1:0".parse()?]).await?;
    let server = listeners.addrs()[0];

    let fq = |s: &str| Name::from_ascii(format!("{s}.")).unwrap();
    let cached: Vec<(Name, RecordType)> =
        names_ext.iter().map(|n| (fq(n), RecordType::A)).collect();
    let cluster_a: Vec<(Name, RecordType)> = (0..a.services.min(1000))
        .map(|i| {
            (
                fq(&format!("svc-{i}.bench.svc.cluster.local")),
                RecordType::A,
            )
        })
        .collect();
    let headless: Vec<(Name, RecordType)> = (0..(a.services / 10).clamp(1, 100))
        .map(|i| {
            (
                fq(&format!("hl-{i}.bench.svc.cluster.local")),
                RecordType::A,
            )
        })
        .collect();
    let srv: Vec<(Name, RecordType)> = (0..a.services.min(1000))
        .map(|i| {
            (
                fq(&format!("_http._tcp.svc-{i}.bench.svc.cluster.local")),
                RecordType::SRV,
            )
        })
        .collect();
    // Warm the cache: one upstream query per external name.
    let _ = client(
        server,
        Arc::new(cached.clone()),
        0,
        Instant::now() + Duration::from_millis(300),
    )
    .await;
    let upstream_before = upstream.queries();

    println!(
        "kelson-dns bench: {} services + {} headless ({} records, zone build {:.1} ms), UDP loopback, {} s per row",
        a.services,
        a.services / 10,
        records,
        build.as_secs_f64() * 1e3,
        a.seconds
    );
    println!(
        "incremental zone: initial list {:.1} ms; one ClusterIP service added + snapshot {:.2} ms; \
         one endpoint of a 10-endpoint headless service changed + snapshot {:.2} ms (medians of 21)",
        incr_init * 1e3,
        incr_one * 1e3,
        incr_headless * 1e3
    );
    println!(
        "{:<22} {:>7} {:>10} {:>9} {:>9} {:>9} {:>6}",
        "workload", "clients", "queries/s", "p50 µs", "p99 µs", "max µs", "lost"
    );
    for (label, set) in [
        ("forwarded, cached", cached),
        ("cluster A (ClusterIP)", cluster_a),
        ("cluster A (headless)", headless),
        ("cluster SRV", srv),
    ] {
        let set = Arc::new(set);
        for &n in &a.clients {
            let until = Instant::now() + Duration::from_secs(a.seconds);
            let start = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|c| tokio::spawn(client(server, set.clone(), c * 7919, until)))
                .collect();
            let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
            let (mut ok, mut lost, mut bad) = (0, 0, 0);
            for t in tasks {
                let o = t.await?;
                hist.add(&o.hist)?;
                ok += o.ok;
                lost += o.lost;
                bad += o.bad;
            }
            let secs = start.elapsed().as_secs_f64();
            if bad > 0 {
                anyhow::bail!("{label}: {bad} answers were not NOERROR with records");
            }
            println!(
                "{:<22} {:>7} {:>10.0} {:>9} {:>9} {:>9} {:>6}",
                label,
                n,
                ok as f64 / secs,
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99),
                hist.max(),
                lost
            );
        }
    }
    println!(
        "upstream queries during the cached rows: {} (all served from the cache when 0)",
        upstream.queries() - upstream_before
    );
    listeners.shutdown().await;
    Ok(())
}
