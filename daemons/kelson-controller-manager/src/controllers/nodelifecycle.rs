//! Node lifecycle, taint-based eviction, pod GC and node IPAM.
//!
//! Node health comes from node Leases (`kube-node-lease/<node>`) and the Ready condition's
//! heartbeat. Staleness is measured on *our* clock since we last saw either change (as
//! upstream's `probeTimestamp`), never by comparing our clock with the kubelet's. A node silent
//! for longer than `--node-monitor-grace-period` gets Ready=Unknown (all conditions, reason
//! NodeStatusUnknown) and the `node.kubernetes.io/unreachable` taints (NoSchedule and
//! NoExecute); a node reporting Ready=False gets `node.kubernetes.io/not-ready`. Taints go
//! away when the node is healthy again.
//!
//! Zone awareness, as upstream's node lifecycle controller: nodes are grouped by
//! `topology.kubernetes.io/zone` and each zone has a state — FullDisruption (no ready node),
//! PartialDisruption (more than two unhealthy nodes and at least `--unhealthy-zone-threshold`
//! of them) or Normal. NoExecute taints are added through a per-zone rate limiter (token bucket,
//! burst one): `--node-eviction-rate` nodes/s in Normal and FullDisruption zones,
//! `--secondary-node-eviction-rate` in a PartialDisruption zone larger than
//! `--large-cluster-size-threshold` nodes and none in a smaller one. When every zone is fully
//! disrupted the controller assumes its own view is what failed (a partition of the control
//! plane): it adds no NoExecute taint anywhere and removes the ones it set. So a dead zone
//! is evicted one node at a time while others are healthy, and a cluster-wide outage evicts
//! nothing.
//!
//! Eviction (the NoExecute taint manager): a pod on a node with a NoExecute taint it does not
//! tolerate is deleted; one that tolerates it for `tolerationSeconds` is deleted that long after
//! the taint's `timeAdded`.
//!
//! Pods on a node that is not Ready get their Ready condition set to False (upstream's
//! `MarkPodsNotReady`), so endpoints stop sending them traffic before any eviction.
//!
//! Events as upstream's: on the Node (`node-controller`, involvedObject uid = node name)
//! RegisteredNode / RemovingNode when a node appears or disappears and NodeNotReady when it
//! goes silent; on each pod NodeNotReady (Warning) when it is marked not ready; and
//! TaintManagerEviction (`taint-eviction-controller`) for each eviction.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use parking_lot::Mutex;
use serde_json::json;

use super::{is_status, Controller, Ctx, Result};
use crate::events::{node_ref, EventType};
use crate::queue::WorkQueue;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint of a cordoned node (`spec.unschedulable`).
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Node condition type → the NoSchedule taint it carries while True, as upstream's node
/// lifecycle controller maps them.
pub const CONDITION_TAINTS: &[(&str, &str)] = &[
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];

/// The NoSchedule taints a node's conditions and cordon call for.
pub fn condition_taints(n: &Node) -> Vec<(&'static str, &'static str)> {
    let conds = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let mut want: Vec<(&'static str, &'static str)> = CONDITION_TAINTS
        .iter()
        .filter(|(ty, _)| conds.iter().any(|c| c.type_ == *ty && c.status == "True"))
        .map(|(_, key)| (*key, "NoSchedule"))
        .collect();
    if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        want.push((UNSCHEDULABLE, "NoSchedule"));
    }
    want
}
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The reporting controller of upstream's node lifecycle events.
const NODE_COMPONENT: &str = "node-controller";
/// The reporting controller of upstream's (1.29+) taint-based evictions.
const TAINT_COMPONENT: &str = "taint-eviction-controller";
const LEASE_NS: &str = "kube-node-lease";

#[derive(Default)]
struct Probe {
    stamp: String,
    seen: Option<Instant>,
}

pub fn controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    // One key: health is a cluster-wide decision (zones), re-evaluated every monitor period.
    let q = queue.clone();
    ctx.inf.nodes.on_change(move |_, _| q.add("nodes"));
    ctx.inf.leases.mark_used();
    let q = queue.clone();
    ctx.inf.pods.on_change(move |p, _| {
        if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
            q.add("nodes");
        }
    });
    let c = ctx.clone();
    let probes: Arc<Mutex<HashMap<String, Probe>>> = Arc::default();
    // Per zone: when its NoExecute limiter has its next token.
    let limiters: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let period = ctx.settings.node_monitor_period;
    Controller::new("node-lifecycle-controller", queue, 1, move |_| {
        let (c, p, l) = (c.clone(), probes.clone(), limiters.clone());
        async move { monitor(&c, &p, &l).await }
    })
    .resync(period, || vec!["nodes".into()])
}

fn ready_condition(n: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn has_taint(n: &Node, key: &str, effect: &str) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == key && t.effect == effect))
}

/// A zone's health, as upstream's `ComputeZoneState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneState {
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// The state of a zone with `total` nodes of which `unhealthy` are not ready or unreachable.
pub fn zone_state(total: usize, unhealthy: usize, threshold: f64) -> ZoneState {
    let ready = total.saturating_sub(unhealthy);
    if ready == 0 && unhealthy > 0 {
        ZoneState::FullDisruption
    } else if unhealthy > 2 && unhealthy as f64 / total as f64 >= threshold {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// Nodes per second a zone may have tainted NoExecute (upstream's `setLimiterInZone` with
/// `HealthyQPSFunc`/`ReducedQPSFunc`).
pub fn zone_eviction_rate(
    state: ZoneState,
    zone_size: usize,
    all_fully_disrupted: bool,
    s: &super::Settings,
) -> f64 {
    if all_fully_disrupted {
        return 0.0;
    }
    match state {
        ZoneState::Normal | ZoneState::FullDisruption => s.node_eviction_rate,
        ZoneState::PartialDisruption if zone_size > s.large_cluster_size_threshold => {
            s.secondary_node_eviction_rate
        }
        ZoneState::PartialDisruption => 0.0,
    }
}

async fn monitor(
    ctx: &Ctx,
    probes: &Mutex<HashMap<String, Probe>>,
    limiters: &Mutex<HashMap<String, Instant>>,
) -> Result<Option<Duration>> {
    let grace = ctx.settings.node_monitor_grace_period;
    let nodes = ctx.inf.nodes.list();
    // 1. Health per node, on our clock.
    let mut health: BTreeMap<String, (bool, Option<&'static str>)> = BTreeMap::new();
    {
        let mut pr = probes.lock();
        pr.retain(|k, _| {
            let known = nodes.iter().any(|n| n.metadata.name.as_deref() == Some(k));
            if !known {
                ctx.events.event_ref(
                    NODE_COMPONENT,
                    node_ref(k),
                    EventType::Normal,
                    "RemovingNode",
                    format!("Node {k} event: Removing Node {k} from Controller"),
                );
            }
            known
        });
        for n in &nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            if !pr.contains_key(&name) {
                ctx.events.event_ref(
                    NODE_COMPONENT,
                    node_ref(&name),
                    EventType::Normal,
                    "RegisteredNode",
                    format!("Node {name} event: Registered Node {name} in Controller"),
                );
            }
            let lease = ctx.inf.leases.get(Some(LEASE_NS), &name);
            let stamp = format!(
                "{:?}/{:?}",
                lease
                    .as_ref()
                    .and_then(|l| l.spec.as_ref())
                    .and_then(|s| s.renew_time.as_ref())
                    .map(|t| t.0),
                ready_condition(n)
                    .and_then(|c| c.last_heartbeat_time.as_ref())
                    .map(|t| t.0)
            );
            let p = pr.entry(name.clone()).or_default();
            if p.stamp != stamp || p.seen.is_none() {
                p.stamp = stamp;
                p.seen = Some(Instant::now());
            }
            let stale = p.seen.is_some_and(|s| s.elapsed() > grace);
            let ready = ready_condition(n).map(|c| c.status.as_str());
            let problem = if stale {
                Some(UNREACHABLE)
            } else if ready == Some("False") {
                Some(NOT_READY)
            } else if ready == Some("Unknown") {
                Some(UNREACHABLE)
            } else {
                None
            };
            health.insert(name, (stale, problem));
        }
    }
    // 2. Zone disruption.
    let mut zones: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for n in &nodes {
        let z = n
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL).cloned())
            .unwrap_or_default();
        let bad = health
            .get(n.metadata.name.as_deref().unwrap_or_default())
            .is_some_and(|h| h.1.is_some());
        let e = zones.entry(z).or_default();
        e.0 += 1;
        e.1 += usize::from(bad);
    }
    let states: BTreeMap<&str, (usize, ZoneState)> = zones
        .iter()
        .map(|(z, (t, b))| {
            let st = zone_state(*t, *b, ctx.settings.unhealthy_zone_threshold);
            (z.as_str(), (*t, st))
        })
        .collect();
    let all_fully_disrupted = !states.is_empty()
        && states
            .values()
            .all(|(_, s)| *s == ZoneState::FullDisruption);
    let rate_in = |z: &str| {
        states.get(z).map_or(0.0, |(size, st)| {
            zone_eviction_rate(*st, *size, all_fully_disrupted, &ctx.settings)
        })
    };
    let mut again: Option<Duration> = None;
    // 3. Conditions and taints.
    let api: Api<Node> = Api::all(ctx.client.clone());
    let now = Time(Timestamp::now());
    for n in &nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let (stale, problem) = health.get(&name).cloned().unwrap_or((false, None));
        let zone = n
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL).cloned())
            .unwrap_or_default();
        if stale && ready_condition(n).is_none_or(|c| c.status != "Unknown") {
            let mut conds = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            if !conds.iter().any(|c| c.type_ == "Ready") {
                conds.push(k8s_openapi::api::core::v1::NodeCondition {
                    type_: "Ready".into(),
                    ..Default::default()
                });
            }
            for c in conds.iter_mut() {
                if c.status != "Unknown" {
                    c.last_transition_time = Some(now.clone());
                }
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
            }
            kelson_runtime::log_event!(
                tracing::Level::WARN,
                kelson_runtime::events::NODE_NOT_READY,
                node = %name,
                "node stopped renewing; marking Ready=Unknown"
            );
            // Conditions are a merge-keyed list; a strategic patch would need the type key, so
            // send the whole list with a merge patch.
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": conds}})),
            )
            .await?;
            ctx.events.event_ref(
                NODE_COMPONENT,
                node_ref(&name),
                EventType::Normal,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
        }
        if problem.is_some() {
            mark_pods_not_ready(ctx, &name).await?;
        }
        let mut want: Vec<(&str, &str)> = Vec::new();
        if let Some(key) = problem {
            want.push((key, "NoSchedule"));
            // Already evicting (under either key: a swap is not a new eviction) unless the
            // whole cluster is dark; otherwise only when the zone's limiter has a token.
            let evicting =
                has_taint(n, UNREACHABLE, "NoExecute") || has_taint(n, NOT_READY, "NoExecute");
            let rate = rate_in(&zone);
            let allowed = !all_fully_disrupted
                && (evicting || {
                    let mut lim = limiters.lock();
                    let now_i = Instant::now();
                    match lim.get(&zone) {
                        _ if rate <= 0.0 => false,
                        Some(next) if *next > now_i => {
                            let wait = *next - now_i;
                            again = Some(again.map_or(wait, |a| a.min(wait)));
                            false
                        }
                        _ => {
                            lim.insert(zone.clone(), now_i + Duration::from_secs_f64(1.0 / rate));
                            true
                        }
                    }
                });
            if allowed {
                want.push((key, "NoExecute"));
            }
        }
        // TaintNodesByCondition: a pressure or network condition that is True, and a cordoned
        // node, keep new pods away (NoSchedule only; eviction under pressure is the kubelet's,
        // and NodeRestriction does not let a kubelet taint its own node).
        want.extend(condition_taints(n));
        let managed = |t: &Taint| {
            t.key == UNREACHABLE
                || t.key == NOT_READY
                || CONDITION_TAINTS.iter().any(|(_, k)| t.key == *k)
                || t.key == UNSCHEDULABLE
        };
        let cur: Vec<Taint> = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let mut next: Vec<Taint> = cur
            .iter()
            .filter(|t| !managed(t) || want.iter().any(|(k, e)| t.key == *k && t.effect == *e))
            .cloned()
            .collect();
        for (k, e) in &want {
            if !has_taint(n, k, e) {
                next.push(Taint {
                    key: (*k).into(),
                    effect: (*e).into(),
                    time_added: Some(now.clone()),
                    value: None,
                });
            }
        }
        if next != cur {
            tracing::info!(node = %name, taints = ?want, "updating node lifecycle taints");
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": next}})),
            )
            .await?;
        }
    }
    // 4. NoExecute eviction.
    for n in &nodes {
        let taints: Vec<Taint> = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.effect == "NoExecute")
            .collect();
        if taints.is_empty() {
            continue;
        }
        let name = n.metadata.name.as_deref().unwrap_or_default();
        for p in ctx.inf.pods.list() {
            if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(name)
                || p.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            match eviction_delay(&p, &taints, Timestamp::now()) {
                None => {}
                Some(d) if d.is_zero() => {
                    let pn = p.metadata.name.as_deref().unwrap_or_default();
                    tracing::info!(pod = %pn, node = %name, "evicting pod from tainted node");
                    let pns = p.metadata.namespace.as_deref().unwrap_or_default();
                    let papi: Api<Pod> = Api::namespaced(ctx.client.clone(), pns);
                    match papi.delete(pn, &DeleteParams::default()).await {
                        Ok(_) => ctx.events.event(
                            TAINT_COMPONENT,
                            &*p,
                            EventType::Normal,
                            "TaintManagerEviction",
                            format!("Marking for deletion Pod {pns}/{pn}"),
                        ),
                        Err(e) if is_status(&e, 404) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(d) => again = Some(again.map_or(d, |a| a.min(d))),
            }
        }
    }
    Ok(again)
}

/// Upstream's `MarkPodsNotReady`: every pod on `node` whose Ready condition is True gets it
/// set to False (its kubelet cannot), and a NodeNotReady event.
async fn mark_pods_not_ready(ctx: &Ctx, node: &str) -> Result<()> {
    let now = Time(Timestamp::now());
    for p in ctx.inf.pods.list() {
        if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node)
            || p.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let Some(mut conds) = p.status.as_ref().and_then(|s| s.conditions.clone()) else {
            continue;
        };
        let Some(ready) = conds
            .iter_mut()
            .find(|c| c.type_ == "Ready" && c.status == "True")
        else {
            continue;
        };
        ready.status = "False".into();
        ready.last_transition_time = Some(now.clone());
        let pn = p.metadata.name.as_deref().unwrap_or_default();
        let papi: Api<Pod> = Api::namespaced(
            ctx.client.clone(),
            p.metadata.namespace.as_deref().unwrap_or_default(),
        );
        // The uid precondition keeps a recreated pod of the same name out of it.
        let patch = json!({"metadata": {"uid": p.metadata.uid}, "status": {"conditions": conds}});
        match papi
            .patch_status(pn, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => ctx.events.event(
                NODE_COMPONENT,
                &*p,
                EventType::Warning,
                "NodeNotReady",
                "Node is not ready",
            ),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            t.key.as_deref() == Some(taint.key.as_str())
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// `None`: the pod tolerates every taint forever. `Some(0)`: evict now. `Some(d)`: evict in d.
pub fn eviction_delay(p: &Pod, taints: &[Taint], now: Timestamp) -> Option<Duration> {
    let tols: Vec<Toleration> = p
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut delay: Option<Duration> = None;
    for taint in taints {
        let matching: Vec<&Toleration> = tols.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // The shortest tolerationSeconds among matching tolerations wins; none means forever.
        let secs = matching.iter().filter_map(|t| t.toleration_seconds).min();
        if let Some(s) = secs {
            let added = taint
                .time_added
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(now.as_second());
            let left = (added + s.max(0) - now.as_second()).max(0) as u64;
            let d = Duration::from_secs(left);
            delay = Some(delay.map_or(d, |x| x.min(d)));
        }
    }
    delay
}

pub fn podgc_controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.nodes.on_change(move |_, change| {
        if change == crate::informer::Change::Deleted {
            q.add("pods");
        }
    });
    ctx.inf.pods.mark_used();
    let c = ctx.clone();
    Controller::new("pod-garbage-collector-controller", queue, 1, move |_| {
        let c = c.clone();
        async move { pod_gc(&c).await }
    })
    .resync(Duration::from_secs(20), || vec!["pods".into()])
}

/// Force-deletes pods bound to nodes that no longer exist (checked against the API, not only
/// the cache).
async fn pod_gc(ctx: &Ctx) -> Result<Option<Duration>> {
    let napi: Api<Node> = Api::all(ctx.client.clone());
    let mut missing: HashMap<String, bool> = HashMap::new();
    for p in ctx.inf.pods.list() {
        let Some(node) = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        if ctx.inf.nodes.get(None, &node).is_some() {
            continue;
        }
        let gone = match missing.get(&node) {
            Some(g) => *g,
            None => {
                let g = napi.get_opt(&node).await?.is_none();
                missing.insert(node.clone(), g);
                g
            }
        };
        if gone {
            let papi: Api<Pod> = Api::namespaced(
                ctx.client.clone(),
                p.metadata.namespace.as_deref().unwrap_or_default(),
            );
            tracing::info!(pod = ?p.metadata.name, %node, "deleting orphaned pod");
            match papi
                .delete(
                    p.metadata.name.as_deref().unwrap_or_default(),
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(None)
}

/// Parses an IPv4 CIDR (`10.244.0.0/16`).
pub fn parse_cidr(s: &str) -> std::result::Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{s:?}: invalid IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{s:?}: invalid prefix length"))?;
    Ok((ip, len))
}

/// The `idx`-th subnet of size `/mask` inside `cidr`, if it fits.
pub fn nth_subnet(cidr: (Ipv4Addr, u8), mask: u8, idx: u32) -> Option<String> {
    if mask < cidr.1 || mask > 32 {
        return None;
    }
    let count: u64 = 1u64 << (mask - cidr.1);
    if u64::from(idx) >= count {
        return None;
    }
    let base = u32::from(cidr.0)
        & (if cidr.1 == 0 {
            0
        } else {
            u32::MAX << (32 - cidr.1)
        });
    let step = if mask == 32 {
        1u64
    } else {
        1u64 << (32 - mask)
    };
    let ip = u64::from(base) + u64::from(idx) * step;
    Some(format!("{}/{mask}", Ipv4Addr::from(ip as u32)))
}

pub fn ipam_controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    let enabled = ctx.settings.cluster_cidr.is_some();
    ctx.inf.nodes.on_change(move |n, _| {
        if enabled && n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none() {
            q.add("nodes");
        }
    });
    let c = ctx.clone();
    Controller::new("node-ipam-controller", queue, 1, move |_| {
        let c = c.clone();
        async move { allocate(&c).await }
    })
}

async fn allocate(ctx: &Ctx) -> Result<Option<Duration>> {
    let Some(cidr) = &ctx.settings.cluster_cidr else {
        return Ok(None);
    };
    let cidr = parse_cidr(cidr).map_err(super::Error::Other)?;
    let mask = ctx.settings.node_cidr_mask_size;
    let nodes = ctx.inf.nodes.list();
    let mut used: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
        .collect();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut sorted: Vec<_> = nodes
        .iter()
        .filter(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none())
        .collect();
    sorted.sort_by_key(|n| n.metadata.name.clone());
    for n in sorted {
        let mut idx = 0u32;
        let pick = loop {
            match nth_subnet(cidr, mask, idx) {
                Some(s) if used.contains(&s) => idx += 1,
                other => break other,
            }
        };
        let Some(sub) = pick else {
            return Err(super::Error::Other(format!(
                "--cluster-cidr exhausted: no free /{mask} for node {:?}",
                n.metadata.name
            )));
        };
        tracing::info!(node = ?n.metadata.name, cidr = %sub, "allocated pod CIDR");
        api.patch(
            n.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podCIDR": sub, "podCIDRs": [sub]}})),
        )
        .await?;
        used.push(sub);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let c = parse_cidr("10.244.0.0/16").unwrap();
        assert_eq!(nth_subnet(c, 24, 0).unwrap(), "10.244.0.0/24");
        assert_eq!(nth_subnet(c, 24, 3).unwrap(), "10.244.3.0/24");
        assert!(nth_subnet(c, 24, 256).is_none());
        assert!(parse_cidr("10.0.0.0/40").is_err());
        assert!(parse_cidr("nope").is_err());
    }

    #[test]
    fn toleration_seconds_delay_eviction() {
        let now = Timestamp::now();
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(now)),
            value: None,
        };
        let mut p = Pod::default();
        assert_eq!(
            eviction_delay(&p, std::slice::from_ref(&taint), now),
            Some(Duration::ZERO)
        );
        p.spec = Some(Default::default());
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(30),
            ..Default::default()
        }]);
        assert_eq!(
            eviction_delay(&p, std::slice::from_ref(&taint), now),
            Some(Duration::from_secs(30))
        );
        p.spec.as_mut().unwrap().tolerations.as_mut().unwrap()[0].toleration_seconds = None;
        assert_eq!(eviction_delay(&p, &[taint], now), None);
    }
}
