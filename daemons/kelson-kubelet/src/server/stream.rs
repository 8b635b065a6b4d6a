//! `/exec`, `/attach` and `/portForward`: the runtime's streaming server does the work; the
//! kubelet authorizes, asks CRI for a one-time streaming URL and relays the client's upgrade.
//!
//! Design:
//! - CRI `Exec`/`Attach`/`PortForward` return a URL on containerd's stream server
//!   (`stream_server_address`, loopback in Kelson's containerd config). Upstream's kubelet
//!   redirects-by-proxy the same way: it forwards the client's request — method, query and
//!   upgrade headers (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version`) — to that URL and
//!   splices both upgraded connections, so the protocol negotiation is between kubectl and the
//!   runtime and every SPDY version the runtime speaks works end to end.
//! - WebSocket upgrades are refused with 400 before anything starts. containerd 1.6's stream
//!   server predates the `v5.channel.k8s.io` protocol (stdin close), which is what makes
//!   `kubectl exec -i` and `kubectl cp` finish; kubectl 1.32 tries WebSocket first and falls
//!   back to SPDY on any non-101 answer, so refusing is what makes it use the protocol that
//!   works. (Translating WebSocket → SPDY, as upstream 1.30+ does, is left for later.)
//! - The container must be running: the newest running container with the pod's
//!   namespace/name/container labels (404 otherwise, upstream's message).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;

use super::{query_bool, query_pairs, status_error, Body, ServerState};
use crate::pod::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Exec,
    Attach,
    PortForward,
}

fn is_websocket(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn internal(e: impl std::fmt::Display) -> Response<Body> {
    status_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        e.to_string(),
    )
}

async fn running_container(
    state: &ServerState,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<cri::Container, Response<Body>> {
    let labels = HashMap::from([
        (LABEL_POD_NAMESPACE.to_string(), ns.to_string()),
        (LABEL_POD_NAME.to_string(), pod.to_string()),
        (LABEL_CONTAINER_NAME.to_string(), container.to_string()),
    ]);
    let mut all = state
        .shared
        .cri
        .list_containers(None, labels)
        .await
        .map_err(internal)?;
    all.retain(|c| c.state == cri::ContainerState::ContainerRunning as i32);
    all.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    all.into_iter().next().ok_or_else(|| {
        status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("container not found (\"{container}\")"),
        )
    })
}

async fn ready_sandbox(state: &ServerState, ns: &str, pod: &str) -> Result<String, Response<Body>> {
    let labels = HashMap::from([
        (LABEL_POD_NAMESPACE.to_string(), ns.to_string()),
        (LABEL_POD_NAME.to_string(), pod.to_string()),
    ]);
    let mut all = state
        .shared
        .cri
        .list_pod_sandboxes(labels)
        .await
        .map_err(internal)?;
    all.retain(|s| s.state == cri::PodSandboxState::SandboxReady as i32);
    all.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    all.into_iter().next().map(|s| s.id).ok_or_else(|| {
        status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pod not found (\"{pod}_{ns}\")"),
        )
    })
}

/// Asks the runtime for the streaming URL of this request.
async fn streaming_url(
    state: &ServerState,
    kind: Kind,
    ns: &str,
    pod: &str,
    container: Option<&str>,
    query: Option<&str>,
) -> Result<String, Response<Body>> {
    let q = query_pairs(query);
    let mut rt = state.shared.cri.runtime_client();
    let bad = |e: tonic::Status| internal(format!("CRI: {}", e.message()));
    match kind {
        Kind::Exec | Kind::Attach => {
            let c = running_container(state, ns, pod, container.unwrap_or_default()).await?;
            let (stdin, stdout, stderr, tty) = (
                query_bool(&q, "stdin") || query_bool(&q, "input"),
                query_bool(&q, "stdout") || query_bool(&q, "output"),
                query_bool(&q, "stderr") || query_bool(&q, "error"),
                query_bool(&q, "tty"),
            );
            if !(stdin || stdout || stderr) {
                return Err(status_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "you must specify at least 1 of stdin, stdout, stderr",
                ));
            }
            if kind == Kind::Exec {
                let cmd: Vec<String> = q
                    .iter()
                    .filter(|(k, _)| k == "command")
                    .map(|(_, v)| v.clone())
                    .collect();
                if cmd.is_empty() {
                    return Err(status_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "you must specify at least one command for the container",
                    ));
                }
                let r = rt
                    .exec(cri::ExecRequest {
                        container_id: c.id,
                        cmd,
                        tty,
                        stdin,
                        stdout,
                        // With a TTY the runtime merges stderr into stdout.
                        stderr: stderr && !tty,
                    })
                    .await
                    .map_err(bad)?;
                Ok(r.into_inner().url)
            } else {
                let r = rt
                    .attach(cri::AttachRequest {
                        container_id: c.id,
                        stdin,
                        tty,
                        stdout,
                        stderr: stderr && !tty,
                    })
                    .await
                    .map_err(bad)?;
                Ok(r.into_inner().url)
            }
        }
        Kind::PortForward => {
            let sandbox = ready_sandbox(state, ns, pod).await?;
            let port = q
                .iter()
                .filter(|(k, _)| k == "port")
                .filter_map(|(_, v)| v.parse::<i32>().ok())
                .collect();
            let r = rt
                .port_forward(cri::PortForwardRequest {
                    pod_sandbox_id: sandbox,
                    port,
                })
                .await
                .map_err(bad)?;
            Ok(r.into_inner().url)
        }
    }
}

pub async fn serve(
    state: &Arc<ServerState>,
    kind: Kind,
    ns: &str,
    pod: &str,
    container: Option<&str>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if is_websocket(req.headers()) {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "WebSocket streaming is not supported by this kubelet's runtime; use SPDY/3.1",
        );
    }
    if !req.headers().contains_key(header::UPGRADE) {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Upgrade request required",
        );
    }
    let url = match streaming_url(state, kind, ns, pod, container, req.uri().query()).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    match relay(&url, &req, client_upgrade).await {
        Ok(r) => r,
        Err(e) => status_error(
            StatusCode::BAD_GATEWAY,
            "InternalError",
            format!("error connecting to the runtime's stream server: {e}"),
        ),
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("invalid streaming URL {0:?}")]
    Url(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Build(#[from] http::Error),
    #[error("timed out")]
    Timeout,
}

/// Forwards the upgrade request to the runtime's URL; on 101 splices the two connections.
async fn relay(
    url: &str,
    req: &Request<Incoming>,
    client_upgrade: hyper::upgrade::OnUpgrade,
) -> Result<Response<Body>, RelayError> {
    let uri: http::Uri = url.parse().map_err(|_| RelayError::Url(url.into()))?;
    let host = uri
        .host()
        .ok_or_else(|| RelayError::Url(url.into()))?
        .to_string();
    if uri.scheme_str() != Some("http") {
        // Kelson configures containerd's stream server without TLS on loopback.
        return Err(RelayError::Url(url.into()));
    }
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| RelayError::Timeout)??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "stream server connection ended");
        }
    });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut out = Request::builder()
        .method(req.method().clone())
        .uri(path)
        .body(Empty::<Bytes>::new())?;
    for (k, v) in req.headers() {
        if !matches!(
            k.as_str(),
            "host" | "authorization" | "content-length" | "transfer-encoding"
        ) {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    if let Ok(v) = http::HeaderValue::from_str(&format!("{host}:{port}")) {
        out.headers_mut().insert(header::HOST, v);
    }
    let mut resp = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(out))
        .await
        .map_err(|_| RelayError::Timeout)??;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        use http_body_util::BodyExt;
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut r = Response::new(super::full(bytes));
        *r.status_mut() = parts.status;
        *r.headers_mut() = parts.headers;
        r.headers_mut().remove(header::TRANSFER_ENCODING);
        r.headers_mut().remove(header::CONTENT_LENGTH);
        return Ok(r);
    }
    let backend_upgrade = hyper::upgrade::on(&mut resp);
    let mut r = Response::new(super::full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *r.headers_mut() = resp.headers().clone();
    tokio::spawn(async move {
        let (c, b) = match tokio::join!(client_upgrade, backend_upgrade) {
            (Ok(c), Ok(b)) => (c, b),
            (c, b) => {
                tracing::debug!(client = ?c.err(), backend = ?b.err(), "stream upgrade failed");
                return;
            }
        };
        let mut c = TokioIo::new(c);
        let mut b = TokioIo::new(b);
        match tokio::io::copy_bidirectional(&mut c, &mut b).await {
            Ok((up, down)) => tracing::debug!(up, down, "stream closed"),
            Err(e) => tracing::debug!(error = %e, "stream ended"),
        }
    });
    Ok(r)
}
