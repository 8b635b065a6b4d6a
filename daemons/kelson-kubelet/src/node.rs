//! The Node object and the node Lease: registration, status with conditions, heartbeats.
//!
//! Upstream's split is kept: the Lease in `kube-node-lease` is the cheap heartbeat (renewed
//! every `leaseDuration / 4`, i.e. 10 s for the default 40 s), and the Node status (conditions,
//! capacity, addresses, nodeInfo) is posted every `node-status-update-frequency`. Capacity comes
//! from the machine (`/proc/meminfo`, CPU count, statvfs of the root dir); allocatable is
//! capacity minus `system-reserved` and `kube-reserved`. Ready reflects the container runtime:
//! if CRI `Status` fails or reports RuntimeReady=false the node posts Ready=False with
//! upstream's reason `KubeletNotReady`.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::config::{parse_labels, parse_taints, KubeletConfig};
use crate::resources::parse_milli;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The version we report as kubeletVersion (the API types we speak).
pub const KUBELET_VERSION: &str = "v1.33.0-kelson";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node configuration: {0}")]
    Config(#[from] crate::config::ParseError),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Api { what, source }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// What the machine has, in Kubernetes quantities.
pub fn machine_capacity(root_dir: &Path, max_pods: u32) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let disk = nearest_existing(root_dir)
        .and_then(|p| nix::sys::statvfs::statvfs(&p).ok())
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0);
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        ("memory".into(), Quantity(format!("{mem_kib}Ki"))),
        (
            "ephemeral-storage".into(),
            Quantity(format!("{}Ki", disk / 1024)),
        ),
        ("pods".into(), Quantity(max_pods.to_string())),
    ])
}

fn nearest_existing(p: &Path) -> Option<std::path::PathBuf> {
    p.ancestors().find(|a| a.exists()).map(Path::to_path_buf)
}

/// Capacity minus the reservations (never below zero).
pub fn allocatable(
    capacity: &BTreeMap<String, Quantity>,
    reserved: &[&BTreeMap<String, String>],
) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::new();
    for (k, q) in capacity {
        let total = parse_milli(&q.0).unwrap_or(0);
        let minus: i128 = reserved
            .iter()
            .filter_map(|r| r.get(k))
            .filter_map(|v| parse_milli(v))
            .sum();
        let left = (total - minus).max(0);
        let text = if k == "cpu" {
            format!("{left}m")
        } else if k == "pods" {
            (left / 1000).to_string()
        } else {
            ((left + 999) / 1000).to_string()
        };
        // Keep the capacity's own spelling when nothing is reserved.
        out.insert(
            k.clone(),
            if minus == 0 {
                q.clone()
            } else {
                Quantity(text)
            },
        );
    }
    out
}

/// The node's InternalIP: configured, else the first global IPv4 address, else loopback.
pub fn detect_node_ip() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output();
    if let Ok(out) = out {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut it = line.split_whitespace();
            while let Some(w) = it.next() {
                if w == "inet" {
                    if let Some(addr) = it.next().and_then(|a| a.split('/').next()) {
                        return addr.to_string();
                    }
                }
            }
        }
    }
    "127.0.0.1".into()
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

/// Static facts about this node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub ip: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    pub capacity: BTreeMap<String, Quantity>,
    pub allocatable: BTreeMap<String, Quantity>,
    pub runtime_version: String,
}

impl NodeInfo {
    pub fn from_config(cfg: &KubeletConfig, runtime_version: String) -> Result<Self, NodeError> {
        let name = cfg.node_name();
        let arch = kelson_arch();
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), name.clone()),
            ("kubernetes.io/os".into(), "linux".into()),
            ("kubernetes.io/arch".into(), arch.into()),
            ("beta.kubernetes.io/os".into(), "linux".into()),
            ("beta.kubernetes.io/arch".into(), arch.into()),
        ]);
        if let Some(z) = &cfg.zone {
            labels.insert("topology.kubernetes.io/zone".into(), z.clone());
        }
        if let Some(r) = &cfg.region {
            labels.insert("topology.kubernetes.io/region".into(), r.clone());
        }
        labels.extend(parse_labels(&cfg.node_labels)?);
        let capacity = machine_capacity(&cfg.root_dir, cfg.max_pods);
        let allocatable = allocatable(&capacity, &[&cfg.system_reserved, &cfg.kube_reserved]);
        Ok(NodeInfo {
            name,
            ip: cfg.node_ip.clone().unwrap_or_else(detect_node_ip),
            labels,
            taints: parse_taints(&cfg.register_with_taints)?,
            capacity,
            allocatable,
            runtime_version,
        })
    }

    fn system_info(&self) -> NodeSystemInfo {
        let uts = nix::sys::utsname::uname().ok();
        NodeSystemInfo {
            architecture: kelson_arch().into(),
            boot_id: first_line("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: self.runtime_version.clone(),
            kernel_version: uts
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: first_line("/etc/machine-id"),
            operating_system: "linux".into(),
            os_image: os_image(),
            system_uuid: first_line("/sys/class/dmi/id/product_uuid"),
            swap: None,
        }
    }

    /// The status to post: Ready from `runtime_ok`, the pressure conditions from the eviction
    /// manager, heartbeat now.
    pub fn status(
        &self,
        runtime_ok: Result<(), String>,
        pressure: crate::eviction::Pressure,
        prev: Option<&NodeStatus>,
    ) -> NodeStatus {
        let t = now();
        let prev_cond = |ty: &str| {
            prev.and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == ty))
                .cloned()
        };
        let cond = |ty: &str, status: &str, reason: &str, message: &str| {
            // lastTransitionTime only moves when the status flips.
            let transition = prev_cond(ty)
                .filter(|p| p.status == status)
                .and_then(|p| p.last_transition_time)
                .unwrap_or_else(|| t.clone());
            NodeCondition {
                type_: ty.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_heartbeat_time: Some(t.clone()),
                last_transition_time: Some(transition),
            }
        };
        let ready = match &runtime_ok {
            Ok(()) => cond(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            ),
            Err(e) => {
                // journald key event (docs/journald.md) on the transition, not every heartbeat.
                if prev_cond("Ready").is_none_or(|p| p.status != "False") {
                    kelson_runtime::log_event!(
                        tracing::Level::WARN,
                        kelson_runtime::events::NODE_NOT_READY,
                        node = %self.name,
                        "node is not ready: container runtime is down: {e}"
                    );
                }
                cond(
                    "Ready",
                    "False",
                    "KubeletNotReady",
                    &format!("container runtime is down: {e}"),
                )
            }
        };
        NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: self.ip.clone(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: self.name.clone(),
                },
            ]),
            allocatable: Some(self.allocatable.clone()),
            capacity: Some(self.capacity.clone()),
            conditions: Some(vec![
                if pressure.memory {
                    cond(
                        "MemoryPressure",
                        "True",
                        "KubeletHasInsufficientMemory",
                        "kubelet has insufficient memory available",
                    )
                } else {
                    cond(
                        "MemoryPressure",
                        "False",
                        "KubeletHasSufficientMemory",
                        "kubelet has sufficient memory available",
                    )
                },
                if pressure.disk {
                    cond(
                        "DiskPressure",
                        "True",
                        "KubeletHasDiskPressure",
                        "kubelet has disk pressure",
                    )
                } else {
                    cond(
                        "DiskPressure",
                        "False",
                        "KubeletHasNoDiskPressure",
                        "kubelet has no disk pressure",
                    )
                },
                if pressure.pid {
                    cond(
                        "PIDPressure",
                        "True",
                        "KubeletHasInsufficientPID",
                        "kubelet has insufficient PID available",
                    )
                } else {
                    cond(
                        "PIDPressure",
                        "False",
                        "KubeletHasSufficientPID",
                        "kubelet has sufficient PID available",
                    )
                },
                ready,
            ]),
            daemon_endpoints: Some(k8s_openapi::api::core::v1::NodeDaemonEndpoints {
                kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint { port: 10250 }),
            }),
            node_info: Some(self.system_info()),
            ..Default::default()
        }
    }
}

/// `amd64`/`arm64` for this build.
pub fn kelson_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Creates the Node if missing (labels, taints, podCIDR); an existing Node gets our labels
/// merged in. Returns the Node as stored.
pub async fn register(
    api: &Api<Node>,
    info: &NodeInfo,
    pod_cidr: Option<&str>,
) -> Result<Node, NodeError> {
    if let Some(n) = api
        .get_opt(&info.name)
        .await
        .map_err(api_err(format!("reading node {}", info.name)))?
    {
        let patch = json!({"metadata": {"labels": info.labels}});
        let n2 = api
            .patch(&info.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!("updating node {} labels", info.name)))?;
        let _ = n;
        return Ok(n2);
    }
    let node = Node {
        metadata: ObjectMeta {
            name: Some(info.name.clone()),
            labels: Some(info.labels.clone()),
            annotations: Some(BTreeMap::from([(
                "node.alpha.kubernetes.io/ttl".to_string(),
                "0".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: pod_cidr.map(String::from),
            pod_cidrs: pod_cidr.map(|c| vec![c.to_string()]),
            taints: (!info.taints.is_empty()).then(|| info.taints.clone()),
            ..Default::default()
        }),
        status: None,
    };
    match api.create(&PostParams::default(), &node).await {
        Ok(n) => Ok(n),
        // Another process (or a previous run of ours) won the race: use what is there.
        Err(kube::Error::Api(e)) if e.code == 409 => api
            .get(&info.name)
            .await
            .map_err(api_err(format!("reading node {}", info.name))),
        Err(e) => Err(NodeError::Api {
            what: format!("registering node {}", info.name),
            source: e,
        }),
    }
}

/// Posts node status (merge patch on the status subresource).
pub async fn post_status(
    api: &Api<Node>,
    name: &str,
    status: &NodeStatus,
) -> Result<Node, NodeError> {
    let patch = json!({"status": status});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err(format!("posting node {name} status")))
}

/// Creates or renews this node's Lease.
pub async fn renew_lease(
    api: &Api<Lease>,
    node: &Node,
    duration_secs: i32,
) -> Result<(), NodeError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    match api
        .get_opt(&name)
        .await
        .map_err(api_err(format!("reading lease {name}")))?
    {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(name.clone());
            spec.lease_duration_seconds = Some(duration_secs);
            spec.renew_time = Some(now);
            api.replace(&name, &PostParams::default(), &lease)
                .await
                .map_err(api_err(format!("renewing lease {name}")))?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: node.metadata.uid.clone().map(|uid| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: name.clone(),
                            uid,
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease)
                .await
                .map_err(api_err(format!("creating lease {LEASE_NAMESPACE}/{name}")))?;
        }
    }
    Ok(())
}

/// Sets or clears `spec.unschedulable` (cordon/uncordon).
/// Watches this node's own Node object and calls `on_cidr` with `spec.podCIDR` whenever it is
/// set or changes, until `shutdown`. Node IPAM assigns the CIDR after registration; noticing it
/// only at the next status post (10 s by default) kept the first pods of a fresh cluster in
/// ContainerCreating that long.
pub async fn watch_pod_cidr(
    api: Api<Node>,
    name: String,
    mut on_cidr: impl FnMut(String) + Send,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    use kube::runtime::WatchStreamExt;
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut last: Option<String> = None;
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = shutdown.changed() => return,
        };
        let node = match ev {
            Some(Ok(Event::Apply(n))) | Some(Ok(Event::InitApply(n))) => n,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "node watch failed; relisting");
                continue;
            }
            None => return,
        };
        let cidr = node.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty());
        if let Some(c) = cidr {
            if last.as_deref() != Some(c.as_str()) {
                tracing::info!(pod_cidr = %c, "node podCIDR");
                last = Some(c.clone());
                on_cidr(c);
            }
        }
    }
}

pub async fn set_unschedulable(api: &Api<Node>, name: &str, on: bool) -> Result<(), NodeError> {
    let patch = json!({"spec": {"unschedulable": if on { json!(true) } else { json!(null) }}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err(format!(
            "{} node {name}",
            if on { "cordoning" } else { "uncordoning" }
        )))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_comes_from_the_machine_and_reservations_subtract() {
        let cap = machine_capacity(Path::new("/"), 110);
        assert!(parse_milli(&cap["cpu"].0).unwrap() >= 1000);
        assert!(parse_milli(&cap["memory"].0).unwrap() > 0);
        assert_eq!(cap["pods"].0, "110");
        let reserved = BTreeMap::from([
            ("cpu".to_string(), "500m".to_string()),
            ("pods".to_string(), "10".to_string()),
        ]);
        let alloc = allocatable(&cap, &[&reserved]);
        assert_eq!(
            parse_milli(&alloc["cpu"].0).unwrap(),
            parse_milli(&cap["cpu"].0).unwrap() - 500
        );
        assert_eq!(alloc["pods"].0, "100");
        assert_eq!(alloc["memory"], cap["memory"]);
    }

    #[test]
    fn ready_condition_follows_the_runtime_and_keeps_transition_time() {
        let info = NodeInfo {
            name: "n".into(),
            ip: "127.0.0.1".into(),
            labels: BTreeMap::new(),
            taints: vec![],
            capacity: BTreeMap::new(),
            allocatable: BTreeMap::new(),
            runtime_version: "containerd://x".into(),
        };
        let none = crate::eviction::Pressure::default();
        let s1 = info.status(Ok(()), none, None);
        let ready = |s: &NodeStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .cloned()
                .unwrap()
        };
        assert_eq!(ready(&s1).status, "True");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let s2 = info.status(Ok(()), none, Some(&s1));
        assert_eq!(
            ready(&s2).last_transition_time,
            ready(&s1).last_transition_time
        );
        let s3 = info.status(Err("boom".into()), none, Some(&s2));
        assert_eq!(ready(&s3).status, "False");
        assert_eq!(ready(&s3).reason.as_deref(), Some("KubeletNotReady"));
        assert_ne!(
            ready(&s3).last_transition_time,
            ready(&s1).last_transition_time
        );
        let cond = |s: &NodeStatus, ty: &str| {
            let c = s.conditions.as_ref().unwrap();
            let c = c.iter().find(|c| c.type_ == ty).unwrap();
            (c.status.clone(), c.reason.clone().unwrap_or_default())
        };
        let mem = crate::eviction::Pressure {
            memory: true,
            ..none
        };
        let s4 = info.status(Ok(()), mem, Some(&s3));
        assert_eq!(
            cond(&s4, "MemoryPressure"),
            ("True".into(), "KubeletHasInsufficientMemory".into())
        );
        assert_eq!(cond(&s4, "DiskPressure").0, "False");
    }
}
