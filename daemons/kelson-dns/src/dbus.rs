//! `io.kelson.DNS1`: the DNS server's own D-Bus interface, next to `io.kelson.Daemon1`.
//! Properties are read live from the zone snapshot and the forwarder's counters.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::Dns;

pub struct Dns1 {
    pub dns: Arc<Dns>,
}

#[zbus::interface(name = "io.kelson.DNS1")]
impl Dns1 {
    /// Records in the cluster zone (A, AAAA, SRV, CNAME, PTR).
    #[zbus(property)]
    fn records(&self) -> u64 {
        self.dns.zone().record_count() as u64
    }
    /// Answers held in the forwarding cache.
    #[zbus(property)]
    fn cache_entries(&self) -> u64 {
        self.dns.forwarder.cache_len() as u64
    }
    /// Forwarded queries answered from the cache.
    #[zbus(property)]
    fn cache_hits(&self) -> u64 {
        let s = &self.dns.forwarder.stats;
        s.hits_success.load(Ordering::Relaxed) + s.hits_denial.load(Ordering::Relaxed)
    }
    /// Forwarded queries that went to an upstream.
    #[zbus(property)]
    fn cache_misses(&self) -> u64 {
        self.dns.forwarder.stats.misses.load(Ordering::Relaxed)
    }
    /// Requests answered since start.
    #[zbus(property)]
    fn requests(&self) -> u64 {
        self.dns.requests_total.load(Ordering::Relaxed)
    }
    /// Empties the forwarding cache; returns the number of entries dropped.
    fn flush_cache(&self) -> u64 {
        let n = self.dns.forwarder.flush() as u64;
        tracing::info!(entries = n, "cache flushed over D-Bus");
        n
    }
}
