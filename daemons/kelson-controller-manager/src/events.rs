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
//! Event gone (expired by the API server's event TTL) creates it again.
//!
//! **Retries** follow client-go's `recordToSink`: a write is tried up to [`MAX_TRIES`] (12)
//! times, [`RETRY_SLEEP`] (10 s) apart, the first retry after a random fraction of that (so
//! many clients do not come back in step after an API server outage). A write the server
//! refused for good is not retried: any 4xx but 429 (AlreadyExists, the namespace is being
//! terminated, invalid, forbidden, ...); transport errors, timeouts, 429 and 5xx are. Upstream
//! gives up on every Status error and leaves 429/5xx to its REST client's own Retry-After
//! loop; kube's client has no such loop, so the recorder retries them itself. Unlike upstream,
//! whose single sink goroutine sleeps between tries and holds every later event back, a lane
//! parks a failed write (at most [`PENDING_PER_LANE`] of them) and goes on with the next ones;
//! a later write for a parked Event (its next count bump) is merged into the parked one rather
//! than overtaking it, so an Event's writes stay in order and a repeat costs no extra request.
//! Each write is bounded by [`WRITE_TIMEOUT`] (a hung connection counts as a failed try).
//!
//! What happened to each event (created, patched, dropped, filtered, coalesced, retried,
//! rejected, failed) is counted on `/metrics` as `kelson_controller_manager_events_total
//! {outcome}`. The API writes go through the [`Sink`] trait ([`KubeSink`] in production), so
//! the retry logic is tested against a sink that fails on demand.

use std::collections::{HashMap, HashSet};
use std::future::Future;
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
/// Tries per write before giving up (client-go's `maxTriesPerEvent`).
pub const MAX_TRIES: u32 = 12;
/// Pause between tries (client-go's `defaultSleepDuration`); the first is a random fraction.
pub const RETRY_SLEEP: Duration = Duration::from_secs(10);
/// Longest a single write may take before it counts as a failed try.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Failed writes a lane keeps for a retry; beyond this a failed write is given up at once
/// (memory stays bounded however long the API server is away).
pub const PENDING_PER_LANE: usize = QUEUE / LANES;

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
    /// Writes folded into an earlier write of the same Event still waiting for its retry.
    pub coalesced: AtomicU64,
    /// Retries (tries after the first) of writes that had failed.
    pub retried: AtomicU64,
    /// Writes the API server refused for good (not retried).
    pub rejected: AtomicU64,
    /// Writes given up after [`MAX_TRIES`] failed tries (or with a full retry backlog).
    pub failed: AtomicU64,
}

/// How failed writes are retried; [`RetryPolicy::default`] is client-go's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per write, the first included.
    pub max_tries: u32,
    /// Pause between tries (the first retry waits a random fraction of it).
    pub sleep: Duration,
    /// Bound of one try.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_tries: MAX_TRIES,
            sleep: RETRY_SLEEP,
            timeout: WRITE_TIMEOUT,
        }
    }
}

/// Why a write to the [`Sink`] failed, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The Event does not exist (a patch after the API server expired it).
    #[error("not found")]
    NotFound,
    /// Worth another try: the server was unreachable, overloaded or failing.
    #[error("{0}")]
    Retry(String),
    /// Refused for good; `quiet` for the refusals upstream logs at debug level only
    /// (AlreadyExists, namespace terminating).
    #[error("{message}")]
    Reject { message: String, quiet: bool },
}

/// Where events are written: the API server ([`KubeSink`]) or a test double.
pub trait Sink: Send + Sync + 'static {
    /// Creates `ev`.
    fn create(&self, ev: &Event) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Bumps the existing `ev`'s count, lastTimestamp and message.
    fn patch(&self, ev: &Event) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// The API server as a [`Sink`] (core/v1 Events).
#[derive(Clone)]
pub struct KubeSink(pub Client);

impl KubeSink {
    fn api(&self, ev: &Event) -> Api<Event> {
        let ns = ev.metadata.namespace.as_deref().unwrap_or("default");
        Api::namespaced(self.0.clone(), ns)
    }
}

impl Sink for KubeSink {
    async fn create(&self, ev: &Event) -> Result<(), SinkError> {
        match self.api(ev).create(&PostParams::default(), ev).await {
            Ok(_) => Ok(()),
            // Creating into a missing namespace cannot succeed later either.
            Err(e) => Err(match classify(&e) {
                SinkError::NotFound => SinkError::Reject {
                    message: e.to_string(),
                    quiet: false,
                },
                other => other,
            }),
        }
    }

    async fn patch(&self, ev: &Event) -> Result<(), SinkError> {
        let body = json!({
            "count": ev.count,
            "lastTimestamp": ev.last_timestamp,
            "message": ev.message,
        });
        let name = ev.metadata.name.as_deref().unwrap_or_default();
        self.api(ev)
            .patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map(drop)
            .map_err(|e| classify(&e))
    }
}

/// client-go `recordEvent`'s decision, with 429/5xx retried (see the module doc).
pub fn classify(e: &kube::Error) -> SinkError {
    match e {
        kube::Error::Api(s) if s.code == 404 => SinkError::NotFound,
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 => SinkError::Retry(e.to_string()),
        kube::Error::Api(s) => {
            let terminating = s
                .details
                .as_ref()
                .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
                || s.message.contains("because it is being terminated");
            SinkError::Reject {
                message: e.to_string(),
                quiet: terminating || s.reason == "AlreadyExists",
            }
        }
        // The request could not be built: it would be built the same next time.
        kube::Error::BuildRequest(_) | kube::Error::HttpError(_) => SinkError::Reject {
            message: e.to_string(),
            quiet: false,
        },
        // Transport, TLS, timeouts, an unreadable answer: upstream retries these.
        _ => SinkError::Retry(e.to_string()),
    }
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

impl Write {
    fn event(&self) -> &Event {
        match self {
            Write::Create(e) | Write::Patch(e) => e,
        }
    }

    fn name(&self) -> &str {
        self.event().metadata.name.as_deref().unwrap_or_default()
    }

    /// Folds `later` (a newer state of the same Event: higher count, latest message) into a
    /// write that has not happened yet: still a create if this one was (the Event may not
    /// exist), else `later` itself.
    fn merge(self, later: Write) -> Write {
        match (self, later) {
            (Write::Create(_), Write::Create(e) | Write::Patch(e)) => Write::Create(e),
            (Write::Patch(_), later) => later,
        }
    }
}

/// Records Events about API objects (cheap to clone; one per process).
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Req>,
    stats: Arc<Stats>,
}

impl Recorder {
    /// Starts the correlator and writer tasks writing to the API server with client-go's
    /// retry policy. `instance` is this process's identity (`reportingInstance`). The tasks
    /// end when every clone of the recorder is dropped.
    pub fn start(client: Client, instance: String) -> Recorder {
        Self::start_with(KubeSink(client), instance, RetryPolicy::default())
    }

    /// [`Recorder::start`] with any sink and retry policy.
    pub fn start_with<S: Sink>(sink: S, instance: String, policy: RetryPolicy) -> Recorder {
        let stats = Arc::new(Stats::default());
        let sink = Arc::new(sink);
        let (tx, mut rx) = mpsc::channel::<Req>(QUEUE);
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (ltx, lrx) = mpsc::channel::<Write>(QUEUE / LANES);
            tokio::spawn(lane(sink.clone(), stats.clone(), policy, lrx));
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
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        w.name().hash(&mut h);
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
            "Events by outcome: created, patched (count bump), dropped (queue full), filtered (spam filter), coalesced (merged into a write waiting for its retry), retried (tries after a failed one), rejected (refused by the API server, not retried), failed (given up after the last try)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (outcome, v) in [
            ("created", &s.created),
            ("patched", &s.patched),
            ("dropped", &s.dropped),
            ("filtered", &s.filtered),
            ("coalesced", &s.coalesced),
            ("retried", &s.retried),
            ("rejected", &s.rejected),
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

/// A write that failed and waits for its next try.
struct Parked {
    write: Write,
    /// Tries so far.
    tries: u32,
    due: tokio::time::Instant,
}

/// One writer lane: writes in arrival order, parks failed writes until their next try and
/// keeps writing others meanwhile (see the module doc).
async fn lane<S: Sink>(
    sink: Arc<S>,
    stats: Arc<Stats>,
    policy: RetryPolicy,
    mut rx: mpsc::Receiver<Write>,
) {
    let mut parked: HashMap<String, Parked> = HashMap::new();
    loop {
        let next_due = parked.values().map(|p| p.due).min();
        let retry_timer = async {
            match next_due {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            w = rx.recv() => {
                let Some(w) = w else { break };
                if let Some(p) = parked.remove(w.name()) {
                    // Not before the parked write: merged into it, tried at its time.
                    stats.coalesced.fetch_add(1, Ordering::Relaxed);
                    let write = p.write.merge(w);
                    parked.insert(write.name().to_string(), Parked { write, ..p });
                    continue;
                }
                try_write(&*sink, &stats, &policy, &mut parked, w, 0).await;
            }
            () = retry_timer => {
                let now = tokio::time::Instant::now();
                let due: Vec<String> = parked
                    .iter()
                    .filter(|(_, p)| p.due <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for name in due {
                    if let Some(p) = parked.remove(&name) {
                        stats.retried.fetch_add(1, Ordering::Relaxed);
                        try_write(&*sink, &stats, &policy, &mut parked, p.write, p.tries).await;
                    }
                }
            }
        }
    }
    if !parked.is_empty() {
        stats
            .failed
            .fetch_add(parked.len() as u64, Ordering::Relaxed);
        tracing::debug!(
            events = parked.len(),
            "recorder stopped; events waiting for a retry given up"
        );
    }
}

/// One try of `w` (`tries` before it); parks it for the next try when that is worth it.
async fn try_write<S: Sink>(
    sink: &S,
    stats: &Stats,
    policy: &RetryPolicy,
    parked: &mut HashMap<String, Parked>,
    w: Write,
    tries: u32,
) {
    let tries = tries + 1;
    let name = w.name().to_string();
    let (retry, error) = match write(sink, policy.timeout, w).await {
        Ok(Done::Created) => {
            stats.created.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(Done::Patched) => {
            stats.patched.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(Failed::Rejected { message, quiet }) => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            if quiet {
                tracing::debug!(event = %name, error = %message, "server rejected event (will not retry)");
            } else {
                tracing::warn!(event = %name, error = %message, "server rejected event (will not retry)");
            }
            return;
        }
        Err(Failed::Retry(retry, error)) => (retry, error),
    };
    if tries >= policy.max_tries {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(event = %name, tries, error = %error, "unable to write event (retry limit exceeded)");
        return;
    }
    if parked.len() >= PENDING_PER_LANE {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(event = %name, error = %error, "unable to write event (too many events waiting for a retry)");
        return;
    }
    // Randomize the first pause so that clients do not all come back in step.
    let delay = if tries == 1 {
        policy.sleep.mul_f64(rand::random::<f64>())
    } else {
        policy.sleep
    };
    tracing::debug!(event = %name, tries, error = %error, ?delay, "unable to write event (will retry)");
    parked.insert(
        name,
        Parked {
            write: retry,
            tries,
            due: tokio::time::Instant::now() + delay,
        },
    );
}

enum Done {
    Created,
    Patched,
}

enum Failed {
    /// Do not try again.
    Rejected { message: String, quiet: bool },
    /// Try this write again (a create when a patch found the Event gone).
    Retry(Write, String),
}

/// One try of a write (client-go `recordEvent`): a patch that finds its Event gone (expired
/// by the API server's event TTL) creates it anew, keeping the count, as client-go does.
async fn write<S: Sink>(sink: &S, timeout: Duration, w: Write) -> Result<Done, Failed> {
    let bounded = |r: Result<Result<(), SinkError>, tokio::time::error::Elapsed>| {
        r.unwrap_or_else(|_| Err(SinkError::Retry(format!("no answer within {timeout:?}"))))
    };
    let ev = match w {
        Write::Patch(ev) => match bounded(tokio::time::timeout(timeout, sink.patch(&ev)).await) {
            Ok(()) => return Ok(Done::Patched),
            Err(SinkError::NotFound) => ev,
            Err(e) => return Err(failed(Write::Patch(ev), e)),
        },
        Write::Create(ev) => ev,
    };
    match bounded(tokio::time::timeout(timeout, sink.create(&ev)).await) {
        Ok(()) => Ok(Done::Created),
        Err(e) => Err(failed(Write::Create(ev), e)),
    }
}

fn failed(w: Write, e: SinkError) -> Failed {
    match e {
        SinkError::Retry(msg) => Failed::Retry(w, msg),
        SinkError::Reject { message, quiet } => Failed::Rejected { message, quiet },
        // A create cannot find its own object missing; only a misbehaving sink says so.
        SinkError::NotFound => Failed::Rejected {
            message: "not found".into(),
            quiet: false,
        },
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
        stats.retried.fetch_add(2, Ordering::Relaxed);
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
        for outcome in ["coalesced", "rejected", "failed"] {
            assert!(
                out.contains(&format!(
                    "kelson_controller_manager_events_total{{outcome=\"{outcome}\"}} 0"
                )),
                "{out}"
            );
        }
        assert!(
            out.contains("kelson_controller_manager_events_total{outcome=\"retried\"} 2"),
            "{out}"
        );
    }

    /// How a scripted try of the [`FakeSink`] ends.
    #[derive(Clone)]
    enum Step {
        Fail(SinkError),
        /// Never answers (the write's timeout must end it).
        Hang,
    }

    const FOREVER: u32 = u32::MAX;

    /// A sink whose tries fail as scripted per involved object name, then succeed; it
    /// remembers created Events so a patch of an unknown one is a NotFound.
    #[derive(Default)]
    struct FakeSink {
        script: parking_lot::Mutex<HashMap<String, (u32, Step)>>,
        /// Every try: (create?, object name, count).
        tries: parking_lot::Mutex<Vec<(bool, String, i32)>>,
        stored: parking_lot::Mutex<HashSet<String>>,
    }

    impl FakeSink {
        fn new(script: &[(&str, u32, Step)]) -> Arc<FakeSink> {
            let s = FakeSink::default();
            for (obj, n, step) in script {
                s.script.lock().insert(obj.to_string(), (*n, step.clone()));
            }
            Arc::new(s)
        }

        fn tries_of(&self, obj: &str) -> Vec<(bool, i32)> {
            self.tries
                .lock()
                .iter()
                .filter(|t| t.1 == obj)
                .map(|t| (t.0, t.2))
                .collect()
        }

        async fn attempt(&self, create: bool, ev: &Event) -> Result<(), SinkError> {
            let obj = ev.involved_object.name.clone().unwrap_or_default();
            self.tries
                .lock()
                .push((create, obj.clone(), ev.count.unwrap_or(0)));
            let step = match self.script.lock().get_mut(&obj) {
                Some((n, step)) if *n > 0 => {
                    if *n != FOREVER {
                        *n -= 1;
                    }
                    Some(step.clone())
                }
                _ => None,
            };
            match step {
                None => Ok(()),
                Some(Step::Fail(e)) => Err(e),
                Some(Step::Hang) => std::future::pending().await,
            }
        }
    }

    impl Sink for Arc<FakeSink> {
        async fn create(&self, ev: &Event) -> Result<(), SinkError> {
            self.attempt(true, ev).await?;
            self.stored
                .lock()
                .insert(ev.metadata.name.clone().unwrap_or_default());
            Ok(())
        }

        async fn patch(&self, ev: &Event) -> Result<(), SinkError> {
            self.attempt(false, ev).await?;
            let name = ev.metadata.name.clone().unwrap_or_default();
            if self.stored.lock().contains(&name) {
                Ok(())
            } else {
                Err(SinkError::NotFound)
            }
        }
    }

    fn unavailable() -> Step {
        Step::Fail(SinkError::Retry("503 Service Unavailable".into()))
    }

    fn policy(sleep_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_tries: MAX_TRIES,
            sleep: Duration::from_millis(sleep_ms),
            timeout: Duration::from_millis(200),
        }
    }

    fn record(r: &Recorder, obj: &str, message: &str) {
        r.event_ref(
            "test-controller",
            ObjectReference {
                kind: Some("ConfigMap".into()),
                name: Some(obj.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{obj}")),
                ..Default::default()
            },
            EventType::Normal,
            "Tested",
            message,
        );
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Polls `f` every 10 ms for at most 10 s.
    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..1000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn failed_writes_are_retried_until_they_succeed() {
        let sink = FakeSink::new(&[("flaky", 3, unavailable())]);
        let r = Recorder::start_with(sink.clone(), "me".into(), policy(20));
        let st = r.stats();
        record(&r, "flaky", "m");
        until("the event to be created", || get(&st.created) == 1).await;
        assert_eq!(
            sink.tries_of("flaky").len(),
            4,
            "3 failed tries, then one that worked"
        );
        assert_eq!(get(&st.retried), 3);
        assert_eq!(get(&st.failed) + get(&st.rejected), 0);
    }

    #[tokio::test]
    async fn writes_are_given_up_after_max_tries() {
        let sink = FakeSink::new(&[("down", FOREVER, unavailable())]);
        let r = Recorder::start_with(sink.clone(), "me".into(), policy(5));
        let st = r.stats();
        record(&r, "down", "m");
        until("the event to be given up", || get(&st.failed) == 1).await;
        // No try after the last one.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sink.tries_of("down").len(), MAX_TRIES as usize);
        assert_eq!(get(&st.retried), u64::from(MAX_TRIES - 1));
        assert_eq!(get(&st.created), 0);
    }

    #[tokio::test]
    async fn refused_writes_are_not_retried() {
        let refused = |quiet| {
            Step::Fail(SinkError::Reject {
                message: "namespace ns is being terminated".into(),
                quiet,
            })
        };
        let sink = FakeSink::new(&[("gone", FOREVER, refused(true)), ("bad", 1, refused(false))]);
        let r = Recorder::start_with(sink.clone(), "me".into(), policy(5));
        let st = r.stats();
        record(&r, "gone", "m");
        record(&r, "bad", "m");
        until("both refusals", || get(&st.rejected) == 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sink.tries_of("gone").len(), 1);
        assert_eq!(sink.tries_of("bad").len(), 1);
        assert_eq!(get(&st.retried), 0);
    }

    #[tokio::test]
    async fn a_failing_event_does_not_hold_up_the_others() {
        // Retries 10 s apart, as in production: the others must not wait for them.
        let sink = FakeSink::new(&[("stuck", FOREVER, unavailable())]);
        let r = Recorder::start_with(sink.clone(), "me".into(), RetryPolicy::default());
        let st = r.stats();
        record(&r, "stuck", "m");
        until("the first try", || !sink.tries_of("stuck").is_empty()).await;
        // 40 events over 4 lanes: the stuck event's lane gets some of them.
        for i in 0..40 {
            record(&r, &format!("ok-{i}"), "m");
        }
        until("the other events", || get(&st.created) == 40).await;
        assert!(
            sink.tries_of("stuck").len() <= 2,
            "{:?}",
            sink.tries_of("stuck")
        );
        assert_eq!(get(&st.failed), 0);
    }

    #[tokio::test]
    async fn a_hung_write_times_out_and_is_retried() {
        let sink = FakeSink::new(&[("hung", 1, Step::Hang)]);
        let r = Recorder::start_with(sink.clone(), "me".into(), policy(20));
        let st = r.stats();
        record(&r, "hung", "m");
        until("the event to be created", || get(&st.created) == 1).await;
        assert_eq!(sink.tries_of("hung").len(), 2);
        assert_eq!(get(&st.retried), 1);
    }

    #[tokio::test]
    async fn repeats_of_a_waiting_event_are_merged_into_it() {
        let sink = FakeSink::new(&[("flaky", 2, unavailable())]);
        let r = Recorder::start_with(sink.clone(), "me".into(), policy(1000));
        let st = r.stats();
        record(&r, "flaky", "m");
        until("the first try", || !sink.tries_of("flaky").is_empty()).await;
        // The repeat (a count bump) must neither overtake the create nor cost a request.
        record(&r, "flaky", "m");
        until("the event to be created", || get(&st.created) == 1).await;
        let tries = sink.tries_of("flaky");
        assert_eq!(tries.len(), 3, "{tries:?}");
        assert!(tries.iter().all(|(create, _)| *create), "{tries:?}");
        assert_eq!(
            tries.last(),
            Some(&(true, 2)),
            "created with the bumped count"
        );
        assert_eq!(get(&st.coalesced), 1);
        assert_eq!(get(&st.patched), 0);
        // Later repeats are patches again.
        record(&r, "flaky", "m");
        until("the patch", || get(&st.patched) == 1).await;
        assert_eq!(sink.tries_of("flaky").last(), Some(&(false, 3)));
    }

    #[tokio::test]
    async fn a_patch_of_an_expired_event_creates_it_again() {
        let sink = FakeSink::new(&[]);
        let r = Recorder::start_with(sink.clone(), "me".into(), policy(20));
        let st = r.stats();
        record(&r, "cm", "m");
        until("the create", || get(&st.created) == 1).await;
        sink.stored.lock().clear();
        record(&r, "cm", "m");
        until("the re-create", || get(&st.created) == 2).await;
        assert_eq!(sink.tries_of("cm"), vec![(true, 1), (false, 2), (true, 2)]);
        assert_eq!(get(&st.patched), 0);
    }

    #[test]
    fn api_errors_are_classified_like_client_go() {
        let status = |code: u16, reason: &str, message: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                reason: reason.into(),
                message: message.into(),
                ..Default::default()
            }))
        };
        assert_eq!(classify(&status(404, "NotFound", "")), SinkError::NotFound);
        for code in [429, 500, 503, 504] {
            assert!(
                matches!(classify(&status(code, "", "")), SinkError::Retry(_)),
                "{code}"
            );
        }
        assert!(matches!(
            classify(&status(409, "AlreadyExists", "")),
            SinkError::Reject { quiet: true, .. }
        ));
        assert!(matches!(
            classify(&status(
                403,
                "Forbidden",
                "events \"x\" is forbidden: unable to create new content in namespace ns because it is being terminated"
            )),
            SinkError::Reject { quiet: true, .. }
        ));
        assert!(matches!(
            classify(&status(422, "Invalid", "")),
            SinkError::Reject { quiet: false, .. }
        ));
        let transport = kube::Error::Service("connection refused".into());
        assert!(matches!(classify(&transport), SinkError::Retry(_)));
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
