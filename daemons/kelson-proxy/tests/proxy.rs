//! kelson-proxy end to end, in both modes: a client netns reaches a ClusterIP service with 3
//! endpoints (all reached; an endpoint removed from the slice stops being used within 1 s; a
//! service without endpoints refuses at once), and a NodePort at node-ip:nodePort
//! (externalTrafficPolicy Cluster masquerades, Local keeps the client's address).
//! Needs root and `cargo build -p kelson-kv -p kelson-apiserver`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{parse_answer, Env, CLIENT_IP, NODE_BRIDGE_IP, NODE_CLIENT_IP};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

fn cluster_addr(svc: &Service) -> SocketAddr {
    let ip = svc.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    format!("{ip}:80").parse().unwrap()
}

fn node_port(svc: &Service) -> u16 {
    svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
        .node_port
        .expect("nodePort allocated") as u16
}

/// ClusterIP: all endpoints reached, removal within 1 s, no endpoints → refused at once.
async fn cluster_ip(mode: &str) {
    let mut env = Env::start(mode).await;
    let svc = env.service("web", json!({"type": "ClusterIP"})).await;
    env.slice("web", &[0, 1, 2]).await;
    let addr = cluster_addr(&svc);
    env.wait("the ClusterIP to answer", 30, |t| t.connect(addr).ok());

    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let (who, _) = parse_answer(&env.topo.connect(addr).expect("connect"));
        seen.insert(who);
    }
    assert_eq!(
        seen,
        ["e1", "e2", "e3"].map(String::from).into(),
        "all 3 endpoints reached over 60 connections"
    );

    // Remove e3 from the slice: from the moment the update is acknowledged, e3 must stop
    // answering within 1 s.
    env.slice("web", &[0, 1]).await;
    let changed = Instant::now();
    let mut streak_start = Instant::now();
    let mut streak = 0;
    while streak < 20 {
        let (who, _) = parse_answer(&env.topo.connect(addr).expect("connect"));
        if who == "e3" {
            streak = 0;
        } else {
            if streak == 0 {
                streak_start = Instant::now();
            }
            streak += 1;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "e3 still answering after 5 s\n{}",
            env.proxy.log_tail(30)
        );
    }
    let took = streak_start.duration_since(changed);
    eprintln!("{mode}: endpoint removal effective after {took:?}");
    assert!(took < Duration::from_secs(1), "removal took {took:?}");

    // D-Bus: mode, counts, sync duration; Sync() completes.
    let p = env.dbus().await;
    let want_mode = if mode.is_empty() { "userspace" } else { mode };
    assert_eq!(p.get_property::<String>("Mode").await.unwrap(), want_mode);
    // web + the API server's own `kubernetes` service.
    assert_eq!(p.get_property::<u32>("ServiceCount").await.unwrap(), 2);
    assert!(p.get_property::<u32>("RuleCount").await.unwrap() > 0);
    let _: () = p.call("Sync", &()).await.expect("Sync()");
    let d = p.get_property::<f64>("LastSyncDuration").await.unwrap();
    assert!(d > 0.0 && d < 5.0, "LastSyncDuration {d}");

    // A service with no endpoints: refused, not a timeout.
    let empty = env.service("empty", json!({"type": "ClusterIP"})).await;
    let eaddr = cluster_addr(&empty);
    // Wait until the proxy knows the service (before that the address is unknown to it).
    env.wait("the empty service to be programmed", 10, |t| {
        let started = Instant::now();
        match t.connect(eaddr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(started.elapsed()),
            _ => None,
        }
    });
    let started = Instant::now();
    let err = env.topo.connect(eaddr).expect_err("no endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "rejected at once"
    );
}

/// NodePort from the client netns at the node's address.
async fn node_port_test(mode: &str) {
    let mut env = Env::start(mode).await;
    let svc = env.service("np", json!({"type": "NodePort"})).await;
    env.slice("np", &[0, 1, 2]).await;
    let np = node_port(&svc);
    let addr: SocketAddr = format!("{NODE_CLIENT_IP}:{np}").parse().unwrap();
    let answer = env.wait("the NodePort to answer", 30, |t| t.connect(addr).ok());
    let (_, peer) = parse_answer(&answer);
    if mode == "userspace" {
        // The userspace proxy opens its own connection from the node.
        assert_eq!(peer, NODE_BRIDGE_IP, "{answer}");
        return;
    }
    // externalTrafficPolicy Cluster: masqueraded to the node's address on the pod bridge.
    assert_eq!(peer, NODE_BRIDGE_IP, "{answer}");

    // Local: the endpoint sees the client's own address.
    let api: Api<Service> = Api::namespaced(env.client.clone(), "default");
    api.patch(
        "np",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"externalTrafficPolicy": "Local"}})),
    )
    .await
    .expect("patch externalTrafficPolicy");
    env.wait("the client address to be preserved", 10, |t| {
        let a = t.connect(addr).ok()?;
        (parse_answer(&a).1 == CLIENT_IP).then_some(())
    });
    for _ in 0..10 {
        let a = env.topo.connect(addr).expect("connect");
        assert_eq!(parse_answer(&a).1, CLIENT_IP, "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_cluster_ip() {
    cluster_ip("nftables").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_node_port_and_local_policy() {
    node_port_test("nftables").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_cluster_ip() {
    cluster_ip("userspace").await;
}

/// No usable nft (a missing binary stands in for a kernel without nftables): the proxy says so
/// and serves in userspace mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_userspace_without_nftables() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("proxy.toml");
    std::fs::write(&cfg, "nft-path = \"/nonexistent/nft\"\n").unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let mut env = Env::start_with("", &["--config", &cfg]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.proxy.log().contains("proxy mode") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = env.proxy.log();
    assert!(log.contains("falling back to the userspace proxy"), "{log}");
    let svc = env.service("web", json!({"type": "ClusterIP"})).await;
    env.slice("web", &[0]).await;
    let addr = cluster_addr(&svc);
    let a = env.wait("the ClusterIP to answer", 30, |t| t.connect(addr).ok());
    assert_eq!(parse_answer(&a).0, "e1");
    let p = env.dbus().await;
    assert_eq!(p.get_property::<String>("Mode").await.unwrap(), "userspace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_node_port() {
    node_port_test("userspace").await;
}
