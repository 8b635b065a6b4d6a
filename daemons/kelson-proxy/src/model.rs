//! The proxy's view of the cluster: Services and EndpointSlices reduced to one
//! [`ServiceInfo`] per service port, keyed by [`ServicePortName`].
//!
//! [`build`] is a pure function of the API objects and the node name, so both proxy modes and
//! the nftables rule generator work on the same plain data and are unit-testable without an
//! API server. Endpoint selection follows upstream's `CategorizeEndpoints`: the cluster set is
//! the ready endpoints, or, when none is ready, the serving-and-terminating ones; the local set
//! is the same rule applied to endpoints on this node.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// L4 protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
    /// The nft keyword.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// `namespace/name/protocol/port-name`: one proxied port of one service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port_name
        )
    }
}

/// One backend of a service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (`nodeName` equals the proxy's node name).
    pub local: bool,
}

/// Everything the data plane needs about one service port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceInfo {
    pub cluster_ips: Vec<IpAddr>,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<String>,
    /// sessionAffinity ClientIP timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    /// Sorted, deduplicated by (ip, port).
    pub endpoints: Vec<Endpoint>,
}

impl ServiceInfo {
    /// Whether traffic arrives from outside the cluster network (NodePort, LB, externalIPs).
    pub fn has_external(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Upstream's endpoint categorisation: ready ones, else serving-and-terminating ones.
    fn usable<'a>(eps: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
        let ready: Vec<_> = eps.clone().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        eps.filter(|e| e.serving && e.terminating).collect()
    }

    /// Endpoints for traffic that may go anywhere in the cluster.
    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        Self::usable(self.endpoints.iter())
    }

    /// Endpoints on this node.
    pub fn local_endpoints(&self) -> Vec<&Endpoint> {
        Self::usable(self.endpoints.iter().filter(|e| e.local))
    }

    /// Endpoints for ClusterIP traffic (internalTrafficPolicy).
    pub fn internal_endpoints(&self) -> Vec<&Endpoint> {
        if self.internal_policy_local {
            self.local_endpoints()
        } else {
            self.cluster_endpoints()
        }
    }

    /// Endpoints for NodePort/LB/externalIP traffic (externalTrafficPolicy).
    pub fn external_endpoints(&self) -> Vec<&Endpoint> {
        if self.external_policy_local {
            self.local_endpoints()
        } else {
            self.cluster_endpoints()
        }
    }
}

/// The whole desired state: every proxied service port.
pub type State = BTreeMap<ServicePortName, ServiceInfo>;

/// Services carrying this label belong to another proxy (upstream's convention).
const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn parse_ips<'a>(v: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = v.into_iter().filter_map(|s| s.parse().ok()).collect();
    out.sort();
    out.dedup();
    out
}

/// Builds the desired state from the watched objects. `node_port_range` filters NodePorts the
/// API server could not have allocated (defence against garbage, not a policy).
pub fn build(
    services: &[impl AsRef<Service>],
    slices: &[impl AsRef<EndpointSlice>],
    node_name: &str,
    node_port_range: (u16, u16),
) -> State {
    // Slices grouped by (namespace, service name).
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let s = s.as_ref();
        let (Some(ns), Some(svc)) = (
            s.metadata.namespace.as_deref(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL)),
        ) else {
            continue;
        };
        by_service.entry((ns, svc.as_str())).or_default().push(s);
    }

    let mut state = State::new();
    for svc in services {
        let svc = svc.as_ref();
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        if svc
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(PROXY_NAME_LABEL))
        {
            continue;
        }
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            continue;
        }
        let mut cips: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
        if cips.is_empty() {
            cips.extend(spec.cluster_ip.iter());
        }
        let cluster_ips = parse_ips(cips); // "None" (headless) parses to nothing
        if cluster_ips.is_empty() {
            continue;
        }
        let external_ips = parse_ips(spec.external_ips.iter().flatten());
        let load_balancer_ips = if ty == "LoadBalancer" {
            parse_ips(
                svc.status
                    .iter()
                    .filter_map(|s| s.load_balancer.as_ref())
                    .flat_map(|lb| lb.ingress.iter().flatten())
                    // ipMode Proxy means the LB forwards to the node itself, not to the VIP.
                    .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                    .filter_map(|i| i.ip.as_ref()),
            )
        } else {
            Vec::new()
        };
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .filter(|t| *t > 0)
                .map(|t| t as u32)
                .unwrap_or(10800)
        });
        let has_node_ports = ty == "NodePort" || ty == "LoadBalancer";
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for p in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            if port == 0 {
                continue;
            }
            let port_name = p.name.clone().unwrap_or_default();
            let node_port = p
                .node_port
                .filter(|_| has_node_ports)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| (node_port_range.0..=node_port_range.1).contains(n));
            let mut endpoints: Vec<Endpoint> = Vec::new();
            for s in slices {
                let Some(sp) = s.ports.iter().flatten().find(|sp| {
                    sp.name.as_deref().unwrap_or("") == port_name
                        && Protocol::parse(sp.protocol.as_deref()) == Some(protocol)
                }) else {
                    continue;
                };
                let Some(ep_port) = sp.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                for e in &s.endpoints {
                    let c = e.conditions.as_ref();
                    let ready = c.and_then(|c| c.ready).unwrap_or(true);
                    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                    let local = e.node_name.as_deref() == Some(node_name);
                    // Only the first address of an endpoint is used (upstream does the same).
                    if let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) {
                        endpoints.push(Endpoint {
                            ip,
                            port: ep_port,
                            ready,
                            serving,
                            terminating,
                            local,
                        });
                    }
                }
            }
            // The same endpoint can appear in two slices while they are being rebalanced:
            // keep one, preferring the ready copy.
            endpoints.sort_by_key(|e| (e.ip, e.port, !e.ready));
            endpoints.dedup_by(|b, a| a.ip == b.ip && a.port == b.port);
            state.insert(
                ServicePortName {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    port_name,
                    protocol,
                },
                ServiceInfo {
                    cluster_ips: cluster_ips.clone(),
                    port,
                    node_port,
                    external_ips: external_ips.clone(),
                    load_balancer_ips: load_balancer_ips.clone(),
                    load_balancer_source_ranges: spec
                        .load_balancer_source_ranges
                        .clone()
                        .unwrap_or_default(),
                    affinity_timeout,
                    external_policy_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                    internal_policy_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                    endpoints,
                },
            );
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> std::sync::Arc<Service> {
        std::sync::Arc::new(serde_json::from_value(v).unwrap())
    }
    fn slice(v: serde_json::Value) -> std::sync::Arc<EndpointSlice> {
        std::sync::Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn builds_ports_endpoints_and_policies() {
        let services: Vec<std::sync::Arc<Service>> = vec![
            svc(json!({"metadata": {"namespace": "ns", "name": "web"},
                "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                    "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                    "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                              {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 80}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}})),
            svc(json!({"metadata": {"namespace": "ns", "name": "headless"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})),
            svc(json!({"metadata": {"namespace": "ns", "name": "ext"},
                "spec": {"type": "ExternalName", "externalName": "example.com"}})),
        ];
        let slices: Vec<std::sync::Arc<EndpointSlice>> = vec![
            slice(json!({"metadata": {"namespace": "ns", "name": "web-a",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "nodeName": "n1"},
                {"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n2"},
            ]})),
            slice(json!({"metadata": {"namespace": "ns", "name": "web-b",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": false}}]})),
        ];
        let st = build(&services, &slices, "n1", (30000, 32767));
        assert_eq!(st.len(), 2, "{st:?}");
        let http = st
            .iter()
            .find(|(k, _)| k.port_name == "http")
            .map(|(_, v)| v)
            .unwrap();
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(
            http.load_balancer_ips,
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(http.affinity_timeout, Some(10800));
        assert!(http.external_policy_local && !http.internal_policy_local);
        assert_eq!(http.endpoints.len(), 2);
        let ready: Vec<_> = http
            .cluster_endpoints()
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(ready, vec!["10.0.0.2"]);
        assert_eq!(http.local_endpoints().len(), 1);
        let dns = st
            .iter()
            .find(|(k, _)| k.port_name == "dns")
            .map(|(_, v)| v)
            .unwrap();
        assert_eq!(
            dns.node_port, None,
            "node port outside the range is ignored"
        );
        assert!(dns.endpoints.is_empty());
    }

    #[test]
    fn terminating_endpoints_only_when_none_ready() {
        let mut info = ServiceInfo::default();
        let ep = |last: u8, ready: bool, terminating: bool| Endpoint {
            ip: IpAddr::from([10, 0, 0, last]),
            port: 80,
            ready,
            serving: true,
            terminating,
            local: false,
        };
        info.endpoints = vec![ep(1, false, true), ep(2, false, true)];
        assert_eq!(info.cluster_endpoints().len(), 2);
        info.endpoints.push(ep(3, true, false));
        assert_eq!(info.cluster_endpoints().len(), 1);
        assert!(info.local_endpoints().is_empty());
    }
}
