//! kelson-proxy end to end, in both modes: a client netns reaches a ClusterIP service with 3
//! endpoints (all reached; an endpoint removed from the slice stops being used within 1 s; a
//! service without endpoints refuses at once), and a NodePort at node-ip:nodePort
//! (externalTrafficPolicy Cluster masquerades, Local keeps the client's address); a UDP
//! ClusterIP (both modes), a LoadBalancer ingress IP, and sessionAffinity ClientIP sticking to
//! one endpoint (nftables). In nftables mode the daemon's incremental syncs must all go over
//! netlink (no fallback to `nft -f` in its log).
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
    if mode == "nftables" {
        // The daemon's incremental syncs went over netlink, none fell back to `nft -f`.
        let raw = std::fs::read_to_string(env.cp.dir().join("proxy.log")).unwrap_or_default();
        // Without the terminal colours around field names and values.
        let mut log = String::with_capacity(raw.len());
        let mut rest = raw.as_str();
        while let Some(i) = rest.find("\x1b[") {
            log.push_str(&rest[..i]);
            rest = rest[i..].find('m').map_or("", |j| &rest[i + j + 1..]);
        }
        log.push_str(rest);
        assert!(
            !log.contains("incremental sync through nft")
                && !log.contains("incremental netlink sync failed")
                && log.contains("netlink=1"),
            "incremental syncs over netlink, none through nft:\n{}",
            env.proxy.log_tail(40)
        );
    }

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

const LB_IP: &str = "10.77.3.10";

fn all_three() -> BTreeSet<String> {
    ["e1", "e2", "e3"].map(String::from).into()
}

/// UDP ClusterIP: each fresh client socket is a new flow; all 3 endpoints answer.
async fn udp_cluster_ip(mode: &str) {
    let mut env = Env::start(mode).await;
    let svc = env
        .service(
            "dns",
            json!({"type": "ClusterIP", "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "UDP"}]}),
        )
        .await;
    env.slice_proto("dns", &[0, 1, 2], "UDP").await;
    let addr = cluster_addr(&svc);
    env.wait("the UDP ClusterIP to answer", 30, |t| t.udp(addr).ok());
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        seen.insert(parse_answer(&env.topo.udp(addr).expect("udp exchange")).0);
    }
    assert_eq!(
        seen,
        all_three(),
        "all 3 endpoints reached over 60 UDP flows"
    );
    // Only the UDP port is a service: TCP to the same address and port is not proxied.
    assert!(
        env.topo.connect(addr).is_err(),
        "TCP {addr} must not answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_udp_cluster_ip() {
    udp_cluster_ip("nftables").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_udp_cluster_ip() {
    udp_cluster_ip("userspace").await;
}

/// A LoadBalancer's ingress IP (as the cloud controller manager sets it in the status) is
/// served by the proxy: reached from the client netns, balanced, masqueraded (policy Cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_load_balancer_ingress_ip() {
    let mut env = Env::start("nftables").await;
    env.service("lb", json!({"type": "LoadBalancer"})).await;
    env.slice("lb", &[0, 1, 2]).await;
    let api: Api<Service> = Api::namespaced(env.client.clone(), "default");
    api.patch_status(
        "lb",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}})),
    )
    .await
    .expect("set the ingress IP");
    let addr: SocketAddr = format!("{LB_IP}:80").parse().unwrap();
    env.wait("the LoadBalancer IP to answer", 30, |t| {
        t.connect(addr).ok()
    });
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let a = env.topo.connect(addr).expect("connect to the LB IP");
        let (who, peer) = parse_answer(&a);
        assert_eq!(peer, NODE_BRIDGE_IP, "masqueraded: {a}");
        seen.insert(who);
    }
    assert_eq!(seen, all_three(), "all 3 endpoints behind the LB IP");
}

/// sessionAffinity ClientIP: every connection of the client goes to the endpoint its first one
/// reached; with affinity switched off the same client is spread again (so the stickiness
/// was the affinity, not a single programmed endpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_session_affinity_client_ip() {
    let mut env = Env::start("nftables").await;
    let svc = env
        .service(
            "sticky",
            json!({"type": "ClusterIP", "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
        )
        .await;
    env.slice("sticky", &[0, 1, 2]).await;
    let addr = cluster_addr(&svc);
    let first = env.wait("the ClusterIP to answer", 30, |t| t.connect(addr).ok());
    let (first, _) = parse_answer(&first);
    for _ in 0..30 {
        let (who, _) = parse_answer(&env.topo.connect(addr).expect("connect"));
        assert_eq!(who, first, "affinity keeps the client on {first}");
    }
    let api: Api<Service> = Api::namespaced(env.client.clone(), "default");
    api.patch(
        "sticky",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"sessionAffinity": "None", "sessionAffinityConfig": null}})),
    )
    .await
    .expect("switch affinity off");
    env.wait("connections to spread without affinity", 20, |t| {
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            seen.insert(parse_answer(&t.connect(addr).ok()?).0);
        }
        (seen.len() > 1).then_some(())
    });
}
