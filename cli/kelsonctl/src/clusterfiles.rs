//! The secure-by-default files a control plane and node need beyond the store's PKI, created
//! once and kept across restarts (a resume must not invalidate tokens, Secrets or certificates
//! that clients already hold):
//!
//! - `sa.key`: the ServiceAccount token signing key (EC P-256, PKCS#8, 0600). Replacing it would
//!   invalidate every issued token, so an existing one is never touched.
//! - `encryption-config.yaml`: an `EncryptionConfiguration` that encrypts Secrets with
//!   `secretbox` (XSalsa20-Poly1305, upstream's recommendation among the local providers;
//!   `aesgcm` needs rotation every 200k writes) under a random 32-byte key, with `identity` as
//!   the second provider so Secrets written before encryption was on stay readable.
//! - `audit-policy.yaml`: Metadata for every request except health probes and the high-volume
//!   reads of node agents, and never a body for Secrets, ConfigMaps or token requests.
//! - `apiserver-kubelet-client.{crt,key}`: the API server's identity towards kubelets (logs,
//!   exec, port-forward), `system:masters` as kubeadm's.
//! - `kubelet-serving.{crt,key}`: the kubelet API's serving certificate for one node.
//!
//! `kelsonctl up` uses these; so can any other layout that wants the same defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use kelson_pki::{CertRequest, PkiPaths, Usage};

/// Paths of the files [`ensure_control_plane_files`] keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneFiles {
    pub sa_key: PathBuf,
    pub encryption_config: PathBuf,
    pub audit_policy: PathBuf,
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
}

impl ControlPlaneFiles {
    /// Where the files live under a PKI directory (whether or not they exist yet).
    pub fn under(dir: &Path) -> ControlPlaneFiles {
        ControlPlaneFiles {
            sa_key: dir.join("sa.key"),
            encryption_config: dir.join("encryption-config.yaml"),
            audit_policy: dir.join("audit-policy.yaml"),
            kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
            kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
        }
    }
}

/// The kubelet API's serving certificate and key under a PKI directory.
pub fn kubelet_serving_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (
        dir.join("kubelet-serving.crt"),
        dir.join("kubelet-serving.key"),
    )
}

/// The issuer of ServiceAccount tokens (kubeadm's default).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The default audit policy.
pub const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
# Written by kelsonctl. The first matching rule wins.
omitStages: ["RequestReceived"]
rules:
  # Probes and discovery are noise.
  - level: None
    nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version", "/api", "/api/*", "/apis", "/apis/*", "/openapi/*"]
  # Node agents' steady reads and lease renewals.
  - level: None
    userGroups: ["system:nodes"]
    verbs: ["get", "list", "watch"]
  - level: None
    resources:
      - group: coordination.k8s.io
        resources: ["leases"]
    verbs: ["get", "update"]
  - level: None
    resources:
      - group: ""
        resources: ["events"]
  # Never log bodies that may carry secrets.
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "configmaps", "serviceaccounts/token"]
      - group: authentication.k8s.io
        resources: ["tokenreviews"]
  # Everything else: who did what to which object, and the outcome.
  - level: Metadata
"#;

fn keep(cert: &Path, key: &Path, subject: &str, sans: &[String]) -> bool {
    kelson_pki::cert_info(cert).ok().is_some_and(|info| {
        !info.expires_within(Duration::from_secs(30 * 86400))
            && info.issuer.contains("kelson-ca")
            && info.subject.contains(subject)
            && sans.iter().all(|s| info.sans.contains(s))
    }) && key.is_file()
}

/// Creates what is missing under `pki.dir`; keeps what exists and is still valid.
pub fn ensure_control_plane_files(pki: &PkiPaths) -> anyhow::Result<ControlPlaneFiles> {
    let dir = &pki.dir;
    let files = ControlPlaneFiles::under(dir);
    if !files.sa_key.is_file() {
        let key = rcgen::KeyPair::generate().context("generating the service-account key")?;
        kelson_pki::write_atomic(&files.sa_key, key.serialize_pem().as_bytes(), 0o600)?;
    }
    if !files.encryption_config.is_file() {
        use base64::Engine;
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let text = encryption_config(&base64::engine::general_purpose::STANDARD.encode(secret));
        kelson_pki::write_atomic(&files.encryption_config, text.as_bytes(), 0o600)?;
    }
    if !files.audit_policy.is_file() {
        kelson_pki::write_atomic(&files.audit_policy, AUDIT_POLICY.as_bytes(), 0o644)?;
    }
    if !keep(
        &files.kubelet_client_cert,
        &files.kubelet_client_key,
        "CN=kube-apiserver-kubelet-client",
        &[],
    ) {
        let ca = kelson_pki::Ca::load(dir).context("loading the cluster CA")?;
        let req = CertRequest {
            organization: Some("system:masters".into()),
            ..CertRequest::new("kube-apiserver-kubelet-client", Usage::Client)
        };
        ca.issue(&req)?
            .write_pair(dir, "apiserver-kubelet-client")?;
    }
    Ok(files)
}

/// The `EncryptionConfiguration` for Secrets with one secretbox key (`key1`).
pub fn encryption_config(secret_b64: &str) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [\"secrets\"]\n    providers:\n      - secretbox:\n          keys:\n            - name: key1\n              secret: {secret_b64}\n      - identity: {{}}\n"
    )
}

/// The kubelet API's serving certificate for `node` (`kubelet-serving.crt/.key`), with the
/// node's name and addresses as SANs.
pub fn ensure_kubelet_serving_cert(
    pki: &PkiPaths,
    node: &str,
    ips: &[std::net::IpAddr],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = kubelet_serving_paths(&pki.dir);
    let mut sans: Vec<String> = vec![node.to_string()];
    sans.extend(ips.iter().map(|i| i.to_string()));
    if !keep(&cert, &key, &format!("CN=system:node:{node}"), &sans) {
        let ca = kelson_pki::Ca::load(&pki.dir).context("loading the cluster CA")?;
        let req = CertRequest {
            organization: Some("system:nodes".into()),
            dns_names: vec![node.to_string()],
            ip_addresses: ips.to_vec(),
            ..CertRequest::new(format!("system:node:{node}"), Usage::Server)
        };
        ca.issue(&req)?.write_pair(&pki.dir, "kubelet-serving")?;
    }
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let pki = kelson_pki::init_store_pki(&dir.path().join("pki"), &[]).unwrap();
        let a = ensure_control_plane_files(&pki).unwrap();
        let key1 = std::fs::read(&a.sa_key).unwrap();
        let enc1 = std::fs::read_to_string(&a.encryption_config).unwrap();
        assert!(enc1.contains("secretbox") && enc1.contains("identity"));
        use std::os::unix::fs::PermissionsExt;
        for p in [&a.sa_key, &a.encryption_config, &a.kubelet_client_key] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let info = kelson_pki::cert_info(&a.kubelet_client_cert).unwrap();
        assert!(info.subject.contains("system:masters"), "{}", info.subject);
        let b = ensure_control_plane_files(&pki).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::read(&b.sa_key).unwrap(), key1);
        assert_eq!(std::fs::read_to_string(&b.encryption_config).unwrap(), enc1);
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let (cert, _) = ensure_kubelet_serving_cert(&pki, "node-a", &[ip]).unwrap();
        let info = kelson_pki::cert_info(&cert).unwrap();
        assert!(info.sans.contains(&"node-a".to_string()), "{:?}", info.sans);
        assert!(info.sans.contains(&"127.0.0.1".to_string()));
    }
}
