//! Chaos test: is the store linearizable while members crash and the network partitions?
//!
//! The same test body runs against the real etcd 3.4 (the reference: it must pass, or the
//! test itself is wrong) and against kelson-kv. Three members run on their own loopback
//! addresses (127.0.0.2-4); eight `etcd-client` clients (six pinned to one member each, two
//! balanced over all) do a random mix of puts, linearizable gets and compare-and-sets on five
//! keys with unique values, recording invocation and response times on one monotonic clock.
//! Meanwhile a nemesis kills -9 and restarts members and cuts the peer links between them.
//! At the end everything is healed, the members must converge to the same `HashKV`, and the
//! history goes through `kelson_linz::check`.
//!
//! How partitions are made. Loopback traffic between members cannot be told apart by address:
//! a member binds its listeners to its own 127.0.0.x, but the kernel gives its *outgoing*
//! connections the source 127.0.0.1. So each member runs under its own uid, and an nftables
//! table of our own (unique name per run) marks every new connection with the uid of the
//! process that opened it (`meta skuid` on the output hook, `ct mark set`). Conntrack keeps the
//! mark for both directions of the connection, so "member A's connections to B's peer port, and
//! B's connections to A's peer port" are exactly the packets with `ct mark uid(A)` and port
//! `peer(B)` (either direction) or `ct mark uid(B)` and port `peer(A)`. A cut adds those drops
//! to a chain; healing flushes it. Every loopback packet passes its sender's output hook, so
//! one chain there sees all of it. The table is deleted by a Drop guard, also on panic.
//!
//! Without root or without nft the test fails with a message instead of skipping: a chaos
//! test that silently does not run proves nothing.

use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use kelson_linz::{CheckOptions, Input, Operation, Output, Recorder};
use kelson_testsupport::{bin_path, free_port, wait_for, ChildGuard, StoreKind, ETCD};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

const MEMBERS: usize = 3;
const CLIENTS: usize = 8;
const KEYS: usize = 5;
/// Below this many checked operations the run proves too little to count as a pass.
const MIN_OPERATIONS: usize = 500;
/// How long one client waits for an answer before recording the outcome as unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Chaos runs are heavy on 2 cores; the two stores take turns so neither starves the other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn workload_duration() -> Duration {
    let secs = std::env::var("LINZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_is_linearizable_under_crashes_and_partitions() {
    let _turn = SERIAL.lock().await;
    chaos(StoreKind::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kelson_kv_is_linearizable_under_crashes_and_partitions() {
    let _turn = SERIAL.lock().await;
    chaos(StoreKind::Kelson).await;
}

/// Negative control for both the partition and the checker: a serializable (local) read from an
/// isolated member returns the value from before the partition although a newer write was
/// acknowledged by the majority. The checker must call that a violation, naming the read.
/// On kelson-kv it also shows that the cuts really separate its members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_serializable_read_from_isolated_etcd_member_is_caught() {
    stale_serializable_read_is_caught(StoreKind::Etcd, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_serializable_read_from_isolated_kelson_kv_member_is_caught() {
    stale_serializable_read_is_caught(StoreKind::Kelson, 3).await;
}

async fn stale_serializable_read_is_caught(kind: StoreKind, slot: u32) {
    let _turn = SERIAL.lock().await;
    let (cluster, fw) = start(kind, slot).await;
    let key = key_name(0);
    let rec = Recorder::new();
    let mut majority = connect(vec![cluster.endpoint(1)]).await.unwrap();
    let mut isolated = connect(vec![cluster.endpoint(0)]).await.unwrap();
    let local = || Some(GetOptions::new().with_serializable());

    let invoke = rec.now();
    majority.put(key.as_bytes(), "1", None).await.unwrap();
    rec.record(kelson_linz::op(
        0,
        &key,
        Input::Put(1),
        Output::Put,
        invoke,
        rec.now(),
    ));
    // m0 must have applied it before it is cut off.
    wait_for(
        Duration::from_secs(10),
        "m0 to apply the first write",
        || {
            let mut c = isolated.clone();
            let key = key.clone();
            async move {
                let r = c
                    .get(key.as_bytes(), Some(GetOptions::new().with_serializable()))
                    .await?;
                match r.kvs().first().map(|kv| kv.value().to_vec()) {
                    Some(v) if v == b"1" => Ok(()),
                    v => bail!("m0 has {v:?}"),
                }
            }
        },
    )
    .await
    .unwrap();

    let ids: Vec<PeerId> = cluster.members.iter().map(|m| m.id.clone()).collect();
    fw.cut(&[(&ids[0], &ids[1]), (&ids[0], &ids[2])]).unwrap();
    let invoke = rec.now();
    // m1 and m2 are a majority: the write commits without m0 (after a possible election).
    let r = wait_for(
        Duration::from_secs(15),
        "a write on the majority side",
        || {
            let mut c = majority.clone();
            let key = key.clone();
            async move { Ok(c.put(key.as_bytes(), "2", None).await?) }
        },
    )
    .await;
    r.unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", fw.rules(), cluster.logs()));
    rec.record(kelson_linz::op(
        1,
        &key,
        Input::Put(2),
        Output::Put,
        invoke,
        rec.now(),
    ));
    let invoke = rec.now();
    let r = isolated.get(key.as_bytes(), local()).await.unwrap();
    let seen = r.kvs().first().map(|kv| parse_value(kv.value()));
    rec.record(kelson_linz::op(
        2,
        &key,
        Input::Get,
        Output::Get(seen),
        invoke,
        rec.now(),
    ));
    assert_eq!(
        seen,
        Some(1),
        "the isolated member should still have the old value\n{}",
        cluster.logs()
    );
    let dropped = fw.heal().unwrap();
    assert!(dropped > 0, "the partition dropped no packets");

    let report = kelson_linz::check(&rec.operations(), &CheckOptions::default()).unwrap();
    assert_eq!(report.violations(), 1, "{report}");
    let text = report.to_string();
    assert!(
        text.contains("BLOCKED:    [client 2] get(\"linz/k0\") -> 1"),
        "{text}"
    );
    eprintln!("{text}");
}

// ---------------------------------------------------------------------------------------
// nftables

/// Fails (panics) unless we are root and `nft` works: partitions are the point of the test.
fn require_root_and_nft() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    assert_eq!(
        euid, "0",
        "the linearizability chaos test must run as root (it runs members under their own \
         uids and installs nftables rules); effective uid is {euid}"
    );
    let out = Command::new("nft").args(["list", "tables"]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`nft list tables` failed ({}): {}; the chaos test needs nftables to partition members",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "cannot run `nft` ({e}); install nftables: the chaos test needs it to partition members"
        ),
    }
}

fn nft(script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("spawning nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft failed ({}): {}\nscript:\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Our nftables table: marks connections by the member that opened them, and holds the cuts.
/// Dropping it deletes the table, which heals everything.
struct Firewall {
    table: String,
}

impl Firewall {
    fn install(table: String, uids: &[u32]) -> anyhow::Result<Firewall> {
        let marks: String = uids
            .iter()
            .map(|u| format!("    ct state new meta skuid {u} ct mark set {u}\n"))
            .collect();
        nft(&format!(
            "table inet {table} {{\n  chain cuts {{\n  }}\n  chain out {{\n    type filter hook output \
             priority 0; policy accept;\n{marks}    jump cuts\n  }}\n}}\n"
        ))?;
        Ok(Firewall { table })
    }

    /// Drops all traffic between the peer ports of each pair, in both directions.
    fn cut(&self, links: &[(&PeerId, &PeerId)]) -> anyhow::Result<()> {
        let mut script = String::new();
        for (a, b) in links {
            for (from, to) in [(a, b), (b, a)] {
                // `from`'s connections to `to`'s peer listener, both directions of them.
                for dir in ["dport", "sport"] {
                    script.push_str(&format!(
                        "add rule inet {} cuts ct mark {} tcp {dir} {} counter drop\n",
                        self.table, from.uid, to.peer_port
                    ));
                }
            }
        }
        nft(&script)
    }

    /// Removes every cut; returns how many packets the cuts dropped, which shows the cuts
    /// really separated the members (a partition that drops nothing would prove nothing).
    fn heal(&self) -> anyhow::Result<u64> {
        let out = Command::new("nft")
            .args(["list", "chain", "inet", &self.table, "cuts"])
            .output()
            .context("listing the cuts")?;
        let listing = String::from_utf8_lossy(&out.stdout);
        let dropped = listing
            .lines()
            .filter_map(|l| l.split("counter packets ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        nft(&format!("flush chain inet {} cuts\n", self.table))?;
        Ok(dropped)
    }

    fn rules(&self) -> String {
        Command::new("nft")
            .args(["list", "table", "inet", &self.table])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if let Err(e) = nft(&format!("delete table inet {}\n", self.table)) {
            eprintln!(
                "linearizability: could not delete nft table {}: {e:#}",
                self.table
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// A small launcher: testsupport's clusters bind 127.0.0.1 and run as root; partitions need
// one address and one uid per member. Same binaries and flags otherwise.

#[derive(Debug, Clone)]
struct PeerId {
    uid: u32,
    peer_port: u16,
}

struct Member {
    name: String,
    ip: String,
    id: PeerId,
    client_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    proc: Option<ChildGuard>,
}

struct Cluster {
    kind: StoreKind,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    // Last: processes die before their directories go.
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn new(kind: StoreKind, uid_base: u32) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("linz-{}-", kind.name()))
            .tempdir()?;
        // Members run as other users: they must be able to enter the directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let mut members = Vec::new();
        for i in 0..MEMBERS {
            let uid = uid_base + i as u32;
            let home = dir.path().join(format!("m{i}"));
            std::fs::create_dir_all(&home)?;
            chown(&home, Some(uid), Some(uid))
                .with_context(|| format!("chown {} to {uid}", home.display()))?;
            members.push(Member {
                name: format!("m{i}"),
                ip: format!("127.0.0.{}", i + 2),
                id: PeerId {
                    uid,
                    peer_port: free_port(),
                },
                client_port: free_port(),
                data_dir: home.join("data"),
                log_path: dir.path().join(format!("m{i}.log")),
                proc: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, m.ip, m.id.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Cluster {
            kind,
            members,
            initial_cluster,
            token: format!("linz-{}-{uid_base}", std::process::id()),
            _dir: dir,
        })
    }

    fn endpoint(&self, i: usize) -> String {
        let m = &self.members[i];
        format!("http://{}:{}", m.ip, m.client_port)
    }

    fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        let client = format!("http://{}:{}", m.ip, m.client_port);
        let peer = format!("http://{}:{}", m.ip, m.id.peer_port);
        let mut cmd = match self.kind {
            StoreKind::Kelson => Command::new(bin_path("kelson-kv")),
            StoreKind::Etcd => Command::new(ETCD),
        };
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .uid(m.id.uid)
            .gid(m.id.uid);
        if self.kind == StoreKind::Kelson {
            cmd.arg("--no-dbus")
                .arg("--metrics-addr")
                .arg(format!("127.0.0.1:{}", free_port()));
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
        }
        let guard = ChildGuard::spawn(
            &format!("{} {}", self.kind.name(), m.name),
            cmd,
            &m.log_path,
        )?;
        self.members[i].proc = Some(guard);
        Ok(())
    }

    fn kill9(&mut self, i: usize) {
        if let Some(p) = self.members[i].proc.as_mut() {
            p.kill9();
        }
    }

    fn is_running(&mut self, i: usize) -> bool {
        self.members[i]
            .proc
            .as_mut()
            .is_some_and(|p| p.is_running())
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let log = std::fs::read_to_string(&m.log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!(
                "----- {} {} (last 25 lines)\n",
                self.kind.name(),
                m.name
            ));
            out.push_str(&lines[lines.len().saturating_sub(25)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// Every member answers `status` and they agree on a leader.
    async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                bail!("{} is not running\n{}", self.members[i].name, self.logs());
            }
        }
        let endpoints = self.endpoints();
        let r = wait_for(timeout, "all members to agree on a leader", || {
            let endpoints = endpoints.clone();
            async move {
                let mut leaders = Vec::new();
                for e in &endpoints {
                    let mut c = connect(vec![e.clone()]).await?;
                    let s = c.status().await.with_context(|| format!("status of {e}"))?;
                    if s.leader() == 0 {
                        bail!("{e} has no leader");
                    }
                    leaders.push(s.leader());
                }
                leaders.dedup();
                if leaders.len() != 1 {
                    bail!("members disagree on the leader: {leaders:?}");
                }
                Ok(())
            }
        })
        .await;
        r.map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.logs()))
    }
}

async fn connect(endpoints: Vec<String>) -> anyhow::Result<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(OP_TIMEOUT);
    Ok(Client::connect(endpoints, Some(opts)).await?)
}

// ---------------------------------------------------------------------------------------
// Workload

fn key_name(k: usize) -> String {
    format!("linz/k{k}")
}

fn parse_value(bytes: &[u8]) -> u64 {
    let s = std::str::from_utf8(bytes).unwrap_or("");
    s.parse()
        .unwrap_or_else(|_| panic!("read a value this test never writes: {bytes:?}"))
}

async fn client_loop(
    id: usize,
    mut client: Client,
    rec: Arc<Recorder>,
    deadline: Instant,
    errors: Arc<AtomicU64>,
) {
    // StdRng, not thread_rng: the loop awaits, so its state must be Send.
    let mut rng = StdRng::from_entropy();
    let mut last_seen: Vec<Option<u64>> = vec![None; KEYS];
    let mut seq: u64 = 0;
    while Instant::now() < deadline {
        let k = rng.gen_range(0..KEYS);
        let key = key_name(k);
        seq += 1;
        // Unique across clients and runs of this loop: (client + 1) * 10^9 + sequence.
        let value = (id as u64 + 1) * 1_000_000_000 + seq;
        let roll = rng.gen_range(0..100);
        let input = if roll < 50 {
            Input::Get
        } else if roll < 75 {
            Input::Put(value)
        } else {
            Input::Cas {
                expected: last_seen[k],
                new: value,
            }
        };
        let invoke = rec.now();
        let output = match input {
            Input::Get => {
                match tokio::time::timeout(OP_TIMEOUT, client.get(key.as_bytes(), None)).await {
                    Ok(Ok(r)) => {
                        let v = r.kvs().first().map(|kv| parse_value(kv.value()));
                        last_seen[k] = v;
                        Output::Get(v)
                    }
                    _ => Output::Unknown,
                }
            }
            Input::Put(v) => {
                let fut = client.put(key.as_bytes(), v.to_string(), None);
                match tokio::time::timeout(OP_TIMEOUT, fut).await {
                    Ok(Ok(_)) => Output::Put,
                    _ => Output::Unknown,
                }
            }
            Input::Cas { expected, new } => {
                let cmp = match expected {
                    Some(e) => Compare::value(key.as_bytes(), CompareOp::Equal, e.to_string()),
                    None => Compare::version(key.as_bytes(), CompareOp::Equal, 0),
                };
                let txn = Txn::new().when([cmp]).and_then([TxnOp::put(
                    key.as_bytes(),
                    new.to_string(),
                    None,
                )]);
                match tokio::time::timeout(OP_TIMEOUT, client.txn(txn)).await {
                    Ok(Ok(r)) => {
                        if r.succeeded() {
                            last_seen[k] = Some(new);
                        }
                        Output::Cas(r.succeeded())
                    }
                    _ => Output::Unknown,
                }
            }
        };
        let complete = rec.now();
        rec.record(Operation {
            client: id,
            key,
            input,
            output,
            invoke,
            complete,
        });
        if output == Output::Unknown {
            errors.fetch_add(1, Ordering::Relaxed);
            // Every unknown write widens the search; do not hammer a member that is down.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Crashes and partitions until `deadline`, one fault at a time. Returns what it did.
async fn nemesis(
    cluster: &mut Cluster,
    fw: &Firewall,
    rec: &Recorder,
    deadline: Instant,
) -> anyhow::Result<Vec<String>> {
    let mut log = Vec::new();
    let mut round = 0usize;
    // Let the clients warm up against a healthy cluster first.
    tokio::time::sleep(Duration::from_millis(800)).await;
    while Instant::now() + Duration::from_secs(3) < deadline {
        // Half of the faults hit the leader: a deposed leader serving reads or acknowledging
        // writes is the classic way to lose linearizability.
        let leader = if round & 1 == 0 {
            leader_index(cluster).await
        } else {
            None
        };
        let (victim, other, hold_ms, pause_ms) = {
            let mut rng = rand::thread_rng();
            let v = leader.unwrap_or_else(|| rng.gen_range(0..MEMBERS));
            let o = (v + rng.gen_range(1..MEMBERS)) % MEMBERS;
            (
                v,
                o,
                rng.gen_range(1000..2000u64),
                rng.gen_range(500..1000u64),
            )
        };
        let at = rec.now() as f64 / 1e6;
        let ids: Vec<PeerId> = cluster.members.iter().map(|m| m.id.clone()).collect();
        match round % 3 {
            0 => {
                log.push(format!(
                    "{at:.0}ms kill -9 m{victim}{}, restart after {hold_ms}ms",
                    if leader.is_some() { " (leader)" } else { "" }
                ));
                cluster.kill9(victim);
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                cluster.spawn(victim)?;
            }
            1 => {
                log.push(format!(
                    "{at:.0}ms isolate m{victim}{} for {hold_ms}ms",
                    if leader.is_some() { " (leader)" } else { "" }
                ));
                let links: Vec<(&PeerId, &PeerId)> = (0..MEMBERS)
                    .filter(|&j| j != victim)
                    .map(|j| (&ids[victim], &ids[j]))
                    .collect();
                fw.cut(&links)?;
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                let dropped = fw.heal()?;
                log.push(format!("  healed; the cuts dropped {dropped} packets"));
                if dropped == 0 {
                    bail!("isolating m{victim} dropped no packets: the partition had no effect");
                }
            }
            _ => {
                log.push(format!(
                    "{at:.0}ms cut link m{victim}<->m{other} for {hold_ms}ms"
                ));
                // Raft followers send each other nothing, so only a cut touching the leader
                // must drop packets; a follower-follower cut legitimately drops none.
                let leader_now = match leader {
                    Some(l) => Some(l),
                    None => leader_index(cluster).await,
                };
                let touches_leader = leader_now.is_some_and(|l| l == victim || l == other);
                fw.cut(&[(&ids[victim], &ids[other])])?;
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                let dropped = fw.heal()?;
                log.push(format!("  healed; the cut dropped {dropped} packets"));
                if dropped == 0 && touches_leader {
                    bail!("cutting m{victim}<->m{other} (leader m{leader_now:?}) dropped no packets: no effect");
                }
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
    Ok(log)
}

/// The index of the member that says it is the leader, if one answers quickly.
async fn leader_index(cluster: &Cluster) -> Option<usize> {
    for i in 0..cluster.members.len() {
        let probe = async {
            let mut c = connect(vec![cluster.endpoint(i)]).await?;
            let s = c.status().await?;
            let me = s.header().map(|h| h.member_id()).unwrap_or(0);
            anyhow::Ok(me != 0 && s.leader() == me)
        };
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
            return Some(i);
        }
    }
    None
}

/// After healing: every member reaches the same `HashKV` at one revision.
async fn converged(cluster: &Cluster) -> anyhow::Result<(i64, u32)> {
    let mut c = connect(cluster.endpoints()).await?;
    let rev = c
        .get("linz/", Some(GetOptions::new().with_prefix()))
        .await?
        .header()
        .context("range response without header")?
        .revision();
    let mut hashes = Vec::new();
    for i in 0..cluster.members.len() {
        let ep = cluster.endpoint(i);
        let h = wait_for(
            Duration::from_secs(20),
            &format!("HashKV({rev}) of {ep}"),
            || {
                let ep = ep.clone();
                async move {
                    let mut c = connect(vec![ep]).await?;
                    Ok(c.hash_kv(rev).await?.hash())
                }
            },
        )
        .await?;
        hashes.push(h);
    }
    if hashes.iter().any(|&h| h != hashes[0]) {
        bail!("members diverged: HashKV at revision {rev} = {hashes:?}");
    }
    Ok((rev, hashes[0]))
}

/// A healthy cluster of `kind` with our nftables table in place (installed before any member
/// starts, so every peer connection gets its mark). `slot` keeps uids and table names apart
/// between the tests of one process.
async fn start(kind: StoreKind, slot: u32) -> (Cluster, Firewall) {
    require_root_and_nft();
    let uid_base = 40_000 + (std::process::id() % 2_000) * 16 + slot * 4;
    let table = format!("kelson_linz_{}_{slot}", std::process::id());
    let mut cluster = Cluster::new(kind, uid_base).expect("preparing the cluster");
    let uids: Vec<u32> = cluster.members.iter().map(|m| m.id.uid).collect();
    let fw = Firewall::install(table, &uids).expect("installing the nftables table");
    for i in 0..MEMBERS {
        cluster.spawn(i).expect("starting a member");
    }
    cluster
        .wait_healthy(Duration::from_secs(40))
        .await
        .expect("cluster did not become healthy");
    (cluster, fw)
}

async fn chaos(kind: StoreKind) {
    let slot = match kind {
        StoreKind::Etcd => 0,
        StoreKind::Kelson => 1,
    };
    let (mut cluster, fw) = start(kind, slot).await;

    let rec = Arc::new(Recorder::new());
    let errors = Arc::new(AtomicU64::new(0));
    let duration = workload_duration();
    let deadline = Instant::now() + duration;
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        // Six clients pinned to one member each (they see that member's failures), two
        // balanced across all members.
        let endpoints = if id < 6 {
            vec![cluster.endpoint(id % MEMBERS)]
        } else {
            cluster.endpoints()
        };
        let client = connect(endpoints).await.expect("connecting a client");
        clients.push(tokio::spawn(client_loop(
            id,
            client,
            rec.clone(),
            deadline,
            errors.clone(),
        )));
    }
    let nemesis_log = nemesis(&mut cluster, &fw, &rec, deadline).await;
    for c in clients {
        c.await.expect("a client task panicked");
    }
    let nemesis_log = match nemesis_log {
        Ok(l) => l,
        Err(e) => panic!("nemesis failed: {e:#}\nrules:\n{}", fw.rules()),
    };
    eprintln!(
        "linearizability: nemesis did:\n  {}",
        nemesis_log.join("\n  ")
    );

    // Heal everything and let the cluster settle.
    fw.heal().expect("healing");
    for i in 0..MEMBERS {
        if !cluster.is_running(i) {
            cluster.spawn(i).expect("restarting a member");
        }
    }
    cluster
        .wait_healthy(Duration::from_secs(40))
        .await
        .expect("cluster did not recover after healing");
    let convergence = converged(&cluster).await;

    let ops = rec.operations();
    let opts = CheckOptions {
        time_budget_per_key: Duration::from_secs(30),
        ..CheckOptions::default()
    };
    let report = kelson_linz::check(&ops, &opts).expect("well-formed history");
    eprintln!(
        "linearizability: {} against {} ({} ops recorded, {} unknown outcomes, over {duration:?})",
        report.summary(),
        kind.name(),
        ops.len(),
        errors.load(Ordering::Relaxed)
    );
    println!("linearizability: {}", report.summary());
    eprint!("{report}");
    assert_eq!(
        report.violations(),
        0,
        "{} is not linearizable:\n{report}\nnemesis:\n  {}",
        kind.name(),
        nemesis_log.join("\n  ")
    );
    assert_eq!(report.unknown(), 0, "checker could not decide:\n{report}");
    assert!(
        report.operations > MIN_OPERATIONS,
        "only {} operations were checked (minimum {MIN_OPERATIONS}): too few to mean anything\n{}",
        report.operations,
        cluster.logs()
    );
    let (rev, hash) = match convergence {
        Ok(x) => x,
        Err(e) => panic!("members did not converge: {e:#}\n{}", cluster.logs()),
    };
    eprintln!("linearizability: all members have HashKV {hash} at revision {rev}");
    drop(fw);
    drop(cluster);
}
