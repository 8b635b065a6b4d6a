//! Test topology: network namespaces made by the test, deleted on drop.
//!
//! ```text
//!   client netns (10.77.2.2) ──veth── node netns ──br0 (10.77.1.1/24)── endpoint netns e1..e3
//!                        10.77.2.1 ─┘   kelson-proxy runs here              10.77.1.11..13:8080
//! ```
//!
//! - The node netns routes between the client and the endpoints (ip_forward=1); kelson-proxy
//!   runs inside it (`ip netns exec`), so its nftables table and dummy interface live and die
//!   with the namespace.
//! - The API server listens on 127.0.0.1 of the root netns. A relay listener bound on the
//!   *same* port on 127.0.0.1 inside the node netns (a socket keeps the netns it was created
//!   in, so one thread enters the netns just to create it) forwards to the root netns, so the
//!   admin kubeconfig works unchanged, TLS name and all.
//! - Endpoint servers and client connections are plain std sockets created by a thread that
//!   entered the respective netns; each server answers `<name> <peer-ip>` and closes.
//! - Names carry the test process id and a counter, so tests run in parallel.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kelson_testsupport::{ChildGuard, ControlPlane, DbusDaemon};
use kube::api::{Api, PostParams};
use serde_json::json;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub const NODE: &str = "node1";
pub const NODE_BRIDGE_IP: &str = "10.77.1.1";
pub const NODE_CLIENT_IP: &str = "10.77.2.1";
pub const CLIENT_IP: &str = "10.77.2.2";
/// The endpoint servers' port (TCP and UDP).
pub const PORT: u16 = 8080;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a fresh thread inside netns `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// The addresses of one IP family in the topology (the picture above is [`V4`]; [`V6`] is the
/// same with `fd77:1::/64` on the bridge and `fd77:2::/64` to the client).
pub struct Family {
    /// In the namespace names, so topologies of both families can exist at once.
    tag: &'static str,
    /// `ip -4` / `ip -6`.
    ip: &'static str,
    /// Prefix length of both subnets.
    len: u8,
    /// The node's address on the bridge (the endpoints' gateway).
    pub bridge: &'static str,
    /// Endpoint i is this followed by `i + 1`.
    endpoint_prefix: &'static str,
    /// The node's address towards the client (the client's gateway).
    pub node_client: &'static str,
    pub client: &'static str,
    /// The node's default route: to a gateway that does not exist.
    gateway: &'static str,
    /// The sysctl that makes the node route.
    forwarding: &'static str,
    /// `ip addr add` flags.
    addr_flags: &'static [&'static str],
    /// The wildcard address the endpoint servers bind.
    any: &'static str,
}

pub const V4: Family = Family {
    tag: "",
    ip: "-4",
    len: 24,
    bridge: NODE_BRIDGE_IP,
    endpoint_prefix: "10.77.1.1",
    node_client: NODE_CLIENT_IP,
    client: CLIENT_IP,
    gateway: "10.77.1.254",
    forwarding: "net.ipv4.ip_forward=1",
    addr_flags: &[],
    any: "0.0.0.0",
};

pub const V6: Family = Family {
    tag: "6-",
    ip: "-6",
    len: 64,
    bridge: "fd77:1::1",
    endpoint_prefix: "fd77:1::1",
    node_client: "fd77:2::1",
    client: "fd77:2::2",
    gateway: "fd77:1::fe",
    forwarding: "net.ipv6.conf.all.forwarding=1",
    // nodad: addresses usable at once, not after duplicate address detection.
    addr_flags: &["nodad"],
    any: "::",
};

impl Family {
    /// Endpoint `i`'s address (0-based: `e1` is 0).
    pub fn endpoint_ip(&self, i: usize) -> String {
        format!("{}{}", self.endpoint_prefix, i + 1)
    }
}

/// The namespaces and links; dropping deletes every namespace (and with them veths, the
/// bridge, nftables tables and the dummy interface).
pub struct Topo {
    pub node: String,
    pub client: String,
    pub endpoints: Vec<String>,
    family: &'static Family,
    stop: Arc<AtomicBool>,
}

impl Drop for Topo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for ns in self.endpoints.iter().chain([&self.client, &self.node]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Topo {
    /// The IPv4 topology.
    pub fn new() -> Topo {
        Topo::with(&V4)
    }

    /// The topology in `family`.
    pub fn with(family: &'static Family) -> Topo {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests create network namespaces and need root"
        );
        let id = format!(
            "kpx{}{}-{}",
            family.tag,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let t = Topo {
            node: format!("{id}-node"),
            client: format!("{id}-c"),
            endpoints: (1..=3).map(|i| format!("{id}-e{i}")).collect(),
            family,
            stop: Arc::new(AtomicBool::new(false)),
        };
        let f = family;
        let addr = |ns: &str, ip: &str, dev: &str| {
            let cidr = format!("{ip}/{}", f.len);
            let mut args = vec!["ip", "-n", ns, "addr", "add", &cidr, "dev", dev];
            args.extend(f.addr_flags);
            sh(&args);
        };
        let default_via = |ns: &str, gw: &str| {
            sh(&["ip", "-n", ns, f.ip, "route", "add", "default", "via", gw]);
        };
        for ns in t.endpoints.iter().chain([&t.client, &t.node]) {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let n = t.node.as_str();
        sh(&["ip", "-n", n, "link", "add", "br0", "type", "bridge"]);
        addr(n, f.bridge, "br0");
        sh(&["ip", "-n", n, "link", "set", "br0", "up"]);
        for (i, e) in t.endpoints.iter().enumerate() {
            let ve = format!("ve{}", i + 1);
            sh(&[
                "ip", "-n", n, "link", "add", &ve, "type", "veth", "peer", "name", "eth0", "netns",
                e,
            ]);
            sh(&["ip", "-n", n, "link", "set", &ve, "master", "br0", "up"]);
            addr(e, &f.endpoint_ip(i), "eth0");
            sh(&["ip", "-n", e, "link", "set", "eth0", "up"]);
            default_via(e, f.bridge);
        }
        let c = t.client.as_str();
        sh(&[
            "ip", "-n", n, "link", "add", "vc", "type", "veth", "peer", "name", "eth0", "netns", c,
        ]);
        addr(n, f.node_client, "vc");
        sh(&["ip", "-n", n, "link", "set", "vc", "up"]);
        addr(c, f.client, "eth0");
        sh(&["ip", "-n", c, "link", "set", "eth0", "up"]);
        default_via(c, f.node_client);
        // A node has a default route (here to a gateway that does not exist): without one,
        // packets to a ClusterIP that is not DNATed would die in routing before the filter
        // hooks that reject them.
        default_via(n, f.gateway);
        sh(&["ip", "netns", "exec", n, "sysctl", "-qw", f.forwarding]);
        t
    }

    /// Endpoint `i`'s IPv4 address.
    pub fn endpoint_ip(i: usize) -> String {
        V4.endpoint_ip(i)
    }

    /// Starts the echo servers: endpoint i answers `e<i+1> <peer-ip>`, on TCP and UDP
    /// [`PORT`], and closes.
    pub fn start_servers(&self) {
        for (i, ns) in self.endpoints.iter().enumerate() {
            let any = self.family.any;
            let u: UdpSocket =
                in_netns(ns, move || UdpSocket::bind((any, PORT)).expect("bind udp"));
            u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let stop = self.stop.clone();
            let name = format!("e{}", i + 1);
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(format!("{name} {}\n", peer.ip()).as_bytes(), peer);
                    }
                }
            });
        }
        for (i, ns) in self.endpoints.iter().enumerate() {
            let any = self.family.any;
            let l: TcpListener = in_netns(ns, move || {
                TcpListener::bind((any, PORT)).expect("bind tcp")
            });
            l.set_nonblocking(true).unwrap();
            let stop = self.stop.clone();
            let name = format!("e{}", i + 1);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, peer)) => {
                            let _ = s.write_all(format!("{name} {}\n", peer.ip()).as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
    }

    /// Relays 127.0.0.1:`port` in the node netns to 127.0.0.1:`port` in the root netns.
    pub fn relay_api(&self, port: u16) {
        let l: TcpListener = in_netns(&self.node, move || {
            TcpListener::bind(("127.0.0.1", port)).expect("relay bind")
        });
        l.set_nonblocking(true).unwrap();
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let Ok(up) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let (mut d2, mut u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let (mut d, mut u) = (down, up);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut d, &mut u);
                    let _ = u.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut d2);
                    let _ = d2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
    }

    /// One connection from the client netns; the server's answer.
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<String> {
        in_netns(&self.client, move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out.trim().to_string())
        })
    }
}

impl Topo {
    /// Polls until `addr` answers from the client netns (at most `secs`); the answer.
    pub fn wait_answer(&self, addr: SocketAddr, secs: u64) -> String {
        let start = Instant::now();
        loop {
            match self.connect(addr) {
                Ok(a) => return a,
                Err(e) if start.elapsed() > Duration::from_secs(secs) => {
                    panic!("{addr} did not answer within {secs} s: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Which endpoints (`e1`..`e3`) answer over `n` connections.
    pub fn answers(&self, addr: SocketAddr, n: usize) -> std::collections::BTreeSet<String> {
        (0..n)
            .map(|_| {
                let a = self.connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
                parse_answer(&a).0
            })
            .collect()
    }

    /// One UDP exchange from the client netns (a fresh socket, so a new conntrack flow).
    pub fn udp(&self, addr: SocketAddr) -> std::io::Result<String> {
        in_netns(&self.client, move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.send_to(b"who", addr)?;
            let mut buf = [0u8; 512];
            let (n, _) = s.recv_from(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        })
    }
}

/// Control plane + topology + kelson-proxy in the node netns.
pub struct Env {
    pub proxy: ChildGuard,
    pub bus: DbusDaemon,
    pub topo: Topo,
    pub cp: ControlPlane,
    pub client: kube::Client,
}

impl Env {
    pub async fn start(mode: &str) -> Env {
        Self::start_with(mode, &[]).await
    }

    /// `mode` "" lets the proxy choose; `extra` flags are appended.
    pub async fn start_with(mode: &str, extra: &[&str]) -> Env {
        let bus = DbusDaemon::start().expect("dbus-daemon");
        let cp = ControlPlane::start().await.expect("control plane starts");
        let client = cp.client().await.expect("client");
        let topo = Topo::new();
        topo.start_servers();
        let port: u16 = cp
            .server_url()
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("API server port");
        topo.relay_api(port);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &topo.node])
            .arg(env!("CARGO_BIN_EXE_kelson-proxy"))
            .arg("--kubeconfig")
            .arg(cp.kubeconfig_path())
            .args(["--dbus-address", bus.address()])
            .args(if mode.is_empty() {
                vec![]
            } else {
                vec!["--proxy-mode", mode]
            })
            .args(extra)
            .args([
                "--hostname-override",
                NODE,
                "--cluster-cidr",
                "10.77.1.0/24",
                "--min-sync-period",
                "50ms",
                "--log-level",
                "info,kelson_proxy=debug",
            ]);
        let proxy = ChildGuard::spawn("kelson-proxy", cmd, &cp.dir().join("proxy.log"))
            .expect("proxy starts");
        Env {
            proxy,
            bus,
            topo,
            cp,
            client,
        }
    }

    /// Creates a Service; returns it as the API server stored it (ClusterIP, nodePort).
    pub async fn service(&self, name: &str, spec: serde_json::Value) -> Service {
        let api: Api<Service> = Api::namespaced(self.client.clone(), "default");
        let mut spec = spec;
        if spec.get("ports").is_none() {
            spec["ports"] =
                json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]);
        }
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }))
        .unwrap();
        api.create(&PostParams::default(), &svc)
            .await
            .expect("create service")
    }

    /// Creates or replaces the EndpointSlice of `svc` with the given endpoint indexes.
    pub async fn slice(&self, svc: &str, endpoints: &[usize]) {
        self.slice_proto(svc, endpoints, "TCP").await
    }

    /// [`Env::slice`] with port `http` 8080 of `protocol`.
    pub async fn slice_proto(&self, svc: &str, endpoints: &[usize], protocol: &str) {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), "default");
        let eps: Vec<_> = endpoints
            .iter()
            .map(|i| {
                json!({"addresses": [Topo::endpoint_ip(*i)], "conditions": {"ready": true},
                       "nodeName": NODE})
            })
            .collect();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{svc}-x"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": protocol}],
            "endpoints": eps,
        });
        let mut slice: EndpointSlice = serde_json::from_value(slice).unwrap();
        let name = format!("{svc}-x");
        match api.get_opt(&name).await.expect("get slice") {
            Some(cur) => {
                slice.metadata.resource_version = cur.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &slice)
                    .await
                    .expect("replace slice");
            }
            None => {
                api.create(&PostParams::default(), &slice)
                    .await
                    .expect("create slice");
            }
        }
    }

    /// A proxy for `io.kelson.Proxy1` on the test bus.
    pub async fn dbus(&self) -> zbus::Proxy<'static> {
        let conn = zbus::connection::Builder::address(self.bus.address())
            .unwrap()
            .build()
            .await
            .expect("connect to the test bus");
        zbus::Proxy::new(
            &conn,
            "io.kelson.Proxy1",
            "/io/kelson/Proxy1",
            "io.kelson.Proxy1",
        )
        .await
        .expect("D-Bus proxy")
    }

    /// Polls `f` (every 50 ms, at most `secs`) until it returns Some.
    pub fn wait<T>(&mut self, what: &str, secs: u64, mut f: impl FnMut(&Topo) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f(&self.topo) {
                return v;
            }
            if start.elapsed() > Duration::from_secs(secs) {
                panic!(
                    "timed out after {secs} s waiting for {what}\n--- proxy log ---\n{}",
                    self.proxy.log_tail(40)
                );
            }
            assert!(
                self.proxy.is_running(),
                "kelson-proxy exited\n{}",
                self.proxy.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Which endpoint answered (`e1`..`e3`) and the peer address it saw.
pub fn parse_answer(s: &str) -> (String, String) {
    let mut it = s.split_whitespace();
    (
        it.next().unwrap_or_default().to_string(),
        it.next().unwrap_or_default().to_string(),
    )
}
