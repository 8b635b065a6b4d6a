//! Pod creation and deletion on behalf of a controller, shared by the replicaset, job and
//! daemonset controllers (upstream's `controller.PodControl` and `ControllerExpectations`).
//!
//! - [`pod_from_template`] makes the pod a controller creates: the template's metadata and
//!   spec, a generated name, the owner's namespace and a controller reference to the owner;
//!   each controller then adds its own marks (job index, daemon node affinity, ...).
//! - [`create_pod`] / [`delete_pod`] do the API call and record the events upstream's pod
//!   control records on the owner (SuccessfulCreate "Created pod: x", FailedCreate "Error
//!   creating: ...", SuccessfulDelete / FailedDelete), so every controller reports the same way.
//! - [`Expectations`]: after creating or deleting pods the informer cache lags; acting on it
//!   again would over-create. Each owner remembers the names it created and deleted and only
//!   manages pods again once the cache shows all of them (or after a timeout, in case a watch
//!   event was lost).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::Resource;
use parking_lot::Mutex;

use super::{err_message, is_status, Ctx};
use crate::events::EventType;
use crate::util;

/// How long unmet expectations hold a controller back before it acts on the cache anyway.
const EXPECTATIONS_TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Expect {
    adds: HashSet<String>,
    dels: HashSet<String>,
    at: Option<Instant>,
}

/// Pods a controller created/deleted that the cache has not shown yet, per owner key.
#[derive(Default, Clone)]
pub(crate) struct Expectations(Arc<Mutex<HashMap<String, Expect>>>);

impl Expectations {
    /// Whether the cache shows every pod `key` created and deleted (pods in `ns`).
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

    /// Remembers pods `key` just created (`adds`) and deleted (`dels`).
    pub(crate) fn expect(&self, key: &str, adds: Vec<String>, dels: Vec<String>) {
        let mut g = self.0.lock();
        let e = g.entry(key.to_string()).or_default();
        e.adds.extend(adds);
        e.dels.extend(dels);
        e.at = Some(Instant::now());
    }

    /// Drops what `key` expected (the owner is gone).
    pub(crate) fn forget(&self, key: &str) {
        self.0.lock().remove(key);
    }
}

/// The pod a controller creates from `tmpl` for `owner` (of `api_version`/`kind`): named
/// `generate_name` plus a random suffix, in the owner's namespace, controlled by the owner.
pub(crate) fn pod_from_template(
    tmpl: &PodTemplateSpec,
    owner: &ObjectMeta,
    api_version: &str,
    kind: &str,
    generate_name: String,
) -> Pod {
    let mut meta = tmpl.metadata.clone().unwrap_or_default();
    meta.name = None;
    meta.generate_name = Some(generate_name);
    meta.namespace = owner.namespace.clone();
    meta.owner_references = Some(vec![util::controller_ref(api_version, kind, owner)]);
    Pod {
        metadata: meta,
        spec: tmpl.spec.clone(),
        status: None,
    }
}

/// Creates `pod` for `owner` and records SuccessfulCreate or FailedCreate on it as
/// `component`; returns the generated name.
pub(crate) async fn create_pod<K: Resource<DynamicType = ()>>(
    ctx: &Ctx,
    api: &Api<Pod>,
    component: &'static str,
    owner: &K,
    pod: &Pod,
) -> Result<String, kube::Error> {
    match api.create(&PostParams::default(), pod).await {
        Ok(p) => {
            let name = p.metadata.name.unwrap_or_default();
            ctx.events.event(
                component,
                owner,
                EventType::Normal,
                "SuccessfulCreate",
                format!("Created pod: {name}"),
            );
            Ok(name)
        }
        Err(e) => {
            ctx.events.event(
                component,
                owner,
                EventType::Warning,
                "FailedCreate",
                format!("Error creating: {}", err_message(&e)),
            );
            Err(e)
        }
    }
}

/// Deletes pod `name` of `owner` and records SuccessfulDelete or FailedDelete on it as
/// `component`. `Ok(false)`: the pod was gone already (no event, as upstream).
pub(crate) async fn delete_pod<K: Resource<DynamicType = ()>>(
    ctx: &Ctx,
    api: &Api<Pod>,
    component: &'static str,
    owner: &K,
    name: &str,
    dp: &DeleteParams,
) -> Result<bool, kube::Error> {
    match api.delete(name, dp).await {
        Ok(_) => {
            ctx.events.event(
                component,
                owner,
                EventType::Normal,
                "SuccessfulDelete",
                format!("Deleted pod: {name}"),
            );
            Ok(true)
        }
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => {
            ctx.events.event(
                component,
                owner,
                EventType::Warning,
                "FailedDelete",
                format!("Error deleting: {}", err_message(&e)),
            );
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_pods_are_owned_and_named_by_their_controller() {
        let tmpl: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"name": "ignored", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        let owner = ObjectMeta {
            name: Some("web-1".into()),
            namespace: Some("ns".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let pod = pod_from_template(&tmpl, &owner, "apps/v1", "ReplicaSet", "web-1-".into());
        assert_eq!(pod.metadata.name, None);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-1-"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(
            pod.metadata.labels.as_ref().and_then(|l| l.get("app")),
            Some(&"web".to_string())
        );
        let refs = pod.metadata.owner_references.unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(
            (refs[0].kind.as_str(), refs[0].uid.as_str()),
            ("ReplicaSet", "u1")
        );
        assert_eq!(refs[0].controller, Some(true));
        assert_eq!(pod.spec, tmpl.spec);
    }
}
