//! `kelsonctl join`: token-based discovery of a cluster, as `kubeadm join`'s.
//!
//! 1. Fetch `cluster-info` (kube-public ConfigMap whose `kubeconfig` names the server and
//!    embeds the cluster CA) over TLS *without* verifying the server — we do not know the CA
//!    yet — authenticating with the bootstrap token.
//! 2. Pin: the SHA-256 of the CA certificate's DER SubjectPublicKeyInfo must equal
//!    `--ca-cert-hash sha256:<hex>` (kubeadm's format: `openssl x509 -pubkey | openssl pkey
//!    -pubin -outform der | sha256sum`). A mismatch stops the join: whoever answered step 1
//!    may be an impostor.
//! 3. Fetch it again, now verifying the server against that CA, which proves the token and the
//!    CA belong to the same cluster.
//! 4. Write the bootstrap kubeconfig (server, CA, token) with mode 0600. The kubelet started
//!    with `--bootstrap-kubeconfig` uses it to request its client certificate (TLS bootstrap).
//!
//! Upstream additionally checks a JWS signature of `cluster-info` made with the token (the
//! bootstrap signer controller); Kelson relies on the CA hash pin, which kubeadm documents as
//! the stronger of the two checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use base64::Engine;
use clap::Args;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// `kelsonctl join` flags.
#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// The API server, `https://host:port`.
    #[arg(long)]
    pub server: String,
    /// Bootstrap token `<id>.<secret>` (from `kelsonctl token create`).
    #[arg(long)]
    pub token: String,
    /// `sha256:<hex>` of the cluster CA's public key (SubjectPublicKeyInfo).
    #[arg(long)]
    pub ca_cert_hash: String,
    /// Where to write the bootstrap kubeconfig.
    #[arg(long, default_value = "/etc/kelson/bootstrap-kubelet.kubeconfig")]
    pub bootstrap_kubeconfig: PathBuf,
}

/// kubeadm's CA hash: `sha256:` + hex SHA-256 of the certificate's DER SubjectPublicKeyInfo.
pub fn ca_cert_hash(der: &[u8]) -> anyhow::Result<String> {
    let (_, x) = X509Certificate::from_der(der).map_err(|e| anyhow::anyhow!("CA: {e}"))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(x.public_key().raw))
    ))
}

/// Runs `kelsonctl join`.
pub async fn run(a: JoinArgs) -> anyhow::Result<i32> {
    let ca_pem = discover(&a.server, &a.token, &a.ca_cert_hash).await?;
    write_bootstrap_kubeconfig(&a.bootstrap_kubeconfig, &a.server, &ca_pem, &a.token)?;
    println!(
        "cluster CA verified ({}); bootstrap kubeconfig written to {}\nstart the kubelet with --bootstrap-kubeconfig {}",
        a.ca_cert_hash,
        a.bootstrap_kubeconfig.display(),
        a.bootstrap_kubeconfig.display()
    );
    Ok(0)
}

/// Steps 1–3: the cluster CA (PEM), verified against `want_hash`.
pub async fn discover(server: &str, token: &str, want_hash: &str) -> anyhow::Result<String> {
    if crate::token::parse_token(token).is_none() {
        bail!("--token must look like abcdef.0123456789abcdef");
    }
    let want = want_hash.trim().to_ascii_lowercase();
    if !want.starts_with("sha256:") || want.len() != 7 + 64 {
        bail!("--ca-cert-hash must be sha256:<64 hex digits>");
    }
    let hostport = server
        .strip_prefix("https://")
        .context("--server must be https://host:port")?
        .trim_end_matches('/')
        .to_string();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let insecure = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider.clone())))
        .with_no_client_auth();
    let info = fetch_cluster_info(&hostport, token, insecure).await?;
    let ca_pem = ca_from_cluster_info(&info)?;
    let der = {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .context("cluster-info: the CA is not a PEM certificate")?
    };
    let got = ca_cert_hash(der.as_ref())?;
    if got != want {
        bail!("the cluster CA's hash is {got}, not the expected {want}: refusing to join");
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der)?;
    let verified = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    fetch_cluster_info(&hostport, token, verified)
        .await
        .context("the server does not present a certificate of the pinned CA")?;
    Ok(ca_pem)
}

async fn fetch_cluster_info(
    hostport: &str,
    token: &str,
    mut cfg: rustls::ClientConfig,
) -> anyhow::Result<serde_json::Value> {
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let host = hostport
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(hostport)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(hostport),
    )
    .await
    .context("connecting timed out")?
    .with_context(|| format!("connecting to {hostport}"))?;
    let name = ServerName::try_from(host)?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let req = format!(
        "GET /api/v1/namespaces/kube-public/configmaps/cluster-info HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut buf),
    )
    .await
    .context("reading cluster-info timed out")?
    .or_else(|e| {
        // Servers may close without close_notify; the body is complete anyway.
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(0)
        } else {
            Err(e)
        }
    })?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    if !status.contains(" 200 ") {
        bail!("fetching cluster-info: {status}: {}", body.trim());
    }
    serde_json::from_str(&body).context("cluster-info is not JSON")
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn ca_from_cluster_info(cm: &serde_json::Value) -> anyhow::Result<String> {
    let kc = cm["data"]["kubeconfig"]
        .as_str()
        .context("cluster-info has no data.kubeconfig")?;
    let kc = kube::config::Kubeconfig::from_yaml(kc).context("cluster-info kubeconfig")?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .context("cluster-info kubeconfig has no cluster")?;
    let data = cluster
        .certificate_authority_data
        .as_deref()
        .context("cluster-info kubeconfig has no certificate-authority-data")?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .context("certificate-authority-data is not base64")?;
    Ok(String::from_utf8(pem)?)
}

/// The bootstrap kubeconfig: server, CA, and the token as the user's credential.
pub fn write_bootstrap_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    token: &str,
) -> anyhow::Result<()> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kelson\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: tls-bootstrap-token-user\n  user:\n    token: {token}\ncontexts:\n- name: tls-bootstrap-token-user@kelson\n  context:\n    cluster: kelson\n    user: tls-bootstrap-token-user\ncurrent-context: tls-bootstrap-token-user@kelson\n"
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    kelson_pki::write_atomic(path, text.as_bytes(), 0o600)?;
    Ok(())
}

/// Accepts any server certificate: only for the first, unauthenticated discovery request,
/// whose answer is then checked against the pinned CA hash. Signatures are still checked so
/// the handshake itself is sound.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
