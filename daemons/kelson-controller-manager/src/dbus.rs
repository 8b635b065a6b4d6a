//! `io.kelson.ControllerManager1`: leadership and per-controller queue state.
//!
//! Read-only: `IsLeader`, `Controllers` (the enabled names), `QueueDepths` (name → keys
//! waiting) and `LastErrors` (name → the last reconcile error, empty if none).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::queue::WorkQueue;

pub struct ControllerManager1 {
    pub leading: watch::Receiver<bool>,
    pub queues: Arc<Mutex<BTreeMap<&'static str, WorkQueue>>>,
}

#[zbus::interface(name = "io.kelson.ControllerManager1")]
impl ControllerManager1 {
    /// Whether this instance holds the kube-system/kube-controller-manager Lease.
    #[zbus(property)]
    fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// The enabled controllers.
    #[zbus(property)]
    fn controllers(&self) -> Vec<String> {
        self.queues.lock().keys().map(|k| k.to_string()).collect()
    }

    /// Keys waiting in each controller's queue.
    fn queue_depths(&self) -> HashMap<String, u32> {
        self.queues
            .lock()
            .iter()
            .map(|(k, q)| (k.to_string(), q.len() as u32))
            .collect()
    }

    /// The last reconcile error of each controller ("" if none).
    fn last_errors(&self) -> HashMap<String, String> {
        self.queues
            .lock()
            .iter()
            .map(|(k, q)| (k.to_string(), q.last_error()))
            .collect()
    }
}
