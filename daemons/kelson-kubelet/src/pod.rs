//! Turning a Pod into CRI requests: sandbox and container configs, environment, volumes, images.
//!
//! Everything here is a pure function of the Pod (plus the ConfigMaps/Secrets it references),
//! so the pod worker can recompute it on every sync and adoption after a restart needs no saved
//! state: sandboxes and containers carry the upstream `io.kubernetes.*` labels (pod UID, name,
//! namespace, container name) that the worker matches on, and the restart count rides in an
//! annotation like upstream's `io.kubernetes.container.restartCount`.
//!
//! Failures that upstream reports as a container's waiting reason carry that reason
//! ([`ContainerFailure`]): `CreateContainerConfigError` for a missing ConfigMap/Secret key,
//! `ErrImageNeverPull`/`ErrImagePull` for images, and volume set-up errors (the pod stays
//! `ContainerCreating` with the FailedMount message).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::Api;

use crate::resources::linux_resources;
use crate::volumes::{write_atomic, Payload, TokenCache};

pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Which kubelet owns a sandbox (orphan clean-up never touches another node's sandboxes).
pub const LABEL_NODE: &str = "io.kelson.node";
pub const ANN_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// Where a pod came from (`file` for static pods), upstream's annotation.
pub const ANN_CONFIG_SOURCE: &str = "kubernetes.io/config.source";
/// On a mirror pod: the static pod's hash.
pub const ANN_CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";
pub const ANN_CONFIG_HASH: &str = "kubernetes.io/config.hash";

/// A failure to start a container, with the upstream waiting reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFailure {
    pub reason: String,
    pub message: String,
}

impl ContainerFailure {
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        ContainerFailure {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Node-wide settings the configs depend on.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    pub node_name: String,
    pub node_ip: String,
    pub pod_logs_dir: PathBuf,
    pub root_dir: PathBuf,
    pub cgroup_root: String,
    pub allow_image_pull: bool,
    /// Cluster DNS server IPs (`--cluster-dns`); empty: ClusterFirst falls back to Default.
    pub cluster_dns: Vec<String>,
    /// The cluster's DNS domain (`--cluster-domain`).
    pub cluster_domain: String,
    /// The host resolver config pods with dnsPolicy Default get (`--resolv-conf`).
    pub resolv_conf: PathBuf,
}

pub fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}
pub fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}
pub fn namespace(pod: &Pod) -> String {
    pod.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// `/var/log/pods/<ns>_<name>_<uid>`, upstream's layout that `kubectl logs` tooling expects.
pub fn log_dir(ctx: &PodContext, pod: &Pod) -> PathBuf {
    ctx.pod_logs_dir
        .join(format!("{}_{}_{}", namespace(pod), name(pod), uid(pod)))
}

/// Per-pod state directory (volumes).
pub fn pod_dir(ctx: &PodContext, pod_uid: &str) -> PathBuf {
    ctx.root_dir.join("pods").join(pod_uid)
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn namespace_options(pod: &Pod) -> cri::NamespaceOption {
    let spec = pod.spec.as_ref();
    let mode = |node: bool, otherwise: cri::NamespaceMode| {
        if node {
            cri::NamespaceMode::Node as i32
        } else {
            otherwise as i32
        }
    };
    cri::NamespaceOption {
        network: mode(host_network(pod), cri::NamespaceMode::Pod),
        pid: mode(
            spec.and_then(|s| s.host_pid).unwrap_or(false),
            if spec
                .and_then(|s| s.share_process_namespace)
                .unwrap_or(false)
            {
                cri::NamespaceMode::Pod
            } else {
                cri::NamespaceMode::Container
            },
        ),
        ipc: mode(
            spec.and_then(|s| s.host_ipc).unwrap_or(false),
            cri::NamespaceMode::Pod,
        ),
        ..Default::default()
    }
}

/// The QoS cgroup parent, cgroupfs style: `<root>/<qos>/pod<uid>` (Guaranteed directly under root).
pub fn cgroup_parent(ctx: &PodContext, pod: &Pod) -> String {
    let qos = pod
        .spec
        .as_ref()
        .map(crate::resources::qos_class)
        .unwrap_or("BestEffort");
    let root = ctx.cgroup_root.trim_end_matches('/');
    match qos {
        "Guaranteed" => format!("{root}/pod{}", uid(pod)),
        "Burstable" => format!("{root}/burstable/pod{}", uid(pod)),
        _ => format!("{root}/besteffort/pod{}", uid(pod)),
    }
}

/// Labels every sandbox and container of this pod carries.
pub fn pod_labels(ctx: &PodContext, pod: &Pod) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_POD_UID.to_string(), uid(pod)),
        (LABEL_POD_NAME.to_string(), name(pod)),
        (LABEL_POD_NAMESPACE.to_string(), namespace(pod)),
        (LABEL_NODE.to_string(), ctx.node_name.clone()),
    ])
}

/// The sandbox config (also passed along with every CreateContainer).
pub fn sandbox_config(ctx: &PodContext, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.extend(pod_labels(ctx, pod));
    let annotations: HashMap<String, String> = pod
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp as i32,
                Some("SCTP") => cri::Protocol::Sctp as i32,
                _ => cri::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let host = std::fs::read_to_string(&ctx.resolv_conf)
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default();
    let dns_config = Some(dns_config(ctx, pod, &host).0);
    let privileged = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
        });
    let psc = spec.security_context.clone().unwrap_or_default();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name(pod),
            uid: uid(pod),
            namespace: namespace(pod),
            attempt,
        }),
        hostname: if host_network(pod) {
            String::new()
        } else {
            spec.hostname.clone().unwrap_or_else(|| name(pod))
        },
        log_directory: log_dir(ctx, pod).display().to_string(),
        dns_config,
        port_mappings,
        labels,
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(ctx, pod),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(pod)),
                run_as_user: psc.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: psc.run_as_group.map(|value| cri::Int64Value { value }),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                privileged,
                ..Default::default()
            }),
            sysctls: psc
                .sysctls
                .iter()
                .flatten()
                .map(|s| (s.name.clone(), s.value.clone()))
                .collect(),
            ..Default::default()
        }),
        windows: None,
    }
}

/// A resolv.conf's nameservers, search list and options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Parses resolv.conf like upstream (`search` and `domain` replace each other, last wins).
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut r = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => r.servers.extend(f.next().map(String::from)),
            Some("search") => r.searches = f.map(|s| s.trim_end_matches('.').to_string()).collect(),
            Some("domain") => {
                r.searches = f
                    .next()
                    .map(|s| s.trim_end_matches('.').to_string())
                    .into_iter()
                    .collect()
            }
            Some("options") => r.options.extend(f.map(String::from)),
            _ => {}
        }
    }
    r
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.into_iter().filter(|s| seen.insert(s.clone())).collect()
}

/// Upstream's limits: 3 nameservers, 32 search domains of at most 2048 characters in all.
const MAX_DNS_SERVERS: usize = 3;
const MAX_DNS_SEARCHES: usize = 32;
const MAX_DNS_SEARCH_CHARS: usize = 2048;

/// The pod's resolver config by dnsPolicy, with `spec.dnsConfig` merged as upstream does
/// (nameservers and searches appended without duplicates, options overriding by name).
/// The second value is a warning for a `MissingClusterDNS` event: ClusterFirst without
/// `--cluster-dns` falls back to the host's resolver.
pub fn dns_config(
    ctx: &PodContext,
    pod: &Pod,
    host: &ResolvConf,
) -> (cri::DnsConfig, Option<String>) {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec
        .dns_policy
        .clone()
        .unwrap_or_else(|| "ClusterFirst".into());
    let mut cluster = match policy.as_str() {
        "None" => None,
        "Default" => Some(false),
        "ClusterFirstWithHostNet" => Some(true),
        // ClusterFirst: host-network pods get the host's resolver (upstream).
        _ => Some(!host_network(pod)),
    };
    let mut warning = None;
    if cluster == Some(true) && ctx.cluster_dns.is_empty() {
        warning = Some(format!(
            "pod: {:?}. kubelet does not have ClusterDNS IP configured and cannot create Pod using {:?} policy. Falling back to \"Default\" policy.",
            format!("{}_{}({})", name(pod), namespace(pod), uid(pod)),
            policy
        ));
        cluster = Some(false);
    }
    let mut out = match cluster {
        None => cri::DnsConfig::default(),
        Some(false) => cri::DnsConfig {
            servers: host.servers.clone(),
            searches: host.searches.clone(),
            options: host.options.clone(),
        },
        Some(true) => {
            let d = ctx.cluster_domain.trim_matches('.');
            let mut searches = vec![
                format!("{}.svc.{d}", namespace(pod)),
                format!("svc.{d}"),
                d.to_string(),
            ];
            searches.extend(host.searches.iter().cloned());
            cri::DnsConfig {
                servers: ctx.cluster_dns.clone(),
                searches: dedup(searches),
                options: vec!["ndots:5".into()],
            }
        }
    };
    if let Some(d) = &spec.dns_config {
        out.servers.extend(d.nameservers.iter().flatten().cloned());
        out.searches.extend(d.searches.iter().flatten().cloned());
        for o in d.options.iter().flatten() {
            let Some(n) = o.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let text = match &o.value {
                Some(v) => format!("{n}:{v}"),
                None => n.to_string(),
            };
            out.options.retain(|x| x.split(':').next() != Some(n));
            out.options.push(text);
        }
    }
    out.servers = dedup(std::mem::take(&mut out.servers));
    out.servers.truncate(MAX_DNS_SERVERS);
    out.searches = dedup(std::mem::take(&mut out.searches));
    out.searches.truncate(MAX_DNS_SEARCHES);
    while out.searches.iter().map(|s| s.len() + 1).sum::<usize>() > MAX_DNS_SEARCH_CHARS {
        out.searches.pop();
    }
    (out, warning)
}

/// Everything a container config needs besides the pod.
#[derive(Debug, Clone)]
pub struct ContainerInputs {
    pub image_id: String,
    pub envs: Vec<cri::KeyValue>,
    pub mounts: Vec<cri::Mount>,
    pub restart_count: u32,
}

/// The container config for `c` (init or regular).
pub fn container_config(
    ctx: &PodContext,
    pod: &Pod,
    c: &Container,
    inputs: &ContainerInputs,
) -> cri::ContainerConfig {
    let mut labels = pod_labels(ctx, pod);
    labels.insert(LABEL_CONTAINER_NAME.into(), c.name.clone());
    let annotations = HashMap::from([(
        ANN_RESTART_COUNT.to_string(),
        inputs.restart_count.to_string(),
    )]);
    let vars: HashMap<&str, &str> = inputs
        .envs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect();
    let expand_all = |v: &Option<Vec<String>>| {
        v.iter()
            .flatten()
            .map(|s| expand(s, &vars))
            .collect::<Vec<_>>()
    };
    let sc = c.security_context.clone().unwrap_or_default();
    let psc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt: inputs.restart_count,
        }),
        image: Some(cri::ImageSpec {
            image: inputs.image_id.clone(),
            user_specified_image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand_all(&c.command),
        args: expand_all(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: inputs.envs.clone(),
        mounts: inputs.mounts.clone(),
        labels,
        annotations,
        log_path: format!("{}/{}.log", c.name, inputs.restart_count),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(linux_resources(c.resources.as_ref())),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: caps.add.unwrap_or_default(),
                    drop_capabilities: caps.drop.unwrap_or_default(),
                    ..Default::default()
                }),
                privileged: sc.privileged.unwrap_or(false),
                namespace_options: Some(namespace_options(pod)),
                run_as_user: sc
                    .run_as_user
                    .or(psc.run_as_user)
                    .map(|value| cri::Int64Value { value }),
                run_as_group: sc
                    .run_as_group
                    .or(psc.run_as_group)
                    .map(|value| cri::Int64Value { value }),
                readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// Upstream's `$(VAR)` expansion: known names are replaced, `$$` escapes, unknown stay as is.
pub fn expand(s: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some(v) = vars.get(name) {
                        out.push_str(v);
                        i += end + 3;
                        continue;
                    }
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// A pod field for `fieldRef` (env and downwardAPI volumes).
pub fn field_value(pod: &Pod, ctx: &PodContext, pod_ip: &str, path: &str) -> Option<String> {
    let md = &pod.metadata;
    let map_key = |p: &str, prefix: &str| {
        p.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(String::from)
    };
    match path {
        "metadata.name" => md.name.clone(),
        "metadata.namespace" => Some(namespace(pod)),
        "metadata.uid" => md.uid.clone(),
        "spec.nodeName" => Some(ctx.node_name.clone()),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        "status.podIP" => Some(pod_ip.to_string()),
        "status.podIPs" => Some(pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some(ctx.node_ip.clone()),
        "metadata.labels" => Some(format_map(md.labels.as_ref())),
        "metadata.annotations" => Some(format_map(md.annotations.as_ref())),
        p => {
            if let Some(k) = map_key(p, "metadata.labels['") {
                return Some(
                    md.labels
                        .as_ref()
                        .and_then(|l| l.get(&k))
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            if let Some(k) = map_key(p, "metadata.annotations['") {
                return Some(
                    md.annotations
                        .as_ref()
                        .and_then(|l| l.get(&k))
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            None
        }
    }
}

fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `resourceFieldRef` values (limits fall back to node allocatable upstream; we use requests).
fn resource_value(c: &Container, resource: &str, divisor: Option<&str>) -> Option<String> {
    let (kind, name) = resource.split_once('.')?;
    let r = c.resources.as_ref()?;
    let m = match kind {
        "limits" => r.limits.as_ref(),
        "requests" => r.requests.as_ref(),
        _ => None,
    }?;
    let q = crate::resources::parse_milli(&m.get(name)?.0)?;
    let d = divisor
        .and_then(crate::resources::parse_milli)
        .filter(|d| *d > 0)
        // Upstream's default divisor is 1 (cores for cpu, bytes otherwise).
        .unwrap_or(1000);
    Some(((q + d - 1) / d).to_string())
}

/// Reads ConfigMaps and Secrets once per sync.
pub struct Lookups {
    pub client: kube::Client,
    namespace: String,
    configmaps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
}

impl Lookups {
    pub fn new(client: kube::Client, namespace: String) -> Self {
        Lookups {
            client,
            namespace,
            configmaps: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    pub async fn configmap(&mut self, name: &str) -> Result<Option<&ConfigMap>, ContainerFailure> {
        if !self.configmaps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let v = api.get_opt(name).await.map_err(|e| {
                ContainerFailure::new(
                    "CreateContainerConfigError",
                    format!("configmap {name:?}: {e}"),
                )
            })?;
            self.configmaps.insert(name.into(), v);
        }
        Ok(self.configmaps.get(name).and_then(Option::as_ref))
    }

    pub async fn secret(&mut self, name: &str) -> Result<Option<&Secret>, ContainerFailure> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let v = api.get_opt(name).await.map_err(|e| {
                ContainerFailure::new(
                    "CreateContainerConfigError",
                    format!("secret {name:?}: {e}"),
                )
            })?;
            self.secrets.insert(name.into(), v);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }
}

fn cm_value(cm: &ConfigMap, key: &str) -> Option<String> {
    cm.data
        .as_ref()
        .and_then(|d| d.get(key).cloned())
        .or_else(|| {
            cm.binary_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        })
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| s.string_data.as_ref().and_then(|d| d.get(key).cloned()))
}

/// The container's environment, upstream order: envFrom first, then env (later wins), with
/// `$(VAR)` expansion against what came before.
pub async fn resolve_env(
    ctx: &PodContext,
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
    look: &mut Lookups,
) -> Result<Vec<cri::KeyValue>, ContainerFailure> {
    let cfg_err = |m: String| ContainerFailure::new("CreateContainerConfigError", m);
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |out: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = out.iter_mut().find(|(ek, _)| *ek == k) {
            e.1 = v;
        } else {
            out.push((k, v));
        }
    };
    for ef in c.env_from.iter().flatten() {
        let prefix = ef.prefix.clone().unwrap_or_default();
        if let Some(r) = &ef.config_map_ref {
            match look.configmap(&r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set(&mut out, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(cfg_err(format!("configmap \"{}\" not found", r.name))),
            }
        }
        if let Some(r) = &ef.secret_ref {
            match look.secret(&r.name).await? {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        set(
                            &mut out,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(cfg_err(format!("secret \"{}\" not found", r.name))),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value =
            if let Some(vf) = &e.value_from {
                if let Some(r) = &vf.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match look.configmap(&r.name).await? {
                        Some(cm) => match cm_value(cm, &r.key) {
                            Some(v) => Some(v),
                            None if optional => None,
                            None => {
                                return Err(cfg_err(format!(
                                    "couldn't find key {} in ConfigMap {}/{}",
                                    r.key,
                                    namespace(pod),
                                    r.name
                                )))
                            }
                        },
                        None if optional => None,
                        None => return Err(cfg_err(format!("configmap \"{}\" not found", r.name))),
                    }
                } else if let Some(r) = &vf.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match look.secret(&r.name).await? {
                        Some(s) => match secret_value(s, &r.key) {
                            Some(v) => Some(v),
                            None if optional => None,
                            None => {
                                return Err(cfg_err(format!(
                                    "couldn't find key {} in Secret {}/{}",
                                    r.key,
                                    namespace(pod),
                                    r.name
                                )))
                            }
                        },
                        None if optional => None,
                        None => return Err(cfg_err(format!("secret \"{}\" not found", r.name))),
                    }
                } else if let Some(r) = &vf.field_ref {
                    Some(field_value(pod, ctx, pod_ip, &r.field_path).ok_or_else(|| {
                        cfg_err(format!("unsupported fieldRef {:?}", r.field_path))
                    })?)
                } else if let Some(r) = &vf.resource_field_ref {
                    let target = r
                        .container_name
                        .as_ref()
                        .and_then(|n| {
                            pod.spec
                                .as_ref()
                                .and_then(|s| s.containers.iter().find(|c| &c.name == n))
                        })
                        .unwrap_or(c);
                    Some(
                        resource_value(
                            target,
                            &r.resource,
                            r.divisor.as_ref().map(|d| d.0.as_str()),
                        )
                        .unwrap_or_else(|| "0".into()),
                    )
                } else {
                    None
                }
            } else {
                let vars: HashMap<&str, &str> =
                    out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                Some(expand(e.value.as_deref().unwrap_or(""), &vars))
            };
        if let Some(v) = value {
            set(&mut out, e.name.clone(), v);
        }
    }
    Ok(out
        .into_iter()
        .map(|(key, value)| cri::KeyValue { key, value })
        .collect())
}

/// Prepares every volume of the pod on the host; returns name → host path.
pub async fn prepare_volumes(
    ctx: &PodContext,
    pod: &Pod,
    pod_ip: &str,
    look: &mut Lookups,
    tokens: &TokenCache,
) -> Result<HashMap<String, PathBuf>, ContainerFailure> {
    let mut out = HashMap::new();
    let vols_dir = pod_dir(ctx, &uid(pod)).join("volumes");
    let failed = |vol: &str, msg: String| {
        ContainerFailure::new(
            "ContainerCreating",
            format!("MountVolume.SetUp failed for volume \"{vol}\" : {msg}"),
        )
    };
    let io = |vol: &str, e: std::io::Error| failed(vol, e.to_string());
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = if v.empty_dir.is_some() {
            let p = vols_dir.join("kubernetes.io~empty-dir").join(&v.name);
            std::fs::create_dir_all(&p).map_err(|e| io(&v.name, e))?;
            set_mode(&p, 0o777);
            p
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            match h.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&p).map_err(|e| io(&v.name, e))?;
                }
                "Directory" if !p.is_dir() => {
                    return Err(failed(
                        &v.name,
                        format!("hostPath type check failed: {} is not a directory", h.path),
                    ))
                }
                "FileOrCreate" if !p.exists() => {
                    if let Some(d) = p.parent() {
                        std::fs::create_dir_all(d).map_err(|e| io(&v.name, e))?;
                    }
                    std::fs::write(&p, b"").map_err(|e| io(&v.name, e))?;
                }
                "File" if !p.is_file() => {
                    return Err(failed(
                        &v.name,
                        format!("hostPath type check failed: {} is not a file", h.path),
                    ))
                }
                _ => {}
            }
            p
        } else if let Some(cmv) = &v.config_map {
            let p = vols_dir.join("kubernetes.io~configmap").join(&v.name);
            let cm = look
                .configmap(&cmv.name)
                .await
                .map_err(|e| failed(&v.name, e.message))?;
            let files: Payload = match cm {
                Some(cm) => {
                    let mut all: BTreeMap<String, Vec<u8>> = cm
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                        .collect();
                    all.extend(
                        cm.binary_data
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), v.0.clone())),
                    );
                    select_items(all, cmv.items.as_deref(), mode_of(cmv.default_mode))
                }
                None if cmv.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(failed(
                        &v.name,
                        format!("configmap \"{}\" not found", cmv.name),
                    ))
                }
            };
            write_atomic(&p, &files).map_err(|e| io(&v.name, e))?;
            p
        } else if let Some(sv) = &v.secret {
            let p = vols_dir.join("kubernetes.io~secret").join(&v.name);
            let sname = sv.secret_name.clone().unwrap_or_default();
            let s = look
                .secret(&sname)
                .await
                .map_err(|e| failed(&v.name, e.message))?;
            let files = match s {
                Some(s) => select_items(
                    s.data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.0.clone()))
                        .collect(),
                    sv.items.as_deref(),
                    mode_of(sv.default_mode),
                ),
                None if sv.optional == Some(true) => BTreeMap::new(),
                None => return Err(failed(&v.name, format!("secret \"{sname}\" not found"))),
            };
            write_atomic(&p, &files).map_err(|e| io(&v.name, e))?;
            p
        } else if let Some(dv) = &v.downward_api {
            let p = vols_dir.join("kubernetes.io~downward-api").join(&v.name);
            let files = downward_files(
                ctx,
                pod,
                pod_ip,
                dv.items.as_deref(),
                mode_of(dv.default_mode),
            );
            write_atomic(&p, &files).map_err(|e| io(&v.name, e))?;
            p
        } else if let Some(pv) = &v.projected {
            let p = vols_dir.join("kubernetes.io~projected").join(&v.name);
            let files = projected_files(ctx, pod, pod_ip, pv, look, tokens)
                .await
                .map_err(|m| failed(&v.name, m))?;
            write_atomic(&p, &files).map_err(|e| io(&v.name, e))?;
            p
        } else {
            return Err(failed(
                &v.name,
                "volume type not supported by kelson-kubelet".into(),
            ));
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

fn select_items(
    all: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    default_mode: u32,
) -> Payload {
    match items {
        None => all
            .into_iter()
            .map(|(k, v)| (k, (v, default_mode)))
            .collect(),
        Some(items) => items
            .iter()
            .filter_map(|i| {
                all.get(&i.key).map(|v| {
                    (
                        i.path.clone(),
                        (v.clone(), i.mode.map(|m| m as u32).unwrap_or(default_mode)),
                    )
                })
            })
            .collect(),
    }
}

/// A volume's defaultMode, upstream's 0644 when unset.
fn mode_of(m: Option<i32>) -> u32 {
    m.map(|m| (m as u32) & 0o7777).unwrap_or(0o644)
}

fn downward_files(
    ctx: &PodContext,
    pod: &Pod,
    pod_ip: &str,
    items: Option<&[k8s_openapi::api::core::v1::DownwardAPIVolumeFile]>,
    default_mode: u32,
) -> Payload {
    let mut files = Payload::new();
    for item in items.into_iter().flatten() {
        let mode = item.mode.map(|m| m as u32).unwrap_or(default_mode);
        let val = if let Some(f) = &item.field_ref {
            field_value(pod, ctx, pod_ip, &f.field_path).unwrap_or_default()
        } else if let Some(r) = &item.resource_field_ref {
            let c = pod.spec.as_ref().and_then(|s| {
                s.containers
                    .iter()
                    .find(|c| Some(&c.name) == r.container_name.as_ref())
            });
            c.and_then(|c| resource_value(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str())))
                .unwrap_or_else(|| "0".into())
        } else {
            continue;
        };
        files.insert(item.path.clone(), (val.into_bytes(), mode));
    }
    files
}

/// The files of a projected volume: every source merged into one payload, upstream's
/// messages for missing objects.
async fn projected_files(
    ctx: &PodContext,
    pod: &Pod,
    pod_ip: &str,
    pv: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    look: &mut Lookups,
    tokens: &TokenCache,
) -> Result<Payload, String> {
    let default_mode = mode_of(pv.default_mode);
    let mut out = Payload::new();
    for src in pv.sources.iter().flatten() {
        if let Some(t) = &src.service_account_token {
            let account = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into());
            let token = tokens
                .get(
                    &look.client,
                    pod,
                    &account,
                    t.audience.as_deref().filter(|a| !a.is_empty()),
                    t.expiration_seconds.unwrap_or(3600).max(600),
                )
                .await?;
            out.insert(t.path.clone(), (token.into_bytes(), default_mode));
        } else if let Some(c) = &src.config_map {
            match look.configmap(&c.name).await.map_err(|f| f.message)? {
                Some(cm) => {
                    let mut all: BTreeMap<String, Vec<u8>> = cm
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                        .collect();
                    all.extend(
                        cm.binary_data
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), v.0.clone())),
                    );
                    out.extend(select_items(all, c.items.as_deref(), default_mode));
                }
                None if c.optional == Some(true) => {}
                None => return Err(format!("configmap \"{}\" not found", c.name)),
            }
        } else if let Some(sc) = &src.secret {
            match look.secret(&sc.name).await.map_err(|f| f.message)? {
                Some(s) => {
                    let all = s
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.0.clone()))
                        .collect();
                    out.extend(select_items(all, sc.items.as_deref(), default_mode));
                }
                None if sc.optional == Some(true) => {}
                None => return Err(format!("secret \"{}\" not found", sc.name)),
            }
        } else if let Some(d) = &src.downward_api {
            out.extend(downward_files(
                ctx,
                pod,
                pod_ip,
                d.items.as_deref(),
                default_mode,
            ));
        } else {
            return Err("projected volume source not supported by kelson-kubelet".into());
        }
    }
    Ok(out)
}

/// Whether the pod comes from a manifest file (a static pod; its API object is a mirror).
pub fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_CONFIG_SOURCE))
        .is_some_and(|s| s != "api")
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

/// CRI mounts for the container's volumeMounts.
pub fn mounts(
    c: &Container,
    volumes: &HashMap<String, PathBuf>,
) -> Result<Vec<cri::Mount>, ContainerFailure> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let base = volumes.get(&m.name).ok_or_else(|| {
            ContainerFailure::new(
                "CreateContainerConfigError",
                format!(
                    "cannot find volume \"{}\" to mount into container \"{}\"",
                    m.name, c.name
                ),
            )
        })?;
        let mut host = base.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub.starts_with('/') || sub.split('/').any(|p| p == "..") {
                return Err(ContainerFailure::new(
                    "CreateContainerConfigError",
                    format!("invalid subPath {sub:?}"),
                ));
            }
            host = host.join(sub);
            if !host.exists() {
                let _ = std::fs::create_dir_all(&host);
            }
        }
        out.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: m.read_only.unwrap_or(false),
            ..Default::default()
        });
    }
    Ok(out)
}

/// The effective pull policy (upstream default: Always for `:latest`/untagged, else IfNotPresent).
pub fn pull_policy(c: &Container) -> String {
    if let Some(p) = c.image_pull_policy.as_deref().filter(|p| !p.is_empty()) {
        return p.to_string();
    }
    let image = c.image.as_deref().unwrap_or("");
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.split_once(':').is_some_and(|(_, t)| t != "latest") {
        "IfNotPresent".into()
    } else {
        "Always".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_upstream_rules() {
        let vars = HashMap::from([("A", "x"), ("B", "y")]);
        assert_eq!(expand("$(A)-$(B)", &vars), "x-y");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(C) $(A", &vars), "$(C) $(A");
        assert_eq!(expand("héllo $(A)", &vars), "héllo x");
    }

    #[test]
    fn pull_policy_defaults() {
        let c = |img: &str| Container {
            name: "c".into(),
            image: Some(img.into()),
            ..Default::default()
        };
        assert_eq!(pull_policy(&c("busybox")), "Always");
        assert_eq!(pull_policy(&c("busybox:latest")), "Always");
        assert_eq!(pull_policy(&c("kelson.local/busybox:1.0")), "IfNotPresent");
        assert_eq!(pull_policy(&c("host:5000/busybox")), "Always");
        let mut n = c("x:1");
        n.image_pull_policy = Some("Never".into());
        assert_eq!(pull_policy(&n), "Never");
    }

    #[test]
    fn field_refs() {
        let ctx = PodContext {
            node_name: "n1".into(),
            node_ip: "192.0.2.1".into(),
            pod_logs_dir: "/l".into(),
            root_dir: "/r".into(),
            cgroup_root: "/kubepods".into(),
            ..Default::default()
        };
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c"}]}
        }))
        .unwrap();
        assert_eq!(
            field_value(&pod, &ctx, "10.0.0.5", "metadata.name").as_deref(),
            Some("p")
        );
        assert_eq!(
            field_value(&pod, &ctx, "10.0.0.5", "status.podIP").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            field_value(&pod, &ctx, "", "spec.nodeName").as_deref(),
            Some("n1")
        );
        assert_eq!(
            field_value(&pod, &ctx, "", "metadata.labels['app']").as_deref(),
            Some("web")
        );
        assert_eq!(field_value(&pod, &ctx, "", "bogus"), None);
        assert_eq!(log_dir(&ctx, &pod), PathBuf::from("/l/ns_p_u1"));
        assert_eq!(cgroup_parent(&ctx, &pod), "/kubepods/besteffort/podu1");
        let sb = sandbox_config(&ctx, &pod, 0);
        assert_eq!(sb.labels[LABEL_POD_UID], "u1");
        assert_eq!(sb.labels["app"], "web");
        assert_eq!(sb.hostname, "p");
    }

    #[test]
    fn dns_policies_follow_upstream() {
        let host = parse_resolv_conf(
            "# c\nnameserver 192.0.2.53\nsearch corp.example. lab\noptions edns0 ndots:2\n",
        );
        assert_eq!(host.servers, ["192.0.2.53"]);
        assert_eq!(host.searches, ["corp.example", "lab"]);
        let mut ctx = PodContext {
            cluster_dns: vec!["10.96.0.10".into()],
            cluster_domain: "cluster.local".into(),
            ..Default::default()
        };
        let pod = |spec: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "web", "uid": "u"},
                "spec": spec,
            }))
            .unwrap()
        };
        let p = pod(serde_json::json!({"containers": []}));
        let (d, w) = dns_config(&ctx, &p, &host);
        assert!(w.is_none());
        assert_eq!(d.servers, ["10.96.0.10"]);
        assert_eq!(
            d.searches,
            [
                "web.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example",
                "lab"
            ]
        );
        assert_eq!(d.options, ["ndots:5"]);
        // hostNetwork + ClusterFirst → the host's; ClusterFirstWithHostNet → cluster.
        let p = pod(serde_json::json!({"containers": [], "hostNetwork": true}));
        assert_eq!(dns_config(&ctx, &p, &host).0.servers, ["192.0.2.53"]);
        let p = pod(
            serde_json::json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
        );
        assert_eq!(dns_config(&ctx, &p, &host).0.servers, ["10.96.0.10"]);
        let p = pod(serde_json::json!({"containers": [], "dnsPolicy": "Default"}));
        assert_eq!(dns_config(&ctx, &p, &host).0.options, ["edns0", "ndots:2"]);
        // None: only dnsConfig; merged options override by name.
        let p = pod(
            serde_json::json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.1.1.1", "1.1.1.1"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "1"}]}}),
        );
        let (d, _) = dns_config(&ctx, &p, &host);
        assert_eq!(d.servers, ["1.1.1.1"]);
        assert_eq!(d.searches, ["a.example"]);
        assert_eq!(d.options, ["ndots:1"]);
        let p = pod(serde_json::json!({"containers": [], "dnsConfig": {
            "nameservers": ["1.1.1.1"], "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}}));
        let (d, _) = dns_config(&ctx, &p, &host);
        assert_eq!(d.servers, ["10.96.0.10", "1.1.1.1"]);
        assert_eq!(d.options, ["ndots:2", "rotate"]);
        // No --cluster-dns: ClusterFirst falls back to the host's, with a warning.
        ctx.cluster_dns.clear();
        let p = pod(serde_json::json!({"containers": []}));
        let (d, w) = dns_config(&ctx, &p, &host);
        assert_eq!(d.servers, ["192.0.2.53"]);
        assert!(w.unwrap().contains("Falling back to \"Default\" policy"));
    }
}
