//! Prometheus metrics named as CoreDNS's, so dashboards and alerts written for CoreDNS work:
//! `coredns_dns_requests_total{server,zone,proto,family,type}`,
//! `coredns_dns_responses_total{server,zone,rcode}`,
//! `coredns_dns_request_duration_seconds{server,zone,type}` (CoreDNS's buckets: 0.25 ms × 2ⁿ),
//! `coredns_cache_hits_total{server,type=success|denial}`, `coredns_cache_misses_total{server}`,
//! `coredns_cache_entries{server,type}`, plus `kelson_dns_zone_records`.
//!
//! Request metrics are updated on the query path (label families with atomic counters); the
//! cache and zone gauges are read from their owners at scrape time by a collector, so there is
//! nothing to keep in sync.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::Dns;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub server: String,
    pub zone: String,
    pub proto: String,
    pub family: String,
    #[prometheus(flatten)]
    pub qtype: TypeLabel,
}

/// `type="A"`: a separate struct because `type` is a keyword.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub server: String,
    pub zone: String,
    pub rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub server: String,
    pub zone: String,
    #[prometheus(flatten)]
    pub qtype: TypeLabel,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

/// The query-path metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            responses: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl Metrics {
    /// Registers the families and the scrape-time collector over `dns`.
    pub fn register(&self, reg: &mut Registry, dns: Arc<Dns>) {
        reg.register(
            "coredns_dns_requests",
            "Counter of DNS requests made per zone, protocol and family.",
            self.requests.clone(),
        );
        reg.register(
            "coredns_dns_responses",
            "Counter of response status codes.",
            self.responses.clone(),
        );
        reg.register(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took.",
            self.duration.clone(),
        );
        reg.register_collector(Box::new(DnsCollector(dns)));
    }
}

#[derive(Debug)]
struct DnsCollector(Arc<Dns>);

impl Collector for DnsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let dns = &self.0;
        let st = &dns.forwarder.stats;
        let server = [("server", "dns://kelson-dns")];
        for (kind, v) in [
            ("success", st.hits_success.load(Ordering::Relaxed)),
            ("denial", st.hits_denial.load(Ordering::Relaxed)),
        ] {
            let c = ConstCounter::new(v);
            let labels = [server[0], ("type", kind)];
            let mut m = enc.encode_descriptor(
                "coredns_cache_hits",
                "The count of cache hits.",
                None,
                c.metric_type(),
            )?;
            c.encode(m.encode_family(&labels)?)?;
        }
        let c = ConstCounter::new(st.misses.load(Ordering::Relaxed));
        c.encode(
            enc.encode_descriptor(
                "coredns_cache_misses",
                "The count of cache misses.",
                None,
                c.metric_type(),
            )?
            .encode_family(&server)?,
        )?;
        let g = ConstGauge::new(dns.forwarder.cache_len() as i64);
        g.encode(
            enc.encode_descriptor(
                "coredns_cache_entries",
                "The number of elements in the cache.",
                None,
                g.metric_type(),
            )?
            .encode_family(&[server[0], ("type", "all")])?,
        )?;
        let g = ConstGauge::new(dns.zone().record_count() as i64);
        g.encode(enc.encode_descriptor(
            "kelson_dns_zone_records",
            "Records in the cluster zone (A, AAAA, SRV, CNAME, PTR; pod records not counted).",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}
