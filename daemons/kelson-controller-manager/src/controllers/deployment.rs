//! The deployment controller: rollouts over ReplicaSets, as upstream's.
//!
//! A Deployment owns ReplicaSets, one per distinct pod template. The *new* ReplicaSet is the
//! one whose template equals the Deployment's (ignoring the `pod-template-hash` label); it is
//! named `<deployment>-<hash>` where the hash is FNV-32a of the template (+ collisionCount),
//! safe-encoded like upstream's. Every other owned ReplicaSet is *old*.
//!
//! Revisions: the new ReplicaSet carries `deployment.kubernetes.io/revision` = max(old) + 1
//! (an old ReplicaSet that becomes new again — `kubectl rollout undo` patches the template
//! back — gets its revision bumped), mirrored on the Deployment. That is what
//! `kubectl rollout history/undo` read. Old ReplicaSets scaled to zero beyond
//! `revisionHistoryLimit` (default 10) are deleted oldest first.
//!
//! Strategies: RollingUpdate scales the new ReplicaSet up while the total stays within
//! replicas + maxSurge, and old ones down while available pods stay at or above replicas −
//! maxUnavailable (unhealthy old pods go first). Recreate scales all old ReplicaSets to zero,
//! waits until their pods are gone, then scales the new one up. A paused Deployment is only
//! scaled, never rolled. Status carries what `kubectl rollout status` reads (observedGeneration,
//! updated/ready/available/unavailable replicas) and the Progressing and Available conditions,
//! with ProgressDeadlineExceeded after progressDeadlineSeconds without progress.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use super::{delete_object, is_status, patch_status, Controller, Ctx, Error, Result};
use crate::events::{EventType, Recorder};
use crate::informer::{key_of, split_key};
use crate::queue::WorkQueue;
use crate::util;

/// The reporting controller name of upstream's deployment controller.
const COMPONENT: &str = "deployment-controller";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotations of the Deployment that are not copied onto its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

pub fn controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.deployments.on_change(move |d, _| q.add(key_of(d)));
    let q = queue.clone();
    let deps = ctx.inf.deployments.clone();
    ctx.inf.replicasets.on_change(move |rs, _| {
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        match util::controller_of(&rs.metadata) {
            Some(r) if r.kind == "Deployment" => q.add(format!("{ns}/{}", r.name)),
            Some(_) => {}
            None => {
                for d in deps.list_ns(&ns) {
                    let sel = d
                        .spec
                        .as_ref()
                        .map(|s| s.selector.clone())
                        .unwrap_or_default();
                    if !util::selector_is_empty(&sel)
                        && util::selector_matches(&sel, rs.metadata.labels.as_ref())
                    {
                        q.add(key_of(&*d));
                    }
                }
            }
        }
    });
    // Recreate waits for old pods to go away: a pod deletion can unblock a Deployment.
    let q = queue.clone();
    let rss = ctx.inf.replicasets.clone();
    ctx.inf.pods.on_change(move |pod, change| {
        if change != crate::informer::Change::Deleted && !util::is_deleting(&pod.metadata) {
            return;
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(r) = util::controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet") {
            if let Some(rs) = rss.get(Some(ns), &r.name) {
                if let Some(d) =
                    util::controller_of(&rs.metadata).filter(|r| r.kind == "Deployment")
                {
                    q.add(format!("{ns}/{}", d.name));
                }
            }
        }
    });
    let c = ctx.clone();
    let deps = ctx.inf.deployments.clone();
    Controller::new(COMPONENT, queue, 2, move |key| {
        let c = c.clone();
        async move { reconcile(&c, &key).await }
    })
    .resync(Duration::from_secs(30), move || {
        deps.list().iter().map(|d| key_of(&**d)).collect()
    })
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}
/// Available pods of a ReplicaSet, never more than its spec: right after we scale one down its
/// status still counts the pods being removed, and trusting that would let the next pass scale
/// down again below replicas − maxUnavailable.
fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .min(rs_replicas(rs))
}
pub fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The template as JSON with the hash label removed (upstream `EqualIgnoreHash`).
fn template_key(t: Option<&PodTemplateSpec>) -> Value {
    let mut v = serde_json::to_value(t.cloned().unwrap_or_default()).unwrap_or(Value::Null);
    if let Some(l) = v
        .pointer_mut("/metadata/labels")
        .and_then(|l| l.as_object_mut())
    {
        l.remove(HASH_LABEL);
        if l.is_empty() {
            v["metadata"].as_object_mut().map(|m| m.remove("labels"));
        }
    }
    v
}

struct Plan<'a> {
    d: &'a Deployment,
    events: &'a Recorder,
    replicas: i32,
    max_surge: i32,
    max_unavailable: i32,
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Option<Duration>> {
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let Some(d) = ctx.inf.deployments.get(Some(ns), name) else {
        return Ok(None);
    };
    if util::is_deleting(&d.metadata) {
        return Ok(None);
    }
    let spec = d.spec.clone().unwrap_or_default();
    if util::selector_is_empty(&spec.selector) {
        ctx.events.event(
            COMPONENT,
            &*d,
            EventType::Warning,
            "SelectingAll",
            "This deployment is selecting all pods. A non-empty selector is required.",
        );
        return Ok(None);
    }
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let rs_list = claim_replicasets(ctx, &rs_api, &d).await?;

    let replicas = spec.replicas.unwrap_or(1).max(0);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let (mut max_surge, mut max_unavailable) = if recreate {
        (0, 0)
    } else {
        (
            util::scaled_value(ru.max_surge.as_ref(), replicas, "25%", true),
            util::scaled_value(ru.max_unavailable.as_ref(), replicas, "25%", false),
        )
    };
    if !recreate && max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    if recreate {
        max_surge = 0;
    }
    let plan = Plan {
        d: &d,
        events: &ctx.events,
        replicas,
        max_surge,
        max_unavailable,
    };
    let paused = spec.paused == Some(true);

    let (new_rs, old, created) =
        new_and_old(ctx, &rs_api, &plan, rs_list, !paused && !recreate).await?;
    let mut new_rs = new_rs;
    let mut old = old;

    if paused {
        // Scale only: a paused rollout keeps the ReplicaSets it has.
        if let Some(n) = &mut new_rs {
            if old.iter().all(|o| rs_replicas(o) == 0) && rs_replicas(n) != replicas {
                scale(&rs_api, n, replicas, &plan).await?;
            }
        }
    } else if recreate {
        let mut scaled = false;
        for o in old.iter_mut().filter(|o| rs_replicas(o) > 0) {
            scale(&rs_api, o, 0, &plan).await?;
            scaled = true;
        }
        let old_uids: Vec<String> = old.iter().filter_map(|o| o.metadata.uid.clone()).collect();
        let old_pods_left = ctx.inf.pods.list_ns(ns).iter().any(|p: &Arc<Pod>| {
            util::controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid))
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded") | Some("Failed")
                )
        });
        if !scaled && !old_pods_left {
            if new_rs.is_none() {
                let (n, o, _) = new_and_old(
                    ctx,
                    &rs_api,
                    &plan,
                    claim_replicasets(ctx, &rs_api, &d).await?,
                    true,
                )
                .await?;
                new_rs = n;
                old = o;
            }
            if let Some(n) = &mut new_rs {
                if rs_replicas(n) != replicas {
                    scale(&rs_api, n, replicas, &plan).await?;
                }
            }
        }
    } else if let Some(n) = &mut new_rs {
        if !rolling_new(&rs_api, n, &old, &plan).await? {
            rolling_old(&rs_api, n, &mut old, &plan).await?;
        }
    }

    let complete = new_rs.as_ref().is_some_and(|n| {
        rs_replicas(n) == replicas
            && n.status.as_ref().map(|s| s.replicas).unwrap_or(0) == replicas
            && rs_available(n) >= replicas
    }) && old
        .iter()
        .all(|o| rs_replicas(o) == 0 && o.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0);
    if complete || paused {
        cleanup(&rs_api, &old, spec.revision_history_limit.unwrap_or(10)).await?;
    }
    sync_status(ctx, &d, new_rs.as_ref(), &old, &plan, created, paused).await
}

/// Adopts orphan ReplicaSets the selector matches; releases owned ones it no longer matches.
async fn claim_replicasets(
    ctx: &Ctx,
    api: &Api<ReplicaSet>,
    d: &Deployment,
) -> Result<Vec<ReplicaSet>> {
    let ns = d.metadata.namespace.as_deref().unwrap_or_default();
    let sel = d
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let mut out = Vec::new();
    for rs in ctx.inf.replicasets.list_ns(ns) {
        let matches = util::selector_matches(&sel, rs.metadata.labels.as_ref());
        match util::controller_of(&rs.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    out.push((*rs).clone());
                } else {
                    super::replicaset::release(api, &*rs, &uid).await?;
                }
            }
            None if matches && !util::is_deleting(&rs.metadata) => {
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(util::controller_ref("apps/v1", "Deployment", &d.metadata));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": rs.metadata.uid}});
                match api
                    .patch(
                        rs.metadata.name.as_deref().unwrap_or_default(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                {
                    Ok(r) => out.push(r),
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            _ => {}
        }
    }
    out.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.metadata.name.clone(),
        )
    });
    Ok(out)
}

/// Splits into (new, old), syncing the new one's revision; creates it if asked.
/// The bool says whether the new ReplicaSet was created now.
async fn new_and_old(
    ctx: &Ctx,
    api: &Api<ReplicaSet>,
    plan: &Plan<'_>,
    rs_list: Vec<ReplicaSet>,
    create: bool,
) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>, bool)> {
    let d = plan.d;
    let spec = d.spec.clone().unwrap_or_default();
    let want = template_key(Some(&spec.template));
    let mut new_rs = None;
    let mut old = Vec::new();
    for rs in rs_list {
        if new_rs.is_none()
            && template_key(rs.spec.as_ref().and_then(|s| s.template.as_ref())) == want
        {
            new_rs = Some(rs);
        } else {
            old.push(rs);
        }
    }
    let max_old = old
        .iter()
        .map(|r| revision_of(&r.metadata))
        .max()
        .unwrap_or(0);
    let revision = (max_old + 1).to_string();
    let mut created = false;
    match &mut new_rs {
        Some(n) => {
            let ann = n.metadata.annotations.clone().unwrap_or_default();
            let have = revision_of(&n.metadata);
            if have <= max_old
                || ann.get(DESIRED_REPLICAS) != Some(&plan.replicas.to_string())
                || n.spec.as_ref().and_then(|s| s.min_ready_seconds) != spec.min_ready_seconds
            {
                let mut a = rs_annotations(d, plan);
                a.insert(
                    REVISION.into(),
                    if have <= max_old {
                        revision.clone()
                    } else {
                        have.to_string()
                    },
                );
                let patch = json!({"metadata": {"annotations": a}, "spec": {"minReadySeconds": spec.min_ready_seconds.unwrap_or(0)}});
                *n = api
                    .patch(
                        n.metadata.name.as_deref().unwrap_or_default(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
            }
        }
        None if create => {
            let n = create_new_rs(api, plan, &revision, &old).await?;
            created = true;
            new_rs = Some(n);
        }
        None => {}
    }
    // Mirror the revision (and change-cause) on the Deployment.
    if let Some(n) = &new_rs {
        let rev = revision_of(&n.metadata).to_string();
        if d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            != Some(&rev)
        {
            let dapi: Api<Deployment> = Api::namespaced(
                ctx.client.clone(),
                d.metadata.namespace.as_deref().unwrap_or_default(),
            );
            let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
            dapi.patch(
                d.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
        }
    }
    Ok((new_rs, old, created))
}

fn rs_annotations(d: &Deployment, plan: &Plan<'_>) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = d
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .collect();
    a.insert(DESIRED_REPLICAS.into(), plan.replicas.to_string());
    a.insert(
        MAX_REPLICAS.into(),
        (plan.replicas + plan.max_surge).to_string(),
    );
    a
}

async fn create_new_rs(
    api: &Api<ReplicaSet>,
    plan: &Plan<'_>,
    revision: &str,
    old: &[ReplicaSet],
) -> Result<ReplicaSet> {
    let d = plan.d;
    let spec = d.spec.clone().unwrap_or_default();
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let tmpl_json = serde_json::to_string(&spec.template)?;
    let hash = util::pod_template_hash(&tmpl_json, collision);
    let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or_default());
    let mut template = spec.template.clone();
    let tm = template.metadata.get_or_insert_with(Default::default);
    tm.labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut annotations = rs_annotations(d, plan);
    annotations.insert(REVISION.into(), revision.into());
    // Initial size as upstream's NewRSNewReplicas: within replicas + maxSurge.
    let current: i32 = old.iter().map(rs_replicas).sum();
    let initial = if spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        0
    } else {
        (plan.replicas + plan.max_surge - current).clamp(0, plan.replicas)
    };
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: d.metadata.namespace.clone(),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![util::controller_ref(
                "apps/v1",
                "Deployment",
                &d.metadata,
            )]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(if spec.paused == Some(true) {
                0
            } else {
                initial
            }),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    match api.create(&PostParams::default(), &rs).await {
        Ok(r) => {
            tracing::info!(deployment = ?d.metadata.name, replicaset = %name, "created new replica set");
            let n = rs_replicas(&r);
            if n > 0 {
                scaled_event(plan, &name, 0, n);
            }
            Ok(r)
        }
        Err(e) if is_status(&e, 409) => {
            // Same name, different template (a hash collision): bump collisionCount so the next
            // attempt hashes differently. Ours with the same template is found on the next pass.
            if let Some(existing) = api.get_opt(&name).await? {
                let ours = util::controller_of(&existing.metadata)
                    .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
                if ours
                    && template_key(existing.spec.as_ref().and_then(|s| s.template.as_ref()))
                        == template_key(Some(&spec.template))
                {
                    return Ok(existing);
                }
            }
            let dapi: Api<Deployment> = Api::namespaced(
                api.clone().into_client(),
                d.metadata.namespace.as_deref().unwrap_or_default(),
            );
            let cc = collision.unwrap_or(0) + 1;
            dapi.patch_status(
                d.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"collisionCount": cc}})),
            )
            .await?;
            Err(Error::Other(format!(
                "replica set {name} exists with another template; collisionCount now {cc}"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

async fn scale(api: &Api<ReplicaSet>, rs: &mut ReplicaSet, n: i32, plan: &Plan<'_>) -> Result<()> {
    let patch = json!({
        "metadata": {"annotations": {DESIRED_REPLICAS: plan.replicas.to_string(), MAX_REPLICAS: (plan.replicas + plan.max_surge).to_string()}},
        "spec": {"replicas": n},
    });
    let from = rs_replicas(rs);
    tracing::info!(replicaset = ?rs.metadata.name, from, to = n, "scaling replica set");
    *rs = api
        .patch(
            rs.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    if from != n {
        scaled_event(
            plan,
            rs.metadata.name.as_deref().unwrap_or_default(),
            from,
            n,
        );
    }
    Ok(())
}

/// Upstream's ScalingReplicaSet event on the Deployment.
fn scaled_event(plan: &Plan<'_>, rs: &str, from: i32, to: i32) {
    let dir = if to > from { "up" } else { "down" };
    plan.events.event(
        COMPONENT,
        plan.d,
        EventType::Normal,
        "ScalingReplicaSet",
        format!("Scaled {dir} replica set {rs} from {from} to {to}"),
    );
}

/// Scales the new ReplicaSet toward replicas within maxSurge; true if it scaled.
async fn rolling_new(
    api: &Api<ReplicaSet>,
    new_rs: &mut ReplicaSet,
    old: &[ReplicaSet],
    plan: &Plan<'_>,
) -> Result<bool> {
    let cur = rs_replicas(new_rs);
    if cur == plan.replicas {
        return Ok(false);
    }
    if cur > plan.replicas {
        scale(api, new_rs, plan.replicas, plan).await?;
        return Ok(true);
    }
    let total: i32 = old.iter().map(rs_replicas).sum::<i32>() + cur;
    let max_total = plan.replicas + plan.max_surge;
    if total >= max_total {
        return Ok(false);
    }
    let up = (max_total - total).min(plan.replicas - cur);
    scale(api, new_rs, cur + up, plan).await?;
    Ok(true)
}

/// Scales old ReplicaSets down while availability stays at replicas − maxUnavailable.
async fn rolling_old(
    api: &Api<ReplicaSet>,
    new_rs: &ReplicaSet,
    old: &mut [ReplicaSet],
    plan: &Plan<'_>,
) -> Result<()> {
    let old_count: i32 = old.iter().map(rs_replicas).sum();
    if old_count == 0 {
        return Ok(());
    }
    let all: i32 = old_count + rs_replicas(new_rs);
    let min_available = plan.replicas - plan.max_unavailable;
    let new_unavailable = rs_replicas(new_rs) - rs_available(new_rs);
    let mut budget = all - min_available - new_unavailable;
    if budget <= 0 {
        return Ok(());
    }
    // Unhealthy old replicas first: removing them costs no availability.
    for o in old.iter_mut() {
        if budget <= 0 {
            break;
        }
        let unhealthy = rs_replicas(o) - rs_available(o);
        if unhealthy <= 0 {
            continue;
        }
        let down = unhealthy.min(budget);
        let to = rs_replicas(o) - down;
        scale(api, o, to, plan).await?;
        budget -= down;
    }
    // Then available ones, as far as availability allows.
    let available: i32 = old.iter().map(rs_available).sum::<i32>() + rs_available(new_rs);
    let mut can = (available - min_available).min(old.iter().map(rs_replicas).sum());
    for o in old.iter_mut() {
        if can <= 0 {
            break;
        }
        let r = rs_replicas(o);
        if r == 0 {
            continue;
        }
        let down = r.min(can);
        scale(api, o, r - down, plan).await?;
        can -= down;
    }
    Ok(())
}

/// Deletes fully scaled-down old ReplicaSets beyond the history limit, oldest revision first.
async fn cleanup(api: &Api<ReplicaSet>, old: &[ReplicaSet], limit: i32) -> Result<()> {
    let mut dead: Vec<&ReplicaSet> = old
        .iter()
        .filter(|r| {
            rs_replicas(r) == 0
                && r.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
                && !util::is_deleting(&r.metadata)
        })
        .collect();
    let excess = dead.len() as i64 - i64::from(limit.max(0));
    if excess <= 0 {
        return Ok(());
    }
    dead.sort_by_key(|r| revision_of(&r.metadata));
    for r in dead.into_iter().take(excess as usize) {
        let name = r.metadata.name.as_deref().unwrap_or_default();
        delete_object(api, name, &DeleteParams::default()).await?;
    }
    Ok(())
}

fn cond<'a>(st: &'a DeploymentStatus, t: &str) -> Option<&'a DeploymentCondition> {
    st.conditions.iter().flatten().find(|c| c.type_ == t)
}

/// Sets a condition, keeping lastTransitionTime when the status does not change.
fn set_cond(
    st: &mut DeploymentStatus,
    t: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &Time,
) {
    let conds = st.conditions.get_or_insert_with(Vec::new);
    let prev = conds.iter().find(|c| c.type_ == t).cloned();
    if let Some(p) = &prev {
        if p.status == status
            && p.reason.as_deref() == Some(reason)
            && p.message.as_deref() == Some(message.as_str())
        {
            return;
        }
    }
    let transition = match &prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    conds.retain(|c| c.type_ != t);
    conds.push(DeploymentCondition {
        type_: t.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: transition,
    });
}

async fn sync_status(
    ctx: &Ctx,
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    old: &[ReplicaSet],
    plan: &Plan<'_>,
    created: bool,
    paused: bool,
) -> Result<Option<Duration>> {
    let prev = d.status.clone().unwrap_or_default();
    let all: Vec<&ReplicaSet> = old.iter().chain(new_rs).collect();
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|r| f(r)).sum::<i32>();
    let mut st = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(&|r| r.status.as_ref().map(|s| s.replicas).unwrap_or(0))),
        updated_replicas: Some(
            new_rs
                .and_then(|n| n.status.as_ref())
                .map(|s| s.replicas)
                .unwrap_or(0),
        ),
        ready_replicas: Some(sum(&|r| {
            r.status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
        })),
        available_replicas: Some(sum(&rs_available)),
        collision_count: prev.collision_count,
        conditions: prev.conditions.clone(),
        ..Default::default()
    };
    st.unavailable_replicas = Some((plan.replicas - st.available_replicas.unwrap_or(0)).max(0));
    // Upstream drops zero counters (omitempty): keep the JSON identical.
    for f in [
        &mut st.replicas,
        &mut st.updated_replicas,
        &mut st.ready_replicas,
        &mut st.available_replicas,
        &mut st.unavailable_replicas,
    ] {
        if *f == Some(0) {
            *f = None;
        }
    }
    let now = Time(Timestamp::now());
    let available = st.available_replicas.unwrap_or(0);
    if available >= plan.replicas - plan.max_unavailable {
        set_cond(
            &mut st,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            &now,
        );
    } else {
        set_cond(
            &mut st,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            &now,
        );
    }
    let rs_name = new_rs
        .and_then(|n| n.metadata.name.clone())
        .unwrap_or_default();
    let deadline = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    let mut again = None;
    let prog = cond(&prev, "Progressing").cloned();
    let was_paused = prog
        .as_ref()
        .is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused"));
    let complete = new_rs.is_some()
        && st.updated_replicas.unwrap_or(0) == plan.replicas
        && st.replicas.unwrap_or(0) == plan.replicas
        && available >= plan.replicas;
    if paused {
        if !was_paused {
            set_cond(
                &mut st,
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                &now,
            );
        }
    } else if was_paused {
        set_cond(
            &mut st,
            "Progressing",
            "Unknown",
            "DeploymentResumed",
            "Deployment is resumed".into(),
            &now,
        );
    } else if complete {
        set_cond(
            &mut st,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            &now,
        );
    } else if created {
        set_cond(
            &mut st,
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{rs_name}\""),
            &now,
        );
    } else if prog.is_none() && new_rs.is_some() {
        set_cond(
            &mut st,
            "Progressing",
            "True",
            "FoundNewReplicaSet",
            format!("Found new replica set \"{rs_name}\""),
            &now,
        );
    } else {
        let progressed = st.updated_replicas > prev.updated_replicas
            || st.ready_replicas > prev.ready_replicas
            || st.available_replicas > prev.available_replicas
            || st.replicas.unwrap_or(0) - st.updated_replicas.unwrap_or(0)
                < prev.replicas.unwrap_or(0) - prev.updated_replicas.unwrap_or(0);
        let timed_out_already = prog
            .as_ref()
            .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
        if progressed && new_rs.is_some() {
            // Upstream bumps lastUpdateTime on every progress, restarting the deadline.
            let conds = st.conditions.get_or_insert_with(Vec::new);
            conds.retain(|c| c.type_ != "Progressing");
            conds.push(DeploymentCondition {
                type_: "Progressing".into(),
                status: "True".into(),
                reason: Some("ReplicaSetUpdated".into()),
                message: Some(format!("ReplicaSet \"{rs_name}\" is progressing.")),
                last_update_time: Some(now.clone()),
                last_transition_time: prog
                    .as_ref()
                    .filter(|c| c.status == "True")
                    .and_then(|c| c.last_transition_time.clone())
                    .or(Some(now.clone())),
            });
        } else if !timed_out_already {
            let since = prog
                .as_ref()
                .and_then(|c| c.last_update_time.as_ref())
                .map(|t| t.0.as_second())
                .unwrap_or(now.0.as_second());
            let left = since + i64::from(deadline) - now.0.as_second();
            if left <= 0 {
                set_cond(
                    &mut st,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                    &now,
                );
            } else {
                again = Some(Duration::from_secs(left as u64 + 1));
            }
        }
    }
    if !complete && !paused && again.is_none() {
        let since = cond(&st, "Progressing")
            .and_then(|c| c.last_update_time.as_ref())
            .map(|t| t.0.as_second())
            .unwrap_or(now.0.as_second());
        let left = since + i64::from(deadline) - now.0.as_second();
        if left > 0 {
            again = Some(Duration::from_secs(left as u64 + 1));
        }
    }
    if st != prev {
        let api: Api<Deployment> = Api::namespaced(
            ctx.client.clone(),
            d.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let mut v = serde_json::to_value(&st)?;
        // Merge patch: absent counters must be cleared explicitly.
        for k in [
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
        ] {
            if v.get(k).is_none() {
                v[k] = Value::Null;
            }
        }
        let name = d.metadata.name.as_deref().unwrap_or_default();
        patch_status(&api, name, json!({"status": v})).await?;
    }
    Ok(again)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_comparison_ignores_the_hash_label() {
        let a = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "x".to_string())].into()),
                ..Default::default()
            }),
            spec: None,
        };
        let mut b = a.clone();
        b.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), "abc".into());
        assert_eq!(template_key(Some(&a)), template_key(Some(&b)));
        b.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("app".into(), "y".into());
        assert_ne!(template_key(Some(&a)), template_key(Some(&b)));
    }
}
