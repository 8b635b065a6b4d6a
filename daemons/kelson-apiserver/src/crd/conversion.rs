//! Conversion of custom resources between the versions of their CRD (`spec.conversion`).
//!
//! Objects are stored in the CRD's storage version and every request sees its own version, as
//! upstream's apiextensions-apiserver does:
//! - writes: the handlers work on the request's version (decoding, field validation, pruning,
//!   defaulting, schema validation, patches and managed fields all use that version's schema);
//!   inside the storage update loop the stored object is converted to the request's version
//!   first and the result back to the storage version ([`converting`]); a create converts
//!   once before storing ([`to_storage`]);
//! - reads: every object a response carries (get, list, watch events, the results of writes)
//!   is converted to the request's version ([`output`], [`output_list`], [`watch_event`]).
//!   Objects written under an older storage version keep theirs until rewritten, so conversion
//!   always goes from the object's own `apiVersion`.
//!
//! Strategies: `None` only rewrites `apiVersion` (upstream's nopConverter). `Webhook` POSTs an
//! apiextensions.k8s.io `ConversionReview` (the first of `conversionReviewVersions` this server
//! speaks, v1 or v1beta1) with every object not yet in the desired version, to
//! `clientConfig.url` or to `clientConfig.service`, over TLS verified with `caBundle` (the
//! system roots without one). The answer is checked like upstream's webhookConverter (uid,
//! `result.status`, object count, apiVersion and kind of each object, name and namespace
//! unchanged) and only the converted objects' labels and annotations are taken from their
//! metadata. A failure gives upstream's message (`conversion webhook for
//! stable.example.com/v1, Kind=CronTab failed: ...`) as a 500 InternalError, which the
//! client sees as the answer to its request (or an ERROR event of its watch).
//!
//! Services are resolved here rather than dialled through the service network (a Kelson API
//! server host need not run kelson-proxy): the Service's port is mapped to its target port on
//! a ready address of the Service's Endpoints, falling back to the ClusterIP; the certificate
//! must name `<service>.<namespace>.svc`, the name upstream dials. The call is bounded by
//! [`TIMEOUT`] (upstream: 30 s at most).
//!
//! The same hooks convert events.k8s.io/v1 Events to and from their core/v1 storage form
//! (`crate::events`), a built-in conversion with no webhook.
//!
//! Why synchronous entry points: the handlers convert inside the storage retry loop and in
//! response encoders, which are synchronous closures. A webhook call blocks the worker thread
//! with `tokio::task::block_in_place` (the server runs tokio's multi-threaded runtime, whose
//! other tasks move to other workers meanwhile); `None` conversions never block.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use kelson_apimachinery::ApiError;
use kelson_apiresources::ResourceInfo;
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};

use super::{served_for, Served};
use crate::server::Api;

/// How long one webhook call (connect, TLS, request, answer) may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The ConversionReview versions this server speaks, as upstream's.
pub const REVIEW_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// A CRD's `spec.conversion`.
#[derive(Debug, Clone, PartialEq)]
pub enum Conversion {
    None,
    Webhook(Webhook),
}

/// `spec.conversion.webhook`.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub client: Client,
    /// PEM certificates the webhook's serving certificate must chain to (empty: system roots).
    pub ca_bundle: Vec<u8>,
    pub review_versions: Vec<String>,
}

/// `clientConfig`: exactly one of url and service (validation guarantees it).
#[derive(Debug, Clone, PartialEq)]
pub enum Client {
    Url(String),
    Service {
        namespace: String,
        name: String,
        path: String,
        port: u16,
    },
}

impl Conversion {
    /// The conversion of a (validated) CRD.
    pub fn of(crd: &Value) -> Conversion {
        use base64::Engine;
        let c = &crd["spec"]["conversion"];
        if c["strategy"] != "Webhook" {
            return Conversion::None;
        }
        let w = &c["webhook"];
        let cc = &w["clientConfig"];
        let client = match cc["url"].as_str() {
            Some(u) => Client::Url(u.to_string()),
            None => {
                let s = &cc["service"];
                Client::Service {
                    namespace: s["namespace"].as_str().unwrap_or_default().into(),
                    name: s["name"].as_str().unwrap_or_default().into(),
                    path: s["path"].as_str().unwrap_or("/").into(),
                    port: s["port"]
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or(443),
                }
            }
        };
        Conversion::Webhook(Webhook {
            client,
            ca_bundle: cc["caBundle"]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .unwrap_or_default(),
            review_versions: super::strs(&w["conversionReviewVersions"]),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The API handle (webhook services are resolved through the store)

static API: RwLock<Option<Weak<Api>>> = RwLock::new(None);

/// Registers the server whose store resolves webhook services (done by `crd::start`).
pub fn register(api: &Arc<Api>) {
    *API.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(api));
}

fn api() -> Option<Arc<Api>> {
    API.read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(Weak::upgrade)
}

// ---------------------------------------------------------------------------------------------
// Hooks for the handlers

/// The served custom resource behind `info` when its objects may need converting: its CRD has
/// more than one version (with one, everything is stored and served in it).
fn convertible(info: &ResourceInfo) -> Option<Arc<Served>> {
    served_for(info).filter(|s| s.versions > 1)
}

/// Whether objects of `info` may need converting on their way out (so responses cannot be
/// spliced from cached bytes).
pub fn converts(info: &ResourceInfo) -> bool {
    crate::events::converts(info) || convertible(info).is_some()
}

fn storage_api_version(s: &Served) -> String {
    format!("{}/{}", s.info.group, s.storage_version)
}

/// An object as the request's version (of `info`) shows it.
pub fn to_request(info: &ResourceInfo, obj: Value) -> Result<Value, ApiError> {
    if crate::events::converts(info) {
        return Ok(crate::events::to_request(info, obj));
    }
    match convertible(info) {
        Some(s) => one(&s, obj, &info.api_version()),
        None => Ok(obj),
    }
}

/// An object in the storage version of `info`'s CRD.
pub fn to_storage(info: &ResourceInfo, obj: Value) -> Result<Value, ApiError> {
    if crate::events::converts(info) {
        return Ok(crate::events::to_storage(info, obj));
    }
    match convertible(info) {
        Some(s) => one(&s, obj, &storage_api_version(&s)),
        None => Ok(obj),
    }
}

/// A response's object in the request's version (borrowed when nothing changes).
pub fn output<'a>(info: &ResourceInfo, obj: &'a Value) -> Result<Cow<'a, Value>, ApiError> {
    if crate::events::converts(info) {
        return Ok(crate::events::output(info, obj));
    }
    let Some(s) = convertible(info) else {
        return Ok(Cow::Borrowed(obj));
    };
    let desired = info.api_version();
    if !needs(&s, obj, &desired) {
        return Ok(Cow::Borrowed(obj));
    }
    one(&s, obj.clone(), &desired).map(Cow::Owned)
}

/// A list's items in the request's version (one webhook call for all that need it).
pub fn output_list(info: &ResourceInfo, items: Vec<Value>) -> Result<Vec<Value>, ApiError> {
    if crate::events::converts(info) {
        return Ok(items
            .into_iter()
            .map(|o| crate::events::to_request(info, o))
            .collect());
    }
    match convertible(info) {
        Some(s) => convert(&s, items, &info.api_version(), true),
        None => Ok(items),
    }
}

/// A watch event's object in the request's version; a failed conversion turns the event into
/// an `ERROR` carrying the Status (client-go and kube-rs end the watch on it and relist, which
/// fails visibly while the webhook does).
pub fn watch_event<'a>(info: &ResourceInfo, ty: &'a str, obj: Value) -> (&'a str, Value) {
    if !matches!(ty, "ADDED" | "MODIFIED" | "DELETED") {
        return (ty, obj);
    }
    match output(info, &obj) {
        Ok(Cow::Borrowed(_)) => (ty, obj),
        Ok(Cow::Owned(o)) => (ty, o),
        Err(e) => ("ERROR", e.to_status()),
    }
}

/// Wraps a storage update callback so that it sees the stored object in the request's
/// version and its result is stored in the storage version.
pub fn converting<F>(
    info: &'static ResourceInfo,
    mut f: F,
) -> impl FnMut(Value) -> Result<Value, ApiError> + Send
where
    F: FnMut(Value) -> Result<Value, ApiError> + Send,
{
    move |cur| {
        let cur = to_request(info, cur)?;
        to_storage(info, f(cur)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion

/// Whether `obj` (an object of `s`'s kind) is in another version than `desired`.
fn needs(s: &Served, obj: &Value, desired: &str) -> bool {
    obj["kind"] == s.info.kind && obj["apiVersion"].as_str().is_some_and(|v| v != desired)
}

fn one(s: &Served, obj: Value, desired: &str) -> Result<Value, ApiError> {
    let mut out = convert(s, vec![obj], desired, false)?;
    out.pop()
        .ok_or_else(|| ApiError::internal("conversion lost the object"))
}

/// Converts the objects of `objs` that are not in `desired` (others pass through untouched).
fn convert(
    s: &Served,
    mut objs: Vec<Value>,
    desired: &str,
    list: bool,
) -> Result<Vec<Value>, ApiError> {
    let todo: Vec<usize> = (0..objs.len())
        .filter(|i| needs(s, &objs[*i], desired))
        .collect();
    if todo.is_empty() {
        return Ok(objs);
    }
    match &*s.conversion {
        Conversion::None => {
            for i in todo {
                objs[i]["apiVersion"] = json!(desired);
            }
            Ok(objs)
        }
        Conversion::Webhook(w) => {
            // Upstream names the input's GVK: the list's version, or the object's own.
            let from = if list {
                s.info.api_version()
            } else {
                objs[todo[0]]["apiVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            };
            let gvk = format!("{from}, Kind={}", s.info.kind);
            let originals: Vec<Value> = todo.iter().map(|i| objs[*i].clone()).collect();
            let answer = block(call(w.clone(), s.crd.clone(), originals.clone(), desired));
            let converted = check(answer, &originals, desired, &gvk).map_err(|m| {
                tracing::warn!(crd = %s.crd, error = %m, "conversion webhook failed");
                ApiError::internal(m)
            })?;
            for (i, c) in todo.into_iter().zip(converted) {
                objs[i] = c;
            }
            Ok(objs)
        }
    }
}

/// What a webhook call returned: the converted objects, or why calling or decoding failed
/// (which [`check`] renders as `conversion webhook for <gvk> failed: <why>`).
type Answer = Result<Vec<Value>, String>;

/// Validates the webhook's objects against what was sent, restoring the metadata the
/// webhook may not change (everything but labels and annotations).
fn check(
    answer: Answer,
    originals: &[Value],
    desired: &str,
    gvk: &str,
) -> Result<Vec<Value>, String> {
    let converted = answer.map_err(|m| format!("conversion webhook for {gvk} failed: {m}"))?;
    if converted.len() != originals.len() {
        return Err(format!(
            "conversion webhook for {gvk} returned {} objects, expected {}",
            converted.len(),
            originals.len()
        ));
    }
    let mut out = Vec::with_capacity(converted.len());
    for (i, (mut c, orig)) in converted.into_iter().zip(originals).enumerate() {
        let bad = |m: String| {
            format!(
                "conversion webhook for {gvk} returned invalid converted object at index {i}: {m}"
            )
        };
        if c["apiVersion"] != desired {
            return Err(bad(format!(
                "invalid groupVersion (expected {desired}, received {})",
                c["apiVersion"].as_str().unwrap_or_default()
            )));
        }
        if c["kind"] != orig["kind"] {
            return Err(bad(format!(
                "invalid kind (expected {}, received {})",
                orig["kind"].as_str().unwrap_or_default(),
                c["kind"].as_str().unwrap_or_default()
            )));
        }
        for f in ["name", "namespace"] {
            let (o, n) = (&orig["metadata"][f], &c["metadata"][f]);
            if o != n && !(n.is_null() && o.as_str() == Some("")) {
                return Err(bad(format!("must have the same {f}: {o} != {n}")));
            }
        }
        let mut meta = orig["metadata"].clone();
        for f in ["labels", "annotations"] {
            match c["metadata"].get(f).filter(|v| !v.is_null()) {
                Some(v) if v.is_object() => meta[f] = v.clone(),
                Some(_) => return Err(bad(format!("metadata.{f} must be a map"))),
                None => {
                    if let Some(m) = meta.as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        c["metadata"] = meta;
        out.push(c);
    }
    Ok(out)
}

/// Runs `f` to completion from synchronous code (see the module doc).
fn block<T: Send>(f: impl std::future::Future<Output = T> + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(f))
        }
        // No multi-threaded runtime to lend a worker: a private one on a scoped thread.
        _ => std::thread::scope(|sc| {
            sc.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds")
                    .block_on(f)
            })
            .join()
            .expect("the conversion thread does not panic")
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// The webhook call

/// Where to send the review: the address to dial, the TLS server name, `Host`, and the path.
struct Endpoint {
    addr: (String, u16),
    server_name: String,
    authority: String,
    path: String,
    /// For messages: the URL as upstream's client prints it.
    url: String,
}

async fn call(w: Webhook, crd: String, objects: Vec<Value>, desired: &str) -> Answer {
    let review_version = w
        .review_versions
        .iter()
        .find(|v| REVIEW_VERSIONS.contains(&v.as_str()))
        .cloned()
        .ok_or("no supported conversion review versions")?;
    let uid = uuid::Uuid::new_v4().to_string();
    let count = objects.len();
    let review_api_version = format!("apiextensions.k8s.io/{review_version}");
    let review = json!({
        "kind": "ConversionReview",
        "apiVersion": review_api_version,
        "request": {"uid": uid, "desiredAPIVersion": desired, "objects": objects},
    });
    let ep = endpoint(&w.client).await?;
    let tls = tls_config(&w.ca_bundle)?;
    let started = std::time::Instant::now();
    let body = serde_json::to_vec(&review).unwrap_or_default();
    let answer = tokio::time::timeout(TIMEOUT, post(&ep, tls, body))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "context deadline exceeded (Client.Timeout exceeded while awaiting headers after {}s)",
                TIMEOUT.as_secs()
            ))
        })
        .map_err(|e| format!("Post {:?}: {e}", ep.url))?;
    tracing::debug!(crd = %crd, objects = count, elapsed_ms = started.elapsed().as_millis() as u64, "conversion webhook called");
    let got: Value = serde_json::from_slice(&answer)
        .map_err(|e| format!("decoding the ConversionReview: {e}"))?;
    let resp = &got["response"];
    if review_version == "v1" {
        // Upstream checks the v1 answer's type and uid (v1beta1 never did).
        if got["kind"] != "ConversionReview" || got["apiVersion"] != review_api_version.as_str() {
            return Err(format!(
                "expected webhook response of {review_api_version}, Kind=ConversionReview, got {}, Kind={}",
                got["apiVersion"].as_str().unwrap_or_default(),
                got["kind"].as_str().unwrap_or_default()
            ));
        }
        if !resp.is_object() {
            return Err("no response provided".into());
        }
        if resp["uid"] != uid.as_str() {
            return Err(format!(
                "expected response.uid={uid:?}, got {:?}",
                resp["uid"].as_str().unwrap_or_default()
            ));
        }
    } else if !resp.is_object() {
        return Err("no response provided".into());
    }
    let result = &resp["result"];
    if result["status"] != "Success" {
        return Err(match result["message"].as_str().filter(|m| !m.is_empty()) {
            Some(m) => m.to_string(),
            None => format!(
                "response.result.status was '{}', not 'Success'",
                result["status"].as_str().unwrap_or_default()
            ),
        });
    }
    Ok(resp["convertedObjects"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// One HTTP/1.1 POST over TLS; the answer's body when the status is 2xx.
async fn post(
    ep: &Endpoint,
    tls: Arc<rustls::ClientConfig>,
    body: Vec<u8>,
) -> Result<Bytes, String> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect((ep.addr.0.as_str(), ep.addr.1))
        .await
        .map_err(|e| format!("dial tcp {}:{}: {e}", ep.addr.0, ep.addr.1))?;
    let name = rustls::pki_types::ServerName::try_from(ep.server_name.clone())
        .map_err(|e| format!("invalid server name {:?}: {e}", ep.server_name))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::post(ep.path.as_str())
        .header(http::header::HOST, ep.authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = http_body_util::Limited::new(resp.into_body(), 64 << 20)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "the server responded with the status code {} but did not return more information: {}",
            status.as_u16(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(256)])
        ));
    }
    Ok(bytes)
}

/// The endpoint of a `clientConfig` (a Service through its Endpoints, see the module doc).
async fn endpoint(client: &Client) -> Result<Endpoint, String> {
    match client {
        Client::Url(u) => {
            let uri: http::Uri = u.parse().map_err(|e| format!("invalid url {u:?}: {e}"))?;
            let host = uri.host().ok_or_else(|| format!("no host in {u:?}"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let path = uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into());
            Ok(Endpoint {
                addr: (host.clone(), port),
                server_name: host,
                authority: uri
                    .authority()
                    .map(|a| a.as_str().to_string())
                    .unwrap_or_default(),
                path,
                url: u.clone(),
            })
        }
        Client::Service {
            namespace,
            name,
            path,
            port,
        } => {
            let api = api().ok_or("no API server to resolve services through")?;
            let host = format!("{name}.{namespace}.svc");
            let addr = resolve_service(&api, namespace, name, *port).await?;
            Ok(Endpoint {
                addr,
                server_name: host.clone(),
                authority: format!("{host}:{port}"),
                path: path.clone(),
                url: format!("https://{host}:{port}{path}"),
            })
        }
    }
}

/// A Service port's backend: a ready Endpoints address with the target port, or the ClusterIP.
async fn resolve_service(
    api: &Api,
    ns: &str,
    name: &str,
    port: u16,
) -> Result<(String, u16), String> {
    let get = |resource: &'static str| async move {
        let info = crate::registry::lookup("", "v1", resource)
            .ok_or_else(|| format!("{resource} are not served"))?;
        api.store
            .get(&crate::handlers::key(api, info, Some(ns), name), None)
            .await
            .map_err(|e| e.to_api_error("", resource, name).message)
    };
    let svc = get("services").await?;
    let sp = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_u64() == Some(u64::from(port)))
        .cloned()
        .ok_or_else(|| format!("service {ns}/{name} has no port {port}"))?;
    let port_name = sp["name"].as_str().unwrap_or_default();
    if let Ok(eps) = get("endpoints").await {
        for subset in eps["subsets"].as_array().into_iter().flatten() {
            let target = subset["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
                .and_then(|p| p["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok());
            let ip = subset["addresses"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(|a| a["ip"].as_str());
            if let (Some(ip), Some(target)) = (ip, target) {
                return Ok((ip.to_string(), target));
            }
        }
    }
    match svc["spec"]["clusterIP"].as_str() {
        Some(ip) if !ip.is_empty() && ip != "None" => Ok((ip.to_string(), port)),
        _ => Err(format!(
            "service {ns}/{name} has no endpoints and no cluster IP"
        )),
    }
}

/// A client config trusting `ca_bundle` (or the system roots), cached per bundle.
fn tls_config(ca_bundle: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    static CACHE: Mutex<Option<HashMap<Vec<u8>, Arc<rustls::ClientConfig>>>> = Mutex::new(None);
    let mut g = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = g.get_or_insert_with(HashMap::new);
    if let Some(c) = cache.get(ca_bundle) {
        return Ok(c.clone());
    }
    let system;
    let pem = if ca_bundle.is_empty() {
        system = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        &system[..]
    } else {
        ca_bundle
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| format!("caBundle: {e}"))?;
        roots.add(c).map_err(|e| format!("caBundle: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = Arc::new(cfg);
    cache.insert(ca_bundle.to_vec(), cfg.clone());
    Ok(cfg)
}

/// Whether `pem` holds at least one parsable certificate (CRD validation of `caBundle`).
pub fn valid_ca_bundle(pem: &[u8]) -> bool {
    let certs: Result<Vec<_>, _> = rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect();
    certs.is_ok_and(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: &str) -> Value {
        json!({"apiVersion": format!("x.example.com/{v}"), "kind": "K",
               "metadata": {"name": "a", "namespace": "ns", "uid": "u", "labels": {"l": "1"}},
               "spec": {"f": 1}})
    }

    #[test]
    fn check_restores_metadata_and_rejects_bad_answers() {
        let orig = vec![obj("v1")];
        let mut conv = obj("v2");
        conv["metadata"]["uid"] = json!("changed");
        conv["metadata"]["labels"] = json!({"l": "2"});
        let out = check(Ok(vec![conv.clone()]), &orig, "x.example.com/v2", "g").unwrap();
        assert_eq!(out[0]["metadata"]["uid"], "u");
        assert_eq!(out[0]["metadata"]["labels"], json!({"l": "2"}));
        assert_eq!(out[0]["spec"], json!({"f": 1}));

        let err = check(
            Ok(vec![conv.clone()]),
            &orig,
            "x.example.com/v3",
            "x.example.com/v1, Kind=K",
        )
        .unwrap_err();
        assert_eq!(err, "conversion webhook for x.example.com/v1, Kind=K returned invalid converted object at index 0: invalid groupVersion (expected x.example.com/v3, received x.example.com/v2)");
        let mut renamed = conv.clone();
        renamed["metadata"]["name"] = json!("b");
        assert!(check(Ok(vec![renamed]), &orig, "x.example.com/v2", "g")
            .unwrap_err()
            .contains("must have the same name"));
        assert_eq!(
            check(Ok(vec![]), &orig, "x.example.com/v2", "g").unwrap_err(),
            "conversion webhook for g returned 0 objects, expected 1"
        );
        assert_eq!(
            check(Err("boom".into()), &orig, "x.example.com/v2", "g").unwrap_err(),
            "conversion webhook for g failed: boom"
        );
    }

    #[test]
    fn conversion_stanza_is_read() {
        let crd = json!({"spec": {"conversion": {"strategy": "Webhook", "webhook": {
            "conversionReviewVersions": ["v1"],
            "clientConfig": {"service": {"namespace": "ns", "name": "conv"}, "caBundle": "eA=="}}}}});
        assert_eq!(
            Conversion::of(&crd),
            Conversion::Webhook(Webhook {
                client: Client::Service {
                    namespace: "ns".into(),
                    name: "conv".into(),
                    path: "/".into(),
                    port: 443
                },
                ca_bundle: b"x".to_vec(),
                review_versions: vec!["v1".into()],
            })
        );
        assert_eq!(
            Conversion::of(&json!({"spec": {"conversion": {"strategy": "None"}}})),
            Conversion::None
        );
    }

    #[test]
    fn strategy_none_rewrites_the_api_version_only() {
        let version = |v: &str, storage: bool| {
            json!({"name": v, "served": true, "storage": storage,
                "schema": {"openAPIV3Schema": {"type": "object"}}})
        };
        let crd = json!({"metadata": {"name": "things.none.example.com"},
            "spec": {"group": "none.example.com", "scope": "Namespaced",
                "names": {"plural": "things", "kind": "Thing"},
                "conversion": {"strategy": "None"},
                "versions": [version("v1", true), version("v2", false)]}});
        super::super::set_crds(std::iter::once(&crd));
        let v2 = super::super::lookup("none.example.com", "v2", "things").unwrap();
        assert!(converts(v2));
        let o = json!({"apiVersion": "none.example.com/v2", "kind": "Thing",
            "metadata": {"name": "a"}, "spec": {"x": 1}});
        let stored = to_storage(v2, o.clone()).unwrap();
        assert_eq!(stored["apiVersion"], "none.example.com/v1");
        assert_eq!(stored["spec"], o["spec"]);
        assert_eq!(to_request(v2, stored.clone()).unwrap(), o);
        let items = output_list(v2, vec![stored, o.clone()]).unwrap();
        assert!(items.iter().all(|i| *i == o), "{items:?}");
        // Objects of other kinds (a Status) pass through untouched.
        let st = json!({"kind": "Status", "apiVersion": "v1"});
        assert!(matches!(output(v2, &st), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn block_works_without_a_runtime() {
        assert_eq!(block(async { 7 }), 7);
    }
}
