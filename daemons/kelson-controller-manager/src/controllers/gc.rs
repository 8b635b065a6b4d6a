//! The garbage collector: ownerReferences drive deletion, as upstream's.
//!
//! Every object of the watched kinds with owner references is checked against its owners:
//!
//! - **Background** (the default): when all owners are gone (absent, or present with another
//!   uid — confirmed by an uncached GET, never by the cache alone), the dependent is deleted;
//!   when only some are gone, the dangling references are removed.
//! - **Foreground**: an owner deleted with `propagationPolicy=Foreground` carries the
//!   `foregroundDeletion` finalizer; its dependents are deleted (themselves in the foreground,
//!   so the cascade goes depth-first), and the finalizer is removed once no dependent with
//!   `blockOwnerDeletion: true` remains — which lets the API server finish deleting the owner.
//! - **Orphan**: an owner with the `orphan` finalizer and a deletionTimestamp has its
//!   reference removed from every dependent, then the finalizer.
//!
//! Which finalizer an owner carries is decided by the API server from DeleteOptions. Keys are
//! `<kind index>|<namespace>|<name>`; a change to a dependent also queues its owners (a
//! foreground owner waits on them) and a deletion queues the deleted object's dependents.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use serde_json::json;

use super::{delete_object, is_status, Controller, Ctx, Result};
use crate::informer::{Change, Informer, Object};
use crate::queue::WorkQueue;

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// One watched kind, type-erased.
trait Source: Send + Sync {
    fn resource(&self) -> ApiResource;
    fn metas(&self) -> Vec<ObjectMeta>;
    fn get(&self, ns: Option<&str>, name: &str) -> Option<ObjectMeta>;
}

struct Typed<K: Object>(Informer<K>);

impl<K: Object> Source for Typed<K> {
    fn resource(&self) -> ApiResource {
        ApiResource::erase::<K>(&())
    }
    fn metas(&self) -> Vec<ObjectMeta> {
        self.0.list().iter().map(|o| o.meta().clone()).collect()
    }
    fn get(&self, ns: Option<&str>, name: &str) -> Option<ObjectMeta> {
        self.0.get(ns, name).map(|o| o.meta().clone())
    }
}

type Sources = Arc<Vec<Box<dyn Source>>>;

fn key(idx: usize, m: &ObjectMeta) -> String {
    format!(
        "{idx}|{}|{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

/// Which source serves the kind a reference names.
fn source_for(sources: &Sources, r: &OwnerReference) -> Option<usize> {
    sources.iter().position(|s| {
        let ar = s.resource();
        ar.kind == r.kind && ar.api_version == r.api_version
    })
}

fn dependents_of(sources: &Sources, uid: &str) -> Vec<(usize, ObjectMeta)> {
    let mut out = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        for m in s.metas() {
            if m.owner_references.iter().flatten().any(|r| r.uid == uid) {
                out.push((i, m));
            }
        }
    }
    out
}

fn watch<K: Object>(inf: &Informer<K>, idx: usize, sources: Sources, q: WorkQueue) {
    inf.on_change(move |o, change| {
        let m = o.meta();
        q.add(key(idx, m));
        for r in m.owner_references.iter().flatten() {
            if let Some(oi) = source_for(&sources, r) {
                q.add(format!(
                    "{oi}|{}|{}",
                    m.namespace.as_deref().unwrap_or_default(),
                    r.name
                ));
            }
        }
        if change == Change::Deleted {
            if let Some(uid) = &m.uid {
                for (i, d) in dependents_of(&sources, uid) {
                    q.add(key(i, &d));
                }
            }
        }
    });
}

pub fn controller(ctx: &Ctx) -> Controller {
    let i = &ctx.inf;
    let sources: Sources = Arc::new(vec![
        Box::new(Typed(i.deployments.clone())),
        Box::new(Typed(i.replicasets.clone())),
        Box::new(Typed(i.pods.clone())),
        Box::new(Typed(i.endpointslices.clone())),
        Box::new(Typed(i.services.clone())),
        Box::new(Typed(i.configmaps.clone())),
        Box::new(Typed(i.jobs.clone())),
        Box::new(Typed(i.cronjobs.clone())),
        Box::new(Typed(i.daemonsets.clone())),
        Box::new(Typed(i.statefulsets.clone())),
        Box::new(Typed(i.revisions.clone())),
    ]);
    let queue = WorkQueue::new();
    watch(&i.deployments, 0, sources.clone(), queue.clone());
    watch(&i.replicasets, 1, sources.clone(), queue.clone());
    watch(&i.pods, 2, sources.clone(), queue.clone());
    watch(&i.endpointslices, 3, sources.clone(), queue.clone());
    watch(&i.services, 4, sources.clone(), queue.clone());
    watch(&i.configmaps, 5, sources.clone(), queue.clone());
    watch(&i.jobs, 6, sources.clone(), queue.clone());
    watch(&i.cronjobs, 7, sources.clone(), queue.clone());
    watch(&i.daemonsets, 8, sources.clone(), queue.clone());
    watch(&i.statefulsets, 9, sources.clone(), queue.clone());
    watch(&i.revisions, 10, sources.clone(), queue.clone());
    let c = ctx.clone();
    let s2 = sources.clone();
    Controller::new("garbage-collector-controller", queue, 2, move |k| {
        let (c, s) = (c.clone(), sources.clone());
        async move { reconcile(&c, &s, &k).await }
    })
    .resync(Duration::from_secs(60), move || {
        let mut keys = Vec::new();
        for (i, s) in s2.iter().enumerate() {
            for m in s.metas() {
                let owned = m.owner_references.as_ref().is_some_and(|r| !r.is_empty());
                if owned || m.deletion_timestamp.is_some() {
                    keys.push(key(i, &m));
                }
            }
        }
        keys
    })
}

fn dyn_api(ctx: &Ctx, ar: &ApiResource, ns: Option<&str>) -> Api<DynamicObject> {
    match ns.filter(|n| !n.is_empty()) {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, ar),
        None => Api::all_with(ctx.client.clone(), ar),
    }
}

enum OwnerState {
    Alive,
    Gone,
    /// Being deleted in the foreground: its dependents go first.
    WaitingForDependents,
}

async fn owner_state(
    ctx: &Ctx,
    sources: &Sources,
    ns: Option<&str>,
    r: &OwnerReference,
) -> Result<OwnerState> {
    let Some(i) = source_for(sources, r) else {
        // A kind we do not watch: never delete what we cannot verify.
        return Ok(OwnerState::Alive);
    };
    let cached = sources[i]
        .get(ns, &r.name)
        .or_else(|| sources[i].get(None, &r.name));
    let meta = match cached.filter(|m| m.uid.as_deref() == Some(r.uid.as_str())) {
        Some(m) => m,
        None => {
            // The cache may lag (a just-created owner): ask the API server.
            let ar = sources[i].resource();
            match dyn_api(ctx, &ar, ns).get_opt(&r.name).await {
                Ok(Some(o)) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => o.metadata,
                Ok(_) => return Ok(OwnerState::Gone),
                // A cluster-scoped owner named from a namespaced dependent, etc.
                Err(e) if is_status(&e, 404) => return Ok(OwnerState::Gone),
                Err(e) => return Err(e.into()),
            }
        }
    };
    let fg = meta.deletion_timestamp.is_some()
        && meta.finalizers.iter().flatten().any(|f| f == FOREGROUND);
    Ok(if fg {
        OwnerState::WaitingForDependents
    } else {
        OwnerState::Alive
    })
}

async fn reconcile(ctx: &Ctx, sources: &Sources, key: &str) -> Result<Option<Duration>> {
    let mut parts = key.splitn(3, '|');
    let (Some(idx), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(None);
    };
    let Ok(idx) = idx.parse::<usize>() else {
        return Ok(None);
    };
    let Some(src) = sources.get(idx) else {
        return Ok(None);
    };
    let ns = (!ns.is_empty()).then_some(ns);
    let Some(meta) = src.get(ns, name) else {
        return Ok(None);
    };
    let ar = src.resource();
    let api = dyn_api(ctx, &ar, ns);
    let uid = meta.uid.clone().unwrap_or_default();
    let finalizers: Vec<String> = meta.finalizers.clone().unwrap_or_default();

    if meta.deletion_timestamp.is_some() && finalizers.iter().any(|f| f == ORPHAN) {
        for (i, d) in dependents_of(sources, &uid) {
            let refs: Vec<&OwnerReference> = d
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.uid != uid)
                .collect();
            let dapi = dyn_api(ctx, &sources[i].resource(), d.namespace.as_deref());
            let patch = json!({"metadata": {"ownerReferences": refs, "uid": d.uid}});
            match dapi
                .patch(
                    d.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) || is_status(&e, 422) => {}
                Err(e) => return Err(e.into()),
            }
        }
        remove_finalizer(&api, name, &meta, ORPHAN).await?;
        return Ok(None);
    }
    if meta.deletion_timestamp.is_some() && finalizers.iter().any(|f| f == FOREGROUND) {
        let deps = dependents_of(sources, &uid);
        let mut blocking = 0;
        for (i, d) in &deps {
            let blocks = d
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.uid == uid && r.block_owner_deletion == Some(true));
            if blocks {
                blocking += 1;
            }
            if d.deletion_timestamp.is_none() {
                let dapi = dyn_api(ctx, &sources[*i].resource(), d.namespace.as_deref());
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Foreground),
                    preconditions: Some(Preconditions {
                        uid: d.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                // A uid precondition: 409 = replaced by a new object of that name.
                delete_object(&dapi, d.name.as_deref().unwrap_or_default(), &dp).await?;
            }
        }
        if blocking == 0 {
            remove_finalizer(&api, name, &meta, FOREGROUND).await?;
            return Ok(None);
        }
        // Dependents' deletions re-queue us; poll as a safety net.
        return Ok(Some(Duration::from_secs(2)));
    }

    let refs = meta.owner_references.clone().unwrap_or_default();
    if refs.is_empty() || meta.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let mut dangling = Vec::new();
    let mut waiting = false;
    let mut alive = 0;
    for r in &refs {
        match owner_state(ctx, sources, ns, r).await? {
            OwnerState::Alive => alive += 1,
            OwnerState::Gone => dangling.push(r.uid.clone()),
            OwnerState::WaitingForDependents => waiting = true,
        }
    }
    if alive == 0 {
        // No owner keeps it: delete, in the foreground if an owner waits for its dependents.
        let policy = if waiting {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        tracing::info!(kind = %ar.kind, namespace = ?ns, %name, ?policy, "deleting object whose owners are gone");
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        delete_object(&api, name, &dp).await?;
        return Ok(None);
    }
    if !dangling.is_empty() {
        let keep: Vec<&OwnerReference> =
            refs.iter().filter(|r| !dangling.contains(&r.uid)).collect();
        let patch = json!({"metadata": {"ownerReferences": keep, "uid": meta.uid}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

async fn remove_finalizer(
    api: &Api<DynamicObject>,
    name: &str,
    meta: &ObjectMeta,
    f: &str,
) -> Result<()> {
    let keep: Vec<&String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|x| *x != f)
        .collect();
    // resourceVersion makes this a compare-and-swap: a finalizer added meanwhile is not lost.
    let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": meta.resource_version}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
