//! Namespace lifecycle, the default ServiceAccount, and the kube-root-ca.crt ConfigMap.
//!
//! - namespace: a Namespace with a deletionTimestamp has every namespaced object in it deleted
//!   (every listable, deletable namespaced resource the API server's discovery offers), and once
//!   nothing is left the `kubernetes` finalizer is removed through `namespaces/<n>/finalize`,
//!   which lets the API server delete the Namespace.
//! - serviceaccount: every active Namespace has a `default` ServiceAccount (re-created if
//!   deleted).
//! - root-ca-certificate-publisher: every active Namespace has `kube-root-ca.crt` with
//!   `ca.crt` from `--root-ca-file` (re-read on each sync; edits by others are reverted).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{verbs, Discovery, Scope};
use serde_json::json;

use super::{is_status, Controller, Ctx, Error, Result};
use crate::informer::key_of;
use crate::queue::WorkQueue;

pub const ROOT_CA: &str = "kube-root-ca.crt";
const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

fn active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

pub fn namespace_controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.namespaces.on_change(move |ns, _| {
        if ns.metadata.deletion_timestamp.is_some() {
            q.add(key_of(ns));
        }
    });
    let c = ctx.clone();
    Controller::new("namespace-controller", queue, 2, move |key| {
        let c = c.clone();
        async move { sync_namespace(&c, &key).await }
    })
}

async fn sync_namespace(ctx: &Ctx, name: &str) -> Result<Option<Duration>> {
    let Some(ns) = ctx.inf.namespaces.get(None, name) else {
        return Ok(None);
    };
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(None);
    }
    let discovery = Discovery::new(ctx.client.clone()).run().await?;
    let mut remaining = 0usize;
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE)
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), name, &ar);
            let list = match api.list_metadata(&ListParams::default()).await {
                Ok(l) => l,
                Err(e) if is_status(&e, 404) || is_status(&e, 405) => continue,
                Err(e) => return Err(e.into()),
            };
            for o in list.items {
                remaining += 1;
                if o.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let n = o.metadata.name.unwrap_or_default();
                match api.delete(&n, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    if remaining > 0 {
        return Ok(Some(Duration::from_secs(1)));
    }
    let finalizers: Vec<String> = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == "kubernetes") {
        return Ok(None);
    }
    let mut fin = (*ns).clone();
    if let Some(spec) = fin.spec.as_mut() {
        spec.finalizers = Some(
            finalizers
                .into_iter()
                .filter(|f| f != "kubernetes")
                .collect(),
        );
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api
        .replace_subresource("finalize", name, &PostParams::default(), &fin)
        .await
    {
        Ok(_) => Ok(None),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) if is_status(&e, 409) => Err(e.into()),
        Err(e) => Err(Error::Other(format!("finalizing namespace {name}: {e}"))),
    }
}

pub fn serviceaccount_controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.namespaces.on_change(move |ns, _| q.add(key_of(ns)));
    let q = queue.clone();
    ctx.inf.serviceaccounts.on_change(move |sa, _| {
        if sa.metadata.name.as_deref() == Some("default") {
            q.add(sa.metadata.namespace.clone().unwrap_or_default());
        }
    });
    let c = ctx.clone();
    Controller::new("serviceaccount-controller", queue, 1, move |ns| {
        let c = c.clone();
        async move {
            let Some(n) = c.inf.namespaces.get(None, &ns) else {
                return Ok(None);
            };
            if !active(&n) || c.inf.serviceaccounts.get(Some(&ns), "default").is_some() {
                return Ok(None);
            }
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("default".into()),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match Api::<ServiceAccount>::namespaced(c.client.clone(), &ns)
                .create(&PostParams::default(), &sa)
                .await
            {
                Ok(_) => Ok(None),
                // Already there (cache behind) or the namespace is terminating.
                Err(e) if is_status(&e, 409) || is_status(&e, 403) || is_status(&e, 404) => {
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        }
    })
}

pub fn root_ca_controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.namespaces.on_change(move |ns, _| q.add(key_of(ns)));
    let q = queue.clone();
    ctx.inf.configmaps.on_change(move |cm, _| {
        if cm.metadata.name.as_deref() == Some(ROOT_CA) {
            q.add(cm.metadata.namespace.clone().unwrap_or_default());
        }
    });
    let c = ctx.clone();
    Controller::new(
        "root-ca-certificate-publisher-controller",
        queue,
        1,
        move |ns| {
            let c = c.clone();
            async move { sync_root_ca(&c, &ns).await }
        },
    )
}

async fn sync_root_ca(ctx: &Ctx, ns: &str) -> Result<Option<Duration>> {
    let Some(path) = &ctx.settings.root_ca_file else {
        return Ok(None);
    };
    let Some(n) = ctx.inf.namespaces.get(None, ns) else {
        return Ok(None);
    };
    if !active(&n) {
        return Ok(None);
    }
    let ca = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| Error::Other(format!("reading --root-ca-file {}: {e}", path.display())))?;
    let data: BTreeMap<String, String> = [("ca.crt".to_string(), ca)].into();
    let annotations: BTreeMap<String, String> = [(
        "kubernetes.io/description".to_string(),
        ROOT_CA_DESCRIPTION.to_string(),
    )]
    .into();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    match ctx.inf.configmaps.get(Some(ns), ROOT_CA) {
        Some(cm) if cm.data.as_ref() == Some(&data) => Ok(None),
        Some(_) => {
            let patch = json!({"data": data, "metadata": {"annotations": annotations}});
            api.patch(
                ROOT_CA,
                &Default::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await?;
            Ok(None)
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA.into()),
                    namespace: Some(ns.into()),
                    annotations: Some(annotations),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => Ok(None),
                Err(e) if is_status(&e, 409) || is_status(&e, 403) || is_status(&e, 404) => {
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}
