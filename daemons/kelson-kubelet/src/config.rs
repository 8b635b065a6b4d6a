//! The kubelet's configuration: TOML keys and flags named like upstream's kubelet flags.
//!
//! As in every Kelson daemon, flags are merged over the file and the merged table is
//! deserialized once (see `kelson_runtime::config`), so `--print-config` shows exactly what runs
//! and a misspelt key is an error. Durations are whole seconds; lists (`node-labels`,
//! `register-with-taints`) are `key=value` strings like upstream's flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The effective configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KubeletConfig {
    /// Kubeconfig with the node's credentials.
    pub kubeconfig: PathBuf,
    /// Kubeconfig (e.g. a bootstrap token's) used to obtain a client certificate when
    /// `kubeconfig` is missing or invalid (TLS bootstrap, see `bootstrap`).
    #[serde(default)]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// Directory of the client certificates; `<root-dir>/pki` when unset.
    #[serde(default)]
    pub cert_dir: Option<PathBuf>,
    /// Renew the client certificate (by CSR) before it expires, as upstream's default.
    #[serde(default = "default_true")]
    pub rotate_certificates: bool,
    /// Node name; defaults to the lower-cased host name.
    #[serde(default)]
    pub hostname_override: Option<String>,
    /// CRI endpoint (`unix:///path` or a plain path).
    #[serde(default = "default_runtime_endpoint")]
    pub container_runtime_endpoint: String,
    /// Where the CNI config for containerd's CRI plugin is written.
    #[serde(default = "default_cni_conf_dir")]
    pub cni_conf_dir: PathBuf,
    /// Linux bridge the CNI bridge plugin creates for pods.
    #[serde(default = "default_bridge")]
    pub cni_bridge_name: String,
    /// host-local IPAM state directory.
    #[serde(default = "default_ipam_dir")]
    pub cni_ipam_data_dir: PathBuf,
    /// SNAT pod traffic leaving the node (bridge plugin `ipMasq`).
    #[serde(default)]
    pub cni_masquerade: bool,
    /// The node's pod CIDR when Node.spec.podCIDR is unset (no node IPAM running).
    #[serde(default)]
    pub pod_cidr: Option<String>,
    /// Root of per-pod state (volumes).
    #[serde(default = "default_root_dir")]
    pub root_dir: PathBuf,
    /// Root of container logs (`<ns>_<pod>_<uid>/<container>/<restart>.log`, CRI format).
    #[serde(default = "default_pod_logs_dir")]
    pub pod_logs_dir: PathBuf,
    /// The address reported as the node's InternalIP; detected when unset.
    #[serde(default)]
    pub node_ip: Option<String>,
    /// Extra node labels, `key=value`.
    #[serde(default)]
    pub node_labels: Vec<String>,
    /// Taints registered with the node, `key=value:Effect` or `key:Effect`.
    #[serde(default)]
    pub register_with_taints: Vec<String>,
    /// topology.kubernetes.io/zone label.
    #[serde(default)]
    pub zone: Option<String>,
    /// topology.kubernetes.io/region label.
    #[serde(default)]
    pub region: Option<String>,
    /// Resources kept back from pods, e.g. `cpu=100m,memory=256Mi`.
    #[serde(default)]
    pub system_reserved: BTreeMap<String, String>,
    #[serde(default)]
    pub kube_reserved: BTreeMap<String, String>,
    #[serde(default = "default_max_pods")]
    pub max_pods: u32,
    /// Seconds between node status posts.
    #[serde(default = "default_status_freq")]
    pub node_status_update_frequency: u64,
    /// The node Lease's duration (renewed every quarter of it, upstream's 40 s / 10 s).
    #[serde(default = "default_lease_duration")]
    pub node_lease_duration_seconds: i32,
    /// Cgroup parent of all pods (cgroupfs driver).
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: String,
    /// Whether missing images may be pulled from a registry. Off by default: Kelson nodes are
    /// treated as air-gapped, images come from `kelsonctl images import`, and a pull attempt
    /// would only hang on an unreachable registry.
    #[serde(default)]
    pub allow_image_pull: bool,
    /// Address the kubelet API (server/) listens on.
    #[serde(default = "default_address")]
    pub address: std::net::IpAddr,
    /// Port of the kubelet API (upstream's 10250); 0 binds an ephemeral port, which the node
    /// reports in `status.daemonEndpoints`.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Serving certificate of the kubelet API; self-signed under `<root-dir>/pki` when unset.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_private_key_file: Option<PathBuf>,
    /// CA bundle client certificates of kubelet API callers are verified against; without it
    /// every request is unauthenticated (401).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Cluster DNS server IPs written into pods' resolv.conf (dnsPolicy ClusterFirst).
    #[serde(default)]
    pub cluster_dns: Vec<String>,
    /// The cluster's DNS domain.
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// The resolver config pods with dnsPolicy Default (and the search list of ClusterFirst)
    /// start from.
    #[serde(default = "default_resolv_conf")]
    pub resolv_conf: PathBuf,
    /// Directory of static pod manifests (YAML or JSON, one Pod per file).
    #[serde(default)]
    pub pod_manifest_path: Option<PathBuf>,
    /// Seconds between scans of `pod-manifest-path` (upstream's fileCheckFrequency).
    #[serde(default = "default_file_check_frequency")]
    pub file_check_frequency: u64,
    /// Install routes to other nodes' podCIDRs via their InternalIP (multi-node without an
    /// overlay on one L2 segment). Off by default: it changes the host's routing table.
    #[serde(default)]
    pub pod_routes: bool,
    /// Network namespace (`ip netns` name) the pod routes go into instead of the host's.
    #[serde(default)]
    pub pod_routes_netns: Option<String>,
    /// Hard eviction thresholds, upstream's flag syntax: `memory.available<100Mi,nodefs.available<10%`.
    /// Unset: upstream's defaults (see `eviction::thresholds`); set (even to ""): only these.
    #[serde(default)]
    pub eviction_hard: Option<String>,
    /// Soft eviction thresholds (same syntax); each needs a grace period.
    #[serde(default)]
    pub eviction_soft: Option<String>,
    /// Grace periods of the soft thresholds: `memory.available=1m30s,...`.
    #[serde(default)]
    pub eviction_soft_grace_period: Option<String>,
    /// How far above a threshold a signal must get to count as relieved: `nodefs.available=500Mi`.
    #[serde(default)]
    pub eviction_minimum_reclaim: Option<String>,
    /// Seconds a pressure condition stays after its threshold was last met (upstream's 5m).
    #[serde(default = "default_transition")]
    pub eviction_pressure_transition_period: u64,
    /// Longest grace period (seconds) given to pods evicted by a soft threshold.
    #[serde(default)]
    pub eviction_max_pod_grace_period: i64,
    /// Seconds between eviction signal observations (upstream's housekeeping, 10 s).
    #[serde(default = "default_housekeeping")]
    pub housekeeping_interval: u64,
    /// Image filesystem usage percent at which image GC runs (100 disables it).
    #[serde(default = "default_gc_high")]
    pub image_gc_high_threshold: u8,
    /// Usage percent image GC frees down to.
    #[serde(default = "default_gc_low")]
    pub image_gc_low_threshold: u8,
    /// Seconds an image must have been known before GC may remove it (upstream's 2m).
    #[serde(default = "default_gc_age")]
    pub image_minimum_gc_age: u64,
    /// Seconds between image GC checks (upstream's fixed 5 minutes).
    #[serde(default = "default_gc_period")]
    pub image_gc_period: u64,
    /// An image GC never removes besides the runtime's own sandbox image.
    #[serde(default)]
    pub pod_infra_container_image: Option<String>,
    /// Get the kubelet API's serving certificate by a `kubernetes.io/kubelet-serving` CSR
    /// (upstream's serverTLSBootstrap) instead of a self-signed one; ignored with tls-cert-file.
    #[serde(default)]
    pub server_tls_bootstrap: bool,
    /// Seconds between container garbage collections (upstream's fixed 1 minute).
    #[serde(default = "default_container_gc_period")]
    pub container_gc_period: u64,
}

fn default_transition() -> u64 {
    300
}
fn default_housekeeping() -> u64 {
    10
}
fn default_gc_high() -> u8 {
    85
}
fn default_gc_low() -> u8 {
    80
}
fn default_gc_age() -> u64 {
    120
}
fn default_gc_period() -> u64 {
    300
}

fn default_container_gc_period() -> u64 {
    60
}

fn default_true() -> bool {
    true
}
fn default_cluster_domain() -> String {
    "cluster.local".into()
}
fn default_resolv_conf() -> PathBuf {
    "/etc/resolv.conf".into()
}
fn default_file_check_frequency() -> u64 {
    20
}

fn default_address() -> std::net::IpAddr {
    std::net::IpAddr::from([0, 0, 0, 0])
}
fn default_port() -> u16 {
    10250
}
fn default_runtime_endpoint() -> String {
    "unix:///run/containerd/containerd.sock".into()
}
fn default_cni_conf_dir() -> PathBuf {
    "/etc/cni/net.d".into()
}
fn default_bridge() -> String {
    "cni0".into()
}
fn default_ipam_dir() -> PathBuf {
    "/var/lib/cni/networks".into()
}
fn default_root_dir() -> PathBuf {
    "/var/lib/kelson/kubelet".into()
}
fn default_pod_logs_dir() -> PathBuf {
    "/var/log/pods".into()
}
fn default_max_pods() -> u32 {
    110
}
fn default_status_freq() -> u64 {
    10
}
fn default_lease_duration() -> i32 {
    40
}
fn default_cgroup_root() -> String {
    "/kubepods".into()
}

/// Flags; every one overrides the file key of the same name.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct KubeletFlags {
    /// Kubeconfig with the node's credentials.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig to request a client certificate with when --kubeconfig is missing/invalid.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// Directory of the client certificates (default <root-dir>/pki).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_dir: Option<PathBuf>,
    /// Renew the client certificate before it expires (default true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotate_certificates: Option<bool>,
    /// Node name (default: the host name).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname_override: Option<String>,
    /// CRI endpoint, e.g. unix:///run/containerd/containerd.sock.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_runtime_endpoint: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cni_conf_dir: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cni_bridge_name: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cni_ipam_data_dir: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cni_masquerade: Option<bool>,
    /// Pod CIDR used when the Node object has none.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_dir: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_logs_dir: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<String>,
    /// Extra node labels (comma-separated key=value).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_labels: Vec<String>,
    /// Node taints (comma-separated key=value:Effect).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub register_with_taints: Vec<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pods: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_status_update_frequency: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_lease_duration_seconds: Option<i32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<String>,
    /// Allow pulling missing images from registries.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_image_pull: Option<bool>,
    /// Address of the kubelet API (default 0.0.0.0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::IpAddr>,
    /// Port of the kubelet API (default 10250; 0 = ephemeral).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Serving certificate of the kubelet API (default: self-signed).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_private_key_file: Option<PathBuf>,
    /// CA for client certificates of kubelet API callers.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Cluster DNS server IPs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster_dns: Vec<String>,
    /// The cluster's DNS domain (default cluster.local).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
    /// Resolver config file pods start from (default /etc/resolv.conf).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<PathBuf>,
    /// Directory of static pod manifests.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_manifest_path: Option<PathBuf>,
    /// Seconds between scans of the static pod directory.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_check_frequency: Option<u64>,
    /// Install routes to other nodes' podCIDRs.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_routes: Option<bool>,
    /// Network namespace for the pod routes (default: the host's).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_routes_netns: Option<String>,
    /// Hard eviction thresholds, e.g. memory.available<100Mi,nodefs.available<10%.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_hard: Option<String>,
    /// Soft eviction thresholds (same syntax as --eviction-hard).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_soft: Option<String>,
    /// Soft threshold grace periods, e.g. memory.available=1m30s.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_soft_grace_period: Option<String>,
    /// Minimum reclaim per signal, e.g. nodefs.available=500Mi.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_minimum_reclaim: Option<String>,
    /// Seconds a pressure condition outlives its threshold (default 300).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_pressure_transition_period: Option<u64>,
    /// Max grace (seconds) for soft evictions (default 0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_max_pod_grace_period: Option<i64>,
    /// Seconds between eviction signal observations (default 10).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub housekeeping_interval: Option<u64>,
    /// Image GC starts at this image filesystem usage percent (default 85).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_gc_high_threshold: Option<u8>,
    /// Image GC frees down to this usage percent (default 80).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_gc_low_threshold: Option<u8>,
    /// Seconds before an unused image may be collected (default 120).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_minimum_gc_age: Option<u64>,
    /// Seconds between image GC checks (default 300).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_gc_period: Option<u64>,
    /// Image never garbage collected (besides the runtime's sandbox image).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_infra_container_image: Option<String>,
    /// Request the serving certificate by CSR (signer kubernetes.io/kubelet-serving).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_bootstrap: Option<bool>,
    /// Seconds between container garbage collections (default 60).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_gc_period: Option<u64>,
}

impl KubeletConfig {
    /// The node name: the override, else the kernel's host name, lower-cased like upstream.
    pub fn node_name(&self) -> String {
        self.hostname_override
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "localhost".into())
            })
            .to_lowercase()
    }

    /// Where the client certificates live.
    pub fn cert_dir(&self) -> PathBuf {
        self.cert_dir
            .clone()
            .unwrap_or_else(|| self.root_dir.join("pki"))
    }

    pub fn status_interval(&self) -> Duration {
        Duration::from_secs(self.node_status_update_frequency.max(1))
    }

    /// The CRI socket path from the endpoint.
    pub fn runtime_socket(&self) -> PathBuf {
        PathBuf::from(
            self.container_runtime_endpoint
                .strip_prefix("unix://")
                .unwrap_or(&self.container_runtime_endpoint),
        )
    }
}

/// Errors in flag-style list values.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("invalid label {0:?}: expected key=value")]
    Label(String),
    #[error("invalid taint {0:?}: expected key[=value]:NoSchedule|PreferNoSchedule|NoExecute")]
    Taint(String),
}

/// Parses `key=value` labels.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, ParseError> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| ParseError::Label(item.clone()))?;
        if k.trim().is_empty() {
            return Err(ParseError::Label(item.clone()));
        }
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// Parses `key[=value]:Effect` taints.
pub fn parse_taints(
    items: &[String],
) -> Result<Vec<k8s_openapi::api::core::v1::Taint>, ParseError> {
    items
        .iter()
        .map(|item| {
            let (kv, effect) = item
                .rsplit_once(':')
                .ok_or_else(|| ParseError::Taint(item.clone()))?;
            if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                return Err(ParseError::Taint(item.clone()));
            }
            let (key, value) = match kv.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (kv, None),
            };
            if key.is_empty() {
                return Err(ParseError::Taint(item.clone()));
            }
            Ok(k8s_openapi::api::core::v1::Taint {
                key: key.into(),
                value,
                effect: effect.into(),
                time_added: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_taints_parse_like_upstream_flags() {
        let l = parse_labels(&["a=b".into(), "x/y=".into()]).unwrap();
        assert_eq!(l["a"], "b");
        assert_eq!(l["x/y"], "");
        assert_eq!(
            parse_labels(&["nope".into()]).unwrap_err(),
            ParseError::Label("nope".into())
        );
        let t = parse_taints(&["k=v:NoSchedule".into(), "only:NoExecute".into()]).unwrap();
        assert_eq!(t[0].key, "k");
        assert_eq!(t[0].value.as_deref(), Some("v"));
        assert_eq!(t[1].value, None);
        assert_eq!(t[1].effect, "NoExecute");
        assert!(parse_taints(&["k=v:Sometimes".into()]).is_err());
        assert!(parse_taints(&["k=v".into()]).is_err());
    }

    #[test]
    fn defaults_fill_in_and_unknown_keys_fail() {
        let cfg: KubeletConfig = toml::from_str("kubeconfig = \"/k\"\n").unwrap();
        assert_eq!(cfg.node_lease_duration_seconds, 40);
        assert_eq!(cfg.cluster_domain, "cluster.local");
        assert!(cfg.cluster_dns.is_empty() && !cfg.pod_routes);
        assert_eq!(cfg.eviction_pressure_transition_period, 300);
        assert_eq!(
            (cfg.image_gc_high_threshold, cfg.image_gc_low_threshold),
            (85, 80)
        );
        assert_eq!(cfg.image_minimum_gc_age, 120);
        assert!(cfg.eviction_hard.is_none());
        assert_eq!(
            cfg.runtime_socket(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert!(toml::from_str::<KubeletConfig>("kubeconfig = \"/k\"\nbogus = 1\n").is_err());
        let cfg: KubeletConfig =
            toml::from_str("kubeconfig = \"/k\"\nhostname-override = \"NodeA\"\n").unwrap();
        assert_eq!(cfg.node_name(), "nodea");
    }
}
