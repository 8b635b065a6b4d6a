//! The kelson-kv binary as systemd and operators see it: sd_notify sequence, D-Bus
//! `io.kelson.KV1` + `io.kelson.Daemon1` on a private bus, /metrics, configuration errors and
//! refusal of foreign data directories.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kelson_testsupport::DbusDaemon;
use kelson_testsupport::{free_port, ChildGuard};

const BIN: &str = env!("CARGO_BIN_EXE_kelson-kv");

struct Ports {
    client: u16,
    peer: u16,
}

/// A member named `name` with its data in `data_dir`, listening on `p`.
fn member_command(name: &str, data_dir: &Path, p: &Ports) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--name", name, "--data-dir"])
        .arg(data_dir)
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", p.client),
        ])
        .args([
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{}", p.client),
        ])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", p.peer),
        ])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{}", p.peer),
        ]);
    cmd
}

fn kv_command(dir: &Path, p: &Ports) -> Command {
    member_command("t1", &dir.join("data"), p)
}

use kelson_testsupport::probe::{http_get, wait_notify};

#[zbus::proxy(
    interface = "io.kelson.KV1",
    default_path = "/io/kelson/KV1",
    default_service = "io.kelson.KV1"
)]
trait Kv1 {
    #[zbus(property)]
    fn member_id(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn leader(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn term(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn applied_index(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn db_size(&self) -> zbus::Result<i64>;
    #[zbus(property)]
    fn health(&self) -> zbus::Result<String>;
    fn snapshot(&self, path: &str) -> zbus::Result<u64>;
    fn compact(&self, revision: i64) -> zbus::Result<()>;
    fn defragment(&self) -> zbus::Result<()>;
    fn transfer_leadership(&self, member: u64) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "io.kelson.Daemon1",
    default_path = "/io/kelson/KV1",
    default_service = "io.kelson.KV1"
)]
trait Daemon1 {
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    fn set_log_level(&self, level: &str) -> zbus::Result<()>;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_dbus_metrics_and_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let bus = DbusDaemon::start().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let ports = Ports {
        client: free_port(),
        peer: free_port(),
    };
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut cmd = kv_command(dir.path(), &ports);
    cmd.args(["--dbus-address", bus.address(), "--metrics-addr", &metrics])
        .env("NOTIFY_SOCKET", &notify_path);
    let mut kv = ChildGuard::spawn("kelson-kv", cmd, &dir.path().join("kv.log")).unwrap();

    let seen = wait_notify(&notify, "READY=1", Duration::from_secs(20));
    assert!(
        seen.iter().any(|m| m.contains("STATUS=")),
        "STATUS before READY: {seen:?}"
    );

    // Write something so there is a revision to compact and data to snapshot.
    let mut client = etcd_client::Client::connect([format!("127.0.0.1:{}", ports.client)], None)
        .await
        .unwrap();
    for i in 0..5 {
        client.put(format!("k{i}"), "v", None).await.unwrap();
    }
    let rev = client
        .get("k0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let conn = zbus::connection::Builder::address(bus.address())
        .unwrap()
        .build()
        .await
        .unwrap();
    let kv1 = Kv1Proxy::new(&conn).await.unwrap();
    let d1 = Daemon1Proxy::new(&conn).await.unwrap();
    let id = kv1.member_id().await.unwrap();
    assert_ne!(id, 0);
    assert_eq!(
        kv1.leader().await.unwrap(),
        id,
        "a single member leads itself"
    );
    assert!(kv1.term().await.unwrap() >= 1);
    assert!(kv1.applied_index().await.unwrap() >= 5);
    assert!(kv1.db_size().await.unwrap() > 0);
    assert_eq!(kv1.health().await.unwrap(), "healthy");
    assert_eq!(d1.state().await.unwrap(), "running");
    assert!(!d1.version().await.unwrap().is_empty());
    d1.set_log_level("debug").await.unwrap();
    assert!(d1.set_log_level("no-such-level!").await.is_err());

    kv1.compact(rev).await.unwrap();
    let err = client
        .get(
            "k0",
            Some(etcd_client::GetOptions::new().with_revision(rev - 1)),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("required revision has been compacted"),
        "{err}"
    );
    // Compacting again at an older revision is an etcd error carried over D-Bus.
    let err = kv1.compact(rev - 1).await.unwrap_err();
    assert!(err.to_string().contains("compacted"), "{err}");
    kv1.defragment().await.unwrap();

    let snap = dir.path().join("s.snap");
    let size = kv1.snapshot(snap.to_str().unwrap()).await.unwrap();
    assert_eq!(std::fs::metadata(&snap).unwrap().len(), size);
    assert_eq!(size % 512, 32, "etcdctl-compatible snapshot size");
    // A member that is not a peer cannot receive leadership.
    assert!(kv1.transfer_leadership(id + 1).await.is_err());

    let body = http_get(&metrics, "/metrics").await;
    assert!(body.contains("etcd_server_has_leader 1"), "{body}");
    assert!(body.contains("etcd_server_is_leader 1"), "{body}");
    assert!(
        body.contains(&format!("etcd_debugging_mvcc_compact_revision {rev}")),
        "{body}"
    );
    assert!(body.contains("process_resident_memory_bytes"), "{body}");

    // SIGTERM: STOPPING=1, then a clean exit.
    let status = kv.terminate(Duration::from_secs(15)).unwrap();
    wait_notify(&notify, "STOPPING=1", Duration::from_secs(5));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        kv.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_disk_keeps_data_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports {
        client: free_port(),
        peer: free_port(),
    };
    let ep = format!("127.0.0.1:{}", ports.client);
    let spawn = || {
        let mut cmd = kv_command(dir.path(), &ports);
        cmd.arg("--no-dbus");
        ChildGuard::spawn("kelson-kv", cmd, &dir.path().join("kv.log")).unwrap()
    };
    let connect = || async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = etcd_client::Client::connect([ep.clone()], None).await {
                if c.get("probe", None).await.is_ok() {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "kelson-kv did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut kv = spawn();
    let mut c = connect().await;
    for i in 0..20 {
        c.put(format!("key/{i:02}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    let before = c
        .get("key/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(
        kv.terminate(Duration::from_secs(15)).unwrap().success(),
        "{}",
        kv.log()
    );

    let mut kv = spawn();
    let mut c = connect().await;
    let after = c
        .get("key/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(after.kvs().len(), 20);
    assert_eq!(
        after.header().unwrap().revision(),
        before.header().unwrap().revision()
    );
    for (a, b) in after.kvs().iter().zip(before.kvs()) {
        assert_eq!(
            (a.key(), a.value(), a.mod_revision()),
            (b.key(), b.value(), b.mod_revision())
        );
    }
    // And it keeps taking writes at the next revision.
    let r = c.put("key/next", "x", None).await.unwrap();
    assert_eq!(
        r.header().unwrap().revision(),
        before.header().unwrap().revision() + 1
    );
    kv.kill9();
}

#[test]
fn unknown_config_key_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kv.toml");
    std::fs::write(&file, "name = \"a\"\nsnaphot-count = 5\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("snaphot-count"), "{err}");
    assert!(err.contains(file.to_str().unwrap()), "{err}");
}

#[test]
fn print_config_shows_file_and_flag_layers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kv.toml");
    std::fs::write(&file, "name = \"from-file\"\nsnapshot-count = 5\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .args(["--snapshot-count", "7", "--print-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("name = \"from-file\""), "{text}");
    assert!(text.contains("snapshot-count = 7"), "flags win: {text}");
    assert!(
        text.contains("max-request-bytes = 1572864"),
        "etcd's default: {text}"
    );
}

fn start_fails_with(dir: &Path, want: &str) {
    let ports = Ports {
        client: free_port(),
        peer: free_port(),
    };
    let mut cmd = kv_command(dir, &ports);
    cmd.arg("--no-dbus");
    let mut child = ChildGuard::spawn("kelson-kv", cmd, &dir.join("kv.log")).unwrap();
    let status = child.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(!status.success());
    let log = child.log();
    assert!(log.contains(want), "expected {want:?} in:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn refuses_foreign_and_corrupt_data_dirs() {
    // An etcd data dir.
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("data/member/snap")).unwrap();
    start_fails_with(d.path(), "looks like an etcd data dir");
    // Some other non-empty directory.
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("data")).unwrap();
    std::fs::write(d.path().join("data/notes.txt"), "hello").unwrap();
    start_fails_with(d.path(), "not a kelson-kv data dir");
    // Our marker but a corrupt RocksDB.
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("data/db")).unwrap();
    std::fs::write(d.path().join("data/kelson-kv.version"), "1\n").unwrap();
    std::fs::write(d.path().join("data/db/CURRENT"), "MANIFEST-garbage\n").unwrap();
    start_fails_with(d.path(), "opening the store");
}

#[test]
fn invalid_flags_are_clear_errors() {
    let out = Command::new(BIN)
        .args(["--no-dbus", "--initial-cluster-state", "maybe"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--initial-cluster-state"), "{err}");
    let out = Command::new(BIN)
        .args([
            "--no-dbus",
            "--heartbeat-interval",
            "500",
            "--election-timeout",
            "1000",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("election-timeout"));
}

/// Three members, each on its own private bus (each owns `io.kelson.KV1`): TransferLeadership
/// on the leader moves leadership, and a follower's bus carries `LeaderChanged` with the new
/// leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leadership_emits_leader_changed() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let buses: Vec<DbusDaemon> = (0..3).map(|_| DbusDaemon::start().unwrap()).collect();
    let ports: Vec<Ports> = (0..3)
        .map(|_| Ports {
            client: free_port(),
            peer: free_port(),
        })
        .collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}=http://127.0.0.1:{}", p.peer))
        .collect::<Vec<_>>()
        .join(",");
    let mut guards = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let mut cmd = member_command(&format!("m{i}"), &dir.path().join(format!("d{i}")), p);
        cmd.args([
            "--initial-cluster",
            &cluster,
            "--dbus-address",
            buses[i].address(),
        ]);
        let log = dir.path().join(format!("m{i}.log"));
        guards.push(ChildGuard::spawn(&format!("m{i}"), cmd, &log).unwrap());
    }
    let mut proxies = Vec::new();
    for bus in &buses {
        // The name appears once the member has started serving D-Bus.
        let deadline = Instant::now() + Duration::from_secs(20);
        let conn = zbus::connection::Builder::address(bus.address())
            .unwrap()
            .build()
            .await
            .unwrap();
        let proxy = loop {
            let p = Kv1Proxy::new(&conn).await.unwrap();
            if p.member_id().await.is_ok() {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "member did not appear on its bus"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        proxies.push(proxy);
    }
    // Wait for one leader all agree on.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (leader_idx, leader_id) = loop {
        let mut leaders = Vec::new();
        for p in &proxies {
            leaders.push(p.leader().await.unwrap());
        }
        if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
            let mut idx = None;
            for (i, p) in proxies.iter().enumerate() {
                if p.member_id().await.unwrap() == leaders[0] {
                    idx = Some(i);
                }
            }
            break (idx.expect("leader is a member"), leaders[0]);
        }
        assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let target_idx = (leader_idx + 1) % 3;
    let watcher_idx = (leader_idx + 2) % 3;
    let target_id = proxies[target_idx].member_id().await.unwrap();

    // Subscribe on the third member's bus before moving leadership.
    let watch_conn = zbus::connection::Builder::address(buses[watcher_idx].address())
        .unwrap()
        .build()
        .await
        .unwrap();
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("io.kelson.KV1")
        .unwrap()
        .member("LeaderChanged")
        .unwrap()
        .build();
    let mut signals = zbus::MessageStream::for_match_rule(rule, &watch_conn, None)
        .await
        .unwrap();

    // A follower refuses; the leader hands over.
    assert!(proxies[target_idx]
        .transfer_leadership(target_id)
        .await
        .is_err());
    proxies[leader_idx]
        .transfer_leadership(target_id)
        .await
        .unwrap();
    // The old leader returns once it has seen the new leader; the target's own view follows.
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxies[target_idx].leader().await.unwrap() != target_id {
        assert!(
            Instant::now() < deadline,
            "target never saw itself as leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(target_id, leader_id);

    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(msg)) = signals.next().await {
            let (leader, term): (u64, u64) = msg.body().deserialize().unwrap();
            if leader == target_id {
                return term;
            }
        }
        panic!("signal stream ended");
    })
    .await
    .expect("LeaderChanged with the new leader on a follower's bus");
    assert!(got >= 2, "the transfer happened in a later term: {got}");
    for g in &mut guards {
        g.kill9();
    }
}
