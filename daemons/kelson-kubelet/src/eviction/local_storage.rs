//! Ephemeral-storage limits (upstream's `LocalStorageCapacityIsolation`): a pod that uses more
//! local storage than it declared is evicted, whatever the node's pressure.
//!
//! Design, as upstream's eviction manager (`localStorageEviction`), checked every housekeeping
//! pass before the node-pressure thresholds, in upstream's order per pod:
//! 1. an `emptyDir` whose usage exceeds its `sizeLimit` — "Usage of EmptyDir volume "x"
//!    exceeds the limit "1Mi". ";
//! 2. the pod's usage — every container's writable layer and logs plus its disk-backed
//!    emptyDirs — above the sum of its containers' `limits.ephemeral-storage` — "Pod ephemeral
//!    local storage usage exceeds the total limit of containers 1Mi. ";
//! 3. a container's writable layer + logs above its own limit — "Container c exceeded its
//!    local ephemeral storage limit "1Mi". ".
//!
//! Every offending pod is evicted in the same pass (upstream does too: these are per-pod
//! contracts, not a node-wide shortage to relieve one pod at a time), immediately (grace 0)
//! and without a DisruptionTarget condition, as upstream.
//!
//! Usage: emptyDirs and log directories are walked like `du` ([`super::signals::du`], bounded
//! in entries); writable layers come from CRI `ListContainerStats` (containerd reports the
//! snapshot's usage, refreshed on its own stats period), newest instance per container name.
//! The limit is printed as the pod spec wrote it (upstream prints the canonical quantity,
//! which is the same for the usual `1Mi`-style values).

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;

use crate::pod::{self as podspec, PodContext};
use crate::resources::parse_value;

const EPHEMERAL: &str = "ephemeral-storage";

/// One pod's measured local storage, in bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodStorage {
    /// Per emptyDir volume name.
    pub empty_dirs: HashMap<String, i128>,
    /// Per container name: writable layer + logs.
    pub containers: HashMap<String, i128>,
}

fn disk_backed(v: &k8s_openapi::api::core::v1::Volume) -> bool {
    v.empty_dir
        .as_ref()
        .is_some_and(|e| e.medium.as_deref() != Some("Memory"))
}

/// Why `pod` must be evicted for its local storage, in upstream's words; `None` if it keeps
/// within its limits.
pub fn violation(pod: &Pod, usage: &PodStorage) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    for v in spec.volumes.iter().flatten() {
        let Some(ed) = &v.empty_dir else { continue };
        let Some(limit) = ed.size_limit.as_ref() else {
            continue;
        };
        let (Some(max), Some(used)) = (parse_value(&limit.0), usage.empty_dirs.get(&v.name)) else {
            continue;
        };
        if max > 0 && *used > max {
            return Some(format!(
                "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                v.name, limit.0
            ));
        }
    }
    let limit_of = |c: &k8s_openapi::api::core::v1::Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(EPHEMERAL))
            .map(|q| q.0.clone())
    };
    let limits: Vec<(String, String)> = spec
        .containers
        .iter()
        .filter_map(|c| limit_of(c).map(|l| (c.name.clone(), l)))
        .collect();
    if !limits.is_empty() {
        let total: i128 = limits.iter().filter_map(|(_, l)| parse_value(l)).sum();
        let used: i128 = usage.containers.values().sum::<i128>()
            + spec
                .volumes
                .iter()
                .flatten()
                .filter(|v| disk_backed(v))
                .filter_map(|v| usage.empty_dirs.get(&v.name))
                .sum::<i128>();
        if used > total {
            // One limit prints as written; a sum prints in bytes.
            let shown = match limits.as_slice() {
                [(_, one)] => one.clone(),
                _ => total.to_string(),
            };
            return Some(format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {shown}. "
            ));
        }
    }
    for (name, limit) in &limits {
        let (Some(max), Some(used)) = (parse_value(limit), usage.containers.get(name)) else {
            continue;
        };
        if *used > max {
            return Some(format!(
                "Container {name} exceeded its local ephemeral storage limit {limit:?}. "
            ));
        }
    }
    None
}

/// Whether the pod declares anything this module checks (others are not measured at all).
pub fn has_limits(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.volumes
        .iter()
        .flatten()
        .any(|v| v.empty_dir.as_ref().is_some_and(|e| e.size_limit.is_some()))
        || spec.containers.iter().any(|c| {
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some_and(|l| l.contains_key(EPHEMERAL))
        })
}

/// Measures `pod`; `writable` is the writable-layer usage by (pod UID, container name).
pub fn measure(
    ctx: &PodContext,
    pod: &Pod,
    writable: &HashMap<(String, String), i128>,
) -> PodStorage {
    let uid = podspec::uid(pod);
    let mut out = PodStorage::default();
    let vols = podspec::pod_dir(ctx, &uid)
        .join("volumes")
        .join("kubernetes.io~empty-dir");
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if v.empty_dir.is_some() {
            out.empty_dirs
                .insert(v.name.clone(), dir_bytes(&vols.join(&v.name)));
        }
    }
    let logs = podspec::log_dir(ctx, pod);
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let layer = writable
            .get(&(uid.clone(), c.name.clone()))
            .copied()
            .unwrap_or(0);
        out.containers
            .insert(c.name.clone(), layer + dir_bytes(&logs.join(&c.name)));
    }
    out
}

fn dir_bytes(p: &Path) -> i128 {
    super::signals::du(p).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u"}, "spec": spec}))
            .unwrap()
    }

    fn usage(dirs: &[(&str, i128)], cs: &[(&str, i128)]) -> PodStorage {
        PodStorage {
            empty_dirs: dirs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            containers: cs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn empty_dir_size_limit_comes_first() {
        let p = pod(json!({
            "volumes": [{"name": "x", "emptyDir": {"sizeLimit": "1Mi"}}],
            "containers": [{"name": "c", "resources": {"limits": {"ephemeral-storage": "1Mi"}}}],
        }));
        assert!(has_limits(&p));
        assert_eq!(violation(&p, &usage(&[("x", 1 << 20)], &[("c", 0)])), None);
        assert_eq!(
            violation(&p, &usage(&[("x", (1 << 20) + 4096)], &[("c", 0)])).as_deref(),
            Some("Usage of EmptyDir volume \"x\" exceeds the limit \"1Mi\". ")
        );
    }

    #[test]
    fn pod_total_counts_layers_logs_and_disk_empty_dirs() {
        let p = pod(json!({
            "volumes": [{"name": "d", "emptyDir": {}}, {"name": "m", "emptyDir": {"medium": "Memory"}}],
            "containers": [
                {"name": "a", "resources": {"limits": {"ephemeral-storage": "1Mi"}}},
                {"name": "b"},
            ],
        }));
        // Memory-backed emptyDirs count as memory, not local storage.
        assert_eq!(
            violation(&p, &usage(&[("d", 0), ("m", 8 << 20)], &[("a", 1000)])),
            None
        );
        assert_eq!(
            violation(
                &p,
                &usage(&[("d", 1 << 20), ("m", 0)], &[("a", 0), ("b", 10)])
            )
            .as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. ")
        );
    }

    #[test]
    fn pods_without_limits_are_left_alone() {
        let p =
            pod(json!({"volumes": [{"name": "d", "emptyDir": {}}], "containers": [{"name": "a"}]}));
        assert!(!has_limits(&p));
        assert_eq!(
            violation(&p, &usage(&[("d", 1 << 40)], &[("a", 1 << 40)])),
            None
        );
    }
}
