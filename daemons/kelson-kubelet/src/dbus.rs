//! `io.kelson.Kubelet1`: the kubelet's own D-Bus interface next to `io.kelson.Daemon1`.
//!
//! Properties are read live; Cordon/Uncordon patch `spec.unschedulable` on this node's Node
//! object through the API server, exactly like `kubectl cordon`.
//!
//! `Drain(timeout_seconds)` is `kubectl drain --ignore-daemonsets` run by the node itself:
//! cordon, then evict every pod on the node through the eviction API (so PodDisruptionBudgets
//! are respected) except DaemonSet pods (their controller would put them right back) and
//! mirror pods (static pods are the kubelet's own, the API cannot remove them). A 429 from a
//! budget is retried every second until the timeout; the call returns once none of those pods
//! is left, with the number it evicted, or fails naming the pods still there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, EvictParams, ListParams};
use zbus::fdo;

use crate::worker::Shared;

pub struct Kubelet1 {
    pub node_name: String,
    pub shared: Arc<Shared>,
    /// The node's kubeconfig: Drain builds its own client from it (see [`drain_client`]).
    pub kubeconfig: std::path::PathBuf,
}

#[zbus::interface(name = "io.kelson.Kubelet1")]
impl Kubelet1 {
    #[zbus(property)]
    fn node_name(&self) -> String {
        self.node_name.clone()
    }

    /// Pods whose last reported phase is Running.
    #[zbus(property)]
    fn running_pods(&self) -> u32 {
        self.shared.running_pods()
    }

    /// Marks the node unschedulable.
    async fn cordon(&self) -> fdo::Result<()> {
        let api: Api<Node> = Api::all(self.shared.client.clone());
        crate::node::set_unschedulable(&api, &self.node_name, true)
            .await
            .map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    /// Cordons the node and evicts its pods (not DaemonSet or mirror pods) through the
    /// eviction API, retrying budget refusals, until none is left or `timeout_seconds` pass.
    /// Returns how many pods were evicted.
    async fn drain(&self, timeout_seconds: u32) -> fdo::Result<u32> {
        let nodes: Api<Node> = Api::all(self.shared.client.clone());
        crate::node::set_unschedulable(&nodes, &self.node_name, true)
            .await
            .map_err(|e| fdo::Error::Failed(e.to_string()))?;
        let client = drain_client(&self.kubeconfig)
            .await
            .map_err(|e| fdo::Error::Failed(format!("drain: {e}")))?;
        drain_pods(
            &client,
            &self.node_name,
            Duration::from_secs(timeout_seconds.into()),
        )
        .await
        .map_err(fdo::Error::Failed)
    }

    /// Marks the node schedulable again.
    async fn uncordon(&self) -> fdo::Result<()> {
        let api: Api<Node> = Api::all(self.shared.client.clone());
        crate::node::set_unschedulable(&api, &self.node_name, false)
            .await
            .map_err(|e| fdo::Error::Failed(e.to_string()))
    }
}

/// A client without kube's automatic retry of 429s: a budget's refusal must come back to the
/// drain loop (which retries it itself and reports it), not be retried for minutes inside
/// the client.
pub async fn drain_client(kubeconfig: &std::path::Path) -> Result<kube::Client, String> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    cfg.default_retry = false;
    kube::Client::try_from(cfg).map_err(|e| e.to_string())
}

/// Whether drain leaves `pod` alone: DaemonSet-managed or a mirror pod.
pub fn drain_skips(pod: &Pod) -> bool {
    let daemonset = pod
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "DaemonSet");
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    daemonset || mirror
}

/// Evicts the node's pods until none (but the skipped) is left; `Err` names what remains.
pub async fn drain_pods(
    client: &kube::Client,
    node: &str,
    timeout: Duration,
) -> Result<u32, String> {
    let pods: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let deadline = Instant::now() + timeout;
    let mut evicted = 0u32;
    loop {
        let list = pods.list(&lp).await.map_err(|e| e.to_string())?;
        let left: Vec<&Pod> = list.items.iter().filter(|p| !drain_skips(p)).collect();
        if left.is_empty() {
            return Ok(evicted);
        }
        let mut refused = Vec::new();
        for p in &left {
            let (ns, name) = (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            );
            if p.metadata.deletion_timestamp.is_some() {
                refused.push(format!("{ns}/{name} (terminating)"));
                continue;
            }
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            match api.evict(&name, &EvictParams::default()).await {
                Ok(_) => {
                    tracing::info!(namespace = %ns, pod = %name, "evicted for drain");
                    evicted += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(kube::Error::Api(s)) if s.code == 429 => {
                    refused.push(format!("{ns}/{name} ({})", s.message));
                }
                Err(e) => return Err(format!("evicting {ns}/{name}: {e}")),
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "drain timed out after {}s; pods left: {}",
                timeout.as_secs(),
                refused.join(", ")
            ));
        }
        tokio::time::sleep(
            Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    }
}
