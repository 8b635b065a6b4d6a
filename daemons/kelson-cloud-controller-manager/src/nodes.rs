//! The node controller: initializes nodes that kubelets registered with
//! `--cloud-provider=external` (taint `node.cloudprovider.kubernetes.io/uninitialized`) from
//! the operator's inventory instead of a cloud API.
//!
//! For a node found in `[[nodes]]` it writes `status.addresses` (adding a `Hostname` address
//! equal to the node name when the inventory has none, as upstream providers do), the zone,
//! region and instance-type labels, and then removes the taint (last, so the scheduler never
//! sees an untainted node without its topology labels). A node missing from the inventory
//! keeps the taint and gets one Warning event per controller lifetime (not one per resync).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::config::InventoryNode;
use crate::events;

pub const UNINITIALIZED_TAINT: &str = "node.cloudprovider.kubernetes.io/uninitialized";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";

pub struct NodeController {
    api: Api<Node>,
    client: kube::Client,
    inventory: HashMap<String, InventoryNode>,
    warned: HashSet<String>,
}

pub fn is_uninitialized(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == UNINITIALIZED_TAINT))
}

impl NodeController {
    pub fn new(client: kube::Client, inventory: &[InventoryNode]) -> NodeController {
        NodeController {
            api: Api::all(client.clone()),
            client,
            inventory: inventory
                .iter()
                .map(|n| (n.name.clone(), n.clone()))
                .collect(),
            warned: HashSet::new(),
        }
    }

    pub async fn reconcile(&mut self, nodes: &[Arc<Node>]) {
        for n in nodes {
            if !is_uninitialized(n) {
                continue;
            }
            let name = n.metadata.name.clone().unwrap_or_default();
            let Some(inv) = self.inventory.get(&name).cloned() else {
                if self.warned.insert(name.clone()) {
                    tracing::warn!(node = %name, "node is not in the inventory; leaving it uninitialized");
                    events::emit(
                        &self.client,
                        "default",
                        node_ref(n),
                        "Warning",
                        "InventoryLookupFailed",
                        &format!(
                            "node {name} is not in the cloud controller manager's [[nodes]] inventory; it keeps the {UNINITIALIZED_TAINT} taint"
                        ),
                    )
                    .await;
                }
                continue;
            };
            match self.initialize(n, &inv).await {
                Ok(()) => {
                    self.warned.remove(&name);
                    tracing::info!(node = %name, "node initialized from the inventory");
                }
                // Conflicts (a stale cache) and transient errors retry on the next pass.
                Err(e) => tracing::warn!(node = %name, error = %e, "initializing node failed"),
            }
        }
    }

    async fn initialize(&self, n: &Node, inv: &InventoryNode) -> Result<(), kube::Error> {
        let name = n.metadata.name.clone().unwrap_or_default();
        let mut addresses: Vec<serde_json::Value> = inv
            .addresses
            .iter()
            .map(|a| json!({"type": a.type_, "address": a.address}))
            .collect();
        if !inv.addresses.iter().any(|a| a.type_ == "Hostname") {
            addresses.push(json!({"type": "Hostname", "address": name}));
        }
        self.api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"addresses": addresses}})),
            )
            .await?;
        let mut labels = serde_json::Map::new();
        for (k, v) in [
            (ZONE_LABEL, &inv.zone),
            (REGION_LABEL, &inv.region),
            (INSTANCE_TYPE_LABEL, &inv.instance_type),
        ] {
            if let Some(v) = v {
                labels.insert(k.into(), json!(v));
            }
        }
        let taints: Vec<_> = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key != UNINITIALIZED_TAINT)
            .collect();
        // resourceVersion makes this a compare-and-swap: a taint list read from a stale cache
        // must not overwrite a newer one.
        let patch = json!({
            "metadata": {"labels": labels, "resourceVersion": n.metadata.resource_version},
            "spec": {"taints": if taints.is_empty() { serde_json::Value::Null } else { json!(taints) }},
        });
        self.api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }
}

fn node_ref(n: &Node) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: n.metadata.name.clone(),
        uid: n.metadata.uid.clone(),
        ..Default::default()
    }
}
