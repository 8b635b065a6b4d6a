//! The workloads, written once against etcd's gRPC API so they run unchanged against etcd and
//! kelson-kv.
//!
//! Two load generators for the closed-loop put/range workloads ([`ClientKind`]): the lean h2
//! client of [`crate::grpc`] (default) and the stock `etcd-client` crate (tonic). Both send the
//! same requests (same keys, value size and serializable flag) and bound each request by
//! [`REQUEST_TIMEOUT`]; the lean one costs far less CPU and latency per request, which matters
//! because the generator shares the machine's cores with the server under test. Preloading
//! and the watch fan-out are not latency-critical and stay on `etcd-client`.
//!
//! Load model: closed loop. "N clients" means N tasks, each with exactly one request in flight,
//! issuing the next request as soon as the previous answer arrives, until a deadline. The tasks
//! share a pool of gRPC connections, one per [`CLIENTS_PER_CONN`] clients, as etcd's own
//! `benchmark` tool does, so HTTP/2 stream multiplexing and per-connection server work look like
//! a real fleet of clients rather than one giant connection. Latency is measured per request in
//! microseconds into an HDR histogram (3 significant digits), one histogram per task, merged at
//! the end so recording never contends.
//!
//! Failed requests are counted, left out of the histograms and QPS, and reported, so a server
//! that errors fast cannot look fast.
//!
//! Watch fan-out: W watchers on one key, spread over streams of [`WATCHES_PER_STREAM`] watches
//! each (one connection per stream); after every watcher is confirmed created, a writer puts N
//! values with [`WATCH_WRITER_INFLIGHT`] requests in flight, and the result is the number of
//! events delivered across all watchers divided by the time from the first put until the last
//! watcher saw its last event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use anyhow::{bail, Context};
use etcd_client::{Client, GetOptions, KvClient, Txn, TxnOp};
use hdrhistogram::Histogram;
use kelson_etcdpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use crate::grpc;
use crate::server::{connect_options, CONNECT_TIMEOUT, REQUEST_TIMEOUT};

/// Default number of concurrent clients sharing one gRPC connection (etcd's benchmark uses
/// similar ratios); `--clients-per-conn` overrides it.
pub const CLIENTS_PER_CONN: usize = 16;
/// Watches created on one watch stream in the fan-out workload.
pub const WATCHES_PER_STREAM: usize = 100;
/// Puts the fan-out writer keeps in flight, so delivery, not the writer's fsyncs, is the limit.
pub const WATCH_WRITER_INFLIGHT: usize = 32;
/// Puts per txn when loading a keyspace (etcd's default `--max-txn-ops`).
pub const LOAD_TXN_OPS: usize = 128;
/// Txns in flight when loading a keyspace.
pub const LOAD_INFLIGHT: usize = 32;

/// Opens `n` (at least one) separate connections to `endpoint`.
pub async fn connect_pool(endpoint: &str, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut pool = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let c = Client::connect([endpoint], Some(connect_options()))
            .await
            .with_context(|| format!("connecting to {endpoint}"))?;
        pool.push(c);
    }
    Ok(pool)
}

/// Which gRPC client the closed-loop workloads use; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ClientKind {
    /// The lean h2 client of [`crate::grpc`].
    #[default]
    Lean,
    /// The stock `etcd-client` crate (tonic).
    EtcdClient,
}

impl ClientKind {
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Lean => "lean h2 gRPC client",
            ClientKind::EtcdClient => "etcd-client (tonic)",
        }
    }
}

/// The connections of a closed-loop workload, of one [`ClientKind`].
pub enum Pool {
    Lean(Vec<grpc::Conn>),
    EtcdClient(Vec<Client>),
}

impl Pool {
    fn is_empty(&self) -> bool {
        match self {
            Pool::Lean(p) => p.is_empty(),
            Pool::EtcdClient(p) => p.is_empty(),
        }
    }
}

/// The socket address of a plaintext `http://host:port` endpoint.
fn endpoint_addr(endpoint: &str) -> anyhow::Result<SocketAddr> {
    let hostport = endpoint
        .strip_prefix("http://")
        .with_context(|| format!("the lean client needs an http:// endpoint, got {endpoint}"))?;
    hostport
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("endpoint {endpoint} is not http://<ip>:<port>"))
}

/// Opens `n` (at least one) separate connections of `kind` to `endpoint`.
pub async fn connect_load_pool(kind: ClientKind, endpoint: &str, n: usize) -> anyhow::Result<Pool> {
    match kind {
        ClientKind::EtcdClient => Ok(Pool::EtcdClient(connect_pool(endpoint, n).await?)),
        ClientKind::Lean => {
            let addr = endpoint_addr(endpoint)?;
            let mut pool = Vec::with_capacity(n.max(1));
            for _ in 0..n.max(1) {
                let c = tokio::time::timeout(CONNECT_TIMEOUT, grpc::Conn::connect(addr))
                    .await
                    .with_context(|| format!("connecting to {endpoint}: timed out"))?
                    .with_context(|| format!("connecting to {endpoint}"))?;
                pool.push(c);
            }
            Ok(Pool::Lean(pool))
        }
    }
}

/// Connections needed for `clients` concurrent clients at `per_conn` clients per connection.
pub fn conns_for(clients: usize, per_conn: usize) -> usize {
    clients.div_ceil(per_conn.max(1)).max(1)
}

/// The key of index `i` under `prefix`: fixed width, so every key has the same size.
pub fn key(prefix: &str, i: u64) -> Vec<u8> {
    format!("{prefix}{i:010}").into_bytes()
}

/// What a closed-loop workload measured.
#[derive(Debug)]
pub struct LoadResult {
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Per-request latency in microseconds (successful requests only).
    pub hist: Histogram<u64>,
}

impl LoadResult {
    pub fn qps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ops as f64 / s
        } else {
            0.0
        }
    }

    /// Latency quantile (0.0..=1.0) in milliseconds; `None` without successful requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.hist.is_empty() {
            return None;
        }
        Some(self.hist.value_at_quantile(q) as f64 / 1000.0)
    }
}

/// One request of a closed-loop workload.
#[derive(Debug, Clone)]
pub enum Op {
    /// Put a `value_size`-byte value at a random key of `keyspace` keys under `prefix`.
    Put {
        prefix: String,
        keyspace: u64,
        value_size: usize,
    },
    /// Get one random key of `keyspace` keys under `prefix`.
    Range {
        prefix: String,
        keyspace: u64,
        serializable: bool,
    },
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits; out-of-range values saturate instead of failing.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// One closed-loop client's handle on its connection.
enum OpClient {
    Lean(grpc::Conn),
    EtcdClient(KvClient),
}

/// Why one request failed (formatted only for the first failure of a client).
#[derive(Debug, thiserror::Error)]
enum OpError {
    #[error(transparent)]
    Lean(#[from] grpc::GrpcError),
    #[error(transparent)]
    EtcdClient(#[from] etcd_client::Error),
    #[error("no answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
}

async fn run_op(
    client: &mut OpClient,
    op: &Op,
    rng: &mut StdRng,
    value: &[u8],
) -> Result<(), OpError> {
    match (client, op) {
        (
            OpClient::EtcdClient(kv),
            Op::Put {
                prefix, keyspace, ..
            },
        ) => {
            let k = key(prefix, rng.gen_range(0..*keyspace));
            kv.put(k, value, None).await?;
        }
        (
            OpClient::EtcdClient(kv),
            Op::Range {
                prefix,
                keyspace,
                serializable,
            },
        ) => {
            let k = key(prefix, rng.gen_range(0..*keyspace));
            let opts = serializable.then(|| GetOptions::new().with_serializable());
            kv.get(k, opts).await?;
        }
        (
            OpClient::Lean(conn),
            Op::Put {
                prefix, keyspace, ..
            },
        ) => {
            // The same request etcd-client's `put(key, value, None)` sends.
            let req = PutRequest {
                key: key(prefix, rng.gen_range(0..*keyspace)),
                value: value.to_vec(),
                ..Default::default()
            };
            let call = conn.unary::<_, PutResponse>(grpc::PUT, &req);
            tokio::time::timeout(REQUEST_TIMEOUT, call)
                .await
                .map_err(|_| OpError::Timeout)??;
        }
        (
            OpClient::Lean(conn),
            Op::Range {
                prefix,
                keyspace,
                serializable,
            },
        ) => {
            // The same request etcd-client's `get(key, opts)` sends: one key, no range end.
            let req = RangeRequest {
                key: key(prefix, rng.gen_range(0..*keyspace)),
                serializable: *serializable,
                ..Default::default()
            };
            let call = conn.unary::<_, RangeResponse>(grpc::RANGE, &req);
            tokio::time::timeout(REQUEST_TIMEOUT, call)
                .await
                .map_err(|_| OpError::Timeout)??;
        }
    }
    Ok(())
}

/// Runs `op` from `clients` closed-loop clients over `pool` for `duration`.
pub async fn closed_loop(
    pool: &Pool,
    clients: usize,
    duration: Duration,
    op: Op,
) -> anyhow::Result<LoadResult> {
    if pool.is_empty() || clients == 0 {
        bail!("closed_loop needs at least one connection and one client");
    }
    let value_size = match &op {
        Op::Put { value_size, .. } => *value_size,
        Op::Range { .. } => 0,
    };
    let value: Arc<Vec<u8>> = Arc::new(vec![b'v'; value_size]);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        let mut client = match pool {
            Pool::Lean(p) => OpClient::Lean(p[i % p.len()].clone()),
            Pool::EtcdClient(p) => OpClient::EtcdClient(p[i % p.len()].kv_client()),
        };
        let op = op.clone();
        let value = value.clone();
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(i as u64);
            let mut hist = new_hist();
            let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
            // Bounded by the deadline; each request is bounded by REQUEST_TIMEOUT.
            while Instant::now() < deadline {
                let t = Instant::now();
                match run_op(&mut client, &op, &mut rng, &value).await {
                    Ok(()) => {
                        hist.saturating_record(t.elapsed().as_micros() as u64);
                        ops += 1;
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (hist, ops, errors, first_error)
        });
    }
    let mut result = LoadResult {
        ops: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        hist: new_hist(),
    };
    while let Some(joined) = tasks.join_next().await {
        let (hist, ops, errors, first_error) = joined.context("benchmark client task failed")?;
        result.hist.add(&hist).context("merging histograms")?;
        result.ops += ops;
        result.errors += errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    result.elapsed = start.elapsed();
    Ok(result)
}

/// Writes `keys` keys (`prefix` + index) with `value_size`-byte values in txns of
/// [`LOAD_TXN_OPS`] puts, [`LOAD_INFLIGHT`] txns in flight over `pool`. Fails on the first
/// error: a partial load would make the RSS and range numbers meaningless.
pub async fn preload(
    pool: &[Client],
    prefix: &str,
    keys: u64,
    value_size: usize,
) -> anyhow::Result<Duration> {
    if pool.is_empty() {
        bail!("preload needs at least one connection");
    }
    let start = Instant::now();
    let batches = keys.div_ceil(LOAD_TXN_OPS as u64);
    let value = Arc::new(vec![b'v'; value_size]);
    let mut tasks = JoinSet::new();
    for w in 0..LOAD_INFLIGHT as u64 {
        let mut kv = pool[w as usize % pool.len()].kv_client();
        let value = value.clone();
        let prefix = prefix.to_string();
        tasks.spawn(async move {
            let mut b = w;
            while b < batches {
                let lo = b * LOAD_TXN_OPS as u64;
                let hi = (lo + LOAD_TXN_OPS as u64).min(keys);
                let ops: Vec<TxnOp> = (lo..hi)
                    .map(|i| TxnOp::put(key(&prefix, i), value.as_slice(), None))
                    .collect();
                kv.txn(Txn::new().and_then(ops))
                    .await
                    .with_context(|| format!("loading keys {lo}..{hi}"))?;
                b += LOAD_INFLIGHT as u64;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("load task failed")??;
    }
    Ok(start.elapsed())
}

/// What the watch fan-out measured.
#[derive(Debug)]
pub struct WatchResult {
    pub delivered: u64,
    pub expected: u64,
    pub elapsed: Duration,
}

impl WatchResult {
    pub fn events_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.delivered as f64 / s
        } else {
            0.0
        }
    }

    pub fn complete(&self) -> bool {
        self.delivered >= self.expected
    }
}

/// `watchers` watchers on one key, `puts` puts to it; see the module doc. Waits at most
/// `timeout` for delivery after the last put, then reports what arrived.
pub async fn watch_fanout(
    endpoint: &str,
    watchers: usize,
    puts: usize,
    timeout: Duration,
) -> anyhow::Result<WatchResult> {
    if watchers == 0 || puts == 0 {
        bail!("watch fan-out needs at least one watcher and one put");
    }
    let key = b"bench/watch/key".to_vec();
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = JoinSet::new();
    let mut remaining = watchers;
    let create_deadline = Instant::now() + Duration::from_secs(60);
    while remaining > 0 {
        let n = remaining.min(WATCHES_PER_STREAM);
        remaining -= n;
        let mut client = Client::connect([endpoint], Some(connect_options())).await?;
        let mut stream = client.watch(key.clone(), None).await?;
        for _ in 1..n {
            stream.watch(key.clone(), None).await?;
        }
        // Every watch must be confirmed before writing, or early events would be missed.
        let mut created = 0;
        while created < n {
            let left = create_deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, stream.message())
                .await
                .context("timed out creating watchers")??
                .context("watch stream closed while creating watchers")?;
            if msg.canceled() {
                bail!("watch canceled at creation: {}", msg.cancel_reason());
            }
            if msg.created() {
                created += 1;
            }
        }
        let expected = (n * puts) as u64;
        let delivered = delivered.clone();
        readers.spawn(async move {
            // Keep the client alive with its stream; count until this stream has everything.
            let _client = client;
            let mut got = 0u64;
            while got < expected {
                match stream.message().await {
                    Ok(Some(msg)) => {
                        let n = msg.events().len() as u64;
                        got += n;
                        delivered.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(None) => bail!("watch stream closed after {got} of {expected} events"),
                    Err(e) => return Err(e).context("watch stream failed"),
                }
            }
            anyhow::Ok(Instant::now())
        });
    }

    let writers = connect_pool(endpoint, 2).await?;
    let start = Instant::now();
    let mut put_tasks = JoinSet::new();
    for w in 0..WATCH_WRITER_INFLIGHT.min(puts) {
        let mut kv = writers[w % writers.len()].kv_client();
        let key = key.clone();
        put_tasks.spawn(async move {
            let mut i = w;
            while i < puts {
                kv.put(key.clone(), format!("v{i:08}"), None).await?;
                i += WATCH_WRITER_INFLIGHT;
            }
            anyhow::Ok(())
        });
    }
    while let Some(j) = put_tasks.join_next().await {
        j.context("writer task failed")??;
    }

    let expected = (watchers * puts) as u64;
    let wait_deadline = tokio::time::Instant::now() + timeout;
    let mut last = start;
    loop {
        match tokio::time::timeout_at(wait_deadline, readers.join_next()).await {
            Ok(Some(Ok(Ok(t)))) => last = last.max(t),
            Ok(Some(Ok(Err(e)))) => return Err(e),
            Ok(Some(Err(e))) => return Err(e).context("watch reader task failed"),
            Ok(None) => break,
            Err(_) => {
                // Incomplete delivery is reported (complete() == false), not hidden.
                readers.abort_all();
                last = Instant::now();
                break;
            }
        }
    }
    Ok(WatchResult {
        delivered: delivered.load(Ordering::Relaxed),
        expected,
        elapsed: last.duration_since(start),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Kind, Server};
    use std::path::Path;

    #[test]
    fn keys_have_fixed_width_and_conns_round_up() {
        assert_eq!(key("p/", 7), b"p/0000000007".to_vec());
        assert_eq!(key("p/", 12345).len(), key("p/", 0).len());
        assert_eq!(conns_for(1, CLIENTS_PER_CONN), 1);
        assert_eq!(conns_for(16, CLIENTS_PER_CONN), 1);
        assert_eq!(conns_for(17, CLIENTS_PER_CONN), 2);
        assert_eq!(conns_for(256, CLIENTS_PER_CONN), 16);
        assert_eq!(conns_for(64, 1), 64);
        assert_eq!(conns_for(64, 0), 64);
    }

    /// The workloads against the real etcd, tiny: they must produce plausible numbers and see
    /// the data they wrote, so a broken workload cannot print a clean table.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workloads_run_against_real_etcd() {
        let etcd = Path::new("/usr/bin/etcd");
        assert!(etcd.is_file(), "etcd-server missing: run scripts/setup.sh");
        let srv = Server::start(Kind::Etcd, etcd, None).await.unwrap();
        let pool = connect_pool(srv.endpoint(), 2).await.unwrap();

        // 300 keys: more than two txn batches, the last one partial.
        preload(&pool, "t/r/", 300, 16).await.unwrap();
        let mut kv = pool[0].kv_client();
        let all = kv
            .get(
                "t/r/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!(all.count(), 300);
        let last = kv.get(key("t/r/", 299), None).await.unwrap();
        assert_eq!(last.kvs()[0].value(), vec![b'v'; 16].as_slice());
        assert_eq!(
            last.kvs().len(),
            1,
            "a range op must read one key, not a span"
        );

        // Each client kind writes under its own prefix, so each one's writes are checked.
        for kind in [ClientKind::Lean, ClientKind::EtcdClient] {
            let load = connect_load_pool(kind, srv.endpoint(), 2).await.unwrap();
            let prefix = format!("t/p/{kind:?}/");
            let put = Op::Put {
                prefix: prefix.clone(),
                keyspace: 50,
                value_size: 32,
            };
            let r = closed_loop(&load, 4, Duration::from_millis(300), put)
                .await
                .unwrap();
            assert!(r.ops > 0 && r.errors == 0, "{kind:?}: {r:?}");
            assert_eq!(r.hist.len(), r.ops);
            assert!(r.qps() > 0.0);
            let (p50, p99) = (r.quantile_ms(0.5).unwrap(), r.quantile_ms(0.99).unwrap());
            assert!(p50 > 0.0 && p50 <= p99 && p99 < 30_000.0, "{p50} {p99}");
            let written = kv
                .get(
                    prefix.as_str(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .unwrap();
            assert!(
                written.count() > 0 && written.count() <= 50,
                "{kind:?}: {written:?}"
            );
            let one = kv
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            assert_eq!(one.kvs().len() as i64, written.count());
            assert!(one.kvs().iter().all(|kv| kv.value() == [b'v'; 32]));

            for serializable in [false, true] {
                let range = Op::Range {
                    prefix: "t/r/".into(),
                    keyspace: 300,
                    serializable,
                };
                let r = closed_loop(&load, 3, Duration::from_millis(200), range)
                    .await
                    .unwrap();
                assert!(r.ops > 0 && r.errors == 0, "{kind:?}: {r:?}");
            }
        }

        let w = watch_fanout(srv.endpoint(), 150, 20, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(w.expected, 150 * 20);
        assert!(w.complete(), "{w:?}");
        assert_eq!(w.delivered, w.expected, "no event may be counted twice");
        assert!(w.events_per_sec() > 0.0);
    }

    #[tokio::test]
    async fn empty_inputs_are_errors() {
        assert!(closed_loop(
            &Pool::Lean(Vec::new()),
            1,
            Duration::from_millis(1),
            Op::Range {
                prefix: "x".into(),
                keyspace: 1,
                serializable: true
            }
        )
        .await
        .is_err());
        assert!(preload(&[], "x", 1, 1).await.is_err());
        assert!(endpoint_addr("https://127.0.0.1:1").is_err());
        assert!(endpoint_addr("http://localhost:1").is_err());
        assert_eq!(
            endpoint_addr("http://127.0.0.1:2379/").unwrap(),
            "127.0.0.1:2379".parse().unwrap()
        );
        assert!(
            watch_fanout("http://127.0.0.1:1", 0, 1, Duration::from_secs(1))
                .await
                .is_err()
        );
    }
}
