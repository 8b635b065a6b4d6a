//! The HTTPS server and the request pipeline in front of the handlers.
//!
//! One TLS listener (rustls via kelson-runtime, ALPN h2 + http/1.1, client certificates
//! optional but verified against `--client-ca-file`), hyper-util's auto connection builder so
//! each connection speaks HTTP/1.1 or HTTP/2. The client's identity is read once per
//! connection from its verified certificate and handed to every request on it.
//!
//! Pipeline per request: authenticate (401 unless a cert or `--anonymous-auth`) → route
//! (an unknown non-resource path is authorized first, so the denied get 403 like upstream) →
//! negotiate the response format → authorize (403) → read the body (413 over 3 MiB) →
//! handler. Every failure is a `metav1.Status` with the right code.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::alloc::Allocator;
use crate::auth::{self, Attributes, Authz, Decision, User};
use crate::handlers::{self, Req};
use crate::http::{self as h, Body, Format};
use crate::router::{self, Endpoint, Route};
use kelson_apimachinery::ApiError;
use kelson_apistorage::Storage;

/// Counters shared with D-Bus and /metrics.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub requests: Arc<AtomicU64>,
    pub watches: Arc<AtomicI64>,
}

/// Prometheus instruments (upstream's names where they exist).
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub requests: Family<Vec<(String, String)>, Counter>,
    pub watches: Gauge,
    /// Reads by verb (get, list, watch) and what served them (`cache` or `store`).
    pub reads: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    /// Counts one read of `verb` served by `source` ("cache" or "store").
    pub fn read(&self, verb: &str, source: &str) {
        self.reads
            .get_or_create(&vec![
                ("verb".to_string(), verb.to_string()),
                ("source".to_string(), source.to_string()),
            ])
            .inc();
    }
}

/// Shared server state.
pub struct Api {
    pub store: Storage,
    pub root: String,
    pub authz: Authz,
    pub alloc: Allocator,
    pub anonymous: bool,
    pub stats: Stats,
    pub metrics: Metrics,
    pub ready: AtomicBool,
    pub etcd_servers: Vec<String>,
    pub server_address: String,
    /// Service account and bootstrap tokens (tokens.rs).
    pub tokens: crate::tokens::Tokens,
    /// The audit log (audit.rs).
    pub audit: crate::audit::Auditor,
    /// Client towards kubelets for pods/log, exec, attach, portforward and nodes/proxy.
    pub kubelet: Option<crate::nodeproxy::KubeletClient>,
    /// The watch caches LIST and watch are served from (`None`: everything from the store).
    pub caches: Option<kelson_apistorage::WatchCaches>,
}

impl Api {
    /// Every object of a resource (in a namespace) for an admission plugin: from the watch
    /// cache once it holds this server's own writes (upstream reads informers here), else from
    /// the store. Saves a linearizable store read per admitted request.
    pub async fn admission_list(
        &self,
        info: &crate::registry::ResourceInfo,
        ns: Option<&str>,
    ) -> Result<Vec<Value>, kelson_apistorage::StorageError> {
        let prefix = crate::registry::ResourceExt::key_prefix(info, &self.root, ns);
        if let Some(cache) = self.cache(info) {
            if let Some(items) = cache.list_own_writes(&prefix).await? {
                return items.iter().map(|o| o.value()).collect();
            }
        }
        Ok(self
            .store
            .list(&prefix, &kelson_apistorage::ListOptions::default(), None)
            .await?
            .items)
    }

    /// One object for an admission plugin (NamespaceLifecycle, ServiceAccount, Priority,
    /// PodSecurity): from the watch cache once it holds this server's own writes to that
    /// resource, as upstream reads an informer's lister. An object the cache does not have is
    /// looked up in the store when `live_on_miss` (upstream's live lookup: it may have been
    /// written through another API server a moment ago). `Ok(None)`: no such object.
    pub async fn admission_get(
        &self,
        info: &crate::registry::ResourceInfo,
        ns: Option<&str>,
        name: &str,
        live_on_miss: bool,
    ) -> Result<Option<Arc<Value>>, kelson_apistorage::StorageError> {
        let key = crate::handlers::key(self, info, ns, name);
        if let Some(cache) = self.cache(info) {
            match cache.get_own_writes(&key).await? {
                // Shared, decoded once per cached version: the same namespace and service
                // account are read for every create.
                Some(Some(o)) => return o.shared_value().map(Some),
                Some(None) if !live_on_miss => return Ok(None),
                Some(None) | None => {}
            }
        }
        match self.store.get(&key, None).await {
            Ok(o) => Ok(Some(Arc::new(o))),
            Err(kelson_apistorage::StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts the watch cache of every built-in resource that can be listed, as upstream
    /// starts its cachers at boot: a watch from any version since then is served from a
    /// cache's ring rather than by a store watch of its own. Returns how many run.
    pub fn start_caches(&self) -> usize {
        if self.caches.is_none() {
            return 0;
        }
        crate::registry::resources()
            .iter()
            .filter(|info| info.has_verb("watch") && info.has_verb("list"))
            .filter_map(|info| self.cache(info))
            .count()
    }

    /// The watch cache of a resource (started on first use), if caching is on.
    pub fn cache(
        &self,
        info: &crate::registry::ResourceInfo,
    ) -> Option<kelson_apistorage::WatchCache> {
        let caches = self.caches.as_ref()?;
        let kind = info.kind;
        let prefix = crate::registry::ResourceExt::key_prefix(info, &self.root, None);
        match caches.get(&prefix, || {
            Arc::new(move |o: &Value| crate::meta::selectable_view(kind, o))
        }) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(prefix, error = %e, "watch cache unavailable, using the store");
                None
            }
        }
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("root", &self.root).finish()
    }
}

/// Serves HTTPS on `listener` until the returned task is aborted.
pub fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> JoinHandle<()> {
    let mut incoming = kelson_runtime::tls::tls_incoming(listener, tls);
    tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(conn) = incoming.next().await {
            let Ok(stream) = conn else { continue };
            let user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::auth::user_from_cert(c.as_ref()));
            let peer = stream.get_ref().0.peer_addr().ok();
            let api = api.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let api = api.clone();
                    let user = user.clone();
                    if let Some(peer) = peer {
                        req.extensions_mut().insert(crate::audit::PeerAddr(peer));
                    }
                    async move { Ok::<_, std::convert::Infallible>(handle(api, user, req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "connection ended");
                }
            });
        }
    })
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0-kelson",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": concat!("rust (kelson-apiserver ", env!("CARGO_PKG_VERSION"), ")"),
        "compiler": "rustc",
        "platform": format!("linux/{}", match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

/// One request, start to end.
pub async fn handle<B>(api: Arc<Api>, user: Option<User>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    api.stats.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut audit = crate::audit::RequestInfo::start(&req);
    let resp = match pipeline(&api, user, req, &mut audit).await {
        Ok(r) => r,
        Err(e) => h::error_response(&e),
    };
    let resp = crate::audit::finish(&api.audit, &audit, resp).await;
    api.metrics
        .requests
        .get_or_create(&vec![
            ("verb".to_string(), method.to_string()),
            ("code".to_string(), resp.status().as_u16().to_string()),
        ])
        .inc();
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
    resp
}

async fn pipeline<B>(
    api: &Arc<Api>,
    user: Option<User>,
    req: Request<B>,
    audit: &mut crate::audit::RequestInfo,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let user = match user {
        Some(u) => u,
        None => match crate::tokens::bearer(req.headers()) {
            // A bearer token that does not authenticate is 401 even with anonymous access.
            Some(token) => match api.tokens.authenticate(api, token, None).await {
                Ok(a) => a.user,
                Err(why) => {
                    tracing::debug!(reason = %why, "bearer token rejected");
                    return Err(ApiError::unauthorized());
                }
            },
            None if api.anonymous => User::anonymous(),
            None => return Err(ApiError::unauthorized()),
        },
    };
    let (parts, body) = req.into_parts();
    let route = match router::route(parts.uri.path()) {
        Ok(r) => r,
        Err(e) => {
            // Upstream authorizes before it looks for a handler: a caller who may not get an
            // unknown non-resource path (`/metrics`, `/foo`) is told 403, not 404.
            let path = parts.uri.path();
            if !path.starts_with("/api/") && !path.starts_with("/apis/") {
                let attrs = Attributes {
                    verb: method_verb(&parts.method).into(),
                    path: path.to_string(),
                    resource_request: false,
                    ..Default::default()
                };
                if let Decision::Deny(reason) = api.authz.authorize(&user, &attrs) {
                    return Err(auth::forbidden(&user, &attrs, &reason));
                }
            }
            return Err(e);
        }
    };
    let q = h::query(&parts.uri);
    let accept = parts
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    match route {
        Route::Endpoint(ep) => {
            let attrs = Attributes {
                verb: method_verb(&parts.method).into(),
                path: parts.uri.path().to_string(),
                resource_request: false,
                ..Default::default()
            };
            audit.received(&api.audit, &user, &attrs, "v1");
            if let Decision::Deny(reason) = api.authz.authorize(&user, &attrs) {
                return Err(auth::forbidden(&user, &attrs, &reason));
            }
            if parts.method != Method::GET && parts.method != Method::HEAD {
                return Err(ApiError::method_not_supported(
                    parts.method.as_str(),
                    parts.uri.path(),
                ));
            }
            if matches!(ep, Endpoint::OpenApiV2) {
                // JSON or gnostic protobuf, with ETag revalidation (If-None-Match).
                let inm = parts.headers.get(http::header::IF_NONE_MATCH);
                return crate::openapi_v2_proto::serve(accept, inm);
            }
            endpoint(api, ep, &q, accept).await
        }
        Route::Resource(t) => {
            let fmt = h::negotiate(accept, true)?;
            let verb = handlers::verb(&parts.method, &t, &q)?;
            let attrs = Attributes {
                verb: verb.into(),
                group: t.info.group.into(),
                resource: t.info.resource.into(),
                subresource: t.sub.map(|s| s.name().to_string()).unwrap_or_default(),
                namespace: t.namespace.clone().unwrap_or_default(),
                // A list or watch selecting one `metadata.name` is about that object (upstream's
                // RequestInfo), so name-scoped rules (Node authorizer, resourceNames) apply.
                name: t
                    .name
                    .clone()
                    .or_else(|| selected_name(verb, &q))
                    .unwrap_or_default(),
                path: parts.uri.path().to_string(),
                resource_request: true,
            };
            audit.received(&api.audit, &user, &attrs, t.info.version);
            if let Decision::Deny(reason) = api.authz.authorize(&user, &attrs) {
                return Err(auth::forbidden(&user, &attrs, &reason));
            }
            let body = h::read_body(body).await?;
            audit.request_body(
                parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
                &body,
            );
            if crate::nodeproxy::handles(&t) {
                return crate::nodeproxy::proxy(api, &t, &parts, body).await;
            }
            let mut r = Req {
                api,
                t: &t,
                q,
                fmt,
                headers: &parts.headers,
                warnings: Vec::new(),
                user: &user,
            };
            handlers::dispatch(&mut r, &parts.method, body).await
        }
    }
}

/// `metadata.name=<x>` (or `==`) in a list or watch's field selector, upstream's
/// `RequiresExactMatch("metadata.name")`.
fn selected_name(verb: &str, q: &std::collections::HashMap<String, String>) -> Option<String> {
    if !matches!(verb, "list" | "watch") {
        return None;
    }
    let fs = q.get("fieldSelector")?;
    let mut name = None;
    for req in fs.split(',').map(str::trim) {
        let (k, v) = req.split_once("==").or_else(|| req.split_once('='))?;
        if k.trim() == "metadata.name" && !k.ends_with('!') {
            name = Some(v.trim().to_string());
        }
    }
    name.filter(|n| !n.is_empty() && !n.contains('/') && n != "." && n != "..")
}

fn method_verb(m: &Method) -> &'static str {
    match *m {
        Method::GET | Method::HEAD => "get",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "options",
    }
}

async fn endpoint(
    api: &Arc<Api>,
    ep: Endpoint,
    q: &std::collections::HashMap<String, String>,
    accept: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let fmt = match h::negotiate(accept, false) {
        Ok(Format::Yaml) => Format::Yaml,
        _ => Format::Json,
    };
    let ok = |v: Value| h::respond(StatusCode::OK, &v, fmt);
    let discovery = |legacy: bool, doc: Value| {
        use kelson_apiresources::DiscoveryFormat;
        let f = kelson_apiresources::negotiate_discovery(accept.unwrap_or(""));
        let v = match f {
            DiscoveryFormat::Legacy => doc,
            DiscoveryFormat::AggregatedV2 => crate::crd::docs::merge_aggregated(
                kelson_apiresources::aggregated_discovery(legacy, true),
                legacy,
            ),
            DiscoveryFormat::AggregatedV2Beta1 => crate::crd::docs::merge_aggregated(
                kelson_apiresources::aggregated_discovery(legacy, false),
                legacy,
            ),
        };
        let mut r = h::json(StatusCode::OK, &v);
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(f.content_type()),
        );
        r
    };
    Ok(match ep {
        Endpoint::Version => ok(version_info()),
        Endpoint::Health { kind, check } => {
            health(api, kind, check.as_deref(), q.contains_key("verbose")).await?
        }
        Endpoint::Api => discovery(
            true,
            kelson_apiresources::discovery_api_for(&api.server_address),
        ),
        Endpoint::Apis => discovery(
            false,
            crate::crd::docs::merge_apis(kelson_apiresources::discovery_apis()),
        ),
        Endpoint::Group(g) => ok(discovery_group(&g)
            .or_else(|| crate::crd::docs::group(&g))
            .ok_or_else(ApiError::path_not_found)?),
        Endpoint::GroupVersion(g, v) => ok(kelson_apiresources::discovery_group_version(&g, &v)
            .or_else(|| crate::crd::docs::group_version(&g, &v))
            .ok_or_else(ApiError::path_not_found)?),
        Endpoint::OpenApiV2 => openapi_v2(accept)?,
        Endpoint::OpenIdConfiguration => h::json(
            StatusCode::OK,
            &api.tokens.openid_configuration(&api.server_address),
        ),
        Endpoint::OpenIdJwks => {
            let mut r = h::json(StatusCode::OK, &api.tokens.jwks());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/jwk-set+json"),
            );
            r
        }
        Endpoint::OpenApiV3Root => h::json(
            StatusCode::OK,
            &crate::crd::docs::merge_v3_index(kelson_apiresources::openapi_v3_index()),
        ),
        Endpoint::OpenApiV3(gv) => match kelson_apiresources::openapi_v3(&gv) {
            Some(doc) => raw_json(doc),
            // Custom resources' group versions (crd/).
            None => raw_json_owned(
                crate::crd::docs::openapi_v3(&gv).ok_or_else(ApiError::path_not_found)?,
            ),
        },
    })
}

fn raw_json(bytes: &'static [u8]) -> Response<Body> {
    raw_json_owned(bytes::Bytes::from_static(bytes))
}

fn raw_json_owned(bytes: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut r = Response::new(h::full(bytes.into()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// `GET /apis/<group>`: the group entry of `/apis` as an `APIGroup`.
fn discovery_group(g: &str) -> Option<Value> {
    let apis = kelson_apiresources::discovery_apis();
    let mut grp = apis["groups"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == g)?
        .clone();
    grp["kind"] = json!("APIGroup");
    grp["apiVersion"] = json!("v1");
    Some(grp)
}

fn openapi_v2(accept: Option<&str>) -> Result<Response<Body>, ApiError> {
    crate::openapi_v2_proto::serve(accept, None)
}

async fn health(
    api: &Arc<Api>,
    kind: &str,
    check: Option<&str>,
    verbose: bool,
) -> Result<Response<Body>, ApiError> {
    let etcd_ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), api.store.current_revision()).await,
        Ok(Ok(_))
    );
    let mut checks: Vec<(&str, bool)> = vec![("ping", true), ("log", true), ("etcd", etcd_ok)];
    if kind == "readyz" {
        checks.push(("informer-sync", true));
        checks.push((
            "poststarthook/kelson-bootstrap-namespaces",
            api.ready.load(Ordering::Relaxed),
        ));
    }
    if let Some(c) = check {
        let Some((_, ok)) = checks.iter().find(|(n, _)| *n == c) else {
            return Err(ApiError::path_not_found());
        };
        return Ok(if *ok {
            h::text(StatusCode::OK, "ok")
        } else {
            h::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("[-]{c} failed: reason withheld\n"),
            )
        });
    }
    let all = checks.iter().all(|(_, ok)| *ok);
    let code = if all {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    if verbose || !all {
        let mut s = String::new();
        for (n, ok) in &checks {
            s.push_str(&if *ok {
                format!("[+]{n} ok\n")
            } else {
                format!("[-]{n} failed: reason withheld\n")
            });
        }
        s.push_str(&if all {
            format!("{kind} check passed\n")
        } else {
            format!("{kind} check failed\n")
        });
        return Ok(h::text(code, s));
    }
    Ok(h::text(code, "ok"))
}

/// Starts listening on `addr` (port 0 allowed) and returns the bound address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}
