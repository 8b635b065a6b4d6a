//! TLS for the peer transport that follows certificate renewals without a restart.
//!
//! tonic's own `ServerTlsConfig`/`ClientTlsConfig` take PEM bytes once, so a member started
//! with a certificate would present it until it restarts — and after that certificate expires
//! no peer could connect to it any more, nor it to them. Instead, both sides use rustls configs
//! from `kelson_runtime::tls`, whose certificate comes from a `ReloadingCertResolver`: on each
//! new handshake (checked at most every few seconds) it stats the certificate and key files
//! and loads the new pair if they changed; a pair that fails to load is logged and the old one
//! stays in use.
//!
//! - Server side: [`server_config`] is handed to `kelson_runtime::tls::tls_incoming`, whose
//!   established TLS streams tonic serves (`serve_with_incoming_shutdown`).
//! - Client side: tonic only does TLS itself with a `ClientTlsConfig`, so [`lazy_channel`]
//!   gives the endpoint an `http://` URI and a connector that dials TCP and runs the rustls
//!   handshake with [`client_config`] — every (re)connection presents the current client
//!   certificate. Session resumption is off in that config, so every connection is a full
//!   handshake in which both sides show (and check) the certificates currently on disk.
//!
//! Connections already established keep the certificates they were set up with; TLS checks
//! validity only during the handshake, which is how etcd behaves too.

use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

use crate::{PeerTls, RaftError};

/// Server config for the peer listener, reloading the peer certificate; client certificates
/// are verified against the peer CA (required with `client_cert_auth`).
pub fn server_config(t: &PeerTls) -> Result<Arc<ServerConfig>, RaftError> {
    kelson_runtime::tls::server_config(
        &t.cert_file,
        &t.key_file,
        t.trusted_ca_file.as_deref(),
        t.client_cert_auth,
        &[kelson_runtime::tls::ALPN_H2],
    )
    .map_err(|e| RaftError::Transport(format!("peer server TLS: {e}")))
}

/// Client config for dialing peers: trusts the peer CA and presents the peer certificate.
pub fn peer_client_config(t: &PeerTls) -> Result<Arc<ClientConfig>, RaftError> {
    let ca = t.trusted_ca_file.as_deref().ok_or_else(|| {
        RaftError::Transport(
            "https peer URLs need a CA to verify peers with (--peer-trusted-ca-file)".into(),
        )
    })?;
    client_config(ca, Some(&t.cert_file), Some(&t.key_file))
        .map_err(|e| RaftError::Transport(format!("peer client TLS: {e}")))
}

/// A gRPC client config: trusts `ca`, presents `cert`/`key` (reloaded when they change),
/// offers HTTP/2 and never resumes sessions (see the module docs).
pub fn client_config(
    ca: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Arc<ClientConfig>, kelson_runtime::tls::TlsError> {
    let mut cfg = (*kelson_runtime::tls::client_config(ca, cert, key)?).clone();
    cfg.alpn_protocols = vec![kelson_runtime::tls::ALPN_H2.to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// A lazily connecting channel to `url` (`http://` or `https://host:port`). `tune` sets the
/// endpoint's timeouts and keep-alives. An `https` URL needs `tls`; its handshake runs in our
/// connector, so the endpoint itself is given the `http` form of the URL.
pub fn lazy_channel(
    url: &str,
    tls: Option<&Arc<ClientConfig>>,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, RaftError> {
    let bad = |e: &dyn std::fmt::Display| RaftError::Transport(format!("bad URL {url}: {e}"));
    match url.strip_prefix("https://") {
        None => {
            let ep = Endpoint::from_shared(url.to_string()).map_err(|e| bad(&e))?;
            Ok(tune(ep).connect_lazy())
        }
        Some(rest) => {
            let tls = tls.cloned().ok_or_else(|| {
                RaftError::Transport(format!("https URL {url} but no TLS configured"))
            })?;
            let ep = Endpoint::from_shared(format!("http://{rest}")).map_err(|e| bad(&e))?;
            // Nodelay is set by us, not by tonic, once a custom connector dials.
            Ok(
                tune(ep).connect_with_connector_lazy(tower::service_fn(move |uri: http::Uri| {
                    let tls = tls.clone();
                    async move { connect_tls(uri, tls).await.map(TokioIo::new) }
                })),
            )
        }
    }
}

async fn connect_tls(
    uri: http::Uri,
    tls: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let host = uri
        .host()
        .ok_or_else(|| invalid(format!("no host in {uri}")))?;
    let port = uri
        .port_u16()
        .ok_or_else(|| invalid(format!("no port in {uri}")))?;
    // An IPv6 literal comes bracketed in the URI.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| invalid(format!("bad server name {host}: {e}")))?;
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
}
