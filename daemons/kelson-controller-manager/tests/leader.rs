//! Two instances: exactly one leads (seen over D-Bus); killing it hands over within the lease
//! duration and the new leader reconciles.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use kelson_testsupport::{ChildGuard, ControlPlane, DbusDaemon};
use kube::api::{Api, ListParams};

#[zbus::proxy(
    interface = "io.kelson.ControllerManager1",
    default_service = "io.kelson.ControllerManager1",
    default_path = "/io/kelson/ControllerManager1"
)]
trait ControllerManager1 {
    #[zbus(property)]
    fn is_leader(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn controllers(&self) -> zbus::Result<Vec<String>>;
    fn queue_depths(&self) -> zbus::Result<std::collections::HashMap<String, u32>>;
    fn last_errors(&self) -> zbus::Result<std::collections::HashMap<String, String>>;
}

fn spawn(cp: &ControlPlane, bus: &DbusDaemon, name: &str) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelson-controller-manager"));
    cmd.arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["--dbus-address", bus.address(), "--leader-elect=true"])
        .args([
            "--leader-elect-lease-duration=3s",
            "--leader-elect-renew-deadline=2s",
            "--leader-elect-retry-period=500ms",
        ])
        .args(["--controllers=*,-node-lifecycle-controller"]);
    ChildGuard::spawn(name, cmd, &cp.dir().join(format!("{name}.log")))
        .expect("controller manager starts")
}

async fn proxy(bus: &DbusDaemon) -> ControllerManager1Proxy<'static> {
    let start = Instant::now();
    loop {
        let conn = zbus::connection::Builder::address(bus.address())
            .unwrap()
            .build()
            .await
            .unwrap();
        if let Ok(p) = ControllerManager1Proxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
        {
            if p.is_leader().await.is_ok() {
                return p;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "controller manager never appeared on D-Bus"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_failover() {
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client().await.unwrap();
    let _nodes = common::FakeNodes::start(client.clone(), &[("n1", "a")]).await;
    let (bus_a, bus_b) = (DbusDaemon::start().unwrap(), DbusDaemon::start().unwrap());
    let mut a = spawn(&cp, &bus_a, "cm-a");
    let mut b = spawn(&cp, &bus_b, "cm-b");
    let (pa, pb) = (proxy(&bus_a).await, proxy(&bus_b).await);

    let start = Instant::now();
    let a_leads = loop {
        let (la, lb) = (pa.is_leader().await.unwrap(), pb.is_leader().await.unwrap());
        assert!(!(la && lb), "two leaders at once");
        if la || lb {
            break la;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nobody leads:\n{}\n{}",
            a.log_tail(20),
            b.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ctrls = pa.controllers().await.unwrap();
    assert!(
        ctrls.contains(&"deployment-controller".to_string())
            && !ctrls.contains(&"node-lifecycle-controller".to_string()),
        "{ctrls:?}"
    );
    assert!(pa
        .queue_depths()
        .await
        .unwrap()
        .contains_key("replicaset-controller"));
    assert!(pb
        .last_errors()
        .await
        .unwrap()
        .contains_key("garbage-collector-controller"));

    // Kill the leader without a clean release: the other takes over after the lease expires.
    let (leader, standby, sp) = if a_leads {
        (&mut a, &mut b, &pb)
    } else {
        (&mut b, &mut a, &pa)
    };
    leader.kill9();
    let killed = Instant::now();
    loop {
        if sp.is_leader().await.unwrap_or(false) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "standby never took over:\n{}",
            standby.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cp.kubectl_ok(&[
        "create",
        "deployment",
        "after",
        "--image=registry.invalid/x:1",
    ])
    .unwrap();
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    loop {
        let l = rss
            .list(&ListParams::default().labels("app=after"))
            .await
            .unwrap()
            .items;
        if l.len() == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "new leader did not reconcile:\n{}",
            standby.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
