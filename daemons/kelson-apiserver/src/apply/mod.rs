//! Server-side apply and field management (`metadata.managedFields`), as upstream's
//! `fieldmanager` package over structured-merge-diff.
//!
//! Every write records who changed which fields: create, update and non-apply patches add the
//! changed fields to the writer's `Update` entry ([`FieldManager::record_update`]); a PATCH
//! with `application/apply-patch+yaml` merges the applied configuration by the schema (list
//! maps by key, sets by value, atomic lists whole, granular vs atomic maps), prunes what the
//! applier stopped applying, and answers a change to someone else's field with 409
//! `FieldManagerConflict` causes unless `force=true` ([`patch`]). The writer is the
//! `fieldManager` query parameter or, as upstream, the User-Agent up to its first `/`.
//!
//! Upstream layers reproduced here: `stripMeta` (server-owned metadata is never owned),
//! reset fields (`status` of the main resource, `spec` of the status subresource),
//! `managedFieldsUpdater` (time moves only on change), `skipNonApplied`'s `before-first-apply`
//! entry for objects written before field management, and `lastAppliedManager` /
//! `lastAppliedUpdater`: the `kubectl` manager may take over fields whose values match the
//! client-side-apply annotation without a conflict, and keeps that annotation in sync, which
//! together with kubectl's own managedFields JSON patch (csaupgrade) upgrades a
//! client-side-applied object. Not reproduced: the cap of ten `Update` entries
//! (`capManagers`) and conversion between versions (each kind is served in one version).

pub mod fieldset;
pub mod managed;
pub mod typed;

use std::collections::HashMap;

use http::{HeaderMap, Response, StatusCode};
use serde_json::{json, Value};

use crate::handlers::{self, Req};
use crate::http::Body;
use crate::registry::{ResourceExt, ResourceInfo, Subresource};
use fieldset::Set;
use kelson_apimachinery::error::StatusDetails;
use kelson_apimachinery::{ApiError, StatusCause};
use kelson_apistorage::Preconditions;
use managed::{Conflict, DecodeError, Managers, Writer};
use typed::Ty;

/// Upstream's `FieldManagerMaxLength`.
pub const MAX_MANAGER_LEN: usize = 128;

/// kubectl's client-side-apply annotation.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Which options object a write's query parameters are (for 422s about them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Options {
    Create,
    Update,
    Patch,
    Apply,
}

impl Options {
    fn kind(self) -> &'static str {
        match self {
            Options::Create => "CreateOptions",
            Options::Update => "UpdateOptions",
            Options::Patch | Options::Apply => "PatchOptions",
        }
    }
}

/// The writer of one request and the schema its field sets follow.
#[derive(Debug, Clone)]
pub struct FieldManager {
    pub manager: String,
    api_version: String,
    subresource: &'static str,
    ty: Ty,
    ignored: Set,
}

fn options_invalid(opts: Options, causes: Vec<StatusCause>) -> ApiError {
    ApiError::invalid("meta.k8s.io", opts.kind(), "", causes)
}

/// Upstream's `ValidateFieldManager`.
fn validate_manager(name: &str, field: &str) -> Vec<StatusCause> {
    let mut causes = Vec::new();
    if name.len() > MAX_MANAGER_LEN {
        causes.push(StatusCause {
            reason: "FieldValueTooLong".into(),
            message: format!("Too long: may not be more than {MAX_MANAGER_LEN} bytes"),
            field: field.into(),
        });
    }
    for (i, c) in name.chars().enumerate() {
        if c.is_control() {
            causes.push(StatusCause::invalid(
                field,
                format!(
                    "Invalid value: {name:?}: invalid character U+{:04X} (at position {i})",
                    c as u32
                ),
            ));
        }
    }
    causes
}

/// `force` of a PATCH (`None` when absent).
fn force_param(q: &HashMap<String, String>) -> Result<Option<bool>, ApiError> {
    match q.get("force").map(String::as_str) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("" | "false" | "0") => Ok(Some(false)),
        Some(v) => Err(ApiError::bad_request(format!(
            "invalid value for force: {v:?}: must be true or false"
        ))),
    }
}

/// Paths no manager owns: what upstream's `stripMeta` strips and the strategy's reset fields.
fn ignored_paths(info: &ResourceInfo, subresource: &str) -> Set {
    let mut s = Set::new();
    let f = fieldset::field;
    s.insert(&[f("apiVersion")]);
    s.insert(&[f("kind")]);
    for m in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        s.insert(&[f("metadata"), f(m)]);
    }
    if subresource == "status" {
        s.insert(&[f("spec")]);
    } else if info.has(Subresource::Status) {
        s.insert(&[f("status")]);
    }
    s
}

fn without_managed_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    v
}

/// Sets (or, for `None`, removes) `metadata.managedFields`.
pub fn set_managed_fields(obj: &mut Value, mf: Option<Value>) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    match mf {
        Some(v) if !v.is_null() => {
            meta.insert("managedFields".into(), v);
        }
        _ => {
            meta.remove("managedFields");
        }
    }
}

fn conflict_error(conflicts: &[Conflict]) -> ApiError {
    ApiError {
        code: 409,
        reason: "Conflict",
        message: managed::conflict_message(conflicts),
        details: Some(StatusDetails {
            causes: conflicts
                .iter()
                .map(|c| StatusCause {
                    reason: "FieldManagerConflict".into(),
                    message: format!("conflict with {}", c.manager),
                    field: c.path_string(),
                })
                .collect(),
            ..Default::default()
        }),
    }
}

impl FieldManager {
    /// The field manager of a write request, validating `fieldManager` (and `force`) as
    /// upstream's `Validate{Create,Update,Patch}Options`.
    pub fn for_request(
        info: &ResourceInfo,
        q: &HashMap<String, String>,
        headers: &HeaderMap,
        subresource: &'static str,
        opts: Options,
    ) -> Result<FieldManager, ApiError> {
        let explicit = q.get("fieldManager").cloned().unwrap_or_default();
        let mut causes = Vec::new();
        if opts == Options::Apply && explicit.is_empty() {
            causes.push(
                StatusCause::required("fieldManager")
                    .with_message_text("Required value: is required for apply patch"),
            );
        }
        if opts == Options::Patch && force_param(q)?.is_some() {
            causes.push(StatusCause {
                reason: "FieldValueForbidden".into(),
                message: "Forbidden: may not be specified for non-apply patch".into(),
                field: "force".into(),
            });
        }
        causes.extend(validate_manager(&explicit, "fieldManager"));
        if !causes.is_empty() {
            return Err(options_invalid(opts, causes));
        }
        let manager = if explicit.is_empty() {
            let ua = headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let mut m = ua.split('/').next().unwrap_or_default().to_string();
            m.truncate(MAX_MANAGER_LEN);
            m
        } else {
            explicit
        };
        Ok(FieldManager {
            manager,
            api_version: info.api_version(),
            subresource,
            ty: Ty::root(info.definition),
            ignored: ignored_paths(info, subresource),
        })
    }

    fn writer<'a>(&'a self, manager: &'a str, now: &'a str) -> Writer<'a> {
        Writer {
            manager,
            api_version: &self.api_version,
            subresource: self.subresource,
            ty: self.ty,
            ignored: &self.ignored,
            now,
        }
    }

    /// The entries a non-apply write starts from: the request's own when it sends a usable
    /// non-empty list (not for subresources), none when it sends `[]` / `[{}]`, else the live
    /// object's. A decodable list with an invalid entry is a 422 as upstream's ObjectMeta
    /// validation gives.
    fn starting_managers(
        &self,
        info: &ResourceInfo,
        live: Option<&Value>,
        req: &Value,
    ) -> Result<Managers, ApiError> {
        if self.subresource.is_empty() {
            if Managers::is_reset(req) {
                return Ok(Managers::default());
            }
            if req.as_array().is_some_and(|a| !a.is_empty()) {
                match Managers::decode(req) {
                    Ok(m) => return Ok(m),
                    Err(DecodeError::Invalid {
                        index,
                        field,
                        value,
                        message,
                    }) => {
                        let name = live
                            .and_then(|l| l["metadata"]["name"].as_str())
                            .unwrap_or_default();
                        return Err(ApiError::invalid(
                            info.group,
                            info.kind,
                            name,
                            vec![StatusCause::invalid(
                                &format!("metadata.managedFields[{index}].{field}"),
                                format!("Invalid value: {value:?}: {message}"),
                            )],
                        ));
                    }
                    Err(DecodeError::Undecodable(e)) => {
                        tracing::debug!(error = %e, "request managedFields unusable; keeping the live ones");
                    }
                }
            }
        }
        Ok(live
            .map(|l| Managers::decode(&l["metadata"]["managedFields"]).unwrap_or_default())
            .unwrap_or_default())
    }

    /// Records a create: `obj` (after defaulting) against an empty object. `req_mf` is the
    /// request's `metadata.managedFields` (`Null` when absent).
    pub fn record_create(
        &self,
        info: &ResourceInfo,
        obj: &mut Value,
        req_mf: &Value,
    ) -> Result<(), ApiError> {
        self.record(info, None, obj, req_mf)
    }

    /// Records an update/patch of `cur` into `new` (`new` as it will be stored; its
    /// managedFields are replaced). `req_mf` is the managedFields the request's object had.
    pub fn record_update(
        &self,
        info: &ResourceInfo,
        cur: &Value,
        new: &mut Value,
        req_mf: &Value,
    ) -> Result<(), ApiError> {
        self.record(info, Some(cur), new, req_mf)
    }

    fn record(
        &self,
        info: &ResourceInfo,
        cur: Option<&Value>,
        new: &mut Value,
        req_mf: &Value,
    ) -> Result<(), ApiError> {
        let mut managers = self.starting_managers(info, cur, req_mf)?;
        let old = cur.map(without_managed_fields).unwrap_or_else(|| json!({}));
        // `new`'s managedFields are replaced below anyway: drop them in place rather than
        // compare a stripped clone of the whole object (a clone per create and update).
        set_managed_fields(new, None);
        let now = kelson_apimachinery::meta::now_rfc3339();
        managers.update(&old, new, &self.writer(&self.manager, &now));
        set_managed_fields(new, managers.encode());
        Ok(())
    }

    /// Server-side apply of `config` to `cur` (`None`: the object does not exist). Returns
    /// the merged object with its managedFields; 409 on conflicts unless `force`.
    pub fn apply(
        &self,
        cur: Option<&Value>,
        config: &Value,
        force: bool,
    ) -> Result<Value, ApiError> {
        let live = cur.map(without_managed_fields).unwrap_or_else(|| json!({}));
        let now = kelson_apimachinery::meta::now_rfc3339();
        let mut managers = cur
            .map(|c| Managers::decode(&c["metadata"]["managedFields"]).unwrap_or_default())
            .unwrap_or_default();
        if cur.is_some() && managers.0.is_empty() {
            // An object written before field management: its fields so far belong to
            // `before-first-apply`, so an apply cannot silently take them over.
            managers.update(&json!({}), &live, &self.writer("before-first-apply", &now));
        }
        let who = self.writer(&self.manager, &now);
        let mut attempt = managers.clone();
        let mut merged = match attempt.apply(&live, config, &who, force) {
            Ok(m) => {
                managers = attempt;
                m
            }
            Err(conflicts) => {
                let allowed = self.allowed_by_last_applied(&live);
                let remaining: Vec<Conflict> = conflicts
                    .into_iter()
                    .filter(|c| !allowed.as_ref().is_some_and(|a| a.has(&c.path)))
                    .collect();
                if !remaining.is_empty() {
                    return Err(conflict_error(&remaining));
                }
                managers
                    .apply(&live, config, &who, true)
                    .map_err(|c| conflict_error(&c))?
            }
        };
        if self.manager == "kubectl" && last_applied(&live).is_some() {
            // lastAppliedUpdater: keep the client-side-apply annotation what was applied, so
            // a later client-side apply (a downgrade) computes its patch from it.
            let mut cfg = config.clone();
            if let Some(a) = cfg["metadata"]["annotations"].as_object_mut() {
                a.remove(LAST_APPLIED);
                if a.is_empty() {
                    cfg["metadata"]
                        .as_object_mut()
                        .map(|m| m.remove("annotations"));
                }
            }
            merged["metadata"]["annotations"][LAST_APPLIED] = json!(format!("{cfg}\n"));
        }
        set_managed_fields(&mut merged, managers.encode());
        Ok(merged)
    }

    /// `lastAppliedManager`: for `kubectl`, the fields of the client-side-apply annotation
    /// whose values the live object still has may be taken over without a conflict.
    fn allowed_by_last_applied(&self, live: &Value) -> Option<Set> {
        if self.manager != "kubectl" {
            return None;
        }
        let last: Value = serde_json::from_str(last_applied(live)?).ok()?;
        let set = typed::field_set(&last, self.ty);
        let cmp = typed::compare(&last, live, self.ty);
        Some(set.difference(&cmp.modified))
    }
}

fn last_applied(obj: &Value) -> Option<&str> {
    obj["metadata"]["annotations"][LAST_APPLIED]
        .as_str()
        .filter(|s| !s.is_empty())
}

trait CauseText {
    fn with_message_text(self, m: &str) -> Self;
}
impl CauseText for StatusCause {
    fn with_message_text(mut self, m: &str) -> Self {
        self.message = m.into();
        self
    }
}

/// Decodes an apply body: YAML or JSON (JSON is YAML), an object.
fn decode_apply_body(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "error decoding YAML: the apply configuration must be an object",
        ));
    }
    Ok(v)
}

/// `PATCH` with `application/apply-patch+yaml` on a resource or its status subresource.
pub(crate) async fn patch(
    r: &mut Req<'_>,
    body: &[u8],
    status_only: bool,
) -> Result<Response<Body>, ApiError> {
    let info = r.t.info;
    let sub = if status_only { "status" } else { "" };
    let fm = FieldManager::for_request(info, &r.q, r.headers, sub, Options::Apply)?;
    let force = force_param(&r.q)?.unwrap_or(false);
    let dry = handlers::dry_run(&r.q)?;
    let mut config = decode_apply_body(body)?;
    let gv = config["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let kind = config["kind"].as_str().unwrap_or_default().to_string();
    if gv != info.api_version() || kind != info.kind {
        let (g, v) = gv.rsplit_once('/').unwrap_or(("", &gv));
        return Err(ApiError::bad_request(format!(
            "invalid object type: {g}/{v}, Kind={kind}"
        )));
    }
    if !config["metadata"].is_object() {
        if config["metadata"].is_null() {
            config["metadata"] = json!({});
        } else {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
    }
    if !config["metadata"]["managedFields"].is_null() {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    let name = r.t.name.clone().unwrap_or_default();
    match config["metadata"]["name"].as_str() {
        None | Some("") => config["metadata"]["name"] = json!(name),
        Some(n) if n == name => {}
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )))
        }
    }
    if let (Some(u), Some(b)) = (
        r.t.namespace.as_deref(),
        config["metadata"]["namespace"].as_str(),
    ) {
        if !b.is_empty() && u != b {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    handlers::field_validation(r, &config)?;
    let api = r.api;
    let ns = r.t.namespace.clone();
    let key = handlers::key(api, info, ns.as_deref(), &name);
    // Apply creates an absent object; losing that race to another create applies to theirs.
    let mut created_concurrently = false;
    let cur0 = loop {
        match api.store.get(&key, None).await {
            Ok(c) => break c,
            Err(kelson_apistorage::StorageError::NotFound { .. }) if !status_only => {
                let obj = fm.apply(None, &config, force)?;
                let res = handlers::create_object_with(
                    api,
                    info,
                    ns.as_deref(),
                    obj,
                    dry,
                    handlers::CreateManaged::Keep,
                )
                .await;
                match res {
                    Ok(out) => return Ok(r.ok(StatusCode::CREATED, &out)),
                    Err(e) if e.reason == "AlreadyExists" && !created_concurrently => {
                        created_concurrently = true;
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e.to_api_error(info.group, info.resource, &name)),
        }
    };
    let rv = config["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from);
    let build = |cur: &Value| -> Result<Value, ApiError> {
        handlers::check_resource_version(info, &name, rv.as_deref(), cur)?;
        let mut applied = fm.apply(Some(cur), &config, force)?;
        let mf = applied["metadata"]["managedFields"].take();
        applied["kind"] = json!(info.kind);
        applied["apiVersion"] = json!(info.api_version());
        let mut new = handlers::merge_update(info, cur, applied, status_only)?;
        set_managed_fields(&mut new, Some(mf));
        Ok(new)
    };
    let svc = if handlers::is_service(info) && !status_only && !dry {
        let candidate = build(&cur0)?;
        Some(handlers::ServiceAlloc::prepare(api, cur0.clone(), &candidate).await?)
    } else {
        None
    };
    let res = api
        .store
        .guaranteed_update(&key, &Preconditions::default(), dry, |cur| {
            let cur = crate::crd::to_request(info, cur)?;
            let mut new = build(&cur)?;
            if let Some(a) = &svc {
                a.fill(&mut new);
            }
            crate::crd::to_storage(info, new)
        })
        .await
        .map_err(|e| e.into_api_error(info.group, info.resource, &name));
    if let Some(a) = &svc {
        a.finish(api, res.as_ref().ok()).await;
    }
    let out = handlers::finish_if_finalized(api, info, res?, dry).await?;
    Ok(r.ok(StatusCode::OK, &out))
}

#[cfg(test)]
mod tests;
