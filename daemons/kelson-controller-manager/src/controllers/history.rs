//! ControllerRevisions for DaemonSets and StatefulSets (upstream's `controller/history`).
//!
//! A revision is a snapshot of the owner's pod template, named `<owner>-<hash>` where the
//! hash is FNV-1a over the snapshot (`controller-revision-hash` on pods and revisions), with
//! a `revision` number that grows with every change. Returning to an old template re-uses its
//! revision object and bumps its number (that is how `kubectl rollout undo` looks from the
//! history). Old revisions beyond `revisionHistoryLimit` that no pod uses are deleted.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use super::{delete_object, is_status, Ctx, Result};
use crate::util;

pub const REVISION_HASH: &str = "controller-revision-hash";

/// The revision snapshot upstream stores (`getPatch`): `{"spec": {"template": <t with
/// "$patch": "replace">}}` — a strategic merge patch `kubectl rollout undo` applies as is, the
/// directive making the old template replace the current one instead of merging into it.
pub fn snapshot(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// `<owner>-<hash>` for a snapshot.
pub fn revision_name(owner: &str, snapshot: &Value) -> String {
    let hash = util::safe_encode(&util::fnv32a(&[snapshot.to_string().as_bytes()]).to_string());
    format!("{owner}-{hash}")
}

/// The pod template stored in a revision.
pub fn template_of(cr: &ControllerRevision) -> Option<Value> {
    let mut t = cr.data.as_ref()?.0["spec"]["template"].clone();
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    (!t.is_null()).then_some(t)
}

/// Revisions controlled by the owner (by uid), oldest first.
pub fn owned(ctx: &Ctx, ns: &str, owner_uid: &str) -> Vec<ControllerRevision> {
    let mut v: Vec<ControllerRevision> = ctx
        .inf
        .revisions
        .list_ns(ns)
        .into_iter()
        .filter(|r| util::controller_of(&r.metadata).is_some_and(|o| o.uid == owner_uid))
        .map(|r| (*r).clone())
        .collect();
    v.sort_by_key(|r| r.revision);
    v
}

/// Makes sure the revision for `template` exists and is the newest; returns its name and
/// number.
pub async fn ensure(
    ctx: &Ctx,
    api_version: &str,
    kind: &str,
    owner: &ObjectMeta,
    labels: &BTreeMap<String, String>,
    template: &Value,
) -> Result<(String, i64)> {
    let ns = owner.namespace.clone().unwrap_or_default();
    let uid = owner.uid.clone().unwrap_or_default();
    let snap = snapshot(template);
    let name = revision_name(owner.name.as_deref().unwrap_or_default(), &snap);
    let revs = owned(ctx, &ns, &uid);
    let max = revs.iter().map(|r| r.revision).max().unwrap_or(0);
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(r) = revs
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(&name))
    {
        if r.revision == max {
            return Ok((name, max));
        }
        // Rolled back to an old template: it becomes the newest revision again.
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"revision": max + 1})),
        )
        .await?;
        return Ok((name, max + 1));
    }
    let mut labels = labels.clone();
    let hash = name.rsplit('-').next().unwrap_or_default().to_string();
    labels.insert(REVISION_HASH.into(), hash);
    let cr = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            owner_references: Some(vec![util::controller_ref(api_version, kind, owner)]),
            ..Default::default()
        },
        data: Some(RawExtension(snap)),
        revision: max + 1,
    };
    match api.create(&PostParams::default(), &cr).await {
        Ok(_) => Ok((name, max + 1)),
        Err(e) if is_status(&e, 409) => {
            // Created by an earlier sync the cache has not shown yet.
            let got = api.get(&name).await?;
            Ok((name, got.revision))
        }
        Err(e) => Err(e.into()),
    }
}

/// The revision hash a pod was made from (its `controller-revision-hash` label).
pub fn revision_hash(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

/// Deletes the oldest revisions of `owner` in `ns` beyond `limit` that are neither one of
/// `current` (revision names) nor used by one of `pods` (revision `<owner>-<hash>`).
pub async fn truncate(
    ctx: &Ctx,
    ns: &str,
    owner: &ObjectMeta,
    limit: i32,
    current: &[&str],
    pods: &[&Pod],
) -> Result<()> {
    let name = owner.name.as_deref().unwrap_or_default();
    let mut keep: HashSet<String> = current.iter().map(|r| r.to_string()).collect();
    keep.extend(
        pods.iter()
            .filter_map(|p| revision_hash(p))
            .map(|h| format!("{name}-{h}")),
    );
    let revs = owned(ctx, ns, owner.uid.as_deref().unwrap_or_default());
    let removable: Vec<&ControllerRevision> = revs
        .iter()
        .filter(|r| !keep.contains(r.metadata.name.as_deref().unwrap_or_default()))
        .collect();
    let excess = removable.len().saturating_sub(limit.max(0) as usize);
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), ns);
    for r in removable.into_iter().take(excess) {
        let name = r.metadata.name.as_deref().unwrap_or_default();
        delete_object(&api, name, &DeleteParams::default()).await?;
    }
    Ok(())
}
