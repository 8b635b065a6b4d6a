//! Test support: a tiny state machine (a string map in its own column family) and helpers to
//! run members on loopback ephemeral ports with temp-dir databases.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kelson_raft::{RaftConfig, RaftNode, StateMachine};
use parking_lot::Mutex;
use rocksdb::{Options, WriteBatch, DB};

pub const SM_CF: &str = "test_sm";

/// Shared view of a TestSm for assertions.
#[derive(Clone, Default)]
pub struct SmView {
    pub visible: Arc<Mutex<BTreeMap<String, String>>>,
    pub restores: Arc<AtomicU64>,
    /// Milliseconds a snapshot job sleeps before it serializes (a slow, large keyspace).
    pub snapshot_delay_ms: Arc<AtomicU64>,
}

impl SmView {
    pub fn get(&self, k: &str) -> Option<String> {
        self.visible.lock().get(k).cloned()
    }
    pub fn len(&self) -> usize {
        self.visible.lock().len()
    }
    pub fn restores(&self) -> u64 {
        self.restores.load(Ordering::SeqCst)
    }
}

/// Applies "key=value" payloads; the value becomes visible only in `on_durable`.
pub struct TestSm {
    db: Arc<DB>,
    staged: BTreeMap<String, String>,
    view: SmView,
}

impl TestSm {
    pub fn open(db: Arc<DB>) -> (Box<dyn StateMachine>, SmView) {
        let view = SmView::default();
        let cf = db.cf_handle(SM_CF).unwrap();
        let mut map = BTreeMap::new();
        for kv in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = kv.unwrap();
            map.insert(
                String::from_utf8(k.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            );
        }
        *view.visible.lock() = map.clone();
        (
            Box::new(TestSm {
                db,
                staged: map,
                view: view.clone(),
            }),
            view,
        )
    }
}

impl StateMachine for TestSm {
    fn apply(&mut self, index: u64, _term: u64, data: &[u8], wb: &mut WriteBatch) -> Vec<u8> {
        let s = String::from_utf8_lossy(data);
        let (k, v) = s.split_once('=').unwrap_or((&s, ""));
        wb.put_cf(
            self.db.cf_handle(SM_CF).unwrap(),
            k.as_bytes(),
            v.as_bytes(),
        );
        self.staged.insert(k.to_string(), v.to_string());
        index.to_be_bytes().to_vec()
    }
    fn on_durable(&mut self) {
        *self.view.visible.lock() = self.staged.clone();
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&self.staged).map_err(|e| e.to_string())
    }
    fn snapshot_job(&mut self) -> kelson_raft::SnapshotJob {
        let data = self.snapshot();
        let delay = Duration::from_millis(self.view.snapshot_delay_ms.load(Ordering::SeqCst));
        Box::new(move || {
            std::thread::sleep(delay);
            data
        })
    }
    fn restore(&mut self, data: &[u8], wb: &mut WriteBatch) -> Result<(), String> {
        let map: BTreeMap<String, String> =
            serde_json::from_slice(data).map_err(|e| e.to_string())?;
        let cf = self.db.cf_handle(SM_CF).unwrap();
        for k in self.staged.keys() {
            wb.delete_cf(cf, k.as_bytes());
        }
        for (k, v) in &map {
            wb.put_cf(cf, k.as_bytes(), v.as_bytes());
        }
        self.staged = map;
        self.view.restores.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

pub fn open_db(dir: &Path) -> Arc<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let mut cfs: Vec<&str> = kelson_raft::CFS.to_vec();
    cfs.push(SM_CF);
    // A just-stopped member may still be releasing the DB lock: retry briefly.
    for _ in 0..50 {
        match DB::open_cf(&opts, dir.join("db"), &cfs) {
            Ok(db) => return Arc::new(db),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    Arc::new(DB::open_cf(&opts, dir.join("db"), &cfs).unwrap())
}

/// An address on loopback whose port was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn url(a: SocketAddr) -> String {
    format!("http://{a}")
}

/// Fast timings so elections finish well within test time limits.
pub fn config(
    name: &str,
    dir: &Path,
    addr: SocketAddr,
    cluster: &[(String, SocketAddr)],
) -> RaftConfig {
    let mut c = RaftConfig::new(name, dir.to_path_buf(), addr);
    c.initial_cluster = cluster
        .iter()
        .map(|(n, a)| (n.clone(), vec![url(*a)]))
        .collect();
    c.initial_cluster_token = "test".into();
    c.client_urls = vec![format!("http://127.0.0.1:1{}", addr.port() % 10000)];
    c.heartbeat_interval = Duration::from_millis(20);
    c.election_timeout = Duration::from_millis(200);
    c
}

pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub node: RaftNode,
    pub view: SmView,
    pub cfg: RaftConfig,
}

pub async fn start(cfg: RaftConfig, dir: tempfile::TempDir) -> Member {
    let db = open_db(dir.path());
    let (sm, view) = TestSm::open(db.clone());
    let node = RaftNode::start(db, cfg.clone(), sm).await.unwrap();
    Member {
        name: cfg.name.clone(),
        addr: cfg.listen_peer_addr,
        dir,
        node,
        view,
        cfg,
    }
}

pub async fn cluster(n: usize, snapshot_count: u64) -> Vec<Member> {
    let addrs: Vec<(String, SocketAddr)> = (0..n).map(|i| (format!("m{i}"), free_addr())).collect();
    let mut out = Vec::new();
    for (name, addr) in &addrs {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(name, dir.path(), *addr, &addrs);
        cfg.snapshot_count = snapshot_count;
        out.push(start(cfg, dir).await);
    }
    out
}

/// Polls `f` every 20 ms until it is true or `limit` passes.
pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// Index into `members` of the leader all of them agree on.
pub async fn wait_leader(members: &[&RaftNode], limit: Duration) -> Option<u64> {
    let mut leader = 0;
    let ok = wait_until(limit, || {
        let l = members[0].status().leader_id;
        leader = l;
        l != 0 && members.iter().all(|m| m.status().leader_id == l)
    })
    .await;
    ok.then_some(leader)
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A one-member cluster's config ("solo") and its data dir, not yet started.
pub fn solo() -> (RaftConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let cfg = config("solo", dir.path(), addr, &[("solo".into(), addr)]);
    (cfg, dir)
}

/// Starts `n` members and waits (up to 5 s) until they agree on a leader: the members and
/// the leader's index among them.
pub async fn cluster_with_leader(n: usize, snapshot_count: u64) -> (Vec<Member>, usize) {
    let ms = cluster(n, snapshot_count).await;
    let li = leader_index(&ms, Duration::from_secs(5))
        .await
        .expect("the members agree on a leader within 5 s");
    (ms, li)
}

/// Index into `ms` of the leader all of them agree on, once they do within `limit`.
pub async fn leader_index(ms: &[Member], limit: Duration) -> Option<usize> {
    let nodes: Vec<&RaftNode> = ms.iter().map(|m| &m.node).collect();
    let leader = wait_leader(&nodes, limit).await?;
    ms.iter().position(|m| m.node.id() == leader)
}

/// The member of a one-member cluster (`snapshot_count` 10 000), once it leads.
pub async fn lone_leader() -> Member {
    let mut ms = cluster(1, 10_000).await;
    let a = ms.pop().unwrap();
    assert!(
        wait_leader(&[&a.node], Duration::from_secs(3))
            .await
            .is_some(),
        "a lone member leads within 3 s"
    );
    a
}

/// Starts member `name` at `addr` joining `existing`'s cluster, after `existing` added it
/// with `add_member`.
pub async fn start_joiner(existing: &Member, name: &str, addr: SocketAddr) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        name,
        dir.path(),
        addr,
        &[(existing.name.clone(), existing.addr), (name.into(), addr)],
    );
    cfg.join_existing = true;
    start(cfg, dir).await
}

/// Shuts every member down.
pub async fn shutdown_all<'a>(ms: impl IntoIterator<Item = &'a Member>) {
    for m in ms {
        m.node.shutdown().await;
    }
}

impl Member {
    /// Shuts the member down (again, if it already was: shutdown is idempotent) and gives
    /// back what starts it again from the same data dir.
    pub async fn stop(self) -> (RaftConfig, tempfile::TempDir) {
        self.node.shutdown().await;
        let Member { dir, node, cfg, .. } = self;
        // The node's last handle must be gone before the same database can be reopened.
        drop(node);
        (cfg, dir)
    }

    /// Stops the member and starts it again from its data dir.
    pub async fn restart(self) -> Member {
        let (cfg, dir) = self.stop().await;
        start(cfg, dir).await
    }
}
