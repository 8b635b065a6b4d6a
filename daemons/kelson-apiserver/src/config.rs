//! kelson-apiserver configuration: flags named like kube-apiserver's, the same keys in TOML.
//!
//! As for every Kelson daemon the effective configuration is layered: built-in defaults
//! (kube-apiserver's), then the `--config` TOML file, then command-line flags. Every flag is an
//! `Option` in [`ApiServerFlags`] so "not given" differs from "given the default"; the runtime
//! serializes the given ones into a TOML table merged over the file. [`ApiServerConfig`] denies
//! unknown keys, so a misspelt key is a startup error naming it.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Command-line flags (kube-apiserver's names).
#[derive(clap::Args, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApiServerFlags {
    /// The port on which to serve HTTPS with authentication and authorization.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_port: Option<u16>,
    /// The IP address on which to listen for the --secure-port port.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<IpAddr>,
    /// List of etcd servers to connect with (scheme://ip:port), comma separated.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_servers: Option<String>,
    /// SSL Certificate Authority file used to secure etcd communication.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_cafile: Option<PathBuf>,
    /// SSL certification file used to secure etcd communication.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_certfile: Option<PathBuf>,
    /// SSL key file used to secure etcd communication.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_keyfile: Option<PathBuf>,
    /// The prefix to prepend to all resource paths in etcd.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_prefix: Option<String>,
    /// File containing the default x509 certificate for HTTPS.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// File containing the default x509 private key matching --tls-cert-file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_private_key_file: Option<PathBuf>,
    /// Any request presenting a client certificate signed by one of the authorities in this
    /// file is authenticated with an identity from the certificate's CommonName.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// A CIDR notation IP range from which to assign service cluster IPs.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_cluster_ip_range: Option<String>,
    /// A port range to reserve for services with NodePort visibility (e.g. 30000-32767).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_node_port_range: Option<String>,
    /// How often allocations leaked by interrupted Service creates are looked for (Kelson;
    /// upstream hard-codes 3m). A leak is released after 3 passes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_allocation_repair_interval: Option<String>,
    /// Ordered list of plug-ins to do authorization on the secure port: RBAC or AlwaysAllow.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_mode: Option<String>,
    /// Enables anonymous requests (user system:anonymous, group system:unauthenticated).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous_auth: Option<bool>,
    /// Serve LIST and watch from per-resource watch caches (upstream's --watch-cache).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_cache: Option<bool>,
    /// Path to the file that contains the current private key of the service account token
    /// issuer (RSA or ECDSA P-256, PEM).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_signing_key_file: Option<PathBuf>,
    /// File(s) of PEM keys (public or private, or certificates) that verify service account
    /// tokens; repeatable. Defaults to the signing key.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_key_file: Option<Vec<PathBuf>>,
    /// Identifier of the service account token issuer (the `iss` claim).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_issuer: Option<String>,
    /// Identifiers of the API; tokens must name one of them (comma separated; default: the
    /// issuer).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_audiences: Option<Vec<String>>,
    /// Allow bootstrap tokens (Secrets of type bootstrap.kubernetes.io/token in kube-system).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_bootstrap_token_auth: Option<bool>,
    /// If set, all requests coming to the API server are logged to this file (JSON lines).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_log_path: Option<PathBuf>,
    /// Path to the file that defines the audit policy (audit.k8s.io/v1 Policy).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_policy_file: Option<PathBuf>,
    /// The maximum size in megabytes of the audit log file before it gets rotated (0: never).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_log_maxsize: Option<u64>,
    /// The maximum number of old audit log files to retain (0: keep all).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_log_maxbackup: Option<u32>,
    /// The maximum number of days to retain old audit log files (0: no limit).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_log_maxage: Option<u32>,
    /// The file with the configuration for encryption providers to be used for storing
    /// secrets in the store (apiserver.config.k8s.io/v1 EncryptionConfiguration).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_provider_config: Option<PathBuf>,
    /// Client certificate the API server presents to kubelets (logs, exec, port-forward).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubelet_client_certificate: Option<PathBuf>,
    /// Key of --kubelet-client-certificate.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubelet_client_key: Option<PathBuf>,
    /// CA bundle kubelets' serving certificates are verified against (unset: not verified,
    /// as upstream does without this flag).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubelet_certificate_authority: Option<PathBuf>,
}

/// The effective configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApiServerConfig {
    #[serde(default = "default_secure_port")]
    pub secure_port: u16,
    #[serde(default = "default_bind_address")]
    pub bind_address: IpAddr,
    #[serde(default = "default_etcd_servers")]
    pub etcd_servers: String,
    #[serde(default)]
    pub etcd_cafile: Option<PathBuf>,
    #[serde(default)]
    pub etcd_certfile: Option<PathBuf>,
    #[serde(default)]
    pub etcd_keyfile: Option<PathBuf>,
    #[serde(default = "default_etcd_prefix")]
    pub etcd_prefix: String,
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_private_key_file: Option<PathBuf>,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    #[serde(default = "default_service_range")]
    pub service_cluster_ip_range: String,
    #[serde(default = "default_node_port_range")]
    pub service_node_port_range: String,
    #[serde(default = "default_repair_interval")]
    pub service_allocation_repair_interval: String,
    #[serde(default = "default_authz")]
    pub authorization_mode: String,
    #[serde(default)]
    pub anonymous_auth: bool,
    #[serde(default = "default_true")]
    pub watch_cache: bool,
    #[serde(default)]
    pub service_account_signing_key_file: Option<PathBuf>,
    #[serde(default)]
    pub service_account_key_file: Vec<PathBuf>,
    #[serde(default = "default_issuer")]
    pub service_account_issuer: String,
    #[serde(default)]
    pub api_audiences: Vec<String>,
    #[serde(default)]
    pub enable_bootstrap_token_auth: bool,
    #[serde(default)]
    pub audit_log_path: Option<PathBuf>,
    #[serde(default)]
    pub audit_policy_file: Option<PathBuf>,
    #[serde(default)]
    pub audit_log_maxsize: u64,
    #[serde(default)]
    pub audit_log_maxbackup: u32,
    #[serde(default)]
    pub audit_log_maxage: u32,
    #[serde(default)]
    pub encryption_provider_config: Option<PathBuf>,
    #[serde(default)]
    pub kubelet_client_certificate: Option<PathBuf>,
    #[serde(default)]
    pub kubelet_client_key: Option<PathBuf>,
    #[serde(default)]
    pub kubelet_certificate_authority: Option<PathBuf>,
}

/// kubeadm's issuer (upstream has no default; a cluster needs one to issue tokens).
fn default_issuer() -> String {
    "https://kubernetes.default.svc.cluster.local".into()
}
fn default_secure_port() -> u16 {
    6443
}
fn default_bind_address() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}
fn default_etcd_servers() -> String {
    "http://127.0.0.1:2379".into()
}
fn default_etcd_prefix() -> String {
    "/registry".into()
}
fn default_service_range() -> String {
    "10.96.0.0/12".into()
}
fn default_node_port_range() -> String {
    "30000-32767".into()
}
fn default_repair_interval() -> String {
    "3m".into()
}
fn default_true() -> bool {
    true
}

fn default_authz() -> String {
    "RBAC".into()
}

/// Which authorizer `--authorization-mode` chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzMode {
    AlwaysAllow,
    Rbac,
    /// The Node authorizer (node_authz.rs); upstream's `Node`, used as `Node,RBAC`.
    Node,
}

impl ApiServerConfig {
    /// Checks what serde cannot: TLS files present, ranges parse, a known authorization mode.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.tls_cert_file.is_none() || self.tls_private_key_file.is_none() {
            bail!("--tls-cert-file and --tls-private-key-file are required (the API server serves HTTPS only)");
        }
        if self.etcd_servers().is_empty() {
            bail!("--etcd-servers is empty");
        }
        self.service_cidr()?;
        self.node_port_range()?;
        self.allocation_repair_interval()?;
        self.authz_mode()?;
        if !self.etcd_prefix.starts_with('/') {
            bail!("--etcd-prefix must start with '/'");
        }
        Ok(())
    }

    pub fn etcd_servers(&self) -> Vec<String> {
        self.etcd_servers
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The first of [`Self::authz_modes`].
    pub fn authz_mode(&self) -> anyhow::Result<AuthzMode> {
        self.authz_modes()?
            .first()
            .copied()
            .context("--authorization-mode is empty")
    }

    /// `--authorization-mode`: a comma list, consulted in order (a union: the first to allow
    /// wins). Webhook and friends are not implemented and are an error, not a silent allow.
    pub fn authz_modes(&self) -> anyhow::Result<Vec<AuthzMode>> {
        let mut modes = Vec::new();
        for m in self.authorization_mode.split(',').map(str::trim) {
            let mode = match m {
                "AlwaysAllow" => AuthzMode::AlwaysAllow,
                "RBAC" => AuthzMode::Rbac,
                "Node" => AuthzMode::Node,
                other => {
                    bail!("--authorization-mode: unsupported mode {other:?} (Node, RBAC or AlwaysAllow)")
                }
            };
            if !modes.contains(&mode) {
                modes.push(mode);
            }
        }
        if modes.is_empty() {
            bail!("--authorization-mode is empty");
        }
        Ok(modes)
    }

    pub fn service_cidr(&self) -> anyhow::Result<crate::alloc::Cidr> {
        crate::alloc::Cidr::parse(&self.service_cluster_ip_range).with_context(|| {
            format!(
                "--service-cluster-ip-range {:?}",
                self.service_cluster_ip_range
            )
        })
    }

    /// `--service-allocation-repair-interval` (`crate::alloc_repair`).
    pub fn allocation_repair_interval(&self) -> anyhow::Result<std::time::Duration> {
        crate::alloc_repair::parse_interval(&self.service_allocation_repair_interval)
            .map_err(|e| anyhow::anyhow!("--service-allocation-repair-interval {e}"))
    }

    pub fn node_port_range(&self) -> anyhow::Result<(u16, u16)> {
        let r = &self.service_node_port_range;
        let (a, b) = r
            .split_once('-')
            .with_context(|| format!("--service-node-port-range {r:?}: want FROM-TO"))?;
        let a: u16 = a
            .trim()
            .parse()
            .with_context(|| format!("--service-node-port-range {r:?}"))?;
        let b: u16 = b
            .trim()
            .parse()
            .with_context(|| format!("--service-node-port-range {r:?}"))?;
        if a == 0 || a > b {
            bail!("--service-node-port-range {r:?}: empty or invalid range");
        }
        Ok((a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kube_apiservers() {
        let c: ApiServerConfig = toml::from_str("").unwrap();
        assert_eq!(c.secure_port, 6443);
        assert_eq!(c.service_cluster_ip_range, "10.96.0.0/12");
        assert_eq!(c.node_port_range().unwrap(), (30000, 32767));
        assert_eq!(c.authz_mode().unwrap(), AuthzMode::Rbac);
        assert!(!c.anonymous_auth);
    }

    #[test]
    fn bad_values_are_errors() {
        let mut c: ApiServerConfig = toml::from_str("").unwrap();
        c.authorization_mode = "Webhook".into();
        assert!(c.authz_mode().is_err());
        c.authorization_mode = "AlwaysAllow,RBAC".into();
        assert_eq!(c.authz_mode().unwrap(), AuthzMode::AlwaysAllow);
        c.authorization_mode = "Node,RBAC".into();
        assert_eq!(
            c.authz_modes().unwrap(),
            vec![AuthzMode::Node, AuthzMode::Rbac]
        );
        c.service_node_port_range = "5-1".into();
        assert!(c.node_port_range().is_err());
        c.service_cluster_ip_range = "10.0.0.0/99".into();
        assert!(c.service_cidr().is_err());
        assert!(toml::from_str::<ApiServerConfig>("nonsense = 1").is_err());
    }
}
