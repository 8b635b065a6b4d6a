//! ServiceAccount tokens, bootstrap tokens, TokenRequest / TokenReview and OIDC discovery.
//!
//! Tokens are upstream's bound service account JWTs (JWS compact, RS256 or ES256):
//! `iss`, `sub` = `system:serviceaccount:<ns>:<name>`, `aud`, `exp`, `iat`, `nbf`, `jti` and
//! the private `kubernetes.io` claim naming the namespace, the service account and the object
//! the token is bound to (pod, secret or node, each by name and uid). A token is only as good
//! as the objects it names: the bearer authenticator checks signature, issuer, time (60 s
//! leeway, as upstream's validator) and audience, then reads the service account (and the
//! bound object) from the store and refuses the token if one is gone, being deleted, or was
//! recreated under a new uid. So a deleted pod revokes its tokens immediately. The reads go to
//! the store on every request (no cache yet): correct across several API servers, at the cost
//! of one or two store reads per token-authenticated request.
//!
//! Signing is done with `ring` directly rather than the `jsonwebtoken` crate: the server also
//! needs the key material itself (the JWKS document's `n`/`e`/`x`/`y` and upstream's key id,
//! a SHA-256 of the PKIX public key), which `jsonwebtoken` does not expose, and a JWS compact
//! token is three base64url parts. Keys are PEM: RSA (PKCS#1 or PKCS#8), ECDSA P-256 (PKCS#8
//! or SEC1); verification keys may also be public keys (`PUBLIC KEY`) or certificates.
//!
//! Bootstrap tokens (`<id>.<secret>`, kube-system Secrets `bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token`) authenticate as `system:bootstrap:<id>` in
//! `system:bootstrappers` plus the token's `auth-extra-groups`, honouring `expiration` and
//! `usage-bootstrap-authentication`, as upstream's bootstrap authenticator
//! (`--enable-bootstrap-token-auth`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::{Response, StatusCode};
use kelson_apimachinery::{ApiError, StatusCause};
use kelson_apistorage::StorageError;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde_json::{json, Map, Value};
use x509_parser::prelude::FromDer;

use crate::auth::User;
use crate::handlers::{key, Req};
use crate::http::{self as h, Body};
use crate::registry;
use crate::server::Api;

/// Upstream's defaults and bounds for `TokenRequest.spec.expirationSeconds`.
pub const DEFAULT_EXPIRATION: i64 = 3600;
pub const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;
/// Clock skew tolerated on `exp`/`nbf`/`iat`, as upstream's validator.
const LEEWAY: i64 = 60;

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// Errors loading keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Bad { path: PathBuf, msg: String },
}

fn bad(path: &Path, msg: impl Into<String>) -> KeyError {
    KeyError::Bad {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

enum SignKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A private key tokens are signed with.
struct Signer {
    key: SignKey,
    public: VerifyKey,
}

/// A public key tokens are verified with.
#[derive(Debug, Clone)]
struct VerifyKey {
    alg: &'static str,
    kid: String,
    /// RSA: (n, e) big-endian; EC: the uncompressed point.
    material: KeyMaterial,
}

#[derive(Debug, Clone)]
enum KeyMaterial {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    EcP256(Vec<u8>),
}

impl VerifyKey {
    /// From a DER SubjectPublicKeyInfo; the key id is upstream's: base64url(SHA-256(SPKI)).
    fn from_spki(der: &[u8]) -> Result<VerifyKey, String> {
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| format!("bad public key: {e}"))?;
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der));
        let alg_oid = spki.algorithm.algorithm.to_id_string();
        let parsed = spki.parsed().map_err(|e| format!("bad public key: {e}"))?;
        use x509_parser::public_key::PublicKey;
        match (alg_oid.as_str(), parsed) {
            (OID_RSA, PublicKey::RSA(k)) => Ok(VerifyKey {
                alg: "RS256",
                kid,
                material: KeyMaterial::Rsa {
                    n: strip_zeros(k.modulus).to_vec(),
                    e: strip_zeros(k.exponent).to_vec(),
                },
            }),
            (OID_EC, PublicKey::EC(point)) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string());
                if curve.as_deref() != Some(OID_P256) {
                    return Err(format!("unsupported elliptic curve {curve:?} (P-256 only)"));
                }
                Ok(VerifyKey {
                    alg: "ES256",
                    kid,
                    material: KeyMaterial::EcP256(point.data().to_vec()),
                })
            }
            (oid, _) => Err(format!("unsupported public key algorithm {oid}")),
        }
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            KeyMaterial::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
            KeyMaterial::EcP256(point) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
        }
    }

    /// The JWK of this key, as `/openid/v1/jwks` lists it.
    fn jwk(&self) -> Value {
        let b = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        match &self.material {
            KeyMaterial::Rsa { n, e } => json!({"use": "sig", "kty": "RSA", "kid": self.kid,
                "alg": self.alg, "n": b(n), "e": b(e)}),
            KeyMaterial::EcP256(p) => json!({"use": "sig", "kty": "EC", "kid": self.kid,
                "crv": "P-256", "alg": self.alg, "x": b(&p[1..33]), "y": b(&p[33..65])}),
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[i..]
}

// A few DER constructors: enough to wrap raw keys into the structures ring and x509-parser
// read (SPKI for key ids and verification, PKCS#8 for SEC1 EC keys).
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}
const RSA_ALG_ID: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
const EC_P256_ALG_ID: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
fn spki(alg_id: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = vec![0u8];
    bits.extend_from_slice(key);
    let mut body = alg_id.to_vec();
    body.extend(der(0x03, &bits));
    der(0x30, &body)
}

impl Signer {
    fn from_private(path: &Path, kind: SectionKind, der_bytes: &[u8]) -> Result<Signer, KeyError> {
        let rng = SystemRandom::new();
        let key = match kind {
            SectionKind::RsaPrivateKey => SignKey::Rsa(
                RsaKeyPair::from_der(der_bytes)
                    .map_err(|e| bad(path, format!("bad RSA key: {e}")))?,
            ),
            SectionKind::PrivateKey => match RsaKeyPair::from_pkcs8(der_bytes) {
                Ok(k) => SignKey::Rsa(k),
                Err(_) => SignKey::Ec(
                    EcdsaKeyPair::from_pkcs8(
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                        der_bytes,
                        &rng,
                    )
                    .map_err(|e| bad(path, format!("not an RSA or P-256 key: {e}")))?,
                ),
            },
            SectionKind::EcPrivateKey => {
                // SEC1 → PKCS#8 (version 0, ecPublicKey/P-256, the SEC1 structure).
                let mut body = der(0x02, &[0]);
                body.extend_from_slice(EC_P256_ALG_ID);
                body.extend(der(0x04, der_bytes));
                let pkcs8 = der(0x30, &body);
                SignKey::Ec(
                    EcdsaKeyPair::from_pkcs8(
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                        &pkcs8,
                        &rng,
                    )
                    .map_err(|e| bad(path, format!("not a P-256 key: {e}")))?,
                )
            }
            _ => return Err(bad(path, "not a private key")),
        };
        let spki_der = match &key {
            SignKey::Rsa(k) => spki(RSA_ALG_ID, k.public_key().as_ref()),
            SignKey::Ec(k) => spki(EC_P256_ALG_ID, k.public_key().as_ref()),
        };
        let public = VerifyKey::from_spki(&spki_der).map_err(|e| bad(path, e))?;
        Ok(Signer { key, public })
    }

    fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        let header = json!({"alg": self.public.alg, "kid": self.public.kid});
        let mut msg = URL_SAFE_NO_PAD.encode(header.to_string());
        msg.push('.');
        msg.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let rng = SystemRandom::new();
        let sig = match &self.key {
            SignKey::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, msg.as_bytes(), &mut sig)
                    .map_err(|_| ApiError::internal("signing the token failed"))?;
                sig
            }
            SignKey::Ec(k) => k
                .sign(&rng, msg.as_bytes())
                .map_err(|_| ApiError::internal("signing the token failed"))?
                .as_ref()
                .to_vec(),
        };
        msg.push('.');
        msg.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(msg)
    }
}

/// Every PEM section of `path`.
fn pem_sections(path: &Path) -> Result<Vec<(SectionKind, Vec<u8>)>, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("bad PEM: {e}")))?;
    if sections.is_empty() {
        return Err(bad(path, "no PEM data"));
    }
    Ok(sections)
}

fn load_signer(path: &Path) -> Result<Signer, KeyError> {
    let sections = pem_sections(path)?;
    let (kind, der_bytes) = sections
        .iter()
        .find(|(k, _)| {
            matches!(
                k,
                SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey
            )
        })
        .ok_or_else(|| bad(path, "no private key"))?;
    Signer::from_private(path, *kind, der_bytes)
}

/// Public keys from a file of private keys, public keys and/or certificates.
fn load_verifiers(path: &Path) -> Result<Vec<VerifyKey>, KeyError> {
    let mut keys = Vec::new();
    for (kind, bytes) in pem_sections(path)? {
        match kind {
            SectionKind::PublicKey => {
                keys.push(VerifyKey::from_spki(&bytes).map_err(|e| bad(path, e))?)
            }
            SectionKind::Certificate => {
                let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&bytes)
                    .map_err(|e| bad(path, format!("bad certificate: {e}")))?;
                keys.push(VerifyKey::from_spki(cert.public_key().raw).map_err(|e| bad(path, e))?);
            }
            SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey => {
                keys.push(Signer::from_private(path, kind, &bytes)?.public)
            }
            _ => {}
        }
    }
    if keys.is_empty() {
        return Err(bad(path, "no usable key"));
    }
    Ok(keys)
}

/// The token machinery of one API server (configured from its flags).
pub struct Tokens {
    signer: Option<Signer>,
    verifiers: Vec<VerifyKey>,
    issuer: String,
    audiences: Vec<String>,
    bootstrap: bool,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("signing", &self.signer.is_some())
            .field("verifiers", &self.verifiers.len())
            .finish()
    }
}

impl Default for Tokens {
    /// No keys: service account tokens are neither issued nor accepted.
    fn default() -> Self {
        Tokens {
            signer: None,
            verifiers: Vec::new(),
            issuer: String::new(),
            audiences: Vec::new(),
            bootstrap: false,
        }
    }
}

/// Who a token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub user: User,
    pub uid: String,
    pub extra: BTreeMap<String, Vec<String>>,
    /// The token audiences the server (or the review) accepted.
    pub audiences: Vec<String>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Tokens {
    /// Loads the keys: `signing_key` signs (and verifies, unless `key_files` are given).
    pub fn new(
        signing_key: Option<&Path>,
        key_files: &[PathBuf],
        issuer: &str,
        audiences: &[String],
        bootstrap: bool,
    ) -> Result<Tokens, KeyError> {
        let signer = signing_key.map(load_signer).transpose()?;
        let mut verifiers = Vec::new();
        for f in key_files {
            verifiers.extend(load_verifiers(f)?);
        }
        if verifiers.is_empty() {
            if let Some(s) = &signer {
                verifiers.push(s.public.clone());
            }
        }
        let audiences = if audiences.is_empty() {
            vec![issuer.to_string()]
        } else {
            audiences.to_vec()
        };
        Ok(Tokens {
            signer,
            verifiers,
            issuer: issuer.to_string(),
            audiences,
            bootstrap,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether this server can issue tokens (`--service-account-signing-key-file` given).
    pub fn can_issue(&self) -> bool {
        self.signer.is_some()
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        json!({"keys": self.verifiers.iter().map(VerifyKey::jwk).collect::<Vec<_>>()})
    }

    /// `/.well-known/openid-configuration` (the JWKS served under the issuer's host, as
    /// upstream does without `--service-account-jwks-uri`).
    pub fn openid_configuration(&self, server_address: &str) -> Value {
        let base = match self.issuer.strip_prefix("https://") {
            Some(rest) => format!("https://{}", rest.split('/').next().unwrap_or(rest)),
            None => format!("https://{server_address}"),
        };
        let mut algs: Vec<&str> = self.verifiers.iter().map(|k| k.alg).collect();
        algs.sort();
        algs.dedup();
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{base}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
        })
    }

    /// Signs `claims` (used by TokenRequest; exposed for tests of the verifier).
    pub fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        self.signer
            .as_ref()
            .ok_or_else(|| {
                ApiError::service_unavailable(
                    "no --service-account-signing-key-file: the API server cannot issue tokens",
                )
            })?
            .sign(claims)
    }

    /// Checks a JWT's signature and standard claims; returns its claims and the audiences it
    /// was accepted for. `audiences` None = the server's own (`--api-audiences`).
    pub fn verify_jwt(
        &self,
        token: &str,
        audiences: Option<&[String]>,
    ) -> Result<(Value, Vec<String>), String> {
        let mut parts = token.split('.');
        let (Some(h64), Some(c64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT".into());
        };
        let d = |s: &str| {
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| "malformed JWT".to_string())
        };
        let header: Value = serde_json::from_slice(&d(h64)?).map_err(|_| "malformed JWT header")?;
        let claims: Value = serde_json::from_slice(&d(c64)?).map_err(|_| "malformed JWT claims")?;
        let sig = d(s64)?;
        let alg = header["alg"].as_str().unwrap_or_default();
        let kid = header["kid"].as_str();
        let msg = &token.as_bytes()[..h64.len() + 1 + c64.len()];
        let ok = self
            .verifiers
            .iter()
            .filter(|k| k.alg == alg && kid.is_none_or(|kid| kid == k.kid || kid.is_empty()))
            .any(|k| k.verify(msg, &sig));
        if !ok {
            return Err("invalid signature".into());
        }
        if claims["iss"].as_str() != Some(self.issuer.as_str()) {
            return Err("token issuer is not trusted".into());
        }
        let t = now();
        let exp = claims["exp"].as_i64().ok_or("token has no expiry")?;
        if t > exp + LEEWAY {
            return Err("token has expired".into());
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| t + LEEWAY < nbf) {
            return Err("token is not valid yet".into());
        }
        if claims["iat"].as_i64().is_some_and(|iat| t + LEEWAY < iat) {
            return Err("token issued in the future".into());
        }
        let aud: Vec<String> = match &claims["aud"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        let wanted = audiences.unwrap_or(&self.audiences);
        let accepted: Vec<String> = aud.into_iter().filter(|a| wanted.contains(a)).collect();
        if accepted.is_empty() {
            return Err("token audiences are invalid".into());
        }
        Ok((claims, accepted))
    }

    /// Authenticates a bearer token: bootstrap tokens by their shape, JWTs otherwise.
    pub async fn authenticate(
        &self,
        api: &Api,
        token: &str,
        audiences: Option<&[String]>,
    ) -> Result<Authenticated, String> {
        if let Some((id, secret)) = bootstrap_parts(token) {
            if !self.bootstrap {
                return Err("bootstrap token authentication is disabled".into());
            }
            return bootstrap_authenticate(api, id, secret, audiences.unwrap_or(&self.audiences))
                .await;
        }
        if self.verifiers.is_empty() {
            return Err("service account token authentication is not configured".into());
        }
        let (claims, audiences) = self.verify_jwt(token, audiences)?;
        service_account_authenticate(api, &claims, audiences).await
    }
}

/// `<6 [a-z0-9]>.<16 [a-z0-9]>`.
fn bootstrap_parts(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn data_str(secret: &Value, key: &str) -> Option<String> {
    let v = secret["data"][key].as_str()?;
    String::from_utf8(STANDARD.decode(v).ok()?).ok()
}

/// Comparison time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn bootstrap_authenticate(
    api: &Api,
    id: &str,
    secret: &str,
    audiences: &[String],
) -> Result<Authenticated, String> {
    let info = registry::lookup("", "v1", "secrets").expect("secrets are registered");
    let name = format!("bootstrap-token-{id}");
    let s = match api
        .store
        .get(&key(api, info, Some("kube-system"), &name), None)
        .await
    {
        Ok(s) => s,
        Err(StorageError::NotFound { .. }) => return Err(format!("secret {name} not found")),
        Err(e) => return Err(e.to_string()),
    };
    if s["type"] != "bootstrap.kubernetes.io/token" || !s["metadata"]["deletionTimestamp"].is_null()
    {
        return Err("not a usable bootstrap token".into());
    }
    let stored = data_str(&s, "token-secret").unwrap_or_default();
    if !constant_time_eq(stored.as_bytes(), secret.as_bytes())
        || data_str(&s, "token-id").is_some_and(|i| i != id)
    {
        return Err("bootstrap token does not match".into());
    }
    if data_str(&s, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err("bootstrap token is not for authentication".into());
    }
    if let Some(exp) = data_str(&s, "expiration") {
        let exp = kelson_apimachinery::meta::parse_rfc3339(&exp)
            .ok_or("bootstrap token has an invalid expiration")?;
        if exp <= time::OffsetDateTime::now_utc() {
            return Err("bootstrap token has expired".into());
        }
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    for g in data_str(&s, "auth-extra-groups")
        .unwrap_or_default()
        .split(',')
    {
        let g = g.trim();
        // Upstream only honours groups in the bootstrappers' namespace.
        if g.starts_with("system:bootstrappers:") && !groups.iter().any(|x| x == g) {
            groups.push(g.to_string());
        }
    }
    groups.push("system:authenticated".into());
    Ok(Authenticated {
        user: User {
            name: format!("system:bootstrap:{id}"),
            groups,
        },
        uid: String::new(),
        extra: BTreeMap::new(),
        audiences: audiences.to_vec(),
    })
}

/// The object `kind/name` in `ns`, checked against `uid`; `Err` says why the token is dead.
async fn live_object(
    api: &Api,
    resource: &str,
    ns: Option<&str>,
    name: &str,
    uid: &str,
) -> Result<Value, String> {
    let info = registry::lookup("", "v1", resource).expect("core resources are registered");
    let obj = match api.store.get(&key(api, info, ns, name), None).await {
        Ok(o) => o,
        Err(StorageError::NotFound { .. }) => {
            return Err(format!("{resource} {:?} not found", name))
        }
        Err(e) => return Err(e.to_string()),
    };
    if obj["metadata"]["uid"].as_str() != Some(uid) {
        return Err(format!(
            "{resource} {name:?} uid does not match the token's (the object was recreated)"
        ));
    }
    if !obj["metadata"]["deletionTimestamp"].is_null() {
        return Err(format!("{resource} {name:?} is being deleted"));
    }
    Ok(obj)
}

async fn service_account_authenticate(
    api: &Api,
    claims: &Value,
    audiences: Vec<String>,
) -> Result<Authenticated, String> {
    let k = &claims["kubernetes.io"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let (ns, sa, sa_uid) = (
        s(&k["namespace"]),
        s(&k["serviceaccount"]["name"]),
        s(&k["serviceaccount"]["uid"]),
    );
    if ns.is_empty() || sa.is_empty() || claims["sub"] != format!("system:serviceaccount:{ns}:{sa}")
    {
        return Err("token is not a service account token".into());
    }
    live_object(api, "serviceaccounts", Some(&ns), &sa, &sa_uid).await?;
    let mut extra = BTreeMap::new();
    if let Some(pod) = k["pod"].as_object() {
        let (name, uid) = (s(&pod["name"]), s(&pod["uid"]));
        live_object(api, "pods", Some(&ns), &name, &uid).await?;
        extra.insert("authentication.kubernetes.io/pod-name".into(), vec![name]);
        extra.insert("authentication.kubernetes.io/pod-uid".into(), vec![uid]);
    }
    if let Some(secret) = k["secret"].as_object() {
        live_object(
            api,
            "secrets",
            Some(&ns),
            &s(&secret["name"]),
            &s(&secret["uid"]),
        )
        .await?;
    }
    if let Some(node) = k["node"].as_object() {
        extra.insert(
            "authentication.kubernetes.io/node-name".into(),
            vec![s(&node["name"])],
        );
        extra.insert(
            "authentication.kubernetes.io/node-uid".into(),
            vec![s(&node["uid"])],
        );
        // A token bound to the node itself (not just naming the pod's node) dies with it.
        if k["pod"].is_null() {
            live_object(api, "nodes", None, &s(&node["name"]), &s(&node["uid"])).await?;
        }
    }
    if let Some(jti) = claims["jti"].as_str() {
        extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={jti}")],
        );
    }
    Ok(Authenticated {
        user: User {
            name: format!("system:serviceaccount:{ns}:{sa}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        },
        uid: sa_uid,
        extra,
        audiences,
    })
}

/// The bearer token of a request, if it carries one.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn invalid(name: &str, field: &str, msg: String) -> ApiError {
    ApiError::invalid(
        "authentication.k8s.io",
        "TokenRequest",
        name,
        vec![StatusCause::invalid(field, msg)],
    )
}

/// `POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`.
pub async fn token_request(r: &mut Req<'_>, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let api = r.api;
    let ns = r.t.namespace.clone().unwrap_or_default();
    let sa_name = r.t.name.clone().unwrap_or_default();
    let ct = r
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut req = h::decode_object(ct, body)?;
    if !req["spec"].is_object() {
        req["spec"] = json!({});
    }
    let spec = &req["spec"];
    let exp = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION,
        v => v.as_i64().ok_or_else(|| {
            invalid(
                &sa_name,
                "spec.expirationSeconds",
                format!("Invalid value: {v}: must be an integer"),
            )
        })?,
    };
    if exp < MIN_EXPIRATION {
        return Err(invalid(
            &sa_name,
            "spec.expirationSeconds",
            format!("Invalid value: {exp}: may not specify a duration less than 10 minutes"),
        ));
    }
    if exp > MAX_EXPIRATION {
        return Err(invalid(
            &sa_name,
            "spec.expirationSeconds",
            format!("Invalid value: {exp}: may not specify a duration larger than 2^32 seconds"),
        ));
    }
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences = api.tokens.audiences.clone();
    }
    let sa_info = registry::lookup("", "v1", "serviceaccounts").expect("registered");
    let sa = api
        .store
        .get(&key(api, sa_info, Some(&ns), &sa_name), None)
        .await
        .map_err(|e| e.to_api_error("", "serviceaccounts", &sa_name))?;
    let sa_uid = sa["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut k8s = Map::new();
    k8s.insert("namespace".into(), json!(ns));
    k8s.insert(
        "serviceaccount".into(),
        json!({"name": sa_name, "uid": sa_uid}),
    );
    let bound = &spec["boundObjectRef"];
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or_default();
        let name = bound["name"].as_str().unwrap_or_default();
        let (resource, field) = match kind {
            "Pod" => ("pods", "pod"),
            "Secret" => ("secrets", "secret"),
            "Node" => ("nodes", "node"),
            other => {
                return Err(invalid(
                    &sa_name,
                    "spec.boundObjectRef.kind",
                    format!(
                    "Unsupported value: {other:?}: supported values: \"Pod\", \"Secret\", \"Node\""
                ),
                ))
            }
        };
        if bound["apiVersion"].as_str().is_some_and(|v| v != "v1") {
            return Err(invalid(
                &sa_name,
                "spec.boundObjectRef.apiVersion",
                format!(
                    "Unsupported value: {}: supported values: \"v1\"",
                    bound["apiVersion"]
                ),
            ));
        }
        if name.is_empty() {
            return Err(invalid(
                &sa_name,
                "spec.boundObjectRef.name",
                "Required value".into(),
            ));
        }
        let info = registry::lookup("", "v1", resource).expect("registered");
        let obj = api
            .store
            .get(&key(api, info, Some(&ns), name), None)
            .await
            .map_err(|e| e.to_api_error("", resource, name))?;
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty()) {
            if want != uid {
                return Err(ApiError::conflict("", resource, name, &format!("the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated")));
            }
        }
        if kind == "Pod" {
            let pod_sa = obj["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default");
            if pod_sa != sa_name {
                return Err(ApiError::bad_request(format!("cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name.")));
            }
            // Upstream names the pod's node too (ServiceAccountTokenPodNodeInfo).
            if let Some(node) = obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                let ninfo = registry::lookup("", "v1", "nodes").expect("registered");
                if let Ok(n) = api.store.get(&key(api, ninfo, None, node), None).await {
                    k8s.insert(
                        "node".into(),
                        json!({"name": node, "uid": n["metadata"]["uid"]}),
                    );
                }
            }
        }
        k8s.insert(field.into(), json!({"name": name, "uid": uid}));
    }
    let iat = now();
    let claims = json!({
        "aud": audiences,
        "exp": iat + exp,
        "iat": iat,
        "iss": api.tokens.issuer,
        "jti": kelson_apimachinery::meta::new_uid(),
        "kubernetes.io": Value::Object(k8s),
        "nbf": iat,
        "sub": format!("system:serviceaccount:{ns}:{sa_name}"),
    });
    let token = api.tokens.sign(&claims)?;
    let exp_ts = time::OffsetDateTime::from_unix_timestamp(iat + exp)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    req["apiVersion"] = json!("authentication.k8s.io/v1");
    req["kind"] = json!("TokenRequest");
    if !req["metadata"].is_object() {
        req["metadata"] = json!({});
    }
    req["metadata"]["name"] = json!(sa_name);
    req["metadata"]["namespace"] = json!(ns);
    req["metadata"]["creationTimestamp"] = json!(kelson_apimachinery::meta::now_rfc3339());
    req["spec"]["audiences"] = json!(audiences);
    req["spec"]["expirationSeconds"] = json!(exp);
    req["status"] = json!({
        "token": token,
        "expirationTimestamp": kelson_apimachinery::meta::format_rfc3339(exp_ts),
    });
    Ok(h::json(StatusCode::CREATED, &req))
}

/// `TokenReview` status for `spec` (authentication.k8s.io/v1 tokenreviews create).
pub async fn review_status(api: &Api, spec: &Value) -> Value {
    let token = spec["token"].as_str().unwrap_or_default();
    let audiences: Option<Vec<String>> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty());
    match api
        .tokens
        .authenticate(api, token, audiences.as_deref())
        .await
    {
        Ok(a) => json!({
            "authenticated": true,
            "user": {"username": a.user.name, "uid": a.uid, "groups": a.user.groups, "extra": a.extra},
            "audiences": a.audiences,
        }),
        Err(e) => json!({"authenticated": false, "error": e, "user": {}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn claims(iss: &str, aud: &str, exp_in: i64) -> Value {
        let t = now();
        json!({"iss": iss, "aud": [aud], "exp": t + exp_in, "iat": t, "nbf": t,
               "sub": "system:serviceaccount:ns:sa"})
    }

    fn roundtrip(tokens: &Tokens) {
        let t = tokens
            .sign(&claims("https://iss", "https://iss", 600))
            .unwrap();
        let (c, aud) = tokens.verify_jwt(&t, None).unwrap();
        assert_eq!(c["sub"], "system:serviceaccount:ns:sa");
        assert_eq!(aud, vec!["https://iss".to_string()]);
        // Tampering with the claims breaks the signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(claims("https://iss", "https://iss", 9999).to_string());
        parts[1] = &forged;
        assert_eq!(
            tokens.verify_jwt(&parts.join("."), None).unwrap_err(),
            "invalid signature"
        );
        // Wrong audience, wrong issuer, expired.
        let t = tokens.sign(&claims("https://iss", "other", 600)).unwrap();
        assert!(tokens
            .verify_jwt(&t, None)
            .unwrap_err()
            .contains("audiences"));
        assert!(tokens.verify_jwt(&t, Some(&["other".into()])).is_ok());
        let t = tokens
            .sign(&claims("https://evil", "https://iss", 600))
            .unwrap();
        assert!(tokens.verify_jwt(&t, None).unwrap_err().contains("issuer"));
        let t = tokens
            .sign(&claims("https://iss", "https://iss", -120))
            .unwrap();
        assert!(tokens.verify_jwt(&t, None).unwrap_err().contains("expired"));
        assert!(tokens.verify_jwt("a.b", None).is_err());
        let jwks = tokens.jwks();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn ec_keys_sign_and_verify_and_publish_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let kp = rcgen::KeyPair::generate().unwrap();
        let key = write(dir.path(), "sa.key", &kp.serialize_pem());
        let tokens = Tokens::new(Some(&key), &[], "https://iss", &[], false).unwrap();
        roundtrip(&tokens);
        let jwk = &tokens.jwks()["keys"][0];
        assert_eq!(
            (jwk["kty"].as_str(), jwk["alg"].as_str()),
            (Some("EC"), Some("ES256"))
        );
        // A public-key-only file verifies what the private key signed; its kid is the same.
        let pubf = write(dir.path(), "sa.pub", &kp.public_key_pem());
        let verifier = Tokens::new(None, &[pubf], "https://iss", &[], false).unwrap();
        assert_eq!(verifier.jwks()["keys"][0]["kid"], jwk["kid"]);
        let t = tokens
            .sign(&claims("https://iss", "https://iss", 600))
            .unwrap();
        assert!(verifier.verify_jwt(&t, None).is_ok());
        assert!(verifier.sign(&json!({})).is_err());
        // A different key does not verify it.
        let other = write(
            dir.path(),
            "o.key",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let other = Tokens::new(Some(&other), &[], "https://iss", &[], false).unwrap();
        assert_eq!(other.verify_jwt(&t, None).unwrap_err(), "invalid signature");
    }

    /// RSA (PKCS#1, from `openssl genrsa -traditional`) and SEC1 EC keys, as openssl writes them.
    #[test]
    fn openssl_rsa_and_sec1_keys() {
        let dir = tempfile::tempdir().unwrap();
        for (name, args) in [
            ("rsa.key", &["genrsa", "-traditional", "2048"][..]),
            (
                "ec.key",
                &["ecparam", "-name", "prime256v1", "-genkey", "-noout"][..],
            ),
        ] {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl is needed to make test keys");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let key = write(dir.path(), name, &text);
            let tokens = Tokens::new(Some(&key), &[], "https://iss", &[], false)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            roundtrip(&tokens);
        }
    }

    #[test]
    fn bootstrap_token_shape_and_bearer_header() {
        assert_eq!(
            bootstrap_parts("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert_eq!(bootstrap_parts("abcdef.0123456789ABCDEF"), None);
        assert_eq!(bootstrap_parts("abc.def"), None);
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert(http::header::AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&h), None);
        assert!(constant_time_eq(b"ab", b"ab") && !constant_time_eq(b"ab", b"ac"));
    }
}
