//! The daemon surface: sd_notify READY=1, D-Bus `io.kelson.APIServer1` (+ `io.kelson.Daemon1`)
//! on a private bus, Prometheus /metrics, graceful SIGTERM, and configuration errors.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ApiCluster;
use kelson_testsupport::{free_port, DbusDaemon, StoreKind};

const BIN: &str = env!("CARGO_BIN_EXE_kelson-apiserver");

use kelson_testsupport::probe::{http_get, wait_notify};

#[zbus::proxy(
    interface = "io.kelson.APIServer1",
    default_path = "/io/kelson/APIServer1",
    default_service = "io.kelson.APIServer1"
)]
trait ApiServer1 {
    #[zbus(property)]
    fn requests(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn watch_count(&self) -> zbus::Result<i64>;
    #[zbus(property)]
    fn etcd_servers(&self) -> zbus::Result<Vec<String>>;
}

#[zbus::proxy(
    interface = "io.kelson.Daemon1",
    default_path = "/io/kelson/APIServer1",
    default_service = "io.kelson.APIServer1"
)]
trait Daemon1 {
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_dbus_metrics_and_graceful_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = DbusDaemon::start().unwrap();
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut c = ApiCluster::start_env(
        StoreKind::Kelson,
        &["--dbus-address", bus.address(), "--metrics-addr", &metrics],
        &[("NOTIFY_SOCKET", notify_path.as_os_str())],
    )
    .await
    .unwrap();
    wait_notify(&notify, "READY=1", Duration::from_secs(20));

    // A watch held open shows in WatchCount.
    let mut watcher = Command::new(common::KUBECTL)
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", tmp.path())
        .args(["get", "ns", "-w"])
        .stdout(std::fs::File::create(tmp.path().join("watch.out")).unwrap())
        .stderr(std::fs::File::create(tmp.path().join("watch.err")).unwrap())
        .spawn()
        .unwrap();

    let conn = zbus::connection::Builder::address(bus.address())
        .unwrap()
        .build()
        .await
        .unwrap();
    // Properties are read live on every Get; do not let the proxy cache the first answer.
    let api = ApiServer1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if api.watch_count().await.unwrap() >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no watch counted; kubectl: {} {}",
            std::fs::read_to_string(tmp.path().join("watch.out")).unwrap_or_default(),
            std::fs::read_to_string(tmp.path().join("watch.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(api.requests().await.unwrap() > 0);
    assert_eq!(api.etcd_servers().await.unwrap(), c.store.endpoints());
    let daemon = Daemon1Proxy::new(&conn).await.unwrap();
    assert_eq!(daemon.state().await.unwrap(), "running");
    let _ = watcher.kill();
    let _ = watcher.wait();

    let m = http_get(&metrics, "/metrics").await;
    assert!(m.contains("apiserver_request_total"), "{m}");
    assert!(m.contains("verb=\"GET\""), "{m}");

    let status = c.server.terminate(Duration::from_secs(15)).unwrap();
    assert!(
        status.success(),
        "SIGTERM must exit 0: {status}\n{}",
        c.server.log_tail(20)
    );
    let seen = wait_notify(&notify, "STOPPING=1", Duration::from_secs(5));
    assert!(!seen.is_empty());
}

#[test]
fn configuration_errors_and_print_config() {
    let out = Command::new(BIN)
        .args(["--print-config", "--secure-port", "7443"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("secure-port = 7443")
            && text.contains("service-cluster-ip-range = \"10.96.0.0/12\""),
        "{text}"
    );
    assert!(text.contains("authorization-mode = \"RBAC\""), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("apiserver.toml");
    std::fs::write(&cfg, "secure-prot = 1\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--no-dbus")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("secure-prot"),
        "{out:?}"
    );

    let out = Command::new(BIN)
        .args([
            "--no-dbus",
            "--authorization-mode",
            "Webhook",
            "--tls-cert-file",
            "/x",
            "--tls-private-key-file",
            "/y",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unsupported mode \"Webhook\""),
        "{out:?}"
    );
    let out = Command::new(BIN)
        .args(["--no-dbus", "--secure-port", "0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-cert-file"),
        "{out:?}"
    );
}
