//! One scheduling attempt: sample and filter nodes, score the feasible ones, pick the best;
//! on failure, explain (upstream's FitError message) and try preemption.
//!
//! Sampling follows upstream's `percentageOfNodesToScore`: with more than 100 nodes the search
//! stops after finding `max(100, n * pct / 100)` feasible nodes (adaptive pct = 50 - n/125,
//! at least 5 %), starting where the previous attempt stopped so load rotates over all nodes.
//! Filtering big clusters is split over scoped threads.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::nodeinfo::{NodeInfo, PodInfo, Snapshot};
use crate::plugins::{self, CycleState, Failure, Weights};

/// The outcome of a failed attempt: per-node failures, for the event message and preemption.
#[derive(Debug, Clone)]
pub struct FitError {
    pub num_all_nodes: usize,
    pub failures: Vec<(usize, Failure)>,
    /// Filled by preemption when it ran and found nothing.
    pub post_filter_msg: Option<String>,
}

impl FitError {
    /// "0/5 nodes are available: 2 node(s) had untolerated taint {k: v}, 3 Insufficient cpu."
    pub fn message(&self) -> String {
        let mut msg = format!("0/{} nodes are available:", self.num_all_nodes);
        let mut hist: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, f) in &self.failures {
            for r in &f.reasons {
                *hist.entry(r.as_str()).or_default() += 1;
            }
        }
        let mut reasons: Vec<String> = hist.iter().map(|(r, c)| format!("{c} {r}")).collect();
        reasons.sort();
        if !reasons.is_empty() {
            msg.push_str(&format!(" {}.", reasons.join(", ")));
        }
        if let Some(p) = &self.post_filter_msg {
            msg.push_str(&format!(" {p}"));
        }
        msg
    }
}

/// Upstream's `numFeasibleNodesToFind`.
pub fn num_feasible_nodes_to_find(percentage: u32, n: usize) -> usize {
    const MIN_FEASIBLE: usize = 100;
    if n < MIN_FEASIBLE || percentage >= 100 {
        return n;
    }
    let pct = if percentage == 0 {
        (50i64 - (n as i64) / 125).max(5) as usize
    } else {
        percentage as usize
    };
    (n * pct / 100).max(MIN_FEASIBLE)
}

/// The scheduling algorithm's tunables.
#[derive(Debug, Clone)]
pub struct Algorithm {
    pub weights: Weights,
    /// 0 = adaptive.
    pub percentage_of_nodes_to_score: u32,
    /// Where the next attempt starts searching (rotates).
    pub next_start: usize,
}

impl Algorithm {
    pub fn new(weights: Weights, percentage_of_nodes_to_score: u32) -> Self {
        Algorithm {
            weights,
            percentage_of_nodes_to_score,
            next_start: 0,
        }
    }

    /// Like [`Algorithm::schedule`], but pods nominated to a node by an earlier preemption
    /// (`status.nominatedNodeName`) with a priority at least `pod`'s count as running there
    /// during this attempt, so a lower- or equal-priority pod cannot take the room a preemptor
    /// is waiting for (upstream's addNominatedPods). `nominated` = (node name, pod); the pod
    /// itself is skipped. The snapshot is restored before returning.
    pub fn schedule_with_nominated(
        &mut self,
        pod: Arc<PodInfo>,
        snap: &mut Snapshot,
        nominated: &[(String, Arc<PodInfo>)],
    ) -> Result<usize, FitError> {
        let mut added: Vec<(usize, String)> = Vec::new();
        for (node, np) in nominated {
            if np.uid == pod.uid || np.priority < pod.priority {
                continue;
            }
            if let Some(&i) = snap.index.get(node) {
                snap.add_pod(i, np.clone());
                added.push((i, np.uid.clone()));
            }
        }
        let res = self.schedule(pod, snap);
        for (i, uid) in added.iter().rev() {
            snap.remove_pod(*i, uid);
        }
        res
    }

    /// Finds the best node for `pod`; returns its index in `snap.nodes`.
    pub fn schedule(&mut self, pod: Arc<PodInfo>, snap: &Snapshot) -> Result<usize, FitError> {
        let n = snap.nodes.len();
        if n == 0 {
            return Err(FitError {
                num_all_nodes: 0,
                failures: Vec::new(),
                post_filter_msg: None,
            });
        }
        let st = CycleState::prepare(pod, snap);
        let want = num_feasible_nodes_to_find(self.percentage_of_nodes_to_score, n);
        let (feasible, failures, visited) = find_feasible(&st, snap, self.next_start, want);
        self.next_start = (self.next_start + visited) % n;
        if feasible.is_empty() {
            return Err(FitError {
                num_all_nodes: n,
                failures,
                post_filter_msg: None,
            });
        }
        if feasible.len() == 1 {
            return Ok(feasible[0]);
        }
        let scores = plugins::score(&st, snap, &feasible, &self.weights);
        // Highest score; ties broken by the rotating start (first found), which spreads equal
        // nodes without randomness in tests.
        let mut best = 0;
        for i in 1..feasible.len() {
            if scores[i] > scores[best] {
                best = i;
            }
        }
        Ok(feasible[best])
    }
}

/// (feasible node indices, per-node failures, nodes visited).
type FilterOutcome = (Vec<usize>, Vec<(usize, Failure)>, usize);

/// Threads for the parallel filter (at most 8), read once: `available_parallelism` reads
/// cgroup files on every call, which showed in profiles at one call per attempt.
fn parallelism() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
            .min(8)
    })
}

/// Filters nodes from `start` (wrapping) until `want` feasible ones are found or all were
/// visited. Returns (feasible, failures, number visited).
fn find_feasible(st: &CycleState, snap: &Snapshot, start: usize, want: usize) -> FilterOutcome {
    let n = snap.nodes.len();
    let order = |k: usize| (start + k) % n;
    // The first PAR_THRESHOLD nodes are filtered on this thread: most attempts find their
    // `want` feasible nodes there, and threads spawned per attempt (tens of µs each, plus
    // wake-ups) would cost more than they save. Only the rest of a big cluster is filtered in
    // parallel chunks, each stopping once the total is reached.
    const PAR_THRESHOLD: usize = 1000;
    let threads = parallelism();
    let seq_limit = if threads < 2 { n } else { PAR_THRESHOLD.min(n) };
    let mut feasible = Vec::new();
    let mut failures = Vec::new();
    let mut visited = 0;
    for k in 0..seq_limit {
        visited += 1;
        let i = order(k);
        match plugins::filter(st, &snap.nodes[i]) {
            Ok(()) => {
                feasible.push(i);
                if feasible.len() >= want {
                    return (feasible, failures, visited);
                }
            }
            Err(f) => failures.push((i, f)),
        }
    }
    if seq_limit == n {
        return (feasible, failures, visited);
    }
    let found = std::sync::atomic::AtomicUsize::new(feasible.len());
    let rest = n - seq_limit;
    let chunk = rest.div_ceil(threads);
    let results: Vec<FilterOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let found = &found;
                s.spawn(move || {
                    let mut feasible = Vec::new();
                    let mut failures = Vec::new();
                    let mut visited = 0;
                    for k in (seq_limit + t * chunk)..(seq_limit + (t + 1) * chunk).min(n) {
                        if found.load(std::sync::atomic::Ordering::Relaxed) >= want {
                            break;
                        }
                        visited += 1;
                        let i = order(k);
                        match plugins::filter(st, &snap.nodes[i]) {
                            Ok(()) => {
                                feasible.push(i);
                                found.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(f) => failures.push((i, f)),
                        }
                    }
                    (feasible, failures, visited)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    for (f, e, v) in results {
        feasible.extend(f);
        failures.extend(e);
        visited += v;
    }
    feasible.truncate(want.max(1));
    (feasible, failures, visited.min(n))
}

/// A preemption plan: the node and the pods to evict.
#[derive(Debug, Clone)]
pub struct Preemption {
    pub node: usize,
    pub victims: Vec<Arc<PodInfo>>,
    pub pdb_violations: usize,
}

/// Upstream's DefaultPreemption, with the cycle's cluster-wide state kept as computed before
/// eviction (node-local checks — resources, ports, taints — are exact).
///
/// `violates_pdb(victim)` says whether evicting the pod would break a PodDisruptionBudget.
/// Returns the plan or the "preemption: ..." message for the FitError.
pub fn preempt(
    pod: Arc<PodInfo>,
    snap: &Snapshot,
    err: &FitError,
    violates_pdb: &dyn Fn(&PodInfo) -> bool,
) -> Result<Preemption, String> {
    let policy = pod
        .spec()
        .and_then(|s| s.preemption_policy.as_deref())
        .unwrap_or("PreemptLowerPriority");
    let n = snap.nodes.len();
    if policy == "Never" {
        return Err("preemption: not eligible due to preemptionPolicy=Never.".into());
    }
    let st = CycleState::prepare(pod.clone(), snap);
    let mut not_helpful = 0usize;
    let mut no_victims = 0usize;
    let mut candidates: Vec<Preemption> = Vec::new();
    for (i, f) in &err.failures {
        if f.unresolvable {
            not_helpful += 1;
            continue;
        }
        match select_victims(&st, &snap.nodes[*i], pod.priority, violates_pdb) {
            Some((victims, pdb_violations)) => candidates.push(Preemption {
                node: *i,
                victims,
                pdb_violations,
            }),
            None => no_victims += 1,
        }
    }
    if candidates.is_empty() {
        let mut parts = Vec::new();
        if no_victims > 0 {
            parts.push(format!(
                "{no_victims} No preemption victims found for incoming pod"
            ));
        }
        if not_helpful > 0 {
            parts.push(format!(
                "{not_helpful} Preemption is not helpful for scheduling"
            ));
        }
        parts.sort();
        return Err(format!(
            "preemption: 0/{n} nodes are available: {}.",
            parts.join(", ")
        ));
    }
    // Upstream's pickOneNodeForPreemption: fewest PDB violations, lowest highest-priority
    // victim, smallest priority sum, fewest victims.
    candidates.sort_by_key(|c| {
        (
            c.pdb_violations,
            c.victims
                .iter()
                .map(|v| v.priority)
                .max()
                .unwrap_or(i32::MIN),
            c.victims.iter().map(|v| v.priority as i64).sum::<i64>(),
            c.victims.len(),
        )
    });
    Ok(candidates.swap_remove(0))
}

/// Removes all lower-priority pods; if the pod then fits, adds back as many as possible
/// (PDB-protected ones first, then by priority, highest first). Returns the victims and how
/// many of them violate a PDB.
fn select_victims(
    st: &CycleState,
    node: &NodeInfo,
    priority: i32,
    violates_pdb: &dyn Fn(&PodInfo) -> bool,
) -> Option<(Vec<Arc<PodInfo>>, usize)> {
    let mut trial = node.clone();
    let mut lower: Vec<Arc<PodInfo>> = node
        .pods
        .iter()
        .filter(|p| p.priority < priority)
        .cloned()
        .collect();
    if lower.is_empty() {
        return None;
    }
    for p in &lower {
        trial.remove_pod(&p.uid);
    }
    if !plugins::fits(st, &trial) {
        return None;
    }
    lower.sort_by_key(|p| std::cmp::Reverse(p.priority));
    let (violating, ok): (Vec<_>, Vec<_>) = lower.into_iter().partition(|p| violates_pdb(p));
    let mut victims = Vec::new();
    let mut pdb_violations = 0;
    for (group, is_violating) in [(violating, true), (ok, false)] {
        for p in group {
            trial.add_pod(p.clone());
            if !plugins::fits(st, &trial) {
                trial.remove_pod(&p.uid);
                if is_violating {
                    pdb_violations += 1;
                }
                victims.push(p);
            }
        }
    }
    Some((victims, pdb_violations))
}
