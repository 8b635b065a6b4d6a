//! `io.kelson.Scheduler1`: the scheduler's own D-Bus interface, next to `io.kelson.Daemon1`.
//! Properties are read live from the shared counters the scheduling loop updates.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::scheduler::Shared;

pub struct Scheduler1 {
    pub shared: Arc<Shared>,
}

#[zbus::interface(name = "io.kelson.Scheduler1")]
impl Scheduler1 {
    /// Whether this instance holds the leader Lease and schedules.
    #[zbus(property)]
    fn is_leader(&self) -> bool {
        self.shared.is_leader.load(Ordering::Relaxed)
    }
    /// (active, backoff, unschedulable) queue lengths.
    #[zbus(property)]
    fn queue_lengths(&self) -> (u32, u32, u32) {
        let l = *self.shared.lengths.lock();
        (l.active as u32, l.backoff as u32, l.unschedulable as u32)
    }
    /// Pods bound by this instance since it started.
    #[zbus(property)]
    fn scheduled_total(&self) -> u64 {
        self.shared.scheduled_total.load(Ordering::Relaxed)
    }
}
