//! The filter and score plugins, upstream's default set, over a [`Snapshot`].
//!
//! Design: per attempt, [`CycleState::prepare`] (upstream's PreFilter) does every cluster-wide
//! computation once — topology spread counts per topology domain, inter-pod (anti-)affinity
//! counts per topology pair — so that [`filter`] is a cheap, node-local check and can run over
//! thousands of nodes. Filters run in upstream's order and stop at the first failing plugin,
//! whose reasons feed the "0/N nodes are available: ..." summary. Scores are computed per plugin
//! over the feasible nodes, normalized to 0..=100, weighted and summed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{NodeSelectorTerm, PodAffinityTerm, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::nodeinfo::{normalize_image, NodeInfo, PodInfo, Snapshot};
use crate::selectors::{label_selector_matches, node_selector_terms_match, Labels};

pub const MAX_NODE_SCORE: i64 = 100;
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Why a node was rejected: the plugin, whether preemption could help, and the reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub plugin: &'static str,
    /// `true` = UnschedulableAndUnresolvable: removing pods from the node cannot help.
    pub unresolvable: bool,
    pub reasons: Vec<String>,
}

fn fail(plugin: &'static str, unresolvable: bool, reason: impl Into<String>) -> Failure {
    Failure {
        plugin,
        unresolvable,
        reasons: vec![reason.into()],
    }
}

/// Per-plugin score weights (upstream's defaults).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase", default)]
pub struct Weights {
    pub node_resources_fit: i64,
    pub node_resources_balanced_allocation: i64,
    pub node_affinity: i64,
    pub inter_pod_affinity: i64,
    pub pod_topology_spread: i64,
    pub taint_toleration: i64,
    pub image_locality: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            node_resources_fit: 1,
            node_resources_balanced_allocation: 1,
            node_affinity: 2,
            inter_pod_affinity: 2,
            pod_topology_spread: 2,
            taint_toleration: 3,
            image_locality: 1,
        }
    }
}

/// Which pods a spread constraint counts.
#[derive(Debug, Clone)]
enum SpreadSelector {
    Labels(LabelSelector),
    /// Cluster-default constraints: pods of the same controller (upstream derives the selector
    /// from the pod's Service/ReplicaSet/StatefulSet; the controller owner is the same set).
    Owner(String),
}

#[derive(Debug, Clone)]
struct SpreadConstraint {
    max_skew: i64,
    key: String,
    hard: bool,
    min_domains: i64,
    selector: SpreadSelector,
    self_match: bool,
}

/// Upstream's cluster-default constraints (`SystemDefaulting`).
fn default_constraints(pod: &PodInfo) -> Vec<SpreadConstraint> {
    let owner = pod
        .pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone());
    let Some(owner) = owner else {
        return Vec::new();
    };
    [(HOSTNAME_LABEL, 3), (ZONE_LABEL, 5)]
        .into_iter()
        .map(|(key, skew)| SpreadConstraint {
            max_skew: skew,
            key: key.into(),
            hard: false,
            min_domains: 1,
            selector: SpreadSelector::Owner(owner.clone()),
            self_match: true,
        })
        .collect()
}

fn spread_matches(sel: &SpreadSelector, ns: &str, p: &PodInfo) -> bool {
    if p.namespace != ns || p.pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    match sel {
        SpreadSelector::Labels(s) => label_selector_matches(Some(s), &p.labels),
        SpreadSelector::Owner(uid) => p
            .pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && &o.uid == uid),
    }
}

/// Counts per topology pair, as topology key → value → count, so that a node's count is two
/// lookups by `&str` (no key allocation on the per-node filter and score paths).
#[derive(Debug, Default)]
pub struct TopoCounts(HashMap<String, HashMap<String, i64>>);

impl TopoCounts {
    fn add(&mut self, key: &str, value: &str, by: i64) {
        let m = match self.0.get_mut(key) {
            Some(m) => m,
            None => self.0.entry(key.to_string()).or_default(),
        };
        match m.get_mut(value) {
            Some(c) => *c += by,
            None => {
                m.insert(value.to_string(), by);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The count for node labels `labels` under `key`.
    fn at(&self, labels: &Labels, key: &str) -> i64 {
        labels
            .get(key)
            .and_then(|v| self.0.get(key)?.get(v))
            .copied()
            .unwrap_or(0)
    }

    /// The counts of all of a node's topology pairs.
    fn per_label<'a>(&'a self, labels: &'a Labels) -> impl Iterator<Item = i64> + 'a {
        self.0
            .iter()
            .filter_map(|(k, m)| m.get(labels.get(k)?).copied())
    }

    #[cfg(test)]
    fn pairs(&self) -> Vec<((String, String), i64)> {
        let mut v: Vec<_> = self
            .0
            .iter()
            .flat_map(|(k, m)| m.iter().map(move |(v, c)| ((k.clone(), v.clone()), *c)))
            .filter(|(_, c)| *c != 0)
            .collect();
        v.sort();
        v
    }
}

/// Everything computed once per scheduling attempt.
#[derive(Debug)]
pub struct CycleState {
    pub pod: Arc<PodInfo>,
    tolerations: Vec<Toleration>,
    node_selector: BTreeMap<String, String>,
    required_node_terms: Option<Vec<NodeSelectorTerm>>,
    preferred_node_terms: Vec<(i32, NodeSelectorTerm)>,
    constraints: Vec<SpreadConstraint>,
    /// Per constraint: topology value → matching pod count (eligible domains with matching
    /// pods only: a domain absent here has count 0).
    spread_counts: Vec<HashMap<String, i64>>,
    /// Per constraint: the minimum count over eligible domains.
    spread_min: Vec<i64>,
    /// Per constraint: the number of eligible domains.
    spread_domains: Vec<usize>,
    /// (key, value) pairs where an existing pod's required anti-affinity rejects this pod.
    existing_anti: TopoCounts,
    /// Per required affinity term of the pod: (key, value) → count of matching pods.
    affinity_counts: TopoCounts,
    /// `true` when no existing pod matches any affinity term but the pod matches its own.
    affinity_self_satisfied: bool,
    anti_counts: TopoCounts,
    /// Preferred inter-pod affinity contributions per topology pair.
    affinity_scores: TopoCounts,
}

/// Namespace name → labels (the snapshot's copy of the Namespace informer).
pub type NamespaceLabels = HashMap<String, Labels>;

/// Whether a term of a pod in `owner_ns` covers pods in `target_ns`, as upstream's
/// `AffinityTerm.Matches`: the namespaces listed in the term, united with those its
/// `namespaceSelector` selects (`{}` selects every namespace; a namespace the informer has not
/// seen has no labels); with neither, the owner's own namespace.
pub fn term_namespaces_match(
    term: &PodAffinityTerm,
    owner_ns: &str,
    target_ns: &str,
    namespaces: &NamespaceLabels,
) -> bool {
    let listed = term.namespaces.as_deref().unwrap_or(&[]);
    let Some(sel) = &term.namespace_selector else {
        return if listed.is_empty() {
            owner_ns == target_ns
        } else {
            listed.iter().any(|n| n == target_ns)
        };
    };
    if listed.iter().any(|n| n == target_ns) {
        return true;
    }
    let empty = Labels::new();
    label_selector_matches(Some(sel), namespaces.get(target_ns).unwrap_or(&empty))
}

/// `target` matches `term` of a pod in namespace `owner_ns`.
fn term_matches(
    term: &PodAffinityTerm,
    owner_ns: &str,
    target: &PodInfo,
    namespaces: &NamespaceLabels,
) -> bool {
    term_namespaces_match(term, owner_ns, &target.namespace, namespaces)
        && label_selector_matches(term.label_selector.as_ref(), &target.labels)
}

impl CycleState {
    /// Upstream's PreFilter for all plugins.
    pub fn prepare(pod: Arc<PodInfo>, snap: &Snapshot) -> CycleState {
        let spec = pod.spec();
        let tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
        let node_selector = spec
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default();
        let na = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref());
        let required_node_terms = na
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|r| r.node_selector_terms.clone());
        let preferred_node_terms = na
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|v| v.iter().map(|p| (p.weight, p.preference.clone())).collect())
            .unwrap_or_default();

        let mut constraints: Vec<SpreadConstraint> = spec
            .and_then(|s| s.topology_spread_constraints.as_ref())
            .into_iter()
            .flatten()
            .map(|c| {
                let sel = c.label_selector.clone().unwrap_or_default();
                let self_match = label_selector_matches(Some(&sel), &pod.labels);
                SpreadConstraint {
                    max_skew: c.max_skew.max(1) as i64,
                    key: c.topology_key.clone(),
                    hard: c.when_unsatisfiable == "DoNotSchedule",
                    min_domains: c.min_domains.unwrap_or(1).max(1) as i64,
                    selector: SpreadSelector::Labels(sel),
                    self_match,
                }
            })
            .collect();
        if constraints.is_empty() {
            constraints = default_constraints(&pod);
        }

        let mut st = CycleState {
            pod: pod.clone(),
            tolerations,
            node_selector,
            required_node_terms,
            preferred_node_terms,
            constraints,
            spread_counts: Vec::new(),
            spread_min: Vec::new(),
            spread_domains: Vec::new(),
            existing_anti: TopoCounts::default(),
            affinity_counts: TopoCounts::default(),
            affinity_self_satisfied: false,
            anti_counts: TopoCounts::default(),
            affinity_scores: TopoCounts::default(),
        };
        st.prepare_spread(snap);
        st.prepare_affinity(snap);
        st
    }

    /// Whether node `n` defines topology domains for this pod's spread constraints: it passes
    /// the pod's node affinity (nodeAffinityPolicy=Honor) and carries every constraint's key.
    fn spread_eligible(&self, n: &NodeInfo) -> bool {
        self.node_affinity_matches(n)
            && self
                .constraints
                .iter()
                .all(|c| n.labels.contains_key(&c.key))
    }

    /// Counts matching pods per topology domain from the snapshot's pod groups: one selector
    /// evaluation per group, then only the nodes that run the matching groups. The number of
    /// eligible domains comes from the snapshot's domain index when every node is eligible
    /// (no node affinity, every node has the keys), else from one pass over the nodes.
    fn prepare_spread(&mut self, snap: &Snapshot) {
        if self.constraints.is_empty() {
            return;
        }
        let n_nodes = snap.nodes.len();
        let all_eligible = self.node_selector.is_empty()
            && self.required_node_terms.is_none()
            && self
                .constraints
                .iter()
                .all(|c| snap.nodes_with_key(&c.key) == n_nodes);
        self.spread_domains = if all_eligible {
            self.constraints
                .iter()
                .map(|c| snap.domains.get(&c.key).map_or(0, |m| m.len()))
                .collect()
        } else {
            let mut seen: Vec<HashSet<&str>> = vec![HashSet::new(); self.constraints.len()];
            for n in &snap.nodes {
                if !self.spread_eligible(n) {
                    continue;
                }
                for (i, c) in self.constraints.iter().enumerate() {
                    seen[i].insert(n.labels[&c.key].as_str());
                }
            }
            seen.iter().map(|s| s.len()).collect()
        };
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); self.constraints.len()];
        for g in snap.groups.iter() {
            for (i, c) in self.constraints.iter().enumerate() {
                if !spread_matches(&c.selector, &self.pod.namespace, &g.rep) {
                    continue;
                }
                for (node, k) in &g.nodes {
                    let n = &snap.nodes[*node];
                    if !all_eligible && !self.spread_eligible(n) {
                        continue;
                    }
                    if let Some(v) = n.labels.get(&c.key) {
                        match counts[i].get_mut(v) {
                            Some(x) => *x += k,
                            None => {
                                counts[i].insert(v.clone(), *k);
                            }
                        }
                    }
                }
            }
        }
        self.spread_min = self
            .constraints
            .iter()
            .zip(&counts)
            .zip(&self.spread_domains)
            .map(|((c, m), &domains)| {
                // A domain without matching pods (absent from the sparse map) has count 0.
                if (domains as i64) < c.min_domains || m.len() < domains {
                    0
                } else {
                    m.values().copied().min().unwrap_or(0)
                }
            })
            .collect();
        self.spread_counts = counts;
    }

    /// Inter-pod affinity's PreFilter over the snapshot's pod groups: each term is evaluated
    /// once per group (not per pod), and counts are added per node the group runs on.
    fn prepare_affinity(&mut self, snap: &Snapshot) {
        let pod = self.pod.clone();
        let has_own_terms = !pod.required_affinity.is_empty()
            || !pod.required_anti_affinity.is_empty()
            || !pod.preferred_affinity.is_empty();
        let mut any_affinity_match = false;
        // (topology key, weight) contributions of one group, applied per node it runs on.
        let mut adds: Vec<(&str, i64, u8)> = Vec::new();
        const EXISTING_ANTI: u8 = 0;
        const SCORE: u8 = 1;
        const AFFINITY: u8 = 2;
        const ANTI: u8 = 3;
        for g in snap.groups.iter() {
            let existing = &g.rep;
            adds.clear();
            if !existing.group.terms.is_empty() {
                // Existing pods' required anti-affinity against the incoming pod.
                for t in &existing.required_anti_affinity {
                    if term_matches(t, &existing.namespace, &pod, &snap.namespaces) {
                        adds.push((&t.topology_key, 1, EXISTING_ANTI));
                    }
                }
                // Symmetry for scoring: existing pods' preferred terms and required affinity
                // (hardPodAffinityWeight = 1).
                for (w, t) in &existing.preferred_affinity {
                    if term_matches(t, &existing.namespace, &pod, &snap.namespaces) {
                        adds.push((&t.topology_key, *w as i64, SCORE));
                    }
                }
                for t in &existing.required_affinity {
                    if term_matches(t, &existing.namespace, &pod, &snap.namespaces) {
                        adds.push((&t.topology_key, 1, SCORE));
                    }
                }
            }
            if has_own_terms {
                for t in &pod.required_affinity {
                    if term_matches(t, &pod.namespace, existing, &snap.namespaces) {
                        any_affinity_match = true;
                        adds.push((&t.topology_key, 1, AFFINITY));
                    }
                }
                for t in &pod.required_anti_affinity {
                    if term_matches(t, &pod.namespace, existing, &snap.namespaces) {
                        adds.push((&t.topology_key, 1, ANTI));
                    }
                }
                for (w, t) in &pod.preferred_affinity {
                    if term_matches(t, &pod.namespace, existing, &snap.namespaces) {
                        adds.push((&t.topology_key, *w as i64, SCORE));
                    }
                }
            }
            if adds.is_empty() {
                continue;
            }
            for (node, k) in &g.nodes {
                let n = &snap.nodes[*node];
                for &(key, w, what) in &adds {
                    let Some(v) = n.labels.get(key) else { continue };
                    let map = match what {
                        EXISTING_ANTI => &mut self.existing_anti,
                        SCORE => &mut self.affinity_scores,
                        AFFINITY => &mut self.affinity_counts,
                        _ => &mut self.anti_counts,
                    };
                    map.add(key, v, w * k);
                }
            }
        }
        // The first pod of a group that wants to be with its own kind may go anywhere.
        self.affinity_self_satisfied = !any_affinity_match
            && pod
                .required_affinity
                .iter()
                .all(|t| term_matches(t, &pod.namespace, &pod, &snap.namespaces));
    }

    fn node_affinity_matches(&self, n: &NodeInfo) -> bool {
        for (k, v) in &self.node_selector {
            if n.labels.get(k) != Some(v) {
                return false;
            }
        }
        match &self.required_node_terms {
            Some(terms) => node_selector_terms_match(terms, &n.name, &n.labels),
            None => true,
        }
    }
}

fn tolerates(tols: &[Toleration], taint: &Taint) -> bool {
    tols.iter().any(|t| {
        if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
            if e != taint.effect {
                return false;
            }
        }
        let key = t.key.as_deref().unwrap_or("");
        if !key.is_empty() && key != taint.key {
            return false;
        }
        match t.operator.as_deref().unwrap_or("Equal") {
            // An empty key with Exists tolerates everything.
            "Exists" => true,
            "Equal" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
            _ => false,
        }
    })
}

/// Runs the filter plugins in upstream's order; the first failure wins.
pub fn filter(st: &CycleState, n: &NodeInfo) -> Result<(), Failure> {
    let spec = st.pod.spec();
    // NodeUnschedulable (a pod tolerating the unschedulable taint may still land).
    if n.unschedulable {
        let t = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerates(&st.tolerations, &t) {
            return Err(fail(
                "NodeUnschedulable",
                true,
                "node(s) were unschedulable",
            ));
        }
    }
    // NodeName
    if let Some(want) = spec
        .and_then(|s| s.node_name.as_deref())
        .filter(|s| !s.is_empty())
    {
        if want != n.name {
            return Err(fail(
                "NodeName",
                true,
                "node(s) didn't match the requested node name",
            ));
        }
    }
    // TaintToleration
    for t in &n.taints {
        if (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(&st.tolerations, t) {
            return Err(fail(
                "TaintToleration",
                true,
                format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    t.key,
                    t.value.as_deref().unwrap_or("")
                ),
            ));
        }
    }
    // NodeAffinity
    if !st.node_affinity_matches(n) {
        return Err(fail(
            "NodeAffinity",
            true,
            "node(s) didn't match Pod's node affinity/selector",
        ));
    }
    // NodePorts
    for (proto, ip, port) in &st.pod.host_ports {
        let conflict = n.used_ports.iter().any(|(p2, ip2, port2)| {
            p2 == proto && port2 == port && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
        });
        if conflict {
            return Err(fail(
                "NodePorts",
                false,
                "node(s) didn't have free ports for the requested pod ports",
            ));
        }
    }
    // NodeResourcesFit
    let mut reasons = Vec::new();
    let req = &st.pod.requests;
    let (a, u) = (&n.allocatable, &n.requested);
    if n.pods.len() as i64 + 1 > a.pods {
        reasons.push("Too many pods".to_string());
    }
    if req.milli_cpu > 0 && req.milli_cpu > a.milli_cpu - u.milli_cpu {
        reasons.push("Insufficient cpu".into());
    }
    if req.memory > 0 && req.memory > a.memory - u.memory {
        reasons.push("Insufficient memory".into());
    }
    if req.ephemeral_storage > 0
        && req.ephemeral_storage > a.ephemeral_storage - u.ephemeral_storage
    {
        reasons.push("Insufficient ephemeral-storage".into());
    }
    for (k, v) in &req.scalar {
        if *v > 0 && *v > a.scalar(k) - u.scalar(k) {
            reasons.push(format!("Insufficient {k}"));
        }
    }
    if !reasons.is_empty() {
        return Err(Failure {
            plugin: "NodeResourcesFit",
            unresolvable: false,
            reasons,
        });
    }
    // PodTopologySpread (DoNotSchedule constraints)
    for (i, c) in st.constraints.iter().enumerate() {
        if !c.hard {
            continue;
        }
        let Some(v) = n.labels.get(&c.key) else {
            return Err(fail(
                "PodTopologySpread",
                true,
                "node(s) didn't match pod topology spread constraints (missing required label)",
            ));
        };
        let count = st.spread_counts[i].get(v).copied().unwrap_or(0);
        let skew = count + c.self_match as i64 - st.spread_min[i];
        if skew > c.max_skew {
            return Err(fail(
                "PodTopologySpread",
                false,
                "node(s) didn't match pod topology spread constraints",
            ));
        }
    }
    // InterPodAffinity
    let pair_count = |m: &TopoCounts, key: &str| -> i64 { m.at(&n.labels, key) };
    if !st.existing_anti.is_empty() && st.existing_anti.per_label(&n.labels).any(|c| c > 0) {
        return Err(fail(
            "InterPodAffinity",
            false,
            "node(s) didn't satisfy existing pods anti-affinity rules",
        ));
    }
    if !st.pod.required_affinity.is_empty() {
        let ok = st.pod.required_affinity.iter().all(|t| {
            n.labels.contains_key(&t.topology_key)
                && (st.affinity_self_satisfied
                    || pair_count(&st.affinity_counts, &t.topology_key) > 0)
        });
        if !ok {
            return Err(fail(
                "InterPodAffinity",
                true,
                "node(s) didn't match pod affinity rules",
            ));
        }
    }
    for t in &st.pod.required_anti_affinity {
        if pair_count(&st.anti_counts, &t.topology_key) > 0 {
            return Err(fail(
                "InterPodAffinity",
                false,
                "node(s) didn't match pod anti-affinity rules",
            ));
        }
    }
    Ok(())
}

/// Upstream's DefaultNormalizeScore: scale to 0..=100 by the maximum (optionally reversed).
fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

fn least_allocated(st: &CycleState, n: &NodeInfo) -> i64 {
    let one = |req: i64, alloc: i64| {
        if alloc <= 0 || req > alloc {
            0
        } else {
            (alloc - req) * MAX_NODE_SCORE / alloc
        }
    };
    let cpu = one(
        n.non_zero_requested.milli_cpu + st.pod.non_zero.milli_cpu,
        n.allocatable.milli_cpu,
    );
    let mem = one(
        n.non_zero_requested.memory + st.pod.non_zero.memory,
        n.allocatable.memory,
    );
    (cpu + mem) / 2
}

fn balanced_allocation(st: &CycleState, n: &NodeInfo) -> i64 {
    let frac = |req: i64, alloc: i64| {
        if alloc <= 0 {
            1.0
        } else {
            (req as f64 / alloc as f64).min(1.0)
        }
    };
    let c = frac(
        n.requested.milli_cpu + st.pod.requests.milli_cpu,
        n.allocatable.milli_cpu,
    );
    let m = frac(
        n.requested.memory + st.pod.requests.memory,
        n.allocatable.memory,
    );
    // Standard deviation of two fractions is half their distance.
    let std = (c - m).abs() / 2.0;
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

fn image_locality(
    st: &CycleState,
    n: &NodeInfo,
    total_nodes: usize,
    spread: &HashMap<String, usize>,
) -> i64 {
    const MIN_THRESHOLD: i64 = 23 * 1024 * 1024;
    const MAX_CONTAINER_THRESHOLD: i64 = 1000 * 1024 * 1024;
    let containers = st
        .pod
        .spec()
        .map(|s| s.containers.as_slice())
        .unwrap_or(&[]);
    let mut sum: i64 = 0;
    for c in containers {
        let Some(img) = c.image.as_deref() else {
            continue;
        };
        let img = normalize_image(img);
        if let Some(size) = n.images.get(&img) {
            let nodes_with = spread.get(&img).copied().unwrap_or(1) as i64;
            sum += size * nodes_with / total_nodes.max(1) as i64;
        }
    }
    let max_threshold = MAX_CONTAINER_THRESHOLD * containers.len().max(1) as i64;
    let sum = sum.clamp(MIN_THRESHOLD, max_threshold);
    MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max_threshold - MIN_THRESHOLD)
}

/// Scores `feasible` (indices into `snap.nodes`); returns the weighted total per node.
pub fn score(st: &CycleState, snap: &Snapshot, feasible: &[usize], w: &Weights) -> Vec<i64> {
    let nodes: Vec<&NodeInfo> = feasible.iter().map(|&i| snap.nodes[i].as_ref()).collect();
    let mut total = vec![0i64; nodes.len()];
    let mut add = |scores: Vec<i64>, weight: i64| {
        for (t, s) in total.iter_mut().zip(scores) {
            *t += s * weight;
        }
    };
    if w.node_resources_fit != 0 {
        add(
            nodes.iter().map(|n| least_allocated(st, n)).collect(),
            w.node_resources_fit,
        );
    }
    if w.node_resources_balanced_allocation != 0 {
        add(
            nodes.iter().map(|n| balanced_allocation(st, n)).collect(),
            w.node_resources_balanced_allocation,
        );
    }
    if w.node_affinity != 0 && !st.preferred_node_terms.is_empty() {
        let mut s: Vec<i64> = nodes
            .iter()
            .map(|n| {
                st.preferred_node_terms
                    .iter()
                    .filter(|(_, t)| {
                        node_selector_terms_match(std::slice::from_ref(t), &n.name, &n.labels)
                    })
                    .map(|(w, _)| *w as i64)
                    .sum()
            })
            .collect();
        normalize(&mut s, false);
        add(s, w.node_affinity);
    }
    if w.taint_toleration != 0 {
        let prefer: Vec<Toleration> = st
            .tolerations
            .iter()
            .filter(|t| {
                t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
            })
            .cloned()
            .collect();
        let mut s: Vec<i64> = nodes
            .iter()
            .map(|n| {
                n.taints
                    .iter()
                    .filter(|t| t.effect == "PreferNoSchedule" && !tolerates(&prefer, t))
                    .count() as i64
            })
            .collect();
        normalize(&mut s, true);
        add(s, w.taint_toleration);
    }
    if w.inter_pod_affinity != 0 && !st.affinity_scores.is_empty() {
        let raw: Vec<i64> = nodes
            .iter()
            .map(|n| st.affinity_scores.per_label(&n.labels).sum())
            .collect();
        let (min, max) = (
            raw.iter().copied().min().unwrap_or(0),
            raw.iter().copied().max().unwrap_or(0),
        );
        let s = raw
            .iter()
            .map(|&r| {
                if max == min {
                    0
                } else {
                    MAX_NODE_SCORE * (r - min) / (max - min)
                }
            })
            .collect();
        add(s, w.inter_pod_affinity);
    }
    if w.pod_topology_spread != 0 && st.constraints.iter().any(|c| !c.hard) {
        let soft: Vec<usize> = (0..st.constraints.len())
            .filter(|&i| !st.constraints[i].hard)
            .collect();
        let mut raw: Vec<Option<f64>> = Vec::with_capacity(nodes.len());
        for n in &nodes {
            if !soft
                .iter()
                .all(|&i| n.labels.contains_key(&st.constraints[i].key))
            {
                raw.push(None);
                continue;
            }
            let mut s = 0.0;
            for &i in &soft {
                let c = &st.constraints[i];
                let v = &n.labels[&c.key];
                let cnt = st.spread_counts[i].get(v).copied().unwrap_or(0) as f64;
                // Upstream weighs each constraint by log(#domains + 2).
                let weight = ((st.spread_domains[i] + 2) as f64).ln();
                s += cnt * weight + (c.max_skew - 1) as f64;
            }
            raw.push(Some(s));
        }
        let vals: Vec<f64> = raw.iter().flatten().copied().collect();
        let max = vals.iter().copied().fold(0.0f64, f64::max);
        let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let s = raw
            .iter()
            .map(|r| match r {
                None => 0,
                Some(_) if max == 0.0 => MAX_NODE_SCORE,
                Some(v) => (MAX_NODE_SCORE as f64 * (max + min - v) / max) as i64,
            })
            .collect();
        add(s, w.pod_topology_spread);
    }
    if w.image_locality != 0 {
        let mut spread: HashMap<String, usize> = HashMap::new();
        let containers = st
            .pod
            .spec()
            .map(|s| s.containers.as_slice())
            .unwrap_or(&[]);
        let imgs: Vec<String> = containers
            .iter()
            .filter_map(|c| c.image.as_deref())
            .map(normalize_image)
            .collect();
        if !snap.images.is_empty() {
            for img in &imgs {
                let c = snap.images.get(img).copied().unwrap_or(0);
                spread.insert(img.clone(), c);
            }
            add(
                nodes
                    .iter()
                    .map(|n| image_locality(st, n, snap.nodes.len(), &spread))
                    .collect(),
                w.image_locality,
            );
        }
    }
    total
}

/// Exposed for preemption: does the pod fit `n` (with the cycle's precomputed state)?
pub fn fits(st: &CycleState, n: &NodeInfo) -> bool {
    filter(st, n).is_ok()
}

pub fn labels_of(n: &NodeInfo) -> &Labels {
    &n.labels
}

/// PreFilter over pod groups equals the per-pod, per-node computation it replaced.
#[cfg(test)]
mod group_prefilter_tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    fn pod(rng: &mut StdRng, uid: usize, incoming: bool) -> Arc<PodInfo> {
        let app = ["web", "db"][rng.gen_range(0..2)];
        let ns = ["a", "b"][rng.gen_range(0..2)];
        let mut spec = json!({"containers": [{"name": "c", "image": "x"}]});
        let mut aff = json!({});
        if incoming || rng.gen_bool(0.3) {
            aff["podAntiAffinity"] = json!({"requiredDuringSchedulingIgnoredDuringExecution": [{
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"app": app}}}]});
        }
        if incoming || rng.gen_bool(0.2) {
            aff["podAffinity"] = json!({"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 3, "podAffinityTerm": {"topologyKey": "topology.kubernetes.io/zone",
                "labelSelector": {"matchLabels": {"app": "db"}}}}],
                "requiredDuringSchedulingIgnoredDuringExecution": [{
                "topologyKey": "topology.kubernetes.io/zone",
                "labelSelector": {"matchLabels": {"app": "db"}}}]});
        }
        spec["affinity"] = aff;
        if incoming {
            spec["topologySpreadConstraints"] = json!([{
                "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": app}}}]);
            if rng.gen_bool(0.5) {
                spec["nodeSelector"] = json!({"disk": "ssd"});
            }
        }
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{uid}"), "namespace": ns, "uid": format!("u{uid}"),
                "labels": {"app": app}},
            "spec": spec
        }))
        .unwrap();
        Arc::new(PodInfo::new(Arc::new(p), 0))
    }

    type Pairs = Vec<((String, String), i64)>;
    /// (spread counts per constraint, spread minimum per constraint, affinity maps).
    type Brute = (Vec<Vec<(String, i64)>>, Vec<i64>, [Pairs; 4]);

    fn sorted(m: &HashMap<(String, String), i64>) -> Pairs {
        let mut v: Pairs = m
            .iter()
            .filter(|(_, c)| **c != 0)
            .map(|(k, c)| (k.clone(), *c))
            .collect();
        v.sort();
        v
    }

    /// The previous implementation: every pod on every node.
    fn brute(st: &CycleState, snap: &Snapshot) -> Brute {
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); st.constraints.len()];
        for n in &snap.nodes {
            if !st.spread_eligible(n) {
                continue;
            }
            for (i, c) in st.constraints.iter().enumerate() {
                let m = n
                    .pods
                    .iter()
                    .filter(|p| spread_matches(&c.selector, &st.pod.namespace, p))
                    .count() as i64;
                *counts[i].entry(n.labels[&c.key].clone()).or_default() += m;
            }
        }
        let mins = st
            .constraints
            .iter()
            .zip(&counts)
            .map(|(c, m)| {
                if (m.len() as i64) < c.min_domains {
                    0
                } else {
                    m.values().copied().min().unwrap_or(0)
                }
            })
            .collect();
        let dense = counts
            .iter()
            .map(|m| {
                let mut v: Vec<(String, i64)> = m
                    .iter()
                    .filter(|(_, c)| **c > 0)
                    .map(|(k, c)| (k.clone(), *c))
                    .collect();
                v.sort();
                v
            })
            .collect();
        let pod = &st.pod;
        let mut maps: [HashMap<(String, String), i64>; 4] = Default::default();
        for n in &snap.nodes {
            for e in &n.pods {
                let mut add = |m: usize, t: &PodAffinityTerm, w: i64| {
                    if let Some(v) = n.labels.get(&t.topology_key) {
                        *maps[m]
                            .entry((t.topology_key.clone(), v.clone()))
                            .or_default() += w;
                    }
                };
                for t in &e.required_anti_affinity {
                    if term_matches(t, &e.namespace, pod, &snap.namespaces) {
                        add(0, t, 1);
                    }
                }
                for (w, t) in &e.preferred_affinity {
                    if term_matches(t, &e.namespace, pod, &snap.namespaces) {
                        add(1, t, *w as i64);
                    }
                }
                for t in &e.required_affinity {
                    if term_matches(t, &e.namespace, pod, &snap.namespaces) {
                        add(1, t, 1);
                    }
                }
                for t in &pod.required_affinity {
                    if term_matches(t, &pod.namespace, e, &snap.namespaces) {
                        add(2, t, 1);
                    }
                }
                for t in &pod.required_anti_affinity {
                    if term_matches(t, &pod.namespace, e, &snap.namespaces) {
                        add(3, t, 1);
                    }
                }
                for (w, t) in &pod.preferred_affinity {
                    if term_matches(t, &pod.namespace, e, &snap.namespaces) {
                        add(1, t, *w as i64);
                    }
                }
            }
        }
        (dense, mins, maps.each_ref().map(sorted))
    }

    #[test]
    fn group_prefilter_equals_per_pod_computation() {
        for seed in 0..30u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let n_nodes = rng.gen_range(1..12);
            let mut nodes = Vec::new();
            let mut uid = 0;
            for i in 0..n_nodes {
                let mut labels = json!({"kubernetes.io/hostname": format!("n{i}")});
                // Some nodes lack the zone key; some have the ssd label.
                if rng.gen_bool(0.9) {
                    labels["topology.kubernetes.io/zone"] =
                        json!(format!("z{}", rng.gen_range(0..4)));
                }
                if rng.gen_bool(0.5) {
                    labels["disk"] = json!("ssd");
                }
                let node: Node = serde_json::from_value(json!({
                    "metadata": {"name": format!("n{i}"), "labels": labels},
                    "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}}
                }))
                .unwrap();
                let mut ni = NodeInfo::new(Arc::new(node));
                for _ in 0..rng.gen_range(0..6) {
                    uid += 1;
                    ni.add_pod(pod(&mut rng, uid, false));
                }
                nodes.push(Arc::new(ni));
            }
            let snap = Snapshot::new(nodes);
            for _ in 0..5 {
                uid += 1;
                let st = CycleState::prepare(pod(&mut rng, uid, true), &snap);
                let (counts, mins, maps) = brute(&st, &snap);
                let got_counts: Vec<Vec<(String, i64)>> = st
                    .spread_counts
                    .iter()
                    .map(|m| {
                        let mut v: Vec<(String, i64)> = m
                            .iter()
                            .filter(|(_, c)| **c > 0)
                            .map(|(k, c)| (k.clone(), *c))
                            .collect();
                        v.sort();
                        v
                    })
                    .collect();
                assert_eq!(got_counts, counts, "seed {seed}: spread counts");
                assert_eq!(st.spread_min, mins, "seed {seed}: spread minimum");
                let got = [
                    st.existing_anti.pairs(),
                    st.affinity_scores.pairs(),
                    st.affinity_counts.pairs(),
                    st.anti_counts.pairs(),
                ];
                assert_eq!(got, maps, "seed {seed}: affinity counts");
            }
        }
    }
}
