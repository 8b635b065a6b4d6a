//! Which pod goes first, and what its status says — upstream's ranking and messages.
//!
//! - memory: pods whose usage exceeds their requests first, then lower priority first, then
//!   the largest usage above requests (a BestEffort pod requests nothing, so any usage
//!   exceeds; a Guaranteed pod within its requests goes last);
//! - ephemeral storage (nodefs/imagefs bytes): the same with ephemeral-storage requests and
//!   the pod's volumes + logs usage;
//! - inodes and PIDs: lower priority first, then the largest usage.
//!
//! Critical pods (static and mirror pods, priority ≥ system-critical's 2000000000) are never
//! evicted, as upstream.
//!
//! The message is upstream's, word for word in its fixed parts, because people and tools
//! match on it: "The node was low on resource: memory. Threshold quantity: 100Mi, available:
//! 50Mi. Container c was using 20Mi, request is 0, has larger consumption of memory. "

use std::cmp::Ordering;

use k8s_openapi::api::core::v1::Pod;

use super::signals::{Observation, PodUsage};
use super::thresholds::{format_bytes, format_value, Signal, Threshold};
use crate::resources::parse_value;

/// Upstream's scheduling.SystemCriticalPriority.
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// A pod with its measured usage.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub pod: std::sync::Arc<Pod>,
    pub usage: PodUsage,
}

/// Never evicted by the kubelet.
pub fn is_critical(pod: &Pod) -> bool {
    crate::pod::is_static(pod)
        || crate::static_pods::is_mirror(pod)
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.priority)
            .is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

fn priority(p: &Pod) -> i32 {
    p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Sum of the containers' requests of `resource` (a limit stands in for a missing request, as
/// the API server's defaulting would make it).
pub fn request(p: &Pod, resource: &str) -> i128 {
    p.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| container_request(c, resource))
        .sum()
}

fn container_request(c: &k8s_openapi::api::core::v1::Container, resource: &str) -> i128 {
    let r = c.resources.as_ref();
    let get = |m: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >| {
        m.and_then(|m| m.get(resource))
            .and_then(|q| parse_value(&q.0))
    };
    get(r.and_then(|r| r.requests.as_ref()))
        .or_else(|| get(r.and_then(|r| r.limits.as_ref())))
        .unwrap_or(0)
}

fn usage_of(signal: Signal, u: &PodUsage) -> i128 {
    match signal {
        Signal::MemoryAvailable => u.memory,
        Signal::NodeFsAvailable | Signal::ImageFsAvailable => u.disk,
        Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => u.inodes,
        Signal::PidAvailable => u.pids,
    }
    .unwrap_or(0)
}

fn requested(signal: Signal, p: &Pod) -> Option<i128> {
    match signal {
        Signal::MemoryAvailable => Some(request(p, "memory")),
        Signal::NodeFsAvailable | Signal::ImageFsAvailable => Some(request(p, "ephemeral-storage")),
        _ => None,
    }
}

/// Upstream's order for `signal`: the first candidate is evicted first.
pub fn rank(signal: Signal, cands: &mut [Candidate]) {
    cands.sort_by(|a, b| compare(signal, a, b));
}

fn compare(signal: Signal, a: &Candidate, b: &Candidate) -> Ordering {
    let (ua, ub) = (usage_of(signal, &a.usage), usage_of(signal, &b.usage));
    match (requested(signal, &a.pod), requested(signal, &b.pod)) {
        (Some(ra), Some(rb)) => {
            // Exceeding requests first (true sorts before false).
            (ub > rb)
                .cmp(&(ua > ra))
                .then(priority(&a.pod).cmp(&priority(&b.pod)))
                .then((ub - rb).cmp(&(ua - ra)))
        }
        _ => priority(&a.pod).cmp(&priority(&b.pod)).then(ub.cmp(&ua)),
    }
}

/// The status message (and Event message) of a pod evicted for `t`.
pub fn message(t: &Threshold, observed: Observation, c: &Candidate) -> String {
    let resource = t.signal.resource();
    let mut m = format!(
        "The node was low on resource: {resource}. Threshold quantity: {}, available: {}. ",
        format_value(t.signal, t.value.resolve(observed.capacity)),
        format_value(t.signal, observed.available),
    );
    if t.signal == Signal::MemoryAvailable {
        for (name, used) in &c.usage.container_memory {
            let req = c
                .pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .find(|x| &x.name == name)
                .map(|x| container_request(x, "memory"))
                .unwrap_or(0);
            if *used > req {
                m.push_str(&format!(
                    "Container {name} was using {}, request is {}, has larger consumption of {resource}. ",
                    format_bytes(*used),
                    format_bytes(req)
                ));
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::super::thresholds::parse_thresholds;
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn pod(name: &str, resources: serde_json::Value, priority: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "uid": name},
                "spec": {"priority": priority, "containers": [{"name": "c", "resources": resources}]},
            }))
            .unwrap(),
        )
    }

    fn cand(p: Arc<Pod>, mem: i128) -> Candidate {
        Candidate {
            pod: p,
            usage: PodUsage {
                memory: Some(mem),
                container_memory: vec![("c".into(), mem)],
                ..Default::default()
            },
        }
    }

    #[test]
    fn besteffort_goes_before_guaranteed_then_priority_then_usage() {
        let g = json!({"requests": {"memory": "100Mi", "cpu": "100m"}, "limits": {"memory": "100Mi", "cpu": "100m"}});
        let mut c = vec![
            cand(pod("guaranteed", g.clone(), 0), 50 << 20),
            cand(pod("besteffort-small", json!({}), 0), 1 << 20),
            cand(pod("besteffort-high-prio", json!({}), 1000), 500 << 20),
            cand(pod("besteffort-big", json!({}), 0), 10 << 20),
            // Over its request: ranks with the BestEffort pods.
            cand(pod("guaranteed-over", g, 0), 200 << 20),
        ];
        rank(Signal::MemoryAvailable, &mut c);
        let order: Vec<&str> = c
            .iter()
            .map(|c| c.pod.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            order,
            vec![
                "guaranteed-over",
                "besteffort-big",
                "besteffort-small",
                "besteffort-high-prio",
                "guaranteed"
            ]
        );
    }

    #[test]
    fn pids_rank_by_priority_then_count_and_critical_pods_are_spared() {
        let mut a = cand(pod("a", json!({}), 0), 0);
        a.usage.pids = Some(5);
        let mut b = cand(pod("b", json!({}), 0), 0);
        b.usage.pids = Some(50);
        let mut c = vec![a, b];
        rank(Signal::PidAvailable, &mut c);
        assert_eq!(c[0].pod.metadata.name.as_deref(), Some("b"));
        assert!(is_critical(&pod("x", json!({}), SYSTEM_CRITICAL_PRIORITY)));
        assert!(!is_critical(&pod("x", json!({}), 0)));
    }

    #[test]
    fn the_message_is_upstreams() {
        let t = &parse_thresholds(Some("memory.available<100Mi"), None, None, None).unwrap()[0];
        let c = cand(pod("p", json!({}), 0), 20 << 20);
        let m = message(
            t,
            Observation {
                available: 50 << 20,
                capacity: 1 << 30,
            },
            &c,
        );
        assert_eq!(
            m,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. \
             Container c was using 20Mi, request is 0, has larger consumption of memory. "
        );
    }
}
