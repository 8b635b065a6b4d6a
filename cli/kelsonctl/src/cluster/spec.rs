//! The cluster description (`cluster.toml`) and its validation.
//!
//! The file is deserialized with `deny_unknown_fields` (a misspelt key is an error naming the
//! key and its line, from the `toml` crate) into plain data with upstream-ish defaults (domain
//! `cluster.local`, pods `10.244.0.0/16`, services `10.96.0.0/12`, a /24 per node, ports
//! 2379/2380/6443). Addresses and CIDRs stay strings here so that [`check`] can report a bad
//! one with its TOML path (`workers[0].address: ...`) rather than as a serde failure without
//! context, and report every problem at once instead of the first.
//!
//! `nix/lib.nix` reads the same file (`builtins.fromTOML`) and applies the same defaults; the
//! defaults live in one place per language and `tests/tests/nix_eval.rs` compares the results.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// The whole topology.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Cluster name: the kv cluster token, the kubeconfig cluster name.
    pub name: String,
    /// The cluster DNS domain.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// `topology.kubernetes.io/region` of every node (default: the cluster name).
    #[serde(default)]
    pub region: Option<String>,
    pub zones: Vec<Zone>,
    pub control_plane: Vec<Machine>,
    #[serde(default)]
    pub workers: Vec<Machine>,
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: String,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: String,
    /// Prefix length of each node's pod CIDR (the controller manager's `node-cidr-mask-size`).
    #[serde(default = "default_node_cidr_mask")]
    pub node_cidr_mask: u8,
    #[serde(default)]
    pub lb_pools: Vec<LbPool>,
    pub vip: Vip,
    #[serde(default = "default_kv_client_port")]
    pub kv_client_port: u16,
    #[serde(default = "default_kv_peer_port")]
    pub kv_peer_port: u16,
    #[serde(default = "default_apiserver_port")]
    pub apiserver_port: u16,
}

/// A failure domain. `subnet`, when given, is the L2 segment of the zone's machines.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub name: String,
    #[serde(default)]
    pub subnet: Option<String>,
}

/// One machine (control-plane or worker).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub name: String,
    pub zone: String,
    pub address: String,
    /// Extra node labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Node taints, `key=value:Effect` or `key:Effect`.
    #[serde(default)]
    pub taints: Vec<String>,
    /// The L2 interface the speaker announces on (default: `vip.interface`).
    #[serde(default)]
    pub interface: Option<String>,
}

/// A LoadBalancer address pool (a CIDR and/or `first-last` ranges), optionally zonal.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LbPool {
    pub name: String,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub cidr: Option<String>,
    #[serde(default)]
    pub ranges: Vec<String>,
}

/// The control-plane virtual IP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    pub address: String,
    pub interface: String,
}

fn default_domain() -> String {
    "cluster.local".into()
}
fn default_pod_cidr() -> String {
    "10.244.0.0/16".into()
}
fn default_service_cidr() -> String {
    crate::init::SERVICE_CIDR.into()
}
fn default_node_cidr_mask() -> u8 {
    24
}
fn default_kv_client_port() -> u16 {
    crate::init::KV_CLIENT_PORT
}
fn default_kv_peer_port() -> u16 {
    crate::init::KV_PEER_PORT
}
fn default_apiserver_port() -> u16 {
    crate::init::APISERVER_PORT
}

/// Reading or parsing the file failed (validation problems are [`Diag`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
}

impl ClusterSpec {
    pub fn from_toml(text: &str, origin: &str) -> Result<ClusterSpec, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::Parse {
            path: origin.to_string(),
            source: Box::new(e),
        })
    }

    pub fn load(path: &Path) -> Result<ClusterSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        ClusterSpec::from_toml(&text, &path.display().to_string())
    }

    /// Control-plane machines first (in file order), then workers.
    pub fn machines(&self) -> impl Iterator<Item = (&Machine, bool)> {
        self.control_plane
            .iter()
            .map(|m| (m, true))
            .chain(self.workers.iter().map(|m| (m, false)))
    }

    pub fn machine(&self, name: &str) -> Option<(&Machine, bool)> {
        self.machines().find(|(m, _)| m.name == name)
    }

    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(&self.name)
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding, with the TOML path of the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    pub severity: Severity,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{s}: {}: {}", self.path, self.message)
    }
}

/// Collects findings.
#[derive(Default)]
struct Diags(Vec<Diag>);

impl Diags {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Diag {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
        });
    }
    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Diag {
            severity: Severity::Warning,
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Parses a CIDR and insists on the network address (a host address with a prefix is almost
/// always a typo for something else).
pub fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let net: IpNetwork = s.parse().map_err(|e| format!("{s:?} is not a CIDR: {e}"))?;
    if !s.contains('/') {
        return Err(format!("{s:?} is not a CIDR: no prefix length"));
    }
    if net.ip() != net.network() {
        return Err(format!(
            "{s:?} has host bits set (the network is {}/{})",
            net.network(),
            net.prefix()
        ));
    }
    Ok(net)
}

/// An inclusive address range `first-last`.
fn parse_range(s: &str) -> Result<(IpAddr, IpAddr), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a range (expected first-last)"))?;
    let a: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {a:?} is not an IP address"))?;
    let b: IpAddr = b
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {b:?} is not an IP address"))?;
    if a.is_ipv4() != b.is_ipv4() || ip_num(a) > ip_num(b) {
        return Err(format!(
            "{s:?}: the first address must not be after the last"
        ));
    }
    Ok((a, b))
}

fn ip_num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

/// An address interval of one family, for overlap tests between CIDRs and ranges.
#[derive(Debug, Clone, Copy)]
struct Span {
    v4: bool,
    first: u128,
    last: u128,
}

impl Span {
    fn of_net(n: &IpNetwork) -> Span {
        Span {
            v4: n.is_ipv4(),
            first: ip_num(n.network()),
            last: match n {
                IpNetwork::V4(v) => u32::from(v.broadcast()) as u128,
                IpNetwork::V6(v) => {
                    let host = 128 - v.prefix() as u32;
                    let mask = if host == 128 {
                        u128::MAX
                    } else {
                        (1u128 << host) - 1
                    };
                    u128::from(v.network()) | mask
                }
            },
        }
    }
    fn of_range((a, b): (IpAddr, IpAddr)) -> Span {
        Span {
            v4: a.is_ipv4(),
            first: ip_num(a),
            last: ip_num(b),
        }
    }
    fn overlaps(&self, o: &Span) -> bool {
        self.v4 == o.v4 && self.first <= o.last && o.first <= self.last
    }
    fn contains(&self, ip: IpAddr) -> bool {
        self.v4 == ip.is_ipv4() && (self.first..=self.last).contains(&ip_num(ip))
    }
}

/// A DNS-1123 label (node names, zone names, the cluster name): what Kubernetes accepts as a
/// node name segment and what the kv member name and file names can carry without quoting.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_taint(t: &str) -> Result<(), String> {
    let (kv, effect) = t
        .rsplit_once(':')
        .ok_or_else(|| format!("taint {t:?} has no effect (key[=value]:Effect)"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "taint {t:?}: effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let key = kv.split_once('=').map_or(kv, |(k, _)| k);
    if key.is_empty() {
        return Err(format!("taint {t:?} has an empty key"));
    }
    Ok(())
}

/// Validates the description; returns every finding (errors and warnings), in file order.
pub fn check(spec: &ClusterSpec) -> Vec<Diag> {
    let mut d = Diags::default();
    if !is_dns_label(&spec.name) {
        d.error(
            "name",
            format!(
                "{:?} is not a DNS label (lower-case letters, digits, '-')",
                spec.name
            ),
        );
    }
    if spec.domain.is_empty()
        || spec.domain.starts_with('.')
        || spec.domain.ends_with('.')
        || !spec.domain.split('.').all(is_dns_label)
    {
        d.error("domain", format!("{:?} is not a DNS domain", spec.domain));
    }

    // Zones.
    let mut zones: HashMap<&str, Option<IpNetwork>> = HashMap::new();
    if spec.zones.is_empty() {
        d.error("zones", "at least one zone is needed");
    }
    for (i, z) in spec.zones.iter().enumerate() {
        if !is_dns_label(&z.name) {
            d.error(
                format!("zones[{i}].name"),
                format!("{:?} is not a DNS label", z.name),
            );
        }
        let subnet = match z.subnet.as_deref().map(parse_cidr) {
            Some(Ok(n)) => Some(n),
            Some(Err(e)) => {
                d.error(format!("zones[{i}].subnet"), e);
                None
            }
            None => None,
        };
        if zones.insert(&z.name, subnet).is_some() {
            d.error(
                format!("zones[{i}].name"),
                format!("duplicate zone {:?}", z.name),
            );
        }
    }

    // Cluster networks.
    let pod = parse_cidr(&spec.pod_cidr)
        .map_err(|e| d.error("pod_cidr", e))
        .ok();
    let svc = parse_cidr(&spec.service_cidr)
        .map_err(|e| d.error("service_cidr", e))
        .ok();
    if let (Some(p), Some(s)) = (&pod, &svc) {
        if Span::of_net(p).overlaps(&Span::of_net(s)) {
            d.error(
                "service_cidr",
                format!("{} overlaps pod_cidr {}", spec.service_cidr, spec.pod_cidr),
            );
        }
    }
    if let Some(p) = &pod {
        let max = if p.is_ipv4() { 32 } else { 128 };
        if spec.node_cidr_mask < p.prefix() || spec.node_cidr_mask > max {
            d.error(
                "node_cidr_mask",
                format!(
                    "{} must be between pod_cidr's prefix length {} and {max}",
                    spec.node_cidr_mask,
                    p.prefix()
                ),
            );
        } else {
            let nodes = spec.control_plane.len() + spec.workers.len();
            let slots = 1u128.checked_shl((spec.node_cidr_mask - p.prefix()) as u32);
            if slots.is_some_and(|s| s < nodes as u128) {
                d.error(
                    "node_cidr_mask",
                    format!(
                        "pod_cidr {} has room for {} node CIDRs of /{}, but there are {nodes} machines",
                        spec.pod_cidr,
                        slots.unwrap_or(0),
                        spec.node_cidr_mask
                    ),
                );
            }
        }
    }
    let cluster_nets: Vec<(&str, Span)> = [("pod_cidr", &pod), ("service_cidr", &svc)]
        .into_iter()
        .filter_map(|(n, net)| net.as_ref().map(|net| (n, Span::of_net(net))))
        .collect();
    for (i, z) in spec.zones.iter().enumerate() {
        if let Some(Some(sub)) = zones.get(z.name.as_str()) {
            for (n, span) in &cluster_nets {
                if span.overlaps(&Span::of_net(sub)) {
                    d.error(format!("zones[{i}].subnet"), format!("{sub} overlaps {n}"));
                }
            }
        }
    }

    // Machines.
    if spec.control_plane.is_empty() {
        d.error(
            "control_plane",
            "at least one control-plane machine is needed",
        );
    } else if spec.control_plane.len().is_multiple_of(2) {
        d.warn(
            "control_plane",
            format!(
                "{} control-plane machines: an even-sized kv cluster tolerates no more failures than one member fewer",
                spec.control_plane.len()
            ),
        );
    }
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut addrs: HashMap<IpAddr, String> = HashMap::new();
    for (section, list) in [
        ("control_plane", &spec.control_plane),
        ("workers", &spec.workers),
    ] {
        for (i, m) in list.iter().enumerate() {
            let at = format!("{section}[{i}]");
            if !is_dns_label(&m.name) {
                d.error(
                    format!("{at}.name"),
                    format!("{:?} is not a DNS label", m.name),
                );
            }
            if let Some(first) = names.insert(&m.name, at.clone()) {
                d.error(
                    format!("{at}.name"),
                    format!("duplicate machine name {:?} (also {first})", m.name),
                );
            }
            let zone = zones.get(m.zone.as_str());
            if zone.is_none() {
                d.error(format!("{at}.zone"), format!("unknown zone {:?}", m.zone));
            }
            match m.address.parse::<IpAddr>() {
                Err(_) => d.error(
                    format!("{at}.address"),
                    format!("{:?} is not an IP address", m.address),
                ),
                Ok(ip) => {
                    if let Some(first) = addrs.insert(ip, at.clone()) {
                        d.error(
                            format!("{at}.address"),
                            format!("duplicate address {ip} (also {first})"),
                        );
                    }
                    if let Some(Some(sub)) = zone {
                        if !sub.contains(ip) {
                            d.error(
                                format!("{at}.address"),
                                format!("{ip} is outside zone {:?}'s subnet {sub}", m.zone),
                            );
                        }
                    }
                    for (n, span) in &cluster_nets {
                        if span.contains(ip) {
                            d.error(format!("{at}.address"), format!("{ip} is inside {n}"));
                        }
                    }
                }
            }
            for (k, _) in m.labels.iter() {
                if k.is_empty() || k.contains(['=', ',', ' ']) {
                    d.error(format!("{at}.labels"), format!("{k:?} is not a label key"));
                }
            }
            for (j, t) in m.taints.iter().enumerate() {
                if let Err(e) = check_taint(t) {
                    d.error(format!("{at}.taints[{j}]"), e);
                }
            }
            if m.interface.as_deref() == Some("") {
                d.error(format!("{at}.interface"), "empty interface name");
            }
        }
    }

    // The VIP.
    match spec.vip.address.parse::<IpAddr>() {
        Err(_) => d.error(
            "vip.address",
            format!("{:?} is not an IP address", spec.vip.address),
        ),
        Ok(vip) => {
            if let Some(m) = addrs.get(&vip) {
                d.error("vip.address", format!("{vip} is the address of {m}"));
            }
            for (n, span) in &cluster_nets {
                if span.contains(vip) {
                    d.error("vip.address", format!("{vip} is inside {n}"));
                }
            }
            // An L2 VIP must be on a segment the control plane is on; without declared
            // subnets there is nothing to compare against.
            let cp_subnets: Vec<IpNetwork> = spec
                .control_plane
                .iter()
                .filter_map(|m| zones.get(m.zone.as_str()).copied().flatten())
                .collect();
            if !cp_subnets.is_empty() && !cp_subnets.iter().any(|s| s.contains(vip)) {
                d.warn(
                    "vip.address",
                    format!("{vip} is in no control-plane zone's subnet: no control-plane machine can announce it on its L2 segment"),
                );
            }
        }
    }
    if spec.vip.interface.is_empty() {
        d.error("vip.interface", "empty interface name");
    }

    // LoadBalancer pools.
    let mut pool_names: HashMap<&str, usize> = HashMap::new();
    let mut pool_spans: Vec<(String, Span)> = Vec::new();
    let vip = spec.vip.address.parse::<IpAddr>().ok();
    for (i, p) in spec.lb_pools.iter().enumerate() {
        let at = format!("lb_pools[{i}]");
        if pool_names.insert(&p.name, i).is_some() {
            d.error(format!("{at}.name"), format!("duplicate pool {:?}", p.name));
        }
        if let Some(z) = &p.zone {
            if !zones.contains_key(z.as_str()) {
                d.error(format!("{at}.zone"), format!("unknown zone {z:?}"));
            }
        }
        if p.cidr.is_none() && p.ranges.is_empty() {
            d.error(at.clone(), "a pool needs a cidr or ranges");
        }
        let mut spans: Vec<(String, Span)> = Vec::new();
        if let Some(c) = &p.cidr {
            match parse_cidr(c) {
                Ok(n) => spans.push((format!("{at}.cidr"), Span::of_net(&n))),
                Err(e) => d.error(format!("{at}.cidr"), e),
            }
        }
        for (j, r) in p.ranges.iter().enumerate() {
            match parse_range(r) {
                Ok(r) => spans.push((format!("{at}.ranges[{j}]"), Span::of_range(r))),
                Err(e) => d.error(format!("{at}.ranges[{j}]"), e),
            }
        }
        for (path, span) in spans {
            for (n, net) in &cluster_nets {
                if span.overlaps(net) {
                    d.error(path.clone(), format!("overlaps {n}"));
                }
            }
            for (other, o) in &pool_spans {
                if span.overlaps(o) {
                    d.error(path.clone(), format!("overlaps {other}"));
                }
            }
            for (ip, m) in &addrs {
                if span.contains(*ip) {
                    d.error(path.clone(), format!("contains {m}'s address {ip}"));
                }
            }
            if let Some(v) = vip.filter(|v| span.contains(*v)) {
                d.error(path.clone(), format!("contains the VIP {v}"));
            }
            pool_spans.push((path, span));
        }
    }

    // Ports.
    let ports = [
        ("kv_client_port", spec.kv_client_port),
        ("kv_peer_port", spec.kv_peer_port),
        ("apiserver_port", spec.apiserver_port),
    ];
    for (i, (n, p)) in ports.iter().enumerate() {
        if *p == 0 {
            d.error(*n, "port 0");
        }
        if let Some((other, _)) = ports[..i].iter().find(|(_, q)| q == p) {
            d.error(*n, format!("port {p} is also {other}"));
        }
    }
    d.0
}

/// Whether any finding is an error.
pub fn has_errors(diags: &[Diag]) -> bool {
    diags.iter().any(|d| d.severity == Severity::Error)
}
