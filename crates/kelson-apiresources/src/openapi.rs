//! OpenAPI v2 (`/openapi/v2`) and v3 (`/openapi/v3`, `/openapi/v3/<gv path>`) documents.
//!
//! Schemas come from `k8s-openapi`'s `schemars` impls, whose schema names already are
//! upstream's definition names (`io.k8s.api.core.v1.Pod`). One generator collects every
//! served kind (and, transitively, what it references); then the pieces upstream serves and
//! `schemars` does not know about are added:
//! - list kinds (`PodList`), which `k8s-openapi` models as a generic `List<T>` without a schema;
//! - `x-kubernetes-group-version-kind` on top-level kinds (kubectl finds schemas by GVK);
//! - the patch facts of [`crate::patch`] (`x-kubernetes-patch-strategy`, `-patch-merge-key`,
//!   `-list-type`, `-list-map-keys`, `-map-type`), which `kubectl apply` and server-side
//!   apply tooling read;
//! - paths: get/list/create/update/patch/delete/deletecollection (and subresources) with
//!   `x-kubernetes-action` and `x-kubernetes-group-version-kind`.
//!
//! The `$ref`s are then rewritten per format: `#/definitions/X` for v2 (description beside the
//! `$ref`, as upstream's v2), `#/components/schemas/X` for v3 (a `$ref` with siblings wrapped
//! in `allOf`, as upstream's v3). Each v3 group-version document carries only the schemas its
//! paths reach. Documents are serialized once, lazily; their hashes are the ETags and the
//! `?hash=` of the v3 index.

use crate::patch;
use crate::registry::{self, ResourceInfo, Subresource};
use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha512};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// The Kubernetes version the documents describe (the `k8s-openapi` feature in use).
pub const KUBERNETES_VERSION: &str = "v1.33.0";

const DEFS_PREFIX: &str = "#/$defs/";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

/// Feeds every served type into the generator; the registry test proves none is missing.
fn add_types(g: &mut SchemaGenerator) {
    use k8s_openapi::api::{
        apps, authentication, authorization, autoscaling, batch, certificates, coordination, core,
        discovery, events, policy, rbac, scheduling,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    macro_rules! add {
        ($($t:ty),* $(,)?) => { $( g.subschema_for::<$t>(); )* };
    }
    add!(
        core::v1::Binding,
        core::v1::ConfigMap,
        core::v1::Endpoints,
        core::v1::Event,
        core::v1::LimitRange,
        core::v1::Namespace,
        core::v1::Node,
        core::v1::PersistentVolumeClaim,
        core::v1::PersistentVolume,
        core::v1::Pod,
        core::v1::PodTemplate,
        core::v1::ReplicationController,
        core::v1::ResourceQuota,
        core::v1::Secret,
        core::v1::ServiceAccount,
        core::v1::Service,
        apps::v1::ControllerRevision,
        apps::v1::DaemonSet,
        apps::v1::Deployment,
        apps::v1::ReplicaSet,
        apps::v1::StatefulSet,
        events::v1::Event,
        authentication::v1::SelfSubjectReview,
        authorization::v1::LocalSubjectAccessReview,
        authorization::v1::SelfSubjectAccessReview,
        authorization::v1::SelfSubjectRulesReview,
        authorization::v1::SubjectAccessReview,
        batch::v1::CronJob,
        batch::v1::Job,
        certificates::v1::CertificateSigningRequest,
        policy::v1::PodDisruptionBudget,
        policy::v1::Eviction,
        rbac::v1::ClusterRoleBinding,
        rbac::v1::ClusterRole,
        rbac::v1::RoleBinding,
        rbac::v1::Role,
        scheduling::v1::PriorityClass,
        coordination::v1::Lease,
        discovery::v1::EndpointSlice,
        autoscaling::v1::Scale,
        authentication::v1::TokenRequest,
        authentication::v1::TokenReview,
        meta::DeleteOptions,
        meta::Status,
        meta::ListMeta,
        meta::Patch,
        meta::WatchEvent<()>,
        meta::APIResourceList,
        meta::APIGroupList,
        meta::APIVersions,
    );
}

/// Every definition, with GVKs and patch facts, `$ref`s still as `#/$defs/X`.
fn definitions() -> &'static Map<String, Value> {
    static DEFS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(build_definitions)
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "kind": kind, "version": version})
}

fn push_gvk(defs: &mut Map<String, Value>, def: &str, gvk: Value) {
    if let Some(Value::Object(schema)) = defs.get_mut(def) {
        let list = schema
            .entry("x-kubernetes-group-version-kind")
            .or_insert_with(|| json!([]));
        if let Some(list) = list.as_array_mut() {
            if !list.contains(&gvk) {
                list.push(gvk);
            }
        }
    }
}

fn list_schema(r: &ResourceInfo) -> Value {
    json!({
        "description": format!("{}List is a list of {} objects.", r.kind, r.kind),
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources",
                "type": "string",
            },
            "items": {
                "description": format!("List of {}.", r.resource),
                "type": "array",
                "items": {"$ref": format!("{DEFS_PREFIX}{}", r.definition)},
            },
            "kind": {
                "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
                "type": "string",
            },
            "metadata": {
                "$ref": format!("{DEFS_PREFIX}{META}.ListMeta"),
                "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
            },
        },
        "required": ["items"],
    })
}

fn build_definitions() -> Map<String, Value> {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.meta_schema = None;
        // No transforms: `$ref` siblings stay, each output format decides their shape.
        s.transforms.clear();
    });
    let mut g = SchemaGenerator::new(settings);
    add_types(&mut g);
    let mut defs = g.take_definitions(false);

    for r in registry::resources() {
        push_gvk(&mut defs, r.definition, gvk(r.group, r.version, r.kind));
        if r.listable() {
            defs.insert(r.list_definition(), list_schema(r));
            push_gvk(
                &mut defs,
                &r.list_definition(),
                gvk(r.group, r.version, &r.list_kind()),
            );
        }
        for s in r.subresources {
            if let Some(def) = s.definition() {
                push_gvk(&mut defs, &def, gvk(s.group, s.version, s.kind));
            }
        }
    }
    // Meta kinds are served in every group version, as upstream lists them.
    for (grp, ver) in registry::group_versions() {
        for kind in ["DeleteOptions", "WatchEvent"] {
            push_gvk(&mut defs, &format!("{META}.{kind}"), gvk(grp, ver, kind));
        }
    }
    push_gvk(
        &mut defs,
        &format!("{META}.Status"),
        gvk("", "v1", "Status"),
    );
    push_gvk(
        &mut defs,
        &format!("{META}.APIResourceList"),
        gvk("", "v1", "APIResourceList"),
    );
    push_gvk(
        &mut defs,
        &format!("{META}.APIGroupList"),
        gvk("", "v1", "APIGroupList"),
    );
    push_gvk(
        &mut defs,
        &format!("{META}.APIVersions"),
        gvk("", "v1", "APIVersions"),
    );

    // Patch facts, from the table generated off upstream's document.
    for (name, schema) in defs.iter_mut() {
        let Value::Object(schema) = schema else {
            continue;
        };
        if let Some(mt) = patch::definition_map_type(name) {
            schema.insert("x-kubernetes-map-type".into(), mt.into());
        }
        let Some(Value::Object(props)) = schema.get_mut("properties") else {
            continue;
        };
        for f in patch::fields_of(name) {
            let Some(Value::Object(prop)) = props.get_mut(f.field) else {
                continue;
            };
            let facts = [
                ("x-kubernetes-patch-strategy", f.patch_strategy),
                ("x-kubernetes-patch-merge-key", f.patch_merge_key),
                ("x-kubernetes-list-type", f.list_type),
                ("x-kubernetes-map-type", f.map_type),
            ];
            for (key, value) in facts {
                if let Some(v) = value {
                    prop.insert(key.into(), v.into());
                }
            }
            if !f.list_map_keys.is_empty() {
                prop.insert("x-kubernetes-list-map-keys".into(), json!(f.list_map_keys));
            }
        }
    }
    relax_required(&mut defs);
    defs
}

/// `k8s-openapi` lists every non-`Option` field as `required`, which upstream's document does
/// not: `metadata` of every kind, and fields Go marks `omitempty` with a default (`name` of
/// `LocalObjectReference`, ...). kubectl validates on the client against the v2 document (a
/// `v1 List`, TokenReview), so an extra `required` there refuses what upstream accepts
/// ("missing required field metadata"). The table is the diff against upstream's document.
fn relax_required(defs: &mut Map<String, Value>) {
    const NOT_REQUIRED: &[(&str, &str)] = &[
        ("io.k8s.api.authentication.v1.TokenRequest", "spec"),
        ("io.k8s.api.authentication.v1.TokenRequestSpec", "audiences"),
        (
            "io.k8s.api.authentication.v1.TokenRequestStatus",
            "expirationTimestamp",
        ),
        ("io.k8s.api.authentication.v1.TokenRequestStatus", "token"),
        (
            "io.k8s.api.batch.v1.PodFailurePolicyOnPodConditionsPattern",
            "status",
        ),
        ("io.k8s.api.core.v1.ConfigMapEnvSource", "name"),
        ("io.k8s.api.core.v1.ConfigMapKeySelector", "name"),
        ("io.k8s.api.core.v1.ConfigMapProjection", "name"),
        ("io.k8s.api.core.v1.ConfigMapVolumeSource", "name"),
        ("io.k8s.api.core.v1.LocalObjectReference", "name"),
        ("io.k8s.api.core.v1.SecretEnvSource", "name"),
        ("io.k8s.api.core.v1.SecretKeySelector", "name"),
        ("io.k8s.api.core.v1.SecretProjection", "name"),
        ("io.k8s.api.discovery.v1.EndpointSlice", "endpoints"),
        (
            "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
            "currentHealthy",
        ),
        (
            "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
            "desiredHealthy",
        ),
        (
            "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
            "disruptionsAllowed",
        ),
        (
            "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
            "expectedPods",
        ),
        ("io.k8s.api.rbac.v1.RoleRef", "apiGroup"),
        ("io.k8s.api.scheduling.v1.PriorityClass", "value"),
    ];
    for (name, schema) in defs.iter_mut() {
        let Some(Value::Array(required)) = schema.get_mut("required") else {
            continue;
        };
        required.retain(|f| {
            let f = f.as_str().unwrap_or_default();
            f != "metadata" && !NOT_REQUIRED.contains(&(name.as_str(), f))
        });
        if required.is_empty() {
            if let Some(s) = schema.as_object_mut() {
                s.remove("required");
            }
        }
    }
}

/// Rewrites every `$ref` from `#/$defs/X` to `prefix + X`; with `all_of`, a `$ref` that has
/// sibling keywords becomes `allOf: [{$ref}]` plus the siblings (OpenAPI 3.0 ignores `$ref`
/// siblings, and upstream's v3 documents use exactly this shape).
fn rewrite_refs(v: &mut Value, prefix: &str, all_of: bool) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref") {
                if let Some(name) = r.strip_prefix(DEFS_PREFIX) {
                    *r = format!("{prefix}{name}");
                }
                if all_of && map.len() > 1 {
                    let r = map.remove("$ref").unwrap_or(Value::Null);
                    map.insert("allOf".into(), json!([{ "$ref": r }]));
                }
            }
            for child in map.values_mut() {
                rewrite_refs(child, prefix, all_of);
            }
        }
        Value::Array(items) => {
            for child in items {
                rewrite_refs(child, prefix, all_of);
            }
        }
        _ => {}
    }
}

fn collect_refs(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(name) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(prefix))
            {
                out.push(name.to_string());
            }
            map.values().for_each(|c| collect_refs(c, prefix, out));
        }
        Value::Array(items) => items.iter().for_each(|c| collect_refs(c, prefix, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Paths. Operations are described once and rendered into either format.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Def,
    Patch,
    Delete,
}

struct Op {
    method: &'static str,
    action: &'static str,
    id: String,
    description: String,
    query: &'static [&'static str],
    body: Body,
    /// The definition of the request body and the response (None: a plain string response).
    def: Option<String>,
    gvk: Value,
    ok_code: &'static str,
}

const LIST_QUERY: &[&str] = &[
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
];
const WRITE_QUERY: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];
const PATCH_QUERY: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "force"];
const DELETE_QUERY: &[&str] = &[
    "dryRun",
    "gracePeriodSeconds",
    "orphanDependents",
    "propagationPolicy",
];
const DELETECOLLECTION_QUERY: &[&str] = &[
    "allowWatchBookmarks",
    "continue",
    "dryRun",
    "fieldSelector",
    "gracePeriodSeconds",
    "labelSelector",
    "limit",
    "orphanDependents",
    "propagationPolicy",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
];
const LOG_QUERY: &[&str] = &[
    "container",
    "follow",
    "insecureSkipTLSVerifyBackend",
    "limitBytes",
    "previous",
    "sinceSeconds",
    "tailLines",
    "timestamps",
];
const EXEC_QUERY: &[&str] = &["command", "container", "stderr", "stdin", "stdout", "tty"];
const ATTACH_QUERY: &[&str] = &["container", "stderr", "stdin", "stdout", "tty"];
const PORTFORWARD_QUERY: &[&str] = &["ports"];
const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

fn query_param(name: &str) -> Value {
    let (ty, desc) = match name {
        "limit" | "timeoutSeconds" | "gracePeriodSeconds" | "tailLines" | "sinceSeconds"
        | "limitBytes" => ("integer", "see the Kubernetes API conventions"),
        "allowWatchBookmarks"
        | "watch"
        | "sendInitialEvents"
        | "force"
        | "orphanDependents"
        | "follow"
        | "previous"
        | "timestamps"
        | "stdin"
        | "stdout"
        | "stderr"
        | "tty"
        | "insecureSkipTLSVerifyBackend" => ("boolean", "see the Kubernetes API conventions"),
        _ => ("string", "see the Kubernetes API conventions"),
    };
    let mut p =
        json!({"name": name, "in": "query", "description": desc, "type": ty, "uniqueItems": true});
    if matches!(name, "command" | "ports") {
        p = json!({"name": name, "in": "query", "description": desc, "type": "string"});
    }
    p
}

/// `CoreV1`, `AppsV1`, `RbacAuthorizationV1` — upstream's operation-id infix.
fn op_infix(group: &str, version: &str) -> String {
    let group = if group.is_empty() { "core" } else { group };
    let group = group.strip_suffix(".k8s.io").unwrap_or(group);
    let mut out = String::new();
    for part in group.split('.').chain(std::iter::once(version)) {
        let mut chars = part.chars();
        if let Some(c) = chars.next() {
            out.extend(c.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

fn subresource_ops(r: &ResourceInfo, s: &Subresource, infix: &str, ns: &str) -> Vec<Op> {
    let kind = r.kind;
    let title = {
        let mut c = s.name.chars();
        c.next()
            .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
            .unwrap_or_default()
    };
    let gvk_v = gvk(s.group, s.version, s.kind);
    let def = s.definition();
    let mk = |method, action, verb: &str, query, body, ok_code| Op {
        method,
        action,
        id: format!("{verb}{infix}{ns}{kind}{title}"),
        description: format!("{verb} {} of the specified {kind}", s.name),
        query,
        body,
        def: def.clone(),
        gvk: gvk_v.clone(),
        ok_code,
    };
    if s.name == "log" {
        let mut op = mk("get", "get", "read", LOG_QUERY, Body::None, "200");
        op.def = None;
        return vec![op];
    }
    if s.is_connect() {
        let query: &'static [&'static str] = match s.name {
            "exec" => EXEC_QUERY,
            "attach" => ATTACH_QUERY,
            "portforward" => PORTFORWARD_QUERY,
            _ => &[],
        };
        return s
            .verbs
            .iter()
            .map(|v| {
                let method = match *v {
                    "create" => "post",
                    "update" => "put",
                    other => other,
                };
                let verb = format!("connect{}", {
                    let mut c = method.chars();
                    c.next()
                        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                        .unwrap_or_default()
                });
                mk(method, "connect", &verb, query, Body::None, "200")
            })
            .collect();
    }
    let mut ops = Vec::new();
    for v in s.verbs {
        ops.push(match *v {
            "get" => mk("get", "get", "read", &[], Body::None, "200"),
            "update" => mk("put", "put", "replace", WRITE_QUERY, Body::Def, "200"),
            "patch" => mk("patch", "patch", "patch", PATCH_QUERY, Body::Patch, "200"),
            "create" => mk("post", "post", "create", WRITE_QUERY, Body::Def, "201"),
            _ => continue,
        });
    }
    ops
}

/// `(path, operations)` for one resource.
fn resource_paths(r: &ResourceInfo) -> Vec<(String, Vec<Op>)> {
    let base = r.group_version_path();
    let infix = op_infix(r.group, r.version);
    let (ns, collection) = if r.namespaced {
        (
            "Namespaced",
            format!("{base}/namespaces/{{namespace}}/{}", r.resource),
        )
    } else {
        ("", format!("{base}/{}", r.resource))
    };
    let kind = r.kind;
    let item_gvk = gvk(r.group, r.version, kind);
    let def = Some(r.definition.to_string());
    let op = |method, action, id: String, desc: String, query, body, def: Option<String>, ok| Op {
        method,
        action,
        id,
        description: desc,
        query,
        body,
        def,
        gvk: item_gvk.clone(),
        ok_code: ok,
    };

    let mut out = Vec::new();
    let mut coll_ops = Vec::new();
    if r.has_verb("list") {
        coll_ops.push(op(
            "get",
            "list",
            format!("list{infix}{ns}{kind}"),
            format!("list or watch objects of kind {kind}"),
            LIST_QUERY,
            Body::None,
            Some(r.list_definition()),
            "200",
        ));
    }
    if r.has_verb("create") {
        coll_ops.push(op(
            "post",
            "post",
            format!("create{infix}{ns}{kind}"),
            format!("create a {kind}"),
            WRITE_QUERY,
            Body::Def,
            def.clone(),
            "201",
        ));
    }
    if r.has_verb("deletecollection") {
        coll_ops.push(op(
            "delete",
            "deletecollection",
            format!("deletecollection{infix}{ns}{kind}"),
            format!("delete collection of {kind}"),
            DELETECOLLECTION_QUERY,
            Body::Delete,
            Some(format!("{META}.Status")),
            "200",
        ));
    }
    if !coll_ops.is_empty() {
        out.push((collection.clone(), coll_ops));
    }
    if r.namespaced && r.has_verb("list") {
        out.push((
            format!("{base}/{}", r.resource),
            vec![op(
                "get",
                "list",
                format!("list{infix}{kind}ForAllNamespaces"),
                format!("list or watch objects of kind {kind}"),
                LIST_QUERY,
                Body::None,
                Some(r.list_definition()),
                "200",
            )],
        ));
    }

    let item = format!("{collection}/{{name}}");
    let mut item_ops = Vec::new();
    for (verb, method, action, prefix, query, body, ok) in [
        ("get", "get", "get", "read", &[][..], Body::None, "200"),
        (
            "update",
            "put",
            "put",
            "replace",
            WRITE_QUERY,
            Body::Def,
            "200",
        ),
        (
            "patch",
            "patch",
            "patch",
            "patch",
            PATCH_QUERY,
            Body::Patch,
            "200",
        ),
        (
            "delete",
            "delete",
            "delete",
            "delete",
            DELETE_QUERY,
            Body::Delete,
            "200",
        ),
    ] {
        if r.has_verb(verb) {
            item_ops.push(op(
                method,
                action,
                format!("{prefix}{infix}{ns}{kind}"),
                format!("{prefix} the specified {kind}"),
                query,
                body,
                def.clone(),
                ok,
            ));
        }
    }
    if !item_ops.is_empty() {
        out.push((item.clone(), item_ops));
    }
    for s in r.subresources {
        out.push((
            format!("{item}/{}", s.name),
            subresource_ops(r, s, &infix, ns),
        ));
        if s.name == "proxy" {
            // Proxy also takes a path after the subresource.
            out.push((
                format!("{item}/proxy/{{path}}"),
                subresource_ops(r, s, &infix, ns),
            ));
        }
    }
    out
}

fn path_params(path: &str) -> Vec<Value> {
    ["name", "namespace", "path"]
        .iter()
        .filter(|p| path.contains(&format!("{{{p}}}")))
        .map(|p| {
            json!({"name": p, "in": "path", "required": true, "type": "string", "uniqueItems": true,
                   "description": format!("{p} of the object")})
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    V2,
    V3,
}

fn schema_ref(format: Format, def: &str) -> Value {
    match format {
        Format::V2 => json!({"$ref": format!("#/definitions/{def}")}),
        Format::V3 => json!({"$ref": format!("#/components/schemas/{def}")}),
    }
}

/// A v2 parameter (`type` inline) as its v3 shape (`schema` holds the type).
fn v3_param(p: &Value) -> Value {
    let mut out = Map::new();
    for key in ["name", "in", "description", "required"] {
        if let Some(v) = p.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    out.insert(
        "schema".into(),
        json!({"type": p.get("type").cloned().unwrap_or(json!("string")), "uniqueItems": true}),
    );
    Value::Object(out)
}

fn render_op(op: &Op, format: Format) -> Value {
    let mut params: Vec<Value> = op.query.iter().map(|q| query_param(q)).collect();
    params.push(query_param("pretty"));
    let body_def = match op.body {
        Body::None => None,
        Body::Def => op.def.clone(),
        Body::Patch => Some(format!("{META}.Patch")),
        Body::Delete => Some(format!("{META}.DeleteOptions")),
    };
    let response_schema = op
        .def
        .as_deref()
        .map(|d| schema_ref(format, d))
        .unwrap_or(json!({"type": "string"}));
    let mut out = json!({
        "description": op.description,
        "operationId": op.id,
        "tags": [op.id.clone()],
        "x-kubernetes-action": op.action,
        "x-kubernetes-group-version-kind": op.gvk,
    });
    let mut responses = Map::new();
    let produces = ["application/json", "application/yaml"];
    match format {
        Format::V2 => {
            if let Some(d) = &body_def {
                params.insert(
                    0,
                    json!({"name": "body", "in": "body", "required": op.body != Body::Delete,
                           "schema": schema_ref(format, d)}),
                );
            }
            out["parameters"] = json!(params);
            out["produces"] = json!(produces);
            out["consumes"] = if op.body == Body::Patch {
                json!(PATCH_TYPES)
            } else {
                json!(["*/*"])
            };
            out["schemes"] = json!(["https"]);
            responses.insert(
                op.ok_code.into(),
                json!({"description": "OK", "schema": response_schema}),
            );
        }
        Format::V3 => {
            out["parameters"] = params.iter().map(v3_param).collect();
            if let Some(d) = &body_def {
                let types: &[&str] = if op.body == Body::Patch {
                    PATCH_TYPES
                } else {
                    &["*/*"]
                };
                let content: Map<String, Value> = types
                    .iter()
                    .map(|t| (t.to_string(), json!({"schema": schema_ref(format, d)})))
                    .collect();
                out["requestBody"] =
                    json!({"content": content, "required": op.body != Body::Delete});
            }
            let content: Map<String, Value> = produces
                .iter()
                .map(|t| (t.to_string(), json!({"schema": response_schema})))
                .collect();
            responses.insert(
                op.ok_code.into(),
                json!({"description": "OK", "content": content}),
            );
        }
    }
    responses.insert("401".into(), json!({"description": "Unauthorized"}));
    out["responses"] = Value::Object(responses);
    out
}

fn render_paths<'a>(
    resources: impl Iterator<Item = &'a ResourceInfo>,
    format: Format,
) -> Map<String, Value> {
    let mut paths = Map::new();
    for r in resources {
        for (path, ops) in resource_paths(r) {
            let mut item = Map::new();
            let params: Vec<Value> = path_params(&path)
                .into_iter()
                .map(|p| {
                    if format == Format::V3 {
                        v3_param(&p)
                    } else {
                        p
                    }
                })
                .collect();
            item.insert("parameters".into(), json!(params));
            for op in &ops {
                item.insert(op.method.into(), render_op(op, format));
            }
            paths.insert(path, Value::Object(item));
        }
    }
    paths
}

// ---------------------------------------------------------------------------------------
// Documents.

struct Doc {
    bytes: Vec<u8>,
    hash: String,
}

impl Doc {
    fn new(v: &Value) -> Doc {
        let bytes = serde_json::to_vec(v).unwrap_or_default();
        // Upstream uses the upper-case hex SHA-512 of the document as its hash.
        let hash = Sha512::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        Doc { bytes, hash }
    }
}

fn v2_definitions() -> Map<String, Value> {
    let mut defs = definitions().clone();
    for schema in defs.values_mut() {
        rewrite_refs(schema, "#/definitions/", false);
    }
    // v2 has no type-less schemas for these two; upstream's v2 spells them as strings.
    if let Some(Value::Object(s)) = defs.get_mut("io.k8s.apimachinery.pkg.util.intstr.IntOrString")
    {
        s.remove("x-kubernetes-int-or-string");
        s.insert("type".into(), "string".into());
        s.insert("format".into(), "int-or-string".into());
    }
    if let Some(Value::Object(s)) = defs.get_mut("io.k8s.apimachinery.pkg.api.resource.Quantity") {
        s.remove("x-kubernetes-int-or-string");
        s.insert("type".into(), "string".into());
    }
    defs
}

fn v2_doc() -> &'static Doc {
    static DOC: OnceLock<Doc> = OnceLock::new();
    DOC.get_or_init(|| {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
            "paths": render_paths(registry::resources().iter(), Format::V2),
            "definitions": v2_definitions(),
            "securityDefinitions": {"BearerToken": {
                "description": "Bearer Token authentication", "in": "header",
                "name": "authorization", "type": "apiKey"}},
            "security": [{"BearerToken": []}],
        });
        Doc::new(&doc)
    })
}

/// `api/v1` / `apis/<group>/<version>`: the key of a group version in the v3 index.
fn gv_key(group: &str, version: &str) -> String {
    registry::group_version_path(group, version)
        .trim_start_matches('/')
        .to_string()
}

fn v3_docs() -> &'static BTreeMap<String, Doc> {
    static DOCS: OnceLock<BTreeMap<String, Doc>> = OnceLock::new();
    DOCS.get_or_init(|| {
        const PREFIX: &str = "#/components/schemas/";
        let mut all = definitions().clone();
        for schema in all.values_mut() {
            rewrite_refs(schema, PREFIX, true);
        }
        registry::group_versions()
            .iter()
            .map(|(g, v)| {
                let paths = render_paths(registry::resources_in(g, v), Format::V3);
                // Only the schemas this group version's paths reach, transitively.
                let mut todo = Vec::new();
                for item in paths.values() {
                    collect_refs(item, PREFIX, &mut todo);
                }
                let mut keep = BTreeSet::new();
                while let Some(name) = todo.pop() {
                    if let Some(schema) = all.get(&name) {
                        if keep.insert(name) {
                            collect_refs(schema, PREFIX, &mut todo);
                        }
                    }
                }
                let schemas: Map<String, Value> = keep
                    .into_iter()
                    .filter_map(|n| all.get(&n).map(|s| (n, s.clone())))
                    .collect();
                let doc = json!({
                    "openapi": "3.0.0",
                    "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
                    "paths": paths,
                    "components": {
                        "schemas": schemas,
                        "securitySchemes": {"BearerToken": {
                            "type": "apiKey", "description": "Bearer Token authentication",
                            "name": "authorization", "in": "header"}},
                    },
                });
                (gv_key(g, v), Doc::new(&doc))
            })
            .collect()
    })
}

/// The OpenAPI v2 document, JSON.
pub fn openapi_v2() -> &'static [u8] {
    &v2_doc().bytes
}

/// The v2 document's hash, for `ETag` (quote it) and `If-None-Match`.
pub fn openapi_v2_etag() -> &'static str {
    &v2_doc().hash
}

/// `/openapi/v3`: `{"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=…"}}}`.
pub fn openapi_v3_index() -> Value {
    let paths: Map<String, Value> = v3_docs()
        .iter()
        .map(|(key, doc)| {
            (
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", doc.hash)}),
            )
        })
        .collect();
    json!({ "paths": paths })
}

/// The v3 document of a group version: `gv_path` is the index key (`api/v1`,
/// `apis/apps/v1`), with or without a leading `/` or `/openapi/v3/`.
pub fn openapi_v3(gv_path: &str) -> Option<&'static [u8]> {
    v3_doc(gv_path).map(|d| d.bytes.as_slice())
}

/// The hash (ETag, `?hash=` value) of a v3 group-version document.
pub fn openapi_v3_etag(gv_path: &str) -> Option<&'static str> {
    v3_doc(gv_path).map(|d| d.hash.as_str())
}

fn v3_doc(gv_path: &str) -> Option<&'static Doc> {
    let key = gv_path.trim_start_matches('/');
    let key = key.strip_prefix("openapi/v3/").unwrap_or(key);
    let key = key.split('?').next().unwrap_or(key).trim_end_matches('/');
    v3_docs().get(key)
}

/// Every definition name the documents carry (for tests and tools).
pub fn definition_names() -> impl Iterator<Item = &'static str> {
    definitions().keys().map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        serde_json::from_slice(openapi_v2()).unwrap()
    }

    #[test]
    fn v2_has_every_registry_kind_with_gvk() {
        let doc = v2();
        assert_eq!(doc["swagger"], "2.0");
        let defs = doc["definitions"].as_object().unwrap();
        for r in registry::resources() {
            let def = defs
                .get(r.definition)
                .unwrap_or_else(|| panic!("{} missing", r.definition));
            let gvks = def["x-kubernetes-group-version-kind"].as_array().unwrap();
            assert!(
                gvks.contains(&gvk(r.group, r.version, r.kind)),
                "{}",
                r.definition
            );
            if r.listable() {
                let list = &defs[&r.list_definition()];
                assert_eq!(
                    list["properties"]["items"]["items"]["$ref"],
                    format!("#/definitions/{}", r.definition)
                );
            }
            for s in r.subresources {
                if let Some(d) = s.definition() {
                    assert!(defs.contains_key(&d), "{d}");
                }
            }
        }
        // Every `$ref` resolves inside the document.
        let mut refs = Vec::new();
        collect_refs(&doc, "#/definitions/", &mut refs);
        assert!(refs.len() > 100);
        for r in refs {
            assert!(defs.contains_key(&r), "dangling $ref {r}");
        }
        assert!(!String::from_utf8_lossy(openapi_v2()).contains("#/$defs/"));
    }

    #[test]
    fn v2_carries_patch_facts_and_paths() {
        let doc = v2();
        let containers =
            &doc["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(containers["x-kubernetes-list-type"], "map");
        assert_eq!(containers["x-kubernetes-list-map-keys"], json!(["name"]));
        assert_eq!(
            containers["items"]["$ref"],
            "#/definitions/io.k8s.api.core.v1.Container"
        );
        let meta = &doc["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["metadata"];
        assert_eq!(
            meta["$ref"],
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert_eq!(
            doc["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"],
            "int-or-string"
        );

        let paths = doc["paths"].as_object().unwrap();
        let item = &paths["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        for (method, action) in [
            ("get", "get"),
            ("put", "put"),
            ("patch", "patch"),
            ("delete", "delete"),
        ] {
            assert_eq!(item[method]["x-kubernetes-action"], action);
            assert_eq!(
                item[method]["x-kubernetes-group-version-kind"],
                gvk("apps", "v1", "Deployment")
            );
        }
        assert_eq!(
            item["patch"]["operationId"],
            "patchAppsV1NamespacedDeployment"
        );
        let coll = &paths["/apis/apps/v1/namespaces/{namespace}/deployments"];
        assert_eq!(coll["get"]["x-kubernetes-action"], "list");
        assert_eq!(coll["post"]["x-kubernetes-action"], "post");
        assert_eq!(coll["delete"]["x-kubernetes-action"], "deletecollection");
        assert_eq!(
            paths["/apis/apps/v1/deployments"]["get"]["operationId"],
            "listAppsV1DeploymentForAllNamespaces"
        );
        let scale = &paths["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"];
        assert_eq!(
            scale["get"]["x-kubernetes-group-version-kind"],
            gvk("autoscaling", "v1", "Scale")
        );
        assert_eq!(
            paths["/api/v1/namespaces/{namespace}/pods/{name}/exec"]["post"]["x-kubernetes-action"],
            "connect"
        );
        assert_eq!(
            paths["/api/v1/nodes/{name}"]["get"]["operationId"],
            "readCoreV1Node"
        );
        assert_eq!(
            paths["/apis/rbac.authorization.k8s.io/v1/clusterroles"]["get"]["operationId"],
            "listRbacAuthorizationV1ClusterRole"
        );
        // Create-only reviews have just a POST.
        let sar = paths["/apis/authorization.k8s.io/v1/subjectaccessreviews"]
            .as_object()
            .unwrap();
        assert!(sar.contains_key("post") && !sar.contains_key("get"));
        assert!(!paths.contains_key("/apis/authorization.k8s.io/v1/subjectaccessreviews/{name}"));
        // Namespaces cannot be deleted as a collection.
        assert!(paths["/api/v1/namespaces"].get("delete").is_none());
        assert_eq!(openapi_v2_etag().len(), 128);
    }

    #[test]
    fn v3_index_lists_every_group_version() {
        let index = openapi_v3_index();
        let paths = index["paths"].as_object().unwrap();
        assert_eq!(paths.len(), registry::group_versions().len());
        for (g, v) in registry::group_versions() {
            let key = gv_key(g, v);
            let url = paths[&key]["serverRelativeURL"].as_str().unwrap();
            let hash = openapi_v3_etag(&key).unwrap();
            assert_eq!(url, format!("/openapi/v3/{key}?hash={hash}"));
            assert_eq!(openapi_v3(url).unwrap(), openapi_v3(&key).unwrap());
        }
        assert!(paths.contains_key("api/v1") && paths.contains_key("apis/apps/v1"));
        assert!(openapi_v3("apis/apps/v2").is_none());
    }

    #[test]
    fn v3_documents_are_self_contained() {
        for (g, v) in registry::group_versions() {
            let doc: Value = serde_json::from_slice(openapi_v3(&gv_key(g, v)).unwrap()).unwrap();
            assert_eq!(doc["openapi"], "3.0.0");
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            let mut refs = Vec::new();
            collect_refs(&doc, "#/components/schemas/", &mut refs);
            for r in &refs {
                assert!(schemas.contains_key(r), "{g}/{v}: dangling {r}");
            }
            for r in registry::resources_in(g, v) {
                let def = &schemas[r.definition];
                assert!(def["x-kubernetes-group-version-kind"]
                    .as_array()
                    .unwrap()
                    .contains(&gvk(r.group, r.version, r.kind)));
            }
            let text = String::from_utf8_lossy(openapi_v3(&gv_key(g, v)).unwrap()).into_owned();
            assert!(!text.contains("#/$defs/") && !text.contains("#/definitions/"));
        }
        let core: Value = serde_json::from_slice(openapi_v3("/api/v1").unwrap()).unwrap();
        let schemas = &core["components"]["schemas"];
        // `$ref` with a description is wrapped in allOf, as upstream's v3.
        let meta = &schemas["io.k8s.api.core.v1.Pod"]["properties"]["metadata"];
        assert_eq!(
            meta["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert!(meta.get("$ref").is_none());
        assert_eq!(
            schemas["io.k8s.api.core.v1.Container"]["properties"]["ports"]
                ["x-kubernetes-patch-merge-key"],
            "containerPort"
        );
        // Another group's kinds stay out of the core document.
        assert!(schemas.get("io.k8s.api.apps.v1.Deployment").is_none());
        let op = &core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert!(op["requestBody"]["content"]
            .get("application/strategic-merge-patch+json")
            .is_some());
    }

    #[test]
    fn every_definition_name_is_upstream_style() {
        for name in definition_names() {
            assert!(name.starts_with("io.k8s."), "{name}");
        }
    }
}
