//! TLS bootstrap and client certificate rotation, as upstream's kubelet
//! (`--bootstrap-kubeconfig`, `--cert-dir`, `--rotate-certificates`).
//!
//! Bootstrap ([`ensure_kubeconfig`]): when `--kubeconfig` is missing or unusable (unreadable, or
//! its client certificate file is missing, unparsable or expired) and a bootstrap kubeconfig is
//! given, the kubelet generates an ECDSA P-256 key, asks for a certificate with a
//! `CertificateSigningRequest` (signer `kubernetes.io/kube-apiserver-client-kubelet`, subject
//! `CN=system:node:<node>, O=system:nodes`, usages `digital signature` + `client auth` — no
//! `key encipherment`, which only RSA keys use), authenticating with the bootstrap credentials,
//! polls (backing off from 250 ms to 2 s, for at most [`BOOTSTRAP_WAIT`]) until the controller
//! manager has approved and signed it, and writes `<cert-dir>/kubelet-client-current.pem`
//! (certificate + key) and a kubeconfig pointing at that file. A Denied or Failed request is an
//! error, never a silent wait.
//!
//! Files: each certificate goes into `kubelet-client-<unix time>.pem` (0600) and
//! `kubelet-client-current.pem` is a symlink swapped atomically (rename of a new link), as
//! upstream does — a reader sees the old pair or the new one, never half of each.
//!
//! The API client ([`client`]): kube-rs reads a kubeconfig's certificate once, so instead of
//! rebuilding every client the kubelet hands out, the client's rustls config gets a
//! [`ReloadingCertResolver`] over the certificate file: each new TLS handshake presents the
//! current pair. Established connections would keep the old identity until they break, so the
//! connector also tracks its connections ([`ConnTracker`]) and rotation closes them all, as
//! upstream's `closeAllConns`: every request after a rotation handshakes with the new
//! certificate (in-flight requests and watches fail once and are retried by their loops).
//! Files replaced by someone else (an operator, `kelsonctl pki renew`, a CA rotation that
//! rewrites the CA bundle or the kubeconfig) are followed the way kelson-kube's
//! `client_from_kubeconfig` follows them: the handed-out client is a [`ReloadingClient`] that,
//! at most once a second on the request path, stats the kubeconfig and the files it names
//! (the CA bundle, the certificate and key — through the `current` symlink, so a swap of its
//! target counts) and, when any changed, builds the stock client anew from them and closes
//! the old connections as rotation does. The kubelet's own rotation goes the same way.
//!
//! Rotation ([`rotate`]): at a jittered 70–90 % of the current certificate's validity
//! (upstream's `nextRotationDeadline`) a new key and CSR are made with the node's own identity
//! (which the approver recognises as `selfnodeclient`); on failure it retries with back-off
//! (5 s doubling to 5 min) until it succeeds or the kubelet stops.
//!
//! Serving certificate (`server-tls-bootstrap`, upstream's serverTLSBootstrap): without
//! `--tls-cert-file` the kubelet API serves `<cert-dir>/kubelet-server-current.pem`; until a
//! `kubernetes.io/kubelet-serving` CSR (node name and addresses as SANs) is approved and signed,
//! that file holds a self-signed placeholder ([`serving_pair`], [`serving_bootstrap`]). Like the
//! client certificate it is renewed at a jittered 70–90 % of its validity by a new
//! `kubelet-serving` CSR; the new pair replaces the file in one rename and the kubelet API's
//! reloading resolver serves it from the next handshake on, without a restart.

// Which files a kubeconfig depends on and how a change of one is seen: kelson-kube's, so the
// kubelet and the other daemons' clients reload on the same evidence.
use kelson_kube::client::{sig as file_sig, watched_files, FileSig};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::task::AtomicWaker;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kelson_runtime::tls::ReloadingCertResolver;
use kube::api::{Api, PostParams};
use kube::client::ConfigExt;
use kube::config::{
    AuthInfo, Context as KcContext, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use parking_lot::Mutex;
use tokio::sync::watch;

/// Upstream's file name for the current client certificate and key.
pub const CURRENT: &str = "kubelet-client-current.pem";
pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Upstream's file name for the serving certificate and key (serverTLSBootstrap).
pub const SERVER_CURRENT: &str = "kubelet-server-current.pem";
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// How long bootstrap waits for the certificate before giving up (the unit restarts us).
pub const BOOTSTRAP_WAIT: Duration = Duration::from_secs(600);
/// How long a rotation waits for its certificate before it counts as a failed attempt.
const ROTATION_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("generating the key or request: {0}")]
    Crypto(#[from] rcgen::Error),
    #[error("certificate signing request {name} was {reason}: {message}")]
    Refused {
        name: String,
        reason: String,
        message: String,
    },
    #[error("certificate signing request {0} was not signed within {1:?}")]
    Timeout(String, Duration),
    #[error("TLS: {0}")]
    Tls(#[from] kelson_runtime::tls::TlsError),
    #[error("{0}")]
    Other(String),
}

type Result<T, E = BootstrapError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |source| BootstrapError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The validity window of the first certificate in a PEM file.
pub fn validity(pem_path: &Path) -> Result<(SystemTime, SystemTime)> {
    let data = std::fs::read(pem_path).map_err(io(pem_path))?;
    validity_of(&data).ok_or_else(|| {
        BootstrapError::Other(format!("{}: no parsable certificate", pem_path.display()))
    })
}

fn validity_of(pem: &[u8]) -> Option<(SystemTime, SystemTime)> {
    for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let p = p.ok()?;
        if p.label != "CERTIFICATE" {
            continue;
        }
        let (_, c) = x509_parser::parse_x509_certificate(&p.contents).ok()?;
        let t = |s: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
        return Some((
            t(c.validity().not_before.timestamp()),
            t(c.validity().not_after.timestamp()),
        ));
    }
    None
}

/// The serial number (hex) of the first certificate in a PEM file.
pub fn serial(pem_path: &Path) -> Option<String> {
    let data = std::fs::read(pem_path).ok()?;
    let p = x509_parser::pem::Pem::iter_from_buffer(&data)
        .next()?
        .ok()?;
    let (_, c) = x509_parser::parse_x509_certificate(&p.contents).ok()?;
    Some(c.raw_serial_as_string())
}

/// The current context's user's client certificate and key files, if it uses files.
fn client_files(kc: &Kubeconfig) -> Option<(PathBuf, PathBuf)> {
    let ctx_name = kc.current_context.as_deref()?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)?
        .context
        .as_ref()?;
    let user = ctx.user.as_deref()?;
    let auth = kc
        .auth_infos
        .iter()
        .find(|a| a.name == user)?
        .auth_info
        .as_ref()?;
    Some((
        PathBuf::from(auth.client_certificate.as_ref()?),
        PathBuf::from(auth.client_key.as_ref()?),
    ))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Whether the kubeconfig's client certificate is `cert` (rotation only renews the certificate
/// it manages, never one an operator configured).
pub fn kubeconfig_uses_cert(kubeconfig: &Path, cert: &Path) -> bool {
    Kubeconfig::read_from(kubeconfig)
        .ok()
        .and_then(|kc| client_files(&kc))
        .is_some_and(|(c, _)| absolute(&c) == absolute(cert))
}

/// Upstream's `isClientConfigStillValid`: readable, and a client certificate file, if used, is
/// currently valid.
pub fn kubeconfig_usable(path: &Path) -> bool {
    let Ok(kc) = Kubeconfig::read_from(path) else {
        return false;
    };
    if kc.current_context.is_none() || kc.clusters.is_empty() {
        return false;
    }
    match client_files(&kc) {
        Some((cert, _)) => match validity(&cert) {
            Ok((nb, na)) => {
                let now = SystemTime::now();
                nb <= now && now < na
            }
            Err(_) => false,
        },
        None => true,
    }
}

/// Makes sure `kubeconfig` holds usable credentials, bootstrapping them with
/// `bootstrap_kubeconfig` if not.
pub async fn ensure_kubeconfig(
    kubeconfig: &Path,
    bootstrap_kubeconfig: Option<&Path>,
    cert_dir: &Path,
    node_name: &str,
) -> Result<()> {
    if kubeconfig_usable(kubeconfig) {
        return Ok(());
    }
    let Some(boot) = bootstrap_kubeconfig else {
        return Err(BootstrapError::Kubeconfig {
            path: kubeconfig.to_path_buf(),
            reason: "missing or invalid, and no --bootstrap-kubeconfig to obtain credentials with"
                .into(),
        });
    };
    tracing::info!(kubeconfig = %kubeconfig.display(), bootstrap = %boot.display(),
        "no usable kubeconfig: requesting a client certificate (TLS bootstrap)");
    let boot_kc = Kubeconfig::read_from(boot).map_err(|e| BootstrapError::Kubeconfig {
        path: boot.to_path_buf(),
        reason: e.to_string(),
    })?;
    let client = kelson_kube::client_from_kubeconfig(boot)
        .await
        .map_err(|e| BootstrapError::Kubeconfig {
            path: boot.to_path_buf(),
            reason: e.to_string(),
        })?;
    let pem = request_certificate(&client, node_name, BOOTSTRAP_WAIT).await?;
    // Absolute, so the kubeconfig means the same file whatever the reader's directory.
    let current = absolute(&install(cert_dir, &pem)?);
    write_kubeconfig(kubeconfig, &boot_kc, &current)?;
    tracing::info!(kubeconfig = %kubeconfig.display(), serial = ?serial(&current),
        "TLS bootstrap complete");
    Ok(())
}

/// Creates a CSR for `system:node:<node>` and waits for its certificate; returns the
/// certificate and key as one PEM.
pub async fn request_certificate(
    client: &kube::Client,
    node_name: &str,
    wait: Duration,
) -> Result<String> {
    request(
        client,
        node_name,
        SIGNER,
        &["digital signature", "client auth"],
        Vec::new(),
        wait,
    )
    .await
}

/// Like [`request_certificate`] for the kubelet API's serving certificate: signer
/// `kubernetes.io/kubelet-serving`, usages `digital signature` + `server auth`, and the node's
/// host names and addresses as subject alternative names (upstream's serverTLSBootstrap).
pub async fn request_serving_certificate(
    client: &kube::Client,
    node_name: &str,
    sans: Vec<String>,
    wait: Duration,
) -> Result<String> {
    request(
        client,
        node_name,
        SERVING_SIGNER,
        &["digital signature", "server auth"],
        sans,
        wait,
    )
    .await
}

async fn request(
    client: &kube::Client,
    node_name: &str,
    signer: &str,
    usages: &[&str],
    sans: Vec<String>,
    wait: Duration,
) -> Result<String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    // rcgen makes an IP SAN of every name that parses as an address, a DNS SAN otherwise.
    let mut params = rcgen::CertificateParams::new(sans)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    let req = params.serialize_request(&key)?.pem()?;
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("node-csr-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(req.into_bytes()),
            signer_name: signer.into(),
            usages: Some(usages.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    };
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = api.create(&PostParams::default(), &csr).await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(csr = %name, %signer, "created certificate signing request; waiting for approval");
    let start = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let cur = api.get(&name).await?;
        if let Some(st) = &cur.status {
            for c in st.conditions.iter().flatten() {
                if matches!(c.type_.as_str(), "Denied" | "Failed") && c.status == "True" {
                    return Err(BootstrapError::Refused {
                        name,
                        reason: c.type_.to_lowercase(),
                        message: c.message.clone().unwrap_or_default(),
                    });
                }
            }
            if let Some(cert) = st.certificate.as_ref().filter(|c| !c.0.is_empty()) {
                let cert = String::from_utf8_lossy(&cert.0).into_owned();
                tracing::info!(csr = %name, "certificate issued");
                return Ok(format!("{}{}", cert, key.serialize_pem()));
            }
        }
        if start.elapsed() >= wait {
            return Err(BootstrapError::Timeout(name, wait));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Whether `pem` holds a certificate worth serving: parsable, not expired, and not
/// self-signed (a self-signed one is the placeholder [`serving_pair`] writes).
fn serving_cert_issued(pem: &[u8]) -> bool {
    use x509_parser::prelude::*;
    let Ok((_, p)) = parse_x509_pem(pem) else {
        return false;
    };
    let Ok((_, cert)) = X509Certificate::from_der(&p.contents) else {
        return false;
    };
    cert.issuer() != cert.subject() && cert.validity().is_valid()
}

/// The serving pair for serverTLSBootstrap: `<cert-dir>/kubelet-server-current.pem`
/// (certificate + key in one file, so replacing it is atomic). When it holds no issued,
/// unexpired certificate a self-signed placeholder for `sans` is written there, so the API
/// can listen at once, and `true` says a certificate must be requested ([`serving_bootstrap`]).
pub fn serving_pair(cert_dir: &Path, sans: &[String]) -> Result<(PathBuf, bool)> {
    let path = cert_dir.join(SERVER_CURRENT);
    if std::fs::read(&path).is_ok_and(|pem| serving_cert_issued(&pem)) {
        return Ok((path, false));
    }
    std::fs::create_dir_all(cert_dir).map_err(io(cert_dir))?;
    let ck = rcgen::generate_simple_self_signed(sans.to_vec())?;
    let pem = format!("{}{}", ck.cert.pem(), ck.key_pair.serialize_pem());
    write_private(&path, pem.as_bytes())?;
    Ok((path, true))
}

/// Keeps the serving certificate at `path` current: requests one now when the file holds only
/// the placeholder (or an expired certificate), otherwise at a jittered 70–90 % of the issued
/// one's validity, as for the client certificate. Each request retries with back-off (approval
/// of serving CSRs is often manual); the result replaces the file in one rename and the kubelet
/// API's reloading resolver serves it from the next handshake on. Runs until `stop` fires.
pub async fn serving_bootstrap(
    client: kube::Client,
    node_name: String,
    sans: Vec<String>,
    path: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let current = std::fs::read(&path)
            .ok()
            .filter(|pem| serving_cert_issued(pem))
            .and_then(|pem| validity_of(&pem));
        let renewal = current.is_some();
        if let Some((nb, na)) = current {
            let deadline = rotation_deadline(nb, na, random_fraction());
            let wait = deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tracing::info!(
                expires_in = ?na.duration_since(SystemTime::now()).unwrap_or_default(),
                rotate_in = ?wait,
                "serving certificate rotation scheduled"
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
        let mut delay = Duration::from_secs(5);
        loop {
            let wait = if renewal {
                ROTATION_WAIT
            } else {
                BOOTSTRAP_WAIT
            };
            let req = request_serving_certificate(&client, &node_name, sans.clone(), wait);
            let r = tokio::select! {
                r = req => r,
                _ = stop.changed() => return,
            };
            match r.and_then(|pem| write_private(&path, pem.as_bytes()).map(|_| pem)) {
                Ok(pem) => {
                    let serial = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
                        .next()
                        .and_then(|p| p.ok())
                        .and_then(|p| {
                            x509_parser::parse_x509_certificate(&p.contents)
                                .ok()
                                .map(|(_, c)| c.raw_serial_as_string())
                        });
                    tracing::info!(path = %path.display(), ?serial, renewal,
                        "kubelet serving certificate installed");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "requesting the kubelet serving certificate")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(300));
        }
    }
}

/// Writes a new pair and points `kubelet-client-current.pem` at it; removes the pair it
/// replaced. Returns the path of the `current` link.
pub fn install(cert_dir: &Path, pem: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(cert_dir).map_err(io(cert_dir))?;
    let _ = std::fs::set_permissions(cert_dir, std::fs::Permissions::from_mode(0o700));
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let file = cert_dir.join(format!(
        "kubelet-client-{}-{:09}.pem",
        stamp.as_secs(),
        stamp.subsec_nanos()
    ));
    write_private(&file, pem.as_bytes())?;
    let current = cert_dir.join(CURRENT);
    let previous = std::fs::read_link(&current).ok();
    let link_tmp = cert_dir.join(format!("{CURRENT}.tmp"));
    let _ = std::fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(file.file_name().unwrap_or_default(), &link_tmp)
        .map_err(io(&link_tmp))?;
    std::fs::rename(&link_tmp, &current).map_err(io(&current))?;
    if let Some(prev) = previous {
        let prev = cert_dir.join(prev);
        if prev != file {
            let _ = std::fs::remove_file(prev);
        }
    }
    Ok(current)
}

/// The kubelet's kubeconfig: the bootstrap kubeconfig's cluster, the certificate file as user.
fn write_kubeconfig(path: &Path, boot: &Kubeconfig, cert: &Path) -> Result<()> {
    let cluster = boot
        .current_context
        .as_deref()
        .and_then(|n| boot.contexts.iter().find(|c| c.name == n))
        .and_then(|c| c.context.as_ref())
        .and_then(|c| boot.clusters.iter().find(|k| k.name == c.cluster))
        .or(boot.clusters.first())
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| BootstrapError::Other("the bootstrap kubeconfig names no cluster".into()))?;
    let cert = cert.to_string_lossy().into_owned();
    let kc = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: "default-cluster".into(),
            cluster: Some(cluster),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "default-auth".into(),
            auth_info: Some(AuthInfo {
                client_certificate: Some(cert.clone()),
                client_key: Some(cert),
                ..Default::default()
            }),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: "default-context".into(),
            context: Some(KcContext {
                cluster: "default-cluster".into(),
                user: Some("default-auth".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some("default-context".into()),
        ..Default::default()
    };
    let yaml = serde_yaml::to_string(&kc).map_err(|e| BootstrapError::Other(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    write_private(path, yaml.as_bytes())
}

/// Connections made by [`client`]'s connector, so rotation can close them all; and the
/// client's certificate resolver, so rotation can make it re-read the files at once.
#[derive(Default)]
pub struct ConnTracker {
    generation: AtomicU64,
    conns: Mutex<Vec<Weak<ConnState>>>,
    /// The current client's resolver (replaced when the client is rebuilt).
    resolver: Mutex<Option<Arc<ReloadingCertResolver>>>,
}

struct ConnState {
    generation: u64,
    waker: AtomicWaker,
}

impl std::fmt::Debug for ConnTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTracker")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish()
    }
}

impl ConnTracker {
    /// Re-reads the certificate files now (the resolver otherwise rechecks them at most once
    /// a second, which could let the first handshakes after a rotation use the old pair).
    pub fn reload_certificate(&self) {
        let resolver = self.resolver.lock().clone();
        if let Some(r) = resolver {
            if let Err(e) = r.reload() {
                tracing::warn!(error = %e, "reloading the client certificate");
            }
        }
    }

    /// Makes every connection made so far fail its next (or pending) read or write.
    pub fn close_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for c in self.conns.lock().drain(..) {
            if let Some(c) = c.upgrade() {
                c.waker.wake();
            }
        }
    }

    fn register(&self) -> Arc<ConnState> {
        let st = Arc::new(ConnState {
            generation: self.generation.load(Ordering::SeqCst),
            waker: AtomicWaker::new(),
        });
        let mut conns = self.conns.lock();
        conns.retain(|w| w.strong_count() > 0);
        conns.push(Arc::downgrade(&st));
        st
    }
}

/// A connection [`ConnTracker::close_all`] can close.
pub struct Tracked<T> {
    inner: T,
    state: Arc<ConnState>,
    tracker: Arc<ConnTracker>,
}

impl<T> Tracked<T> {
    fn closed(&self, cx: &mut Context<'_>) -> bool {
        // Register first, then check: a close_all in between still wakes us.
        self.state.waker.register(cx.waker());
        self.tracker.generation.load(Ordering::SeqCst) != self.state.generation
    }
}

fn rotated() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "closed: the client certificate was rotated",
    )
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.closed(cx) {
            return Poll::Ready(Err(rotated()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.closed(cx) {
            return Poll::Ready(Err(rotated()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for Tracked<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

/// A connector wrapping `HttpConnector` whose connections a [`ConnTracker`] can close.
#[derive(Clone)]
pub struct TrackingConnector {
    inner: HttpConnector,
    tracker: Arc<ConnTracker>,
}

impl tower::Service<http::Uri> for TrackingConnector {
    type Response = Tracked<<HttpConnector as tower::Service<http::Uri>>::Response>;
    type Error = <HttpConnector as tower::Service<http::Uri>>::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let tracker = self.tracker.clone();
        Box::pin(async move {
            let inner = fut.await?;
            Ok(Tracked {
                inner,
                state: tracker.register(),
                tracker,
            })
        })
    }
}

/// The kubelet's API client for `kubeconfig`: a client certificate file is re-read on every
/// new connection, and the whole client is rebuilt when the kubeconfig or a file it names
/// changes (see the module docs); returns the tracker rotation closes connections with.
pub async fn client(kubeconfig: &Path) -> Result<(kube::Client, Arc<ConnTracker>)> {
    let (svc, tracker) = ReloadingClient::new(kubeconfig, RELOAD_CHECK_INTERVAL).await?;
    let ns = svc.state.lock().client.default_namespace().to_string();
    Ok((kube::Client::new(svc, ns), tracker))
}

/// How often, at most, [`ReloadingClient`] checks its files.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Builds the stock client for `kubeconfig` whose connections `tracker` can close.
async fn build_client(kubeconfig: &Path, tracker: &Arc<ConnTracker>) -> Result<kube::Client> {
    let bad = |reason: String| BootstrapError::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        reason,
    };
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
    let files = client_files(&kc);
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    let mut tls = config.rustls_client_config()?;
    let mut resolver = None;
    if let Some((cert, key)) = &files {
        let r = ReloadingCertResolver::new(cert, key, Duration::from_secs(1))?;
        tls.client_auth_cert_resolver = r.clone();
        resolver = Some(r);
    }
    *tracker.resolver.lock() = resolver;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(30)));
    let connector = TrackingConnector {
        inner: http,
        tracker: tracker.clone(),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    let hc: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let svc = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .map_err(|e: hyper_util::client::legacy::Error| -> tower::BoxError { Box::new(e) })
        .service(hc);
    Ok(kube::Client::new(svc, config.default_namespace))
}

struct ClientState {
    client: kube::Client,
    files: Vec<PathBuf>,
    sigs: Vec<FileSig>,
    last_check: std::time::Instant,
    rebuilds: u64,
}

/// The transport of [`client`]: forwards to a stock client rebuilt when its files change.
#[derive(Clone)]
pub struct ReloadingClient {
    kubeconfig: Arc<PathBuf>,
    interval: Duration,
    tracker: Arc<ConnTracker>,
    state: Arc<Mutex<ClientState>>,
}

impl ReloadingClient {
    async fn new(kubeconfig: &Path, interval: Duration) -> Result<(Self, Arc<ConnTracker>)> {
        let tracker = Arc::new(ConnTracker::default());
        // Signatures first: a change during the build is seen at the next check.
        let files = watched_files(kubeconfig);
        let sigs = files.iter().map(|f| file_sig(f)).collect();
        let client = build_client(kubeconfig, &tracker).await?;
        let svc = ReloadingClient {
            kubeconfig: Arc::new(kubeconfig.to_path_buf()),
            interval,
            tracker: tracker.clone(),
            state: Arc::new(Mutex::new(ClientState {
                client,
                files,
                sigs,
                last_check: std::time::Instant::now(),
                rebuilds: 0,
            })),
        };
        Ok((svc, tracker))
    }

    /// How many times the client was rebuilt after its files changed.
    pub fn rebuilds(&self) -> u64 {
        self.state.lock().rebuilds
    }

    /// The client to send with, rebuilt first when its files changed.
    pub async fn current(&self) -> kube::Client {
        let files = {
            let mut st = self.state.lock();
            if st.last_check.elapsed() < self.interval {
                return st.client.clone();
            }
            st.last_check = std::time::Instant::now();
            let sigs: Vec<FileSig> = st.files.iter().map(|f| file_sig(f)).collect();
            if sigs == st.sigs {
                return st.client.clone();
            }
            // The kubeconfig may name other files now: re-derive the list. Recorded before
            // building, so a broken version is retried only once the files change again.
            st.files = watched_files(&self.kubeconfig);
            st.sigs = st.files.iter().map(|f| file_sig(f)).collect();
            st.files.clone()
        };
        // Built outside the lock (kube's config loading is async); concurrent requests keep
        // using the current client meanwhile.
        match build_client(&self.kubeconfig, &self.tracker).await {
            Ok(client) => {
                let mut st = self.state.lock();
                st.client = client.clone();
                st.rebuilds += 1;
                drop(st);
                tracing::info!(kubeconfig = %self.kubeconfig.display(), files = ?files,
                    "kubeconfig or its certificate files changed: API client reloaded");
                // As after a rotation: no request keeps going out with the old identity.
                self.tracker.close_all();
                client
            }
            Err(e) => {
                tracing::warn!(kubeconfig = %self.kubeconfig.display(), error = %e,
                    "kubeconfig changed but does not load; keeping the current API client");
                self.state.lock().client.clone()
            }
        }
    }
}

impl tower::Service<http::Request<kube::client::Body>> for ReloadingClient {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<Self::Response, kube::Error>>
                + Send,
        >,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        // Readiness is the inner client's business (its own buffer), checked in `send`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.current().await.send(req).await })
    }
}

/// A random fraction in [0, 1) (std's per-process random hasher keys; jitter needs no more).
fn random_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Upstream's `nextRotationDeadline`: a jittered 70–90 % into the validity window.
pub fn rotation_deadline(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let total = not_after
        .duration_since(not_before)
        .unwrap_or_default()
        .as_secs_f64();
    not_before + Duration::from_secs_f64(total * (0.7 + 0.2 * jitter.clamp(0.0, 1.0)))
}

/// Renews the certificate behind `cert_dir/kubelet-client-current.pem` before it expires,
/// until `stop` fires.
pub async fn rotate(
    client: kube::Client,
    tracker: Arc<ConnTracker>,
    cert_dir: PathBuf,
    node_name: String,
    mut stop: watch::Receiver<bool>,
) {
    let current = cert_dir.join(CURRENT);
    let mut backoff = Duration::from_secs(5);
    loop {
        let wait = match validity(&current) {
            Ok((nb, na)) => {
                let deadline = rotation_deadline(nb, na, random_fraction());
                tracing::info!(
                    expires_in = ?na.duration_since(SystemTime::now()).unwrap_or_default(),
                    rotate_in = ?deadline.duration_since(SystemTime::now()).unwrap_or_default(),
                    "client certificate rotation scheduled"
                );
                deadline
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the client certificate; renewing now");
                Duration::ZERO
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let r = tokio::select! {
            r = request_certificate(&client, &node_name, ROTATION_WAIT) => r,
            _ = stop.changed() => return,
        };
        match r.and_then(|pem| install(&cert_dir, &pem)) {
            Ok(path) => {
                backoff = Duration::from_secs(5);
                tracing::info!(serial = ?serial(&path), "client certificate rotated");
                // New handshakes present the new pair; close the old connections so every
                // request from now on does one.
                tracker.reload_certificate();
                tracker.close_all();
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "client certificate rotation failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_default_like_upstream() {
        let cfg: crate::KubeletConfig =
            toml::from_str("kubeconfig = \"/k\"\nroot-dir = \"/r\"\n").unwrap();
        assert!(cfg.rotate_certificates && cfg.bootstrap_kubeconfig.is_none());
        assert_eq!(cfg.cert_dir(), PathBuf::from("/r/pki"));
    }

    #[test]
    fn deadline_is_70_to_90_percent() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let na = nb + Duration::from_secs(100);
        assert_eq!(rotation_deadline(nb, na, 0.0), nb + Duration::from_secs(70));
        assert_eq!(rotation_deadline(nb, na, 1.0), nb + Duration::from_secs(90));
        for _ in 0..20 {
            let f = random_fraction();
            assert!((0.0..1.0).contains(&f));
        }
    }

    #[tokio::test]
    async fn the_client_follows_an_externally_replaced_certificate_and_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let pair = || {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(Vec::<String>::new())
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            format!("{}{}", cert.pem(), key.serialize_pem())
        };
        let current = install(dir.path(), &pair()).unwrap();
        let kc = dir.path().join("kubelet.conf");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
                ca_path.display(),
                current.display(),
                current.display()
            ),
        )
        .unwrap();
        let (svc, tracker) = ReloadingClient::new(&kc, Duration::ZERO).await.unwrap();
        svc.current().await;
        assert_eq!(svc.rebuilds(), 0, "nothing changed yet");
        let generation = tracker.generation.load(Ordering::SeqCst);
        // Someone else swaps kubelet-client-current.pem: rebuilt, old connections closed.
        install(dir.path(), &pair()).unwrap();
        svc.current().await;
        assert_eq!(
            svc.rebuilds(),
            1,
            "a replaced certificate must rebuild the client"
        );
        assert!(tracker.generation.load(Ordering::SeqCst) > generation);
        svc.current().await;
        assert_eq!(svc.rebuilds(), 1, "no change, no rebuild");
        // A rewritten CA bundle (CA rotation) is followed as well.
        let tmp = dir.path().join("ca.tmp");
        std::fs::write(&tmp, format!("{}{}", ca.pem(), ca.pem())).unwrap();
        std::fs::rename(&tmp, &ca_path).unwrap();
        svc.current().await;
        assert_eq!(svc.rebuilds(), 2);
        // A broken kubeconfig keeps the current client.
        std::fs::write(&kc, "not: [a kubeconfig").unwrap();
        svc.current().await;
        assert_eq!(svc.rebuilds(), 2);
    }

    #[test]
    fn install_swaps_the_link_and_kubeconfig_validity_follows_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |secs: i64| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            let now = ::time::OffsetDateTime::now_utc();
            p.not_before = now - ::time::Duration::seconds(60);
            p.not_after = now + ::time::Duration::seconds(secs);
            format!(
                "{}{}",
                p.self_signed(&key).unwrap().pem(),
                key.serialize_pem()
            )
        };
        let first = install(dir.path(), &mk(3600)).unwrap();
        let s1 = serial(&first).unwrap();
        let target1 = std::fs::read_link(&first).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let boot: Kubeconfig = serde_yaml::from_str(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: abc.def\n",
        )
        .unwrap();
        let kc = dir.path().join("kubelet.conf");
        write_kubeconfig(&kc, &boot, &first).unwrap();
        assert!(kubeconfig_usable(&kc));
        assert!(kubeconfig_uses_cert(&kc, &first));
        assert!(!kubeconfig_uses_cert(&kc, &dir.path().join("other.pem")));
        let second = install(dir.path(), &mk(3600)).unwrap();
        assert_ne!(serial(&second).unwrap(), s1);
        assert!(
            !dir.path().join(target1).exists(),
            "the replaced pair is removed"
        );
        // An expired certificate makes the kubeconfig unusable (bootstrap again).
        install(dir.path(), &mk(-10)).unwrap();
        assert!(!kubeconfig_usable(&kc));
        assert!(!kubeconfig_usable(&dir.path().join("missing.conf")));
    }
}
