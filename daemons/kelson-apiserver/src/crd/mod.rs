//! apiextensions.k8s.io/v1 CustomResourceDefinitions and the custom resources they define.
//!
//! The built-in resources are a static table (kelson-apiresources); custom ones appear and
//! disappear at run time. This module keeps the served custom resources in a process-wide
//! table that the rest of the server consults through small hooks: the router
//! ([`lookup`]), the strategies ([`CustomStrategy`], [`CrdStrategy`]), field validation
//! ([`unknown_fields`]), the handlers ([`dispatch`] for scale and the 415 on strategic merge
//! patch), server-side printing ([`table`]), discovery and OpenAPI ([`docs`]). Everything
//! else (CRUD, list/watch with selectors, merge/JSON patch, status, dryRun, finalizers) is the
//! generic handlers' work, as upstream's apiextensions-apiserver reuses the generic registry.
//!
//! Each served version of a custom resource is described by a `ResourceInfo` like the static
//! ones; since the handlers hold `&'static ResourceInfo`, those are interned (leaked once per
//! distinct description, so recreating a CRD does not leak again).
//!
//! Custom resources are stored in their CRD's storage version and converted to the version a
//! request names on the way in and out ([`conversion`]: strategy None or a conversion webhook);
//! the handlers call [`conversion`]'s hooks where objects cross the storage boundary.
//!
//! The table is filled by [`controller`], which watches CRDs in the store (so several API
//! servers over one store agree, and restarts reload them), sets the NamesAccepted and
//! Established conditions, and on deletion removes every instance before releasing the
//! `customresourcecleanup.apiextensions.k8s.io` finalizer.

pub mod controller;
pub mod conversion;
pub mod docs;
pub mod schema;
pub mod validation;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use http::{Response, StatusCode};
use kelson_apimachinery::{ApiError, StatusCause};
use kelson_apiresources::{ResourceInfo, Subresource};
use kelson_apistorage::Preconditions;
use serde_json::{json, Value};

use crate::handlers::Req;
use crate::http::{self as h, Body};
use crate::router::SubTarget;
use crate::strategy::Strategy;

pub use conversion::{
    converting, converts, output, output_list, to_request, to_storage, watch_event,
};

/// The finalizer every CRD gets: instances are deleted before the CRD object goes.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

pub const GROUP: &str = "apiextensions.k8s.io";

/// The CRD resource itself (served like a built-in, listed in discovery from here).
pub static CRD_INFO: ResourceInfo = ResourceInfo {
    group: GROUP,
    version: "v1",
    resource: "customresourcedefinitions",
    kind: "CustomResourceDefinition",
    singular: "customresourcedefinition",
    namespaced: false,
    verbs: &[
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ],
    short_names: &["crd", "crds"],
    categories: &["api-extensions"],
    subresources: &[Subresource {
        name: "status",
        group: GROUP,
        version: "v1",
        kind: "CustomResourceDefinition",
        verbs: &["get", "patch", "update"],
    }],
    definition: "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
};

/// One served version of one custom resource.
#[derive(Debug)]
pub struct Served {
    pub info: &'static ResourceInfo,
    /// The CRD's name (`crontabs.stable.example.com`).
    pub crd: String,
    /// `openAPIV3Schema` of this version.
    pub schema: Value,
    pub storage_version: String,
    /// `additionalPrinterColumns` of this version.
    pub columns: Vec<Value>,
    /// `subresources.scale` of this version.
    pub scale: Option<Value>,
    pub status: bool,
    pub list_kind: String,
    /// How many versions the CRD has (served or not): with one there is nothing to convert.
    pub versions: usize,
    /// `spec.conversion`, shared by the CRD's served versions.
    pub conversion: Arc<conversion::Conversion>,
}

#[derive(Default)]
struct State {
    served: Vec<Arc<Served>>,
    /// Bumped on every change (caches of derived documents key on it).
    generation: u64,
}

static STATE: RwLock<State> = RwLock::new(State {
    served: Vec::new(),
    generation: 0,
});

fn state() -> std::sync::RwLockReadGuard<'static, State> {
    STATE.read().unwrap_or_else(|e| e.into_inner())
}

/// Every served custom resource version, in CRD name then version order.
pub fn served() -> Vec<Arc<Served>> {
    state().served.clone()
}

/// The table's generation (changes whenever the served set does).
pub fn generation() -> u64 {
    state().generation
}

/// The router's fallback after the static table.
pub fn lookup(group: &str, version: &str, resource: &str) -> Option<&'static ResourceInfo> {
    if (group, version, resource) == (CRD_INFO.group, CRD_INFO.version, CRD_INFO.resource) {
        return Some(&CRD_INFO);
    }
    find(|s| s.info.group == group && s.info.version == version && s.info.resource == resource)
        .map(|s| s.info)
}

fn find(f: impl Fn(&Served) -> bool) -> Option<Arc<Served>> {
    state().served.iter().find(|s| f(s)).cloned()
}

/// The served custom resource `info` describes (None for built-ins and the CRD resource).
pub fn served_for(info: &ResourceInfo) -> Option<Arc<Served>> {
    find(|s| {
        s.info.group == info.group
            && s.info.version == info.version
            && s.info.resource == info.resource
    })
}

/// Whether `(group, kind)` is a custom resource kind (any version).
pub fn is_custom_kind(group: &str, kind: &str) -> bool {
    find(|s| s.info.group == group && s.info.kind == kind).is_some()
}

fn by_object(obj: &Value) -> Option<Arc<Served>> {
    let (g, v) = kelson_apiresources::registry::split_api_version(obj["apiVersion"].as_str()?);
    let kind = obj["kind"].as_str()?;
    find(|s| s.info.group == g && s.info.version == v && s.info.kind == kind)
}

fn leak_str(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_strs(v: &[String]) -> &'static [&'static str] {
    Box::leak(
        v.iter()
            .map(|s| leak_str(s))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

/// Interns a ResourceInfo (see the module doc).
fn intern(info: OwnedInfo) -> &'static ResourceInfo {
    static INTERNED: Mutex<Option<HashMap<String, &'static ResourceInfo>>> = Mutex::new(None);
    let key = format!("{info:?}");
    let mut g = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    let map = g.get_or_insert_with(HashMap::new);
    if let Some(i) = map.get(&key) {
        return i;
    }
    let group = leak_str(&info.group);
    let version = leak_str(&info.version);
    let kind = leak_str(&info.kind);
    let mut subs = Vec::new();
    if info.status {
        subs.push(Subresource {
            name: "status",
            group,
            version,
            kind,
            verbs: &["get", "patch", "update"],
        });
    }
    if info.scale {
        subs.push(Subresource {
            name: "scale",
            group: "autoscaling",
            version: "v1",
            kind: "Scale",
            verbs: &["get", "patch", "update"],
        });
    }
    let leaked: &'static ResourceInfo = Box::leak(Box::new(ResourceInfo {
        group,
        version,
        resource: leak_str(&info.resource),
        kind,
        singular: leak_str(&info.singular),
        namespaced: info.namespaced,
        verbs: &[
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "create",
            "update",
            "watch",
        ],
        short_names: leak_strs(&info.short_names),
        categories: leak_strs(&info.categories),
        subresources: Box::leak(subs.into_boxed_slice()),
        definition: leak_str(&docs::definition_name(
            &info.group,
            &info.version,
            &info.kind,
        )),
    }));
    map.insert(key, leaked);
    leaked
}

#[derive(Debug)]
struct OwnedInfo {
    group: String,
    version: String,
    resource: String,
    kind: String,
    singular: String,
    namespaced: bool,
    short_names: Vec<String>,
    categories: Vec<String>,
    status: bool,
    scale: bool,
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The served versions of an (accepted, not terminating) CRD.
fn served_of(crd: &Value) -> Vec<Served> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let kind = names["kind"].as_str().unwrap_or_default();
    let conversion = Arc::new(conversion::Conversion::of(crd));
    let versions = spec["versions"].as_array().map_or(0, Vec::len);
    let storage_version = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == true)
        .and_then(|v| v["name"].as_str())
        .unwrap_or_default()
        .to_string();
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"] == true)
        .map(|v| {
            let scale = v["subresources"]["scale"].is_object();
            let status = v["subresources"]["status"].is_object();
            let info = intern(OwnedInfo {
                group: spec["group"].as_str().unwrap_or_default().into(),
                version: v["name"].as_str().unwrap_or_default().into(),
                resource: names["plural"].as_str().unwrap_or_default().into(),
                kind: kind.into(),
                singular: names["singular"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| kind.to_ascii_lowercase()),
                namespaced: spec["scope"] == "Namespaced",
                short_names: strs(&names["shortNames"]),
                categories: strs(&names["categories"]),
                status,
                scale,
            });
            Served {
                info,
                crd: crd["metadata"]["name"].as_str().unwrap_or_default().into(),
                schema: v["schema"]["openAPIV3Schema"].clone(),
                storage_version: storage_version.clone(),
                columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                scale: scale.then(|| v["subresources"]["scale"].clone()),
                status,
                list_kind: names["listKind"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("{kind}List")),
                versions,
                conversion: conversion.clone(),
            }
        })
        .collect()
}

/// Replaces the served set with what `crds` (the accepted, live CRDs) define.
pub fn set_crds<'a>(crds: impl Iterator<Item = &'a Value>) {
    let mut served: Vec<Arc<Served>> = crds.flat_map(served_of).map(Arc::new).collect();
    served.sort_by(|a, b| (&a.crd, a.info.version).cmp(&(&b.crd, b.info.version)));
    let mut st = STATE.write().unwrap_or_else(|e| e.into_inner());
    let same = st.served.len() == served.len()
        && st.served.iter().zip(&served).all(|(a, b)| {
            std::ptr::eq(a.info, b.info)
                && a.schema == b.schema
                && a.columns == b.columns
                && a.storage_version == b.storage_version
                && a.versions == b.versions
                && a.conversion == b.conversion
        });
    if !same {
        st.served = served;
        st.generation += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

/// Custom resources: pruning, defaulting and structural-schema validation.
pub struct CustomStrategy;

impl Strategy for CustomStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        let Some(s) = by_object(obj) else { return };
        if s.status {
            // With the status subresource, status is written only through it.
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        schema::prune(&s.schema, obj);
        schema::default(&s.schema, obj);
    }
    fn prepare_for_update(&self, new: &mut Value, _old: &Value) {
        let Some(s) = by_object(new) else { return };
        schema::prune(&s.schema, new);
        schema::default(&s.schema, new);
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        match by_object(obj) {
            Some(s) => schema::validate(&s.schema, obj),
            None => Vec::new(),
        }
    }
}

/// CRD objects: defaults, the cleanup finalizer, validation; status is the controller's.
pub struct CrdStrategy;

impl Strategy for CrdStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
        let fins = &mut obj["metadata"]["finalizers"];
        if !fins.is_array() {
            *fins = json!([]);
        }
        if let Some(a) = fins.as_array_mut() {
            if !a.iter().any(|f| f == CLEANUP_FINALIZER) {
                a.push(json!(CLEANUP_FINALIZER));
            }
        }
        validation::set_defaults(obj);
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        validation::set_defaults(obj);
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        validation::validate(obj, None)
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        validation::validate(new, Some(old))
    }
}

/// A status write (`/status` update or patch) of a custom resource, `obj` being the stored
/// object with the new status: the status is pruned and defaulted by the version's schema and
/// validated (422 with field causes, as upstream's status strategy). Only causes under
/// `status` are reported: a status write cannot change anything else, and upstream's
/// validation ratcheting likewise keeps errors of unchanged fields out.
pub fn prepare_status_update(info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    let Some(s) = served_for(info) else {
        return Ok(());
    };
    schema::prune(&s.schema, obj);
    schema::default(&s.schema, obj);
    let causes: Vec<StatusCause> = schema::validate(&s.schema, obj)
        .into_iter()
        .filter(|c| {
            c.field == "status" || c.field.starts_with("status.") || c.field.starts_with("status[")
        })
        .collect();
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        info.group,
        info.kind,
        obj["metadata"]["name"].as_str().unwrap_or_default(),
        causes,
    ))
}

/// Field validation's view of a custom resource: the fields pruning would drop.
pub fn unknown_fields(info: &ResourceInfo, obj: &Value) -> Option<Vec<String>> {
    let s = served_for(info)?;
    let mut copy = obj.clone();
    Some(schema::prune(&s.schema, &mut copy))
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// What the generic handlers do differently for custom resources: strategic merge patch is
/// 415 (custom resources have no patch strategies), and scale reads/writes the CRD's paths.
pub async fn dispatch(
    r: &mut Req<'_>,
    verb: &str,
    body: &Bytes,
) -> Option<Result<Response<Body>, ApiError>> {
    let s = served_for(r.t.info)?;
    let ct = r
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if verb == "patch" && h::media_type(ct) == "application/strategic-merge-patch+json" {
        return Some(Err(ApiError::unsupported_media_type(
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        )));
    }
    let is_scale = matches!(
        r.t.sub,
        Some(SubTarget::Known(crate::registry::Subresource::Scale))
    );
    if !is_scale {
        return None;
    }
    let spec = s.scale.clone()?;
    Some(scale(r, verb, body, &spec).await)
}

fn to_scale(obj: &Value, spec: &Value) -> Value {
    let path = |f: &str| spec[f].as_str().unwrap_or_default().to_string();
    let get = |f: &str| {
        schema::at_path(obj, &path(f))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let m = &obj["metadata"];
    let mut status = json!({"replicas": get("statusReplicasPath").as_i64().unwrap_or(0)});
    if !path("labelSelectorPath").is_empty() {
        if let Some(sel) = get("labelSelectorPath").as_str() {
            status["selector"] = json!(sel);
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                     "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": get("specReplicasPath").as_i64().unwrap_or(0)},
        "status": status,
    })
}

async fn scale(
    r: &mut Req<'_>,
    verb: &str,
    body: &Bytes,
    spec: &Value,
) -> Result<Response<Body>, ApiError> {
    let info = r.t.info;
    let name = r.t.name.clone().unwrap_or_default();
    let key = crate::handlers::key(r.api, info, r.t.namespace.as_deref(), &name);
    let err = |e: kelson_apistorage::StorageError| e.to_api_error(info.group, info.resource, &name);
    if verb == "get" {
        let obj = to_request(info, r.api.store.get(&key, None).await.map_err(err)?)?;
        return Ok(h::json(StatusCode::OK, &to_scale(&obj, spec)));
    }
    let dry = crate::handlers::dry_run(&r.q)?;
    let ct = r
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let patch_type = if verb == "patch" {
        Some(crate::patch::PatchType::from_content_type(&h::media_type(
            ct,
        ))?)
    } else {
        None
    };
    let body_scale = if patch_type.is_none() {
        Some(h::decode_object(ct, body)?)
    } else {
        None
    };
    let spec_path = spec["specReplicasPath"]
        .as_str()
        .unwrap_or(".spec.replicas")
        .to_string();
    let out = r
        .api
        .store
        .guaranteed_update(
            &key,
            &Preconditions::default(),
            dry,
            converting(info, |cur| {
                let sc = match (&body_scale, patch_type) {
                    (Some(b), _) => b.clone(),
                    (None, Some(pt)) => crate::patch::apply(pt, &to_scale(&cur, spec), body)?,
                    (None, None) => json!({}),
                };
                if let Some(rv) = sc["metadata"]["resourceVersion"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                {
                    crate::handlers::check_resource_version(info, &name, Some(rv), &cur)?;
                }
                let replicas = sc["spec"]["replicas"].as_i64().ok_or_else(|| {
                    ApiError::invalid(
                        "autoscaling",
                        "Scale",
                        &name,
                        vec![StatusCause::required("spec.replicas")],
                    )
                })?;
                if replicas < 0 {
                    return Err(ApiError::invalid(
                        "autoscaling",
                        "Scale",
                        &name,
                        vec![StatusCause::invalid(
                            "spec.replicas",
                            format!(
                                "Invalid value: {replicas}: must be greater than or equal to 0"
                            ),
                        )],
                    ));
                }
                let mut new = cur.clone();
                schema::set_path(&mut new, &spec_path, json!(replicas));
                if new["spec"] != cur["spec"] {
                    let g = cur["metadata"]["generation"].as_i64().unwrap_or(0);
                    new["metadata"]["generation"] = json!(g + 1);
                }
                Ok(new)
            }),
        )
        .await
        .map_err(|e| e.into_api_error(info.group, info.resource, &name))?;
    let out = to_request(info, out)?;
    Ok(h::json(StatusCode::OK, &to_scale(&out, spec)))
}

// ---------------------------------------------------------------------------------------------
// Server-side printing

/// A Table for custom resources of `kind` (None for other kinds): NAME, then the version's
/// `additionalPrinterColumns` (JSONPath evaluated with `jsonpath-rust`), or AGE when it has
/// none, as upstream's CRD table convertor.
pub fn table(
    kind: &str,
    items: &[Value],
    list_meta: &Value,
    inc: crate::table::Include,
    beta: bool,
) -> Option<Value> {
    use kelson_apimachinery::table::{ColumnDefinition, Table};
    let s = items
        .first()
        .and_then(by_object)
        .or_else(|| find(|s| s.info.kind == kind))?;
    if s.info.kind != kind {
        return None;
    }
    let mut cols = s.columns.clone();
    if cols.is_empty() {
        cols.push(
            json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}),
        );
    }
    let mut defs = vec![ColumnDefinition::new(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    )];
    for c in &cols {
        let ty = c["type"].as_str().unwrap_or("string");
        defs.push(ColumnDefinition::new(
            c["name"].as_str().unwrap_or_default(),
            if ty == "date" { "string" } else { ty },
            c["format"].as_str().unwrap_or_default(),
            c["description"].as_str().unwrap_or_default(),
            c["priority"].as_i64().unwrap_or(0) as i32,
        ));
    }
    let mut t = Table::new(defs);
    for o in items {
        let mut cells = vec![o["metadata"]["name"].clone()];
        for c in &cols {
            cells.push(cell(o, c));
        }
        t.push(cells, o, inc);
    }
    let st = |v: &Value| v.as_str().unwrap_or_default().to_string();
    t.resource_version = st(&list_meta["resourceVersion"]);
    t.continue_token = st(&list_meta["continue"]);
    t.remaining_item_count = list_meta["remainingItemCount"].as_i64();
    let mut v = t.to_value(false);
    if beta {
        v["apiVersion"] = json!("meta.k8s.io/v1beta1");
    }
    Some(v)
}

/// One printer column's cell: the JSONPath's first result (kubectl-style paths such as
/// `.spec.x` or `{.spec.x}` are rooted at `$`), `date`s as ages; absent values are null.
fn cell(obj: &Value, col: &Value) -> Value {
    use jsonpath_rust::JsonPath;
    let p = col["jsonPath"].as_str().unwrap_or_default();
    let p = p.trim().trim_start_matches('{').trim_end_matches('}');
    let p = if p.starts_with('$') {
        p.to_string()
    } else {
        format!("${p}")
    };
    let found = obj
        .query(&p)
        .ok()
        .and_then(|r| r.first().map(|v| (*v).clone()));
    let Some(v) = found.filter(|v| !v.is_null()) else {
        return Value::Null;
    };
    match col["type"].as_str().unwrap_or("string") {
        "date" => match v.as_str() {
            Some(ts) => json!(kelson_apimachinery::table::age(
                ts,
                time::OffsetDateTime::now_utc()
            )),
            None => Value::Null,
        },
        "integer" | "number" | "boolean" => v,
        _ => match v {
            Value::String(_) => v,
            other => json!(other.to_string()),
        },
    }
}

/// Starts the CRD controller for this API server (see [`controller`]).
pub fn start(api: Arc<crate::server::Api>) -> tokio::task::JoinHandle<()> {
    conversion::register(&api);
    tokio::spawn(controller::run(api))
}
