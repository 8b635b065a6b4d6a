//! `kelsonctl kv status` and `kv snapshot save` against the real etcd (the reference server),
//! over mutual TLS, through the real binary.

use std::process::{Command, Output};

use kelson_testsupport::{ClusterOpts, StoreCluster, StoreKind};

fn kelsonctl(c: &StoreCluster, args: &[&str], endpoints: &str) -> Output {
    let p = c.pki().expect("tls cluster");
    Command::new(env!("CARGO_BIN_EXE_kelsonctl"))
        .args(args)
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", p.ca_cert.display()))
        .arg(format!("--cert={}", p.client_cert.display()))
        .arg(format!("--key={}", p.client_key.display()))
        .arg("--command-timeout=3")
        .output()
        .expect("running kelsonctl")
}

#[tokio::test]
async fn status_and_snapshot_against_real_etcd() {
    let opts = ClusterOpts {
        tls: true,
        ..ClusterOpts::default()
    };
    let mut c = StoreCluster::start(StoreKind::Etcd, 2, opts).await.unwrap();
    let out = c.etcdctl(&["put", "snap-key", "snap-value"]);
    assert!(out.status.success(), "{out:?}");

    let out = kelsonctl(&c, &["kv", "status"], &c.endpoints_str());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains(&c.endpoint(0)) && text.contains(&c.endpoint(1)),
        "{text}"
    );
    assert!(text.contains("3.4"), "version column: {text}");
    assert_eq!(
        text.matches("true").count(),
        1,
        "exactly one leader: {text}"
    );

    // Snapshot from one member, then check it with etcdctl's own reader.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let out = kelsonctl(
        &c,
        &["kv", "snapshot", "save", file.to_str().unwrap()],
        &c.endpoint(0),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::metadata(&file).unwrap().len() > 0);
    assert!(!dir.path().join("backup.db.part").exists());
    let st = Command::new(kelson_testsupport::ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", file.to_str().unwrap(), "-w", "json"])
        .output()
        .unwrap();
    assert!(st.status.success(), "etcdctl snapshot status: {st:?}");

    // A down member makes status fail (exit 1) and says which endpoint.
    c.kill9(1);
    let out = kelsonctl(&c, &["kv", "status"], &c.endpoints_str());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let down = c.endpoint(1);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&down) && l.contains("unhealthy")),
        "{text}"
    );
}
