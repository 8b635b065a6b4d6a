//! The disruption controller: PodDisruptionBudget status for the eviction API.
//!
//! As upstream's `getExpectedPodCount`: with an integer `minAvailable` the expected count is
//! the number of selected pods and desiredHealthy is minAvailable; with a percentage
//! `minAvailable` or any `maxUnavailable` the expected count is the scale of the pods'
//! controllers (Deployment via its ReplicaSet, ReplicaSet, StatefulSet; each counted once),
//! desiredHealthy = ceil(pct · expected) or expected − maxUnavailable (percentages rounded
//! up). currentHealthy counts selected pods that are Ready and not being deleted;
//! disruptionsAllowed = max(0, currentHealthy − desiredHealthy) (0 when nothing is
//! expected). A selected pod without a scalable controller makes the count unknowable: then
//! disruptionsAllowed is 0 with `DisruptionAllowed=False, reason SyncFailed`, upstream's fail
//! safe.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use serde_json::json;

use super::{patch_status, Controller, Ctx, Result};
use crate::informer::{key_of, split_key, Informer, Object};
use crate::queue::WorkQueue;
use crate::util;

/// Queues every budget of a namespace when an object of `inf` in it changes.
fn budgets_follow<K: Object>(inf: &Informer<K>, queue: &WorkQueue, ctx: &Ctx) {
    let (q, pdbs) = (queue.clone(), ctx.inf.pdbs.clone());
    inf.on_change(move |o, _| {
        for p in pdbs.list_ns(o.meta().namespace.as_deref().unwrap_or_default()) {
            q.add(key_of(&*p));
        }
    });
}

pub fn controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.pdbs.on_change(move |p, _| q.add(key_of(p)));
    // Any change of pods or scale in a namespace may change its budgets.
    budgets_follow(&ctx.inf.pods, &queue, ctx);
    budgets_follow(&ctx.inf.replicasets, &queue, ctx);
    budgets_follow(&ctx.inf.deployments, &queue, ctx);
    budgets_follow(&ctx.inf.statefulsets, &queue, ctx);
    let c = ctx.clone();
    let pdbs = ctx.inf.pdbs.clone();
    Controller::new("disruption-controller", queue, 1, move |key| {
        let c = c.clone();
        async move { reconcile(&c, &key).await }
    })
    .resync(Duration::from_secs(30), move || {
        pdbs.list().iter().map(|p| key_of(&**p)).collect()
    })
}

/// The scale of a pod's controller, as `(kind/uid, replicas)`, if it has a scalable one.
fn controller_scale(
    ctx: &Ctx,
    ns: &str,
    p: &k8s_openapi::api::core::v1::Pod,
) -> Option<(String, i32)> {
    let r = util::controller_of(&p.metadata)?;
    match r.kind.as_str() {
        "ReplicaSet" => {
            let rs = ctx.inf.replicasets.get(Some(ns), &r.name)?;
            // A Deployment's ReplicaSets share the Deployment's scale.
            if let Some(d) = util::controller_of(&rs.metadata).filter(|d| d.kind == "Deployment") {
                let dep = ctx.inf.deployments.get(Some(ns), &d.name)?;
                let n = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                return Some((format!("Deployment/{}", d.uid), n));
            }
            let n = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            Some((format!("ReplicaSet/{}", r.uid), n))
        }
        "StatefulSet" => {
            let s = ctx.inf.statefulsets.get(Some(ns), &r.name)?;
            let n = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            Some((format!("StatefulSet/{}", r.uid), n))
        }
        _ => None,
    }
}

/// `(expected, desiredHealthy)` or an error message.
pub fn budget(
    min_available: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    pod_count: i32,
    scale: Option<i32>,
) -> std::result::Result<(i32, i32), String> {
    let pct = |s: &str| s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok());
    match (min_available, max_unavailable) {
        (Some(IntOrString::Int(n)), None) => Ok((pod_count, *n)),
        (Some(IntOrString::String(s)), None) => {
            let p = pct(s).ok_or_else(|| format!("invalid minAvailable {s:?}"))?;
            let exp = scale.ok_or("found pods without a scalable controller")?;
            Ok((exp, ((p * i64::from(exp) + 99) / 100) as i32))
        }
        (None, Some(m)) => {
            let exp = scale.ok_or("found pods without a scalable controller")?;
            let mu = util::scaled_value(Some(m), exp, "0", true);
            Ok((exp, (exp - mu).max(0)))
        }
        // Neither set: upstream treats it as minAvailable 1? No: an empty budget allows
        // nothing to be reasoned about; keep everything (desired = count).
        (None, None) => Ok((pod_count, pod_count)),
        (Some(_), Some(_)) => Err("minAvailable and maxUnavailable are exclusive".into()),
    }
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Option<Duration>> {
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let Some(pdb) = ctx.inf.pdbs.get(Some(ns), name) else {
        return Ok(None);
    };
    let spec = pdb.spec.clone().unwrap_or_default();
    let sel = spec.selector.clone().unwrap_or_default();
    let pods: Vec<_> = ctx
        .inf
        .pods
        .list_ns(ns)
        .into_iter()
        .filter(|p| util::selector_matches(&sel, p.metadata.labels.as_ref()))
        .collect();
    let healthy = pods
        .iter()
        .filter(|p| util::is_pod_ready(p) && !util::is_deleting(&p.metadata))
        .count() as i32;
    let mut seen = HashSet::new();
    let mut scale = Some(0);
    for p in &pods {
        match controller_scale(ctx, ns, p) {
            Some((k, n)) => {
                if seen.insert(k) {
                    scale = scale.map(|s| s + n);
                }
            }
            None => scale = None,
        }
    }
    let now = Timestamp::now();
    let old = pdb.status.clone().unwrap_or_default();
    let mut st = PodDisruptionBudgetStatus {
        observed_generation: pdb.metadata.generation,
        current_healthy: healthy,
        disrupted_pods: old.disrupted_pods.clone(),
        ..Default::default()
    };
    let (status, reason, message) = match budget(
        spec.min_available.as_ref(),
        spec.max_unavailable.as_ref(),
        pods.len() as i32,
        scale,
    ) {
        Ok((expected, desired)) => {
            st.expected_pods = expected;
            st.desired_healthy = desired;
            st.disruptions_allowed = if expected <= 0 {
                0
            } else {
                (healthy - desired).max(0)
            };
            if st.disruptions_allowed > 0 {
                ("True", "SufficientPods", String::new())
            } else {
                ("False", "InsufficientPods", String::new())
            }
        }
        Err(e) => ("False", "SyncFailed", e),
    };
    let prev = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed");
    let ltt = match prev {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    st.conditions = Some(vec![Condition {
        type_: "DisruptionAllowed".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: pdb.metadata.generation,
        last_transition_time: ltt,
    }]);
    if pdb.status.as_ref() != Some(&st) {
        let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), ns);
        patch_status(&api, name, json!({"status": st})).await?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets() {
        let s = |x: &str| IntOrString::String(x.into());
        assert_eq!(
            budget(Some(&IntOrString::Int(2)), None, 3, None),
            Ok((3, 2))
        );
        assert_eq!(budget(Some(&s("50%")), None, 3, Some(3)), Ok((3, 2)));
        assert_eq!(
            budget(None, Some(&IntOrString::Int(1)), 3, Some(4)),
            Ok((4, 3))
        );
        assert_eq!(budget(None, Some(&s("25%")), 4, Some(5)), Ok((5, 3)));
        assert!(budget(None, Some(&IntOrString::Int(1)), 3, None).is_err());
    }
}
