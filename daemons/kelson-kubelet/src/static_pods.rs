//! Static pods: pods from manifest files in `--pod-manifest-path`, run without the API server
//! deciding anything, mirrored into the API so `kubectl get pods` shows them.
//!
//! Every `file-check-frequency` seconds the directory is scanned (hidden files skipped, YAML or
//! JSON, one Pod per file; a file that does not parse is logged and skipped, as upstream). Each
//! manifest becomes a pod named `<name>-<node>` in its namespace (default `default`) with
//! `spec.nodeName` set and a UID that is a hash of the node and the manifest's content — so an
//! edited file is a new pod (the old one is torn down, the new one started), exactly upstream's
//! behaviour. The pod carries upstream's annotations `kubernetes.io/config.source: file` and
//! `kubernetes.io/config.hash: <uid>`; sandboxes inherit them, which is how the pod manager's
//! orphan clean-up knows to leave static pods alone.
//!
//! Each static pod is run by an ordinary pod [`Worker`] fed from here instead of from the API
//! watch. Its status goes to the *mirror pod*: an API object of the same name with the
//! annotation `kubernetes.io/config.mirror: <hash>` and an ownerReference to the Node (so it
//! goes away with the node). The mirror is created when missing, replaced when it is stale
//! (another hash) or being deleted, and deleted when the file goes away — after the worker has
//! stopped the containers with the pod's grace period. The pod manager ignores mirror pods.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use sha2::Digest;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pod::{self as podspec, ANN_CONFIG_HASH, ANN_CONFIG_MIRROR, ANN_CONFIG_SOURCE};
use crate::worker::{Shared, Worker};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Turns one manifest file's text into the static pod for `node`.
pub fn static_pod(path: &Path, text: &str, node: &str) -> Result<Pod, ManifestError> {
    let mut pod: Pod = serde_yaml::from_str(text).map_err(|source| ManifestError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |message: &str| ManifestError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    };
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("metadata.name is required"))?;
    if pod.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
        return Err(invalid("spec.containers must not be empty"));
    }
    let mut h = sha2::Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    let digest = hex::encode(h.finalize());
    let uid = digest[..32].to_string();
    pod.metadata.name = Some(format!("{name}-{node}"));
    if pod.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        pod.metadata.namespace = Some("default".into());
    }
    pod.metadata.uid = Some(uid.clone());
    pod.metadata.resource_version = None;
    pod.metadata.deletion_timestamp = None;
    let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(ANN_CONFIG_SOURCE.into(), "file".into());
    ann.insert(ANN_CONFIG_HASH.into(), uid);
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.to_string());
    }
    pod.status = None;
    Ok(pod)
}

/// The mirror pod for a static pod.
pub fn mirror_of(pod: &Pod, node: &Node) -> Pod {
    let mut m = pod.clone();
    m.metadata.uid = None;
    let hash = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_CONFIG_HASH))
        .cloned()
        .unwrap_or_default();
    m.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANN_CONFIG_MIRROR.into(), hash);
    m.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.metadata.name.clone().unwrap_or_default(),
        uid: node.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    m
}

/// Whether an API pod is a mirror pod (the pod manager leaves those alone).
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANN_CONFIG_MIRROR))
}

/// Reads every manifest in `dir`: UID → pod. Unreadable or invalid files are logged.
pub fn scan(dir: &Path, node: &str) -> BTreeMap<String, Pod> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    paths.sort();
    for path in paths {
        let r = std::fs::read_to_string(&path)
            .map_err(|source| ManifestError::Read {
                path: path.clone(),
                source,
            })
            .and_then(|t| static_pod(&path, &t, node));
        match r {
            Ok(p) => {
                out.insert(podspec::uid(&p), p);
            }
            Err(e) => tracing::warn!(error = %e, "skipping a static pod manifest"),
        }
    }
    out
}

struct Running {
    pod: Arc<Pod>,
    tx: watch::Sender<Option<Arc<Pod>>>,
    handle: JoinHandle<()>,
}

/// Runs the static pods of `dir` until `shutdown` (containers keep running then, like the API
/// pods' workers, so a restart adopts them).
pub async fn run(
    shared: Arc<Shared>,
    node_name: String,
    dir: PathBuf,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let mut running: HashMap<String, Running> = HashMap::new();
    // Pods whose file went away: stopping, mirror to delete once the worker is done.
    let mut stopping: Vec<(Arc<Pod>, JoinHandle<()>)> = Vec::new();
    let mut first = true;
    loop {
        let want = scan(&dir, &node_name);
        for (uid, pod) in &want {
            if running.get(uid).is_some_and(|r| !r.handle.is_finished()) {
                continue;
            }
            tracing::info!(pod = %podspec::name(pod), %uid, "static pod");
            let pod = Arc::new(pod.clone());
            let (tx, rx) = watch::channel(Some(pod.clone()));
            let handle = tokio::spawn(Worker::new(shared.clone(), uid.clone(), rx).run());
            running.insert(uid.clone(), Running { pod, tx, handle });
        }
        let gone: Vec<String> = running
            .keys()
            .filter(|u| !want.contains_key(*u))
            .cloned()
            .collect();
        for uid in gone {
            let Some(r) = running.remove(&uid) else {
                continue;
            };
            tracing::info!(pod = %podspec::name(&r.pod), %uid, "static pod manifest removed; stopping it");
            // A deletion timestamp makes the worker stop the containers gracefully (preStop,
            // grace period) and exit; it never deletes API objects for static pods.
            let mut p = (*r.pod).clone();
            p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            let _ = r.tx.send(Some(Arc::new(p)));
            stopping.push((r.pod, r.handle));
        }
        let mut still = Vec::new();
        for (pod, handle) in stopping.drain(..) {
            if handle.is_finished() {
                delete_mirror(&shared, &pod, None).await;
            } else {
                still.push((pod, handle));
            }
        }
        stopping = still;
        if first {
            first = false;
            remove_stale_static_sandboxes(&shared, &node_name, &want).await;
        }
        match nodes.get_opt(&node_name).await {
            Ok(Some(node)) => {
                for r in running.values() {
                    ensure_mirror(&shared, &r.pod, &node).await;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "reading the node for mirror pods"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, r) in running {
        drop(r.tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), r.handle).await;
    }
}

async fn ensure_mirror(shared: &Shared, pod: &Pod, node: &Node) {
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &podspec::namespace(pod));
    let name = podspec::name(pod);
    let hash = podspec::uid(pod);
    match api.get_opt(&name).await {
        Ok(Some(m)) => {
            let current = m
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANN_CONFIG_MIRROR))
                .cloned();
            let stale = current.as_deref() != Some(hash.as_str());
            if m.metadata.deletion_timestamp.is_some() || (stale && current.is_some()) {
                tracing::info!(pod = %name, "replacing a stale or deleted mirror pod");
                delete_mirror(shared, pod, m.metadata.uid.clone()).await;
            } else if current.is_none() {
                tracing::warn!(pod = %name, "a non-mirror pod has the static pod's name; leaving it");
            }
        }
        Ok(None) => {
            match api
                .create(&PostParams::default(), &mirror_of(pod, node))
                .await
            {
                Ok(_) => tracing::info!(pod = %name, "mirror pod created"),
                Err(e) => tracing::warn!(pod = %name, error = %e, "creating the mirror pod"),
            }
        }
        Err(e) => tracing::debug!(pod = %name, error = %e, "reading the mirror pod"),
    }
}

/// Deletes the mirror pod (grace 0: nothing runs for it), optionally only that UID.
async fn delete_mirror(shared: &Shared, pod: &Pod, uid: Option<String>) {
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &podspec::namespace(pod));
    let name = podspec::name(pod);
    if uid.is_none() {
        // Only ever delete a mirror, never a same-named ordinary pod.
        match api.get_opt(&name).await {
            Ok(Some(m)) if is_mirror(&m) => {
                return Box::pin(delete_mirror(shared, pod, m.metadata.uid.clone())).await
            }
            _ => return,
        }
    }
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => tracing::info!(pod = %name, "mirror pod deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => tracing::warn!(pod = %name, error = %e, "deleting the mirror pod"),
    }
}

/// Tears down static pods whose manifest disappeared while the kubelet was down.
async fn remove_stale_static_sandboxes(
    shared: &Arc<Shared>,
    node_name: &str,
    want: &BTreeMap<String, Pod>,
) {
    let labels = HashMap::from([(podspec::LABEL_NODE.to_string(), node_name.to_string())]);
    let Ok(sbs) = shared.cri.list_pod_sandboxes(labels).await else {
        return;
    };
    let stale: HashSet<String> = sbs
        .iter()
        .filter(|s| {
            s.annotations
                .get(ANN_CONFIG_SOURCE)
                .is_some_and(|v| v == "file")
        })
        .filter_map(|s| s.labels.get(podspec::LABEL_POD_UID).cloned())
        .filter(|uid| !want.contains_key(uid))
        .collect();
    for uid in stale {
        tracing::info!(%uid, "removing a static pod whose manifest is gone");
        let (tx, rx) = watch::channel(None);
        Worker::new(shared.clone(), uid, rx).run().await;
        drop(tx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_static_pods_with_stable_hashed_uids() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n";
        let p = static_pod(Path::new("/m/web.yaml"), yaml, "node-a").unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-node-a"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some("node-a")
        );
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        assert!(podspec::is_static(&p));
        let again = static_pod(Path::new("/m/web.yaml"), yaml, "node-a").unwrap();
        assert_eq!(again.metadata.uid.as_deref(), Some(uid.as_str()));
        let edited = static_pod(
            Path::new("/m/web.yaml"),
            &yaml.replace("busybox", "bb"),
            "node-a",
        )
        .unwrap();
        assert_ne!(edited.metadata.uid.as_deref(), Some(uid.as_str()));
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j","namespace":"kube-system"},"spec":{"containers":[{"name":"c","image":"x"}]}}"#;
        let j = static_pod(Path::new("/m/j.json"), json, "n").unwrap();
        assert_eq!(j.metadata.namespace.as_deref(), Some("kube-system"));
        assert!(static_pod(Path::new("/m/bad"), "metadata: {}\n", "n").is_err());
        assert!(static_pod(Path::new("/m/bad"), "{{{", "n").is_err());

        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a", "uid": "nu"}}))
        .unwrap();
        let m = mirror_of(&p, &node);
        assert!(is_mirror(&m));
        assert_eq!(m.metadata.uid, None);
        assert_eq!(
            m.metadata.annotations.as_ref().unwrap()[ANN_CONFIG_MIRROR],
            uid
        );
        let owner = &m.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "nu"));
    }
}
