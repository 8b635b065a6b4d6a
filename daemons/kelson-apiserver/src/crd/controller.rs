//! The CRD controller inside each API server (upstream runs the same controllers in its
//! apiextensions-apiserver): it lists and watches CRDs in the store and
//! - rebuilds the served custom-resource table (`super::set_crds`) on every change, so every
//!   API server over one store serves the same resources and a restarted one reloads them;
//! - checks names against the group's other CRDs and writes `status.acceptedNames`, the
//!   `NamesAccepted` and `Established` conditions and `storedVersions` (only when they
//!   change, so its own writes do not loop);
//! - for a deleting CRD: stops serving it, marks it `Terminating`, deletes every instance
//!   and then releases the `customresourcecleanup.apiextensions.k8s.io` finalizer, deleting
//!   the CRD when no finalizer remains.
//!
//! Several API servers may race on the same CRD: every write is a guaranteed update that
//! recomputes from the fresh object, and deleting instances is idempotent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kelson_apimachinery::ApiError;
use kelson_apistorage::{ListOptions, Preconditions, WatchEvent};
use serde_json::{json, Value};

use super::{CLEANUP_FINALIZER, CRD_INFO};
use crate::server::Api;

fn crd_prefix(api: &Api) -> String {
    crate::handlers::key(api, &CRD_INFO, None, "")
}

/// Runs until the task is aborted: list, reconcile all, watch; relist on any watch end.
pub async fn run(api: Arc<Api>) {
    loop {
        if let Err(e) = round(&api).await {
            tracing::debug!(error = %e, "CRD watch ended; relisting");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Loads the served set once (startup, before READY, so a restarted server serves at once).
pub async fn load(api: &Arc<Api>) -> Result<(), ApiError> {
    super::conversion::register(api);
    let res = api
        .store
        .list(&crd_prefix(api), &ListOptions::default(), None)
        .await
        .map_err(|e| e.to_api_error(CRD_INFO.group, CRD_INFO.resource, ""))?;
    let crds: BTreeMap<String, Value> = res.items.into_iter().map(|o| (name_of(&o), o)).collect();
    publish(&crds);
    Ok(())
}

fn name_of(o: &Value) -> String {
    o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn round(api: &Arc<Api>) -> Result<(), ApiError> {
    let prefix = crd_prefix(api);
    let res = api
        .store
        .list(&prefix, &ListOptions::default(), None)
        .await
        .map_err(|e| e.to_api_error(CRD_INFO.group, CRD_INFO.resource, ""))?;
    let mut crds: BTreeMap<String, Value> =
        res.items.into_iter().map(|o| (name_of(&o), o)).collect();
    publish(&crds);
    let names: Vec<String> = crds.keys().cloned().collect();
    for n in names {
        reconcile(api, &crds, &n).await;
    }
    let mut events = api
        .store
        .watch(&prefix, true, res.resource_version, None, false)
        .await
        .map_err(|e| e.to_api_error(CRD_INFO.group, CRD_INFO.resource, ""))?;
    // Relist now and then: it retries reconciles that failed (store hiccups, races).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ev = match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) | Ok(None) => return Ok(()),
            Ok(Some(ev)) => ev,
        };
        match ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                let n = name_of(&o);
                crds.insert(n.clone(), o);
                publish(&crds);
                reconcile(api, &crds, &n).await;
            }
            WatchEvent::Deleted(o) => {
                crds.remove(&name_of(&o));
                publish(&crds);
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => {
                return Err(e.to_api_error(CRD_INFO.group, CRD_INFO.resource, ""))
            }
        }
    }
}

/// Names another CRD of the same group already claims (plural, singular, shortNames, kind,
/// listKind), upstream's NamingConditionController check. The older CRD keeps its names.
fn conflict(crds: &BTreeMap<String, Value>, crd: &Value) -> Option<String> {
    let group = &crd["spec"]["group"];
    let names = |c: &Value| -> (Vec<String>, Vec<String>) {
        let n = &c["spec"]["names"];
        let mut res: Vec<String> = [&n["plural"], &n["singular"]]
            .iter()
            .filter_map(|v| v.as_str())
            .map(String::from)
            .collect();
        res.extend(super::strs(&n["shortNames"]));
        let kinds: Vec<String> = [&n["kind"], &n["listKind"]]
            .iter()
            .filter_map(|v| v.as_str())
            .map(String::from)
            .collect();
        (res, kinds)
    };
    let (mine, my_kinds) = names(crd);
    let created = |c: &Value| {
        c["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for other in crds.values() {
        if other["metadata"]["name"] == crd["metadata"]["name"] || &other["spec"]["group"] != group
        {
            continue;
        }
        if (created(other), name_of(other)) > (created(crd), name_of(crd)) {
            continue;
        }
        let (theirs, their_kinds) = names(other);
        if let Some(n) = mine.iter().find(|n| theirs.contains(n)) {
            return Some(format!("{n:?} is already in use"));
        }
        if let Some(k) = my_kinds.iter().find(|k| their_kinds.contains(k)) {
            return Some(format!("{k:?} is already in use"));
        }
    }
    None
}

fn accepted(crds: &BTreeMap<String, Value>, crd: &Value) -> bool {
    crd["metadata"]["deletionTimestamp"].is_null() && conflict(crds, crd).is_none()
}

fn publish(crds: &BTreeMap<String, Value>) {
    super::set_crds(crds.values().filter(|c| accepted(crds, c)));
}

fn condition(ty: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({"type": ty, "status": if status { "True" } else { "False" }, "reason": reason,
        "message": message, "lastTransitionTime": kelson_apimachinery::meta::now_rfc3339()})
}

/// Merges `conds` into `status.conditions`, keeping transition times of unchanged ones.
fn set_conditions(status: &mut Value, conds: Vec<Value>) {
    let mut list = status["conditions"].as_array().cloned().unwrap_or_default();
    for c in conds {
        match list.iter_mut().find(|x| x["type"] == c["type"]) {
            Some(x) => {
                if x["status"] != c["status"]
                    || x["reason"] != c["reason"]
                    || x["message"] != c["message"]
                {
                    *x = c;
                }
            }
            None => list.push(c),
        }
    }
    status["conditions"] = json!(list);
}

fn desired_status(crds: &BTreeMap<String, Value>, crd: &Value) -> Value {
    let mut status = crd["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    let mut stored = super::strs(&status["storedVersions"]);
    if let Some(sv) = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == true)
        .and_then(|v| v["name"].as_str())
    {
        if !stored.iter().any(|s| s == sv) {
            stored.push(sv.to_string());
        }
    }
    status["storedVersions"] = json!(stored);
    if crd["metadata"]["deletionTimestamp"].is_string() {
        set_conditions(
            &mut status,
            vec![condition(
                "Terminating",
                true,
                "InstanceDeletionInProgress",
                "CustomResource deletion is in progress",
            )],
        );
        return status;
    }
    match conflict(crds, crd) {
        Some(why) => set_conditions(
            &mut status,
            vec![
                condition("NamesAccepted", false, "MultipleNamesConflict", &why),
                condition(
                    "Established",
                    false,
                    "NotAccepted",
                    "not all names are accepted",
                ),
            ],
        ),
        None => {
            let mut names = crd["spec"]["names"].clone();
            if names["singular"].is_null() {
                names["singular"] = json!(names["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_lowercase());
            }
            status["acceptedNames"] = names;
            set_conditions(
                &mut status,
                vec![
                    condition("NamesAccepted", true, "NoConflicts", "no conflicts found"),
                    condition(
                        "Established",
                        true,
                        "InitialNamesAccepted",
                        "the initial names have been accepted",
                    ),
                ],
            );
        }
    }
    status
}

fn same_status(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        for c in v["conditions"].as_array_mut().into_iter().flatten() {
            if let Some(m) = c.as_object_mut() {
                m.remove("lastTransitionTime");
            }
        }
        v
    };
    strip(a) == strip(b)
}

async fn reconcile(api: &Arc<Api>, crds: &BTreeMap<String, Value>, name: &str) {
    let Some(crd) = crds.get(name) else { return };
    let key = crate::handlers::key(api, &CRD_INFO, None, name);
    let want = desired_status(crds, crd);
    if !same_status(&crd["status"], &want) {
        let res = api
            .store
            .guaranteed_update(&key, &Preconditions::default(), false, |mut cur| {
                let st = desired_status(crds, &cur);
                cur["status"] = st;
                Ok::<_, ApiError>(cur)
            })
            .await;
        if let Err(e) = res {
            tracing::debug!(crd = name, error = %e, "CRD status update failed");
            return;
        }
    }
    if crd["metadata"]["deletionTimestamp"].is_string() {
        if let Err(e) = cleanup(api, crd).await {
            tracing::warn!(crd = name, error = %e.message, "deleting custom resources");
        }
    }
}

/// Deletes every instance of a deleting CRD, then releases the cleanup finalizer.
async fn cleanup(api: &Arc<Api>, crd: &Value) -> Result<(), ApiError> {
    let has_fin = crd["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == CLEANUP_FINALIZER));
    let name = name_of(crd);
    let key = crate::handlers::key(api, &CRD_INFO, None, &name);
    let err = |e: kelson_apistorage::StorageError| {
        e.to_api_error(CRD_INFO.group, CRD_INFO.resource, &name)
    };
    if has_fin {
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
        if group.is_empty() || plural.is_empty() {
            return Err(ApiError::internal("CRD without group or plural"));
        }
        let prefix = format!("{}/{group}/{plural}/", api.root.trim_end_matches('/'));
        let items = api
            .store
            .list(&prefix, &ListOptions::default(), None)
            .await
            .map_err(err)?
            .items;
        for o in items {
            let k = match o["metadata"]["namespace"].as_str() {
                Some(ns) => format!("{prefix}{ns}/{}", name_of(&o)),
                None => format!("{prefix}{}", name_of(&o)),
            };
            match api
                .store
                .delete(&k, &Preconditions::default(), false, |_| {
                    Ok::<_, ApiError>(())
                })
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into_api_error(group, plural, &name_of(&o))),
            }
        }
        let out = api
            .store
            .guaranteed_update(&key, &Preconditions::default(), false, |mut cur| {
                if let Some(f) = cur["metadata"]["finalizers"].as_array_mut() {
                    f.retain(|x| x != CLEANUP_FINALIZER);
                }
                Ok::<_, ApiError>(cur)
            })
            .await
            .map_err(|e| e.into_api_error(CRD_INFO.group, CRD_INFO.resource, &name))?;
        if out["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            return Ok(());
        }
    } else if crd["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
    {
        return Ok(());
    }
    match api
        .store
        .delete(&key, &Preconditions::default(), false, |cur| {
            if cur["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
            {
                Err(ApiError::conflict(
                    CRD_INFO.group,
                    CRD_INFO.resource,
                    &name,
                    "finalizers were added concurrently",
                ))
            } else {
                Ok(())
            }
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into_api_error(CRD_INFO.group, CRD_INFO.resource, &name)),
    }
}
