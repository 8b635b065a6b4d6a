//! certificates.k8s.io/v1 `CertificateSigningRequest`: upstream's registry strategies for the
//! resource and its `status` and `approval` subresources, its validation, and the three
//! admission plugins that guard it (CertificateApproval, CertificateSigning,
//! CertificateSubjectRestriction).
//!
//! Design, following `pkg/registry/certificates/certificates/strategy.go` and
//! `pkg/apis/certificates/validation`:
//! - Create: `spec.username/uid/groups/extra` are overwritten from the requesting user (the
//!   request context, [`crate::reqctx`]), so nobody can ask for a certificate in someone
//!   else's name; status is cleared (no pre-approved requests). `spec.request` must be one PEM
//!   `CERTIFICATE REQUEST` that parses (x509-parser), `signerName` a `domain/path`, usages from
//!   upstream's list without duplicates, `expirationSeconds` at least 600.
//! - Update of the object itself: spec and status are copied from the stored object (upstream's
//!   `PrepareForUpdate`), so only metadata changes; a spec change is silently not applied, as
//!   upstream.
//! - `approval`: only `status.conditions` is taken from the request; `status.certificate` and
//!   spec stay. The caller also needs `approve` on `signers` named after the signer (or
//!   `<domain>/*`) — checked before the write, since a signer name never changes.
//! - `status`: the request's status is taken, except that existing Approved/Denied conditions are
//!   kept as stored and none may be added or removed (that is `approval`'s job). Changing
//!   `status.certificate` needs `sign` on the signer, the certificate must be PEM `CERTIFICATE`
//!   blocks that parse, and once set it cannot change.
//! - On both subresources a condition's `lastUpdateTime` defaults to now and
//!   `lastTransitionTime` to the stored condition's (same type and status) or now. Both take
//!   PUT and every PATCH type, server-side apply included (kube-rs controllers use it), and
//!   record `managedFields` under the subresource like the generic handlers.
//!
//! One deliberate addition over upstream: for the three `kubernetes.io/` signers the built-in
//! signer serves, usages the signer would refuse (`client auth` for kubelet-serving, ...) are
//! rejected at create with 422 instead of leaving a request no signer will ever issue.

use std::sync::Arc;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::Strategy;
use crate::auth::{Attributes, Decision, User};
use crate::handlers::{self, Req};
use crate::http::{self as h, Body};
use crate::patch::{self, PatchType};
use crate::registry::ResourceInfo;
use crate::router::SubTarget;
use crate::server::Api;
use kelson_apimachinery::field;
use kelson_apimachinery::meta::now_rfc3339;
use kelson_apimachinery::validation::{is_dns1123_label, is_dns1123_subdomain};
use kelson_apimachinery::{ApiError, StatusCause};
use kelson_apistorage::Preconditions;

pub const GROUP: &str = "certificates.k8s.io";
pub const KIND: &str = "CertificateSigningRequest";
const RESOURCE: &str = "certificatesigningrequests";

/// The kubelet's client certificates (TLS bootstrap).
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The kubelet's serving certificates.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// Client certificates for the API server.
pub const API_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// certificates.k8s.io/v1beta1's default signer, not accepted by v1.
pub const LEGACY_SIGNER: &str = "kubernetes.io/legacy-unknown";

/// Upstream's `KeyUsage` values, sorted as `field.NotSupported` lists them.
const USAGES: &[&str] = &[
    "any",
    "cert sign",
    "client auth",
    "code signing",
    "content commitment",
    "crl sign",
    "data encipherment",
    "decipher only",
    "digital signature",
    "email protection",
    "encipher only",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "key agreement",
    "key encipherment",
    "microsoft sgc",
    "netscape sgc",
    "ocsp signing",
    "s/mime",
    "server auth",
    "signing",
    "timestamping",
];

const APPROVED: &str = "Approved";
const DENIED: &str = "Denied";
const FAILED: &str = "Failed";

pub fn is_csr(info: &ResourceInfo) -> bool {
    info.group == GROUP && info.kind == KIND
}

/// Whether [`subresource`] serves this request (`status` and `approval` of a CSR).
pub fn handles(info: &ResourceInfo, sub: Option<SubTarget>) -> bool {
    is_csr(info) && sub.is_some_and(|s| matches!(s.name(), "status" | "approval"))
}

// ---------------------------------------------------------------------------------------------
// Strategy of the resource itself

pub struct CsrStrategy;

impl Strategy for CsrStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        let spec = obj["spec"].as_object_mut().expect("just made an object");
        for f in ["username", "uid", "groups", "extra"] {
            spec.remove(f);
        }
        // Outside a request (the server itself) the requester stays empty, as upstream.
        if let Some(user) = crate::reqctx::user() {
            spec.insert("username".into(), json!(user.name));
            if !user.groups.is_empty() {
                spec.insert("groups".into(), json!(user.groups));
            }
        }
        obj["status"] = json!({});
    }

    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        // Upstream: `newCSR.Spec = oldCSR.Spec; newCSR.Status = oldCSR.Status`.
        for f in ["spec", "status"] {
            match old.get(f) {
                Some(v) => new[f] = v.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
    }

    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let mut out = validate_spec(&obj["spec"], true);
        out.extend(validate_conditions(&obj["status"]));
        out.extend(validate_certificate(&obj["status"]));
        out
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        let mut out = validate_spec(&new["spec"], false);
        out.extend(validate_conditions(&new["status"]));
        out.extend(update_rules(new, old, false, false));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

/// `validateCertificateSigningRequest`'s spec part; `create` adds the checks upstream applies
/// to new objects only (the legacy signer, signer-specific usages).
fn validate_spec(spec: &Value, create: bool) -> Vec<StatusCause> {
    let mut out = Vec::new();
    match request_bytes(&spec["request"]) {
        Err(c) => out.push(c),
        Ok(der_pem) => {
            if let Err(msg) = parse_csr(&der_pem) {
                out.push(field::invalid_raw("spec.request", "[]byte{...}", &msg));
            }
        }
    }
    let usages: Vec<&Value> = spec["usages"].as_array().into_iter().flatten().collect();
    if usages.is_empty() {
        out.push(field::required("spec.usages", "usages must be provided"));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, u) in usages.iter().enumerate() {
        let path = format!("spec.usages[{i}]");
        match u.as_str() {
            Some(s) if USAGES.contains(&s) => {
                if !seen.insert(s) {
                    out.push(field::duplicate(&path, u));
                }
            }
            _ => out.push(field::not_supported(&path, u, USAGES)),
        }
    }
    let signer = spec["signerName"].as_str().unwrap_or_default();
    let signer_causes = validate_signer_name("spec.signerName", signer);
    let signer_ok = signer_causes.is_empty();
    out.extend(signer_causes);
    if create && signer == LEGACY_SIGNER {
        out.push(field::invalid_str(
            "spec.signerName",
            signer,
            "the legacy signerName is not allowed via this API version",
        ));
    }
    if create && signer_ok {
        out.extend(signer_usages(signer, &seen));
    }
    match &spec["expirationSeconds"] {
        Value::Null => {}
        v => match v.as_i64() {
            Some(s) if s >= 600 => {}
            Some(_) => out.push(field::invalid(
                "spec.expirationSeconds",
                v,
                "may not specify a duration less than 600 seconds (10 minutes)",
            )),
            None => out.push(field::invalid(
                "spec.expirationSeconds",
                v,
                "must be an integer",
            )),
        },
    }
    out
}

/// `spec.request` as bytes (base64 in JSON, as every `[]byte` field).
fn request_bytes(v: &Value) -> Result<Vec<u8>, StatusCause> {
    use base64::Engine;
    match v.as_str() {
        None | Some("") => Err(field::required("spec.request", "")),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| {
                field::invalid_str("spec.request", s, &format!("illegal base64 data: {e}"))
            }),
    }
}

/// Upstream's `ParseCSR` and `CheckSignature`: the first PEM block must be a
/// `CERTIFICATE REQUEST` holding a PKCS#10 request signed by its own key (proof that the
/// requester holds the private key).
pub fn parse_csr(pem_bytes: &[u8]) -> Result<(), String> {
    use x509_parser::prelude::FromDer;
    let bad_type = || "PEM block type must be CERTIFICATE REQUEST".to_string();
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_bytes).map_err(|_| bad_type())?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(bad_type());
    }
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| format!("x509: malformed certificate request: {e}"))?;
    req.verify_signature()
        .map_err(|e| format!("x509: certificate request signature verification failed: {e}"))
}

/// The organizations (`O=`) of a PEM certificate request's subject (empty when it does not
/// parse: validation reports that).
fn csr_organizations(pem_bytes: &[u8]) -> Vec<String> {
    use x509_parser::prelude::FromDer;
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(pem_bytes) else {
        return Vec::new();
    };
    let Ok((_, req)) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
    else {
        return Vec::new();
    };
    req.certification_request_info
        .subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect()
}

/// Upstream's `ValidateSignerName`: `<domain with at least two labels>/<path of subdomains>`.
pub fn validate_signer_name(path: &str, signer: &str) -> Vec<StatusCause> {
    let mut out = Vec::new();
    if signer.is_empty() {
        out.push(field::required(path, ""));
        return out;
    }
    let segments: Vec<&str> = signer.split('/').collect();
    let [domain, rest] = segments.as_slice() else {
        out.push(field::invalid_str(
            path,
            signer,
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
        return out;
    };
    if domain.len() > 253 {
        out.push(field::too_long(path, 253));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    for l in &labels {
        let errs = is_dns1123_label(l);
        if !errs.is_empty() {
            for e in errs {
                out.push(field::invalid_str(
                    path,
                    domain,
                    &format!("validating label {l:?}: {e}"),
                ));
            }
            break;
        }
    }
    if labels.len() < 2 {
        out.push(field::invalid_str(
            path,
            domain,
            "should be a domain with at least two segments separated by dots",
        ));
    }
    for c in rest.split('.') {
        let errs = is_dns1123_subdomain(c);
        if !errs.is_empty() {
            for e in errs {
                out.push(field::invalid_str(
                    path,
                    rest,
                    &format!("validating component {c:?}: {e}"),
                ));
            }
            break;
        }
    }
    let max_path = 253usize.saturating_sub(domain.len() + 1);
    if rest.len() > max_path {
        out.push(field::too_long(path, max_path as i64));
    }
    out
}

/// The usages the built-in signers issue: (required, allowed).
fn signer_usage_policy(signer: &str) -> Option<(&'static str, &'static [&'static str])> {
    const CLIENT: &[&str] = &["client auth", "digital signature", "key encipherment"];
    const SERVING: &[&str] = &["digital signature", "key encipherment", "server auth"];
    match signer {
        KUBELET_CLIENT_SIGNER | API_CLIENT_SIGNER => Some(("client auth", CLIENT)),
        KUBELET_SERVING_SIGNER => Some(("server auth", SERVING)),
        _ => None,
    }
}

fn signer_usages(signer: &str, usages: &std::collections::HashSet<&str>) -> Vec<StatusCause> {
    let Some((required, allowed)) = signer_usage_policy(signer) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut bad: Vec<&str> = usages
        .iter()
        .copied()
        .filter(|u| !allowed.contains(u))
        .collect();
    bad.sort_unstable();
    for u in bad {
        out.push(field::not_supported("spec.usages", &json!(u), allowed));
    }
    if !usages.is_empty() && !usages.contains(required) {
        out.push(field::invalid_raw(
            "spec.usages",
            &format!("{:?}", sorted(usages)),
            &format!("signer {signer:?} requires the usage {required:?}"),
        ));
    }
    out
}

fn sorted<'a>(s: &std::collections::HashSet<&'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = s.iter().copied().collect();
    v.sort_unstable();
    v
}

fn conditions(status: &Value) -> Vec<Value> {
    status["conditions"].as_array().cloned().unwrap_or_default()
}

fn count(status: &Value, ty: &str) -> usize {
    conditions(status)
        .iter()
        .filter(|c| c["type"] == ty)
        .count()
}

/// Upstream's `validateConditions` (v1 options: no empty types, no duplicates, Approved and
/// Denied exclusive and only `True`).
fn validate_conditions(status: &Value) -> Vec<StatusCause> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let (mut approved, mut denied) = (false, false);
    for (i, c) in conditions(status).iter().enumerate() {
        let path = format!("status.conditions[{i}]");
        let ty = c["type"].as_str().unwrap_or_default();
        if ty.is_empty() {
            out.push(field::required(&format!("{path}.type"), ""));
        }
        let allowed: &[&str] = if ty == APPROVED || ty == DENIED {
            &["True"]
        } else {
            &["False", "True", "Unknown"]
        };
        match c["status"].as_str().unwrap_or_default() {
            "" => out.push(field::required(&format!("{path}.status"), "")),
            s if !allowed.contains(&s) => out.push(field::not_supported(
                &format!("{path}.status"),
                &c["status"],
                allowed,
            )),
            _ => {}
        }
        let exclusive = || {
            field::invalid_str(
                &format!("{path}.type"),
                ty,
                "Approved and Denied conditions are mutually exclusive",
            )
        };
        if ty == APPROVED {
            approved = true;
            if denied {
                out.push(exclusive());
            }
        } else if ty == DENIED {
            denied = true;
            if approved {
                out.push(exclusive());
            }
        }
        if !seen.insert(ty.to_string()) {
            out.push(field::duplicate(&format!("{path}.type"), &c["type"]));
        }
    }
    out
}

/// Upstream's `validateCertificate`: empty, or PEM `CERTIFICATE` blocks without headers that
/// parse as X.509.
fn validate_certificate(status: &Value) -> Vec<StatusCause> {
    use base64::Engine;
    let Some(b64) = status["certificate"].as_str().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let bad = |msg: String| {
        vec![field::invalid_raw(
            "status.certificate",
            "\"<certificate data>\"",
            &msg,
        )]
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return bad("illegal base64 data".into());
    };
    let mut blocks = 0;
    for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let pem = match pem {
            Ok(p) => p,
            Err(e) => return bad(format!("invalid PEM data: {e}")),
        };
        if pem.label != "CERTIFICATE" {
            return bad(format!(
                "only CERTIFICATE PEM blocks are allowed, found {:?}",
                pem.label
            ));
        }
        if let Err(e) = pem.parse_x509() {
            return bad(format!("x509: malformed certificate: {e}"));
        }
        blocks += 1;
    }
    if blocks == 0 {
        return bad("must contain at least one CERTIFICATE PEM block".into());
    }
    Vec::new()
}

/// Upstream's `validateCertificateSigningRequestUpdate`: Approved/Denied/Failed conditions are
/// never removed; Approved/Denied only added through `approval`; the certificate only set
/// through `status`, and never changed once set.
fn update_rules(new: &Value, old: &Value, approval: bool, status: bool) -> Vec<StatusCause> {
    let mut out = Vec::new();
    for ty in [APPROVED, DENIED, FAILED] {
        let (o, n) = (count(&old["status"], ty), count(&new["status"], ty));
        if n < o {
            out.push(field::forbidden(
                "status.conditions",
                &format!("updates may not remove a condition of type {ty:?}"),
            ));
        }
        if n > o && !approval && ty != FAILED {
            out.push(field::forbidden(
                "status.conditions",
                &format!("updates may not add a condition of type {ty:?}"),
            ));
        }
    }
    let (oc, nc) = (&old["status"]["certificate"], &new["status"]["certificate"]);
    fn set(v: &Value) -> Option<&str> {
        v.as_str().filter(|s| !s.is_empty())
    }
    if set(oc) != set(nc) {
        if !status {
            out.push(field::forbidden(
                "status.certificate",
                "updates may not set certificate content",
            ));
        } else if set(oc).is_some() {
            out.push(field::invalid_raw(
                "status.certificate",
                "\"[omitted]\"",
                "updates may not modify existing certificate content",
            ));
        }
    }
    out
}

/// Upstream's `populateConditionTimestamps`.
fn populate_timestamps(new: &mut Value, old: &Value) {
    let now = now_rfc3339();
    let olds = conditions(&old["status"]);
    let Some(cs) = new["status"]["conditions"].as_array_mut() else {
        return;
    };
    for c in cs.iter_mut().filter(|c| c.is_object()) {
        if c["lastUpdateTime"].as_str().is_none_or(str::is_empty) {
            c["lastUpdateTime"] = json!(now);
        }
        if c["lastTransitionTime"].as_str().is_none_or(str::is_empty) {
            let prev = olds
                .iter()
                .find(|o| {
                    o["type"] == c["type"]
                        && o["status"] == c["status"]
                        && o["lastTransitionTime"]
                            .as_str()
                            .is_some_and(|s| !s.is_empty())
                })
                .map(|o| o["lastTransitionTime"].clone());
            c["lastTransitionTime"] = prev.unwrap_or_else(|| json!(now));
        }
    }
}

/// Upstream's `preserveConditionInstances`: when the request has as many conditions of `ty`
/// as stored, the stored ones replace them (the status writer cannot edit approvals).
fn preserve_conditions(new: &mut Value, old: &Value, ty: &str) {
    let olds: Vec<Value> = conditions(&old["status"])
        .into_iter()
        .filter(|c| c["type"] == ty)
        .collect();
    let Some(cs) = new["status"]["conditions"].as_array_mut() else {
        return;
    };
    let idx: Vec<usize> = (0..cs.len()).filter(|i| cs[*i]["type"] == ty).collect();
    if idx.len() != olds.len() {
        return;
    }
    for (i, o) in idx.into_iter().zip(olds) {
        cs[i] = o;
    }
}

/// The object a subresource write stores: `cur` with the parts the subresource owns taken
/// from `incoming`, defaulted and validated.
fn merge_subresource(cur: &Value, incoming: &Value, approval: bool) -> Result<Value, ApiError> {
    let name = cur["metadata"]["name"].as_str().unwrap_or_default();
    if !incoming["status"].is_object() && !incoming["status"].is_null() {
        return Err(ApiError::bad_request("status must be an object"));
    }
    let mut new = cur.clone();
    if !new["status"].is_object() {
        new["status"] = json!({});
    }
    if approval {
        // Only the conditions change (upstream's csrApprovalStrategy).
        match incoming["status"].get("conditions") {
            Some(c) if !c.is_null() => new["status"]["conditions"] = c.clone(),
            _ => {
                if let Some(m) = new["status"].as_object_mut() {
                    m.remove("conditions");
                }
            }
        }
    } else {
        new["status"] = match &incoming["status"] {
            Value::Null => json!({}),
            s => s.clone(),
        };
        preserve_conditions(&mut new, cur, APPROVED);
        preserve_conditions(&mut new, cur, DENIED);
    }
    if !new["status"]["conditions"].is_array() && !new["status"]["conditions"].is_null() {
        return Err(ApiError::bad_request("status.conditions must be a list"));
    }
    populate_timestamps(&mut new, cur);
    let mut causes = validate_conditions(&new["status"]);
    causes.extend(validate_certificate(&new["status"]));
    causes.extend(update_rules(&new, cur, approval, !approval));
    if !causes.is_empty() {
        return Err(ApiError::invalid(GROUP, KIND, name, causes));
    }
    Ok(new)
}

// ---------------------------------------------------------------------------------------------
// Admission

/// Upstream's `IsAuthorizedForSignerName`: `verb` on `signers` named after the signer, or
/// after its domain wildcard (`example.com/*`).
pub fn authorized_for_signer(api: &Api, user: &User, verb: &str, signer: &str) -> bool {
    let mut names = vec![signer.to_string()];
    if let Some((domain, _)) = signer.split_once('/') {
        names.push(format!("{domain}/*"));
    }
    names.into_iter().any(|name| {
        let attrs = Attributes {
            verb: verb.into(),
            group: GROUP.into(),
            resource: "signers".into(),
            name,
            resource_request: true,
            ..Default::default()
        };
        matches!(api.authz.authorize(user, &attrs), Decision::Allow)
    })
}

fn forbidden(name: &str, msg: String) -> ApiError {
    ApiError::forbidden_for(GROUP, RESOURCE, name, &msg)
}

/// CertificateSubjectRestriction: no `system:masters` client certificates through the
/// kube-apiserver-client signer (that group bypasses authorization). Runs on create.
pub fn admit_create(info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    if !is_csr(info) || obj["spec"]["signerName"] != API_CLIENT_SIGNER {
        return Ok(());
    }
    let Ok(pem) = request_bytes(&obj["spec"]["request"]) else {
        return Ok(());
    };
    if csr_organizations(&pem)
        .iter()
        .any(|o| o == crate::auth::MASTERS)
    {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        return Err(forbidden(
            name,
            format!("use of {API_CLIENT_SIGNER} signer with system:masters group is not allowed"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Subresource handlers

/// GET/PUT/PATCH (JSON, merge, strategic or server-side apply) of
/// `certificatesigningrequests/<name>/status|approval`. Writes record `managedFields` under
/// the subresource, like the generic handlers.
pub async fn subresource(
    r: &mut Req<'_>,
    verb: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    use crate::apply::{set_managed_fields, FieldManager, Options};
    let approval = r.t.sub.is_some_and(|s| s.name() == "approval");
    let sub: &'static str = if approval { "approval" } else { "status" };
    let name = r.t.name.clone().unwrap_or_default();
    let info = r.t.info;
    let key = handlers::key(r.api, info, None, &name);
    let not_found = |e: kelson_apistorage::StorageError| e.to_api_error(GROUP, RESOURCE, &name);
    let cur0 = r.api.store.get(&key, None).await.map_err(not_found)?;
    let (incoming, fm) = match verb {
        "get" => return Ok(r.ok(StatusCode::OK, &cur0)),
        "update" => {
            let obj = handlers::decode_typed(r, body, KIND, &info.api_version())?;
            check_body_name(&obj, &name, false)?;
            let fm = FieldManager::for_request(info, &r.q, r.headers, sub, Options::Update)?;
            (Incoming::Object(obj), fm)
        }
        "patch" => {
            let ct = r
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let pt = PatchType::from_content_type(&h::media_type(ct))?;
            if pt == PatchType::Apply {
                let fm = FieldManager::for_request(info, &r.q, r.headers, sub, Options::Apply)?;
                let mut config = decode_apply_config(body, &info.api_version())?;
                check_body_name(&config, &name, true)?;
                config["metadata"]["name"] = json!(name);
                handlers::field_validation(r, &config)?;
                let force = matches!(r.q.get("force").map(String::as_str), Some("true" | "1"));
                (Incoming::Apply { config, force }, fm)
            } else {
                let first = patch::apply_to(pt, &cur0, body, info.definition)?;
                handlers::field_validation(r, &first)?;
                let fm = FieldManager::for_request(info, &r.q, r.headers, sub, Options::Patch)?;
                (Incoming::Patch(pt), fm)
            }
        }
        v => {
            return Err(ApiError::method_not_supported(
                v,
                &format!("{RESOURCE}/{sub}"),
            ))
        }
    };
    // Approving needs `approve` on the signer, always (CertificateApproval); the signer name
    // is immutable, so the stored one decides.
    let signer = cur0["spec"]["signerName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if approval && !authorized_for_signer(r.api, r.user, "approve", &signer) {
        return Err(forbidden(
            &name,
            format!("user not permitted to approve requests with signerName {signer:?}"),
        ));
    }
    let dry = handlers::dry_run(&r.q)?;
    let api: &Arc<Api> = r.api;
    let user = r.user.clone();
    let definition = info.definition;
    let out = api
        .store
        .guaranteed_update(&key, &Preconditions::default(), dry, |cur| {
            // The object as the client wants it, and the managedFields it brought (or, for
            // apply, computed).
            let (obj, managed) = match &incoming {
                Incoming::Object(o) => (o.clone(), None),
                Incoming::Patch(pt) => (patch::apply_to(*pt, &cur, body, definition)?, None),
                Incoming::Apply { config, force } => {
                    let mut applied = fm.apply(Some(&cur), config, *force)?;
                    let mf = applied["metadata"]["managedFields"].take();
                    (applied, Some(mf))
                }
            };
            handlers::check_resource_version(
                info,
                &name,
                obj["metadata"]["resourceVersion"]
                    .as_str()
                    .filter(|s| !s.is_empty()),
                &cur,
            )?;
            let mut new = merge_subresource(&cur, &obj, approval)?;
            // CertificateSigning: only a change of the certificate needs `sign`.
            if !approval
                && new["status"]["certificate"] != cur["status"]["certificate"]
                && !authorized_for_signer(api, &user, "sign", &signer)
            {
                return Err(forbidden(
                    &name,
                    format!("user not permitted to sign requests with signerName {signer:?}"),
                ));
            }
            match managed {
                Some(mf) => set_managed_fields(&mut new, Some(mf)),
                None => {
                    fm.record_update(info, &cur, &mut new, &obj["metadata"]["managedFields"])?
                }
            }
            Ok(new)
        })
        .await
        .map_err(|e| e.into_api_error(GROUP, RESOURCE, &name))?;
    Ok(r.ok(StatusCode::OK, &out))
}

/// A body's `metadata.name` must be the URL's (an apply configuration may leave it out).
fn check_body_name(obj: &Value, name: &str, may_omit: bool) -> Result<(), ApiError> {
    match obj["metadata"]["name"].as_str().unwrap_or_default() {
        "" if may_omit => Ok(()),
        n if n == name => Ok(()),
        n => Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        ))),
    }
}

/// An apply configuration (YAML or JSON) of a CSR.
fn decode_apply_config(body: &[u8], api_version: &str) -> Result<Value, ApiError> {
    let mut v: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "error decoding YAML: the apply configuration must be an object",
        ));
    }
    let (gv, kind) = (
        v["apiVersion"].as_str().unwrap_or_default(),
        v["kind"].as_str().unwrap_or_default(),
    );
    if gv != api_version || kind != KIND {
        let (g, ver) = gv.rsplit_once('/').unwrap_or(("", gv));
        return Err(ApiError::bad_request(format!(
            "invalid object type: {g}/{ver}, Kind={kind}"
        )));
    }
    if v["metadata"].is_null() {
        v["metadata"] = json!({});
    }
    if !v["metadata"].is_object() || !v["metadata"]["managedFields"].is_null() {
        return Err(ApiError::bad_request(
            "metadata must be an object without managedFields",
        ));
    }
    Ok(v)
}

enum Incoming {
    Object(Value),
    Patch(PatchType),
    Apply { config: Value, force: bool },
}

// ---------------------------------------------------------------------------------------------
// Printing

/// Upstream's `extractCSRStatus`: Denied over Approved over Pending, then Failed and Issued.
pub fn condition_summary(obj: &Value) -> String {
    let has = |ty: &str| count(&obj["status"], ty) > 0;
    let mut s = if has(DENIED) {
        "Denied".to_string()
    } else if has(APPROVED) {
        "Approved".to_string()
    } else {
        "Pending".to_string()
    };
    if has(FAILED) {
        s.push_str(",Failed");
    }
    if obj["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty())
    {
        s.push_str(",Issued");
    }
    s
}

/// Table cells after NAME and AGE: SIGNERNAME, REQUESTOR, REQUESTEDDURATION, CONDITION.
pub fn table_cells(obj: &Value) -> Vec<Value> {
    let none = |s: &str| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s.to_string()
        }
    };
    let duration = obj["spec"]["expirationSeconds"]
        .as_i64()
        .map(|s| kelson_apimachinery::table::human_duration(time::Duration::seconds(s)))
        .unwrap_or_else(|| "<none>".into());
    vec![
        json!(none(obj["spec"]["signerName"].as_str().unwrap_or_default())),
        json!(obj["spec"]["username"].as_str().unwrap_or_default()),
        json!(duration),
        json!(condition_summary(obj)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_names() {
        assert!(validate_signer_name("f", "example.com/my-signer").is_empty());
        assert!(validate_signer_name("f", KUBELET_CLIENT_SIGNER).is_empty());
        assert_eq!(
            validate_signer_name("f", "")[0].reason,
            "FieldValueRequired"
        );
        for bad in [
            "nodomain",
            "a/b/c",
            "example/x",
            "Example.com/x",
            "example.com/",
        ] {
            assert!(!validate_signer_name("f", bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn conditions_rules() {
        let st = json!({"conditions": [{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]});
        assert!(validate_conditions(&st)
            .iter()
            .any(|c| c.message.contains("mutually exclusive")));
        let st = json!({"conditions": [{"type": "Approved", "status": "False"}]});
        assert_eq!(validate_conditions(&st)[0].reason, "FieldValueNotSupported");
        let old = json!({"status": {"conditions": [{"type": "Approved", "status": "True"}]}});
        let new = json!({"status": {"conditions": []}});
        assert!(update_rules(&new, &old, true, false)[0]
            .message
            .contains("may not remove"));
        assert!(update_rules(&old, &new, false, true)[0]
            .message
            .contains("may not add"));
    }

    #[test]
    fn timestamps_and_summary() {
        let old = json!({"status": {"conditions": [{"type": "Approved", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}});
        let mut new = json!({"status": {"conditions": [{"type": "Approved", "status": "True"}, {"type": "Failed", "status": "True"}]}});
        populate_timestamps(&mut new, &old);
        assert_eq!(
            new["status"]["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert!(new["status"]["conditions"][1]["lastUpdateTime"].is_string());
        assert_eq!(condition_summary(&new), "Approved,Failed");
        assert_eq!(condition_summary(&json!({})), "Pending");
    }

    #[test]
    fn malformed_subresource_bodies_are_errors_not_panics() {
        let cur = json!({"metadata": {"name": "c"}, "spec": {}, "status": {}});
        for incoming in [
            json!({"status": "x"}),
            json!({"status": {"conditions": "x"}}),
            json!({"status": {"conditions": [1, "a", null]}}),
        ] {
            for approval in [true, false] {
                assert!(
                    merge_subresource(&cur, &incoming, approval).is_err(),
                    "{incoming} approval={approval}"
                );
            }
        }
    }

    #[test]
    fn kubelet_signer_usages() {
        let set = |v: &[&'static str]| v.iter().copied().collect();
        assert!(signer_usages(
            KUBELET_CLIENT_SIGNER,
            &set(&["digital signature", "key encipherment", "client auth"])
        )
        .is_empty());
        assert!(!signer_usages(KUBELET_CLIENT_SIGNER, &set(&["server auth"])).is_empty());
        assert!(!signer_usages(KUBELET_SERVING_SIGNER, &set(&["client auth"])).is_empty());
        assert!(signer_usages("example.com/x", &set(&["code signing"])).is_empty());
    }
}
