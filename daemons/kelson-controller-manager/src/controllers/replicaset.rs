//! The replicaset controller: keep `spec.replicas` active pods that match the template.
//!
//! Per ReplicaSet: claim pods (adopt orphans the selector matches, release owned pods it no
//! longer matches — never while the ReplicaSet is being deleted), then create or delete pods
//! to close the gap, then write status (replicas, fullyLabeledReplicas, readyReplicas,
//! availableReplicas honoring minReadySeconds, observedGeneration).
//!
//! Expectations (as upstream's `ControllerExpectations`, [`super::podcontrol::Expectations`]):
//! after creating or deleting pods the informer cache lags; acting on it again would
//! over-create. So each ReplicaSet remembers the names it created and deleted, and only manages
//! replicas again once the cache shows all of them (or after a timeout, in case a watch event
//! was lost). Status is still written.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Resource;
use serde_json::json;

use super::podcontrol::{self, Expectations};
use super::{is_status, patch_status, Controller, Ctx, Result};
use crate::informer::{key_of, split_key};
use crate::queue::WorkQueue;
use crate::util;

/// The reporting controller name upstream's replicaset controller records events as.
const COMPONENT: &str = "replicaset-controller";
/// Upstream's burst of pod creations per sync (slow start batches within it).
const BURST: usize = 500;

pub fn controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf
        .replicasets
        .on_change(move |rs, _| q.add(key_of(rs)));
    let q = queue.clone();
    let rss = ctx.inf.replicasets.clone();
    ctx.inf.pods.on_change(move |pod, _| {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        if let Some(r) = util::controller_of(&pod.metadata) {
            if r.kind == "ReplicaSet" {
                q.add(format!("{ns}/{}", r.name));
            }
            return;
        }
        // An orphan: every ReplicaSet that could adopt it.
        for rs in rss.list_ns(&ns) {
            if let Some(sel) = rs.spec.as_ref().map(|s| &s.selector) {
                if !util::selector_is_empty(sel)
                    && util::selector_matches(sel, pod.metadata.labels.as_ref())
                {
                    q.add(key_of(&*rs));
                }
            }
        }
    });
    let c = ctx.clone();
    let exp = Expectations::default();
    let rss = ctx.inf.replicasets.clone();
    Controller::new(COMPONENT, queue, 2, move |key| {
        let (c, exp) = (c.clone(), exp.clone());
        async move { reconcile(&c, &exp, &key).await }
    })
    .resync(Duration::from_secs(30), move || {
        rss.list().iter().map(|r| key_of(&**r)).collect()
    })
}

async fn reconcile(ctx: &Ctx, exp: &Expectations, key: &str) -> Result<Option<Duration>> {
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let Some(rs) = ctx.inf.replicasets.get(Some(ns), name) else {
        exp.forget(key);
        return Ok(None);
    };
    let spec = rs.spec.clone().unwrap_or_default();
    let sel = spec.selector.clone();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let rs_uid = rs.metadata.uid.clone().unwrap_or_default();
    let deleting = util::is_deleting(&rs.metadata);

    // Expectations before the pods are listed (see the job controller: checked after, a pod
    // arriving in between would satisfy them yet be missing from the list).
    let satisfied = exp.satisfied(key, ns, ctx);
    // Claim.
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for pod in ctx.inf.pods.list_ns(ns) {
        let matches = !util::selector_is_empty(&sel)
            && util::selector_matches(&sel, pod.metadata.labels.as_ref());
        match util::controller_of(&pod.metadata) {
            Some(r) if r.uid == rs_uid => {
                if matches || deleting {
                    owned.push(pod);
                } else {
                    release(&pods_api, &pod, &rs_uid).await?;
                }
            }
            Some(_) => {}
            None if matches
                && !deleting
                && !util::is_deleting(&pod.metadata)
                && adopt(ctx, &pods_api, &rs, &pod).await? =>
            {
                owned.push(pod);
            }
            None => {}
        }
    }
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| util::is_pod_active(p)).collect();

    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
    if !deleting && satisfied {
        if active.len() < replicas {
            let n = (replicas - active.len()).min(BURST);
            let created = create_pods(ctx, &pods_api, &rs, n).await;
            exp.expect(key, created.0, vec![]);
            created.1?;
        } else if active.len() > replicas {
            let mut victims: Vec<&Arc<Pod>> = active.clone();
            victims.sort_by_key(|p| deletion_rank(p));
            let n = active.len() - replicas;
            let mut deleted = Vec::new();
            let mut err = None;
            let dp = DeleteParams::default();
            for p in victims.into_iter().take(n) {
                let pn = p.metadata.name.clone().unwrap_or_default();
                match podcontrol::delete_pod(ctx, &pods_api, COMPONENT, &*rs, &pn, &dp).await {
                    Ok(true) => deleted.push(pn),
                    Ok(false) => {}
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            exp.expect(key, vec![], deleted);
            if let Some(e) = err {
                return Err(e.into());
            }
        }
    }

    // Status.
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let tmpl_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut st = ReplicaSetStatus {
        replicas: active.len() as i32,
        observed_generation: rs.metadata.generation,
        ..Default::default()
    };
    let mut again: Option<u64> = None;
    let (mut fully, mut ready, mut avail) = (0, 0, 0);
    for p in &active {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        if tmpl_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            fully += 1;
        }
        if util::is_pod_ready(p) {
            ready += 1;
            if util::is_pod_available(p, min_ready, now) {
                avail += 1;
            } else if let Some(s) = util::secs_until_available(p, min_ready, now) {
                again = Some(again.map_or(s, |a| a.min(s)));
            }
        }
    }
    st.fully_labeled_replicas = Some(fully);
    st.ready_replicas = Some(ready);
    st.available_replicas = Some(avail);
    st.conditions = rs.status.as_ref().and_then(|s| s.conditions.clone());
    if rs.status.as_ref() != Some(&st) {
        let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
        if !patch_status(&rs_api, name, json!({"status": st})).await? {
            return Ok(None);
        }
    }
    Ok(again.map(|s| Duration::from_secs(s) + Duration::from_millis(100)))
}

/// Upstream's ranking of pods to delete first: unscheduled, pending, not ready, ready for less
/// time, then the newest.
fn deletion_rank(p: &Pod) -> (u8, u8, u8, i64, i64) {
    let scheduled = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    let phase_rank = match phase {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let ready_at = util::ready_since(p);
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    (
        u8::from(scheduled),
        phase_rank,
        u8::from(ready_at.is_some()),
        // Ready more recently first, created more recently first.
        -ready_at.map(|t| t.as_second()).unwrap_or(0),
        -created,
    )
}

async fn create_pods(
    ctx: &Ctx,
    api: &Api<Pod>,
    rs: &ReplicaSet,
    n: usize,
) -> (Vec<String>, Result<()>) {
    let tmpl = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let pod = podcontrol::pod_from_template(
        &tmpl,
        &rs.metadata,
        "apps/v1",
        "ReplicaSet",
        format!("{}-", rs.metadata.name.as_deref().unwrap_or_default()),
    );
    // Slow start (1, 2, 4, ...): a quota or admission failure costs one request, not n.
    let mut created = Vec::new();
    let mut batch = 1usize;
    while created.len() < n {
        let size = batch.min(n - created.len());
        let results = futures::future::join_all(
            (0..size).map(|_| podcontrol::create_pod(ctx, api, COMPONENT, rs, &pod)),
        )
        .await;
        for r in results {
            match r {
                Ok(pn) => created.push(pn),
                Err(e) => return (created, Err(e.into())),
            }
        }
        batch *= 2;
    }
    (created, Ok(()))
}

/// Adopts an orphan, after re-reading the owner uncached (upstream's "recheck"): a
/// ReplicaSet deleted meanwhile must not adopt.
async fn adopt(ctx: &Ctx, pods: &Api<Pod>, rs: &ReplicaSet, pod: &Pod) -> Result<bool> {
    let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
    let fresh = Api::<ReplicaSet>::namespaced(ctx.client.clone(), ns)
        .get_opt(rs.metadata.name.as_deref().unwrap_or_default())
        .await?;
    if fresh
        .as_ref()
        .is_none_or(|f| f.metadata.uid != rs.metadata.uid || util::is_deleting(&f.metadata))
    {
        return Ok(false);
    }
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(util::controller_ref(
        "apps/v1",
        ReplicaSet::kind(&()).as_ref(),
        &rs.metadata,
    ));
    let patch = json!({"metadata": {"ownerReferences": refs, "uid": pod.metadata.uid}});
    match pods
        .patch(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Removes our controller reference from a pod the selector no longer matches.
pub async fn release<K>(api: &Api<K>, obj: &K, owner_uid: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let refs: Vec<_> = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner_uid)
        .cloned()
        .collect();
    let patch = json!({"metadata": {"ownerReferences": refs, "uid": obj.meta().uid}});
    match api
        .patch(
            obj.meta().name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) || is_status(&e, 422) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
