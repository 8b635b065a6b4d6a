//! The scheduler's view of the cluster: per-node aggregates and a cheap snapshot of them.
//!
//! Everything a filter or score needs per node is precomputed when pods/nodes change, not per
//! scheduling attempt: requested resources (exact and "non-zero" for scoring), used host ports,
//! image names, and the pods with their parsed requests and affinity terms. The [`Snapshot`]
//! (all nodes, a name index, the pods grouped by what topology spread and inter-pod affinity
//! look at, and the topology domains) is updated in place per pod or node event, so its cost
//! is O(the changed node), never O(nodes), and PreFilter's cluster-wide counts cost
//! O(pod groups + nodes running matching pods) instead of O(all pods).

use std::collections::{BTreeSet, HashMap, HashSet};
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
    /// Everything the cluster-wide plugins look at, for [`PodGroups`].
    pub group: Arc<GroupKey>,
}

/// What topology spread and inter-pod affinity ask of an existing pod: its namespace, labels,
/// whether it is terminating, its controller, and its own affinity terms. Pods with equal keys
/// (the replicas of one workload) are interchangeable for those plugins.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub namespace: String,
    pub labels: Labels,
    pub terminating: bool,
    pub controller: Option<String>,
    /// The pod's inter-pod affinity terms, serialized ("" = none).
    pub terms: String,
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
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let required_affinity = pa
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        let required_anti_affinity = paa
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        let terms = if required_affinity.is_empty()
            && required_anti_affinity.is_empty()
            && preferred.is_empty()
        {
            String::new()
        } else {
            // Serializing a parsed API object cannot fail.
            serde_json::to_string(&(&required_affinity, &required_anti_affinity, &preferred))
                .unwrap_or_default()
        };
        let group = Arc::new(GroupKey {
            namespace: namespace.clone(),
            labels: labels.clone(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            controller: pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            terms,
        });
        PodInfo {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace,
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels,
            requests,
            non_zero,
            priority,
            host_ports,
            required_affinity,
            required_anti_affinity,
            preferred_affinity: preferred,
            group,
            pod,
        }
    }

    /// This pod's parsed facts for `pod`, a copy of the same pod that differs only where
    /// scheduling does not look (the assumed copy with `spec.nodeName` set): the parse is
    /// not repeated.
    pub fn with_pod(&self, pod: Arc<Pod>) -> PodInfo {
        PodInfo {
            pod,
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            requests: self.requests.clone(),
            non_zero: self.non_zero.clone(),
            priority: self.priority,
            host_ports: self.host_ports.clone(),
            required_affinity: self.required_affinity.clone(),
            required_anti_affinity: self.required_anti_affinity.clone(),
            preferred_affinity: self.preferred_affinity.clone(),
            group: self.group.clone(),
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

/// The view of all nodes a scheduling attempt reads, maintained incrementally.
///
/// The scheduler's cache owns one `Snapshot` and updates it in place on every node or pod
/// event and every assumed pod ([`Snapshot::add_pod`], [`Snapshot::remove_pod`],
/// [`Snapshot::upsert_node`], [`Snapshot::remove_node`]); an attempt borrows it. So an update
/// costs O(the changed node) — the node's `Arc` is not shared while nobody holds a borrow, so
/// `Arc::make_mut` mutates in place instead of copying — and nothing is O(nodes) per attempt.
/// (Upstream keeps a separate snapshot and copies the nodes whose generation moved; one owner
/// and a borrow make that copy unnecessary here.)
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<Arc<NodeInfo>>,
    pub index: HashMap<String, usize>,
    /// Nodes that carry at least one pod with affinity terms (for InterPodAffinity's
    /// existing-pods checks), kept sorted so attempts are deterministic.
    pub have_pods_with_affinity: BTreeSet<usize>,
    /// All pods on the snapshot's nodes, grouped by [`GroupKey`].
    pub groups: PodGroups,
    /// Node label key → value → number of nodes with it (topology domains).
    pub domains: HashMap<String, HashMap<String, usize>>,
    /// Image name → number of nodes that have it (ImageLocality's spread factor).
    pub images: HashMap<String, usize>,
    /// Namespace name → its labels, for inter-pod affinity terms' `namespaceSelector`
    /// (upstream's namespace lister; kept here so every attempt sees one consistent view).
    pub namespaces: HashMap<String, Labels>,
}

/// Interchangeable pods (equal [`GroupKey`]) and where they run.
#[derive(Debug, Clone)]
pub struct Group {
    /// Any member: all members look the same to the cluster-wide plugins.
    pub rep: Arc<PodInfo>,
    /// Node index (into [`Snapshot::nodes`]) → members on it. Indices, not names: the
    /// PreFilter loops over these, and a name would cost a hash and compare per entry.
    pub nodes: HashMap<usize, i64>,
    pub total: i64,
}

/// The cluster's pods grouped by [`GroupKey`], maintained on every pod add/remove, so
/// PreFilter's cluster-wide counts (topology spread, inter-pod affinity) evaluate each
/// selector once per group instead of once per pod, and never walk nodes without matches.
#[derive(Debug, Clone, Default)]
pub struct PodGroups {
    pub groups: HashMap<Arc<GroupKey>, Group>,
}

impl PodGroups {
    pub fn add(&mut self, node: usize, p: &Arc<PodInfo>) {
        let g = self.groups.entry(p.group.clone()).or_insert_with(|| Group {
            rep: p.clone(),
            nodes: HashMap::new(),
            total: 0,
        });
        *g.nodes.entry(node).or_default() += 1;
        g.total += 1;
    }

    pub fn remove(&mut self, node: usize, p: &PodInfo) {
        let Some(g) = self.groups.get_mut(&p.group) else {
            return;
        };
        if let Some(c) = g.nodes.get_mut(&node) {
            *c -= 1;
            g.total -= 1;
            if *c <= 0 {
                g.nodes.remove(&node);
            }
        }
        if g.total <= 0 {
            self.groups.remove(&p.group);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }
}

impl Snapshot {
    /// Builds a snapshot from scratch (tests, benchmarks; the daemon updates its own in place).
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
        let mut groups = PodGroups::default();
        let mut domains = HashMap::new();
        let mut images = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for p in &n.pods {
                groups.add(i, p);
            }
            count_domains(&mut domains, &n.labels, 1);
            count_images(&mut images, &n.images, 1);
        }
        Snapshot {
            nodes,
            index,
            have_pods_with_affinity,
            groups,
            domains,
            images,
            namespaces: HashMap::new(),
        }
    }

    /// Number of nodes carrying label `key`.
    pub fn nodes_with_key(&self, key: &str) -> usize {
        self.domains
            .get(key)
            .map_or(0, |m| m.values().sum::<usize>())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<NodeInfo>> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    fn track_affinity(&mut self, i: usize) {
        if self.nodes[i].pods_with_affinity > 0 {
            self.have_pods_with_affinity.insert(i);
        } else {
            self.have_pods_with_affinity.remove(&i);
        }
    }

    /// Adds or replaces the Node object `node`; a new node starts with `pods`. Returns the
    /// node's index and whether it is new.
    pub fn upsert_node(&mut self, node: Arc<Node>, pods: Vec<Arc<PodInfo>>) -> (usize, bool) {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(&i) = self.index.get(&name) {
            let n = Arc::make_mut(&mut self.nodes[i]);
            let new_labels = node.metadata.labels.clone().unwrap_or_default();
            if new_labels != n.labels {
                count_domains(&mut self.domains, &n.labels, -1);
                count_domains(&mut self.domains, &new_labels, 1);
            }
            count_images(&mut self.images, &n.images, -1);
            n.set_node(node);
            count_images(&mut self.images, &n.images, 1);
            return (i, false);
        }
        let mut ni = NodeInfo::new(node);
        for p in pods {
            self.groups.add(self.nodes.len(), &p);
            ni.add_pod(p);
        }
        count_domains(&mut self.domains, &ni.labels, 1);
        count_images(&mut self.images, &ni.images, 1);
        let i = self.nodes.len();
        self.index.insert(name, i);
        self.nodes.push(Arc::new(ni));
        self.track_affinity(i);
        (i, true)
    }

    /// Removes the node `name`; returns its pods (they stay known until their own delete
    /// events arrive). The last node moves into the freed slot.
    pub fn remove_node(&mut self, name: &str) -> Option<Vec<Arc<PodInfo>>> {
        let i = self.index.remove(name)?;
        let last = self.nodes.len() - 1;
        self.have_pods_with_affinity.remove(&i);
        self.have_pods_with_affinity.remove(&last);
        let removed = self.nodes.swap_remove(i);
        for p in &removed.pods {
            self.groups.remove(i, p);
        }
        count_domains(&mut self.domains, &removed.labels, -1);
        count_images(&mut self.images, &removed.images, -1);
        if i < self.nodes.len() {
            let moved = self.nodes[i].name.clone();
            self.index.insert(moved, i);
            for p in &self.nodes[i].pods {
                self.groups.remove(last, p);
                self.groups.add(i, p);
            }
            self.track_affinity(i);
        }
        Some(Arc::try_unwrap(removed).map_or_else(|a| a.pods.clone(), |n| n.pods))
    }

    /// Adds `p` to node `i`.
    pub fn add_pod(&mut self, i: usize, p: Arc<PodInfo>) {
        self.groups.add(i, &p);
        Arc::make_mut(&mut self.nodes[i]).add_pod(p);
        self.track_affinity(i);
    }

    /// Removes the pod `uid` from node `i`; returns whether it was there.
    pub fn remove_pod(&mut self, i: usize, uid: &str) -> bool {
        let Some(p) = self.nodes[i].pods.iter().find(|p| p.uid == uid).cloned() else {
            return false;
        };
        self.groups.remove(i, &p);
        let removed = Arc::make_mut(&mut self.nodes[i]).remove_pod(uid);
        self.track_affinity(i);
        removed
    }
}

/// Adds `delta` to the node count of each of a node's images.
fn count_images(counts: &mut HashMap<String, usize>, images: &HashMap<String, i64>, delta: isize) {
    for name in images.keys() {
        let c = counts.entry(name.clone()).or_default();
        *c = c.saturating_add_signed(delta);
        if *c == 0 {
            counts.remove(name);
        }
    }
}

/// Adds `delta` to the node count of each of `labels`' (key, value) pairs.
fn count_domains(
    domains: &mut HashMap<String, HashMap<String, usize>>,
    labels: &Labels,
    delta: isize,
) {
    for (k, v) in labels {
        let m = domains.entry(k.clone()).or_default();
        let c = m.entry(v.clone()).or_default();
        *c = c.saturating_add_signed(delta);
        if *c == 0 {
            m.remove(v);
            if m.is_empty() {
                domains.remove(k);
            }
        }
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

/// Property test: the snapshot maintained incrementally over random node/pod add/remove
/// sequences equals one rebuilt from scratch from the same nodes and pods.
#[cfg(test)]
mod incremental_tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    fn node(name: &str, zone: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}},
                "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                    "images": [{"names": [format!("img-{zone}")], "sizeBytes": 100},
                               {"names": ["common"], "sizeBytes": 50}]}
            }))
            .unwrap(),
        )
    }

    fn pod(rng: &mut StdRng, uid: usize) -> Arc<PodInfo> {
        let app = ["web", "db", "cache"][rng.gen_range(0..3)];
        let ns = ["a", "b"][rng.gen_range(0..2)];
        let mut spec = json!({"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": format!("{}m", rng.gen_range(0..500)),
                "memory": format!("{}Mi", rng.gen_range(0..512))}},
            "ports": if rng.gen_bool(0.2) {
                json!([{"containerPort": 80, "hostPort": rng.gen_range(8000..8003)}])
            } else { json!([]) }}]});
        if rng.gen_bool(0.3) {
            spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"app": app}}}]}});
        }
        if rng.gen_bool(0.1) {
            spec["affinity"] = json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 5, "podAffinityTerm": {"topologyKey": "topology.kubernetes.io/zone",
                "labelSelector": {"matchLabels": {"app": "db"}}}}]}});
        }
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{uid}"), "namespace": ns, "uid": format!("u{uid}"),
                "labels": {"app": app}},
            "spec": spec
        }))
        .unwrap();
        Arc::new(PodInfo::new(Arc::new(p), 0))
    }

    /// Everything the snapshot aggregates, in a comparable form.
    fn digest(s: &Snapshot) -> String {
        let mut nodes: Vec<String> = s
            .nodes
            .iter()
            .map(|n| {
                let mut ports: Vec<_> = n.used_ports.iter().cloned().collect();
                ports.sort();
                let mut uids: Vec<&str> = n.pods.iter().map(|p| p.uid.as_str()).collect();
                uids.sort();
                format!(
                    "{} idx={:?} req={:?} nz={:?} ports={ports:?} anti={} aff={} pods={uids:?}",
                    n.name,
                    s.index.get(&n.name),
                    n.requested,
                    n.non_zero_requested,
                    n.pods_with_required_anti_affinity,
                    n.pods_with_affinity
                )
            })
            .collect();
        nodes.sort();
        let mut aff: Vec<&str> = s
            .have_pods_with_affinity
            .iter()
            .map(|&i| s.nodes[i].name.as_str())
            .collect();
        aff.sort();
        let mut groups: Vec<String> = s
            .groups
            .groups
            .iter()
            .map(|(k, g)| {
                let mut nodes: Vec<_> = g.nodes.iter().collect();
                nodes.sort();
                format!("{k:?} total={} nodes={nodes:?}", g.total)
            })
            .collect();
        groups.sort();
        let mut domains: Vec<String> = s
            .domains
            .iter()
            .map(|(k, m)| {
                let mut m: Vec<_> = m.iter().collect();
                m.sort();
                format!("{k}={m:?}")
            })
            .collect();
        domains.sort();
        let mut images: Vec<_> = s.images.iter().collect();
        images.sort();
        format!(
            "nodes={} index={}\n{}\naff={aff:?}\n{}\n{}\nimages={images:?}",
            s.nodes.len(),
            s.index.len(),
            nodes.join("\n"),
            groups.join("\n"),
            domains.join("\n")
        )
    }

    fn from_scratch(s: &Snapshot) -> Snapshot {
        Snapshot::new(
            s.nodes
                .iter()
                .map(|n| {
                    let mut fresh = NodeInfo::new(n.node.clone());
                    for p in &n.pods {
                        fresh.add_pod(p.clone());
                    }
                    Arc::new(fresh)
                })
                .collect(),
        )
    }

    #[test]
    fn incremental_snapshot_equals_recomputation() {
        for seed in 0..20u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = Snapshot::default();
            let mut next_uid = 0;
            for step in 0..300 {
                match rng.gen_range(0..10) {
                    // Add (or relabel) a node.
                    0 | 1 => {
                        let name = format!("n{}", rng.gen_range(0..8));
                        let zone = ["z1", "z2", "z3"][rng.gen_range(0..3)];
                        s.upsert_node(node(&name, zone), Vec::new());
                    }
                    2 if !s.nodes.is_empty() => {
                        let i = rng.gen_range(0..s.nodes.len());
                        let name = s.nodes[i].name.clone();
                        assert!(s.remove_node(&name).is_some());
                        assert!(s.get(&name).is_none());
                    }
                    3..=6 if !s.nodes.is_empty() => {
                        let i = rng.gen_range(0..s.nodes.len());
                        next_uid += 1;
                        let p = pod(&mut rng, next_uid);
                        s.add_pod(i, p);
                    }
                    7..=9 if !s.nodes.is_empty() => {
                        let i = rng.gen_range(0..s.nodes.len());
                        if let Some(uid) = s.nodes[i].pods.first().map(|p| p.uid.clone()) {
                            assert!(s.remove_pod(i, &uid));
                            assert!(!s.remove_pod(i, &uid), "removed twice");
                        }
                    }
                    _ => {}
                }
                let want = digest(&from_scratch(&s));
                let got = digest(&s);
                assert_eq!(got, want, "seed {seed} step {step}");
            }
        }
    }
}
