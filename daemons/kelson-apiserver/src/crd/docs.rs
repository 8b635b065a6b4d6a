//! Discovery and OpenAPI documents for CRDs and custom resources.
//!
//! The static documents of kelson-apiresources cover the built-ins; these functions add the
//! apiextensions.k8s.io group and every served custom resource version, built per request from
//! the live table (so a CRD shows up, and goes, within a watch event's delay; kubectl refreshes
//! its discovery cache when a name does not resolve). OpenAPI documents are cached per table
//! generation since the v2 document is large. Upstream's layout is followed: one APIGroup per
//! group with the preferred version first by Kubernetes version priority, resources with
//! `shortNames`/`categories`/subresources, and the custom kinds' schemas under upstream's
//! definition names (`com.example.stable.v1.CronTab`) with `x-kubernetes-group-version-kind`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kelson_apiresources::ResourceInfo;
use serde_json::{json, Map, Value};

use super::{served, Served, CRD_INFO};

/// Upstream's OpenAPI definition name of a custom kind: the group's labels reversed, then
/// version and kind (`stable.example.com`/`v1`/`CronTab` → `com.example.stable.v1.CronTab`).
pub fn definition_name(group: &str, version: &str, kind: &str) -> String {
    let rev: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", rev.join("."))
}

/// Kubernetes version priority (GA > beta > alpha, higher numbers first; others last by name).
fn version_key(v: &str) -> (u8, i64, i64, String) {
    let parse = || -> Option<(u8, i64, i64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: i64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((0, -major, 0));
        }
        for (i, pre) in ["beta", "alpha"].iter().enumerate() {
            if let Some(n) = tail.strip_prefix(pre) {
                let minor: i64 = n.parse().ok()?;
                return Some((i as u8 + 1, -major, -minor));
            }
        }
        None
    };
    match parse() {
        Some((a, b, c)) => (a, b, c, String::new()),
        None => (3, 0, 0, v.to_string()),
    }
}

/// Every (info, served) pair by group, versions in priority order; the CRD resource first.
/// Version sort key → the resources of that version.
type Versions = BTreeMap<(u8, i64, i64, String), Vec<Entry>>;

fn by_group() -> BTreeMap<String, Versions> {
    let mut out: BTreeMap<String, BTreeMap<_, Vec<Entry>>> = BTreeMap::new();
    out.entry(CRD_INFO.group.to_string())
        .or_default()
        .entry(version_key(CRD_INFO.version))
        .or_default()
        .push(Entry { info: &CRD_INFO });
    for s in served() {
        out.entry(s.info.group.to_string())
            .or_default()
            .entry(version_key(s.info.version))
            .or_default()
            .push(Entry { info: s.info });
    }
    out
}

struct Entry {
    info: &'static ResourceInfo,
}

fn versions_of(g: &Versions) -> Vec<&'static str> {
    g.values()
        .filter_map(|e| e.first().map(|e| e.info.version))
        .collect()
}

fn api_group(name: &str, versions: &[&str]) -> Value {
    let entries: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": entries, "preferredVersion": entries[0]})
}

/// `/apis` with the custom groups appended.
pub fn merge_apis(mut doc: Value) -> Value {
    if let Some(groups) = doc["groups"].as_array_mut() {
        for (name, g) in by_group() {
            if groups.iter().any(|x| x["name"] == name.as_str()) {
                continue;
            }
            groups.push(api_group(&name, &versions_of(&g)));
        }
    }
    doc
}

/// `/apis/<group>` for a custom group.
pub fn group(name: &str) -> Option<Value> {
    let groups = by_group();
    let g = groups.get(name)?;
    let mut v = api_group(name, &versions_of(g));
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

fn resource_entries(r: &ResourceInfo) -> Vec<Value> {
    let mut entry = json!({
        "name": r.resource, "singularName": r.singular, "namespaced": r.namespaced,
        "kind": r.kind, "verbs": r.verbs, "storageVersionHash": r.storage_version_hash(),
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = json!(r.categories);
    }
    let mut out = vec![entry];
    for s in r.subresources {
        let mut sub = json!({"name": format!("{}/{}", r.resource, s.name), "singularName": "",
            "namespaced": r.namespaced, "kind": s.kind, "verbs": s.verbs});
        if (s.group, s.version) != (r.group, r.version) {
            sub["group"] = json!(s.group);
            sub["version"] = json!(s.version);
        }
        out.push(sub);
    }
    out
}

/// `/apis/<group>/<version>` for a custom group version.
pub fn group_version(group: &str, version: &str) -> Option<Value> {
    let groups = by_group();
    let entries = groups.get(group)?.get(&version_key(version))?;
    let resources: Vec<Value> = entries
        .iter()
        .flat_map(|e| resource_entries(e.info))
        .collect();
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{group}/{version}"), "resources": resources}))
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let mut e = json!({
        "resource": r.resource,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular, "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    if !r.subresources.is_empty() {
        e["subresources"] = r
            .subresources
            .iter()
            .map(|s| json!({"subresource": s.name, "responseKind": {"group": s.group, "version": s.version, "kind": s.kind}, "verbs": s.verbs}))
            .collect();
    }
    e
}

/// The aggregated `/apis` document with the custom groups appended (not for `/api`).
pub fn merge_aggregated(mut doc: Value, legacy: bool) -> Value {
    if legacy {
        return doc;
    }
    if let Some(items) = doc["items"].as_array_mut() {
        for (name, g) in by_group() {
            if items.iter().any(|x| x["metadata"]["name"] == name.as_str()) {
                continue;
            }
            let versions: Vec<Value> = g
                .values()
                .map(|es| {
                    let v = es[0].info.version;
                    let resources: Vec<Value> =
                        es.iter().map(|e| aggregated_resource(e.info)).collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            items.push(json!({"metadata": {"name": name, "creationTimestamp": null}, "versions": versions}));
        }
    }
    doc
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

/// The published schema of one custom resource version: the CRD's schema with apiVersion,
/// kind and metadata described, and its GVK (what `kubectl explain` looks schemas up by).
fn kind_schema(s: &Served) -> Value {
    let mut sch = s.schema.clone();
    if !sch.is_object() {
        sch = json!({"type": "object"});
    }
    let props = sch["properties"].as_object().cloned().unwrap_or_default();
    let mut p = Map::new();
    p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values."}));
    p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase."}));
    p.insert("metadata".into(), json!({"type": "object", "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}));
    for (k, v) in props {
        if k != "metadata" {
            p.insert(k, v);
        }
    }
    sch["properties"] = Value::Object(p);
    sch["x-kubernetes-group-version-kind"] =
        json!([{"group": s.info.group, "version": s.info.version, "kind": s.info.kind}]);
    sch
}

fn list_schema(s: &Served, def_ref: &str) -> Value {
    json!({"type": "object", "required": ["items"],
        "description": format!("{} is a list of {}", s.list_kind, s.info.kind),
        "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
            "metadata": {"type": "object"}, "items": {"type": "array", "items": {"$ref": def_ref}}},
        "x-kubernetes-group-version-kind": [{"group": s.info.group, "version": s.info.version, "kind": s.list_kind}]})
}

fn cached(
    slot: &Mutex<Option<(u64, String, Vec<u8>)>>,
    key: &str,
    build: impl FnOnce() -> Vec<u8>,
) -> Vec<u8> {
    let gen = super::generation();
    let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((g0, k0, bytes)) = g.as_ref() {
        if *g0 == gen && k0 == key {
            return bytes.clone();
        }
    }
    let bytes = build();
    *g = Some((gen, key.to_string(), bytes.clone()));
    bytes
}

/// `/openapi/v2` with the custom kinds' definitions added (the static document as is when
/// no custom resource is served).
pub fn openapi_v2(base: &[u8]) -> Option<Vec<u8>> {
    static CACHE: Mutex<Option<(u64, String, Vec<u8>)>> = Mutex::new(None);
    let served = served();
    if served.is_empty() {
        return None;
    }
    Some(cached(&CACHE, "v2", || {
        let Ok(mut doc) = serde_json::from_slice::<Value>(base) else {
            return base.to_vec();
        };
        if let Some(defs) = doc["definitions"].as_object_mut() {
            for s in &served {
                let def = s.info.definition;
                defs.insert(def.to_string(), strip_v3_only(kind_schema(s)));
                defs.insert(
                    format!("{def}List"),
                    list_schema(s, &format!("#/definitions/{def}")),
                );
            }
        }
        serde_json::to_vec(&doc).unwrap_or_else(|_| base.to_vec())
    }))
}

/// OpenAPI v2 has no `nullable`; upstream drops it (and the v3-only keywords) in v2.
fn strip_v3_only(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("nullable");
                for c in m.values_mut() {
                    walk(c);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// Paths of one resource with the operations clients probe: kubectl checks that PATCH of the
/// kind takes `fieldValidation` before it leaves validation to the server.
fn paths_of(r: &ResourceInfo, def: &str, paths: &mut Map<String, Value>) {
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let base = if r.namespaced {
        format!(
            "/apis/{}/{}/namespaces/{{namespace}}/{}",
            r.group, r.version, r.resource
        )
    } else {
        format!("/apis/{}/{}/{}", r.group, r.version, r.resource)
    };
    let q = |n: &str| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let body_ref = json!({"$ref": format!("#/components/schemas/{def}")});
    let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": body_ref}}}});
    let op = |id: &str, action: &str, params: Vec<Value>| {
        json!({"operationId": id, "parameters": params, "responses": ok,
            "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk})
    };
    let kind = r.kind;
    paths.insert(
        base.clone(),
        json!({
            "get": op(&format!("list{kind}"), "list", vec![q("labelSelector"), q("fieldSelector"), q("watch")]),
            "post": op(&format!("create{kind}"), "post", vec![q("dryRun"), q("fieldManager"), q("fieldValidation")]),
        }),
    );
    paths.insert(
        format!("{base}/{{name}}"),
        json!({
            "get": op(&format!("read{kind}"), "get", vec![]),
            "put": op(&format!("replace{kind}"), "put", vec![q("dryRun"), q("fieldManager"), q("fieldValidation")]),
            "patch": op(&format!("patch{kind}"), "patch", vec![q("dryRun"), q("fieldManager"), q("fieldValidation"), q("force")]),
            "delete": op(&format!("delete{kind}"), "delete", vec![q("dryRun")]),
        }),
    );
}

fn v3_doc(group: &str, version: &str) -> Option<Vec<u8>> {
    let served: Vec<_> = served()
        .into_iter()
        .filter(|s| s.info.group == group && s.info.version == version)
        .collect();
    let crd = (group, version) == (CRD_INFO.group, CRD_INFO.version);
    if served.is_empty() && !crd {
        return None;
    }
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for s in &served {
        let def = s.info.definition;
        schemas.insert(def.to_string(), kind_schema(s));
        schemas.insert(
            format!("{def}List"),
            list_schema(s, &format!("#/components/schemas/{def}")),
        );
        paths_of(s.info, def, &mut paths);
    }
    if crd {
        // The CRD kind's own schema is left open; validation is the server's (validation.rs).
        schemas.insert(
            CRD_INFO.definition.to_string(),
            json!({"type": "object", "description": "CustomResourceDefinition represents a resource that should be exposed on the API server.",
                "x-kubernetes-preserve-unknown-fields": true,
                "x-kubernetes-group-version-kind": [{"group": CRD_INFO.group, "version": CRD_INFO.version, "kind": CRD_INFO.kind}]}),
        );
        paths_of(&CRD_INFO, CRD_INFO.definition, &mut paths);
    }
    let doc = json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    });
    serde_json::to_vec(&doc).ok()
}

fn hash(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA512, bytes);
    d.as_ref()
        .iter()
        .take(32)
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// The `/openapi/v3` index with the custom group versions added.
pub fn merge_v3_index(mut index: Value) -> Value {
    let mut gvs: Vec<(String, String)> = served()
        .iter()
        .map(|s| (s.info.group.to_string(), s.info.version.to_string()))
        .collect();
    gvs.push((CRD_INFO.group.into(), CRD_INFO.version.into()));
    gvs.dedup();
    if let Some(paths) = index["paths"].as_object_mut() {
        for (g, v) in gvs {
            let key = format!("apis/{g}/{v}");
            if paths.contains_key(&key) {
                continue;
            }
            if let Some(doc) = v3_doc(&g, &v) {
                paths.insert(
                    key.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", hash(&doc))}),
                );
            }
        }
    }
    index
}

/// `/openapi/v3/apis/<group>/<version>` for a custom group version.
pub fn openapi_v3(gv_path: &str) -> Option<Vec<u8>> {
    let key = gv_path.trim_start_matches('/');
    let key = key.split('?').next().unwrap_or(key).trim_end_matches('/');
    let mut parts = key.strip_prefix("apis/")?.split('/');
    let (g, v) = (parts.next()?, parts.next()?);
    v3_doc(g, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_version_order() {
        assert_eq!(
            definition_name("stable.example.com", "v1", "CronTab"),
            "com.example.stable.v1.CronTab"
        );
        let mut v = vec!["v1alpha1", "v2", "v1beta2", "v1", "foo", "v1beta1"];
        v.sort_by_key(|x| version_key(x));
        assert_eq!(v, ["v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }
}
