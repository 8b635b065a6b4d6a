//! The generic REST handlers: one implementation of create/get/list/watch/update/patch/delete/
//! deletecollection (and the status, scale, binding and finalize subresources) for every
//! registry resource.
//!
//! The flow of a write is upstream's: decode → type and metadata checks (name/generateName,
//! namespace defaulting and mismatch, uid, creationTimestamp, generation) → field validation →
//! strategy (defaults, validation → 422) → admission (NamespaceLifecycle) → storage
//! (guaranteed update with preconditions) → encode. Updates run inside the storage retry loop
//! so a lost race re-applies the client's change (or patch) to the fresh object.
//!
//! Deletion honours finalizers: an object with finalizers is only marked (deletionTimestamp,
//! deletionGracePeriodSeconds); removing its last finalizer through update/patch deletes it.
//! Namespaces are finalized here too (there is no namespace controller yet): a deleted
//! namespace turns Terminating, its contents are deleted in the background, then it goes.
//!
//! Reads: LIST and watch go through the resource's watch cache (`Api::cache`, kelson-apistorage
//! `cache`) unless `--watch-cache=false`: a JSON list is spliced from the cache's encoded
//! objects, a JSON watch writes the cache's shared event frames; Table, YAML and
//! `PartialObjectMetadata` decode the cached bytes. What the cache cannot serve (exact
//! versions, stale continue tokens, watches from before its ring) falls back to the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::http::{self as h, Body, Format};
use crate::meta::{self, FieldSelector};
use crate::patch::{self, PatchType};
use crate::registry::{self, ResourceExt, ResourceInfo, Subresource};
use crate::router::{SubTarget, Target};
use crate::server::Api;
use crate::strategy;
use crate::table;
use kelson_apimachinery::meta::{generate_name, new_uid, now_rfc3339};
use kelson_apimachinery::validation;
use kelson_apimachinery::{ApiError, StatusCause};
use kelson_apistorage::{
    ListOptions, ListResult, Preconditions, StorageError, UpdateError, WatchEvent,
};

/// Everything a handler needs about one request.
pub struct Req<'a> {
    pub api: &'a Arc<Api>,
    pub t: &'a Target,
    pub q: HashMap<String, String>,
    pub fmt: Format,
    pub headers: &'a HeaderMap,
    pub warnings: Vec<String>,
    /// The authenticated caller (reviews answer about them).
    pub user: &'a crate::auth::User,
}

/// The authorization verb of a resource request.
pub fn verb(
    method: &Method,
    t: &Target,
    q: &HashMap<String, String>,
) -> Result<&'static str, ApiError> {
    let watch = t.watch_path || q.get("watch").is_some_and(|w| w == "true" || w == "1");
    Ok(match (method.as_str(), t.name.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) if watch => "watch",
        ("GET", true) => "get",
        ("POST", false) => "create",
        ("POST", true) if t.sub == Some(SubTarget::Known(Subresource::Binding)) => "create",
        // Connect subresources, eviction and nodes/proxy: POST is `create` (upstream's verb).
        ("POST", true)
            if matches!(
                t.sub,
                Some(SubTarget::Unsupported(
                    "exec" | "attach" | "portforward" | "eviction" | "proxy" | "token"
                ))
            ) =>
        {
            "create"
        }
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => {
            return Err(ApiError::method_not_supported(
                method.as_str(),
                t.info.resource,
            ))
        }
    })
}

fn gr(t: &Target) -> (&'static str, &'static str) {
    (t.info.group, t.info.resource)
}

fn storage_err(t: &Target, name: &str) -> impl FnOnce(StorageError) -> ApiError {
    let (g, r) = gr(t);
    let name = name.to_string();
    move |e| e.to_api_error(g, r, &name)
}

/// The error of a guaranteed update or delete whose callback rejects with an [`ApiError`].
fn update_err(t: &Target, name: &str) -> impl FnOnce(UpdateError<ApiError>) -> ApiError {
    let (g, r) = gr(t);
    let name = name.to_string();
    move |e| e.into_api_error(g, r, &name)
}

/// `resourceVersion` of a read (`None`: the latest, a linearizable read).
fn read_rv(q: &HashMap<String, String>) -> Option<&str> {
    q.get("resourceVersion").map(String::as_str)
}

pub fn key(api: &Api, info: &ResourceInfo, ns: Option<&str>, name: &str) -> String {
    format!(
        "{}{name}",
        info.key_prefix(&api.root, if info.namespaced { ns } else { None })
    )
}

pub(crate) fn dry_run(q: &HashMap<String, String>) -> Result<bool, ApiError> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid dryRun value: {v:?}: supported values: \"All\""
        ))),
    }
}

fn with_warnings(mut r: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let v = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().append("Warning", v);
        }
    }
    r
}

impl Req<'_> {
    pub(crate) fn ok(&self, code: StatusCode, obj: &Value) -> Response<Body> {
        // Custom resources leave in the request's version (crd::conversion).
        let obj = match crate::crd::output(self.t.info, obj) {
            Ok(o) => o,
            Err(e) => return with_warnings(h::error_response(&e), &self.warnings),
        };
        let obj = &*obj;
        let r = match self.fmt {
            Format::Table { beta } if obj["kind"] != "Status" => {
                let t = table::table(
                    self.t.info.kind,
                    std::slice::from_ref(obj),
                    json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
                    table::include(self.q.get("includeObject").map(String::as_str)),
                    beta,
                );
                h::respond(code, &t, Format::Json)
            }
            Format::Table { .. } | Format::Metadata if obj["kind"] == "Status" => {
                h::json(code, obj)
            }
            Format::Table { .. } => h::json(code, obj),
            Format::Metadata => metadata_response(code, partial_metadata(obj), false),
            f => h::respond(code, obj, f),
        };
        with_warnings(r, &self.warnings)
    }

    fn key(&self, name: &str) -> String {
        key(self.api, self.t.info, self.t.namespace.as_deref(), name)
    }

    fn name(&self) -> &str {
        self.t.name.as_deref().unwrap_or_default()
    }

    fn dry_run(&self) -> Result<bool, ApiError> {
        dry_run(&self.q)
    }
}

/// A shared object predicate (selectors), as storage's list and watch take it.
type Filter = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// The request's selectors as one predicate.
fn selector_filter(t: &Target, q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let ls = meta::label_selector(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fs = FieldSelector::for_resource(
        q.get("fieldSelector").map(String::as_str).unwrap_or(""),
        t.info,
    )?;
    let name = t.name.clone();
    Ok(Arc::new(move |o: &Value| {
        meta::labels_match(&ls, o)
            && fs.matches(o)
            && name.as_deref().is_none_or(|n| o["metadata"]["name"] == n)
    }))
}

/// Whether the request has no selector (storage then counts `remainingItemCount`, as
/// upstream does only for unfiltered lists).
fn unfiltered(q: &HashMap<String, String>) -> bool {
    ["labelSelector", "fieldSelector"]
        .iter()
        .all(|k| q.get(*k).is_none_or(|v| v.is_empty()))
}

/// Dispatches a resource request (authorization already done), inside the request context
/// admission plugins read the user from and add warnings to (`crate::reqctx`).
pub async fn dispatch(
    r: &mut Req<'_>,
    method: &Method,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let user = r.user.clone();
    let (res, warnings) = crate::reqctx::scope(user, dispatch_request(r, method, body)).await;
    res.map(|resp| with_warnings(resp, &warnings))
}

async fn dispatch_request(
    r: &mut Req<'_>,
    method: &Method,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let v = verb(method, r.t, &r.q)?;
    let info = r.t.info;
    if !info.supports(v) && r.t.sub.is_none() {
        return Err(ApiError::method_not_supported(v, info.resource));
    }
    // Custom resources: scale by the CRD's paths, no strategic merge patch (crd/).
    if let Some(res) = crate::crd::dispatch(r, v, &body).await {
        return res;
    }
    match (v, r.t.sub) {
        ("get", None) => get(r).await,
        ("list", None) => list(r).await,
        ("watch", None) => watch(r).await,
        ("create", None) if crate::reviews::is_review(info) => {
            crate::reviews::create(r, &body).await
        }
        ("create", None) => create(r, &body).await,
        ("update", None) => update(r, &body, false).await,
        ("patch", None) => patch_obj(r, &body, false).await,
        ("delete", None) => delete(r, &body).await,
        ("deletecollection", None) => delete_collection(r, &body).await,
        (_, s) if strategy::csr::handles(info, s) => strategy::csr::subresource(r, v, &body).await,
        ("get", Some(SubTarget::Known(Subresource::Status))) => get(r).await,
        ("update", Some(SubTarget::Known(Subresource::Status))) => update(r, &body, true).await,
        ("patch", Some(SubTarget::Known(Subresource::Status))) => patch_obj(r, &body, true).await,
        ("get", Some(SubTarget::Known(Subresource::Scale))) => get_scale(r).await,
        ("update", Some(SubTarget::Known(Subresource::Scale))) => {
            update_scale(r, &body, None).await
        }
        ("patch", Some(SubTarget::Known(Subresource::Scale))) => {
            let pt = PatchType::from_content_type(&h::media_type(
                r.headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
            ))?;
            update_scale(r, &body, Some(pt)).await
        }
        ("create", Some(SubTarget::Known(Subresource::Binding))) => bind(r, &body).await,
        ("create", Some(SubTarget::Unsupported("token"))) if info.resource == "serviceaccounts" => {
            crate::tokens::token_request(r, &body).await
        }
        ("create", Some(SubTarget::Unsupported("eviction"))) if info.kind == "Pod" => {
            crate::eviction::create(r, &body).await
        }
        ("update", Some(SubTarget::Finalize)) => finalize(r, &body).await,
        (v, Some(s)) => Err(ApiError::method_not_supported(
            v,
            &format!("{}/{}", info.resource, s.name()),
        )),
        (v, None) => Err(ApiError::method_not_supported(v, info.resource)),
    }
}

// ---------------------------------------------------------------------------------------------
// Reads

async fn get(r: &mut Req<'_>) -> Result<Response<Body>, ApiError> {
    // resourceVersion "0" (any) or N (not older than N) is served by the watch cache, as
    // upstream's cacher; "" (the latest) is a linearizable store read.
    let rv = read_rv(&r.q).filter(|v| !v.is_empty());
    if let (Some(rv), Some(cache)) = (rv, r.api.cache(r.t.info)) {
        let key = r.key(r.name());
        let found = cache
            .get(&key, rv)
            .await
            .map_err(storage_err(r.t, r.name()))?;
        if let Some(found) = found {
            r.api.metrics.read("get", "cache");
            let o = found.ok_or_else(|| {
                storage_err(r.t, r.name())(StorageError::NotFound { key: key.clone() })
            })?;
            if r.fmt == Format::Json && r.warnings.is_empty() && !crate::crd::converts(r.t.info) {
                return Ok(raw_json(StatusCode::OK, o.json.clone()));
            }
            let obj = o.value().map_err(storage_err(r.t, r.name()))?;
            return Ok(r.ok(StatusCode::OK, &obj));
        }
    }
    r.api.metrics.read("get", "store");
    let obj = r
        .api
        .store
        .get(&r.key(r.name()), read_rv(&r.q))
        .await
        .map_err(storage_err(r.t, r.name()))?;
    Ok(r.ok(StatusCode::OK, &obj))
}

/// A JSON response of already encoded bytes (an object from the watch cache).
fn raw_json(code: StatusCode, bytes: Bytes) -> Response<Body> {
    let mut resp = Response::new(h::full(bytes));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn list_prefix(r: &Req<'_>) -> String {
    r.t.info.key_prefix(&r.api.root, r.t.namespace.as_deref())
}

async fn list(r: &mut Req<'_>) -> Result<Response<Body>, ApiError> {
    let filter = selector_filter(r.t, &r.q)?;
    let limit = match r.q.get("limit") {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let opts = ListOptions {
        resource_version: read_rv(&r.q).map(String::from),
        resource_version_match: r
            .q
            .get("resourceVersionMatch")
            .filter(|m| !m.is_empty())
            .map(|m| m.parse())
            .transpose()
            .map_err(storage_err(r.t, ""))?,
        limit,
        continue_token: r.q.get("continue").filter(|c| !c.is_empty()).cloned(),
    };
    let filter = (!unfiltered(&r.q)).then_some(&*filter);
    if let Some(cache) = r.api.cache(r.t.info) {
        match cache.list(&list_prefix(r), &opts, filter).await {
            Ok(Some(page)) => {
                r.api.metrics.read("list", "cache");
                let lm = list_meta(
                    page.resource_version,
                    &page.continue_token,
                    page.remaining_item_count,
                );
                if r.fmt == Format::Json && !crate::crd::converts(r.t.info) {
                    return Ok(spliced_list(r.t.info, &lm, &page.items));
                }
                let items = page
                    .items
                    .iter()
                    .map(|o| o.value())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(storage_err(r.t, ""))?;
                return Ok(list_response(r, items, lm));
            }
            Ok(None) => {}
            Err(e) => return Err(storage_err(r.t, "")(e)),
        }
    }
    r.api.metrics.read("list", "store");
    let res = r
        .api
        .store
        .list(&list_prefix(r), &opts, filter)
        .await
        .map_err(storage_err(r.t, ""))?;
    let lm = list_meta(
        res.resource_version,
        &res.continue_token,
        res.remaining_item_count,
    );
    Ok(list_response(r, res.items, lm))
}

/// A list's `metadata`.
fn list_meta(rv: i64, continue_token: &Option<String>, remaining: Option<i64>) -> Value {
    let mut lm = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = continue_token {
        lm["continue"] = json!(c);
        if let Some(n) = remaining {
            lm["remainingItemCount"] = json!(n);
        }
    }
    lm
}

/// A JSON list spliced from the cache's encoded objects: no per-object serde round trip.
fn spliced_list(
    info: &ResourceInfo,
    lm: &Value,
    items: &[Arc<kelson_apistorage::CachedObject>],
) -> Response<Body> {
    let head = format!(
        "{{\"kind\":{},\"apiVersion\":{},\"metadata\":{},\"items\":[",
        Value::from(format!("{}List", info.kind)),
        Value::from(info.api_version()),
        lm
    );
    let len = head.len() + items.iter().map(|o| o.json.len() + 1).sum::<usize>() + 2;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(head.as_bytes());
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(&o.json);
    }
    b.extend_from_slice(b"]}");
    let mut resp = Response::new(h::full(b));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `PartialObjectMetadata` of an object.
fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

fn metadata_response(code: StatusCode, v: Value, list: bool) -> Response<Body> {
    let mut resp = h::json(code, &v);
    let ct = if list {
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
    } else {
        "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
    };
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

/// A list response in the request's format.
fn list_response(r: &Req<'_>, items: Vec<Value>, lm: Value) -> Response<Body> {
    let info = r.t.info;
    let items = match crate::crd::output_list(info, items) {
        Ok(items) => items,
        Err(e) => return h::error_response(&e),
    };
    match r.fmt {
        Format::Table { beta } => {
            let t = table::table(
                info.kind,
                &items,
                lm,
                table::include(r.q.get("includeObject").map(String::as_str)),
                beta,
            );
            h::respond(StatusCode::OK, &t, Format::Json)
        }
        Format::Metadata => {
            let items: Vec<Value> = items.iter().map(partial_metadata).collect();
            metadata_response(
                StatusCode::OK,
                json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": lm, "items": items}),
                true,
            )
        }
        f => h::respond(
            StatusCode::OK,
            &json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(), "metadata": lm, "items": items}),
            f,
        ),
    }
}

/// Streams watch events as newline-delimited JSON until the timeout, the client leaving, or
/// the store ending the watch.
async fn watch(r: &mut Req<'_>) -> Result<Response<Body>, ApiError> {
    let filter = selector_filter(r.t, &r.q)?;
    let bookmarks =
        r.q.get("allowWatchBookmarks")
            .is_some_and(|b| b == "true" || b == "1");
    let timeout =
        r.q.get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(1800)
            .min(3600);
    let rv = r.q.get("resourceVersion").cloned().unwrap_or_default();
    let api = r.api.clone();
    let info = r.t.info;
    let prefix = match &r.t.name {
        Some(n) => r.key(n),
        None => list_prefix(r),
    };
    let recursive = r.t.name.is_none();
    let fmt = r.fmt;
    let include = table::include(r.q.get("includeObject").map(String::as_str));

    // Custom resources whose stored version may differ cannot use the shared frames.
    let conv = crate::crd::converts(info);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let encode = move |ty: &str, obj: Value| -> Bytes {
        let (ty, obj) = crate::crd::watch_event(info, ty, obj);
        let obj = match (fmt, ty) {
            (Format::Table { beta }, "ADDED" | "MODIFIED" | "DELETED") => table::table(
                info.kind,
                std::slice::from_ref(&obj),
                json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
                include,
                beta,
            ),
            (Format::Metadata, "ADDED" | "MODIFIED" | "DELETED") => partial_metadata(&obj),
            _ => obj,
        };
        let mut b = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    };
    let bookmark = move |rev: i64| json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": {"resourceVersion": rev.to_string()}});

    // Served from the watch cache: one store watch per resource fans out to every client.
    if let Some(cache) = api.cache(info) {
        use kelson_apistorage::{CacheWatchEvent, WatchStart};
        let start =
            match rv.as_str() {
                "" => WatchStart::Now { consistent: true },
                "0" => WatchStart::Now { consistent: false },
                v => WatchStart::After(v.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(
                    || ApiError::bad_request(format!("invalid resourceVersion {rv:?}")),
                )?),
            };
        let interval = api.store.config().bookmark_interval;
        let started = cache
            .watch(
                &prefix,
                recursive,
                start,
                Some(filter.clone()),
                bookmarks,
                interval,
            )
            .await;
        // A start the cache cannot serve (a version older than its ring, e.g. one from before
        // this server's cache started, or not initialized in time) is served by a store watch:
        // the store replays it, or answers 410 if it is compacted.
        let started = match started {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, "watch cache cannot serve this watch, watching the store");
                None
            }
        };
        if let Some(started) = started {
            api.metrics.read("watch", "cache");
            let watches = api.stats.watches.clone();
            let frame = move |ty: kelson_apistorage::cache::EventType,
                              obj: &kelson_apistorage::CachedObject,
                              json_frame: Bytes| {
                if fmt == Format::Json && !conv {
                    return Some(json_frame);
                }
                obj.value().ok().map(|v| encode(ty.as_str(), v))
            };
            tokio::spawn(async move {
                watches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _guard = scopeguard(move || {
                    watches.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                });
                let (initial, mut stream) = started;
                for o in initial {
                    let ty = kelson_apistorage::cache::EventType::Added;
                    let f = kelson_apistorage::cache::json_frame("ADDED", &o.json);
                    if let Some(f) = frame(ty, &o, f) {
                        if tx.send(f).await.is_err() {
                            return;
                        }
                    }
                }
                use futures::StreamExt;
                let deadline = tokio::time::sleep(Duration::from_secs(timeout));
                tokio::pin!(deadline);
                loop {
                    let ev = tokio::select! {
                        _ = &mut deadline => return,
                        _ = tx.closed() => return,
                        ev = stream.next() => ev,
                    };
                    let out = match ev {
                        None => return,
                        Some(CacheWatchEvent::Object { ty, obj, frame: f }) => frame(ty, &obj, f),
                        Some(CacheWatchEvent::Bookmark(rev)) => {
                            Some(encode("BOOKMARK", bookmark(rev)))
                        }
                        Some(CacheWatchEvent::Error(e)) => {
                            let _ = tx
                                .send(encode("ERROR", e.to_status(info.group, info.resource, "")))
                                .await;
                            return;
                        }
                    };
                    if let Some(out) = out {
                        if tx.send(out).await.is_err() {
                            return;
                        }
                    }
                }
            });
            return Ok(watch_response(rx, fmt));
        }
    }

    api.metrics.read("watch", "store");
    // Initial state: rv "" or "0" means "current state as ADDED events, then changes".
    let mut initial = Vec::new();
    let from = if rv.is_empty() || rv == "0" {
        let res = if recursive {
            api.store
                .list(&prefix, &ListOptions::default(), Some(&*filter))
                .await
                .map_err(storage_err(r.t, ""))?
        } else {
            let cur = api
                .store
                .current_revision()
                .await
                .map_err(storage_err(r.t, ""))?;
            let items = match api.store.get(&prefix, None).await {
                Ok(o) if filter(&o) => vec![o],
                Ok(_) | Err(StorageError::NotFound { .. }) => vec![],
                Err(e) => return Err(storage_err(r.t, "")(e)),
            };
            ListResult {
                items,
                resource_version: cur,
                continue_token: None,
                remaining_item_count: None,
            }
        };
        initial = res.items;
        res.resource_version
    } else {
        rv.parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?
    };
    let stream_res = api
        .store
        .watch(&prefix, recursive, from, Some(filter.clone()), bookmarks)
        .await;
    let watches = api.stats.watches.clone();
    tokio::spawn(async move {
        watches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _guard = scopeguard(move || {
            watches.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
        for o in initial {
            if tx.send(encode("ADDED", o)).await.is_err() {
                return;
            }
        }
        let mut stream = match stream_res {
            Ok(s) => s,
            Err(e) => {
                let _ = tx
                    .send(encode("ERROR", e.to_status(info.group, info.resource, "")))
                    .await;
                return;
            }
        };
        use futures::StreamExt;
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            let ev = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                ev = stream.next() => ev,
            };
            let frame = match ev {
                None => return,
                Some(WatchEvent::Added(o)) => encode("ADDED", o),
                Some(WatchEvent::Modified(o)) => encode("MODIFIED", o),
                Some(WatchEvent::Deleted(o)) => encode("DELETED", o),
                Some(WatchEvent::Bookmark(rev)) => encode("BOOKMARK", bookmark(rev)),
                Some(WatchEvent::Error(e)) => {
                    let _ = tx
                        .send(encode("ERROR", e.to_status(info.group, info.resource, "")))
                        .await;
                    return;
                }
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    Ok(watch_response(rx, fmt))
}

/// The streaming response of a watch, fed by the watch task through `rx`.
fn watch_response(rx: tokio::sync::mpsc::Receiver<Bytes>, fmt: Format) -> Response<Body> {
    use futures::StreamExt;
    use http_body_util::BodyExt;
    let body = BodyExt::boxed(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|b| Ok::<_, std::io::Error>(hyper::body::Frame::data(b))),
    ));
    let mut resp = Response::new(body);
    let ct = match fmt {
        Format::Table { .. } => "application/json;as=Table;v=v1;g=meta.k8s.io",
        Format::Metadata => "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        _ => "application/json",
    };
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}

/// Runs `f` on drop (watch gauges must fall however the task ends).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    G(Some(f))
}

// ---------------------------------------------------------------------------------------------
// Writes

/// Decodes a body and checks its apiVersion/kind against the resource (filling them in).
pub(crate) fn decode_typed(
    r: &mut Req<'_>,
    body: &[u8],
    kind: &str,
    api_version: &str,
) -> Result<Value, ApiError> {
    let ct = r
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut obj = h::decode_object(ct, body)?;
    match obj["apiVersion"].as_str() {
        None | Some("") => obj["apiVersion"] = json!(api_version),
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )))
        }
    }
    match obj["kind"].as_str() {
        None | Some("") => obj["kind"] = json!(kind),
        Some(k) if k == kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({kind})"
            )))
        }
    }
    if !obj["metadata"].is_object() {
        if obj["metadata"].is_null() {
            obj["metadata"] = json!({});
        } else {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
    }
    field_validation(r, &obj)?;
    Ok(obj)
}

/// fieldValidation=Strict|Warn|Ignore against the typed schema (k8s-openapi round trip).
pub(crate) fn field_validation(r: &mut Req<'_>, obj: &Value) -> Result<(), ApiError> {
    let info = r.t.info;
    let unknown = crate::fieldval::check(info, obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            info.kind, info.version, info.kind
        ))
    })?;
    let mode =
        r.q.get("fieldValidation")
            .map(String::as_str)
            .unwrap_or("Warn");
    let mode = match mode {
        "" | "Warn" => "Warn",
        "Strict" => "Strict",
        "Ignore" => return Ok(()),
        other => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported value: {other:?}; supported values: \"Ignore\", \"Warn\", \"Strict\""
            )))
        }
    };
    if unknown.is_empty() {
        return Ok(());
    }
    if mode == "Strict" {
        let msgs: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            msgs.join(", ")
        )));
    }
    r.warnings
        .extend(unknown.into_iter().map(|f| format!("unknown field {f:?}")));
    Ok(())
}

fn has_spec(obj: &Value) -> bool {
    obj.get("spec").is_some_and(|s| !s.is_null())
}

/// Upstream's `ValidateObjectMeta` for create and update: names (DNS labels for namespaces
/// and services, subdomains otherwise), namespace by scope, labels, annotations, owner
/// references, finalizers.
fn meta_causes(info: &ResourceInfo, obj: &Value) -> Vec<StatusCause> {
    let name_fn: validation::NameFn = if matches!(info.kind, "Namespace" | "Service") {
        validation::name_is_dns_label
    } else if info.group == "rbac.authorization.k8s.io" {
        // Roles and bindings are named like `system:controller:x` (ValidateRBACName).
        validation::name_is_path_segment
    } else {
        validation::name_is_dns_subdomain
    };
    validation::validate_object_meta(&obj["metadata"], info.namespaced, name_fn)
}

/// NamespaceLifecycle admission: the namespace must exist and not be terminating.
async fn namespace_admission(
    api: &Api,
    info: &ResourceInfo,
    ns: &str,
    name: &str,
) -> Result<(), ApiError> {
    let nsinfo = registry::lookup("", "v1", "namespaces").expect("namespaces are registered");
    match api.admission_get(nsinfo, None, ns, true).await {
        Ok(None) => Err(ApiError::not_found("", "namespaces", ns)),
        Ok(Some(o)) => {
            if o["metadata"]["deletionTimestamp"].is_string()
                || o["status"]["phase"] == "Terminating"
            {
                let what = if info.group.is_empty() {
                    info.resource.to_string()
                } else {
                    format!("{}.{}", info.resource, info.group)
                };
                return Err(ApiError::forbidden_msg(format!(
                    "{what} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated"
                )));
            }
            Ok(())
        }
        Err(e) => Err(e.to_api_error("", "namespaces", ns)),
    }
}

/// Prepares and stores a new object (used by POST and by startup bootstrapping).
pub async fn create_object(
    api: &Arc<Api>,
    info: &'static ResourceInfo,
    url_ns: Option<&str>,
    obj: Value,
    dry: bool,
) -> Result<Value, ApiError> {
    create_object_with(api, info, url_ns, obj, dry, CreateManaged::None).await
}

/// What a create records in `metadata.managedFields` (see `crate::apply`).
pub(crate) enum CreateManaged<'a> {
    /// Nothing (objects the server bootstraps).
    None,
    /// The creating request's `Update` entry.
    Update(&'a crate::apply::FieldManager),
    /// The object's own (computed by a server-side apply).
    Keep,
}

/// [`create_object`], recording managed fields.
pub(crate) async fn create_object_with(
    api: &Arc<Api>,
    info: &'static ResourceInfo,
    url_ns: Option<&str>,
    mut obj: Value,
    dry: bool,
    managed: CreateManaged<'_>,
) -> Result<Value, ApiError> {
    let req_mf = obj["metadata"]["managedFields"].clone();
    let meta = obj["metadata"]
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = if name.is_empty() {
        match meta
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|g| !g.is_empty())
        {
            Some(g) => generate_name(g),
            None => {
                return Err(ApiError::invalid(
                    info.group,
                    info.kind,
                    "",
                    vec![StatusCause::required("metadata.name")
                        .with_message("Required value: name or generateName is required")],
                ));
            }
        }
    } else {
        name
    };
    meta.insert("name".into(), json!(name));
    if info.namespaced {
        let body_ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ns = match (url_ns, body_ns.as_str()) {
            (Some(u), "") => u.to_string(),
            (Some(u), b) if u == b => u.to_string(),
            (Some(_), _) => return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request")),
            (None, _) => return Err(ApiError::bad_request("a namespace is required to create this resource (use /namespaces/<ns>/...)")),
        };
        meta.insert("namespace".into(), json!(ns));
    } else {
        meta.remove("namespace");
    }
    for f in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
        "generation",
    ] {
        meta.remove(f);
    }
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    let strat = strategy::for_kind(info.group, info.kind);
    strat.prepare_for_create(&mut obj);
    if has_spec(&obj) {
        obj["metadata"]["generation"] = json!(1);
    }
    // Admission runs before validation, as upstream: NamespaceLifecycle, then the pod plugins.
    let ns = obj["metadata"]["namespace"].as_str().map(String::from);
    if let Some(ns) = &ns {
        namespace_admission(api, info, ns, &name).await?;
        if info.kind == "Pod" && info.group.is_empty() {
            crate::admission::admit_pod_create(api, ns, &name, &mut obj).await?;
            crate::limitranger::admit_pod(api, ns, &name, &mut obj).await?;
        }
    }
    crate::node_authz::admit_create(info, &obj)?;
    strategy::csr::admit_create(info, &obj)?;
    match managed {
        CreateManaged::None => {}
        CreateManaged::Update(fm) => fm.record_create(info, &mut obj, &req_mf)?,
        CreateManaged::Keep => crate::apply::set_managed_fields(&mut obj, Some(req_mf)),
    }
    let mut causes = meta_causes(info, &obj);
    causes.extend(strat.validate(&obj));
    if !causes.is_empty() {
        return Err(ApiError::invalid(info.group, info.kind, &name, causes));
    }
    // Validating admission, after validation as upstream.
    if let Some(ns) = &ns {
        crate::podsecurity::admit(api, info, ns, &obj).await?;
        // ResourceQuota last, as upstream: it charges the quota.
        crate::quota_admission::admit_create(api, info, ns, &name, dry).await?;
    }
    let mut allocated = Allocated::default();
    if info.kind == "Service" && info.group.is_empty() && !dry {
        allocated = allocate_service(api, &mut obj).await?;
    }
    let k = key(api, info, ns.as_deref(), &name);
    match api
        .store
        .create(&k, crate::crd::to_storage(info, obj)?, dry)
        .await
    {
        Ok(o) => Ok(o),
        Err(e) => {
            allocated.release(api).await;
            Err(e.to_api_error(info.group, info.resource, &name))
        }
    }
}

trait WithMessage {
    fn with_message(self, m: &str) -> Self;
}
impl WithMessage for StatusCause {
    fn with_message(mut self, m: &str) -> Self {
        self.message = m.into();
        self
    }
}

async fn create(r: &mut Req<'_>, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let info = r.t.info;
    let obj = decode_typed(r, body, info.kind, &info.api_version())?;
    let dry = r.dry_run()?;
    let fm = crate::apply::FieldManager::for_request(
        info,
        &r.q,
        r.headers,
        "",
        crate::apply::Options::Create,
    )?;
    let out = create_object_with(
        r.api,
        info,
        r.t.namespace.as_deref(),
        obj,
        dry,
        CreateManaged::Update(&fm),
    )
    .await?;
    Ok(r.ok(StatusCode::CREATED, &out))
}

/// The object an update stores: the client's object with the server-owned metadata of the
/// stored one, its status kept when status is a subresource, defaults, validation, generation.
pub(crate) fn merge_update(
    info: &ResourceInfo,
    cur: &Value,
    mut new: Value,
    status_only: bool,
) -> Result<Value, ApiError> {
    let name = cur["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    crate::node_authz::admit_update(info, cur, &new, status_only)?;
    if status_only {
        let mut out = cur.clone();
        out["status"] = new["status"].take();
        if out["status"].is_null() {
            if let Some(m) = out.as_object_mut() {
                m.remove("status");
            }
        }
        crate::crd::prepare_status_update(info, &mut out)?;
        return Ok(out);
    }
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
        "name",
    ] {
        match cur["metadata"].get(f) {
            Some(v) => new["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("managedFields");
        m.remove("selfLink");
    }
    if info.has(Subresource::Status) {
        match cur.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    // A deleting object may lose finalizers but gain none (upstream: "no new finalizers can be added if the object is being deleted").
    if cur["metadata"]["deletionTimestamp"].is_string() {
        let old: Vec<Value> = cur["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(nf) = new["metadata"]["finalizers"].as_array() {
            if nf.iter().any(|f| !old.contains(f)) {
                return Err(ApiError::invalid(info.group, info.kind, &name, vec![StatusCause {
                    reason: "FieldValueForbidden".into(),
                    message: "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                    field: "metadata.finalizers".into(),
                }]));
            }
        }
    }
    let strat = strategy::for_kind(info.group, info.kind);
    strat.prepare_for_update(&mut new, cur);
    if info.kind == "Namespace" {
        // Terminating namespaces stay terminating; phase is server-owned.
        new["status"] = cur["status"].clone();
    }
    let mut causes = meta_causes(info, &new);
    causes.extend(strat.validate_update(&new, cur));
    if !causes.is_empty() {
        return Err(ApiError::invalid(info.group, info.kind, &name, causes));
    }
    if has_spec(&new) {
        let g = cur["metadata"]["generation"].as_i64().unwrap_or(0);
        let g = if new["spec"] != cur["spec"] || g == 0 {
            g + 1
        } else {
            g
        };
        new["metadata"]["generation"] = json!(g);
    }
    Ok(new)
}

fn check_name(r: &Req<'_>, obj: &Value) -> Result<(), ApiError> {
    let body_name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if body_name != r.name() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            r.name()
        )));
    }
    if let (Some(u), Some(b)) = (
        r.t.namespace.as_deref(),
        obj["metadata"]["namespace"].as_str(),
    ) {
        if !b.is_empty() && u != b {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
    }
    Ok(())
}

/// After a write: a deleting object whose last finalizer went is deleted now.
pub(crate) async fn finish_if_finalized(
    api: &Arc<Api>,
    info: &'static ResourceInfo,
    obj: Value,
    dry: bool,
) -> Result<Value, ApiError> {
    let deleting = obj["metadata"]["deletionTimestamp"].is_string();
    let none_left = obj["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|f| f.is_empty());
    if !(deleting && none_left) || dry || info.kind == "Namespace" {
        return Ok(obj);
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let k = key(api, info, obj["metadata"]["namespace"].as_str(), &name);
    let pre = Preconditions {
        uid: obj["metadata"]["uid"].as_str().map(String::from),
        resource_version: None,
    };
    match api
        .store
        .delete(&k, &pre, false, |cur| {
            if cur["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
            {
                Err(ApiError::conflict(
                    info.group,
                    info.resource,
                    &name,
                    "finalizers were added concurrently",
                ))
            } else {
                Ok(())
            }
        })
        .await
    {
        Ok(o) => {
            after_delete(api, info, &o).await;
            Ok(o)
        }
        Err(e) if e.is_not_found() => Ok(obj),
        Err(e) => Err(e.into_api_error(info.group, info.resource, &name)),
    }
}

async fn update(
    r: &mut Req<'_>,
    body: &[u8],
    status_only: bool,
) -> Result<Response<Body>, ApiError> {
    let info = r.t.info;
    let obj = decode_typed(r, body, info.kind, &info.api_version())?;
    check_name(r, &obj)?;
    let dry = r.dry_run()?;
    let sub = if status_only { "status" } else { "" };
    let fm = crate::apply::FieldManager::for_request(
        info,
        &r.q,
        r.headers,
        sub,
        crate::apply::Options::Update,
    )?;
    // Upstream's update compares the client's resourceVersion inside the update loop (not as a
    // storage precondition), so a stale one is a Conflict with the optimistic-lock message.
    let rv = obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from);
    let pre = Preconditions::default();
    let name = r.name().to_string();
    let key = r.key(r.name());
    let svc = if is_service(info) && !status_only && !dry {
        let cur0 = r
            .api
            .store
            .get(&key, None)
            .await
            .map_err(storage_err(r.t, r.name()))?;
        let candidate = merge_update(info, &cur0, obj.clone(), false)?;
        Some(ServiceAlloc::prepare(r.api, cur0, &candidate).await?)
    } else {
        None
    };
    let res = cached_update(r.api, info, &key, &pre, dry, |cur| {
        check_resource_version(info, &name, rv.as_deref(), &cur)?;
        let cur = crate::crd::to_request(info, cur)?;
        let mut new = merge_update(info, &cur, obj.clone(), status_only)?;
        fm.record_update(info, &cur, &mut new, &obj["metadata"]["managedFields"])?;
        if let Some(a) = &svc {
            a.fill(&mut new);
        }
        crate::crd::to_storage(info, new)
    })
    .await
    .map_err(update_err(r.t, r.name()));
    if let Some(a) = &svc {
        a.finish(r.api, res.as_ref().ok()).await;
    }
    let out = finish_if_finalized(r.api, info, res?, dry).await?;
    Ok(r.ok(StatusCode::OK, &out))
}

/// The watch cache's current copy of the object at `key` (possibly stale), decoded.
fn cached_copy(api: &Api, info: &ResourceInfo, key: &str) -> Option<Value> {
    api.cache(info)?.peek(key)?.value().ok()
}

/// A guaranteed update that starts from the watch cache's copy of the object, as upstream's
/// cacher hands its cached object to the store's GuaranteedUpdate: when the copy is current
/// (the common case) the write is one compare-and-swap with no read before it. A stale copy
/// costs what the read would have: the failed compare returns the fresh object, and a
/// precondition or callback error on the copy is only final after a fresh read agrees
/// (kelson-apistorage `UpdateOptions::cached`).
async fn cached_update<F>(
    api: &Api,
    info: &ResourceInfo,
    key: &str,
    pre: &Preconditions,
    dry: bool,
    mut f: F,
) -> Result<Value, UpdateError<ApiError>>
where
    F: FnMut(Value) -> Result<Value, ApiError> + Send,
{
    let opts = kelson_apistorage::UpdateOptions {
        preconditions: pre.clone(),
        dry_run: dry,
        ignore_not_found: false,
        cached: cached_copy(api, info, key),
    };
    api.store
        .guaranteed_update_with(key, opts, |cur| match cur {
            Some(v) => f(v),
            // Unreachable without ignore_not_found: storage answers NotFound itself.
            None => Err(ApiError::not_found(info.group, info.resource, "")),
        })
        .await
}

/// A client's `metadata.resourceVersion` (on update, patch, scale) must be the stored one.
pub(crate) fn check_resource_version(
    info: &ResourceInfo,
    name: &str,
    want: Option<&str>,
    cur: &Value,
) -> Result<(), ApiError> {
    match want {
        Some(rv) if cur["metadata"]["resourceVersion"].as_str() != Some(rv) => {
            Err(ApiError::conflict(
                info.group,
                info.resource,
                name,
                kelson_apimachinery::error::OPTIMISTIC_LOCK_ERROR_MSG,
            ))
        }
        _ => Ok(()),
    }
}

pub(crate) fn is_service(info: &ResourceInfo) -> bool {
    info.kind == "Service" && info.group.is_empty()
}

/// Node ports a Service update needs, claimed before the write (claims are async; the storage
/// retry loop is not) and reconciled after it: ports the new object does not use are released.
pub(crate) struct ServiceAlloc {
    old: Value,
    /// Freshly allocated ports for `nodePort`-less ports, handed out in order.
    pool: Vec<u16>,
    /// Explicitly requested ports that were not the service's before.
    claimed: Vec<u16>,
}

impl ServiceAlloc {
    pub(crate) async fn prepare(
        api: &Arc<Api>,
        old: Value,
        candidate: &Value,
    ) -> Result<ServiceAlloc, ApiError> {
        let mut a = ServiceAlloc {
            old,
            pool: Vec::new(),
            claimed: Vec::new(),
        };
        if !matches!(
            candidate["spec"]["type"].as_str(),
            Some("NodePort" | "LoadBalancer")
        ) {
            return Ok(a);
        }
        let owned = Allocated::from_service(&a.old).ports;
        let owner = format!(
            "{}/{}",
            candidate["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default(),
            candidate["metadata"]["name"].as_str().unwrap_or_default()
        );
        let ports = candidate["spec"]["ports"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, p) in ports.iter().enumerate() {
            let field = format!("spec.ports[{i}].nodePort");
            let res = match p["nodePort"].as_i64() {
                Some(n) if owned.iter().any(|o| i64::from(*o) == n) => continue,
                Some(n) => api
                    .alloc
                    .allocate_port(&api.store, Some(n), &owner, &field)
                    .await
                    .map(|p| a.claimed.push(p)),
                None => api
                    .alloc
                    .allocate_port(&api.store, None, &owner, &field)
                    .await
                    .map(|p| a.pool.push(p)),
            };
            if let Err(e) = res {
                a.finish(api, None).await;
                return Err(e);
            }
        }
        Ok(a)
    }

    pub(crate) fn fill(&self, new: &mut Value) {
        if !matches!(
            new["spec"]["type"].as_str(),
            Some("NodePort" | "LoadBalancer")
        ) {
            return;
        }
        let mut pool = self.pool.iter();
        if let Some(ports) = new["spec"]["ports"].as_array_mut() {
            for p in ports.iter_mut().filter(|p| p["nodePort"].is_null()) {
                if let Some(n) = pool.next() {
                    p["nodePort"] = json!(n);
                }
            }
        }
    }

    /// Releases what the stored result (`None`: the write failed) does not hold.
    pub(crate) async fn finish(&self, api: &Arc<Api>, new: Option<&Value>) {
        let keep = new
            .map(|n| Allocated::from_service(n).ports)
            .unwrap_or_default();
        let mut candidates: Vec<u16> = self.pool.iter().chain(&self.claimed).copied().collect();
        if new.is_some() {
            candidates.extend(Allocated::from_service(&self.old).ports);
        }
        for p in candidates {
            if !keep.contains(&p) {
                api.alloc.release_port(&api.store, p).await;
            }
        }
    }
}

/// `PUT namespaces/<n>/finalize`: only `spec.finalizers` changes; a terminating namespace
/// whose finalizers are all gone is deleted (what the namespace controller relies on).
async fn finalize(r: &mut Req<'_>, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let info = r.t.info;
    let obj = decode_typed(r, body, info.kind, &info.api_version())?;
    check_name(r, &obj)?;
    let dry = r.dry_run()?;
    let rv = obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from);
    let name = r.name().to_string();
    let key = r.key(r.name());
    let out = r
        .api
        .store
        .guaranteed_update(&key, &Preconditions::default(), dry, |mut cur| {
            check_resource_version(info, &name, rv.as_deref(), &cur)?;
            cur["spec"]["finalizers"] = obj["spec"]["finalizers"].clone();
            if cur["spec"]["finalizers"].is_null() {
                if let Some(m) = cur["spec"].as_object_mut() {
                    m.remove("finalizers");
                }
            }
            Ok(cur)
        })
        .await
        .map_err(update_err(r.t, r.name()))?;
    let empty = |v: &Value| v.as_array().is_none_or(|a| a.is_empty());
    if !dry
        && out["metadata"]["deletionTimestamp"].is_string()
        && empty(&out["spec"]["finalizers"])
        && empty(&out["metadata"]["finalizers"])
    {
        match r
            .api
            .store
            .delete(&key, &Preconditions::default(), false, |_| {
                Ok::<_, ApiError>(())
            })
            .await
        {
            Ok(o) => return Ok(r.ok(StatusCode::OK, &o)),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(update_err(r.t, r.name())(e)),
        }
    }
    Ok(r.ok(StatusCode::OK, &out))
}

async fn patch_obj(
    r: &mut Req<'_>,
    body: &[u8],
    status_only: bool,
) -> Result<Response<Body>, ApiError> {
    let info = r.t.info;
    let ct = r
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let pt = PatchType::from_content_type(&h::media_type(ct))?;
    if pt == PatchType::Apply {
        return crate::apply::patch(r, body, status_only).await;
    }
    let sub = if status_only { "status" } else { "" };
    let fm = crate::apply::FieldManager::for_request(
        info,
        &r.q,
        r.headers,
        sub,
        crate::apply::Options::Patch,
    )?;
    let dry = r.dry_run()?;
    let key = r.key(r.name());
    let name = r.name().to_string();
    // Field validation runs on the first patched result; later retries reuse the verdict.
    // The watch cache's copy will do for that (a Service's node-port bookkeeping wants the
    // stored one); the update below re-reads the store if the copy is stale.
    let cached0 = if is_service(info) {
        None
    } else {
        cached_copy(r.api, info, &key)
    };
    let cur0 = match cached0 {
        Some(c) => c,
        None => r
            .api
            .store
            .get(&key, None)
            .await
            .map_err(storage_err(r.t, &name))?,
    };
    let cur0 = crate::crd::to_request(info, cur0)?;
    let first = patch::apply_to(pt, &cur0, body, info.definition)?;
    field_validation(r, &first)?;
    let svc = if is_service(info) && !status_only && !dry {
        let mut first = first.clone();
        first["kind"] = json!(info.kind);
        first["apiVersion"] = json!(info.api_version());
        let candidate = merge_update(info, &cur0, first, false)?;
        Some(ServiceAlloc::prepare(r.api, cur0.clone(), &candidate).await?)
    } else {
        None
    };
    let res = cached_update(r.api, info, &key, &Preconditions::default(), dry, |cur| {
        let cur = crate::crd::to_request(info, cur)?;
        let mut patched = patch::apply_to(pt, &cur, body, info.definition)?;
        check_resource_version(
            info,
            &name,
            patched["metadata"]["resourceVersion"].as_str(),
            &cur,
        )?;
        if patched["metadata"]["name"] != cur["metadata"]["name"] {
            return Err(ApiError::bad_request(
                "metadata.name cannot be changed by a patch",
            ));
        }
        if !patched.is_object() || !patched["metadata"].is_object() {
            return Err(ApiError::bad_request(
                "the patched object is not a valid object",
            ));
        }
        patched["kind"] = json!(info.kind);
        patched["apiVersion"] = json!(info.api_version());
        let req_mf = patched["metadata"]["managedFields"].clone();
        let mut new = merge_update(info, &cur, patched, status_only)?;
        fm.record_update(info, &cur, &mut new, &req_mf)?;
        if let Some(a) = &svc {
            a.fill(&mut new);
        }
        crate::crd::to_storage(info, new)
    })
    .await
    .map_err(update_err(r.t, &name));
    if let Some(a) = &svc {
        a.finish(r.api, res.as_ref().ok()).await;
    }
    let out = finish_if_finalized(r.api, info, res?, dry).await?;
    Ok(r.ok(StatusCode::OK, &out))
}

// ---------------------------------------------------------------------------------------------
// Scale and binding

fn to_scale(obj: &Value) -> Value {
    // status.selector is the selector in upstream's canonical string form.
    let sel_str =
        kelson_apimachinery::selector::label_selector_as_selector(Some(&obj["spec"]["selector"]))
            .map(|s| s.to_string())
            .unwrap_or_default();
    let m = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                     "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": sel_str},
    })
}

async fn get_scale(r: &mut Req<'_>) -> Result<Response<Body>, ApiError> {
    let obj = r
        .api
        .store
        .get(&r.key(r.name()), None)
        .await
        .map_err(storage_err(r.t, r.name()))?;
    Ok(h::respond(
        StatusCode::OK,
        &to_scale(&obj),
        if r.fmt == Format::Yaml {
            Format::Yaml
        } else {
            Format::Json
        },
    ))
}

async fn update_scale(
    r: &mut Req<'_>,
    body: &[u8],
    patch_type: Option<PatchType>,
) -> Result<Response<Body>, ApiError> {
    let info = r.t.info;
    let dry = r.dry_run()?;
    let name = r.name().to_string();
    let key = r.key(&name);
    let body_scale = match patch_type {
        None => {
            let ct = r
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            Some(h::decode_object(ct, body)?)
        }
        Some(_) => None,
    };
    let rv = body_scale
        .as_ref()
        .and_then(|s| s["metadata"]["resourceVersion"].as_str())
        .filter(|s| !s.is_empty())
        .map(String::from);
    let out = r
        .api
        .store
        .guaranteed_update(&key, &Preconditions::default(), dry, |cur| {
            check_resource_version(info, &name, rv.as_deref(), &cur)?;
            let scale = match (&body_scale, patch_type) {
                (Some(s), _) => s.clone(),
                (None, Some(pt)) => patch::apply(pt, &to_scale(&cur), body)?,
                (None, None) => unreachable_scale(),
            };
            let replicas = scale["spec"]["replicas"].as_i64().ok_or_else(|| {
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
                        format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                    )],
                ));
            }
            let mut new = cur.clone();
            new["spec"]["replicas"] = json!(replicas);
            if new["spec"] != cur["spec"] {
                let g = cur["metadata"]["generation"].as_i64().unwrap_or(0);
                new["metadata"]["generation"] = json!(g + 1);
            }
            Ok(new)
        })
        .await
        .map_err(update_err(r.t, &name))?;
    Ok(h::json(StatusCode::OK, &to_scale(&out)))
}

fn unreachable_scale() -> Value {
    json!({})
}

async fn bind(r: &mut Req<'_>, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let ct = r
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let b = h::decode_object(ct, body)?;
    let node = b["target"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(String::from)
        .ok_or_else(|| {
            ApiError::invalid(
                "",
                "Binding",
                r.name(),
                vec![StatusCause::required("target.name")],
            )
        })?;
    let dry = r.dry_run()?;
    let name = r.name().to_string();
    let key = r.key(&name);
    let pre = Preconditions {
        uid: b["metadata"]["uid"].as_str().map(String::from),
        resource_version: b["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from),
    };
    // From the watch cache's copy, like updates: a current copy (the scheduler binds pods it
    // just saw created) makes the binding one compare-and-swap with no read before it; on a
    // stale copy the conflict checks below are only final after a fresh read agrees.
    cached_update(r.api, r.t.info, &key, &pre, dry, |mut pod| {
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return Err(ApiError::conflict(
                "",
                "pods",
                &name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        if let Some(n) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                "",
                "pods/binding",
                &name,
                &format!("pod {name} is already assigned to node {n:?}"),
            ));
        }
        // The callback owns its copy: modify it in place rather than clone the pod again.
        pod["spec"]["nodeName"] = json!(node);
        let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
        match pod["status"]["conditions"].as_array_mut() {
            Some(cs) => {
                cs.retain(|c| c["type"] != "PodScheduled");
                cs.push(cond);
            }
            None => pod["status"]["conditions"] = json!([cond]),
        }
        Ok(pod)
    })
    .await
    .map_err(update_err(r.t, &name))?;
    Ok(h::json(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

// ---------------------------------------------------------------------------------------------
// Deletes

/// DeleteOptions from the body and the query (query wins, as upstream merges them).
struct DeleteOpts {
    grace: Option<i64>,
    pre: Preconditions,
    dry: bool,
    /// The finalizer the garbage collector acts on for this propagation policy
    /// (`foregroundDeletion` for Foreground, `orphan` for Orphan; Background needs none).
    gc_finalizer: Option<&'static str>,
}

fn delete_opts(r: &Req<'_>, body: &[u8]) -> Result<DeleteOpts, ApiError> {
    let ct = r
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let o = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        h::decode_object(ct, body)?
    };
    let mut grace = o["gracePeriodSeconds"].as_i64();
    if let Some(g) = r.q.get("gracePeriodSeconds") {
        grace = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    let mut policy = o["propagationPolicy"].as_str().map(String::from);
    if let Some(p) = r.q.get("propagationPolicy") {
        policy = Some(p.clone());
    }
    if let Some(p) = &policy {
        if !["Orphan", "Background", "Foreground"].contains(&p.as_str()) {
            return Err(ApiError::invalid("", "DeleteOptions", "", vec![StatusCause {
                reason: "FieldValueNotSupported".into(),
                message: format!("Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""),
                field: "propagationPolicy".into(),
            }]));
        }
    }
    let gc_finalizer = match policy.as_deref() {
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        _ => None,
    };
    let mut dry = dry_run(&r.q)?;
    if o["dryRun"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == "All"))
    {
        dry = true;
    }
    let pre = Preconditions {
        uid: o["preconditions"]["uid"].as_str().map(String::from),
        resource_version: o["preconditions"]["resourceVersion"]
            .as_str()
            .map(String::from),
    };
    Ok(DeleteOpts {
        grace,
        pre,
        dry,
        gc_finalizer,
    })
}

/// Releases what a deleted object held (service IPs and node ports).
async fn after_delete(api: &Arc<Api>, info: &ResourceInfo, obj: &Value) {
    if info.kind == "Service" && info.group.is_empty() {
        Allocated::from_service(obj).release(api).await;
    }
}

/// Deletes one object by the upstream rules; `Ok((obj, deleted_now))`.
async fn delete_one(
    api: &Arc<Api>,
    info: &'static ResourceInfo,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOpts,
) -> Result<(Value, bool), ApiError> {
    let k = key(api, info, ns, name);
    let cur = api
        .store
        .get(&k, None)
        .await
        .map_err(|e| e.to_api_error(info.group, info.resource, name))?;
    let has_finalizers = cur["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    let pod_graceful = info.kind == "Pod"
        && cur["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        && opts
            .grace
            .or(cur["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30)
            > 0
        && !(cur["metadata"]["deletionTimestamp"].is_string() && opts.grace == Some(0));
    let is_ns = info.kind == "Namespace";
    let gc_finalizer = opts.gc_finalizer.filter(|_| !is_ns);
    let needs_gc_finalizer = gc_finalizer.is_some_and(|f| {
        !cur["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == f))
    });
    if has_finalizers || needs_gc_finalizer || pod_graceful || is_ns {
        if cur["metadata"]["deletionTimestamp"].is_string() && !is_ns && !needs_gc_finalizer {
            return Ok((cur, false));
        }
        let grace = if pod_graceful {
            opts.grace
                .or(cur["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30)
        } else {
            0
        };
        let out = api
            .store
            .guaranteed_update(&k, &opts.pre, opts.dry, |mut o| {
                if !o["metadata"]["deletionTimestamp"].is_string() {
                    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(grace);
                    let at = at.replace_nanosecond(0).unwrap_or(at);
                    o["metadata"]["deletionTimestamp"] = json!(at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default());
                    o["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                }
                if is_ns {
                    o["status"]["phase"] = json!("Terminating");
                }
                if let Some(f) = gc_finalizer {
                    match o["metadata"]["finalizers"].as_array_mut() {
                        Some(a) if a.iter().any(|x| x == f) => {}
                        Some(a) => a.push(json!(f)),
                        None => o["metadata"]["finalizers"] = json!([f]),
                    }
                }
                Ok(o)
            })
            .await
            .map_err(|e| e.into_api_error(info.group, info.resource, name))?;
        if is_ns && !opts.dry {
            tokio::spawn(finalize_namespace(api.clone(), name.to_string()));
        }
        return Ok((out, false));
    }
    let out = api
        .store
        .delete(&k, &opts.pre, opts.dry, |_| Ok::<_, ApiError>(()))
        .await
        .map_err(|e| e.into_api_error(info.group, info.resource, name))?;
    if !opts.dry {
        after_delete(api, info, &out).await;
    }
    Ok((out, true))
}

/// Deletes one object as `DELETE` does, with `DeleteOptions` given as JSON (the eviction
/// subresource's `deleteOptions`).
pub(crate) async fn delete_with_options(
    api: &Arc<Api>,
    info: &'static ResourceInfo,
    ns: &str,
    name: &str,
    o: &Value,
) -> Result<(Value, bool), ApiError> {
    let opts = DeleteOpts {
        grace: o["gracePeriodSeconds"].as_i64(),
        pre: Preconditions {
            uid: o["preconditions"]["uid"].as_str().map(String::from),
            resource_version: o["preconditions"]["resourceVersion"]
                .as_str()
                .map(String::from),
        },
        dry: o["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "All")),
        gc_finalizer: match o["propagationPolicy"].as_str() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        },
    };
    delete_one(api, info, Some(ns), name, &opts).await
}

async fn delete(r: &mut Req<'_>, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let opts = delete_opts(r, body)?;
    let (obj, now) = delete_one(r.api, r.t.info, r.t.namespace.as_deref(), r.name(), &opts).await?;
    Ok(r.ok(
        if now {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        },
        &obj,
    ))
}

async fn delete_collection(r: &mut Req<'_>, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let opts = delete_opts(r, body)?;
    let filter = selector_filter(r.t, &r.q)?;
    let res = r
        .api
        .store
        .list(&list_prefix(r), &ListOptions::default(), Some(&*filter))
        .await
        .map_err(storage_err(r.t, ""))?;
    let mut deleted = Vec::new();
    for o in res.items {
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = o["metadata"]["namespace"].as_str().map(String::from);
        match delete_one(r.api, r.t.info, ns.as_deref(), &name, &opts).await {
            Ok((o, _)) => deleted.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let info = r.t.info;
    let deleted = crate::crd::output_list(info, deleted)?;
    Ok(h::respond(
        StatusCode::OK,
        &json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(), "metadata": {}, "items": deleted}),
        if r.fmt == Format::Yaml {
            Format::Yaml
        } else {
            Format::Json
        },
    ))
}

/// The namespace controller's job, done in-process: delete everything in the namespace, then
/// the namespace itself once empty (bounded; objects held by finalizers keep it Terminating).
pub fn finalize_namespace(
    api: Arc<Api>,
    ns: String,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(finalize_namespace_inner(api, ns))
}

async fn finalize_namespace_inner(api: Arc<Api>, ns: String) {
    let opts = DeleteOpts {
        grace: Some(0),
        pre: Preconditions::default(),
        dry: false,
        gc_finalizer: None,
    };
    for round in 0..120 {
        let mut remaining = 0usize;
        for info in registry::resources()
            .iter()
            .filter(|i| i.namespaced && i.listable())
        {
            let prefix = info.key_prefix(&api.root, Some(&ns));
            let Ok(res) = api.store.list(&prefix, &ListOptions::default(), None).await else {
                remaining += 1;
                continue;
            };
            for o in res.items {
                remaining += 1;
                let name = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if let Err(e) = delete_one(&api, info, Some(&ns), &name, &opts).await {
                    if e.code != 404 {
                        tracing::debug!(namespace = %ns, %name, error = %e, "namespace cleanup");
                    }
                }
            }
        }
        if remaining == 0 {
            break;
        }
        if round == 119 {
            tracing::warn!(namespace = %ns, remaining, "namespace still has content; leaving it Terminating");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let nsinfo = registry::lookup("", "v1", "namespaces").expect("namespaces are registered");
    let k = key(&api, nsinfo, None, &ns);
    // Our own work is the `kubernetes` finalizer's; other spec or metadata finalizers keep the
    // namespace (their owners finish it through /finalize or an update).
    let only_ours = |o: &Value| {
        o["spec"]["finalizers"]
            .as_array()
            .is_none_or(|a| a.iter().all(|f| f == "kubernetes"))
            && o["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|a| a.is_empty())
    };
    if let Err(e) = api
        .store
        .delete(&k, &Preconditions::default(), false, |o| {
            if only_ours(o) {
                Ok(())
            } else {
                Err(ApiError::conflict(
                    "",
                    "namespaces",
                    &ns,
                    "other finalizers remain",
                ))
            }
        })
        .await
    {
        if !e.is_not_found() {
            tracing::warn!(namespace = %ns, error = %e, "deleting the finalized namespace");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Service allocation

#[derive(Default)]
struct Allocated {
    ips: Vec<String>,
    ports: Vec<u16>,
}

impl Allocated {
    fn from_service(obj: &Value) -> Allocated {
        let spec = &obj["spec"];
        let mut ips: Vec<String> = spec["clusterIPs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(ip) = spec["clusterIP"].as_str() {
            if !ips.iter().any(|i| i == ip) {
                ips.push(ip.to_string());
            }
        }
        ips.retain(|i| i != "None" && !i.is_empty());
        let ports = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["nodePort"].as_i64())
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        Allocated { ips, ports }
    }
    async fn release(&self, api: &Arc<Api>) {
        for ip in &self.ips {
            api.alloc.release_ip(&api.store, ip).await;
        }
        for p in &self.ports {
            api.alloc.release_port(&api.store, *p).await;
        }
    }
}

/// Assigns spec.clusterIP(s) and node ports, claiming them in the store.
async fn allocate_service(api: &Arc<Api>, obj: &mut Value) -> Result<Allocated, ApiError> {
    let mut got = Allocated::default();
    let owner = format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    );
    let ty = obj["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    if ty == "ExternalName" {
        return Ok(got);
    }
    let want = obj["spec"]["clusterIP"]
        .as_str()
        .map(String::from)
        .or_else(|| obj["spec"]["clusterIPs"][0].as_str().map(String::from));
    if want.as_deref() != Some("None") {
        let res = api
            .alloc
            .allocate_ip(
                &api.store,
                want.as_deref().filter(|w| !w.is_empty()),
                &owner,
            )
            .await;
        let ip = match res {
            Ok(ip) => ip,
            Err(mut e) => {
                if let Some(d) = e.details.as_mut() {
                    d.name = obj["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                }
                return Err(e);
            }
        };
        obj["spec"]["clusterIP"] = json!(ip);
        obj["spec"]["clusterIPs"] = json!([ip]);
        got.ips.push(ip);
    } else {
        obj["spec"]["clusterIPs"] = json!(["None"]);
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        let n = obj["spec"]["ports"].as_array().map(Vec::len).unwrap_or(0);
        for i in 0..n {
            let want = obj["spec"]["ports"][i]["nodePort"].as_i64();
            match api
                .alloc
                .allocate_port(
                    &api.store,
                    want,
                    &owner,
                    &format!("spec.ports[{i}].nodePort"),
                )
                .await
            {
                Ok(p) => {
                    obj["spec"]["ports"][i]["nodePort"] = json!(p);
                    got.ports.push(p);
                }
                Err(e) => {
                    got.release(api).await;
                    return Err(e);
                }
            }
        }
    }
    Ok(got)
}
