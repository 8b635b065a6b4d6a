//! The pure part of rendering: a machine's roles and its daemons' TOML tables.
//!
//! Nothing here touches the disk or depends on keys: every path is where the file lives on the
//! machine (`/etc/kelson/...`, `/var/lib/kelson/...`), so the result is a function of the
//! cluster description alone. `nix/lib.nix` implements the same function in pure Nix (the
//! NixOS module writes its TOML from that), and `tests/tests/nix_eval.rs` asserts that both
//! produce the same tables for every machine of `examples/cluster/three-zones.toml` — change
//! one, change the other.
//!
//! Wiring choices:
//! - kv members listen on their own address and on loopback, advertise their own address, and
//!   start from the full `initial-cluster` of all control-plane machines (file order) over
//!   mTLS peer URLs; the cluster token is the cluster name (deterministic, so re-rendering
//!   and Nix agree).
//! - Each API server talks to every kv member (`etcd-servers`), so losing the local member
//!   does not take its API server down.
//! - Control-plane clients (scheduler, controller managers, the VIP-holding speaker) use the
//!   API server *on their machine*: the VIP holder must step down when its own API server is
//!   unhealthy (docs/cloud-controller-manager.md), and the VIP must not be needed to elect the
//!   VIP's holder at bootstrap. Node agents (kubelet, proxy, dns, workers' speakers) and the
//!   admin use the VIP.
//! - kelson-dns serves pods on the machine's address (pods cannot reach the node's loopback),
//!   which is therefore the kubelet's cluster DNS.

use std::net::{IpAddr, SocketAddr};

use toml::{Table, Value};

use super::spec::{ClusterSpec, Machine};

/// Configuration directory on a machine.
pub const CONFIG_DIR: &str = "/etc/kelson";
/// PKI directory on a machine.
pub const PKI_DIR: &str = "/etc/kelson/pki";
/// State directory on a machine.
pub const DATA_DIR: &str = "/var/lib/kelson";

/// A machine's roles, in this order: `kv`, `control-plane` (API server, scheduler, controller
/// managers), `node` (kubelet, proxy, dns, speaker). Every machine is a node.
pub fn roles(control_plane: bool) -> Vec<&'static str> {
    if control_plane {
        vec!["kv", "control-plane", "node"]
    } else {
        vec!["node"]
    }
}

/// Which daemon configurations a role brings (file base names under /etc/kelson).
pub fn role_configs(role: &str) -> &'static [&'static str] {
    match role {
        "kv" => &["kv"],
        "control-plane" => &[
            "apiserver",
            "scheduler",
            "controller-manager",
            "cloud-controller-manager",
        ],
        "node" => &["kubelet", "proxy", "dns", "speaker"],
        _ => &[],
    }
}

/// `https://host:port`, with brackets for IPv6.
pub fn url(addr: &str, port: u16) -> String {
    match addr.parse::<IpAddr>() {
        Ok(ip) => format!("https://{}", SocketAddr::new(ip, port)),
        Err(_) => format!("https://{addr}:{port}"),
    }
}

/// `name=https://addr:peer,...` over all control-plane machines in file order.
pub fn initial_cluster(spec: &ClusterSpec) -> String {
    spec.control_plane
        .iter()
        .map(|m| format!("{}={}", m.name, url(&m.address, spec.kv_peer_port)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every kv member's client URL, comma-separated (the API server's `etcd-servers`).
pub fn etcd_servers(spec: &ClusterSpec) -> String {
    spec.control_plane
        .iter()
        .map(|m| url(&m.address, spec.kv_client_port))
        .collect::<Vec<_>>()
        .join(",")
}

/// The API server URL a machine's clients use (see the module doc).
pub fn apiserver_url(spec: &ClusterSpec, machine: &Machine, local: bool) -> String {
    if local {
        url(&machine.address, spec.apiserver_port)
    } else {
        url(&spec.vip.address, spec.apiserver_port)
    }
}

fn s(v: impl AsRef<str>) -> Value {
    Value::String(v.as_ref().to_string())
}
fn pki(file: &str) -> Value {
    s(format!("{PKI_DIR}/{file}"))
}
fn cfg(file: &str) -> Value {
    s(format!("{CONFIG_DIR}/{file}"))
}
fn list<I: IntoIterator<Item = Value>>(items: I) -> Value {
    Value::Array(items.into_iter().collect())
}
fn table(pairs: Vec<(&str, Value)>) -> Table {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The daemon tables of one machine, in role order (`kv`, `apiserver`, ... `speaker`).
pub fn machine_configs(
    spec: &ClusterSpec,
    m: &Machine,
    control_plane: bool,
) -> Vec<(&'static str, Table)> {
    roles(control_plane)
        .into_iter()
        .flat_map(|r| role_configs(r).iter().copied())
        .map(|name| (name, daemon_config(spec, m, name)))
        .collect()
}

fn daemon_config(spec: &ClusterSpec, m: &Machine, daemon: &str) -> Table {
    let interface = m
        .interface
        .clone()
        .unwrap_or_else(|| spec.vip.interface.clone());
    match daemon {
        "kv" => {
            let client = url(&m.address, spec.kv_client_port);
            let peer = url(&m.address, spec.kv_peer_port);
            table(vec![
                ("name", s(&m.name)),
                ("data-dir", s(format!("{DATA_DIR}/kv"))),
                (
                    "listen-client-urls",
                    s(format!(
                        "{client},{}",
                        url("127.0.0.1", spec.kv_client_port)
                    )),
                ),
                ("advertise-client-urls", s(&client)),
                ("listen-peer-urls", s(&peer)),
                ("initial-advertise-peer-urls", s(&peer)),
                ("initial-cluster", s(initial_cluster(spec))),
                // etcd semantics: ignored once the data dir holds a member.
                ("initial-cluster-state", s("new")),
                ("initial-cluster-token", s(&spec.name)),
                ("cert-file", pki("kv-server.crt")),
                ("key-file", pki("kv-server.key")),
                ("trusted-ca-file", pki("store-ca.crt")),
                ("client-cert-auth", Value::Boolean(true)),
                ("peer-cert-file", pki("kv-peer.crt")),
                ("peer-key-file", pki("kv-peer.key")),
                ("peer-trusted-ca-file", pki("store-ca.crt")),
                ("peer-client-cert-auth", Value::Boolean(true)),
            ])
        }
        "apiserver" => table(vec![
            ("secure-port", Value::Integer(spec.apiserver_port.into())),
            // All addresses: the machine's own and the VIP when this machine holds it.
            ("bind-address", s("0.0.0.0")),
            ("etcd-servers", s(etcd_servers(spec))),
            ("etcd-cafile", pki("store-ca.crt")),
            ("etcd-certfile", pki("apiserver-etcd-client.crt")),
            ("etcd-keyfile", pki("apiserver-etcd-client.key")),
            ("tls-cert-file", pki("apiserver.crt")),
            ("tls-private-key-file", pki("apiserver.key")),
            ("client-ca-file", pki("ca.crt")),
            ("service-cluster-ip-range", s(&spec.service_cidr)),
            ("authorization-mode", s("Node,RBAC")),
            ("anonymous-auth", Value::Boolean(false)),
            ("service-account-signing-key-file", pki("sa.key")),
            ("service-account-key-file", list([pki("sa.key")])),
            (
                "service-account-issuer",
                s(format!("https://kubernetes.default.svc.{}", spec.domain)),
            ),
            ("enable-bootstrap-token-auth", Value::Boolean(true)),
            ("audit-log-path", s("/var/log/kelson/audit.log")),
            // CIS 1.2.17-19, as `kelsonctl init`: 30 days, 10 files of 100 MB.
            ("audit-log-maxage", Value::Integer(30)),
            ("audit-log-maxsize", Value::Integer(100)),
            ("audit-log-maxbackup", Value::Integer(10)),
            ("audit-policy-file", pki("audit-policy.yaml")),
            ("encryption-provider-config", pki("encryption-config.yaml")),
            (
                "kubelet-client-certificate",
                pki("apiserver-kubelet-client.crt"),
            ),
            ("kubelet-client-key", pki("apiserver-kubelet-client.key")),
            ("kubelet-certificate-authority", pki("ca.crt")),
        ]),
        "scheduler" => table(vec![
            ("kubeconfig", cfg("scheduler.kubeconfig")),
            ("leader-elect", Value::Boolean(true)),
        ]),
        "controller-manager" => table(vec![
            ("kubeconfig", cfg("controller-manager.kubeconfig")),
            ("leader-elect", Value::Boolean(true)),
            ("root-ca-file", pki("ca.crt")),
            ("allocate-node-cidrs", Value::Boolean(true)),
            ("cluster-cidr", s(&spec.pod_cidr)),
            (
                "node-cidr-mask-size",
                Value::Integer(spec.node_cidr_mask.into()),
            ),
        ]),
        "cloud-controller-manager" => {
            let nodes = spec
                .machines()
                .map(|(n, _)| {
                    Value::Table(table(vec![
                        ("name", s(&n.name)),
                        ("zone", s(&n.zone)),
                        ("region", s(spec.region())),
                        (
                            "addresses",
                            list([Value::Table(table(vec![
                                ("type", s("InternalIP")),
                                ("address", s(&n.address)),
                            ]))]),
                        ),
                    ]))
                })
                .collect::<Vec<_>>();
            let pools = spec
                .lb_pools
                .iter()
                .map(|p| {
                    let mut t = table(vec![
                        ("name", s(&p.name)),
                        ("ranges", list(p.ranges.iter().map(s))),
                    ]);
                    if let Some(c) = &p.cidr {
                        t.insert("cidr".into(), s(c));
                    }
                    if let Some(z) = &p.zone {
                        t.insert("zone".into(), s(z));
                    }
                    Value::Table(t)
                })
                .collect::<Vec<_>>();
            table(vec![
                ("mode", s("controller")),
                ("kubeconfig", cfg("cloud-controller-manager.kubeconfig")),
                ("leader-elect", Value::Boolean(true)),
                ("nodes", Value::Array(nodes)),
                ("pools", Value::Array(pools)),
            ])
        }
        "kubelet" => table(vec![
            ("kubeconfig", cfg("kubelet.kubeconfig")),
            ("hostname-override", s(&m.name)),
            ("root-dir", s(format!("{DATA_DIR}/kubelet"))),
            ("client-ca-file", pki("ca.crt")),
            ("tls-cert-file", pki("kubelet-serving.crt")),
            ("tls-private-key-file", pki("kubelet-serving.key")),
            ("node-ip", s(&m.address)),
            ("zone", s(&m.zone)),
            ("region", s(spec.region())),
            (
                "node-labels",
                list(m.labels.iter().map(|(k, v)| s(format!("{k}={v}")))),
            ),
            ("register-with-taints", list(m.taints.iter().map(s))),
            ("cluster-dns", list([s(&m.address)])),
            ("cluster-domain", s(&spec.domain)),
        ]),
        "proxy" => table(vec![
            ("kubeconfig", cfg("proxy.kubeconfig")),
            ("hostname-override", s(&m.name)),
            ("cluster-cidr", list([s(&spec.pod_cidr)])),
        ]),
        "dns" => {
            let listen = match m.address.parse::<IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, 53).to_string(),
                Err(_) => format!("{}:53", m.address),
            };
            table(vec![
                ("kubeconfig", cfg("dns.kubeconfig")),
                ("cluster-domain", s(&spec.domain)),
                ("listen", list([s(listen)])),
            ])
        }
        "speaker" => {
            let cp = spec.control_plane.iter().any(|c| c.name == m.name);
            let mut t = table(vec![
                ("mode", s("speaker")),
                ("kubeconfig", cfg("speaker.kubeconfig")),
                ("node-name", s(&m.name)),
                ("interface", s(&interface)),
            ]);
            if cp {
                t.insert(
                    "vip".into(),
                    Value::Table(table(vec![
                        ("address", s(&spec.vip.address)),
                        ("interface", s(&interface)),
                        // Explicit: every holder must compete for the same Lease.
                        ("lease-name", s("kelson-control-plane-vip")),
                    ])),
                );
            }
            t
        }
        other => unreachable!("no daemon {other}"),
    }
}

/// Client identities with a kubeconfig on a machine: (file base, CN, O, uses the local API
/// server). The kubelet's identity is per node.
pub fn clients(
    control_plane: bool,
    node: &str,
) -> Vec<(&'static str, String, Option<&'static str>, bool)> {
    let mut v = Vec::new();
    if control_plane {
        v.push(("scheduler", "system:kube-scheduler".to_string(), None, true));
        // As in `kelsonctl init`: no per-controller service-account credentials yet.
        v.push((
            "controller-manager",
            "system:kube-controller-manager".to_string(),
            Some("system:masters"),
            true,
        ));
        v.push((
            "cloud-controller-manager",
            "system:cloud-controller-manager".to_string(),
            Some("system:masters"),
            true,
        ));
    }
    v.push((
        "kubelet",
        format!("system:node:{node}"),
        Some("system:nodes"),
        false,
    ));
    v.push(("proxy", "system:kube-proxy".to_string(), None, false));
    v.push((
        "dns",
        "system:serviceaccount:kube-system:kube-dns".to_string(),
        Some("system:serviceaccounts"),
        false,
    ));
    // The speaker writes Leases and Service annotations; no bootstrap role covers that yet.
    v.push((
        "speaker",
        format!("system:kelson-speaker:{node}"),
        Some("system:masters"),
        control_plane,
    ));
    v
}
