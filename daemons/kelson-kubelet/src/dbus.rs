//! `io.kelson.Kubelet1`: the kubelet's own D-Bus interface next to `io.kelson.Daemon1`.
//!
//! Properties are read live; Cordon/Uncordon patch `spec.unschedulable` on this node's Node
//! object through the API server, exactly like `kubectl cordon`.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use zbus::fdo;

use crate::worker::Shared;

pub struct Kubelet1 {
    pub node_name: String,
    pub shared: Arc<Shared>,
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

    /// Marks the node schedulable again.
    async fn uncordon(&self) -> fdo::Result<()> {
        let api: Api<Node> = Api::all(self.shared.client.clone());
        crate::node::set_unschedulable(&api, &self.node_name, false)
            .await
            .map_err(|e| fdo::Error::Failed(e.to_string()))
    }
}
