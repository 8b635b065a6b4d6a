//! `/exec`, `/attach` and `/portForward`: the runtime's streaming server does the work; the
//! kubelet authorizes, asks CRI for a one-time streaming URL and relays the client's upgrade.
//!
//! Design:
//! - CRI `Exec`/`Attach`/`PortForward` return a URL on containerd's stream server
//!   (`stream_server_address`, loopback in Kelson's containerd config). Upstream's kubelet
//!   redirects-by-proxy the same way: for SPDY it forwards the client's request — method, query
//!   and upgrade headers (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version`) — to that URL and
//!   splices both upgraded connections, so the protocol negotiation is between kubectl and the
//!   runtime and every SPDY version the runtime speaks works end to end.
//! - WebSocket clients (kubectl 1.30+ tries `v5.channel.k8s.io` first; the Python client speaks
//!   `v4.channel.k8s.io`) are translated: containerd 1.6's stream server predates v5 (stdin
//!   close, which `kubectl exec -i` and `kubectl cp` need), so the kubelet answers the
//!   WebSocket handshake itself and talks SPDY to the runtime ([`super::websocket`]), as
//!   upstream 1.30+ does for runtimes without v5. An offer of only unsupported subprotocols
//!   gets 400 before anything starts, which makes kubectl fall back to SPDY.
//! - The runtime's upgrade is made before the client is answered, so a runtime failure reaches
//!   the client as an HTTP error (a `metav1.Status`), not as a dropped connection.
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

use super::websocket::{self, Channels};
use super::{query_bool, query_pairs, status_error, Body, ServerState};
use crate::pod::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Exec,
    Attach,
    PortForward,
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

/// The ports of a port-forward request: the kubelet's `port=` (repeated), and the API's
/// `ports=` (comma-separated), which upstream's API server rewrites to `port=` but ours passes
/// through as the client sent it.
pub fn forward_ports(q: &[(String, String)]) -> Vec<u16> {
    q.iter()
        .filter(|(k, _)| k == "port" || k == "ports")
        .flat_map(|(_, v)| v.split(','))
        .filter_map(|p| p.trim().parse::<u16>().ok())
        .filter(|p| *p > 0)
        .collect()
}

/// Asks the runtime for the streaming URL of this request.
async fn streaming_url(
    state: &ServerState,
    kind: Kind,
    ns: &str,
    pod: &str,
    container: Option<&str>,
    query: Option<&str>,
) -> Result<(String, Channels), Response<Body>> {
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
            let channels = Channels {
                stdin,
                stdout,
                stderr,
                tty,
            };
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
                Ok((r.into_inner().url, channels))
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
                Ok((r.into_inner().url, channels))
            }
        }
        Kind::PortForward => {
            let sandbox = ready_sandbox(state, ns, pod).await?;
            let port = forward_ports(&q).into_iter().map(i32::from).collect();
            let r = rt
                .port_forward(cri::PortForwardRequest {
                    pod_sandbox_id: sandbox,
                    port,
                })
                .await
                .map_err(bad)?;
            let none = Channels {
                stdin: false,
                stdout: false,
                stderr: false,
                tty: false,
            };
            Ok((r.into_inner().url, none))
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
    if websocket::is_websocket(req.headers()) {
        return serve_websocket(state, kind, ns, pod, container, req).await;
    }
    if !req.headers().contains_key(header::UPGRADE) {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Upgrade request required",
        );
    }
    let (url, _) = match streaming_url(state, kind, ns, pod, container, req.uri().query()).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut headers = HeaderMap::new();
    for (k, v) in req.headers() {
        if !matches!(
            k.as_str(),
            "host" | "authorization" | "content-length" | "transfer-encoding"
        ) {
            headers.append(k.clone(), v.clone());
        }
    }
    match runtime_upgrade(&url, req.method(), headers).await {
        Ok(Runtime::Refused(r)) => r,
        Ok(Runtime::Switched(resp_headers, backend_upgrade)) => {
            let mut r = Response::new(super::full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *r.headers_mut() = resp_headers;
            tokio::spawn(splice(client_upgrade, backend_upgrade));
            r
        }
        Err(e) => runtime_error(e),
    }
}

fn runtime_error(e: RelayError) -> Response<Body> {
    status_error(
        StatusCode::BAD_GATEWAY,
        "InternalError",
        format!("error connecting to the runtime's stream server: {e}"),
    )
}

/// A WebSocket client: the handshake is answered here and the session translated to SPDY.
async fn serve_websocket(
    state: &Arc<ServerState>,
    kind: Kind,
    ns: &str,
    pod: &str,
    container: Option<&str>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let Some(protocol) = websocket::negotiate(req.headers(), kind) else {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "requested WebSocket protocol(s) are not supported: [{}]",
                websocket::offered(req.headers())
            ),
        );
    };
    let Some(accept) = websocket::accept_key(req.headers()) else {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
        );
    };
    let (url, channels) =
        match streaming_url(state, kind, ns, pod, container, req.uri().query()).await {
            Ok(u) => u,
            Err(r) => return r,
        };
    let spdy_protocol = match kind {
        Kind::PortForward => "portforward.k8s.io",
        Kind::Exec | Kind::Attach => websocket::V4,
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    headers.insert(header::UPGRADE, http::HeaderValue::from_static("SPDY/3.1"));
    headers.insert(
        "x-stream-protocol-version",
        http::HeaderValue::from_static(spdy_protocol),
    );
    let backend = match runtime_upgrade(&url, &http::Method::POST, headers).await {
        Ok(Runtime::Switched(_, up)) => up,
        Ok(Runtime::Refused(r)) => return r,
        Err(e) => return runtime_error(e),
    };
    let ports = forward_ports(&query_pairs(req.uri().query()));
    if kind == Kind::PortForward && protocol != websocket::PORT_FORWARD_TUNNEL && ports.is_empty() {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "query parameter \"port\" is required",
        );
    }
    let client_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let (c, b) = match tokio::join!(client_upgrade, backend) {
            (Ok(c), Ok(b)) => (c, b),
            (c, b) => {
                tracing::debug!(client = ?c.err(), backend = ?b.err(), "stream upgrade failed");
                return;
            }
        };
        match kind {
            Kind::PortForward if protocol == websocket::PORT_FORWARD_TUNNEL => {
                websocket::run_tunnel(c, b).await
            }
            Kind::PortForward => websocket::run_port_forward(c, b, ports).await,
            Kind::Exec | Kind::Attach => websocket::run_exec(c, b, protocol, channels).await,
        }
        tracing::debug!(protocol, "WebSocket stream closed");
    });
    websocket::switching(&accept, protocol)
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

/// The runtime's answer to an upgrade request.
enum Runtime {
    /// 101: its headers and the upgraded connection to come.
    Switched(HeaderMap, hyper::upgrade::OnUpgrade),
    /// Anything else, relayed as it came.
    Refused(Response<Body>),
}

/// Sends an upgrade request to the runtime's streaming URL.
async fn runtime_upgrade(
    url: &str,
    method: &http::Method,
    headers: HeaderMap,
) -> Result<Runtime, RelayError> {
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
    let _ = tcp.set_nodelay(true);
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
        .method(method.clone())
        .uri(path)
        .body(Empty::<Bytes>::new())?;
    *out.headers_mut() = headers;
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
        return Ok(Runtime::Refused(r));
    }
    let up = hyper::upgrade::on(&mut resp);
    Ok(Runtime::Switched(resp.headers().clone(), up))
}

/// Splices the client's and the runtime's upgraded connections (SPDY passes through).
async fn splice(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    let (c, b) = match tokio::join!(client, backend) {
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
}
