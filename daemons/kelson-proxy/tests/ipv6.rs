//! IPv6 traffic through the proxy, both modes: a dual-stack ClusterIP service whose endpoints
//! are IPv6 is reached over `ip6` from a client namespace, every endpoint answers, a removed
//! endpoint stops answering after an incremental sync, a service without endpoints refuses at
//! once, and (nftables) a NodePort answers on the node's IPv6 address.
//!
//! The proxier is driven directly with the desired state (the API server allocates IPv4
//! ClusterIPs only, so an IPv6 ClusterIP cannot come from it yet); the data path is the real
//! one: nftables rules in the node namespace, or the userspace proxy's listeners there.
//!
//! ```text
//!   client (fd77:2::2) ──veth── node ──br0 (fd77:1::1/64)── e1..e3 (fd77:1::11..13, port 8080)
//!                  fd77:2::1 ─┘
//! ```
//! (tests/common's topology in its IPv6 family). Needs root.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Topo, PORT, V6};
use kelson_proxy::model::{Endpoint, Protocol, ServiceInfo, ServicePortName, State};
use kelson_proxy::nft::Nft;
use kelson_proxy::proxier::NftProxier;
use kelson_proxy::userspace::Userspace;

/// The IPv6 topology with its endpoint servers running.
fn topo6() -> Topo {
    let t = Topo::with(&V6);
    t.start_servers();
    t
}

fn spn(name: &str) -> ServicePortName {
    ServicePortName {
        namespace: "default".into(),
        name: name.into(),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
    }
}

const CIP: &str = "fd77:96::10";
const EMPTY_CIP: &str = "fd77:96::11";

/// A dual-stack service (IPv4 + IPv6 ClusterIP) with IPv6 endpoints `eps`, and an IPv6 one
/// without endpoints.
fn state(eps: &[usize], node_port: Option<u16>) -> State {
    let endpoints = eps
        .iter()
        .map(|i| Endpoint {
            ip: V6.endpoint_ip(*i).parse().unwrap(),
            port: PORT,
            ready: true,
            serving: true,
            terminating: false,
            local: false,
        })
        .collect();
    let web = ServiceInfo {
        cluster_ips: vec!["10.96.0.10".parse().unwrap(), CIP.parse().unwrap()],
        port: 80,
        node_port,
        endpoints,
        ..Default::default()
    };
    let empty = ServiceInfo {
        cluster_ips: vec![EMPTY_CIP.parse().unwrap()],
        port: 80,
        ..Default::default()
    };
    [(spn("web"), web), (spn("empty"), empty)].into()
}

fn all_three() -> BTreeSet<String> {
    ["e1", "e2", "e3"].map(String::from).into()
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

fn assert_refused_at_once(t: &Topo, addr: SocketAddr) {
    let started = Instant::now();
    let err = t.connect(addr).expect_err("a service without endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once, took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn nftables_ipv6_cluster_ip_and_node_port() {
    let t = topo6();
    let mut p = NftProxier::new(
        Nft::in_netns(&t.node),
        &["10.244.0.0/16".into(), "fd77:1::/64".into()],
        false,
        &[],
    );
    p.sync(&state(&[0, 1, 2], Some(30086)), true)
        .await
        .expect("full sync");
    let addr = sock(CIP, 80);
    let first = t.wait_answer(addr, 10);
    // The client is outside the cluster CIDRs: masqueraded to the node's bridge address.
    assert!(first.ends_with(" fd77:1::1"), "{first}");
    assert_eq!(t.answers(addr, 40), all_three(), "all endpoints over IPv6");

    // NodePort on the node's IPv6 address (externalTrafficPolicy Cluster).
    let np = sock("fd77:2::1", 30086);
    t.wait_answer(np, 5);
    assert_eq!(t.answers(np, 40), all_three(), "NodePort over IPv6");

    // Removing an endpoint is an incremental sync (over netlink) and takes effect at once.
    let s = p
        .sync(&state(&[0, 1], Some(30086)), false)
        .await
        .expect("incremental sync");
    assert!(s.netlink >= 1 && !s.full, "{s:?}");
    let seen = t.answers(addr, 30);
    assert!(
        !seen.contains("e3"),
        "e3 removed, still answering: {seen:?}"
    );

    assert_refused_at_once(&t, sock(EMPTY_CIP, 80));
}

/// The userspace proxier on a thread of its own inside the node namespace (its listeners and
/// `ip` commands belong there), driven over a channel.
struct UserspaceNode {
    tx: tokio::sync::mpsc::UnboundedSender<(State, std::sync::mpsc::Sender<Result<(), String>>)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UserspaceNode {
    fn start(ns: &str) -> UserspaceNode {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
            State,
            std::sync::mpsc::Sender<Result<(), String>>,
        )>();
        let path = format!("/run/netns/{ns}");
        let thread = std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut u = Userspace::new("kelson-proxy0", &[])
                    .await
                    .expect("userspace");
                while let Some((st, done)) = rx.recv().await {
                    let _ = done.send(u.sync(&st).await.map_err(|e| e.to_string()));
                }
                u.shutdown().await;
            });
        });
        UserspaceNode {
            tx,
            thread: Some(thread),
        }
    }

    fn sync(&self, st: State) {
        let (done, wait) = std::sync::mpsc::channel();
        self.tx.send((st, done)).expect("userspace thread alive");
        wait.recv_timeout(Duration::from_secs(10))
            .expect("sync answered")
            .expect("userspace sync");
    }
}

impl Drop for UserspaceNode {
    fn drop(&mut self) {
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn userspace_ipv6_cluster_ip() {
    let t = topo6();
    let u = UserspaceNode::start(&t.node);
    u.sync(state(&[0, 1, 2], None));
    let addr = sock(CIP, 80);
    let first = t.wait_answer(addr, 10);
    // The userspace proxy opens its own connection from the node.
    assert!(first.ends_with(" fd77:1::1"), "{first}");
    assert_eq!(t.answers(addr, 30), all_three(), "all endpoints over IPv6");
    u.sync(state(&[0, 1], None));
    let seen = t.answers(addr, 30);
    assert!(
        !seen.contains("e3"),
        "e3 removed, still answering: {seen:?}"
    );
    assert_refused_at_once(&t, sock(EMPTY_CIP, 80));
    drop(u);
}
