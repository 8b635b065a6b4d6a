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

pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Which kubelet owns a sandbox (orphan clean-up never touches another node's sandboxes).
pub const LABEL_NODE: &str = "io.kelson.node";
pub const ANN_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";

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
#[derive(Debug, Clone)]
pub struct PodContext {
    pub node_name: String,
    pub node_ip: String,
    pub pod_logs_dir: PathBuf,
    pub root_dir: PathBuf,
    pub cgroup_root: String,
    pub allow_image_pull: bool,
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
    let dns_config = spec.dns_config.as_ref().map(|d| cri::DnsConfig {
        servers: d.nameservers.clone().unwrap_or_default(),
        searches: d.searches.clone().unwrap_or_default(),
        options: d
            .options
            .iter()
            .flatten()
            .map(|o| match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            })
            .collect(),
    });
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
    client: kube::Client,
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
            let files: BTreeMap<String, Vec<u8>> = match cm {
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
                    select_items(all, cmv.items.as_deref())
                }
                None if cmv.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(failed(
                        &v.name,
                        format!("configmap \"{}\" not found", cmv.name),
                    ))
                }
            };
            write_files(&p, &files, cmv.default_mode).map_err(|e| io(&v.name, e))?;
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
                ),
                None if sv.optional == Some(true) => BTreeMap::new(),
                None => return Err(failed(&v.name, format!("secret \"{sname}\" not found"))),
            };
            write_files(&p, &files, sv.default_mode.or(Some(0o644))).map_err(|e| io(&v.name, e))?;
            p
        } else if let Some(dv) = &v.downward_api {
            let p = vols_dir.join("kubernetes.io~downward-api").join(&v.name);
            let mut files = BTreeMap::new();
            for item in dv.items.iter().flatten() {
                if let Some(f) = &item.field_ref {
                    let val = field_value(pod, ctx, pod_ip, &f.field_path).unwrap_or_default();
                    files.insert(item.path.clone(), val.into_bytes());
                }
            }
            write_files(&p, &files, dv.default_mode).map_err(|e| io(&v.name, e))?;
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
) -> BTreeMap<String, Vec<u8>> {
    match items {
        None => all,
        Some(items) => items
            .iter()
            .filter_map(|i| all.get(&i.key).map(|v| (i.path.clone(), v.clone())))
            .collect(),
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

/// Writes `files` under `dir` (relative paths only; `..` is refused).
fn write_files(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    mode: Option<i32>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (rel, data) in files {
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid path {rel:?}"),
            ));
        }
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = p.with_extension("kelson-tmp");
        std::fs::write(&tmp, data)?;
        set_mode(&tmp, mode.unwrap_or(0o644) as u32);
        std::fs::rename(&tmp, &p)?;
    }
    Ok(())
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
            allow_image_pull: false,
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
    fn bad_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = BTreeMap::from([("../x".to_string(), b"1".to_vec())]);
        assert!(write_files(dir.path(), &files, None).is_err());
        let files = BTreeMap::from([("a/b".to_string(), b"1".to_vec())]);
        write_files(dir.path(), &files, None).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/b")).unwrap(), b"1");
    }
}
