//! Prometheus metrics of a member, under etcd's metric names where the meaning is the same, so
//! existing etcd dashboards and alerts work unchanged.
//!
//! Everything is read live from the Raft status and the MVCC at scrape time (a collector, not
//! counters updated on the hot path): scraping costs nothing between scrapes.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::store::Shared;

#[derive(Debug)]
pub struct KvCollector(pub Arc<Shared>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.cfg.name)
            .finish()
    }
}

impl Collector for KvCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.0.node().status();
        let (db_size, keys, revision, compact) = {
            let m = self.0.mvcc.read();
            (
                m.db_size_bytes(),
                m.key_count(),
                m.current_revision(),
                m.compact_revision(),
            )
        };
        let gauges: [(&str, &str, f64); 8] = [
            (
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
                (st.leader_id != 0) as u8 as f64,
            ),
            (
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                (st.leader_id == st.id) as u8 as f64,
            ),
            (
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
                st.is_learner as u8 as f64,
            ),
            (
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
                db_size as f64,
            ),
            (
                "etcd_debugging_mvcc_keys_total",
                "Total number of keys.",
                keys as f64,
            ),
            (
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
                revision as f64,
            ),
            (
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
                compact as f64,
            ),
            (
                "kelson_kv_raft_term",
                "The current Raft term of this member.",
                st.term as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let counters: [(&str, &str, u64); 2] = [
            (
                "etcd_server_proposals_committed",
                "The total number of consensus proposals committed.",
                st.commit_index,
            ),
            (
                "etcd_server_proposals_applied",
                "The total number of consensus proposals applied.",
                st.applied_index,
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}
