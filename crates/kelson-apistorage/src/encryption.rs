//! Encryption at rest: upstream's `EncryptionConfiguration` (apiserver.config.k8s.io/v1)
//! applied to stored values.
//!
//! Per group of resources, an ordered list of providers (`aesgcm`, `aescbc`, `secretbox`,
//! `identity`), each with named keys. The first key of the first provider encrypts every
//! write; every configured key decrypts. Ciphertext is stored in upstream's format, so the
//! stored bytes read the same as kube-apiserver's:
//! `k8s:enc:<provider>:v1:<key name>:` followed by
//! - aesgcm: 12-byte random nonce ‖ AES-GCM(seal) with the storage key as additional data;
//! - aescbc: 16-byte random IV ‖ AES-CBC with PKCS#7 padding;
//! - secretbox: 24-byte random nonce ‖ XSalsa20-Poly1305.
//!
//! `identity` stores plaintext without a prefix; as a later provider it lets a cluster read
//! what was written before encryption was turned on. A value read with anything but the
//! first key is *stale*: storage then rewrites it on the next update even when the object
//! did not change, which is what makes rotation work (add a new first key, restart, then
//! `kubectl get secrets -A -o json | kubectl replace -f -`).
//!
//! Resources map to key prefixes the way the API server lays out keys: `secrets` →
//! `<root>/secrets/`, `deployments.apps` → `<root>/apps/deployments/`, `*.apps` →
//! `<root>/apps/`, `*.*` → everything. (`*.` — every core resource — has no key prefix of
//! its own in that layout and is refused.) The RustCrypto crates do the cryptography:
//! ring has neither AES-CBC, nor 192-bit AES-GCM keys, nor XSalsa20.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;

use crate::StorageError;

const PREFIX: &str = "k8s:enc:";

/// Errors in the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encryption provider config {path}: {msg}")]
    Invalid { path: String, msg: String },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileConfig {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    resources: Vec<FileResources>,
}

#[derive(Debug, Deserialize)]
struct FileResources {
    resources: Vec<String>,
    providers: Vec<FileProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    #[serde(default)]
    aesgcm: Option<FileKeys>,
    #[serde(default)]
    aescbc: Option<FileKeys>,
    #[serde(default)]
    secretbox: Option<FileKeys>,
    #[serde(default)]
    identity: Option<serde_yaml::Value>,
    #[serde(default)]
    kms: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
struct FileKeys {
    keys: Vec<FileKey>,
}

#[derive(Debug, Deserialize)]
struct FileKey {
    name: String,
    secret: String,
}

#[derive(Clone)]
enum Cipher {
    Identity,
    AesGcm128(aes_gcm::Aes128Gcm),
    AesGcm192(aes_gcm::AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>),
    AesGcm256(aes_gcm::Aes256Gcm),
    AesCbc(Vec<u8>),
    SecretBox(crypto_secretbox::XSalsa20Poly1305),
}

/// One key of one provider: its prefix and cipher.
#[derive(Clone)]
struct Key {
    /// `k8s:enc:<provider>:v1:<name>:`; empty for identity.
    prefix: Vec<u8>,
    cipher: Cipher,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.write_str(&String::from_utf8_lossy(&self.prefix))
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

fn fail(msg: impl Into<String>) -> StorageError {
    StorageError::Internal(msg.into())
}

impl Key {
    fn encrypt(&self, storage_key: &[u8], plain: &[u8]) -> Result<Vec<u8>, StorageError> {
        let mut out = self.prefix.clone();
        let gcm = |out: &mut Vec<u8>, r: Result<Vec<u8>, aes_gcm::Error>, nonce: &[u8]| {
            out.extend_from_slice(nonce);
            out.extend(r.map_err(|_| fail("aesgcm: encryption failed"))?);
            Ok::<(), StorageError>(())
        };
        let payload = Payload {
            msg: plain,
            aad: storage_key,
        };
        match &self.cipher {
            Cipher::Identity => return Ok(plain.to_vec()),
            Cipher::AesGcm128(c) => {
                let n = random::<12>();
                gcm(&mut out, c.encrypt((&n).into(), payload), &n)?
            }
            Cipher::AesGcm192(c) => {
                let n = random::<12>();
                gcm(&mut out, c.encrypt((&n).into(), payload), &n)?
            }
            Cipher::AesGcm256(c) => {
                let n = random::<12>();
                gcm(&mut out, c.encrypt((&n).into(), payload), &n)?
            }
            Cipher::AesCbc(k) => {
                use cbc::cipher::{BlockEncryptMut, KeyIvInit};
                let iv = random::<16>();
                let ct = match k.len() {
                    16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(k, &iv).map(|e| {
                        e.encrypt_padded_vec_mut::<cbc::cipher::block_padding::Pkcs7>(plain)
                    }),
                    24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(k, &iv).map(|e| {
                        e.encrypt_padded_vec_mut::<cbc::cipher::block_padding::Pkcs7>(plain)
                    }),
                    _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(k, &iv).map(|e| {
                        e.encrypt_padded_vec_mut::<cbc::cipher::block_padding::Pkcs7>(plain)
                    }),
                }
                .map_err(|_| fail("aescbc: bad key"))?;
                out.extend_from_slice(&iv);
                out.extend(ct);
            }
            Cipher::SecretBox(c) => {
                let n = random::<24>();
                let ct = c
                    .encrypt((&n).into(), plain)
                    .map_err(|_| fail("secretbox: encryption failed"))?;
                out.extend_from_slice(&n);
                out.extend(ct);
            }
        }
        Ok(out)
    }

    /// Decrypts `data` (the prefix already removed).
    fn decrypt(&self, storage_key: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
        let gcm = |r: Result<Vec<u8>, aes_gcm::Error>| {
            r.map_err(|_| "aesgcm: the data could not be authenticated".to_string())
        };
        let split = |n: usize| {
            (data.len() >= n)
                .then(|| data.split_at(n))
                .ok_or_else(|| "the stored data is too short".to_string())
        };
        match &self.cipher {
            Cipher::Identity => Ok(data.to_vec()),
            Cipher::AesGcm128(c) => {
                let (n, ct) = split(12)?;
                gcm(c.decrypt(
                    n.into(),
                    Payload {
                        msg: ct,
                        aad: storage_key,
                    },
                ))
            }
            Cipher::AesGcm192(c) => {
                let (n, ct) = split(12)?;
                gcm(c.decrypt(
                    n.into(),
                    Payload {
                        msg: ct,
                        aad: storage_key,
                    },
                ))
            }
            Cipher::AesGcm256(c) => {
                let (n, ct) = split(12)?;
                gcm(c.decrypt(
                    n.into(),
                    Payload {
                        msg: ct,
                        aad: storage_key,
                    },
                ))
            }
            Cipher::AesCbc(k) => {
                use cbc::cipher::{BlockDecryptMut, KeyIvInit};
                let (iv, ct) = split(16)?;
                let r = match k.len() {
                    16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(k, iv)
                        .map(|d| d.decrypt_padded_vec_mut::<cbc::cipher::block_padding::Pkcs7>(ct)),
                    24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(k, iv)
                        .map(|d| d.decrypt_padded_vec_mut::<cbc::cipher::block_padding::Pkcs7>(ct)),
                    _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(k, iv)
                        .map(|d| d.decrypt_padded_vec_mut::<cbc::cipher::block_padding::Pkcs7>(ct)),
                };
                r.map_err(|_| "aescbc: bad key".to_string())?
                    .map_err(|_| "aescbc: invalid padding (wrong key?)".to_string())
            }
            Cipher::SecretBox(c) => {
                let (n, ct) = split(24)?;
                c.decrypt(n.into(), ct)
                    .map_err(|_| "secretbox: the data could not be authenticated".to_string())
            }
        }
    }
}

/// The providers for one set of resources, in order.
#[derive(Debug, Clone)]
struct Chain {
    /// Key prefixes (under the storage root) the chain applies to.
    key_prefixes: Vec<String>,
    keys: Vec<Key>,
}

/// A loaded `EncryptionConfiguration`.
#[derive(Debug, Clone)]
pub struct Encryption {
    chains: Vec<Chain>,
}

impl Encryption {
    /// Reads `path` (YAML or JSON); `root` is the key root (`--etcd-prefix`, e.g. `/registry`).
    pub fn load(path: &Path, root: &str) -> Result<Encryption, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, root).map_err(|msg| ConfigError::Invalid {
            path: path.display().to_string(),
            msg,
        })
    }

    /// Parses a configuration document.
    pub fn parse(text: &str, root: &str) -> Result<Encryption, String> {
        let cfg: FileConfig = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if cfg.kind != "EncryptionConfiguration"
            || !cfg.api_version.starts_with("apiserver.config.k8s.io/")
        {
            return Err(format!(
                "want kind EncryptionConfiguration of apiserver.config.k8s.io/v1, got {:?} {:?}",
                cfg.api_version, cfg.kind
            ));
        }
        let root = root.trim_end_matches('/');
        let mut chains = Vec::new();
        for (i, r) in cfg.resources.iter().enumerate() {
            let mut key_prefixes = Vec::new();
            for res in &r.resources {
                let p = match res.split_once('.') {
                    Some(("*", "*")) => format!("{root}/"),
                    Some(("*", "")) => {
                        return Err(format!(
                        "resources[{i}]: \"*.\" (every core resource) is not supported; list them"
                    ))
                    }
                    Some(("*", g)) => format!("{root}/{g}/"),
                    Some((r, "")) => format!("{root}/{r}/"),
                    None => format!("{root}/{res}/"),
                    Some((r, g)) => format!("{root}/{g}/{r}/"),
                };
                key_prefixes.push(p);
            }
            if r.providers.is_empty() {
                return Err(format!("resources[{i}]: providers is empty"));
            }
            let mut keys = Vec::new();
            for (j, p) in r.providers.iter().enumerate() {
                let at = format!("resources[{i}].providers[{j}]");
                let set = [
                    p.aesgcm.is_some(),
                    p.aescbc.is_some(),
                    p.secretbox.is_some(),
                    p.identity.is_some(),
                    p.kms.is_some(),
                ];
                if set.iter().filter(|b| **b).count() != 1 {
                    return Err(format!("{at}: exactly one provider must be given"));
                }
                if p.kms.is_some() {
                    return Err(format!("{at}: the kms provider is not supported"));
                }
                if p.identity.is_some() {
                    keys.push(Key {
                        prefix: Vec::new(),
                        cipher: Cipher::Identity,
                    });
                    continue;
                }
                let (name, fk) = if let Some(k) = &p.aesgcm {
                    ("aesgcm", k)
                } else if let Some(k) = &p.aescbc {
                    ("aescbc", k)
                } else {
                    (
                        "secretbox",
                        p.secretbox.as_ref().expect("one provider is set"),
                    )
                };
                if fk.keys.is_empty() {
                    return Err(format!("{at}.{name}.keys: Required value"));
                }
                for (k, key) in fk.keys.iter().enumerate() {
                    let at = format!("{at}.{name}.keys[{k}]");
                    if key.name.is_empty() || key.name.contains(':') {
                        return Err(format!("{at}.name: must be non-empty without ':'"));
                    }
                    let secret = STANDARD
                        .decode(key.secret.trim())
                        .map_err(|e| format!("{at}.secret: not base64: {e}"))?;
                    let cipher = match (name, secret.len()) {
                        ("aesgcm", 16) => Cipher::AesGcm128(
                            aes_gcm::Aes128Gcm::new_from_slice(&secret).expect("16-byte key"),
                        ),
                        ("aesgcm", 24) => Cipher::AesGcm192(
                            aes_gcm::AesGcm::new_from_slice(&secret).expect("24-byte key"),
                        ),
                        ("aesgcm", 32) => Cipher::AesGcm256(
                            aes_gcm::Aes256Gcm::new_from_slice(&secret).expect("32-byte key"),
                        ),
                        ("aescbc", 16 | 24 | 32) => Cipher::AesCbc(secret),
                        ("secretbox", 32) => Cipher::SecretBox(
                            crypto_secretbox::XSalsa20Poly1305::new_from_slice(&secret)
                                .expect("32-byte key"),
                        ),
                        ("secretbox", n) => {
                            return Err(format!(
                                "{at}.secret: secretbox needs a 32-byte key, got {n}"
                            ))
                        }
                        (_, n) => {
                            return Err(format!(
                                "{at}.secret: {name} needs a 16, 24 or 32-byte key, got {n}"
                            ))
                        }
                    };
                    keys.push(Key {
                        prefix: format!("{PREFIX}{name}:v1:{}:", key.name).into_bytes(),
                        cipher,
                    });
                }
            }
            chains.push(Chain { key_prefixes, keys });
        }
        Ok(Encryption { chains })
    }

    /// The first chain whose resources include `key`.
    fn chain(&self, key: &[u8]) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.key_prefixes.iter().any(|p| key.starts_with(p.as_bytes())))
    }

    /// The bytes to store for `plain` at `key`.
    pub fn to_storage(&self, key: &str, plain: Vec<u8>) -> Result<Vec<u8>, StorageError> {
        match self.chain(key.as_bytes()).and_then(|c| c.keys.first()) {
            Some(k) => k.encrypt(key.as_bytes(), &plain),
            None => Ok(plain),
        }
    }

    /// The plaintext of the stored `data` at `key`, and whether it is stale (not written with
    /// the current first key, so an update should rewrite it).
    pub fn from_storage(&self, key: &[u8], data: &[u8]) -> Result<(Vec<u8>, bool), StorageError> {
        let Some(chain) = self.chain(key) else {
            return Ok((data.to_vec(), false));
        };
        let mut last_err = None;
        for (i, k) in chain.keys.iter().enumerate() {
            if matches!(k.cipher, Cipher::Identity) {
                // Plaintext has no prefix; something that looks encrypted is not plaintext.
                if !data.starts_with(PREFIX.as_bytes()) {
                    return Ok((data.to_vec(), i != 0));
                }
                continue;
            }
            if let Some(rest) = data.strip_prefix(k.prefix.as_slice()) {
                match k.decrypt(key, rest) {
                    Ok(p) => return Ok((p, i != 0)),
                    Err(e) => last_err = Some(e),
                }
            }
        }
        Err(StorageError::Internal(format!(
            "decrypting {:?}: {}",
            String::from_utf8_lossy(key),
            last_err.unwrap_or_else(|| "no matching prefix found".into())
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(providers: &str) -> Encryption {
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, deployments.apps]\n  providers:\n{providers}"
        );
        Encryption::parse(&text, "/registry").unwrap()
    }

    const K16: &str = "MDEyMzQ1Njc4OWFiY2RlZg=="; // "0123456789abcdef"
    const K32: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn every_provider_round_trips_with_upstreams_prefix() {
        for (name, secret) in [
            ("aesgcm", K16),
            ("aesgcm", K32),
            ("aescbc", K32),
            ("secretbox", K32),
        ] {
            let e = cfg(&format!(
                "  - {name}:\n      keys:\n      - name: k1\n        secret: {secret}\n  - identity: {{}}\n"
            ));
            let key = "/registry/secrets/default/s";
            let stored = e
                .to_storage(key, b"{\"kind\":\"Secret\"}".to_vec())
                .unwrap();
            let prefix = format!("k8s:enc:{name}:v1:k1:");
            assert!(stored.starts_with(prefix.as_bytes()), "{name}");
            assert!(
                !stored.windows(6).any(|w| w == b"Secret"),
                "{name}: plaintext leaked"
            );
            let (plain, stale) = e.from_storage(key.as_bytes(), &stored).unwrap();
            assert_eq!(
                (plain.as_slice(), stale),
                (&b"{\"kind\":\"Secret\"}"[..], false)
            );
            // Plaintext written before encryption is read through identity, marked stale.
            let (p, stale) = e.from_storage(key.as_bytes(), b"{}").unwrap();
            assert_eq!((p.as_slice(), stale), (&b"{}"[..], true));
            // Tampering is detected by the authenticated ciphers.
            if name != "aescbc" {
                let mut bad = stored.clone();
                *bad.last_mut().unwrap() ^= 1;
                assert!(e.from_storage(key.as_bytes(), &bad).is_err(), "{name}");
                // aesgcm binds the value to its key.
                if name == "aesgcm" {
                    assert!(e
                        .from_storage(b"/registry/secrets/default/t", &stored)
                        .is_err());
                }
            }
        }
    }

    #[test]
    fn rotation_and_resource_mapping() {
        let old = cfg(&format!(
            "  - aesgcm:\n      keys:\n      - name: old\n        secret: {K16}\n"
        ));
        let rotated = cfg(&format!(
            "  - aesgcm:\n      keys:\n      - name: new\n        secret: {K32}\n      - name: old\n        secret: {K16}\n"
        ));
        let key = "/registry/apps/deployments/ns/d";
        let stored = old.to_storage(key, b"x".to_vec()).unwrap();
        assert_eq!(
            rotated.from_storage(key.as_bytes(), &stored).unwrap(),
            (b"x".to_vec(), true)
        );
        let restored = rotated.to_storage(key, b"x".to_vec()).unwrap();
        assert!(restored.starts_with(b"k8s:enc:aesgcm:v1:new:"));
        // Without identity, plaintext is an error; other resources are untouched.
        assert!(old.from_storage(key.as_bytes(), b"{}").is_err());
        assert_eq!(
            old.to_storage("/registry/configmaps/a/b", b"p".to_vec())
                .unwrap(),
            b"p"
        );
        assert!(Encryption::parse("kind: Other", "/registry").is_err());
        let bad_len = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - secretbox:\n      keys:\n      - name: a\n        secret: {K16}\n"
        );
        assert!(Encryption::parse(&bad_len, "/registry")
            .unwrap_err()
            .contains("32-byte"));
    }
}
