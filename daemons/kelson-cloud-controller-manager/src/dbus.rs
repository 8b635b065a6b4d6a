//! `io.kelson.CloudControllerManager1`: the component's own D-Bus interface, next to
//! `io.kelson.Daemon1`. Properties are read live from the state the controllers publish.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::Shared;

pub struct CloudControllerManager1 {
    pub shared: Arc<Shared>,
    pub mode: String,
}

#[zbus::interface(name = "io.kelson.CloudControllerManager1")]
impl CloudControllerManager1 {
    /// `controller` or `speaker`.
    #[zbus(property)]
    fn mode(&self) -> String {
        self.mode.clone()
    }
    /// Whether this instance holds the controller Lease and runs the controllers.
    #[zbus(property)]
    fn is_leader(&self) -> bool {
        self.shared.is_leader.load(Ordering::Relaxed)
    }
    /// LoadBalancer address → owning Service (`namespace/name`), as allocated by the leader.
    #[zbus(property, name = "AllocatedIPs")]
    fn allocated_ips(&self) -> std::collections::HashMap<String, String> {
        self.shared
            .allocations
            .lock()
            .iter()
            .map(|(ip, s)| (ip.to_string(), s.clone()))
            .collect()
    }
    /// Per pool: (name, addresses in use, size).
    #[zbus(property)]
    fn pools_usage(&self) -> Vec<(String, u64, u64)> {
        self.shared.usage.lock().clone()
    }
    /// Speaker: addresses this node currently holds and announces.
    #[zbus(property, name = "AnnouncedIPs")]
    fn announced_ips(&self) -> Vec<String> {
        self.shared
            .announced
            .lock()
            .iter()
            .map(ToString::to_string)
            .collect()
    }
    /// Whether this instance holds the control-plane VIP.
    #[zbus(property, name = "HoldsVIP")]
    fn holds_vip(&self) -> bool {
        self.shared.holds_vip.load(Ordering::Relaxed)
    }
}
