//! Incremental syncs over netlink leave exactly the ruleset a full `nft -f` sync writes.
//!
//! Two network namespaces made by the test: in one a proxier applies a random sequence of
//! service adds, changes and deletes incrementally (netlink batches); after every step a second
//! proxier recreates its table from the same state with `nft -f` in the other namespace, and
//! `nft -j list table` of both (ip and ip6) must be equal once handles are dropped and
//! unordered collections (set elements, the order chains were created in) are sorted.
//! The random state covers every form `render_service` emits: both families and dual stack,
//! endpoints ready/terminating/local, NodePorts, externalIPs (shared between services, so map
//! keys change owner), LoadBalancer IPs with source ranges, sessionAffinity, both traffic
//! policies, and two IPv4 cluster CIDRs (an anonymous interval set). Needs root and `nft`.
//! The seed is printed; `KPX_SEED=<n>` replays a run.

use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use kelson_proxy::model::{Endpoint, Protocol, ServiceInfo, ServicePortName, State};
use kelson_proxy::nft::Nft;
use kelson_proxy::proxier::NftProxier;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test creates network namespaces and needs root"
        );
        let name = format!(
            "kpxnl{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip");
        assert!(st.success(), "ip netns add {name}");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

const CIDRS: &[&str] = &["10.244.0.0/16", "10.245.0.0/17", "fd00:244::/64"];
const NAMES: usize = 10;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::from([a, b, c, d])
}

fn v6(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spn(i: usize) -> ServicePortName {
    ServicePortName {
        namespace: "ns".into(),
        name: format!("svc{i}"),
        port_name: "p".into(),
        protocol: if i % 3 == 2 {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
    }
}

fn random_info(rng: &mut StdRng, i: usize) -> ServiceInfo {
    // 0: IPv4, 1: IPv6, 2: dual stack.
    let fam = rng.gen_range(0..3);
    let mut cluster_ips = Vec::new();
    if fam != 1 {
        cluster_ips.push(v4(10, 96, 0, i as u8 + 1));
    }
    if fam != 0 {
        cluster_ips.push(v6(&format!("fd00:96::{:x}", i + 1)));
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for e in 0..rng.gen_range(0..5u8) {
        let ip = if fam == 1 || (fam == 2 && rng.gen_bool(0.5)) {
            v6(&format!("fd00:244::{:x}", rng.gen_range(1..7u8)))
        } else {
            v4(10, 244, 0, rng.gen_range(1..7u8))
        };
        let ready = rng.gen_bool(0.75);
        endpoints.push(Endpoint {
            ip,
            port: 8080 + (e % 2) as u16,
            ready,
            serving: ready || rng.gen_bool(0.5),
            terminating: !ready && rng.gen_bool(0.7),
            local: rng.gen_bool(0.5),
        });
    }
    endpoints.sort_by_key(|e| (e.ip, e.port, !e.ready));
    endpoints.dedup_by(|b, a| a.ip == b.ip && a.port == b.port);
    let pick_ext = |rng: &mut StdRng| -> Vec<IpAddr> {
        // Few addresses, so services collide on the same map keys.
        match rng.gen_range(0..4) {
            0 => vec![v4(192, 0, 2, 1)],
            1 => vec![v6("fd00:ee::1")],
            _ => vec![],
        }
    };
    let external_ips = if rng.gen_bool(0.3) {
        pick_ext(rng)
    } else {
        vec![]
    };
    let load_balancer_ips = if rng.gen_bool(0.3) {
        vec![v4(192, 0, 2, 10 + i as u8), v6(&format!("fd00:ee::1{i}"))]
    } else {
        vec![]
    };
    let load_balancer_source_ranges = match rng.gen_range(0..4) {
        0 => vec!["198.51.100.0/24".to_string()],
        1 => vec![
            "198.51.100.0/24".to_string(),
            "203.0.113.0/25".to_string(),
            "fd00:5::/60".to_string(),
        ],
        _ => vec![],
    };
    ServiceInfo {
        cluster_ips,
        port: [80, 443, 53][rng.gen_range(0..3)],
        node_port: rng.gen_bool(0.3).then_some(30000 + i as u16),
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        affinity_timeout: rng.gen_bool(0.25).then(|| rng.gen_range(10..100)),
        external_policy_local: rng.gen_bool(0.3),
        internal_policy_local: rng.gen_bool(0.15),
        endpoints,
    }
}

/// Handles dropped, set elements sorted, every object as one JSON string, rules keyed by
/// (chain, position), the whole sorted.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("handle");
            for (k, x) in m.iter_mut() {
                normalize(x);
                if k.as_str() == "elem" || k.as_str() == "set" {
                    if let Value::Array(a) = x {
                        a.sort_by_key(|e| e.to_string());
                    }
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn listing(ns: &str, family: &str) -> Vec<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["nft", "-j", "list", "table", family, "kelson-proxy"])
        .output()
        .expect("nft");
    assert!(
        out.status.success(),
        "nft -j list table {family}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Value = serde_json::from_slice(&out.stdout).expect("nft json");
    let items = v["nftables"].as_array_mut().expect("nftables array");
    let mut pos: std::collections::HashMap<String, usize> = Default::default();
    let mut out: Vec<String> = Vec::new();
    for it in items.iter_mut() {
        if it.get("metainfo").is_some() {
            continue;
        }
        normalize(it);
        if let Some(r) = it.get_mut("rule") {
            let chain = r["chain"].as_str().unwrap_or_default().to_string();
            let n = pos.entry(chain).or_default();
            r["position"] = (*n).into();
            *n += 1;
        }
        out.push(it.to_string());
    }
    out.sort();
    out
}

fn assert_same(a: &str, b: &str, step: usize, seed: u64, what: &str) {
    for fam in ["ip", "ip6"] {
        let (la, lb) = (listing(a, fam), listing(b, fam));
        if la != lb {
            let only_a: Vec<&String> = la.iter().filter(|x| !lb.contains(x)).take(6).collect();
            let only_b: Vec<&String> = lb.iter().filter(|x| !la.contains(x)).take(6).collect();
            panic!(
                "seed {seed}, step {step} ({what}), table {fam}: incremental netlink ruleset \
                 differs from a full nft sync\nonly after netlink:\n{}\nonly after full sync:\n{}",
                only_a
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
                only_b
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

fn proxier(ns: &Netns) -> NftProxier {
    let cidrs: Vec<String> = CIDRS.iter().map(|s| s.to_string()).collect();
    NftProxier::new(Nft::in_netns(&ns.0), &cidrs, false, &[])
}

#[tokio::test]
async fn incremental_netlink_syncs_equal_full_nft_syncs() {
    let seed: u64 = std::env::var("KPX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {seed} (KPX_SEED={seed} replays)");
    let mut rng = StdRng::seed_from_u64(seed);
    let (na, nb) = (Netns::new("inc"), Netns::new("full"));
    let (mut inc, mut full) = (proxier(&na), proxier(&nb));
    let mut state = State::new();
    for i in 0..NAMES / 2 {
        state.insert(spn(i), random_info(&mut rng, i));
    }
    inc.sync(&state, true).await.expect("first full sync");
    let mut netlink_syncs = 0;
    for step in 0..40 {
        let mut what = Vec::new();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..NAMES);
            let k = spn(i);
            if state.contains_key(&k) && rng.gen_bool(0.3) {
                state.remove(&k);
                what.push(format!("delete {i}"));
            } else {
                what.push(format!(
                    "{} {i}",
                    if state.contains_key(&k) {
                        "change"
                    } else {
                        "add"
                    }
                ));
                state.insert(k, random_info(&mut rng, i));
            }
        }
        let what = what.join(", ");
        let s = inc
            .sync(&state, false)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}, step {step} ({what}): {e}"));
        assert!(
            !s.full && s.nft_fallbacks == 0,
            "seed {seed}, step {step} ({what}): the incremental sync left netlink: {s:?}"
        );
        netlink_syncs += s.netlink;
        full.sync(&state, true).await.expect("full sync");
        assert_same(&na.0, &nb.0, step, seed, &what);
    }
    assert!(
        netlink_syncs >= 40,
        "only {netlink_syncs} netlink transactions"
    );
}

#[tokio::test]
async fn a_refused_netlink_batch_recreates_the_table_with_nft() {
    let (na, nb) = (Netns::new("fail"), Netns::new("ref"));
    let (mut inc, mut full) = (proxier(&na), proxier(&nb));
    let mut rng = StdRng::seed_from_u64(7);
    let mut state: State = (0..3).map(|i| (spn(i), random_info(&mut rng, i))).collect();
    // Service 0: IPv4 with two ready endpoints, so it has a service chain to flush.
    let s0 = ServiceInfo {
        cluster_ips: vec![v4(10, 96, 0, 1)],
        port: 80,
        endpoints: (1..=2)
            .map(|d| Endpoint {
                ip: v4(10, 244, 0, d),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                local: false,
            })
            .collect(),
        ..Default::default()
    };
    state.insert(spn(0), s0);
    inc.sync(&state, true).await.expect("full sync");
    // Someone deletes the service's chain behind the proxy's back: the next incremental
    // batch (which flushes and refills that chain) is refused by the kernel.
    let text = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", na.0))
        .args(["nft", "list", "chains", "ip"])
        .output()
        .expect("nft");
    let text = String::from_utf8_lossy(&text.stdout);
    let chain = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain "))
        .map(|l| l.trim_end_matches(" {").to_string())
        .find(|c| c.starts_with("service-") && c.contains("/svc0/"))
        .expect("service chain of svc0");
    let del = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", na.0))
        .arg("nft")
        .arg(format!(
            "delete element ip kelson-proxy service-ips {{ 10.96.0.1 . tcp . 80 }} ; flush chain ip kelson-proxy {chain} ; delete chain ip kelson-proxy {chain}"
        ))
        .status()
        .expect("nft");
    assert!(del.success(), "deleting {chain}");
    state.get_mut(&spn(0)).unwrap().endpoints.pop();
    let s = inc.sync(&state, false).await.expect("sync recovers");
    assert!(
        s.full && s.nft_fallbacks == 1 && s.netlink == 0,
        "the refused batch led to a full nft sync: {s:?}"
    );
    full.sync(&state, true).await.expect("reference sync");
    assert_same(&na.0, &nb.0, 0, 7, "after recovery");
    // And the next change goes over netlink again.
    state.remove(&spn(1));
    let s = inc.sync(&state, false).await.expect("sync");
    assert!(s.netlink >= 1 && s.nft_fallbacks == 0, "{s:?}");
    full.sync(&state, true).await.expect("reference sync");
    assert_same(&na.0, &nb.0, 1, 7, "netlink again");
}
