//! The kubelet's own HTTPS API (upstream's port 10250): `/healthz`, `/pods`, `/metrics`,
//! `/containerLogs/<ns>/<pod>/<container>`, `/exec|/attach/<ns>/<pod>/<container>` and
//! `/portForward/<ns>/<pod>`.
//!
//! Design:
//! - TLS (rustls) with the serving certificate from `--tls-cert-file`/`--tls-private-key-file`,
//!   or, as upstream, a self-signed one kept under `<root-dir>/pki` ([`tls`]). ALPN offers only
//!   HTTP/1.1: every streaming protocol here is an HTTP/1.1 upgrade.
//! - Authentication by client certificate verified against `--client-ca-file` (CN user, O
//!   groups); anonymous requests are refused with 401 (upstream's `--anonymous-auth=false`).
//!   Authorization is a SubjectAccessReview to the API server for `nodes/<sub>` of this node,
//!   with upstream's path → subresource mapping, cached briefly ([`authz`]).
//! - Logs are read from the CRI log files the runtime writes ([`logs`]); exec/attach/
//!   port-forward ask the runtime for a streaming URL and relay the client's SPDY upgrade to
//!   it ([`stream`]), or translate a WebSocket client to SPDY ([`websocket`], [`spdy`]).
//! - The listener runs beside the pod manager; a bind failure on the default port is logged
//!   and leaves the kubelet running pods (the API is an add-on to its main job), while
//!   `--port 0` binds an ephemeral port that the node then reports in
//!   `status.daemonEndpoints`.

pub mod authz;
pub mod logs;
pub mod spdy;
pub mod stream;
pub mod tls;
pub mod websocket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::config::KubeletConfig;
use crate::worker::Shared;

/// Response body type of every handler.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("kubelet serving certificate: {0}")]
    Cert(#[from] tls::CertError),
    #[error("kubelet TLS: {0}")]
    Tls(#[from] kelson_runtime::tls::TlsError),
    #[error("binding the kubelet API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What handlers share.
pub struct ServerState {
    pub shared: Arc<Shared>,
    pub node_name: String,
    pub authz: authz::Authorizer,
}

/// A running API listener.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `--address:--port` and serves until the returned handle is dropped.
pub async fn start(
    cfg: &KubeletConfig,
    shared: Arc<Shared>,
    node_name: &str,
    node_ip: &str,
) -> Result<Running, ServerError> {
    let (cert, key) = match (&cfg.tls_cert_file, &cfg.tls_private_key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => tls::self_signed(&cfg.root_dir.join("pki"), node_name, node_ip)?,
    };
    let config = kelson_runtime::tls::server_config(
        &cert,
        &key,
        cfg.client_ca_file.as_deref(),
        false,
        &[b"http/1.1"],
    )?;
    let addr = SocketAddr::new(cfg.address, cfg.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    let state = Arc::new(ServerState {
        authz: authz::Authorizer::new(shared.client.clone(), node_name.to_string()),
        shared,
        node_name: node_name.to_string(),
    });
    let task = tokio::spawn(serve(state, listener, config));
    tracing::info!(addr = %bound, "serving the kubelet API");
    Ok(Running { addr: bound, task })
}

async fn serve(
    state: Arc<ServerState>,
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
) {
    use futures::StreamExt;
    let mut incoming = kelson_runtime::tls::tls_incoming(listener, config);
    while let Some(conn) = incoming.next().await {
        let Ok(stream) = conn else { continue };
        let user = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| tls::user_from_cert(c.as_ref()));
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let user = user.clone();
                async move { Ok::<_, Infallible>(handle(state, user, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "kubelet API connection ended");
            }
        });
    }
}

/// Sets `status.daemonEndpoints.kubeletEndpoint.Port` to the port actually served.
pub fn set_kubelet_port(st: &mut k8s_openapi::api::core::v1::NodeStatus, port: u16) {
    st.daemon_endpoints = Some(k8s_openapi::api::core::v1::NodeDaemonEndpoints {
        kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint { port: port as i32 }),
    });
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub fn text(code: StatusCode, s: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(s.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn json(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A `metav1.Status` failure: the API server relays it and kubectl prints its message.
pub fn status_error(code: StatusCode, reason: &str, message: impl Into<String>) -> Response<Body> {
    json(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message.into(), "reason": reason, "code": code.as_u16()}),
    )
}

async fn handle(
    state: Arc<ServerState>,
    user: Option<tls::User>,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match user {
        // Upstream's body for an unauthenticated request.
        None => text(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Some(user) => {
            let attrs = authz::attributes(&method, &path, &state.node_name);
            match state.authz.authorize(&user, &attrs).await {
                Ok(true) => route(&state, req).await,
                Ok(false) => text(
                    StatusCode::FORBIDDEN,
                    format!(
                        "Forbidden (user={}, verb={}, resource=nodes, subresource={})",
                        user.name, attrs.verb, attrs.subresource
                    ),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "authorizing a kubelet API request");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("Authorization error (user={}, verb={}, resource=nodes, subresource={}): {e}", user.name, attrs.verb, attrs.subresource),
                    )
                }
            }
        }
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "kubelet API request");
    resp
}

async fn route(state: &Arc<ServerState>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match segs.as_slice() {
        ["healthz"] if get => text(StatusCode::OK, "ok"),
        ["pods"] if get => pods(state).await,
        ["metrics"] if get => metrics(),
        ["containerLogs", ns, pod, container] if get => {
            logs::serve(state, ns, pod, container, req.uri().query()).await
        }
        [kind @ ("exec" | "attach"), ns, pod, container] => {
            let kind = if *kind == "exec" {
                stream::Kind::Exec
            } else {
                stream::Kind::Attach
            };
            stream::serve(state, kind, ns, pod, Some(container), req).await
        }
        ["portForward", ns, pod] => {
            stream::serve(state, stream::Kind::PortForward, ns, pod, None, req).await
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// `GET /pods`: this node's pods as a PodList.
async fn pods(state: &Arc<ServerState>) -> Response<Body> {
    let api: Api<Pod> = Api::all(state.shared.client.clone());
    let lp = ListParams::default().fields(&format!("spec.nodeName={}", state.node_name));
    match api.list(&lp).await {
        Ok(list) => {
            let items: Vec<Value> = list
                .items
                .iter()
                .filter_map(|p| serde_json::to_value(p).ok())
                .collect();
            json(
                StatusCode::OK,
                &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
            )
        }
        Err(e) => status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("listing the node's pods: {e}"),
        ),
    }
}

fn metrics() -> Response<Body> {
    let reg = kelson_runtime::metrics::registry();
    let body = kelson_runtime::metrics::encode(&reg.lock());
    match body {
        Ok(s) => {
            let mut r = text(StatusCode::OK, s);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(kelson_runtime::metrics::TEXT_CONTENT_TYPE),
            );
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Query parameters with repeated keys kept in order.
pub fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The last value of `key`.
pub fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A boolean parameter as Kubernetes parses it (`true`/`1`).
pub fn query_bool(pairs: &[(String, String)], key: &str) -> bool {
    query_get(pairs, key).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}
