//! The replicaset controller: keep `spec.replicas` active pods that match the template.
//!
//! Per ReplicaSet: claim pods (adopt orphans the selector matches, release owned pods it no
//! longer matches — never while the ReplicaSet is being deleted), then create or delete pods
//! to close the gap, then write status (replicas, fullyLabeledReplicas, readyReplicas,
//! availableReplicas honoring minReadySeconds, observedGeneration).
//!
//! Expectations (as upstream's `ControllerExpectations`): after creating or deleting pods the
//! informer cache lags; acting on it again would over-create. So each ReplicaSet remembers
//! the names it created and deleted, and only manages replicas again once the cache shows all
//! of them (or after a timeout, in case a watch event was lost). Status is still written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Resource;
use parking_lot::Mutex;
use serde_json::json;

use super::{err_message, is_status, Controller, Ctx, Result};
use crate::events::EventType;
use crate::informer::{key_of, split_key};
use crate::queue::WorkQueue;
use crate::util;

/// The reporting controller name upstream's replicaset controller records events as.
const COMPONENT: &str = "replicaset-controller";
const EXPECTATIONS_TTL: Duration = Duration::from_secs(60);
/// Upstream's burst of pod creations per sync (slow start batches within it).
const BURST: usize = 500;

#[derive(Default)]
struct Expect {
    adds: HashSet<String>,
    dels: HashSet<String>,
    at: Option<Instant>,
}

/// Pods a controller created/deleted that the cache has not shown yet (shared with the job
/// and daemonset controllers, which have the same over-creation hazard).
#[derive(Default, Clone)]
pub(crate) struct Expectations(Arc<Mutex<HashMap<String, Expect>>>);

impl Expectations {
    pub(crate) fn satisfied(&self, key: &str, ns: &str, ctx: &Ctx) -> bool {
        let mut g = self.0.lock();
        let Some(e) = g.get_mut(key) else { return true };
        if e.at.is_some_and(|t| t.elapsed() > EXPECTATIONS_TTL) {
            g.remove(key);
            return true;
        }
        e.adds.retain(|n| ctx.inf.pods.get(Some(ns), n).is_none());
        e.dels.retain(|n| {
            ctx.inf
                .pods
                .get(Some(ns), n)
                .is_some_and(|p| !util::is_deleting(&p.metadata))
        });
        let ok = e.adds.is_empty() && e.dels.is_empty();
        if ok {
            g.remove(key);
        }
        ok
    }
    pub(crate) fn expect(&self, key: &str, adds: Vec<String>, dels: Vec<String>) {
        let mut g = self.0.lock();
        let e = g.entry(key.to_string()).or_default();
        e.adds.extend(adds);
        e.dels.extend(dels);
        e.at = Some(Instant::now());
    }
    pub(crate) fn forget(&self, key: &str) {
        self.0.lock().remove(key);
    }
}

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
        exp.0.lock().remove(key);
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
            for p in victims.into_iter().take(n) {
                let pn = p.metadata.name.clone().unwrap_or_default();
                match pods_api.delete(&pn, &DeleteParams::default()).await {
                    Ok(_) => {
                        ctx.events.event(
                            COMPONENT,
                            &*rs,
                            EventType::Normal,
                            "SuccessfulDelete",
                            format!("Deleted pod: {pn}"),
                        );
                        deleted.push(pn)
                    }
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => {
                        ctx.events.event(
                            COMPONENT,
                            &*rs,
                            EventType::Warning,
                            "FailedDelete",
                            format!("Error deleting: {}", err_message(&e)),
                        );
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
        match rs_api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": st})),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return Ok(None),
            Err(e) => return Err(e.into()),
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
    let mut meta = tmpl.metadata.clone().unwrap_or_default();
    meta.generate_name = Some(format!(
        "{}-",
        rs.metadata.name.as_deref().unwrap_or_default()
    ));
    meta.name = None;
    meta.namespace = rs.metadata.namespace.clone();
    meta.owner_references = Some(vec![util::controller_ref(
        "apps/v1",
        "ReplicaSet",
        &rs.metadata,
    )]);
    let pod = Pod {
        metadata: meta,
        spec: tmpl.spec.clone(),
        status: None,
    };
    // Slow start (1, 2, 4, ...): a quota or admission failure costs one request, not n.
    let mut created = Vec::new();
    let pp = PostParams::default();
    let mut batch = 1usize;
    while created.len() < n {
        let size = batch.min(n - created.len());
        let results = futures::future::join_all((0..size).map(|_| api.create(&pp, &pod))).await;
        for r in results {
            match r {
                Ok(p) => {
                    let pn = p.metadata.name.unwrap_or_default();
                    ctx.events.event(
                        COMPONENT,
                        rs,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {pn}"),
                    );
                    created.push(pn)
                }
                Err(e) => {
                    ctx.events.event(
                        COMPONENT,
                        rs,
                        EventType::Warning,
                        "FailedCreate",
                        format!("Error creating: {}", err_message(&e)),
                    );
                    return (created, Err(e.into()));
                }
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
