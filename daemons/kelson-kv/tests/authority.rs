//! The HTTP/2 `:authority` repair seen from real clients: etcdctl 3.4 dials single endpoints
//! (`endpoint status`, `snapshot save`) with `:authority: http://127.0.0.1:PORT`, which h2 alone
//! resets with PROTOCOL_ERROR. These run the kelson-kv binary and the system etcdctl, and check
//! that an ordinary etcd-client workload on the same server is unaffected.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use kelson_testsupport::{
    etcdctl, free_port, ChildGuard, ClusterOpts, StoreCluster, StoreKind, ETCDCTL,
};

const BIN: &str = env!("CARGO_BIN_EXE_kelson-kv");

fn spawn_kv(dir: &Path, client: u16, peer: u16) -> ChildGuard {
    let mut cmd = Command::new(BIN);
    cmd.args(["--name", "a", "--no-dbus", "--data-dir"])
        .arg(dir.join("data"))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ));
    ChildGuard::spawn("kelson-kv", cmd, &dir.join("kv.log")).unwrap()
}

async fn connect(ep: &str, kv: &ChildGuard) -> etcd_client::Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = etcd_client::Client::connect([ep], None).await {
            if c.get("probe", None).await.is_ok() {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "kelson-kv did not come up:\n{}",
            kv.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "etcdctl {what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `endpoint status -w json` must name a leader and a revision of at least `min_rev`.
fn check_status(json: &str, min_rev: i64) {
    let v: serde_json::Value = serde_json::from_str(json).expect("status is JSON");
    let st = &v[0]["Status"];
    assert_ne!(st["leader"].as_u64().unwrap_or(0), 0, "{json}");
    assert!(
        st["header"]["revision"].as_i64().unwrap_or(0) >= min_rev,
        "{json}"
    );
}

/// A small but complete client workload: puts, a txn, a prefix read, a watch event, a lease.
async fn client_workload(c: &mut etcd_client::Client, prefix: &str) {
    for i in 0..20 {
        c.put(format!("{prefix}/{i:02}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    let key = format!("{prefix}/00");
    let txn = Txn::new()
        .when([Compare::value(key.clone(), CompareOp::Equal, "v0")])
        .and_then([TxnOp::put(key.clone(), "changed", None)]);
    assert!(c.txn(txn).await.unwrap().succeeded());
    let got = c
        .get(format!("{prefix}/"), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 20);
    assert_eq!(got.kvs()[0].value(), b"changed");

    let mut stream = c
        .watch(
            format!("{prefix}/w"),
            Some(WatchOptions::new().with_start_revision(0)),
        )
        .await
        .unwrap();
    c.put(format!("{prefix}/w"), "x", None).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let resp = stream.message().await.unwrap().expect("watch open");
            if let Some(e) = resp.events().first() {
                return (e.event_type(), e.kv().unwrap().value().to_vec());
            }
        }
    })
    .await
    .expect("watch event in time");
    assert_eq!(ev, (EventType::Put, b"x".to_vec()));

    let lease = c.lease_grant(30, None).await.unwrap();
    assert_eq!(lease.ttl(), 30);
    c.lease_revoke(lease.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_with_http_endpoints_and_etcd_client_side_by_side() {
    assert!(Path::new(ETCDCTL).exists(), "{ETCDCTL} is required");
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let kv = spawn_kv(dir.path(), client, peer);
    let ep = format!("http://127.0.0.1:{client}");
    let mut c = connect(&format!("127.0.0.1:{client}"), &kv).await;
    client_workload(&mut c, "before").await;

    // The two commands that dial a single endpoint with `:authority: http://…`.
    let status = ok(
        etcdctl(&ep, &["endpoint", "status", "-w", "json"]),
        "endpoint status",
    );
    check_status(&status, 22);
    let snap = dir.path().join("snap.db");
    ok(
        etcdctl(&ep, &["snapshot", "save", snap.to_str().unwrap()]),
        "snapshot save",
    );
    let size = std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "snapshot file written");

    // The balancer path (valid authority) still works too, and sees the client's writes.
    ok(etcdctl(&ep, &["put", "from-etcdctl", "1"]), "put");
    let got = ok(
        etcdctl(&ep, &["get", "before/01", "--print-value-only"]),
        "get",
    );
    assert_eq!(got.trim(), "v1");

    // The long-lived client connection is untouched, and new ones work.
    client_workload(&mut c, "after").await;
    let mut c2 = connect(&format!("127.0.0.1:{client}"), &kv).await;
    let v = c2.get("from-etcdctl", None).await.unwrap();
    assert_eq!(v.kvs()[0].value(), b"1");
    // And status once more after all that: the connection-level rewrite state is per connection.
    check_status(
        &ok(
            etcdctl(&ep, &["endpoint", "status", "-w", "json"]),
            "endpoint status",
        ),
        45,
    );
}

/// Over TLS etcdctl 3.4 sends a valid authority (the TLS dial keeps the host), so this guards
/// the shim on the TLS path: handshake, ALPN h2, client certificates and big snapshot streams
/// all still pass through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_with_https_endpoints() {
    assert!(Path::new(ETCDCTL).exists(), "{ETCDCTL} is required");
    let opts = ClusterOpts {
        tls: true,
        ..ClusterOpts::default()
    };
    let cluster = StoreCluster::start(StoreKind::Kelson, 1, opts)
        .await
        .unwrap();
    let mut c = cluster.client().await.unwrap();
    client_workload(&mut c, "tls").await;
    let status = ok(
        cluster.etcdctl(&["endpoint", "status", "-w", "json"]),
        "endpoint status",
    );
    check_status(&status, 22);
    let snap = cluster.dir().join("snap.db");
    ok(
        cluster.etcdctl(&["snapshot", "save", snap.to_str().unwrap()]),
        "snapshot save",
    );
    assert!(std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0) > 0);
}
