//! The pod watch's object type: a core/v1 Pod decoded without `metadata.managedFields`.
//!
//! Every pod reaches the scheduler at least twice through its watch (created, then bound), and
//! kube-rs decodes every watch event into the typed object. The largest part of a pod's JSON
//! that no scheduler code reads is `metadata.managedFields` (server-side apply's field sets,
//! which k8s-openapi decodes into nested `serde_json::Value` maps, an allocation per key): a
//! third of a small pod's JSON and more of its decoding time. [`LitePod`] decodes the same JSON
//! into an ordinary [`Pod`] with that one field skipped by the parser (scanned, never built),
//! so everything downstream keeps using k8s-openapi's types; the cached pods also stay smaller.
//!
//! It is a distinct [`kube::Resource`] with Pod's group, version, kind and plural, so
//! `Api<LitePod>` and `kube::runtime::watcher` address `/api/v1/pods` exactly as for `Pod`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use serde::{Deserialize, Deserializer};

/// A [`Pod`] whose `metadata.managedFields` were not decoded (always `None`).
#[derive(Clone, Debug, PartialEq)]
pub struct LitePod(pub Pod);

impl Resource for LitePod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        <Pod as Resource>::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        <Pod as Resource>::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        <Pod as Resource>::version(dt)
    }
    fn api_version(dt: &()) -> Cow<'_, str> {
        <Pod as Resource>::api_version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        <Pod as Resource>::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

/// `ObjectMeta` minus `managedFields`: serde skips the undeclared key without building it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    metadata: Option<Meta>,
    spec: Option<PodSpec>,
    status: Option<PodStatus>,
}

impl<'de> Deserialize<'de> for LitePod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Raw::deserialize(d)?;
        let metadata = match raw.metadata {
            None => ObjectMeta::default(),
            Some(m) => ObjectMeta {
                annotations: m.annotations,
                creation_timestamp: m.creation_timestamp,
                deletion_grace_period_seconds: m.deletion_grace_period_seconds,
                deletion_timestamp: m.deletion_timestamp,
                finalizers: m.finalizers,
                generate_name: m.generate_name,
                generation: m.generation,
                labels: m.labels,
                managed_fields: None,
                name: m.name,
                namespace: m.namespace,
                owner_references: m.owner_references,
                resource_version: m.resource_version,
                self_link: m.self_link,
                uid: m.uid,
            },
        };
        Ok(LitePod(Pod {
            metadata,
            spec: raw.spec,
            status: raw.status,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_like_pod_without_managed_fields() {
        // Every ObjectMeta field set, so a field LitePod forgot would differ below.
        let v = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "annotations": {"a": "1"}, "creationTimestamp": "2026-11-21T10:00:00Z",
                "deletionGracePeriodSeconds": 30, "deletionTimestamp": "2026-11-21T10:01:00Z",
                "finalizers": ["f"], "generateName": "p-", "generation": 2,
                "labels": {"app": "x"}, "name": "p-1", "namespace": "ns",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u-rs", "controller": true}],
                "resourceVersion": "42", "selfLink": "/api/v1/namespaces/ns/pods/p-1", "uid": "u-1",
                "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]
            },
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"cpu": "100m"}}}]},
            "status": {"phase": "Pending", "nominatedNodeName": "n2"}
        });
        let lite: LitePod = serde_json::from_value(v.clone()).unwrap();
        let mut full: Pod = serde_json::from_value(v).unwrap();
        assert!(full.metadata.managed_fields.is_some());
        full.metadata.managed_fields = None;
        assert_eq!(lite.0, full);
        // Every ObjectMeta field but managedFields survives a round trip through LitePod.
        let back = serde_json::to_value(&lite.0).unwrap();
        let fields = back["metadata"].as_object().unwrap().len();
        assert_eq!(fields, 14, "{back}");
    }

    #[test]
    fn minimal_and_null_objects_decode() {
        let lite: LitePod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(lite.0.metadata.name.as_deref(), Some("p"));
        assert!(lite.0.spec.is_none());
        let lite: LitePod =
            serde_json::from_value(json!({"metadata": {"labels": null}, "spec": null})).unwrap();
        assert!(lite.0.metadata.labels.is_none());
        assert!(serde_json::from_value::<LitePod>(json!({"spec": 3})).is_err());
    }

    #[test]
    fn addresses_the_pods_resource() {
        assert_eq!(
            LitePod::url_path(&(), Some("ns")),
            Pod::url_path(&(), Some("ns"))
        );
        assert_eq!(LitePod::kind(&()), "Pod");
        assert_eq!(LitePod::api_version(&()), "v1");
    }
}
