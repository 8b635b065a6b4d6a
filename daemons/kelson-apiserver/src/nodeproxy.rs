//! Pod subresources served by the pod's kubelet (`pods/log`, `pods/exec`, `pods/attach`,
//! `pods/portforward`) and `nodes/proxy`: the API server resolves the kubelet, connects with
//! its kubelet client certificate and relays the exchange.
//!
//! Design:
//! - The target is looked up like upstream's `LogLocation`/`streamLocation`: the pod (404 if
//!   missing), its container (defaulted when the pod has exactly one; 400 with upstream's
//!   messages otherwise), its node's address (`status.addresses`, InternalIP preferred, then
//!   ExternalIP, Hostname; 503 when there is none) and the port from
//!   `status.daemonEndpoints.kubeletEndpoint.Port`.
//! - Authorization already happened in the pipeline with the connect verbs (`create` for a
//!   POST to exec/attach/portforward, `get` for log and upgrade GETs); the kubelet authorizes
//!   the API server's own identity again (SubjectAccessReview), as upstream.
//! - One HTTP/1.1 connection per request over rustls (`--kubelet-client-certificate/-key`,
//!   server verified against `--kubelet-certificate-authority`, or not at all without it, as
//!   upstream). The client's method, query and headers (minus hop-by-hop ones and its own
//!   credentials) are forwarded. A `101 Switching Protocols` answer is returned to the client
//!   and both upgraded connections are spliced byte for byte, so SPDY (and whatever the kubelet
//!   agrees to) passes through untouched; any other answer is streamed back as it arrives, so
//!   `logs -f` flows line by line.
//! - Why no protocol translation here: the kubelet is where the runtime's protocol is known;
//!   the API server stays a transparent relay.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;

use crate::config::ApiServerConfig;
use crate::handlers;
use crate::http::Body;
use crate::registry;
use crate::router::{SubTarget, Target};
use crate::server::Api;
use kelson_apimachinery::ApiError;

/// How long connecting to a kubelet (TCP + TLS + response head) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The API server's client side towards kubelets.
#[derive(Debug, Clone)]
pub struct KubeletClient {
    tls: Arc<rustls::ClientConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletClientError {
    #[error("--kubelet-client-certificate and --kubelet-client-key must be given together")]
    HalfPair,
    #[error(transparent)]
    Tls(#[from] kelson_runtime::tls::TlsError),
    #[error("kubelet client TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

impl KubeletClient {
    /// From the `--kubelet-*` flags.
    pub fn from_config(cfg: &ApiServerConfig) -> Result<KubeletClient, KubeletClientError> {
        let pair = match (&cfg.kubelet_client_certificate, &cfg.kubelet_client_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err(KubeletClientError::HalfPair),
        };
        let mut tls = match &cfg.kubelet_certificate_authority {
            Some(ca) => (*kelson_runtime::tls::client_config(
                ca,
                pair.as_ref().map(|p| p.0.as_path()),
                pair.as_ref().map(|p| p.1.as_path()),
            )?)
            .clone(),
            None => {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let b = rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerify(provider)));
                match &pair {
                    Some((c, k)) => b.with_client_auth_cert(
                        kelson_runtime::tls::load_certs(c)?,
                        kelson_runtime::tls::load_key(k)?,
                    )?,
                    None => b.with_no_client_auth(),
                }
            }
        };
        // Upgrades (SPDY, WebSocket) are HTTP/1.1 only.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient { tls: Arc::new(tls) })
    }
}

/// Upstream skips kubelet certificate verification when no `--kubelet-certificate-authority`
/// is set (kubelets serve self-signed certificates by default); signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether the pipeline hands this target to [`proxy`].
pub fn handles(t: &Target) -> bool {
    let Some(SubTarget::Unsupported(sub)) = t.sub else {
        return false;
    };
    match (t.info.group, t.info.resource) {
        ("", "pods") => matches!(sub, "log" | "exec" | "attach" | "portforward"),
        ("", "nodes") => sub == "proxy",
        _ => false,
    }
}

/// `a b` → `[a b]`: how upstream's messages print a Go string slice.
fn go_list(names: &[String]) -> String {
    format!("[{}]", names.join(" "))
}

fn container_names(spec: &Value, field: &str) -> Vec<String> {
    spec[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The container a pod subresource addresses, by upstream's rules and messages.
pub fn pick_container(pod: &Value, requested: Option<&str>) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &pod["spec"];
    let containers = container_names(spec, "containers");
    let init = container_names(spec, "initContainers");
    let ephemeral = container_names(spec, "ephemeralContainers");
    match requested.filter(|c| !c.is_empty()) {
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None if init.is_empty() => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: {}",
            go_list(&containers)
        ))),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: {} or one of the init containers: {}",
            go_list(&containers),
            go_list(&init)
        ))),
        Some(c) if containers.iter().chain(&init).chain(&ephemeral).any(|n| n == c) => {
            Ok(c.to_string())
        }
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
    }
}

/// The kubelet's address (`host:port`) from a Node object.
pub fn kubelet_address(node: &Value) -> Result<(String, u16), ApiError> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let addrs = node["status"]["addresses"].as_array();
    let find = |ty: &str| {
        addrs.and_then(|a| {
            a.iter()
                .find(|x| x["type"] == ty && x["address"].as_str().is_some_and(|s| !s.is_empty()))
                .and_then(|x| x["address"].as_str())
        })
    };
    let host = [
        "InternalIP",
        "ExternalIP",
        "Hostname",
        "InternalDNS",
        "ExternalDNS",
    ]
    .iter()
    .find_map(|t| find(t))
    .ok_or_else(|| {
        ApiError::service_unavailable(format!(
            "no preferred addresses found for node {name}; known addresses: []"
        ))
    })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0 && *p <= u16::MAX as u64)
        .ok_or_else(|| {
            ApiError::service_unavailable(format!("node {name} reports no kubelet endpoint port"))
        })?;
    Ok((host.to_string(), port as u16))
}

/// The raw query without the given keys (values stay percent-encoded as the client sent them).
fn query_without(q: Option<&str>, drop: &[&str]) -> String {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let k = p.split_once('=').map(|(k, _)| k).unwrap_or(p);
            !drop.contains(&crate::http::pct_decode(k).as_str())
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn get_object(
    api: &Arc<Api>,
    resource: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let info = registry::lookup("", "v1", resource).expect("core resources are registered");
    api.store
        .get(&handlers::key(api, info, ns, name), None)
        .await
        .map_err(|e| e.to_api_error("", resource, name))
}

/// Relays one pod-subresource or nodes/proxy request to the kubelet.
pub async fn proxy(
    api: &Arc<Api>,
    t: &Target,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let client = api.kubelet.as_ref().ok_or_else(|| {
        ApiError::service_unavailable(
            "the API server has no kubelet client configured (--kubelet-client-certificate)",
        )
    })?;
    let name = t.name.as_deref().unwrap_or_default();
    let sub = t.sub.map(|s| s.name()).unwrap_or_default();
    let raw_q = parts.uri.query();
    let (node, path) = if t.info.resource == "nodes" {
        let node = get_object(api, "nodes", None, name).await?;
        // Everything after `/nodes/<name>/proxy` is the kubelet path.
        let marker = format!("/nodes/{name}/proxy");
        let rest = parts
            .uri
            .path()
            .split_once(&marker)
            .map(|(_, r)| r)
            .unwrap_or_default();
        let rest = if rest.is_empty() { "/" } else { rest };
        let q = query_without(raw_q, &[]);
        (node, with_query(rest, &q))
    } else {
        let ns = t.namespace.as_deref().unwrap_or("default");
        let pod = get_object(api, "pods", Some(ns), name).await?;
        let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if node_name.is_empty() {
            return Err(ApiError::bad_request(format!(
                "pod {name} does not have a host assigned"
            )));
        }
        let q = crate::http::query(&parts.uri);
        let path = match sub {
            "portforward" => format!("/portForward/{ns}/{name}"),
            _ => {
                let c = pick_container(&pod, q.get("container").map(String::as_str))?;
                let phase = pod["status"]["phase"].as_str().unwrap_or_default();
                if matches!(sub, "exec" | "attach") && matches!(phase, "Succeeded" | "Failed") {
                    return Err(ApiError::bad_request(format!(
                        "cannot {sub} into a container in a completed pod; current phase is {phase}"
                    )));
                }
                let prefix = match sub {
                    "log" => "containerLogs",
                    other => other,
                };
                format!("/{prefix}/{ns}/{name}/{c}")
            }
        };
        let node = get_object(api, "nodes", None, node_name)
            .await
            .map_err(|e| {
                if e.code == 404 {
                    ApiError::service_unavailable(format!(
                        "node {node_name} of pod {name} is not registered"
                    ))
                } else {
                    e
                }
            })?;
        let q = query_without(raw_q, &["container"]);
        (node, with_query(&path, &q))
    };
    let (host, port) = kubelet_address(&node)?;
    relay(client, &host, port, parts, &path, body).await
}

fn with_query(path: &str, q: &str) -> String {
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{q}")
    }
}

/// Headers that describe one hop, or carry the client's credentials to us.
fn forwarded_headers(from: &HeaderMap, upgrade: bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in from {
        let drop = matches!(
            k.as_str(),
            "host"
                | "authorization"
                | "proxy-authorization"
                | "keep-alive"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "content-length"
                | "impersonate-user"
                | "impersonate-group"
        ) || (!upgrade && matches!(k.as_str(), "connection" | "upgrade"));
        if !drop {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

fn bad_gateway(host: &str, port: u16, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        502,
        "ServiceUnavailable",
        format!("error dialing backend: kubelet {host}:{port}: {e}"),
    )
}

async fn relay(
    client: &KubeletClient,
    host: &str,
    port: u16,
    parts: &http::request::Parts,
    path_and_query: &str,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let upgrade = parts.headers.contains_key(header::UPGRADE);
    let server_name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_string()).map_err(|e| bad_gateway(host, port, e))?,
    };
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(client.tls.clone())
            .connect(server_name, tcp)
            .await
    };
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| bad_gateway(host, port, "timed out"))?
        .map_err(|e| bad_gateway(host, port, e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| bad_gateway(host, port, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "kubelet connection ended");
        }
    });
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(path_and_query)
        .body(Full::new(body))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    *req.headers_mut() = forwarded_headers(&parts.headers, upgrade);
    if let Ok(v) = HeaderValue::from_str(&format!("{host}:{port}")) {
        req.headers_mut().insert(header::HOST, v);
    }
    let client_upgrade = if upgrade {
        parts.extensions.get::<OnUpgrade>().cloned()
    } else {
        None
    };
    let mut resp = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| bad_gateway(host, port, "no response"))?
        .map_err(|e| bad_gateway(host, port, e))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ApiError::internal(
                "the kubelet switched protocols on a request that asked for no upgrade",
            ));
        };
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        let mut out = Response::new(crate::http::full(Bytes::new()));
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *out.headers_mut() = resp.headers().clone();
        tokio::spawn(async move {
            let (c, b) = match tokio::join!(client_upgrade, backend_upgrade) {
                (Ok(c), Ok(b)) => (c, b),
                (c, b) => {
                    tracing::debug!(client = ?c.err(), backend = ?b.err(), "upgrade failed");
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
        return Ok(out);
    }
    let (rparts, rbody) = resp.into_parts();
    let mut out = Response::new(rbody.map_err(std::io::Error::other).boxed());
    *out.status_mut() = rparts.status;
    for (k, v) in &rparts.headers {
        if !matches!(
            k.as_str(),
            "connection" | "keep-alive" | "transfer-encoding" | "content-length"
        ) {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_are_defaulted_and_checked_with_upstream_messages() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pick_container(&one, None).unwrap(), "a");
        let e = pick_container(&one, Some("zz")).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "container zz is not valid for pod p")
        );
        let two = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(
            pick_container(&two, None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(pick_container(&two, Some("i")).unwrap(), "i");
    }

    #[test]
    fn kubelet_address_prefers_internal_ip_and_needs_a_port() {
        let n = json!({"metadata": {"name": "n"}, "status": {
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(
            kubelet_address(&n).unwrap(),
            ("10.0.0.5".to_string(), 10250)
        );
        let bare = json!({"metadata": {"name": "n"}, "status": {}});
        assert_eq!(kubelet_address(&bare).unwrap_err().code, 503);
    }

    #[test]
    fn query_keeps_repeated_keys_and_drops_the_container() {
        assert_eq!(
            query_without(
                Some("command=sh&command=-c&container=main&stdin=true"),
                &["container"]
            ),
            "command=sh&command=-c&stdin=true"
        );
        assert_eq!(query_without(None, &["container"]), "");
    }
}
