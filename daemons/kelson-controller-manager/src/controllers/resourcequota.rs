//! The resourcequota controller: `status.used` of every ResourceQuota.
//!
//! For each resource named in `spec.hard` (upstream computes only what is constrained) the
//! namespace's usage is summed from the informer caches: object counts (`pods`, `services`,
//! `services.nodeports`, `services.loadbalancers`, `configmaps`, `secrets`,
//! `persistentvolumeclaims`, `replicationcontrollers`, `resourcequotas` and the
//! `count/<resource>[.<group>]` forms of those and of the workload kinds), compute
//! (`requests.cpu`/`cpu`, `requests.memory`/`memory`, `limits.cpu`, `limits.memory`) over
//! pods that are not terminal — a pod's request is max(sum over containers, largest init
//! container) plus overhead, as upstream's `PodRequests` — and `requests.storage` over PVCs.
//! `status.hard` mirrors `spec.hard`. Quotas are recalculated when anything counted changes
//! and on every resync (upstream's `--resource-quota-sync-period`, here 30 s).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ResourceQuota, ResourceQuotaStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::Api;

use super::quantity::{format_milli, parse_milli};
use super::{is_status, Controller, Ctx, Result};
use crate::informer::{key_of, split_key, Informer};
use crate::queue::WorkQueue;

pub fn controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.quotas.on_change(move |r, _| q.add(key_of(r)));
    fn watch<K: crate::informer::Object>(
        inf: &Informer<K>,
        q: &WorkQueue,
        quotas: &Informer<ResourceQuota>,
    ) {
        let (q, quotas) = (q.clone(), quotas.clone());
        inf.on_change(move |o, _| {
            for r in quotas.list_ns(o.meta().namespace.as_deref().unwrap_or_default()) {
                q.add(key_of(&*r));
            }
        });
    }
    watch(&ctx.inf.pods, &queue, &ctx.inf.quotas);
    watch(&ctx.inf.services, &queue, &ctx.inf.quotas);
    watch(&ctx.inf.configmaps, &queue, &ctx.inf.quotas);
    watch(&ctx.inf.secrets, &queue, &ctx.inf.quotas);
    watch(&ctx.inf.pvcs, &queue, &ctx.inf.quotas);
    let c = ctx.clone();
    let quotas = ctx.inf.quotas.clone();
    Controller::new("resourcequota-controller", queue, 1, move |key| {
        let c = c.clone();
        async move { reconcile(&c, &key).await }
    })
    .resync(Duration::from_secs(30), move || {
        quotas.list().iter().map(|q| key_of(&**q)).collect()
    })
}

fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// A pod's effective request/limit of `res` in milli-units.
pub fn pod_amount(p: &Pod, res: &str, limits: bool) -> i128 {
    let Some(spec) = &p.spec else { return 0 };
    let get = |r: &Option<k8s_openapi::api::core::v1::ResourceRequirements>| -> i128 {
        r.as_ref()
            .and_then(|r| {
                if limits {
                    r.limits.as_ref()
                } else {
                    r.requests.as_ref()
                }
            })
            .and_then(|m| m.get(res))
            .and_then(|q| parse_milli(&q.0))
            .unwrap_or(0)
    };
    let sum: i128 = spec.containers.iter().map(|c| get(&c.resources)).sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| get(&c.resources))
        .max()
        .unwrap_or(0);
    let overhead = spec
        .overhead
        .as_ref()
        .and_then(|m| m.get(res))
        .and_then(|q| parse_milli(&q.0))
        .unwrap_or(0);
    sum.max(init) + overhead
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Option<Duration>> {
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let Some(rq) = ctx.inf.quotas.get(Some(ns), name) else {
        return Ok(None);
    };
    let hard = rq
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let pods: Vec<_> = ctx
        .inf
        .pods
        .list_ns(ns)
        .into_iter()
        .filter(|p| !is_terminal(p))
        .collect();
    let services = ctx.inf.services.list_ns(ns);
    let svc_type = |t: &str| {
        services
            .iter()
            .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some(t))
            .count()
    };
    let mut used = BTreeMap::new();
    for res in hard.keys() {
        let count = |n: usize| Some(Quantity(n.to_string()));
        let base = res.strip_prefix("count/").unwrap_or(res);
        let v = match base {
            "pods" => count(pods.len()),
            "services" => count(services.len()),
            "services.nodeports" => Some(Quantity(
                services
                    .iter()
                    .filter(|s| {
                        matches!(
                            s.spec.as_ref().and_then(|s| s.type_.as_deref()),
                            Some("NodePort") | Some("LoadBalancer")
                        )
                    })
                    .map(|s| {
                        s.spec
                            .as_ref()
                            .and_then(|s| s.ports.as_ref())
                            .map_or(0, |p| p.len())
                    })
                    .sum::<usize>()
                    .to_string(),
            )),
            "services.loadbalancers" => count(svc_type("LoadBalancer")),
            "configmaps" => count(ctx.inf.configmaps.list_ns(ns).len()),
            "secrets" => count(ctx.inf.secrets.list_ns(ns).len()),
            "persistentvolumeclaims" => count(ctx.inf.pvcs.list_ns(ns).len()),
            "resourcequotas" => count(ctx.inf.quotas.list_ns(ns).len()),
            "deployments.apps" => count(ctx.inf.deployments.list_ns(ns).len()),
            "replicasets.apps" => count(ctx.inf.replicasets.list_ns(ns).len()),
            "statefulsets.apps" => count(ctx.inf.statefulsets.list_ns(ns).len()),
            "daemonsets.apps" => count(ctx.inf.daemonsets.list_ns(ns).len()),
            "jobs.batch" => count(ctx.inf.jobs.list_ns(ns).len()),
            "cronjobs.batch" => count(ctx.inf.cronjobs.list_ns(ns).len()),
            "cpu" | "requests.cpu" => Some(Quantity(format_milli(
                pods.iter().map(|p| pod_amount(p, "cpu", false)).sum(),
                false,
            ))),
            "memory" | "requests.memory" => Some(Quantity(format_milli(
                pods.iter().map(|p| pod_amount(p, "memory", false)).sum(),
                true,
            ))),
            "limits.cpu" => Some(Quantity(format_milli(
                pods.iter().map(|p| pod_amount(p, "cpu", true)).sum(),
                false,
            ))),
            "limits.memory" => Some(Quantity(format_milli(
                pods.iter().map(|p| pod_amount(p, "memory", true)).sum(),
                true,
            ))),
            "requests.storage" => Some(Quantity(format_milli(
                ctx.inf
                    .pvcs
                    .list_ns(ns)
                    .iter()
                    .filter_map(|c| {
                        let q = c
                            .spec
                            .as_ref()?
                            .resources
                            .as_ref()?
                            .requests
                            .as_ref()?
                            .get("storage")?;
                        parse_milli(&q.0)
                    })
                    .sum(),
                true,
            ))),
            // Resources nobody counts (extended resources, scoped counts) are left out.
            _ => None,
        };
        if let Some(v) = v {
            used.insert(res.clone(), v);
        }
    }
    let st = ResourceQuotaStatus {
        hard: Some(hard),
        used: Some(used),
    };
    if rq.status.as_ref() != Some(&st) {
        let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), ns);
        // A JSON merge patch would merge the maps; replacing status keeps removed keys out.
        let mut obj = (*rq).clone();
        obj.status = Some(st);
        match api.replace_status(name, &Default::default(), &obj).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_requests_like_upstream() {
        let p: Pod = serde_json::from_value(json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m", "memory": "64Mi"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "500m"}}}],
            "overhead": {"cpu": "10m"}}}))
        .unwrap();
        assert_eq!(pod_amount(&p, "cpu", false), 510);
        assert_eq!(format_milli(pod_amount(&p, "memory", false), true), "128Mi");
        assert_eq!(pod_amount(&p, "cpu", true), 1010);
    }
}
