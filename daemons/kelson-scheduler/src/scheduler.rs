//! The scheduler's main loop: informers → cache + queue → attempt → assume → bind.
//!
//! One task owns all mutable state (the node/pod cache, the queue, the algorithm), so nothing
//! is locked on the hot path. Watchers (kube::runtime) for nodes and pods, and reflector stores
//! for PriorityClasses and PodDisruptionBudgets, feed it through a channel; binding runs in
//! spawned tasks whose results come back through the same channel.
//!
//! The scheduling path never waits for the API: the binding POST runs in a task that takes one
//! of [`BIND_CONCURRENCY`] permits and then writes the pod's Scheduled event under the same
//! permit (never dropped); other events go through a bounded, best-effort recorder. Writes use
//! the writer client (one multiplexed HTTP/2 connection in the daemon), watches the stock one;
//! pods are decoded without their managedFields ([`crate::podwatch`]). The cache
//! owns one [`Snapshot`] that every event updates in place, and an attempt borrows it: no
//! per-attempt copy or rebuild over all nodes.
//!
//! Assumed pods: after choosing a node the pod is added to that node in the cache immediately
//! (so the next attempt sees the resources as used) and marked assumed; the watch event that
//! shows `spec.nodeName` confirms it; a failed binding forgets it and re-queues the pod with
//! back-off. Only the leader pops the queue; all instances keep their caches warm so a new
//! leader starts scheduling at once.
//!
//! Namespaces are watched too, only for their labels: inter-pod affinity terms with a
//! `namespaceSelector` select the namespaces they cover by label. A namespace added or
//! relabelled may make an unschedulable pod fit, so it re-activates them like a node event.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use parking_lot::Mutex;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::framework::{preempt, Algorithm, FitError};
use crate::nodeinfo::{PodInfo, Snapshot};
use crate::podwatch::LitePod;
use crate::queue::{Lengths, SchedulingQueue};
use crate::selectors::label_selector_matches;

/// State shared with D-Bus and metrics.
#[derive(Debug, Default)]
pub struct Shared {
    pub is_leader: AtomicBool,
    pub scheduled_total: AtomicU64,
    pub attempts_unschedulable: AtomicU64,
    pub attempts_error: AtomicU64,
    pub lengths: Mutex<Lengths>,
    pub synced: AtomicBool,
    /// Events not recorded because the event queue was full.
    pub events_dropped: AtomicU64,
    /// How long scheduling attempts take (the algorithm, and preemption when it runs).
    pub attempt_duration: AttemptDurations,
}

/// Upstream's `scheduler_scheduling_attempt_duration_seconds` by result, with its buckets
/// (1 ms doubling, 15 buckets): the algorithm's share of a pod's latency, which the end-to-end
/// numbers cannot separate from the API server's.
#[derive(Debug)]
pub struct AttemptDurations {
    pub scheduled: Histogram,
    pub unschedulable: Histogram,
}

impl Default for AttemptDurations {
    fn default() -> Self {
        let h = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        AttemptDurations {
            scheduled: h(),
            unschedulable: h(),
        }
    }
}

enum Msg {
    Node(watcher::Event<Node>),
    Pod(watcher::Event<Pod>),
    Namespace(watcher::Event<Namespace>),
    Bound {
        key: String,
        uid: String,
        node: String,
        result: Result<(), String>,
    },
    WatchError(&'static str, String),
}

/// Options for [`Scheduler::run`].
#[derive(Debug, Clone)]
pub struct Options {
    pub profiles: Vec<crate::config::Profile>,
    pub percentage_of_nodes_to_score: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub component: String,
    pub identity: String,
}

struct Cache {
    /// The nodes with their pods, updated in place; attempts borrow it.
    snap: Snapshot,
    /// Assigned (or assumed) pods by uid: (node name, info).
    pods: HashMap<String, (String, Arc<PodInfo>)>,
    /// Assigned pods whose node is not (yet) known, by node name.
    orphans: HashMap<String, Vec<Arc<PodInfo>>>,
    assumed: HashSet<String>,
}

impl Cache {
    fn new() -> Self {
        Cache {
            snap: Snapshot::default(),
            pods: HashMap::new(),
            orphans: HashMap::new(),
            assumed: HashSet::new(),
        }
    }

    fn upsert_node(&mut self, node: Node) -> bool {
        let name = node.metadata.name.clone().unwrap_or_default();
        let orphans = if self.snap.index.contains_key(&name) {
            Vec::new()
        } else {
            self.orphans.remove(&name).unwrap_or_default()
        };
        self.snap.upsert_node(Arc::new(node), orphans).1
    }

    fn remove_node(&mut self, name: &str) {
        // Pods stay known, as orphans, until their own delete events arrive.
        if let Some(pods) = self.snap.remove_node(name) {
            self.orphans.insert(name.to_string(), pods);
        }
    }

    fn add_pod(&mut self, node: &str, p: Arc<PodInfo>) {
        self.remove_pod(&p.uid.clone());
        self.pods
            .insert(p.uid.clone(), (node.to_string(), p.clone()));
        match self.snap.index.get(node) {
            Some(&i) => self.snap.add_pod(i, p),
            None => self.orphans.entry(node.to_string()).or_default().push(p),
        }
    }

    fn remove_pod(&mut self, uid: &str) -> bool {
        let Some((node, _)) = self.pods.remove(uid) else {
            return false;
        };
        self.assumed.remove(uid);
        match self.snap.index.get(&node) {
            Some(&i) => {
                self.snap.remove_pod(i, uid);
            }
            None => {
                if let Some(v) = self.orphans.get_mut(&node) {
                    v.retain(|p| p.uid != uid);
                }
            }
        }
        true
    }
}

/// The pod watch's event as the loop handles it: the typed Pod inside.
fn lite_event(e: watcher::Event<LitePod>) -> watcher::Event<Pod> {
    match e {
        watcher::Event::Apply(p) => watcher::Event::Apply(p.0),
        watcher::Event::Delete(p) => watcher::Event::Delete(p.0),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(p) => watcher::Event::InitApply(p.0),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Resolves a pod's priority: `spec.priority` (set by the Priority admission plugin), else its
/// PriorityClass, else the global default class, else 0.
fn resolve_priority(p: &Pod, classes: &Store<PriorityClass>) -> i32 {
    let spec = p.spec.as_ref();
    if let Some(prio) = spec.and_then(|s| s.priority) {
        return prio;
    }
    let state = classes.state();
    if let Some(name) = spec
        .and_then(|s| s.priority_class_name.as_deref())
        .filter(|n| !n.is_empty())
    {
        return state
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .map(|c| c.value)
            .unwrap_or(0);
    }
    state
        .iter()
        .find(|c| c.global_default == Some(true))
        .map(|c| c.value)
        .unwrap_or(0)
}

fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// The scheduler daemon's core.
pub struct Scheduler {
    client: kube::Client,
    writer: kube::Client,
    opts: Options,
    shared: Arc<Shared>,
}

impl Scheduler {
    pub fn new(client: kube::Client, opts: Options, shared: Arc<Shared>) -> Self {
        Scheduler {
            writer: client.clone(),
            client,
            opts,
            shared,
        }
    }

    /// Sends the writes (bindings, events, status patches, evictions) through `writer`
    /// instead of the watching client: the daemon passes one multiplexed HTTP/2 client.
    pub fn with_writer(mut self, writer: kube::Client) -> Self {
        self.writer = writer;
        self
    }

    /// Runs until `shutdown` fires or leadership is lost (an error: upstream exits then, and
    /// the service manager restarts it as a follower).
    pub async fn run(
        self,
        mut leading: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let (tx, mut rx) = mpsc::channel::<Msg>(4096);
        let nodes: Api<Node> = Api::all(self.client.clone());
        // Pods are decoded without their managedFields (see `podwatch`).
        let pods: Api<LitePod> = Api::all(self.client.clone());
        let wcfg = watcher::Config::default();
        let mut tasks = Vec::new();
        {
            let tx = tx.clone();
            let mut s = watcher(nodes, wcfg.clone()).default_backoff().boxed();
            tasks.push(tokio::spawn(async move {
                while let Some(ev) = s.next().await {
                    let m = match ev {
                        Ok(e) => Msg::Node(e),
                        Err(e) => Msg::WatchError("nodes", e.to_string()),
                    };
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
            }));
        }
        {
            let tx = tx.clone();
            let mut s = watcher(pods, wcfg.clone()).default_backoff().boxed();
            tasks.push(tokio::spawn(async move {
                while let Some(ev) = s.next().await {
                    let m = match ev {
                        Ok(e) => Msg::Pod(lite_event(e)),
                        Err(e) => Msg::WatchError("pods", e.to_string()),
                    };
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
            }));
        }
        {
            let tx = tx.clone();
            let nss: Api<Namespace> = Api::all(self.client.clone());
            let mut s = watcher(nss, wcfg.clone()).default_backoff().boxed();
            tasks.push(tokio::spawn(async move {
                while let Some(ev) = s.next().await {
                    let m = match ev {
                        Ok(e) => Msg::Namespace(e),
                        Err(e) => Msg::WatchError("namespaces", e.to_string()),
                    };
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
            }));
        }
        let (pc_store, pc_writer) = reflector::store::<PriorityClass>();
        let pcs = reflector::reflector(
            pc_writer,
            watcher(Api::<PriorityClass>::all(self.client.clone()), wcfg.clone()).default_backoff(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = pcs.boxed();
            while s.next().await.is_some() {}
        }));
        let (pdb_store, pdb_writer) = reflector::store::<PodDisruptionBudget>();
        let pdbs = reflector::reflector(
            pdb_writer,
            watcher(Api::<PodDisruptionBudget>::all(self.client.clone()), wcfg).default_backoff(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = pdbs.boxed();
            while s.next().await.is_some() {}
        }));
        struct Abort(Vec<tokio::task::JoinHandle<()>>);
        impl Drop for Abort {
            fn drop(&mut self) {
                for t in &self.0 {
                    t.abort();
                }
            }
        }
        let _abort = Abort(tasks);

        let mut st = Loop {
            client: self.writer.clone(),
            shared: self.shared.clone(),
            cache: Cache::new(),
            queue: SchedulingQueue::new(self.opts.initial_backoff, self.opts.max_backoff),
            pending: HashMap::new(),
            nominated: HashMap::new(),
            algorithms: self
                .opts
                .profiles
                .iter()
                .map(|p| {
                    (
                        p.scheduler_name.clone(),
                        Algorithm::new(p.weights.clone(), self.opts.percentage_of_nodes_to_score),
                    )
                })
                .collect(),
            classes: pc_store,
            pdbs: pdb_store,
            tx: tx.clone(),
            bind_permits: Arc::new(tokio::sync::Semaphore::new(BIND_CONCURRENCY)),
            event_source: Arc::new((self.opts.component.clone(), self.opts.identity.clone())),
            events: Recorder::start(
                self.writer.clone(),
                self.opts.component.clone(),
                self.opts.identity.clone(),
                self.shared.clone(),
            ),
            nodes_synced: false,
            pods_synced: false,
            namespaces_synced: false,
            init_nodes: None,
            init_pods: None,
            init_namespaces: None,
        };
        let mut was_leader = false;
        // Without leader election the sender is dropped at once (leading stays `true`), and a
        // closed watch channel's `changed()` is ready forever: polled anyway, it turned the
        // idle loop into a busy one (a core spinning whenever the queue was empty).
        let mut election_open = true;
        loop {
            // Apply everything that has arrived before the next attempt.
            while let Ok(m) = rx.try_recv() {
                st.handle(m);
            }
            let now = Instant::now();
            let next_backoff = st.queue.flush_backoff(now);
            *self.shared.lengths.lock() = st.queue.lengths();
            let leader = *leading.borrow();
            self.shared.is_leader.store(leader, Ordering::Relaxed);
            if was_leader && !leader {
                anyhow::bail!("leader election lost");
            }
            was_leader = leader;
            let synced = st.nodes_synced && st.pods_synced && st.namespaces_synced;
            self.shared.synced.store(synced, Ordering::Relaxed);
            if leader && synced {
                if let Some(key) = st.queue.pop() {
                    st.schedule_one(&key).await;
                    // Let watch events and binding results in between attempts.
                    tokio::task::yield_now().await;
                    continue;
                }
            }
            let sleep = next_backoff
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => st.handle(m),
                    None => anyhow::bail!("all watchers stopped"),
                },
                r = leading.changed(), if election_open => election_open = r.is_ok(),
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
}

struct Loop {
    /// The writing client (bindings, events, status, evictions).
    client: kube::Client,
    shared: Arc<Shared>,
    cache: Cache,
    queue: SchedulingQueue,
    /// Pending pods (no node yet, ours to schedule) by key.
    pending: HashMap<String, Arc<Pod>>,
    /// Pending pods with `status.nominatedNodeName` (preemptors waiting for their victims):
    /// key → (node, pod). Other attempts treat them as running there.
    nominated: HashMap<String, (String, Arc<PodInfo>)>,
    algorithms: HashMap<String, Algorithm>,
    classes: Store<PriorityClass>,
    pdbs: Store<PodDisruptionBudget>,
    tx: mpsc::Sender<Msg>,
    bind_permits: Arc<tokio::sync::Semaphore>,
    events: Recorder,
    /// (component, instance) of the events the binding tasks write.
    event_source: Arc<(String, String)>,
    nodes_synced: bool,
    pods_synced: bool,
    namespaces_synced: bool,
    init_nodes: Option<HashSet<String>>,
    init_pods: Option<HashSet<String>>,
    init_namespaces: Option<HashSet<String>>,
}

impl Loop {
    fn handle(&mut self, m: Msg) {
        let now = Instant::now();
        match m {
            Msg::Node(ev) => match ev {
                watcher::Event::Init => self.init_nodes = Some(HashSet::new()),
                watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                    if let Some(s) = self.init_nodes.as_mut() {
                        s.insert(n.metadata.name.clone().unwrap_or_default());
                    }
                    self.cache.upsert_node(n);
                    // Node added or updated: unschedulable pods may fit now.
                    self.queue.move_all_to_active_or_backoff(now);
                }
                watcher::Event::Delete(n) => {
                    self.cache
                        .remove_node(n.metadata.name.as_deref().unwrap_or(""));
                    // A node gone can make pods fit (upstream's PodTopologySpread registers
                    // for Node deletes: a topology domain may disappear with it).
                    self.queue.move_all_to_active_or_backoff(now);
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = self.init_nodes.take() {
                        let gone: Vec<String> = self
                            .cache
                            .snap
                            .nodes
                            .iter()
                            .filter(|n| !seen.contains(&n.name))
                            .map(|n| n.name.clone())
                            .collect();
                        for g in gone {
                            self.cache.remove_node(&g);
                        }
                    }
                    self.nodes_synced = true;
                }
            },
            Msg::Pod(ev) => match ev {
                watcher::Event::Init => self.init_pods = Some(HashSet::new()),
                watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                    if let Some(s) = self.init_pods.as_mut() {
                        s.insert(p.metadata.uid.clone().unwrap_or_default());
                    }
                    self.pod_applied(p, now);
                }
                watcher::Event::Delete(p) => self.pod_deleted(&p, now),
                watcher::Event::InitDone => {
                    if let Some(seen) = self.init_pods.take() {
                        let gone: Vec<String> = self
                            .cache
                            .pods
                            .keys()
                            .filter(|u| !seen.contains(*u) && !self.cache.assumed.contains(*u))
                            .cloned()
                            .collect();
                        for u in gone {
                            self.cache.remove_pod(&u);
                        }
                        let gone: Vec<String> = self
                            .pending
                            .iter()
                            .filter(|(_, p)| {
                                !seen.contains(p.metadata.uid.as_deref().unwrap_or(""))
                            })
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in gone {
                            self.forget_pending(&k);
                            self.queue.remove(&k);
                        }
                    }
                    self.pods_synced = true;
                }
            },
            Msg::Namespace(ev) => match ev {
                watcher::Event::Init => self.init_namespaces = Some(HashSet::new()),
                watcher::Event::InitApply(ns) | watcher::Event::Apply(ns) => {
                    let name = ns.metadata.name.clone().unwrap_or_default();
                    if let Some(s) = self.init_namespaces.as_mut() {
                        s.insert(name.clone());
                    }
                    let labels = ns.metadata.labels.unwrap_or_default();
                    if self.cache.snap.namespaces.get(&name) != Some(&labels) {
                        self.cache.snap.namespaces.insert(name, labels);
                        self.queue.move_all_to_active_or_backoff(now);
                    }
                }
                watcher::Event::Delete(ns) => {
                    self.cache
                        .snap
                        .namespaces
                        .remove(ns.metadata.name.as_deref().unwrap_or(""));
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = self.init_namespaces.take() {
                        self.cache.snap.namespaces.retain(|n, _| seen.contains(n));
                    }
                    self.namespaces_synced = true;
                }
            },
            Msg::Bound {
                key,
                uid,
                node,
                result,
            } => match result {
                Ok(()) => {
                    self.shared.scheduled_total.fetch_add(1, Ordering::Relaxed);
                    self.queue.remove(&key);
                    self.forget_pending(&key);
                    tracing::info!(pod = %key, node = %node, "bound");
                }
                Err(e) => {
                    tracing::warn!(pod = %key, node = %node, error = %e, "binding failed");
                    self.shared.attempts_error.fetch_add(1, Ordering::Relaxed);
                    // Forget the assumption; retry after back-off.
                    if self.cache.assumed.contains(&uid) {
                        self.cache.remove_pod(&uid);
                    }
                    self.queue.requeue_failed(&key, false, Instant::now());
                }
            },
            Msg::WatchError(what, e) => {
                tracing::warn!(resource = what, error = %e, "watch failed; retrying")
            }
        }
    }

    fn pod_applied(&mut self, p: Pod, now: Instant) {
        let key = pod_key(&p);
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        if is_terminal(&p) {
            // Finished pods use no resources.
            if self.cache.remove_pod(&uid) {
                self.queue.move_all_to_active_or_backoff(now);
            }
            self.forget_pending(&key);
            self.queue.remove(&key);
            return;
        }
        if let Some(node) = node {
            self.forget_pending(&key);
            self.queue.remove(&key);
            let prio = resolve_priority(&p, &self.classes);
            self.cache.assumed.remove(&uid);
            self.cache
                .add_pod(&node, Arc::new(PodInfo::new(Arc::new(p), prio)));
            return;
        }
        if self.cache.assumed.contains(&uid) {
            // A stale event from before our binding landed.
            return;
        }
        let spec = p.spec.as_ref();
        let name = spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler");
        let gated = spec
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_some_and(|g| !g.is_empty());
        if !self.algorithms.contains_key(name) || p.metadata.deletion_timestamp.is_some() || gated {
            self.forget_pending(&key);
            self.queue.remove(&key);
            return;
        }
        let prio = resolve_priority(&p, &self.classes);
        let p = Arc::new(p);
        match p
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.clone())
            .filter(|n| !n.is_empty())
        {
            Some(node) => {
                let info = Arc::new(PodInfo::new(p.clone(), prio));
                self.nominated.insert(key.clone(), (node, info));
            }
            None => {
                self.nominated.remove(&key);
            }
        }
        self.pending.insert(key.clone(), p);
        self.queue.add(&key, prio, now);
    }

    fn forget_pending(&mut self, key: &str) {
        self.pending.remove(key);
        self.nominated.remove(key);
    }

    fn pod_deleted(&mut self, p: &Pod, now: Instant) {
        let key = pod_key(p);
        let uid = p.metadata.uid.as_deref().unwrap_or("");
        self.forget_pending(&key);
        self.queue.remove(&key);
        if self.cache.remove_pod(uid) {
            // Freed resources: unschedulable pods may fit now.
            self.queue.move_all_to_active_or_backoff(now);
        }
    }

    fn violates_pdb(&self, p: &PodInfo) -> bool {
        self.pdbs.state().iter().any(|pdb| {
            pdb.metadata.namespace.as_deref() == Some(p.namespace.as_str())
                && pdb
                    .spec
                    .as_ref()
                    .is_some_and(|s| label_selector_matches(s.selector.as_ref(), &p.labels))
                && pdb
                    .status
                    .as_ref()
                    .is_none_or(|s| s.disruptions_allowed <= 0)
        })
    }

    async fn schedule_one(&mut self, key: &str) {
        let Some(pod) = self.pending.get(key).cloned() else {
            self.queue.remove(key);
            return;
        };
        let sched_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.clone())
            .unwrap_or_else(|| "default-scheduler".into());
        let prio = resolve_priority(&pod, &self.classes);
        let pi = Arc::new(PodInfo::new(pod.clone(), prio));
        let Some(alg) = self.algorithms.get_mut(&sched_name) else {
            self.queue.remove(key);
            return;
        };
        let started = Instant::now();
        let outcome = if self.nominated.is_empty() {
            alg.schedule(pi.clone(), &self.cache.snap)
        } else {
            let nominated: Vec<(String, Arc<PodInfo>)> = self.nominated.values().cloned().collect();
            alg.schedule_with_nominated(pi.clone(), &mut self.cache.snap, &nominated)
        }
        .map(|i| self.cache.snap.nodes[i].name.clone());
        match outcome {
            Ok(node) => {
                let took = started.elapsed();
                self.shared
                    .attempt_duration
                    .scheduled
                    .observe(took.as_secs_f64());
                tracing::debug!(pod = %key, node = %node, ?took, "scheduled");
                // Assume: the pod occupies the node from now on in our cache, so the next
                // attempt sees the resources as used while the binding is in flight.
                let mut assumed = (*pod).clone();
                if let Some(s) = assumed.spec.as_mut() {
                    s.node_name = Some(node.clone());
                }
                let uid = pi.uid.clone();
                self.cache
                    .add_pod(&node, Arc::new(pi.with_pod(Arc::new(assumed))));
                self.cache.assumed.insert(uid.clone());
                // Its nomination is spent: the assumed pod now holds the room itself.
                self.nominated.remove(key);
                self.spawn_bind(key.to_string(), pod, uid, node);
            }
            Err(mut fit) => {
                self.shared
                    .attempts_unschedulable
                    .fetch_add(1, Ordering::Relaxed);
                let snap = &self.cache.snap;
                let mut nominated = None;
                if self.waiting_for_victims(&pod, snap, prio) {
                    // Upstream's PodEligibleToPreemptOthers: victims on the nominated node are
                    // still terminating; evicting more would be needless.
                    fit.post_filter_msg = Some(
                        "preemption: not eligible due to a terminating pod on the nominated node."
                            .into(),
                    );
                    nominated = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.nominated_node_name.clone());
                } else if !fit.failures.is_empty() {
                    match preempt(pi.clone(), snap, &fit, &|v| self.violates_pdb(v)) {
                        Ok(plan) => {
                            let node = snap.nodes[plan.node].name.clone();
                            tracing::info!(pod = %key, node = %node, victims = plan.victims.len(), "preempting");
                            for v in &plan.victims {
                                self.evict(v, &pod, &node).await;
                            }
                            nominated = Some(node);
                        }
                        Err(msg) => fit.post_filter_msg = Some(msg),
                    }
                }
                self.shared
                    .attempt_duration
                    .unschedulable
                    .observe(started.elapsed().as_secs_f64());
                self.report_unschedulable(&pod, &fit, nominated).await;
                self.queue.requeue_failed(key, true, Instant::now());
            }
        }
    }

    /// The binding cycle, off the scheduling path (upstream runs it in a goroutine): the POST
    /// waits for one of [`BIND_CONCURRENCY`] permits, so a backlog of thousands of assumed
    /// pods becomes a steady stream over a few reused connections instead of thousands of
    /// simultaneous connections (each a TLS handshake) that starve the API server. The result
    /// comes back to the loop as [`Msg::Bound`]: success confirms, failure forgets the assumed
    /// pod and re-queues it with back-off.
    ///
    /// The pod's `Scheduled` event (upstream writes one per bound pod) is written by the same
    /// task, after the result went back and still under the permit, not through the
    /// best-effort recorder: at backlog rates the recorder's queue overflowed and dropped
    /// most of them (3.4k of 10k written in sched-bench). Under the permit, event writes
    /// share the bindings' bound on writes in flight, so a slow API server slows the
    /// bindings down instead of losing events.
    fn spawn_bind(&self, key: String, pod: Arc<Pod>, uid: String, node: String) {
        let client = self.client.clone();
        let tx = self.tx.clone();
        let permits = self.bind_permits.clone();
        let source = self.event_source.clone();
        tokio::spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else {
                let result = Err("scheduler shutting down".to_string());
                let _ = tx
                    .send(Msg::Bound {
                        key,
                        uid,
                        node,
                        result,
                    })
                    .await;
                return;
            };
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let name = pod.metadata.name.as_deref().unwrap_or("");
            let result = bind(&client, ns, name, &uid, &node).await;
            let bound = result.is_ok();
            let msg = format!("Successfully assigned {} to {node}", pod_key(&pod));
            let _ = tx
                .send(Msg::Bound {
                    key,
                    uid,
                    node,
                    result,
                })
                .await;
            if bound {
                let (component, identity) = &*source;
                record_event(
                    &client,
                    &pod,
                    "Normal",
                    "Scheduled",
                    &msg,
                    component,
                    identity,
                )
                .await;
            }
            drop(permit);
        });
    }

    fn waiting_for_victims(&self, pod: &Pod, snap: &Snapshot, prio: i32) -> bool {
        let Some(n) = pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .and_then(|n| snap.get(n))
        else {
            return false;
        };
        n.pods
            .iter()
            .any(|p| p.priority < prio && p.pod.metadata.deletion_timestamp.is_some())
    }

    async fn evict(&self, victim: &PodInfo, preemptor: &Pod, node: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &victim.namespace);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(victim.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&victim.name, &dp).await {
            Ok(_) => {
                let msg = format!(
                    "Preempted by pod {} on node {node}",
                    preemptor.metadata.uid.as_deref().unwrap_or("")
                );
                self.events
                    .emit(victim.pod.clone(), "Normal", "Preempted", msg);
            }
            Err(e) => {
                tracing::warn!(victim = %victim.key(), error = %e, "deleting preemption victim failed")
            }
        }
    }

    async fn report_unschedulable(&self, pod: &Pod, fit: &FitError, nominated: Option<String>) {
        let msg = fit.message();
        tracing::info!(pod = %pod_key(pod), reason = %msg, "unschedulable");
        self.events.emit(
            Arc::new(pod.clone()),
            "Warning",
            "FailedScheduling",
            msg.clone(),
        );
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let mut status = json!({
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": msg,
                "lastProbeTime": null,
                "lastTransitionTime": now_time(),
            }]
        });
        if let Some(n) = nominated {
            status["nominatedNodeName"] = json!(n);
        }
        let body = json!({ "status": status });
        let pp = PatchParams::default();
        if let Err(e) = api.patch_status(name, &pp, &Patch::Strategic(&body)).await {
            tracing::debug!(error = %e, "strategic status patch failed; trying merge patch");
            if let Err(e) = api.patch_status(name, &pp, &Patch::Merge(&body)).await {
                tracing::warn!(pod = %pod_key(pod), error = %e, "updating PodScheduled condition failed");
            }
        }
    }
}

/// Bindings in flight at once (upstream binds in unbounded goroutines that client-go
/// multiplexes over one HTTP/2 connection). The daemon's writer multiplexes too, so this no
/// longer bounds connections (an HTTP/1.1 writer, as in tests, would open up to this many);
/// it bounds the writes in flight: each permit covers a binding and then its Scheduled event.
pub const BIND_CONCURRENCY: usize = 32;
/// Events queued for the API; beyond this they are dropped (upstream's broadcaster drops too:
/// events are best effort and must never slow scheduling down). Dropped events are counted
/// (`scheduler_events_dropped_total`).
const EVENT_QUEUE: usize = 1000;
/// Event POSTs in flight at once (FailedScheduling and Preempted events; the Scheduled ones
/// are written by the binding tasks).
const EVENT_CONCURRENCY: usize = 4;

struct EventReq {
    pod: Arc<Pod>,
    type_: &'static str,
    reason: &'static str,
    message: String,
}

/// Records core/v1 Events asynchronously: `emit` never waits; a worker posts them with
/// bounded concurrency.
#[derive(Clone)]
struct Recorder {
    tx: mpsc::Sender<EventReq>,
    shared: Arc<Shared>,
}

impl Recorder {
    /// Starts the worker; it ends when every `Recorder` clone is dropped.
    fn start(
        client: kube::Client,
        component: String,
        identity: String,
        shared: Arc<Shared>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<EventReq>(EVENT_QUEUE);
        let permits = Arc::new(tokio::sync::Semaphore::new(EVENT_CONCURRENCY));
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let client = client.clone();
                let (component, identity) = (component.clone(), identity.clone());
                tokio::spawn(async move {
                    record_event(
                        &client,
                        &ev.pod,
                        ev.type_,
                        ev.reason,
                        &ev.message,
                        &component,
                        &identity,
                    )
                    .await;
                    drop(permit);
                });
            }
        });
        Recorder { tx, shared }
    }

    fn emit(&self, pod: Arc<Pod>, type_: &'static str, reason: &'static str, message: String) {
        let ev = EventReq {
            pod,
            type_,
            reason,
            message,
        };
        if self.tx.try_send(ev).is_err() {
            self.shared.events_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }
}

/// POSTs a JSON body to `path`; the response body is read but not decoded (a Status for a
/// binding, the created Event for an event: nothing the scheduler uses). Errors are kube's
/// (`Error::Api` with the server's Status for a non-2xx answer).
async fn post_json(
    client: &kube::Client,
    path: String,
    body: &impl serde::Serialize,
) -> Result<(), kube::Error> {
    let body = serde_json::to_vec(body).map_err(kube::Error::SerdeError)?;
    let req = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(body)
        .map_err(kube::Error::HttpError)?;
    client.request_text(req).await.map(drop)
}

/// POST pods/<name>/binding.
async fn bind(
    client: &kube::Client,
    ns: &str,
    name: &str,
    uid: &str,
    node: &str,
) -> Result<(), String> {
    let body = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    post_json(
        client,
        format!("/api/v1/namespaces/{ns}/pods/{name}/binding"),
        &body,
    )
    .await
    .map_err(|e| e.to_string())
}

/// Creates a core/v1 Event about `pod` (what `kubectl describe pod` and `kubectl get events`
/// show). Failures are logged, never fatal.
async fn record_event(
    client: &kube::Client,
    pod: &Pod,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
    instance: &str,
) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now();
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(format!("{pod_name}.{:x}", now.as_nanosecond())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod_name),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(type_.into()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        action: Some(
            if reason == "Scheduled" {
                "Binding"
            } else {
                "Scheduling"
            }
            .into(),
        ),
        reporting_component: Some(component.into()),
        reporting_instance: Some(instance.into()),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some(component.into()),
            host: None,
        }),
        ..Default::default()
    };
    if let Err(e) = post_json(client, format!("/api/v1/namespaces/{ns}/events"), &ev).await {
        tracing::debug!(error = %e, reason, "recording event failed");
    }
}
