//! The statefulset controller: pods with stable names and storage, in order.
//!
//! Pods are `<set>-<ordinal>` for ordinals `[start, start+replicas)` (`spec.ordinals.start`,
//! default 0), with hostname = pod name and subdomain = `serviceName`, labels
//! `statefulset.kubernetes.io/pod-name` and `apps.kubernetes.io/pod-index`, and one PVC per
//! volumeClaimTemplate named `<claim>-<set>-<ordinal>`, created before the pod and never
//! deleted by this controller (the default Retain/Retain policy). Names are deterministic, so
//! a create for a pod the cache does not show yet simply fails with AlreadyExists — no
//! expectations needed.
//!
//! OrderedReady (the default): create the lowest missing ordinal only when every lower pod is
//! Running and Ready; delete the highest condemned ordinal first, one at a time, and only
//! when nothing else is unhealthy. Parallel: create and delete all at once. RollingUpdate
//! replaces pods with ordinal ≥ `partition` whose revision is not the update revision,
//! highest first, one at a time, once every pod is Running and Ready; pods below the
//! partition are (re)created from the current revision's template. OnDelete uses the update
//! revision only for pods it recreates. Status: replicas, ready, available (minReadySeconds),
//! current/updated replicas and revisions; currentRevision becomes updateRevision once every
//! pod runs it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use super::history::revision_hash as revision_of;
use super::{err_message, history, is_status, patch_status, Controller, Ctx, Result};
use crate::events::EventType;

/// The reporting controller name of upstream's statefulset controller.
const COMPONENT: &str = "statefulset-controller";
use crate::informer::{key_of, split_key};
use crate::queue::WorkQueue;
use crate::util;

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub fn controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.statefulsets.on_change(move |s, _| q.add(key_of(s)));
    let q = queue.clone();
    ctx.inf.pods.on_change(move |pod, _| {
        if let Some(r) = util::controller_of(&pod.metadata) {
            if r.kind == "StatefulSet" {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                q.add(format!("{ns}/{}", r.name));
            }
        }
    });
    ctx.inf.revisions.mark_used();
    ctx.inf.pvcs.mark_used();
    let c = ctx.clone();
    let sets = ctx.inf.statefulsets.clone();
    Controller::new(COMPONENT, queue, 2, move |key| {
        let c = c.clone();
        async move { reconcile(&c, &key).await }
    })
    .resync(Duration::from_secs(30), move || {
        sets.list().iter().map(|s| key_of(&**s)).collect()
    })
}

/// The ordinal of `pod` if it is named `<set>-<n>`.
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn running_and_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && util::is_pod_ready(p)
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Option<Duration>> {
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let Some(set) = ctx.inf.statefulsets.get(Some(ns), name) else {
        return Ok(None);
    };
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let deleting = util::is_deleting(&set.metadata);
    if deleting {
        // Pods go with the garbage collector; nothing is created for a deleting set.
        return Ok(None);
    }

    let tjson = serde_json::to_value(&spec.template)?;
    let sel_labels = spec.selector.match_labels.clone().unwrap_or_default();
    let (update_rev, _) = history::ensure(
        ctx,
        "apps/v1",
        "StatefulSet",
        &set.metadata,
        &sel_labels,
        &tjson,
    )
    .await?;
    let old_status = set.status.clone().unwrap_or_default();
    let current_rev = old_status
        .current_revision
        .clone()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| update_rev.clone());
    let current_tmpl: PodTemplateSpec = if current_rev == update_rev {
        spec.template.clone()
    } else {
        ctx.inf
            .revisions
            .get(Some(ns), &current_rev)
            .and_then(|r| history::template_of(&r))
            .and_then(|t| serde_json::from_value(t).ok())
            .unwrap_or_else(|| spec.template.clone())
    };

    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let partition = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);

    let mut pods: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
    for p in ctx.inf.pods.list_ns(ns) {
        if util::controller_of(&p.metadata).is_none_or(|r| r.uid != uid) {
            continue;
        }
        if let Some(o) = ordinal(name, p.metadata.name.as_deref().unwrap_or_default()) {
            pods.insert(o, p);
        }
    }
    let in_range = |o: i32| o >= start && o < start + replicas;

    // 1. Replace failed/succeeded pods in range.
    for (o, p) in &pods {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if in_range(*o)
            && matches!(phase, Some("Failed") | Some("Succeeded"))
            && !util::is_deleting(&p.metadata)
        {
            delete_pod(ctx, &set, &pods_api, p).await?;
            return Ok(None);
        }
    }

    // 2. Scale up in order.
    let mut blocked = false;
    for o in start..start + replicas {
        match pods.get(&o) {
            Some(p) => {
                if !parallel && (!running_and_ready(p) || util::is_deleting(&p.metadata)) {
                    blocked = true;
                    break;
                }
            }
            None => {
                let use_update = !rolling || o >= partition || current_rev == update_rev;
                let (tmpl, rev) = if use_update {
                    (&spec.template, &update_rev)
                } else {
                    (&current_tmpl, &current_rev)
                };
                create_pvcs(ctx, &set, o).await?;
                create_pod(ctx, &pods_api, &set, tmpl, rev, o).await?;
                if !parallel {
                    blocked = true;
                    break;
                }
            }
        }
    }

    // 3. Scale down, highest ordinal first.
    let condemned: Vec<&Arc<Pod>> = pods
        .iter()
        .rev()
        .filter(|(o, _)| !in_range(**o))
        .map(|(_, p)| p)
        .collect();
    if !condemned.is_empty() {
        if parallel {
            for p in &condemned {
                if !util::is_deleting(&p.metadata) {
                    delete_pod(ctx, &set, &pods_api, p).await?;
                }
            }
        } else if !blocked && !condemned.iter().any(|p| util::is_deleting(&p.metadata)) {
            delete_pod(ctx, &set, &pods_api, condemned[0]).await?;
        }
        blocked = true;
    }

    // 4. Rolling update, highest ordinal first, one at a time.
    let update_hash = update_rev.rsplit('-').next().unwrap_or_default();
    if rolling && !blocked {
        let all_healthy = (start..start + replicas).all(|o| {
            pods.get(&o)
                .is_some_and(|p| running_and_ready(p) && !util::is_deleting(&p.metadata))
        });
        if all_healthy {
            for o in (start.max(partition)..start + replicas).rev() {
                if let Some(p) = pods.get(&o) {
                    if revision_of(p) != Some(update_hash) {
                        delete_pod(ctx, &set, &pods_api, p).await?;
                        break;
                    }
                }
            }
        }
    }

    // History.
    let used: Vec<&Pod> = pods.values().map(|p| &**p).collect();
    history::truncate(
        ctx,
        ns,
        &set.metadata,
        spec.revision_history_limit.unwrap_or(10),
        &[&update_rev, &current_rev],
        &used,
    )
    .await?;

    // Status.
    let current_hash = current_rev.rsplit('-').next().unwrap_or_default();
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let live: Vec<&Arc<Pod>> = pods
        .values()
        .filter(|p| !util::is_deleting(&p.metadata))
        .collect();
    let mut st = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: live.len() as i32,
        ready_replicas: Some(live.iter().filter(|p| util::is_pod_ready(p)).count() as i32),
        available_replicas: Some(
            live.iter()
                .filter(|p| util::is_pod_available(p, min_ready, now))
                .count() as i32,
        ),
        current_replicas: Some(
            live.iter()
                .filter(|p| revision_of(p) == Some(current_hash))
                .count() as i32,
        ),
        updated_replicas: Some(
            live.iter()
                .filter(|p| revision_of(p) == Some(update_hash))
                .count() as i32,
        ),
        current_revision: Some(current_rev.clone()),
        update_revision: Some(update_rev.clone()),
        collision_count: old_status.collision_count,
        conditions: old_status.conditions.clone(),
    };
    // The update is complete once every wanted pod runs the update revision.
    if st.updated_replicas == Some(replicas)
        && st.ready_replicas == Some(replicas)
        && st.replicas == replicas
    {
        st.current_revision = Some(update_rev.clone());
        st.current_replicas = st.updated_replicas;
    }
    if set.status.as_ref() != Some(&st) {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
        // currentRevision is carried over from the cached status: a stale cache must not
        // write it back over a newer one, so the write is conditional (409 → retry).
        let patch =
            json!({"metadata": {"resourceVersion": set.metadata.resource_version}, "status": st});
        if !patch_status(&api, name, patch).await? {
            return Ok(None);
        }
    }
    let waiting = st.available_replicas < st.ready_replicas;
    Ok((min_ready > 0 && waiting).then(|| Duration::from_secs(min_ready as u64)))
}

/// Upstream's `recordPodEvent`: "create Pod web-0 in StatefulSet web successful".
fn pod_event(ctx: &Ctx, set: &StatefulSet, verb: &str, pod: &str, err: Option<&kube::Error>) {
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    match err {
        None => ctx.events.event(
            COMPONENT,
            set,
            EventType::Normal,
            if verb == "create" {
                "SuccessfulCreate"
            } else {
                "SuccessfulDelete"
            },
            format!("{verb} Pod {pod} in StatefulSet {set_name} successful"),
        ),
        Some(e) => ctx.events.event(
            COMPONENT,
            set,
            EventType::Warning,
            if verb == "create" {
                "FailedCreate"
            } else {
                "FailedDelete"
            },
            format!(
                "{verb} Pod {pod} in StatefulSet {set_name} failed error: {}",
                err_message(e)
            ),
        ),
    }
}

async fn delete_pod(ctx: &Ctx, set: &StatefulSet, api: &Api<Pod>, p: &Pod) -> Result<()> {
    let pn = p.metadata.name.as_deref().unwrap_or_default();
    match api.delete(pn, &DeleteParams::background()).await {
        Ok(_) => {
            pod_event(ctx, set, "delete", pn, None);
            Ok(())
        }
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => {
            pod_event(ctx, set, "delete", pn, Some(&e));
            Err(e.into())
        }
    }
}

async fn create_pvcs(ctx: &Ctx, set: &StatefulSet, ord: i32) -> Result<()> {
    let ns = set.metadata.namespace.clone().unwrap_or_default();
    let name = set.metadata.name.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for t in spec.volume_claim_templates.iter().flatten() {
        let claim = format!(
            "{}-{name}-{ord}",
            t.metadata.name.as_deref().unwrap_or_default()
        );
        if ctx.inf.pvcs.get(Some(&ns), &claim).is_some() {
            continue;
        }
        let mut pvc = t.clone();
        pvc.metadata.name = Some(claim);
        pvc.metadata.namespace = Some(ns.clone());
        pvc.metadata.uid = None;
        pvc.metadata.resource_version = None;
        pvc.status = None;
        let labels = pvc.metadata.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in spec.selector.match_labels.iter().flatten() {
            labels.insert(k.clone(), v.clone());
        }
        let claim = pvc.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &pvc).await {
            Ok(_) => ctx.events.event(
                COMPONENT,
                set,
                EventType::Normal,
                "SuccessfulCreate",
                format!("create Claim {claim} Pod {name}-{ord} in StatefulSet {name} success"),
            ),
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn create_pod(
    ctx: &Ctx,
    api: &Api<Pod>,
    set: &StatefulSet,
    tmpl: &PodTemplateSpec,
    rev: &str,
    ord: i32,
) -> Result<()> {
    let name = set.metadata.name.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let pod_name = format!("{name}-{ord}");
    let mut meta = tmpl.metadata.clone().unwrap_or_default();
    let mut pspec = tmpl.spec.clone().unwrap_or_default();
    meta.name = Some(pod_name.clone());
    meta.generate_name = None;
    meta.namespace = set.metadata.namespace.clone();
    meta.owner_references = Some(vec![util::controller_ref(
        "apps/v1",
        "StatefulSet",
        &set.metadata,
    )]);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ord.to_string());
    labels.insert(
        history::REVISION_HASH.into(),
        rev.rsplit('-').next().unwrap_or_default().into(),
    );
    pspec.hostname = Some(pod_name.clone());
    if let Some(svc) = spec.service_name.as_ref().filter(|s| !s.is_empty()) {
        pspec.subdomain = Some(svc.clone());
    }
    let vols = pspec.volumes.get_or_insert_with(Vec::new);
    for t in spec.volume_claim_templates.iter().flatten() {
        let vname = t.metadata.name.clone().unwrap_or_default();
        vols.retain(|v| v.name != vname);
        vols.push(Volume {
            name: vname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: format!("{vname}-{name}-{ord}"),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    let pod = Pod {
        metadata: meta,
        spec: Some(pspec),
        status: None,
    };
    match api.create(&PostParams::default(), &pod).await {
        Ok(_) => {
            pod_event(ctx, set, "create", &pod_name, None);
            Ok(())
        }
        // Created by an earlier sync the cache has not shown yet.
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => {
            pod_event(ctx, set, "create", &pod_name, Some(&e));
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "webby-1"), None);
        assert_eq!(ordinal("web", "web-1-2"), None);
    }
}
