//! The event recorder every controller shares: core/v1 Events like client-go's
//! `record.EventRecorder`, so `kubectl describe` shows what a controller did ("Scaled up
//! replica set web-5d8f from 0 to 3", "Created pod: web-5d8f-x7k2p", ...).
//!
//! Why not `kube::runtime::events::Recorder`: it writes events.k8s.io/v1 Events (kubectl
//! describe reads core/v1 ones), it awaits every write on the caller's path, its dedup key
//! leaves out the message (so "from 0 to 3" and then "from 3 to 5" on the same object would
//! bump the count of the first message), and its cache is unbounded. This module follows
//! client-go's `EventCorrelator` instead:
//!
//! - **dedup** (`eventLogger`): an event equal to a recent one (same source, object, type,
//!   reason and message) is a PATCH of that Event's `count`, `lastTimestamp` and `message`,
//!   not a new object;
//! - **aggregation** (`EventAggregator`): once one object has had 10 distinct messages for
//!   the same reason within 10 minutes, further ones are folded into one event whose message
//!   is "(combined from similar events): <latest>" (whose count then grows by dedup);
//! - **spam filter**: a token bucket per source and object (burst 25, one token per 5 min)
//!   drops the excess, as upstream does.
//!
//! All three caches are LRUs of 4096 entries (upstream's size), so memory is bounded. Recording
//! never waits: [`Recorder::event`] puts the event on a queue of 1000 and drops it when the
//! queue is full (upstream's broadcaster drops too; events are best effort and must never slow
//! a controller down). One task correlates in arrival order and hands the writes to
//! [`LANES`] writer tasks chosen by event name, so a create and the later patches of the same
//! Event stay in order while unrelated events are written in parallel. A patch that finds its
//! Event gone (expired by the API server's event TTL) creates it again. What happened to each
//! event (created, patched, dropped, filtered, failed) is counted on `/metrics` as
//! `kelson_controller_manager_events_total{outcome}`.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use lru::LruCache;
use serde_json::json;
use tokio::sync::mpsc;

/// Events waiting to be correlated; beyond this they are dropped.
pub const QUEUE: usize = 1000;
/// Writer tasks (API requests in flight at once).
pub const LANES: usize = 4;
/// Entries in each correlation cache (client-go's `maxLruCacheEntries`).
pub const CACHE_ENTRIES: usize = 4096;
/// Distinct messages per object and reason before aggregation (`defaultAggregateMaxEvents`).
pub const AGGREGATE_MAX_EVENTS: usize = 10;
/// The window those are counted in (`defaultAggregateIntervalInSeconds`).
pub const AGGREGATE_INTERVAL: Duration = Duration::from_secs(600);
/// Spam filter burst per source and object (`defaultSpamBurst`).
pub const SPAM_BURST: f64 = 25.0;
/// Spam filter refill: one event per 5 minutes (`defaultSpamQPS`).
pub const SPAM_QPS: f64 = 1.0 / 300.0;
/// Longest message written (the events.k8s.io limit for a note; core/v1 has none, but a
/// kilobyte is plenty for a human-readable line).
const MAX_MESSAGE: usize = 1024;
/// Prefix of an aggregated event's message (client-go's `EventAggregatorByReasonMessageFunc`).
pub const COMBINED_PREFIX: &str = "(combined from similar events): ";

/// Event severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Counters for logs, tests and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Not recorded: the queue was full.
    pub dropped: AtomicU64,
    /// Not recorded: the spam filter said no.
    pub filtered: AtomicU64,
    /// Events created.
    pub created: AtomicU64,
    /// Count bumps (patches) of existing events.
    pub patched: AtomicU64,
    /// Writes the API server refused.
    pub failed: AtomicU64,
}

struct Req {
    component: &'static str,
    object: ObjectReference,
    type_: EventType,
    reason: &'static str,
    message: String,
    at: Timestamp,
}

/// A write the correlator decided on.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A new Event object.
    Create(Event),
    /// A repeat of an existing Event: bump its count. `event` is the full object, created if
    /// the patch finds the original gone.
    Patch(Event),
}

/// Records Events about API objects (cheap to clone; one per process).
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Req>,
    stats: Arc<Stats>,
}

impl Recorder {
    /// Starts the correlator and writer tasks. `instance` is this process's identity
    /// (`reportingInstance`). The tasks end when every clone of the recorder is dropped.
    pub fn start(client: Client, instance: String) -> Recorder {
        let stats = Arc::new(Stats::default());
        let (tx, mut rx) = mpsc::channel::<Req>(QUEUE);
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (ltx, mut lrx) = mpsc::channel::<Write>(QUEUE / LANES);
            let (client, stats) = (client.clone(), stats.clone());
            tokio::spawn(async move {
                while let Some(w) = lrx.recv().await {
                    write(&client, &stats, w).await;
                }
            });
            lanes.push(ltx);
        }
        let st = stats.clone();
        tokio::spawn(async move {
            let mut c = Correlator::new();
            while let Some(r) = rx.recv().await {
                let ev = make_event(&r, &instance);
                match c.correlate(ev, Instant::now()) {
                    None => {
                        st.filtered.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(reason = r.reason, "event dropped by the spam filter");
                    }
                    Some(w) => {
                        let name = match &w {
                            Write::Create(e) | Write::Patch(e) => {
                                e.metadata.name.clone().unwrap_or_default()
                            }
                        };
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        name.hash(&mut h);
                        let lane = &lanes[(h.finish() % LANES as u64) as usize];
                        // Waiting here only delays correlation; producers never wait.
                        if lane.send(w).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Recorder { tx, stats }
    }

    /// The recorder's counters (shared with the /metrics collector).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Records an event about `obj` as `component` (upstream's controller name, e.g.
    /// `deployment-controller`). Never waits; dropped if the queue is full.
    pub fn event<K: Resource<DynamicType = ()>>(
        &self,
        component: &'static str,
        obj: &K,
        type_: EventType,
        reason: &'static str,
        message: impl Into<String>,
    ) {
        self.event_ref(component, obj.object_ref(&()), type_, reason, message);
    }

    /// As [`Recorder::event`], for a hand-made reference (node events use the node's name as
    /// its uid, as upstream's node controller does).
    pub fn event_ref(
        &self,
        component: &'static str,
        object: ObjectReference,
        type_: EventType,
        reason: &'static str,
        message: impl Into<String>,
    ) {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let r = Req {
            component,
            object,
            type_,
            reason,
            message,
            at: Timestamp::now(),
        };
        if self.tx.try_send(r).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }
}

/// `/metrics`: `kelson_controller_manager_events_total{outcome}` from the recorder's counters.
#[derive(Debug)]
pub struct StatsCollector(pub Arc<Stats>);

impl prometheus_client::collector::Collector for StatsCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let s = &self.0;
        let mut m = enc.encode_descriptor(
            "kelson_controller_manager_events",
            "Events by outcome: created, patched (count bump), dropped (queue full), filtered (spam filter), failed (API error)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (outcome, v) in [
            ("created", &s.created),
            ("patched", &s.patched),
            ("dropped", &s.dropped),
            ("filtered", &s.filtered),
            ("failed", &s.failed),
        ] {
            ConstCounter::new(v.load(Ordering::Relaxed))
                .encode(m.encode_family(&[("outcome", outcome)])?)?;
        }
        Ok(())
    }
}

/// The reference upstream's node controller puts on node events (uid = node name).
pub fn node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        kind: Some("Node".into()),
        name: Some(name.into()),
        uid: Some(name.into()),
        ..Default::default()
    }
}

/// client-go `makeEvent`: named `<object>.<nanoseconds hex>`, in the object's namespace
/// (`default` for cluster-scoped objects).
fn make_event(r: &Req, instance: &str) -> Event {
    let ns = r
        .object
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{:x}",
                r.object.name.as_deref().unwrap_or_default(),
                r.at.as_nanosecond()
            )),
            namespace: Some(ns),
            ..Default::default()
        },
        involved_object: r.object.clone(),
        reason: Some(r.reason.into()),
        message: Some(r.message.clone()),
        type_: Some(r.type_.as_str().into()),
        count: Some(1),
        first_timestamp: Some(Time(r.at)),
        last_timestamp: Some(Time(r.at)),
        source: Some(EventSource {
            component: Some(r.component.into()),
            host: None,
        }),
        reporting_component: Some(r.component.into()),
        reporting_instance: Some(instance.into()),
        ..Default::default()
    }
}

fn object_key(e: &Event) -> String {
    let o = &e.involved_object;
    let source = e.source.as_ref();
    [
        source.and_then(|s| s.component.as_deref()),
        source.and_then(|s| s.host.as_deref()),
        o.kind.as_deref(),
        o.namespace.as_deref(),
        o.name.as_deref(),
        o.uid.as_deref(),
        o.api_version.as_deref(),
    ]
    .map(|s| s.unwrap_or_default())
    .join("\u{0}")
}

/// client-go `getEventKey`: everything that makes two events "the same".
fn event_key(e: &Event) -> String {
    let o = &e.involved_object;
    [
        object_key(e).as_str(),
        o.field_path.as_deref().unwrap_or_default(),
        e.type_.as_deref().unwrap_or_default(),
        e.reason.as_deref().unwrap_or_default(),
        e.message.as_deref().unwrap_or_default(),
    ]
    .join("\u{0}")
}

/// client-go `EventAggregatorByReasonFunc`: the same object, type and reason.
fn aggregate_key(e: &Event) -> String {
    [
        object_key(e).as_str(),
        e.type_.as_deref().unwrap_or_default(),
        e.reason.as_deref().unwrap_or_default(),
        e.reporting_component.as_deref().unwrap_or_default(),
        e.reporting_instance.as_deref().unwrap_or_default(),
    ]
    .join("\u{0}")
}

struct AggregateRecord {
    messages: HashSet<String>,
    last: Instant,
}

struct Observed {
    count: i32,
    first: Option<Time>,
    name: String,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// client-go's `EventCorrelator`: aggregation, dedup and the spam filter (pure; the caller
/// supplies the clock, so tests can drive it).
pub struct Correlator {
    aggregate: LruCache<String, AggregateRecord>,
    observed: LruCache<String, Observed>,
    spam: LruCache<String, Bucket>,
}

impl Default for Correlator {
    fn default() -> Self {
        Self::new()
    }
}

impl Correlator {
    pub fn new() -> Self {
        let n = NonZeroUsize::new(CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        Correlator {
            aggregate: LruCache::new(n),
            observed: LruCache::new(n),
            spam: LruCache::new(n),
        }
    }

    /// What to write for `ev` observed at `now`, or `None` when the spam filter drops it.
    pub fn correlate(&mut self, ev: Event, now: Instant) -> Option<Write> {
        let (ev, key) = self.aggregate(ev, now);
        let w = self.observe(ev, key);
        let ev = match &w {
            Write::Create(e) | Write::Patch(e) => e,
        };
        self.allow(ev, now).then_some(w)
    }

    fn aggregate(&mut self, ev: Event, now: Instant) -> (Event, String) {
        let akey = aggregate_key(&ev);
        let msg = ev.message.clone().unwrap_or_default();
        let rec = self
            .aggregate
            .get_or_insert_mut(akey.clone(), || AggregateRecord {
                messages: HashSet::new(),
                last: now,
            });
        if now.duration_since(rec.last) > AGGREGATE_INTERVAL {
            rec.messages.clear();
        }
        rec.messages.insert(msg.clone());
        rec.last = now;
        if rec.messages.len() < AGGREGATE_MAX_EVENTS {
            let key = event_key(&ev);
            return (ev, key);
        }
        // Do not let the set grow beyond the threshold.
        if let Some(any) = rec.messages.iter().next().cloned() {
            rec.messages.remove(&any);
        }
        let at = ev.last_timestamp.clone();
        let name = format!(
            "{}.{:x}",
            ev.involved_object.name.as_deref().unwrap_or_default(),
            at.as_ref().map_or(0, |t| t.0.as_nanosecond())
        );
        let combined = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: ev.metadata.namespace.clone(),
                ..Default::default()
            },
            count: Some(1),
            first_timestamp: at.clone(),
            last_timestamp: at,
            message: Some(format!("{COMBINED_PREFIX}{msg}")),
            ..ev
        };
        (combined, akey)
    }

    fn observe(&mut self, mut ev: Event, key: String) -> Write {
        match self.observed.get_mut(&key) {
            Some(o) => {
                o.count += 1;
                ev.count = Some(o.count);
                ev.first_timestamp = o.first.clone();
                ev.metadata.name = Some(o.name.clone());
                Write::Patch(ev)
            }
            None => {
                self.observed.put(
                    key,
                    Observed {
                        count: 1,
                        first: ev.first_timestamp.clone(),
                        name: ev.metadata.name.clone().unwrap_or_default(),
                    },
                );
                Write::Create(ev)
            }
        }
    }

    fn allow(&mut self, ev: &Event, now: Instant) -> bool {
        let b = self.spam.get_or_insert_mut(object_key(ev), || Bucket {
            tokens: SPAM_BURST,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * SPAM_QPS;
        b.tokens = (b.tokens + refill).min(SPAM_BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Writes one event (client-go `recordToSink`, without its retries: best effort).
async fn write(client: &Client, stats: &Stats, w: Write) {
    let (ev, patch) = match w {
        Write::Create(e) => (e, false),
        Write::Patch(e) => (e, true),
    };
    let ns = ev
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let name = ev.metadata.name.clone().unwrap_or_default();
    if patch {
        let body = json!({
            "count": ev.count,
            "lastTimestamp": ev.last_timestamp,
            "message": ev.message,
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                stats.patched.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                // Expired meanwhile: record it anew, keeping the count (as client-go does).
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(event = %name, error = %e, "patching event failed");
                return;
            }
        }
    }
    match api.create(&PostParams::default(), &ev).await {
        Ok(_) => {
            stats.created.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(event = %name, error = %e, "creating event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, reason: &'static str, message: &str, at_ns: i128) -> Event {
        let r = Req {
            component: "test-controller",
            object: ObjectReference {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            type_: EventType::Normal,
            reason,
            message: message.into(),
            at: Timestamp::from_nanosecond(at_ns).unwrap(),
        };
        make_event(&r, "me")
    }

    #[test]
    fn repeats_bump_the_count_of_the_first_event() {
        let mut c = Correlator::new();
        let t = Instant::now();
        let Some(Write::Create(first)) = c.correlate(ev("d", "R", "m", 1_000), t) else {
            panic!("first is a create")
        };
        assert_eq!(first.metadata.name.as_deref(), Some("d.3e8"));
        assert_eq!(first.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(
            first.source.as_ref().unwrap().component.as_deref(),
            Some("test-controller")
        );
        let Some(Write::Patch(second)) = c.correlate(ev("d", "R", "m", 2_000), t) else {
            panic!("a repeat is a patch")
        };
        assert_eq!(second.metadata.name, first.metadata.name);
        assert_eq!(second.count, Some(2));
        assert_eq!(second.first_timestamp, first.first_timestamp);
        assert_ne!(second.last_timestamp, first.last_timestamp);
        // Another message, another object: new events.
        assert!(matches!(
            c.correlate(ev("d", "R", "other", 3_000), t),
            Some(Write::Create(_))
        ));
        assert!(matches!(
            c.correlate(ev("e", "R", "m", 4_000), t),
            Some(Write::Create(_))
        ));
        assert!(matches!(
            c.correlate(ev("d", "R", "m", 5_000), t),
            Some(Write::Patch(e)) if e.count == Some(3)
        ));
    }

    #[test]
    fn many_distinct_messages_are_combined() {
        let mut c = Correlator::new();
        let t = Instant::now();
        for i in 0..AGGREGATE_MAX_EVENTS - 1 {
            let w = c.correlate(ev("d", "R", &format!("m{i}"), i as i128), t);
            assert!(matches!(w, Some(Write::Create(_))), "{i}");
        }
        let Some(Write::Create(agg)) = c.correlate(ev("d", "R", "m-last", 100), t) else {
            panic!("the 10th distinct message starts an aggregate event")
        };
        assert_eq!(
            agg.message.as_deref(),
            Some("(combined from similar events): m-last")
        );
        let Some(Write::Patch(agg2)) = c.correlate(ev("d", "R", "m-later", 200), t) else {
            panic!("further messages bump the aggregate")
        };
        assert_eq!(agg2.metadata.name, agg.metadata.name);
        assert_eq!(agg2.count, Some(2));
        assert_eq!(
            agg2.message.as_deref(),
            Some("(combined from similar events): m-later")
        );
        // Another reason is counted separately.
        assert!(matches!(
            c.correlate(ev("d", "Other", "x", 300), t),
            Some(Write::Create(_))
        ));
        // After the interval the set starts over.
        let later = t + AGGREGATE_INTERVAL + Duration::from_secs(1);
        assert!(matches!(
            c.correlate(ev("d", "R", "fresh", 400), later),
            Some(Write::Create(e)) if e.message.as_deref() == Some("fresh")
        ));
    }

    #[test]
    fn spam_filter_allows_a_burst_then_refills_slowly() {
        let mut c = Correlator::new();
        let t = Instant::now();
        let mut allowed = 0;
        for i in 0..40 {
            // Same message: dedup patches, but each still costs a token.
            if c.correlate(ev("d", "R", "m", i), t).is_some() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, SPAM_BURST as usize);
        // Another object has its own bucket.
        assert!(c.correlate(ev("e", "R", "m", 50), t).is_some());
        // One token back after 5 minutes.
        let later = t + Duration::from_secs(301);
        assert!(c.correlate(ev("d", "R", "m", 60), later).is_some());
        assert!(c.correlate(ev("d", "R", "m", 70), later).is_none());
    }

    #[test]
    fn counters_are_exported() {
        let stats = Arc::new(Stats::default());
        stats.created.fetch_add(3, Ordering::Relaxed);
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(StatsCollector(stats)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("kelson_controller_manager_events_total{outcome=\"created\"} 3"),
            "{out}"
        );
        assert!(
            out.contains("kelson_controller_manager_events_total{outcome=\"dropped\"} 1"),
            "{out}"
        );
    }

    #[test]
    fn node_references_use_the_name_as_uid_and_land_in_default() {
        let r = Req {
            component: "node-controller",
            object: node_ref("n1"),
            type_: EventType::Normal,
            reason: "RemovingNode",
            message: "Node n1 event: Removing Node n1 from Controller".into(),
            at: Timestamp::now(),
        };
        let e = make_event(&r, "me");
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(e.involved_object.uid.as_deref(), Some("n1"));
        assert_eq!(e.reporting_component.as_deref(), Some("node-controller"));
    }
}
