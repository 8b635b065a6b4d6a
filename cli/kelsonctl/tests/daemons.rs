//! `kelsonctl status`, `reload` and `log-level` against a real kelson-kv on a private D-Bus.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kelson_testsupport::{bin_path, ClusterOpts, DbusDaemon, StoreCluster, StoreKind};

fn kelsonctl(bus: &str, args: &[&str]) -> Output {
    Command::new(bin_path("kelsonctl"))
        .args(args)
        .args(["--bus", bus])
        .output()
        .expect("run kelsonctl")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reload_and_log_level_over_dbus() {
    let bus = DbusDaemon::start().expect("dbus-daemon");
    let addr = bus.address().to_string();

    // Nothing runs yet: status says so with exit code 2.
    let none = kelsonctl(&addr, &["status"]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
    assert!(String::from_utf8_lossy(&none.stdout).contains("not running"));

    let opts = ClusterOpts {
        dbus_address: Some(addr.clone()),
        ..Default::default()
    };
    let cluster = StoreCluster::start(StoreKind::Kelson, 1, opts)
        .await
        .expect("kelson-kv");

    // The kv member is running, healthy and (alone) the leader; the others are not running.
    let deadline = Instant::now() + Duration::from_secs(15);
    let row = loop {
        let out = kelsonctl(&addr, &["status", "--json"]);
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(rows.len(), 8, "{}", text(&out));
        let kv = rows
            .iter()
            .find(|r| r["component"] == "kelson-kv")
            .cloned()
            .expect("kv row");
        if kv["role"] == "leader" && kv["health"] == "healthy" {
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
            let sched = rows
                .iter()
                .find(|r| r["component"] == "kelson-scheduler")
                .unwrap();
            assert_eq!(sched["running"], false);
            break kv;
        }
        assert!(
            Instant::now() < deadline,
            "kv never showed as healthy leader: {}\n{}",
            text(&out),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(row["state"], "running");
    assert!(!row["version"].as_str().unwrap().is_empty());

    // The table form names every daemon.
    let table = kelsonctl(&addr, &["status"]);
    let t = String::from_utf8_lossy(&table.stdout);
    for d in [
        "kelson-kv",
        "kelson-apiserver",
        "kelson-kubelet",
        "kelson-dns",
    ] {
        assert!(t.contains(d), "{d} missing from:\n{t}");
    }

    let ok = kelsonctl(&addr, &["log-level", "kv", "debug"]);
    assert!(ok.status.success(), "{}", text(&ok));
    let bad = kelsonctl(&addr, &["log-level", "kv", "not[a-filter"]);
    assert!(!bad.status.success(), "{}", text(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("SetLogLevel"),
        "{}",
        text(&bad)
    );

    let reload = kelsonctl(&addr, &["reload", "kv"]);
    assert!(reload.status.success(), "{}", text(&reload));

    let absent = kelsonctl(&addr, &["reload", "scheduler"]);
    assert!(!absent.status.success());
    assert!(
        String::from_utf8_lossy(&absent.stderr).contains("not running"),
        "{}",
        text(&absent)
    );
    drop(cluster);
}
