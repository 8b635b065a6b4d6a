//! Certificates for Kelson: a small private CA and the leaf certificates its components use.
//!
//! Design:
//! - Two self-signed CAs per cluster, ECDSA P-256, 10 years: the cluster CA (`ca.crt`/`ca.key`,
//!   CN `kelson-ca`) for the API server, its clients and the kubelets, and the store CA
//!   (`store-ca.crt`/`store-ca.key`, CN `kelson-store-ca`, kubeadm's `etcd/ca`) for the store's
//!   serving, peer and client certificates only ([`init_cluster_pki`]). Separate CAs are CIS
//!   2.7: kelson-kv trusts only the store CA, so no Kubernetes identity (a kubelet's or an
//!   admin's certificate) is a store credential, and a store client certificate is no
//!   Kubernetes identity. A directory with the store's files alone ([`init_store_pki`], as
//!   tests and standalone stores use) has one CA, `ca.crt`, which is then the store CA.
//! - Leaves are ECDSA P-256, 1 year by default, and carry an Authority Key Identifier so that
//!   "was this leaf issued by this CA?" can be answered by comparing key identifiers without a
//!   signature library ([`issued_by`]).
//! - Everything is PEM on disk, written atomically (temp file in the same directory, fsync,
//!   rename, fsync of the directory) so that a crash never leaves a half-written key, with the
//!   private key at mode 0600 and the certificate at 0644.
//! - [`init_store_pki`] is idempotent: a file set that is still valid (parses, key matches the
//!   certificate, issued by the current CA, not near expiry, covers the requested names) is kept
//!   byte-for-byte, so running `kelsonctl pki init` or `kelsonctl up` again never rotates
//!   credentials that running daemons and clients already trust.
//! - [`cert_info`] reads a certificate for status and expiry checks.
//!
//! rcgen builds and signs certificates; x509-parser reads existing ones back.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Validity of a generated CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default validity of a leaf certificate.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A certificate that expires sooner than this is reissued by [`init_store_pki`].
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Common name of the client certificate the API server (and admins) use against the store.
pub const KV_CLIENT_CN: &str = "kube-apiserver-etcd-client";
/// File base name of the store CA in a cluster PKI directory (`store-ca.crt`/`store-ca.key`),
/// the same name `kelsonctl cluster render` gives each control-plane machine's copy.
pub const STORE_CA_BASENAME: &str = "store-ca";
/// Common name of the cluster CA.
pub const CLUSTER_CA_CN: &str = "kelson-ca";
/// Common name of the store CA.
pub const STORE_CA_CN: &str = "kelson-store-ca";

/// Errors of this crate; each names the file or step that failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating or signing a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: not a PEM certificate: {reason}")]
    BadCert { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("invalid request: {0}")]
    BadRequest(String),
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.to_path_buf();
    move |source| PkiError::Io { op, path, source }
}

/// What a leaf certificate may be used for (its Extended Key Usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server only (serverAuth).
    Server,
    /// TLS client only (clientAuth).
    Client,
    /// Both ends of a connection: raft peers, and servers that also dial out (serverAuth + clientAuth).
    Peer,
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct CertRequest {
    pub common_name: String,
    pub organization: Option<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub usage: Usage,
    pub validity: Duration,
}

impl CertRequest {
    /// A request with no SANs, no organization and the default 1-year validity.
    pub fn new(common_name: impl Into<String>, usage: Usage) -> Self {
        CertRequest {
            common_name: common_name.into(),
            organization: None,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage,
            validity: LEAF_VALIDITY,
        }
    }
}

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    // Never print private keys into logs or test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl CertPair {
    /// Writes `<dir>/<basename>.crt` (0644) and `<dir>/<basename>.key` (0600), each atomically.
    /// The key is written first, so a crash in between leaves a key without a matching cert,
    /// which [`init_store_pki`] detects and repairs.
    pub fn write_pair(&self, dir: &Path, basename: &str) -> Result<(PathBuf, PathBuf)> {
        if basename.is_empty() || basename.contains('/') {
            return Err(PkiError::BadRequest(format!("bad basename {basename:?}")));
        }
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let cert = dir.join(format!("{basename}.crt"));
        let key = dir.join(format!("{basename}.key"));
        write_atomic(&key, self.key_pem.as_bytes(), 0o600)?;
        write_atomic(&cert, self.cert_pem.as_bytes(), 0o644)?;
        Ok((cert, key))
    }
}

/// Writes `data` to `path` through a temp file in the same directory, fsyncs and renames it,
/// then fsyncs the directory so the rename itself is durable.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| PkiError::BadRequest(format!("no file name in {}", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            // Created with the final mode so a key is never readable by others, not even briefly.
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        // The umask may have narrowed the mode at creation; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", &tmp))?;
        f.write_all(data).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming into", path))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A certificate authority that can issue leaves.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    key: KeyPair,
    /// The CA re-materialised as an rcgen certificate: rcgen takes the issuer's name and key
    /// identifier from it when signing. For a loaded CA this is a re-signature of the same
    /// name and key, never written anywhere; leaves chain to the original `cert_pem`.
    issuer: rcgen::Certificate,
    /// Subject Key Identifier of the CA, matched against leaves' Authority Key Identifier.
    key_id: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish()
    }
}

impl Ca {
    /// A new self-signed ECDSA P-256 CA valid for [`CA_VALIDITY`].
    pub fn generate(common_name: &str) -> Result<Ca> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Kelson");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (nb, na) = validity_window(CA_VALIDITY);
        params.not_before = nb;
        params.not_after = na;
        let cert = params.self_signed(&key)?;
        let key_id = cert.key_identifier();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key,
            issuer: cert,
            key_id,
        })
    }

    /// Loads `<dir>/ca.crt` and `<dir>/ca.key`.
    pub fn load(dir: &Path) -> Result<Ca> {
        Ca::load_files(&dir.join("ca.crt"), &dir.join("ca.key"))
    }

    /// Loads a CA from its certificate and key files.
    pub fn load_files(cert_path: &Path, key_path: &Path) -> Result<Ca> {
        let (cert_path, key_path) = (cert_path.to_path_buf(), key_path.to_path_buf());
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err("reading", &cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err("reading", &key_path))?;
        Ca::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            PkiError::Invalid { reason, .. } | PkiError::BadCert { reason, .. } => {
                PkiError::Invalid {
                    path: cert_path.clone(),
                    reason,
                }
            }
            other => other,
        })
    }

    /// A CA from PEM text (certificate and its private key).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let invalid = |reason: String| PkiError::Invalid {
            path: PathBuf::from("<ca pem>"),
            reason,
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(format!("CA key: {e}")))?;
        let der = pem_to_der(cert_pem).map_err(invalid)?;
        let (_, x509) =
            X509Certificate::from_der(&der).map_err(|e| invalid(format!("CA certificate: {e}")))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid("CA key does not match the CA certificate".into()));
        }
        if !x509.is_ca() {
            return Err(invalid("certificate is not a CA".into()));
        }
        let params = CertificateParams::from_ca_cert_der(&der.clone().into())?;
        let issuer = params.self_signed(&key)?;
        let key_id = issuer.key_identifier();
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            key,
            issuer,
            key_id,
        })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's own certificate and key, e.g. to write with [`CertPair::write_pair`].
    pub fn pair(&self) -> CertPair {
        CertPair {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    /// Issues a leaf certificate with a fresh ECDSA P-256 key.
    pub fn issue(&self, req: &CertRequest) -> Result<CertPair> {
        if req.common_name.is_empty() {
            return Err(PkiError::BadRequest("empty common name".into()));
        }
        if req.validity.is_zero() {
            return Err(PkiError::BadRequest("zero validity".into()));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut sans: Vec<String> = req.dns_names.clone();
        sans.extend(req.ip_addresses.iter().map(|ip| ip.to_string()));
        // rcgen turns strings that parse as IP addresses into IP SANs, the rest into DNS names.
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, req.common_name.as_str());
        if let Some(org) = &req.organization {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org.as_str());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match req.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Peer => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        let (nb, na) = validity_window(req.validity);
        params.not_before = nb;
        params.not_after = na;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Whether `cert_pem` carries this CA's key identifier as its Authority Key Identifier and
    /// this CA's subject as its issuer.
    fn issued(&self, leaf: &X509Certificate<'_>) -> bool {
        let Ok(ca_der) = pem_to_der(&self.cert_pem) else {
            return false;
        };
        let Ok((_, ca)) = X509Certificate::from_der(&ca_der) else {
            return false;
        };
        if leaf.issuer() != ca.subject() {
            return false;
        }
        authority_key_id(leaf).is_some_and(|id| id == self.key_id.as_slice())
    }

    /// Whether the certificate (PEM) was issued by this CA (see [`issued_by`]).
    pub fn issued_pem(&self, leaf_pem: &str) -> bool {
        issued_by(leaf_pem, &self.cert_pem)
    }
}

fn authority_key_id<'a>(x: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    x.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0)
            }
            _ => None,
        })
}

fn subject_key_id<'a>(x: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    x.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        })
}

/// Whether the first certificate of `leaf_pem` was issued by the CA certificate `ca_pem`: the
/// leaf's issuer is the CA's subject and, when both carry key identifiers, the leaf's
/// Authority Key Identifier is the CA's Subject Key Identifier (which tells apart two CAs of
/// the same name, e.g. a regenerated one). Names and identifiers only, no signature check:
/// this answers "which of our CAs is this from", not "is this trustworthy" — TLS peers verify.
pub fn issued_by(leaf_pem: &str, ca_pem: &str) -> bool {
    let (Ok(leaf_der), Ok(ca_der)) = (pem_to_der(leaf_pem), pem_to_der(ca_pem)) else {
        return false;
    };
    let (Ok((_, leaf)), Ok((_, ca))) = (
        X509Certificate::from_der(&leaf_der),
        X509Certificate::from_der(&ca_der),
    ) else {
        return false;
    };
    if leaf.issuer().as_raw() != ca.subject().as_raw() {
        return false;
    }
    match (authority_key_id(&leaf), subject_key_id(&ca)) {
        (Some(a), Some(k)) => a == k,
        _ => true,
    }
}

/// Backdates `not_before` by an hour so that peers with slightly skewed clocks accept a
/// certificate issued moments ago.
fn validity_window(validity: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    let nb = now - time::Duration::hours(1);
    let na = now + time::Duration::seconds(validity.as_secs().min(i64::MAX as u64) as i64);
    (nb, na)
}

fn pem_to_der(pem_text: &str) -> std::result::Result<Vec<u8>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|e| format!("bad PEM: {e}"))?;
    if pem.label != "CERTIFICATE" {
        return Err(format!("PEM block is {:?}, not CERTIFICATE", pem.label));
    }
    Ok(pem.contents)
}

/// Paths of a PKI directory, as written by [`init_cluster_pki`] or [`init_store_pki`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    pub dir: PathBuf,
    /// The cluster CA (`ca.crt`/`ca.key`). In a store-only directory ([`PkiPaths::under`])
    /// this is also the store CA.
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// The CA that issues the store's certificates and that kelson-kv trusts for clients and
    /// peers (`--trusted-ca-file`, `--peer-trusted-ca-file`, the API server's `--etcd-cafile`):
    /// `store-ca.crt` in a cluster directory, `ca.crt` in a store-only one.
    pub store_ca_cert: PathBuf,
    pub store_ca_key: PathBuf,
    /// kelson-kv's client-facing certificate (serverAuth + clientAuth).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// kelson-kv's raft peer certificate (serverAuth + clientAuth).
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
    /// Client certificate for etcdctl, kelsonctl and the API server (CN [`KV_CLIENT_CN`]).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl PkiPaths {
    /// The paths of a store-only directory under `dir` (one CA, `ca.crt`, for the store),
    /// without touching the disk.
    pub fn under(dir: &Path) -> PkiPaths {
        PkiPaths {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            store_ca_cert: dir.join("ca.crt"),
            store_ca_key: dir.join("ca.key"),
            server_cert: dir.join("kv-server.crt"),
            server_key: dir.join("kv-server.key"),
            peer_cert: dir.join("kv-peer.crt"),
            peer_key: dir.join("kv-peer.key"),
            client_cert: dir.join("kv-client.crt"),
            client_key: dir.join("kv-client.key"),
        }
    }

    /// The paths of a cluster directory under `dir`: the cluster CA in `ca.*`, the store CA in
    /// `store-ca.*` (see the module docs), without touching the disk.
    pub fn cluster(dir: &Path) -> PkiPaths {
        PkiPaths {
            store_ca_cert: dir.join(format!("{STORE_CA_BASENAME}.crt")),
            store_ca_key: dir.join(format!("{STORE_CA_BASENAME}.key")),
            ..PkiPaths::under(dir)
        }
    }

    /// Whether the store has a CA of its own here (a cluster layout).
    pub fn has_separate_store_ca(&self) -> bool {
        self.store_ca_cert != self.ca_cert
    }
}

/// The machine's hostname, from the kernel; `None` if it cannot be read.
pub fn hostname() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Creates (or completes) a store-only PKI in `dir`: one CA `ca.*` and `kv-server.*`,
/// `kv-peer.*`, `kv-client.*` issued by it. Server and peer certificates name localhost,
/// 127.0.0.1, ::1, the hostname and every entry of `hosts` (IP addresses become IP SANs).
/// Valid existing files are kept; only missing, broken, expiring or insufficient ones are
/// (re)issued. A new CA reissues all leaves.
pub fn init_store_pki(dir: &Path, hosts: &[String]) -> Result<PkiPaths> {
    let paths = PkiPaths::under(dir);
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let ca = ensure_ca(&paths.ca_cert, &paths.ca_key, CLUSTER_CA_CN)?;
    store_leaves(&ca, dir, hosts)?;
    Ok(paths)
}

/// Creates (or completes) a cluster's PKI in `dir`: the cluster CA `ca.*`, the store CA
/// `store-ca.*`, and the store's `kv-server.*`, `kv-peer.*`, `kv-client.*` issued by the store
/// CA (names as in [`init_store_pki`]). The cluster CA's leaves (API server, clients, kubelets)
/// are the callers' (kelsonctl). Idempotent like [`init_store_pki`]; a directory from before
/// the store had its own CA (store leaves issued by `ca.crt`) gets a store CA and new store
/// leaves, so the store stops trusting the cluster CA.
pub fn init_cluster_pki(dir: &Path, hosts: &[String]) -> Result<PkiPaths> {
    let paths = PkiPaths::cluster(dir);
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    ensure_ca(&paths.ca_cert, &paths.ca_key, CLUSTER_CA_CN)?;
    let store_ca = ensure_ca(&paths.store_ca_cert, &paths.store_ca_key, STORE_CA_CN)?;
    store_leaves(&store_ca, dir, hosts)?;
    Ok(paths)
}

/// Loads the CA at `cert`/`key`, or creates it when neither file exists.
fn ensure_ca(cert: &Path, key: &Path, cn: &str) -> Result<Ca> {
    if cert.exists() || key.exists() {
        // Never silently replace an existing CA: everything issued by it would stop working.
        let ca = Ca::load_files(cert, key)?;
        let info = cert_info(cert)?;
        if info.expires_within(Duration::ZERO) {
            return Err(PkiError::Invalid {
                path: cert.to_path_buf(),
                reason: format!(
                    "CA expired at {}; move the pki directory away to create a new one",
                    info.not_after
                ),
            });
        }
        return Ok(ca);
    }
    let ca = Ca::generate(cn)?;
    let dir = cert.parent().unwrap_or(Path::new("."));
    let base = cert
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| PkiError::BadRequest(format!("bad CA path {}", cert.display())))?;
    ca.pair().write_pair(dir, base)?;
    Ok(ca)
}

/// `kv-server`, `kv-peer` and `kv-client` in `dir`, issued by `ca`.
fn store_leaves(ca: &Ca, dir: &Path, hosts: &[String]) -> Result<()> {
    let mut dns = vec!["localhost".to_string()];
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    if let Some(h) = hostname() {
        dns.push(h);
    }
    for h in hosts {
        let h = h.trim();
        if h.is_empty() {
            continue;
        }
        match h.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(h.to_string()),
        }
    }
    let mut seen = std::collections::HashSet::new();
    dns.retain(|d| seen.insert(d.clone()));
    let mut seen = std::collections::HashSet::new();
    ips.retain(|i| seen.insert(*i));

    let host_req = |cn: &str, usage| CertRequest {
        dns_names: dns.clone(),
        ip_addresses: ips.clone(),
        ..CertRequest::new(cn, usage)
    };
    let server = host_req("kelson-kv", Usage::Peer);
    let peer = host_req("kelson-kv-peer", Usage::Peer);
    let client = CertRequest {
        organization: Some("system:masters".into()),
        ..CertRequest::new(KV_CLIENT_CN, Usage::Client)
    };
    for (base, req) in [
        ("kv-server", server),
        ("kv-peer", peer),
        ("kv-client", client),
    ] {
        ensure_leaf(ca, dir, base, &req)?;
    }
    Ok(())
}

/// Issues `<base>.crt/.key` unless the existing pair is still good for `req`.
fn ensure_leaf(ca: &Ca, dir: &Path, base: &str, req: &CertRequest) -> Result<()> {
    match leaf_problem(ca, dir, base, req) {
        None => {
            tracing::debug!(cert = base, "keeping existing certificate");
            Ok(())
        }
        Some(why) => {
            tracing::info!(cert = base, reason = %why, "issuing certificate");
            ca.issue(req)?.write_pair(dir, base).map(|_| ())
        }
    }
}

/// Why the existing pair cannot be kept, or `None` if it can.
fn leaf_problem(ca: &Ca, dir: &Path, base: &str, req: &CertRequest) -> Option<String> {
    let cert_path = dir.join(format!("{base}.crt"));
    let key_path = dir.join(format!("{base}.key"));
    let (Ok(cert_pem), Ok(key_pem)) = (
        fs::read_to_string(&cert_path),
        fs::read_to_string(&key_path),
    ) else {
        return Some("missing".into());
    };
    let Ok(der) = pem_to_der(&cert_pem) else {
        return Some("unreadable certificate".into());
    };
    let Ok((_, x509)) = X509Certificate::from_der(&der) else {
        return Some("unparsable certificate".into());
    };
    let Ok(key) = KeyPair::from_pem(&key_pem) else {
        return Some("unreadable key".into());
    };
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Some("key does not match certificate".into());
    }
    if !ca.issued(&x509) {
        return Some("not issued by the current CA".into());
    }
    let info = info_from_x509(&x509);
    if info.expires_within(RENEW_BEFORE) {
        return Some(format!("expires at {}", info.not_after));
    }
    let wanted = req
        .dns_names
        .iter()
        .cloned()
        .chain(req.ip_addresses.iter().map(|i| i.to_string()));
    for name in wanted {
        if !info.sans.contains(&name) {
            return Some(format!("does not cover {name}"));
        }
    }
    None
}

/// What [`cert_info`] reports about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// RFC 4514 form, e.g. `CN=kelson-kv`.
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses (IPs in their usual text form).
    pub sans: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
}

impl CertInfo {
    /// True if the certificate is expired or expires within `window` from now.
    pub fn expires_within(&self, window: Duration) -> bool {
        let window = time::Duration::seconds(window.as_secs().min(i64::MAX as u64) as i64);
        self.not_after <= OffsetDateTime::now_utc() + window
    }
}

/// Reads the first certificate of a PEM file.
pub fn cert_info(path: &Path) -> Result<CertInfo> {
    let pem = fs::read_to_string(path).map_err(io_err("reading", path))?;
    let der = pem_to_der(&pem).map_err(|reason| PkiError::BadCert {
        path: path.to_path_buf(),
        reason,
    })?;
    let (_, x509) = X509Certificate::from_der(&der).map_err(|e| PkiError::BadCert {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(info_from_x509(&x509))
}

fn info_from_x509(x509: &X509Certificate<'_>) -> CertInfo {
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = x509.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(d.to_string()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        sans.push(IpAddr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        sans.push(IpAddr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    CertInfo {
        subject: x509.subject().to_string(),
        issuer: x509.issuer().to_string(),
        sans,
        not_before: x509.validity().not_before.to_datetime(),
        not_after: x509.validity().not_after.to_datetime(),
        is_ca: x509.is_ca(),
    }
}

/// Reads every certificate of a PEM file, for building rustls configurations.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).map_err(io_err("reading", path))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadCert {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::BadCert {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1) of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = fs::read(path).map_err(io_err("reading", path))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| PkiError::Invalid {
        path: path.to_path_buf(),
        reason: format!("no usable private key: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_sets_names_usage_and_validity() {
        let ca = Ca::generate("test-ca").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let req = CertRequest {
            dns_names: vec!["node1.example".into()],
            ip_addresses: vec!["10.1.2.3".parse().unwrap(), "::1".parse().unwrap()],
            organization: Some("org".into()),
            ..CertRequest::new("leaf", Usage::Server)
        };
        let (crt, _) = ca
            .issue(&req)
            .unwrap()
            .write_pair(dir.path(), "leaf")
            .unwrap();
        let info = cert_info(&crt).unwrap();
        assert!(info.subject.contains("CN=leaf"), "{}", info.subject);
        assert!(info.subject.contains("O=org"), "{}", info.subject);
        assert!(info.issuer.contains("CN=test-ca"), "{}", info.issuer);
        assert_eq!(info.sans, vec!["node1.example", "10.1.2.3", "::1"]);
        assert!(!info.is_ca);
        assert!(!info.expires_within(Duration::from_secs(300 * 24 * 3600)));
        assert!(info.expires_within(Duration::from_secs(400 * 24 * 3600)));
    }

    #[test]
    fn load_round_trips_and_keeps_issuing() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("c").unwrap();
        ca.pair().write_pair(dir.path(), "ca").unwrap();
        let loaded = Ca::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.key_id, ca.key_id);
        let leaf = loaded.issue(&CertRequest::new("x", Usage::Client)).unwrap();
        let der = pem_to_der(&leaf.cert_pem).unwrap();
        let (_, x) = X509Certificate::from_der(&der).unwrap();
        assert!(
            ca.issued(&x),
            "leaf issued by the loaded CA chains to the original"
        );
        let other = Ca::generate("c").unwrap();
        assert!(!other.issued(&x), "same name, other key: not issued");
    }

    #[test]
    fn load_rejects_mismatched_key_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ca::generate("a").unwrap();
        let b = Ca::generate("b").unwrap();
        CertPair {
            cert_pem: a.cert_pem().into(),
            key_pem: b.pair().key_pem,
        }
        .write_pair(dir.path(), "ca")
        .unwrap();
        let err = Ca::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        fs::write(dir.path().join("ca.crt"), "garbage").unwrap();
        assert!(Ca::load(dir.path()).is_err());
        assert!(cert_info(&dir.path().join("ca.crt")).is_err());
        assert!(cert_info(&dir.path().join("missing.crt")).is_err());
    }

    #[test]
    fn bad_requests_are_errors() {
        let ca = Ca::generate("c").unwrap();
        assert!(ca.issue(&CertRequest::new("", Usage::Client)).is_err());
        let zero = CertRequest {
            validity: Duration::ZERO,
            ..CertRequest::new("x", Usage::Client)
        };
        assert!(ca.issue(&zero).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(ca.pair().write_pair(dir.path(), "a/b").is_err());
    }
}
