//! The daemon's edges: READY=1 over sd_notify, leader election on
//! `kube-system/cloud-controller-manager`, D-Bus `io.kelson.CloudControllerManager1` on a
//! private bus, /metrics, graceful SIGTERM, configuration errors naming the key.
//!
//! Needs `cargo build -p kelson-kv -p kelson-apiserver` first.

mod common;

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::wait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kelson_testsupport::probe::{http_get, wait_notify};
use kelson_testsupport::{free_port, ChildGuard, ControlPlane, DbusDaemon};
use kube::api::{Api, PostParams};
use serde_json::json;

#[zbus::proxy(
    interface = "io.kelson.CloudControllerManager1",
    default_path = "/io/kelson/CloudControllerManager1",
    default_service = "io.kelson.CloudControllerManager1"
)]
trait CloudControllerManager1 {
    #[zbus(property)]
    fn is_leader(&self) -> zbus::Result<bool>;
    #[zbus(property, name = "AllocatedIPs")]
    fn allocated_ips(&self) -> zbus::Result<HashMap<String, String>>;
    #[zbus(property)]
    fn pools_usage(&self) -> zbus::Result<Vec<(String, u64, u64)>>;
    #[zbus(property)]
    fn mode(&self) -> zbus::Result<String>;
}

const CONFIG: &str = "[[pools]]\nname = \"main\"\nranges = [\"10.66.0.1-10.66.0.3\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_leader_dbus_metrics_and_stop() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    let client = cp.client().await.unwrap();
    let bus = DbusDaemon::start().unwrap();
    let notify_path = cp.dir().join("ccm-notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let cfg = cp.dir().join("ccm.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelson-cloud-controller-manager"));
    cmd.arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .arg("--config")
        .arg(&cfg)
        .args([
            "--dbus-address",
            bus.address(),
            "--metrics-addr",
            &metrics,
            "--leader-elect-lease-duration",
            "3s",
            "--leader-elect-renew-deadline",
            "2s",
            "--leader-elect-retry-period",
            "500ms",
        ])
        .env("NOTIFY_SOCKET", &notify_path);
    let log = cp.dir().join("ccm.log");
    let mut ccm = ChildGuard::spawn("ccm", cmd, &log).unwrap();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_notify(&notify, "READY=1", Duration::from_secs(20));

    let conn = zbus::connection::Builder::address(bus.address())
        .unwrap()
        .build()
        .await
        .unwrap();
    let proxy = CloudControllerManager1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    assert_eq!(proxy.mode().await.unwrap(), "controller");
    wait("leadership", 15, logs, || async {
        proxy.is_leader().await.ok().filter(|l| *l)
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = leases.get("cloud-controller-manager").await.unwrap();
    assert!(lease
        .spec
        .and_then(|s| s.holder_identity)
        .is_some_and(|h| !h.is_empty()));

    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "m"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    wait("AllocatedIPs over D-Bus", 15, logs, || async {
        let m = proxy.allocated_ips().await.ok()?;
        (m.get("10.66.0.1").map(String::as_str) == Some("default/m")).then_some(())
    })
    .await;
    assert_eq!(
        proxy.pools_usage().await.unwrap(),
        vec![("main".to_string(), 1, 3)]
    );
    let m = http_get(&metrics, "/metrics").await;
    assert!(m.contains("ccm_is_leader 1"), "{m}");
    assert!(
        m.contains("ccm_pool_addresses_in_use{pool=\"main\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("ccm_pool_addresses_total{pool=\"main\"} 3"),
        "{m}"
    );

    // SIGHUP re-reads the pools: the Service's address is outside the new pool, so it moves.
    std::fs::write(
        &cfg,
        "[[pools]]\nname = \"moved\"\nranges = [\"10.67.0.1-10.67.0.2\"]\n",
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ccm.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait(
        "the address to move to the reloaded pool",
        15,
        logs,
        || async {
            let s = svcs.get("m").await.ok()?;
            let ip = s.status?.load_balancer?.ingress?.first()?.ip.clone()?;
            (ip == "10.67.0.1").then_some(())
        },
    )
    .await;
    wait("PoolsUsage to show the new pool", 5, logs, || async {
        (proxy.pools_usage().await.ok()? == vec![("moved".to_string(), 1, 2)]).then_some(())
    })
    .await;
    assert!(ccm.is_running(), "SIGHUP must not stop the daemon");

    let status = ccm.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "exit {status:?}\n{}", logs());
    // The Lease is released on a clean stop so a standby takes over at once.
    let lease = leases.get("cloud-controller-manager").await.unwrap();
    assert!(lease
        .spec
        .and_then(|s| s.holder_identity)
        .is_none_or(|h| h.is_empty()));
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[[pools]]\nname = \"x\"\ncidr = \"10.0.0.0/24\"\nfrobnicate = 1\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kelson-cloud-controller-manager"))
        .arg("--config")
        .arg(&cfg)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("frobnicate"), "{err}");

    std::fs::write(&cfg, "[[pools]]\nname = \"x\"\ncidr = \"10.0.0.1/24\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kelson-cloud-controller-manager"))
        .arg("--config")
        .arg(&cfg)
        .args(["--no-dbus", "--kubeconfig", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("host bits set"), "{err}");
}
