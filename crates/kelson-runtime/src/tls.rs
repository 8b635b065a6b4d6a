//! TLS with rustls (ring provider): server and client configs from PEM files, certificates
//! reloaded without a restart, and a TLS accept stream for `tonic`/`hyper`.
//!
//! Reloading: the server config's certificate comes from [`ReloadingCertResolver`], which on
//! each handshake — at most once per `reload_interval` — stats the certificate and key files
//! and, if either changed (mtime, size or inode, so an atomic rename counts), loads the new
//! pair. A pair that fails to load (half-written, key not matching the certificate) is logged
//! and the old pair keeps being served; the resolver retries once the files change again.
//! Polling on the handshake path instead of an inotify watcher keeps this free of background
//! tasks and works for files replaced by renames or on filesystems without inotify; a stat
//! every few seconds costs nothing. `SIGHUP`/`Reload()` can force a check via
//! [`ReloadingCertResolver::reload`], or of every certificate and CA bundle of the process at
//! once via [`reload_all`] (each reloading type registers itself when created). (A client that resumes a TLS session does not get a
//! certificate at all, so it keeps its session until the ticket expires; new full handshakes
//! see the new certificate.)
//!
//! Trust bundles reload the same way, which is what makes a CA rotation possible without
//! restarts (`kelsonctl pki rotate-ca`: the bundle becomes old+new CA, leaves are re-issued by
//! the new CA, then the old CA is dropped from the bundle): a server's client-CA bundle sits
//! behind a [`ReloadingClientVerifier`] and a client's root store behind a
//! [`ReloadingServerVerifier`]. Each wraps rustls' own WebPKI verifier, rebuilt from the file
//! when its stamp changes (checked on the handshake path at most every reload interval); a
//! bundle that fails to load keeps the previous verifier. The server no longer sends the
//! bundle's subjects as "acceptable CAs" hints (rustls hands them out by reference, which a
//! swappable bundle cannot offer); clients with one certificate send it regardless, and hints
//! would list the old CA too during a rotation anyway.
//!
//! Client certificates reload the same way: [`client_config`] presents its certificate through
//! a [`ReloadingCertResolver`] too (it implements rustls' `ResolvesClientCert`), so every new
//! connection a daemon opens toward a peer uses the current certificate from disk. Connections
//! already established keep the certificate they were set up with, which is fine: TLS checks
//! validity only during the handshake.
//!
//! Expiry: every certificate this module loads (serving, client, CA bundle) is recorded with
//! its `notAfter` in a process-wide table ([`certificate_expiries`]). The table is exposed as the
//! gauge `kelson_certificate_expiry_seconds{file=...}` (Unix time of `notAfter`; alert on
//! `kelson_certificate_expiry_seconds - time() < ...`) in the process-wide metrics registry,
//! as the `CertificateExpiry` property of `io.kelson.Daemon1`, and a certificate that expires
//! within [`EXPIRY_WARNING`] gets a warning with journal field
//! `MESSAGE_ID=`[`MESSAGE_ID_CERT_EXPIRING`] — when it is loaded and again at most once a day
//! while it stays in use (checked on the handshake path, like reloads).
//!
//! Every config is built with an explicit ring `CryptoProvider`, so it does not depend on (or
//! panic over) the process-wide default provider.
//!
//! [`tls_incoming`] accepts TCP connections and runs each handshake in its own task with a
//! timeout, so one slow or hostile client cannot stall accepting; failed handshakes are logged
//! and dropped and never end the stream. Its items are `tokio_rustls::server::TlsStream<TcpStream>`,
//! which tonic (feature `tls-ring`) accepts in `Server::serve_with_incoming`, exposing the
//! peer certificates through `TlsConnectInfo`.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use rustls_pki_types::{ServerName, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
pub use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How often, at most, the certificate files are checked for changes.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(3);
/// How long a client gets to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// ALPN protocol id for HTTP/2 (gRPC).
pub const ALPN_H2: &[u8] = b"h2";

/// Errors from loading TLS material or building configs. Every file error names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid PEM in {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("no certificates found in {path}")]
    NoCertificates { path: PathBuf },
    #[error("no private key found in {path}")]
    NoPrivateKey { path: PathBuf },
    #[error("unusable private key in {path}: {source}")]
    InvalidKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("private key {key} does not match certificate {cert}: {source}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("invalid CA certificate in {path}: {source}")]
    InvalidCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("client certificates are required but no client CA bundle was given")]
    MissingClientCa,
    #[error("cannot build the client-certificate verifier: {0}")]
    Verifier(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A certificate expiring sooner than this is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// journald `MESSAGE_ID` of the "certificate near expiry" warning (see docs/dbus.md).
pub const MESSAGE_ID_CERT_EXPIRING: &str = "8d2b5c7e4f0a4e6b9c1d3e5f7a9b0c21";
/// How often a certificate still near expiry is warned about again.
const REWARN_INTERVAL: Duration = Duration::from_secs(24 * 3600);

struct ExpiryEntry {
    not_after: i64,
    warned: Option<Instant>,
}

fn expiry_table() -> &'static Mutex<BTreeMap<PathBuf, ExpiryEntry>> {
    static TABLE: std::sync::OnceLock<Mutex<BTreeMap<PathBuf, ExpiryEntry>>> =
        std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        // First use: put the gauge into the process-wide registry, so every daemon that serves
        // /metrics exposes it without wiring anything.
        crate::metrics::registry()
            .lock()
            .register_collector(Box::new(ExpiryCollector));
        Mutex::new(BTreeMap::new())
    })
}

/// `notAfter` of a DER certificate as Unix seconds.
pub fn not_after_unix(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Serial number of a DER certificate in lower-case hex (what the tests compare).
pub fn serial_hex(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.raw_serial_as_string().replace(':', ""))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Records the leaf (first) certificate of `path` in the expiry table and warns if it is near
/// expiry. Called by every loader in this module; daemons that load certificates by other means
/// can call it too.
pub fn record_certificate(path: &Path, chain: &[CertificateDer<'_>]) {
    let Some(not_after) = chain.first().and_then(|c| not_after_unix(c)) else {
        return;
    };
    let mut table = expiry_table().lock();
    let changed = table.get(path).is_none_or(|e| e.not_after != not_after);
    if changed {
        table.insert(
            path.to_path_buf(),
            ExpiryEntry {
                not_after,
                warned: None,
            },
        );
    }
    drop(table);
    check_expiry_warnings();
}

/// Every recorded certificate file with its `notAfter` (Unix seconds).
pub fn certificate_expiries() -> BTreeMap<String, i64> {
    expiry_table()
        .lock()
        .iter()
        .map(|(p, e)| (p.display().to_string(), e.not_after))
        .collect()
}

/// Warns (journald `MESSAGE_ID` [`MESSAGE_ID_CERT_EXPIRING`]) about each recorded certificate
/// that expires within [`EXPIRY_WARNING`], at most once a day per certificate.
pub fn check_expiry_warnings() {
    let now = unix_now();
    let mut table = expiry_table().lock();
    for (path, e) in table.iter_mut() {
        let left = e.not_after - now;
        if left >= EXPIRY_WARNING.as_secs() as i64 {
            continue;
        }
        if e.warned.is_some_and(|w| w.elapsed() < REWARN_INTERVAL) {
            continue;
        }
        e.warned = Some(Instant::now());
        tracing::warn!(
            message_id = MESSAGE_ID_CERT_EXPIRING,
            cert_file = %path.display(),
            cert_not_after = e.not_after,
            cert_seconds_left = left,
            "certificate {} {}",
            path.display(),
            if left <= 0 {
                "has expired".to_string()
            } else {
                format!("expires in {}", human_duration(left))
            }
        );
    }
}

fn human_duration(secs: i64) -> String {
    match secs {
        s if s >= 86400 => format!("{} days", s / 86400),
        s if s >= 3600 => format!("{} hours", s / 3600),
        s if s >= 60 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// `kelson_certificate_expiry_seconds{file=...}`, read from the expiry table at scrape time.
#[derive(Debug)]
struct ExpiryCollector;

impl prometheus_client::collector::Collector for ExpiryCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let entries = certificate_expiries();
        if entries.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "kelson_certificate_expiry",
            "Expiry (notAfter, Unix time) of each certificate file this process loaded.",
            Some(&prometheus_client::registry::Unit::Seconds),
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (file, not_after) in entries {
            let labels = [("file".to_string(), file)];
            let g = ConstGauge::new(not_after);
            g.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// All certificates in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}

fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    record_certificate(cert, &chain);
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsError::InvalidKey {
            path: key.to_path_buf(),
            source,
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|source| TlsError::KeyMismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })?;
    Ok(ck)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let certs = load_certs(path)?;
    record_certificate(path, &certs);
    for cert in certs {
        roots.add(cert).map_err(|source| TlsError::InvalidCa {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// Identity of a file's current content, cheap to read: a change in any part means "reload".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

/// What [`reload_all`] can re-check.
trait Reloadable: Send + Sync {
    fn reload_now(&self) -> Result<bool, TlsError>;
    fn file(&self) -> &Path;
}

/// Every reloading certificate and CA bundle alive in the process (weakly: dropping a config
/// drops its entries).
fn reloadables() -> &'static Mutex<Vec<std::sync::Weak<dyn Reloadable>>> {
    static ALL: std::sync::OnceLock<Mutex<Vec<std::sync::Weak<dyn Reloadable>>>> =
        std::sync::OnceLock::new();
    ALL.get_or_init(|| Mutex::new(Vec::new()))
}

fn register<T: Reloadable + 'static>(r: &Arc<T>) {
    let weak: std::sync::Weak<dyn Reloadable> = Arc::downgrade(r) as _;
    let mut all = reloadables().lock();
    all.retain(|w| w.strong_count() > 0);
    all.push(weak);
}

/// Re-checks every certificate/key pair and CA bundle this process serves, presents or trusts
/// right now, regardless of the reload interval — what a daemon does on SIGHUP / `Reload()`.
/// Changed files are loaded (each logs "TLS certificate reloaded" / "CA bundle reloaded"); a
/// file that fails to load is logged and the previous one stays in use. Returns how many were
/// replaced.
pub fn reload_all() -> usize {
    let live: Vec<Arc<dyn Reloadable>> = {
        let mut all = reloadables().lock();
        all.retain(|w| w.strong_count() > 0);
        all.iter().filter_map(|w| w.upgrade()).collect()
    };
    let mut replaced = 0;
    for r in &live {
        match r.reload_now() {
            Ok(true) => replaced += 1,
            Ok(false) => {}
            Err(err) => tracing::warn!(file = %r.file().display(), error = %err,
                "TLS reload failed; keeping the previous one"),
        }
    }
    tracing::info!(
        checked = live.len(),
        replaced,
        "re-checked TLS certificates and CA bundles"
    );
    replaced
}

/// Serves a certificate/key pair from files, reloading it when the files change.
pub struct ReloadingCertResolver {
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    provider: Arc<CryptoProvider>,
    state: RwLock<Loaded>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<Stamp>, Option<Stamp>),
    failed: Option<(Option<Stamp>, Option<Stamp>)>,
    checked: Instant,
}

impl std::fmt::Debug for ReloadingCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCertResolver")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("interval", &self.interval)
            .finish()
    }
}

impl ReloadingCertResolver {
    /// Load the pair now (errors name the file) and check for changes at most every `interval`.
    pub fn new(cert: &Path, key: &Path, interval: Duration) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let stamps = (stamp(cert), stamp(key));
        let ck = load_certified_key(cert, key, &provider)?;
        let r = Arc::new(ReloadingCertResolver {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            interval,
            provider,
            state: RwLock::new(Loaded {
                key: Arc::new(ck),
                stamps,
                failed: None,
                checked: Instant::now(),
            }),
        });
        register(&r);
        Ok(r)
    }

    /// The pair currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.state.read().key.clone()
    }

    /// Check the files now; `Ok(true)` if a new pair was loaded, `Ok(false)` if unchanged.
    /// On error the previous pair stays in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let mut st = self.state.write();
        st.checked = Instant::now();
        let stamps = (stamp(&self.cert), stamp(&self.key));
        if stamps == st.stamps {
            return Ok(false);
        }
        match load_certified_key(&self.cert, &self.key, &self.provider) {
            Ok(ck) => {
                st.key = Arc::new(ck);
                st.stamps = stamps;
                st.failed = None;
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                Ok(true)
            }
            Err(err) => {
                st.failed = Some(stamps);
                Err(err)
            }
        }
    }

    fn maybe_reload(&self) {
        {
            let st = self.state.read();
            if st.checked.elapsed() < self.interval {
                return;
            }
        }
        check_expiry_warnings();
        let stamps = (stamp(&self.cert), stamp(&self.key));
        {
            let mut st = self.state.write();
            // Another handshake may have just checked; and a pair that failed to load is not
            // retried (nor logged again) until the files change once more.
            if st.checked.elapsed() < self.interval
                || stamps == st.stamps
                || st.failed.as_ref() == Some(&stamps)
            {
                st.checked = Instant::now();
                return;
            }
        }
        if let Err(err) = self.reload() {
            tracing::warn!(error = %err, "TLS certificate reload failed; serving the previous one");
        }
    }
}

impl Reloadable for ReloadingCertResolver {
    fn reload_now(&self) -> Result<bool, TlsError> {
        self.reload()
    }
    fn file(&self) -> &Path {
        &self.cert
    }
}

impl Reloadable for ReloadingClientVerifier {
    fn reload_now(&self) -> Result<bool, TlsError> {
        self.reload()
    }
    fn file(&self) -> &Path {
        &self.trust.path
    }
}

impl Reloadable for ReloadingServerVerifier {
    fn reload_now(&self) -> Result<bool, TlsError> {
        self.reload()
    }
    fn file(&self) -> &Path {
        &self.trust.path
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.maybe_reload();
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.maybe_reload();
        let key = self.current();
        // rustls would abort the handshake with a key the server cannot verify; sending no
        // certificate instead gives the server the chance to answer with a proper 401.
        key.key.choose_scheme(sigschemes).is_some().then_some(key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Builds a verifier from a root store (the WebPKI verifiers of rustls).
type BuildVerifier<V> = Box<dyn Fn(Arc<RootCertStore>) -> Result<Arc<V>, TlsError> + Send + Sync>;

/// A CA bundle file and the verifier built from it, rebuilt when the file changes.
struct TrustFile<V: ?Sized> {
    path: PathBuf,
    interval: Duration,
    build: BuildVerifier<V>,
    state: RwLock<TrustState<V>>,
}

struct TrustState<V: ?Sized> {
    current: Arc<V>,
    stamp: Option<Stamp>,
    /// The stamp of a bundle that failed to load: not retried until the file changes again.
    failed: Option<Option<Stamp>>,
    checked: Instant,
}

impl<V: ?Sized> TrustFile<V> {
    fn new(path: &Path, interval: Duration, build: BuildVerifier<V>) -> Result<Self, TlsError> {
        // Stamp first: a change between stamping and reading is seen at the next check.
        let stamp = stamp(path);
        let current = build(Arc::new(load_roots(path)?))?;
        Ok(TrustFile {
            path: path.to_path_buf(),
            interval,
            build,
            state: RwLock::new(TrustState {
                current,
                stamp,
                failed: None,
                checked: Instant::now(),
            }),
        })
    }

    /// The verifier to use now, reloaded first if the bundle changed (rate-limited).
    fn current(&self) -> Arc<V> {
        let due = self.state.read().checked.elapsed() >= self.interval;
        if due {
            if let Err(err) = self.check(false) {
                tracing::warn!(ca_file = %self.path.display(), error = %err,
                    "CA bundle reload failed; trusting the previous one");
            }
        }
        self.state.read().current.clone()
    }

    /// Re-reads the bundle if it changed (or, with `force`, whenever it changed since a failed
    /// attempt too); `Ok(true)` when a new bundle is in use.
    fn check(&self, force: bool) -> Result<bool, TlsError> {
        let now_stamp = stamp(&self.path);
        let mut st = self.state.write();
        if !force && st.checked.elapsed() < self.interval {
            return Ok(false);
        }
        st.checked = Instant::now();
        if now_stamp == st.stamp || (!force && st.failed.as_ref() == Some(&now_stamp)) {
            return Ok(false);
        }
        match load_roots(&self.path).and_then(|roots| (self.build)(Arc::new(roots))) {
            Ok(v) => {
                st.current = v;
                st.stamp = now_stamp;
                st.failed = None;
                tracing::info!(ca_file = %self.path.display(), "CA bundle reloaded");
                Ok(true)
            }
            Err(err) => {
                st.failed = Some(now_stamp);
                Err(err)
            }
        }
    }
}

/// A server's client-certificate verifier over a CA bundle file that is re-read when it
/// changes (see the module docs): rustls' [`WebPkiClientVerifier`] rebuilt per bundle version.
pub struct ReloadingClientVerifier {
    trust: TrustFile<dyn ClientCertVerifier>,
    mandatory: bool,
}

impl std::fmt::Debug for ReloadingClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingClientVerifier")
            .field("ca", &self.trust.path)
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl ReloadingClientVerifier {
    /// Loads `ca` now (errors name the file); `mandatory` rejects clients without a
    /// certificate, otherwise they are let through unauthenticated (a sent one is verified).
    pub fn new(ca: &Path, mandatory: bool, interval: Duration) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let build: BuildVerifier<dyn ClientCertVerifier> = Box::new(move |roots| {
            let vb = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let vb = if mandatory {
                vb
            } else {
                vb.allow_unauthenticated()
            };
            vb.build().map_err(|e| TlsError::Verifier(e.to_string()))
        });
        let v = Arc::new(ReloadingClientVerifier {
            trust: TrustFile::new(ca, interval, build)?,
            mandatory,
        });
        register(&v);
        Ok(v)
    }

    /// Re-reads the bundle now if it changed; `Ok(true)` when a new one is in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.trust.check(true)
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // See the module docs: no hints from a bundle that can change under us.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.trust
            .current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .current()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .current()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.current().supported_verify_schemes()
    }
}

/// A client's server-certificate verifier over a CA bundle file that is re-read when it
/// changes: rustls' [`WebPkiServerVerifier`] rebuilt per bundle version.
pub struct ReloadingServerVerifier {
    trust: TrustFile<dyn ServerCertVerifier>,
}

impl std::fmt::Debug for ReloadingServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingServerVerifier")
            .field("ca", &self.trust.path)
            .finish()
    }
}

impl ReloadingServerVerifier {
    /// Loads `ca` now (errors name the file).
    pub fn new(ca: &Path, interval: Duration) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let build: BuildVerifier<dyn ServerCertVerifier> = Box::new(move |roots| {
            let v = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            Ok(v as Arc<dyn ServerCertVerifier>)
        });
        let v = Arc::new(ReloadingServerVerifier {
            trust: TrustFile::new(ca, interval, build)?,
        });
        register(&v);
        Ok(v)
    }

    /// Re-reads the bundle now if it changed; `Ok(true)` when a new one is in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.trust.check(true)
    }
}

impl ServerCertVerifier for ReloadingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.trust.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .current()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .current()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.current().supported_verify_schemes()
    }
}

/// Server config with a reloading certificate (checked every [`DEFAULT_RELOAD_INTERVAL`]).
///
/// `client_ca` enables client-certificate verification against that bundle; with
/// `require_client_cert` a client without a valid certificate is rejected, without it the
/// certificate is optional (but verified if sent). `alpn` is usually `&[ALPN_H2]` for gRPC.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    require_client_cert: bool,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = ReloadingCertResolver::new(cert, key, DEFAULT_RELOAD_INTERVAL)?;
    server_config_with_resolver(resolver, client_ca, require_client_cert, alpn)
}

/// Like [`server_config`] with a resolver the caller keeps (to force reloads on SIGHUP or use
/// another interval).
pub fn server_config_with_resolver(
    resolver: Arc<ReloadingCertResolver>,
    client_ca: Option<&Path>,
    require_client_cert: bool,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(ReloadingClientVerifier::new(
            ca,
            require_client_cert,
            DEFAULT_RELOAD_INTERVAL,
        )?),
        None if require_client_cert => return Err(TlsError::MissingClientCa),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Client config trusting `ca`, presenting `cert`/`key` if both are given. The pair and the
/// CA bundle are re-read when the files change (checked at most every
/// [`DEFAULT_RELOAD_INTERVAL`], on new connections), so a renewed client certificate or a
/// rotated CA is used without a restart.
pub fn client_config(
    ca: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = ReloadingServerVerifier::new(ca, DEFAULT_RELOAD_INTERVAL)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config =
        match (cert, key) {
            (Some(cert), Some(key)) => builder.with_client_cert_resolver(
                ReloadingCertResolver::new(cert, key, DEFAULT_RELOAD_INTERVAL)?,
            ),
            _ => builder.with_no_client_auth(),
        };
    Ok(Arc::new(config))
}

/// A stream of established TLS connections (see [`tls_incoming`]).
pub struct TlsIncoming {
    rx: mpsc::Receiver<io::Result<TlsStream<TcpStream>>>,
    task: JoinHandle<()>,
    local_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for TlsIncoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIncoming")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl TlsIncoming {
    /// The listener's address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
}

impl futures::Stream for TlsIncoming {
    type Item = io::Result<TlsStream<TcpStream>>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accept TCP connections on `listener` and hand out those that complete a TLS handshake.
/// Use with `tonic::transport::Server::serve_with_incoming`. Items are never `Err`: accept
/// and handshake failures are logged and skipped (the `io::Result` item type is what the
/// servers expect).
pub fn tls_incoming(listener: TcpListener, config: Arc<ServerConfig>) -> TlsIncoming {
    // A small queue: established connections wait here only until the server polls.
    let (tx, rx) = mpsc::channel(32);
    let local_addr = listener.local_addr().ok();
    let acceptor = TlsAcceptor::from(config);
    // Bound concurrent handshakes so a flood of idle connections cannot exhaust memory.
    let permits = Arc::new(tokio::sync::Semaphore::new(512));
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => r,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    TlsIncoming {
        rx,
        task,
        local_addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, days: i64) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        // Through a rename, as renewals do, so the reload sees a new inode.
        let tmp = dir.join("tmp");
        std::fs::write(&tmp, cert.pem()).unwrap();
        std::fs::rename(&tmp, &c).unwrap();
        std::fs::write(&tmp, key.serialize_pem()).unwrap();
        std::fs::rename(&tmp, &k).unwrap();
        (c, k)
    }

    /// A CA and a leaf for 127.0.0.1 issued by it (serverAuth + clientAuth).
    fn ca_and_leaf(name: &str) -> (String, CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("ca-{name}"));
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        leaf.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = leaf
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &ca_cert, &ca_key)
            .unwrap();
        (ca_cert.pem(), leaf.der().clone())
    }

    #[test]
    fn trust_bundles_reload_for_servers_and_clients() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("ca.crt");
        let write = |pems: &[&str]| {
            let tmp = dir.path().join("ca.tmp");
            std::fs::write(&tmp, pems.concat()).unwrap();
            std::fs::rename(&tmp, &bundle).unwrap();
        };
        let (old_ca, old_leaf) = ca_and_leaf("old");
        let (new_ca, new_leaf) = ca_and_leaf("new");
        write(&[&old_ca]);
        let servers = ReloadingClientVerifier::new(&bundle, true, Duration::ZERO).unwrap();
        let clients = ReloadingServerVerifier::new(&bundle, Duration::ZERO).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let now = UnixTime::now();
        let accepts = |leaf: &CertificateDer<'_>| {
            let s = servers.verify_client_cert(leaf, &[], now).is_ok();
            let c = clients
                .verify_server_cert(leaf, &[], &name, &[], now)
                .is_ok();
            assert_eq!(s, c, "server and client side disagree");
            s
        };
        assert!(accepts(&old_leaf) && !accepts(&new_leaf));
        // Rotation phase 1: both CAs trusted.
        write(&[&old_ca, &new_ca]);
        assert!(accepts(&old_leaf) && accepts(&new_leaf));
        // A broken bundle keeps the previous verifier.
        write(&["garbage"]);
        assert!(accepts(&old_leaf) && accepts(&new_leaf));
        // Phase 3: only the new CA.
        write(&[&new_ca]);
        assert!(!accepts(&old_leaf) && accepts(&new_leaf));
        assert!(servers.client_auth_mandatory());
    }

    #[test]
    fn expiry_is_recorded_exported_and_client_certs_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "client", 10);
        let resolver = ReloadingCertResolver::new(&cert, &key, Duration::ZERO).unwrap();
        let first = serial_hex(resolver.current().cert[0].as_ref()).unwrap();
        let exp = certificate_expiries();
        let at = exp[&cert.display().to_string()];
        let left = at - unix_now();
        assert!((9 * 86400..=10 * 86400).contains(&left), "{left}");

        let text = crate::metrics::encode(&crate::metrics::registry().lock()).unwrap();
        let line = format!(
            "kelson_certificate_expiry_seconds{{file=\"{}\"}} {at}",
            cert.display()
        );
        assert!(text.contains(&line), "{line} not in\n{text}");

        // A renewed pair is picked up by the client side without rebuilding the config.
        write_pair(dir.path(), "client", 20);
        let schemes = [rustls::SignatureScheme::ECDSA_NISTP256_SHA256];
        let now = ResolvesClientCert::resolve(&*resolver, &[], &schemes).unwrap();
        let second = serial_hex(now.cert[0].as_ref()).unwrap();
        assert_ne!(first, second, "client certificate was not reloaded");
        let left = certificate_expiries()[&cert.display().to_string()] - unix_now();
        assert!(left > 19 * 86400, "{left}");
    }
}
