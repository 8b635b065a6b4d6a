//! The CSR signer: issues certificates for approved `CertificateSigningRequest`s of the
//! built-in `kubernetes.io/` signers, as upstream's `csrsigning` controller.
//!
//! Signers served: `kube-apiserver-client`, `kube-apiserver-client-kubelet` and
//! `kubelet-serving`, all with the one CA given by `--cluster-signing-cert-file` /
//! `--cluster-signing-key-file` (upstream can split them per signer; one cluster CA is what the
//! API server trusts for client certificates here). A request is signed once it is Approved
//! (and neither Denied nor Failed) and has no certificate yet; one that breaks its signer's
//! rules (upstream's `ValidateKubeletClientCSR` / `ValidateKubeletServingCSR` /
//! `validAPIServerClientUsages`, with upstream's messages) gets a `Failed` condition with reason
//! `SignerValidationFailure` instead, so it is not retried forever.
//!
//! The certificate: subject, SANs and public key from the request (rcgen re-reads them from the
//! PKCS#10 and checks its signature), key usage and extended key usage from `spec.usages`,
//! never a CA, a random serial. Lifetime = min(`spec.expirationSeconds`,
//! `--cluster-signing-duration`), capped at the CA's own expiry; `notBefore` is backdated by
//! min(5 min, lifetime/2) for clock skew (upstream backdates 5 min; halving it for short
//! lifetimes keeps a 30 s test certificate from starting out mostly expired, which would make a
//! kubelet renew at once). It is written through `/status` (PUT with the resourceVersion read,
//! so a concurrent signer loses with a 409 instead of signing twice).
//!
//! The CA is loaded from its files and re-loaded when they change ([`ReloadingSigner`]: the
//! files' modification times and sizes are compared before each signing; a pair that fails to
//! load — e.g. caught half-written, or a key that does not match — keeps the previous CA), so
//! `kelsonctl pki rotate-ca --phase reissue` takes effect without a restart, like upstream's
//! dynamic serving content. rcgen needs the issuer as a certificate object; like `kelson-pki`
//! we re-materialise it from the CA's DER with the CA key: same name and key identifier, so
//! leaves chain to the original CA certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use ::time::OffsetDateTime;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use x509_parser::prelude::*;

use super::{is_status, Controller, Ctx, Result};
use crate::informer::key_of;
use crate::queue::WorkQueue;

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
pub const API_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

/// Upstream's backdate for clock skew.
const BACKDATE: Duration = Duration::from_secs(300);

/// Why a CA could not be loaded or a request could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The signing CA.
pub struct Signer {
    key: KeyPair,
    issuer: rcgen::Certificate,
    not_after: OffsetDateTime,
    /// `--cluster-signing-duration`.
    pub max_duration: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("not_after", &self.not_after)
            .field("max_duration", &self.max_duration)
            .finish()
    }
}

impl Signer {
    /// Loads the CA certificate and key (PEM files).
    pub fn load(cert: &Path, key: &Path, max_duration: Duration) -> Result<Signer, SignerError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| SignerError::Io {
                path: p.display().to_string(),
                source,
            })
        };
        Signer::from_pem(&read(cert)?, &read(key)?, max_duration)
    }

    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        max_duration: Duration,
    ) -> Result<Signer, SignerError> {
        let inv = |m: String| SignerError::Invalid(m);
        let key = KeyPair::from_pem(key_pem).map_err(|e| inv(format!("signing key: {e}")))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| inv(format!("signing certificate: {e}")))?;
        let (_, x509) = X509Certificate::from_der(&pem.contents)
            .map_err(|e| inv(format!("signing certificate: {e}")))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(inv(
                "the signing key does not match the signing certificate".into(),
            ));
        }
        if !x509.is_ca() {
            return Err(inv("the signing certificate is not a CA".into()));
        }
        let not_after = x509.validity().not_after.to_datetime();
        let params = CertificateParams::from_ca_cert_der(&pem.contents.clone().into())
            .map_err(|e| inv(format!("signing certificate: {e}")))?;
        let issuer = params
            .self_signed(&key)
            .map_err(|e| inv(format!("signing certificate: {e}")))?;
        Ok(Signer {
            key,
            issuer,
            not_after,
            max_duration,
        })
    }

    /// Signs `csr` (PEM) for `usages`, valid for `requested` (capped as described above).
    /// Returns the certificate PEM.
    pub fn sign(
        &self,
        csr_pem: &str,
        usages: &[String],
        requested: Option<Duration>,
        now: OffsetDateTime,
    ) -> Result<String, SignerError> {
        let inv = |m: String| SignerError::Invalid(m);
        let mut req = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| inv(format!("parsing the certificate request: {e}")))?;
        let ttl = requested
            .map_or(self.max_duration, |r| r.min(self.max_duration))
            .max(Duration::from_secs(1));
        let backdate = BACKDATE.min(ttl / 2);
        let p = &mut req.params;
        p.not_before = now - backdate;
        p.not_after = (now + ttl).min(self.not_after);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = usages
            .iter()
            .filter_map(|u| match u.as_str() {
                "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
                "content commitment" => Some(KeyUsagePurpose::ContentCommitment),
                "data encipherment" => Some(KeyUsagePurpose::DataEncipherment),
                "key agreement" => Some(KeyUsagePurpose::KeyAgreement),
                _ => None,
            })
            .collect();
        p.extended_key_usages = usages
            .iter()
            .filter_map(|u| match u.as_str() {
                "client auth" => Some(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => Some(ExtendedKeyUsagePurpose::ServerAuth),
                "code signing" => Some(ExtendedKeyUsagePurpose::CodeSigning),
                "email protection" => Some(ExtendedKeyUsagePurpose::EmailProtection),
                "timestamping" => Some(ExtendedKeyUsagePurpose::TimeStamping),
                "ocsp signing" => Some(ExtendedKeyUsagePurpose::OcspSigning),
                _ => None,
            })
            .collect();
        p.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut serial[..]);
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = req
            .signed_by(&self.issuer, &self.key)
            .map_err(|e| inv(format!("signing: {e}")))?;
        Ok(cert.pem())
    }
}

/// What a signer's rules look at in a request.
#[derive(Debug, Default, PartialEq)]
pub struct RequestFacts {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    pub dns_names: usize,
    pub ip_addresses: usize,
    pub emails: usize,
    pub uris: usize,
}

/// Parses the PKCS#10 PEM (signature checked).
pub fn parse_request(pem: &[u8]) -> Result<RequestFacts, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("bad PEM: {e}"))?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(format!(
            "PEM block type must be CERTIFICATE REQUEST, not {}",
            pem.label
        ));
    }
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("parsing the certificate request: {e}"))?;
    csr.verify_signature()
        .map_err(|e| format!("the certificate request's signature is invalid: {e}"))?;
    let subject = &csr.certification_request_info.subject;
    let mut f = RequestFacts {
        common_name: subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(String::from),
        organizations: subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(String::from))
            .collect(),
        ..Default::default()
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    GeneralName::DNSName(_) => f.dns_names += 1,
                    GeneralName::IPAddress(_) => f.ip_addresses += 1,
                    GeneralName::RFC822Name(_) => f.emails += 1,
                    GeneralName::URI(_) => f.uris += 1,
                    _ => {}
                }
            }
        }
    }
    Ok(f)
}

fn usage_set(usages: &[String]) -> std::collections::BTreeSet<&str> {
    usages.iter().map(String::as_str).collect()
}

/// The last checks of both kubelet CSR kinds: the subject names a node, and the usages are
/// `full` (sorted, as upstream's message lists them) or `full` without key encipherment
/// (a non-RSA key).
fn node_name_and_usages(
    f: &RequestFacts,
    usages: &[String],
    full: [&str; 3],
) -> Result<(), String> {
    if !f
        .common_name
        .as_deref()
        .is_some_and(|cn| cn.starts_with("system:node:"))
    {
        return Err("subject common name does not begin with system:node:".into());
    }
    let u = usage_set(usages);
    let all: std::collections::BTreeSet<&str> = full.into();
    let mut no_rsa = all.clone();
    no_rsa.remove("key encipherment");
    if u != all && u != no_rsa {
        return Err(format!("usages did not match [{}]", full.join(" ")));
    }
    Ok(())
}

/// Upstream's `ValidateKubeletClientCSR`.
pub fn validate_kubelet_client(f: &RequestFacts, usages: &[String]) -> Result<(), String> {
    if f.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if f.dns_names > 0 {
        return Err("DNS subjectAltNames are not allowed".into());
    }
    if f.emails > 0 {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if f.ip_addresses > 0 {
        return Err("IP subjectAltNames are not allowed".into());
    }
    if f.uris > 0 {
        return Err("URI subjectAltNames are not allowed".into());
    }
    node_name_and_usages(
        f,
        usages,
        ["client auth", "digital signature", "key encipherment"],
    )
}

/// Upstream's `ValidateKubeletServingCSR`.
pub fn validate_kubelet_serving(f: &RequestFacts, usages: &[String]) -> Result<(), String> {
    if f.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if f.dns_names == 0 && f.ip_addresses == 0 {
        return Err("DNS or IP subjectAltName is required".into());
    }
    if f.emails > 0 {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if f.uris > 0 {
        return Err("URI subjectAltNames are not allowed".into());
    }
    node_name_and_usages(
        f,
        usages,
        ["digital signature", "key encipherment", "server auth"],
    )
}

/// Upstream's `validAPIServerClientUsages`.
pub fn validate_api_client(usages: &[String]) -> Result<(), String> {
    let mut has_client = false;
    for u in usages {
        match u.as_str() {
            "digital signature" | "key encipherment" => {}
            "client auth" => has_client = true,
            other => return Err(format!("invalid usage for client certificate: {other}")),
        }
    }
    if !has_client {
        return Err("missing required usage for client certificate: client auth".into());
    }
    Ok(())
}

/// The signer's rules for `signer` (None: not a signer this controller serves).
pub fn validate(signer: &str, pem: &[u8], usages: &[String]) -> Option<Result<(), String>> {
    if ![
        KUBELET_CLIENT_SIGNER,
        KUBELET_SERVING_SIGNER,
        API_CLIENT_SIGNER,
    ]
    .contains(&signer)
    {
        return None;
    }
    let facts = match parse_request(pem) {
        Ok(f) => f,
        Err(e) => return Some(Err(e)),
    };
    Some(match signer {
        KUBELET_CLIENT_SIGNER => validate_kubelet_client(&facts, usages),
        KUBELET_SERVING_SIGNER => validate_kubelet_serving(&facts, usages),
        _ => validate_api_client(usages),
    })
}

fn has_condition(csr: &CertificateSigningRequest, ty: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
}

pub fn controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.csrs.on_change(move |c, _| q.add(key_of(c)));
    let c = ctx.clone();
    Controller::new(
        "certificatesigningrequest-signing-controller",
        queue,
        1,
        move |key| {
            let c = c.clone();
            async move { reconcile(&c, &key).await }
        },
    )
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Option<Duration>> {
    let Some(signer) = ctx.settings.cluster_signing.as_ref().map(|s| s.current()) else {
        return Ok(None);
    };
    let Some(csr) = ctx.inf.csrs.get(None, key) else {
        return Ok(None);
    };
    if !has_condition(&csr, "Approved")
        || has_condition(&csr, "Denied")
        || has_condition(&csr, "Failed")
        || csr
            .status
            .as_ref()
            .and_then(|s| s.certificate.as_ref())
            .is_some_and(|c| !c.0.is_empty())
    {
        return Ok(None);
    }
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let Some(valid) = validate(&csr.spec.signer_name, &csr.spec.request.0, &usages) else {
        return Ok(None);
    };
    let mut updated = CertificateSigningRequest::clone(&csr);
    let status = updated.status.get_or_insert_with(Default::default);
    let now = Timestamp::now();
    let issued = valid.and_then(|()| {
        let pem = std::str::from_utf8(&csr.spec.request.0)
            .map_err(|_| "the request is not PEM text".to_string())?;
        let requested = csr
            .spec
            .expiration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64));
        signer
            .sign(pem, &usages, requested, OffsetDateTime::now_utc())
            .map_err(|e| e.to_string())
    });
    match issued {
        Ok(cert) => {
            tracing::info!(csr = key, signer = %csr.spec.signer_name, "signed certificate");
            status.certificate = Some(ByteString(cert.into_bytes()));
        }
        Err(msg) => {
            tracing::info!(csr = key, reason = %msg, "refusing to sign");
            status.conditions.get_or_insert_with(Vec::new).push(
                CertificateSigningRequestCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    reason: Some("SignerValidationFailure".into()),
                    message: Some(msg),
                    last_update_time: Some(Time(now)),
                    last_transition_time: Some(Time(now)),
                },
            );
        }
    }
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    match api
        .replace_status(key, &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(None),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The signing CA from its files, re-loaded when they change (see the module doc).
pub struct ReloadingSigner {
    cert: PathBuf,
    key: PathBuf,
    max_duration: Duration,
    state: Mutex<(FileStamps, Arc<Signer>)>,
}

/// (modification time, length) of the certificate and key files.
type FileStamps = [Option<(SystemTime, u64)>; 2];

fn stamps(cert: &Path, key: &Path) -> FileStamps {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [one(cert), one(key)]
}

impl ReloadingSigner {
    /// Loads the pair now (an error here is a configuration error: the daemon refuses to start).
    pub fn load(cert: &Path, key: &Path, max: Duration) -> Result<Self, SignerError> {
        let st = stamps(cert, key);
        let signer = Arc::new(Signer::load(cert, key, max)?);
        Ok(ReloadingSigner {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            max_duration: max,
            state: Mutex::new((st, signer)),
        })
    }

    /// The CA to sign with now: re-read first when either file changed since the last load.
    pub fn current(&self) -> Arc<Signer> {
        let now = stamps(&self.cert, &self.key);
        let mut st = self.state.lock();
        if now != st.0 {
            match Signer::load(&self.cert, &self.key, self.max_duration) {
                Ok(s) => {
                    tracing::info!(cert = %self.cert.display(), "signing CA changed on disk; reloaded");
                    *st = (now, Arc::new(s));
                }
                // Keep signing with the CA we have; try again at the next change or request.
                Err(e) => {
                    tracing::warn!(error = %e, "reloading the signing CA failed; keeping the previous one")
                }
            }
        }
        st.1.clone()
    }
}

impl std::fmt::Debug for ReloadingSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingSigner")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

/// Builds the signer from the settings' files, if both are given.
pub fn load_from(
    cert: Option<&Path>,
    key: Option<&Path>,
    max: Duration,
) -> Result<Option<Arc<ReloadingSigner>>, SignerError> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some(Arc::new(ReloadingSigner::load(c, k, max)?))),
        (None, None) => Ok(None),
        _ => Err(SignerError::Invalid(
            "--cluster-signing-cert-file and --cluster-signing-key-file go together".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::DnType;

    fn ca() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "test-ca");
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let c = p.self_signed(&key).unwrap();
        (c.pem(), key.serialize_pem())
    }

    fn request(cn: &str, orgs: &[&str], sans: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name.push(DnType::OrganizationName, *o);
        }
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn u(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn kubelet_client_rules_are_upstreams() {
        let ok = request("system:node:a", &["system:nodes"], &[]);
        let usages = u(&["digital signature", "client auth"]);
        assert_eq!(
            validate(KUBELET_CLIENT_SIGNER, ok.as_bytes(), &usages),
            Some(Ok(()))
        );
        let r = validate(
            KUBELET_CLIENT_SIGNER,
            ok.as_bytes(),
            &u(&["digital signature", "server auth"]),
        );
        assert!(r.unwrap().unwrap_err().contains("usages did not match"));
        let bad_cn = request("alice", &["system:nodes"], &[]);
        let r = validate(KUBELET_CLIENT_SIGNER, bad_cn.as_bytes(), &usages).unwrap();
        assert!(r.unwrap_err().contains("system:node:"));
        let bad_o = request("system:node:a", &["system:masters"], &[]);
        let r = validate(KUBELET_CLIENT_SIGNER, bad_o.as_bytes(), &usages).unwrap();
        assert_eq!(r.unwrap_err(), "subject organization is not system:nodes");
        let dns = request("system:node:a", &["system:nodes"], &["a.example"]);
        assert!(validate(KUBELET_CLIENT_SIGNER, dns.as_bytes(), &usages)
            .unwrap()
            .is_err());
        // Serving needs a SAN and server auth.
        let serving = u(&["digital signature", "key encipherment", "server auth"]);
        assert!(validate(KUBELET_SERVING_SIGNER, ok.as_bytes(), &serving)
            .unwrap()
            .is_err());
        assert_eq!(
            validate(KUBELET_SERVING_SIGNER, dns.as_bytes(), &serving),
            Some(Ok(()))
        );
        assert!(validate("example.com/other", ok.as_bytes(), &usages).is_none());
        assert!(validate(KUBELET_CLIENT_SIGNER, b"garbage", &usages)
            .unwrap()
            .is_err());
        assert!(validate_api_client(&u(&["client auth"])).is_ok());
        assert!(validate_api_client(&u(&["server auth", "client auth"])).is_err());
    }

    #[test]
    fn signs_with_the_shorter_duration_and_request_subject() {
        let (cert, key) = ca();
        let s = Signer::from_pem(&cert, &key, Duration::from_secs(30)).unwrap();
        let req = request("system:node:a", &["system:nodes"], &[]);
        let now = OffsetDateTime::now_utc();
        let pem = s
            .sign(
                &req,
                &u(&["digital signature", "client auth"]),
                Some(Duration::from_secs(600)),
                now,
            )
            .unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let (_, c) = X509Certificate::from_der(&p.contents).unwrap();
        let life = c.validity().not_after.timestamp() - now.unix_timestamp();
        assert!((29..=31).contains(&life), "{life}");
        let cn = c
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, "system:node:a");
        assert!(!c.is_ca());
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let (_, capem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
        let (_, cac) = X509Certificate::from_der(&capem.contents).unwrap();
        assert_eq!(c.issuer(), cac.subject());
        assert!(c.verify_signature(Some(cac.public_key())).is_ok());
        // A mismatched key is refused at load.
        let (_, other_key) = ca();
        assert!(Signer::from_pem(&cert, &other_key, Duration::from_secs(1)).is_err());
        // Both files or neither.
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, &key).unwrap();
        let d = Duration::from_secs(60);
        assert!(load_from(Some(&c), None, d).is_err());
        assert!(load_from(None, None, d).unwrap().is_none());
        let reloading = load_from(Some(&c), Some(&k), d).unwrap().unwrap();
        assert_eq!(reloading.current().max_duration, d);
        assert!(load_from(Some(&k), Some(&k), d).is_err());
        // A new CA written over the files is used for the next signing, without a restart;
        // a broken pair keeps the previous CA.
        let first = reloading.current();
        assert!(
            Arc::ptr_eq(&first, &reloading.current()),
            "unchanged files are not re-read"
        );
        let (cert2, key2) = ca();
        // Past the file system's timestamp granularity, so the rewrite shows in the stamps.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&k, "not a key").unwrap();
        assert!(
            Arc::ptr_eq(&first, &reloading.current()),
            "a broken pair keeps the old CA"
        );
        std::fs::write(&c, &cert2).unwrap();
        std::fs::write(&k, &key2).unwrap();
        let second = reloading.current();
        assert!(!Arc::ptr_eq(&first, &second), "the new CA was loaded");
        let csr = request("system:node:n1", &["system:nodes"], &[]);
        let signed = second
            .sign(
                &csr,
                &u(&["client auth", "digital signature"]),
                None,
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        let (_, leaf) = x509_parser::pem::parse_x509_pem(signed.as_bytes()).unwrap();
        let (_, leaf) = X509Certificate::from_der(&leaf.contents).unwrap();
        let (_, ca2) = x509_parser::pem::parse_x509_pem(cert2.as_bytes()).unwrap();
        let (_, ca2) = X509Certificate::from_der(&ca2.contents).unwrap();
        assert!(leaf.verify_signature(Some(ca2.public_key())).is_ok());
    }
}
