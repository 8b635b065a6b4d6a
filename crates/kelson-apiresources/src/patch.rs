//! Patch metadata of the built-in types: per (definition, field) the strategic-merge-patch
//! strategy and merge key, the server-side-apply list/map types, and the definition a field
//! descends into.
//!
//! `k8s-openapi`'s `schemars` schemas do not carry upstream's `x-kubernetes-patch-*` /
//! `x-kubernetes-list-*` extensions, so the facts live in a table generated from the upstream
//! OpenAPI v2 document by the `gen-patch-meta` binary ([`crate::patch_meta`]). The table is
//! sorted by `(definition, field)`, so lookups are binary searches. It serves two consumers:
//! the strategic merge patch (through [`Meta`], a cursor that walks from a kind's definition
//! down through fields) and the OpenAPI generator, which re-attaches the extensions to the
//! schemas it serves so `kubectl apply` and `kubectl explain` see what upstream serves.

use crate::patch_meta::{DEFINITION_MAP_TYPES, FIELDS};
use crate::registry;

/// What a field holds, which decides how a patch descends into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A nested object (the field's schema is a `$ref` to [`FieldMeta::ref_target`]).
    Object,
    /// An array (of `ref_target` objects when set, of scalars otherwise).
    List,
    /// A string-keyed map (`additionalProperties`; values are `ref_target` objects when set).
    Map,
    /// Anything else (strings, numbers, quantities, raw JSON).
    Scalar,
}

/// The patch facts of one field of one definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldMeta {
    /// Upstream definition name, e.g. `io.k8s.api.core.v1.PodSpec`.
    pub definition: &'static str,
    /// JSON field name, e.g. `containers`.
    pub field: &'static str,
    pub shape: Shape,
    /// `x-kubernetes-patch-strategy`: `merge`, `retainKeys`, `merge,retainKeys`, `replace`.
    pub patch_strategy: Option<&'static str>,
    /// `x-kubernetes-patch-merge-key`.
    pub patch_merge_key: Option<&'static str>,
    /// `x-kubernetes-list-type`: `atomic`, `set`, `map`.
    pub list_type: Option<&'static str>,
    /// `x-kubernetes-list-map-keys`.
    pub list_map_keys: &'static [&'static str],
    /// `x-kubernetes-map-type` on the field: `atomic`, `granular`.
    pub map_type: Option<&'static str>,
    /// The object definition the field (or its items / map values) refers to.
    pub ref_target: Option<&'static str>,
}

impl FieldMeta {
    /// Whether strategic merge patch merges this list element-wise (by merge key for object
    /// lists, as a set for scalar lists) instead of replacing it.
    pub fn merges(&self) -> bool {
        self.patch_strategy
            .is_some_and(|s| s.split(',').any(|p| p == "merge"))
    }

    /// Whether the `retainKeys` strategy applies (clear fields the patch does not mention).
    pub fn retains_keys(&self) -> bool {
        self.patch_strategy
            .is_some_and(|s| s.split(',').any(|p| p == "retainKeys"))
    }
}

/// Every field with a patch fact or a definition to descend into, sorted.
pub fn all_fields() -> &'static [FieldMeta] {
    FIELDS
}

/// The facts of `definition.field`, if the field has any.
pub fn field_meta(definition: &str, field: &str) -> Option<&'static FieldMeta> {
    FIELDS
        .binary_search_by(|m| (m.definition, m.field).cmp(&(definition, field)))
        .ok()
        .map(|i| &FIELDS[i])
}

/// All recorded fields of one definition.
pub fn fields_of(definition: &str) -> &'static [FieldMeta] {
    let start = FIELDS.partition_point(|m| m.definition < definition);
    let end = FIELDS.partition_point(|m| m.definition <= definition);
    &FIELDS[start..end]
}

/// `x-kubernetes-map-type` of a whole definition (e.g. `LabelSelector` is `atomic`).
pub fn definition_map_type(definition: &str) -> Option<&'static str> {
    DEFINITION_MAP_TYPES
        .binary_search_by(|(d, _)| (*d).cmp(definition))
        .ok()
        .map(|i| DEFINITION_MAP_TYPES[i].1)
}

/// A position in the type tree: the definition whose fields a patch is currently merging.
/// Start at a kind with [`Meta::for_kind`], step into fields with [`Meta::child`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    definition: &'static str,
}

impl Meta {
    /// The root of a built-in kind (`("apps", "v1", "Deployment")`), or of its list kind.
    pub fn for_kind(group: &str, version: &str, kind: &str) -> Option<Meta> {
        if let Some(r) = registry::by_kind(group, version, kind) {
            return Some(Meta {
                definition: r.definition,
            });
        }
        // Lists and subresource kinds (Scale, Eviction, ...) are found by definition name.
        let wanted = format!(
            "io.k8s.api.{}.{version}.{kind}",
            registry::group_package(group)
        );
        Self::for_definition(&wanted)
    }

    /// A cursor at a definition that has recorded fields (or at least a definition map type).
    pub fn for_definition(definition: &str) -> Option<Meta> {
        let name = fields_of(definition)
            .first()
            .map(|f| f.definition)
            .or_else(|| {
                DEFINITION_MAP_TYPES
                    .iter()
                    .find(|(d, _)| *d == definition)
                    .map(|(d, _)| *d)
            })?;
        Some(Meta { definition: name })
    }

    pub fn definition(&self) -> &'static str {
        self.definition
    }

    /// The facts of a field of this definition.
    pub fn field(&self, name: &str) -> Option<&'static FieldMeta> {
        field_meta(self.definition, name)
    }

    /// The definition a field's value (or its list items / map values) descends into.
    pub fn child(&self, name: &str) -> Option<Meta> {
        let target = self.field(name)?.ref_target?;
        Some(Meta { definition: target })
    }

    /// `x-kubernetes-map-type` of this definition.
    pub fn map_type(&self) -> Option<&'static str> {
        definition_map_type(self.definition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_SPEC: &str = "io.k8s.api.core.v1.PodSpec";
    const CONTAINER: &str = "io.k8s.api.core.v1.Container";
    const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(FIELDS.len() > 100, "generated table looks empty");
        for w in FIELDS.windows(2) {
            assert!(
                (w[0].definition, w[0].field) < (w[1].definition, w[1].field),
                "{:?} !< {:?}",
                w[0],
                w[1]
            );
        }
        for w in DEFINITION_MAP_TYPES.windows(2) {
            assert!(w[0].0 < w[1].0);
        }
    }

    #[test]
    fn well_known_merge_keys() {
        let containers = field_meta(POD_SPEC, "containers").unwrap();
        assert_eq!(containers.patch_strategy, Some("merge"));
        assert_eq!(containers.patch_merge_key, Some("name"));
        assert_eq!(containers.list_type, Some("map"));
        assert_eq!(containers.list_map_keys, &["name"]);
        assert_eq!(containers.shape, Shape::List);
        assert_eq!(containers.ref_target, Some(CONTAINER));
        assert!(containers.merges());

        let ports = field_meta(CONTAINER, "ports").unwrap();
        assert_eq!(ports.patch_merge_key, Some("containerPort"));
        assert!(ports.merges());
        assert_eq!(ports.list_map_keys, &["containerPort", "protocol"]);

        let env = field_meta(CONTAINER, "env").unwrap();
        assert_eq!(env.patch_merge_key, Some("name"));
        assert!(env.merges());

        let volumes = field_meta(POD_SPEC, "volumes").unwrap();
        assert_eq!(volumes.patch_merge_key, Some("name"));
        assert_eq!(volumes.patch_strategy, Some("merge,retainKeys"));
        assert!(volumes.merges() && volumes.retains_keys());

        let finalizers = field_meta(OBJECT_META, "finalizers").unwrap();
        assert_eq!(finalizers.patch_strategy, Some("merge"));
        assert_eq!(finalizers.patch_merge_key, None);
        assert_eq!(finalizers.list_type, Some("set"));
        assert_eq!(finalizers.ref_target, None);

        let tolerations = field_meta(POD_SPEC, "tolerations").unwrap();
        assert_eq!(tolerations.patch_strategy, None);
        assert!(!tolerations.merges());
        assert_eq!(tolerations.list_type, Some("atomic"));

        let owners = field_meta(OBJECT_META, "ownerReferences").unwrap();
        assert_eq!(owners.patch_merge_key, Some("uid"));
        assert!(owners.merges());

        let node_selector = field_meta(POD_SPEC, "nodeSelector").unwrap();
        assert_eq!(node_selector.map_type, Some("atomic"));
        assert_eq!(node_selector.shape, Shape::Map);

        assert_eq!(
            definition_map_type("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"),
            Some("atomic")
        );
        // Scalar fields without facts are not recorded.
        assert!(field_meta(CONTAINER, "image").is_none());
    }

    #[test]
    fn meta_descends_from_kinds() {
        let dep = Meta::for_kind("apps", "v1", "Deployment").unwrap();
        let containers = dep
            .child("spec")
            .and_then(|m| m.child("template"))
            .and_then(|m| m.child("spec"))
            .and_then(|m| m.field("containers"))
            .unwrap();
        assert_eq!(containers.patch_merge_key, Some("name"));
        let meta = dep.child("metadata").unwrap();
        assert_eq!(meta.definition(), OBJECT_META);
        assert_eq!(
            meta.field("ownerReferences").unwrap().patch_merge_key,
            Some("uid")
        );
        let svc = Meta::for_kind("", "v1", "Service").unwrap();
        let ports = svc.child("spec").unwrap().field("ports").unwrap();
        assert_eq!(ports.patch_merge_key, Some("port"));
        assert!(Meta::for_kind("autoscaling", "v1", "Scale").is_some());
        assert!(Meta::for_kind("", "v1", "NoSuchKind").is_none());
    }

    #[test]
    fn every_registry_kind_has_an_entry() {
        for r in registry::resources() {
            assert!(
                Meta::for_definition(r.definition).is_some(),
                "{} has no patch metadata",
                r.definition
            );
        }
    }
}

/// The generated table, as strategic merge patch consumes it.
///
/// Upstream's strategic merge patch (like kubectl's) reads only the patch strategy and merge key;
/// the list-type / map-keys facts are for server-side apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmpMeta;

impl kelson_apimachinery::patch::PatchMeta for SmpMeta {
    fn field(
        &self,
        definition: &str,
        field: &str,
    ) -> Option<kelson_apimachinery::patch::FieldMeta> {
        let m = field_meta(definition, field)?;
        Some(kelson_apimachinery::patch::FieldMeta {
            strategy: m
                .patch_strategy
                .map(kelson_apimachinery::patch::Strategy::parse)
                .unwrap_or(kelson_apimachinery::patch::Strategy::NONE),
            merge_key: m.patch_merge_key.map(str::to_string),
            ref_definition: m.ref_target.map(str::to_string),
        })
    }
}

#[cfg(test)]
mod smp_tests {
    use super::*;
    use serde_json::json;

    /// The table drives the real strategic merge patch: kubectl's typical image change on a
    /// Deployment merges by container name instead of replacing the list.
    #[test]
    fn deployment_image_patch_merges_containers_by_name() {
        let orig = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"a": "1", "b": "2"}},
            "spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "busybox:1", "ports": [{"containerPort": 80}]},
                {"name": "side", "image": "sidecar:1"}]}}}});
        let patch = json!({"metadata": {"labels": {"b": null}},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "busybox:2"}]}}}});
        let out = kelson_apimachinery::patch::strategic_merge_patch(
            &orig,
            &patch,
            &SmpMeta,
            "io.k8s.api.apps.v1.Deployment",
        )
        .unwrap();
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().unwrap().len(), 2, "{out}");
        assert_eq!(containers[0]["image"], "busybox:2");
        assert_eq!(containers[0]["ports"][0]["containerPort"], 80);
        assert_eq!(containers[1]["name"], "side");
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
    }
}
