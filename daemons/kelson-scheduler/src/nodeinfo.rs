//! The scheduler's view of the cluster: per-node aggregates and a cheap snapshot of them.
//!
//! Everything a filter or score needs per node is precomputed when pods/nodes change, not per
//! scheduling attempt: requested resources (exact and "non-zero" for scoring), used host ports,
//! image names, and the pods with their parsed requests and affinity terms. A [`Snapshot`] is a
//! vector of `Arc<NodeInfo>` — taking one costs one pointer copy per node, and updating a node
//! (`Arc::make_mut`) copies only that node — so 5000-node clusters stay cheap per attempt.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, Taint};

use crate::resources::{pod_requests, Resources};
use crate::selectors::Labels;

/// A pod, with everything scheduling asks of it parsed once.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub requests: Resources,
    pub non_zero: Resources,
    pub priority: i32,
    /// (protocol, hostIP, hostPort) of containers' ports with a hostPort.
    pub host_ports: Vec<(String, String, i32)>,
    pub required_affinity: Vec<PodAffinityTerm>,
    pub required_anti_affinity: Vec<PodAffinityTerm>,
    /// (weight, term); negative weight for anti-affinity.
    pub preferred_affinity: Vec<(i32, PodAffinityTerm)>,
}

impl PodInfo {
    /// Parses `pod`; `priority` is the resolved priority (spec.priority or its PriorityClass).
    pub fn new(pod: Arc<Pod>, priority: i32) -> PodInfo {
        let (requests, non_zero) = pod_requests(&pod);
        let spec = pod.spec.as_ref();
        let mut host_ports = Vec::new();
        for c in spec.map(|s| s.containers.as_slice()).unwrap_or(&[]) {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|hp| *hp > 0) {
                    host_ports.push((
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                        hp,
                    ));
                }
            }
        }
        let aff = spec.and_then(|s| s.affinity.as_ref());
        let pa = aff.and_then(|a| a.pod_affinity.as_ref());
        let paa = aff.and_then(|a| a.pod_anti_affinity.as_ref());
        let mut preferred = Vec::new();
        for w in pa
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
        {
            preferred.push((w.weight, w.pod_affinity_term.clone()));
        }
        for w in paa
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
        {
            preferred.push((-w.weight, w.pod_affinity_term.clone()));
        }
        PodInfo {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            requests,
            non_zero,
            priority,
            host_ports,
            required_affinity: pa
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
            required_anti_affinity: paa
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
            preferred_affinity: preferred,
            pod,
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn spec(&self) -> Option<&k8s_openapi::api::core::v1::PodSpec> {
        self.pod.spec.as_ref()
    }
}

/// One node and the pods assigned (or assumed) to it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub node: Arc<Node>,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub requested: Resources,
    pub non_zero_requested: Resources,
    pub pods: Vec<Arc<PodInfo>>,
    pub used_ports: HashSet<(String, String, i32)>,
    /// Image name (each of the node's `status.images[].names`) → size in bytes.
    pub images: HashMap<String, i64>,
    /// Pods on this node that carry required anti-affinity terms (checked against every
    /// incoming pod, so kept apart to avoid scanning all pods).
    pub pods_with_required_anti_affinity: usize,
    pub pods_with_affinity: usize,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let status = node.status.as_ref();
        let mut allocatable = Resources::from_map(
            status
                .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
                .map(|m| m as _),
        );
        if status.is_none_or(|s| s.allocatable.is_none() && s.capacity.is_none()) {
            allocatable = Resources::default();
        }
        let mut images = HashMap::new();
        for img in status.and_then(|s| s.images.as_ref()).into_iter().flatten() {
            for n in img.names.iter().flatten() {
                images.insert(normalize_image(n), img.size_bytes.unwrap_or(0));
            }
        }
        let spec = node.spec.as_ref();
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            allocatable,
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            pods: Vec::new(),
            used_ports: HashSet::new(),
            images,
            pods_with_required_anti_affinity: 0,
            pods_with_affinity: 0,
            node,
        }
    }

    /// Replaces the Node object, keeping the pods.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let mut fresh = NodeInfo::new(node);
        for p in std::mem::take(&mut self.pods) {
            fresh.add_pod(p);
        }
        *self = fresh;
    }

    pub fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests);
        self.non_zero_requested.add(&p.non_zero);
        for hp in &p.host_ports {
            self.used_ports.insert(hp.clone());
        }
        if !p.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        if !p.required_affinity.is_empty()
            || !p.required_anti_affinity.is_empty()
            || !p.preferred_affinity.is_empty()
        {
            self.pods_with_affinity += 1;
        }
        self.pods.push(p);
    }

    /// Removes the pod with `uid`; returns whether it was there.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.uid == uid) else {
            return false;
        };
        let p = self.pods.swap_remove(i);
        self.requested.sub(&p.requests);
        self.non_zero_requested.sub(&p.non_zero);
        // Ports may be shared by several pods in theory (different hostIPs); recompute.
        if !p.host_ports.is_empty() {
            self.used_ports = self
                .pods
                .iter()
                .flat_map(|q| q.host_ports.iter().cloned())
                .collect();
        }
        if !p.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity -= 1;
        }
        if !p.required_affinity.is_empty()
            || !p.required_anti_affinity.is_empty()
            || !p.preferred_affinity.is_empty()
        {
            self.pods_with_affinity -= 1;
        }
        true
    }
}

/// Image names as the kubelet reports them are fully qualified; pods often say `nginx:1.25`.
pub fn normalize_image(name: &str) -> String {
    let mut n = name.to_string();
    if !n.contains('@') && !n.rsplit('/').next().unwrap_or("").contains(':') {
        n.push_str(":latest");
    }
    let first = n.split('/').next().unwrap_or("");
    let has_registry =
        n.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if !has_registry {
        if n.contains('/') {
            n = format!("docker.io/{n}");
        } else {
            n = format!("docker.io/library/{n}");
        }
    }
    n
}

/// An immutable view of all nodes for one scheduling attempt.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<Arc<NodeInfo>>,
    pub index: Arc<HashMap<String, usize>>,
    /// Nodes that carry at least one pod with affinity terms (for InterPodAffinity's
    /// existing-pods checks).
    pub have_pods_with_affinity: Vec<usize>,
}

impl Snapshot {
    pub fn new(nodes: Vec<Arc<NodeInfo>>) -> Snapshot {
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let have_pods_with_affinity = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.pods_with_affinity > 0)
            .map(|(i, _)| i)
            .collect();
        Snapshot {
            nodes,
            index: Arc::new(index),
            have_pods_with_affinity,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<NodeInfo>> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_normalize() {
        assert_eq!(normalize_image("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            normalize_image("nginx:1.25"),
            "docker.io/library/nginx:1.25"
        );
        assert_eq!(normalize_image("foo/bar:1"), "docker.io/foo/bar:1");
        assert_eq!(
            normalize_image("registry.k8s.io/pause:3.9"),
            "registry.k8s.io/pause:3.9"
        );
        assert_eq!(
            normalize_image("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
    }
}
