//! The node controller (inventory → addresses, labels, taint) and the service controller's
//! bookkeeping: conflicts reported as events with no status, type changes free addresses,
//! allocations survive a restart. No network namespaces needed.
//!
//! Needs `cargo build -p kelson-kv -p kelson-apiserver` first.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Event, Node, Service};
use kelson_testsupport::ControlPlane;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const CONFIG: &str = r#"
[[nodes]]
name = "inv-1"
zone = "zone-a"
region = "region-1"
instance-type = "metal.large"
addresses = [{ type = "InternalIP", address = "192.0.2.11" }, { type = "ExternalIP", address = "198.51.100.11" }]

[[pools]]
name = "main"
ranges = ["10.88.0.10-10.88.0.12"]

[[pools]]
name = "tiny"
cidr = "10.89.0.5/32"
"#;

const TAINT: &str = "node.cloudprovider.kubernetes.io/uninitialized";

async fn lb(svcs: &Api<Service>, name: &str, ip: Option<&str>, annotations: serde_json::Value) {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"type": "LoadBalancer", "loadBalancerIP": ip, "ports": [{"port": 80}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
}

async fn ingress(svcs: &Api<Service>, name: &str) -> Vec<String> {
    svcs.get(name)
        .await
        .ok()
        .and_then(|s| s.status?.load_balancer?.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .collect()
}

async fn event_for(client: &kube::Client, svc: &str, reason: &str) -> Option<String> {
    let evs: Api<Event> = Api::namespaced(client.clone(), "default");
    evs.list(&ListParams::default())
        .await
        .ok()?
        .items
        .into_iter()
        .find(|e| {
            e.involved_object.name.as_deref() == Some(svc) && e.reason.as_deref() == Some(reason)
        })
        .and_then(|e| e.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_inventory_conflicts_and_restart() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    let client = cp.client().await.unwrap();
    let taint = json!([{"key": TAINT, "value": "true", "effect": "NoSchedule"}]);
    create_node(&client, "inv-1", taint.clone()).await;
    create_node(&client, "stray", taint).await;
    let mut ccm = start_ccm(&cp, "ccm", CONFIG, &["--leader-elect=false"]);
    let log_path = cp.dir().join("ccm.log");
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Node controller: the inventory node is initialized, the stray one is reported.
    let nodes: Api<Node> = Api::all(client.clone());
    let n = wait("inv-1 to be initialized", 20, logs, || async {
        let n = nodes.get("inv-1").await.ok()?;
        let tainted = n
            .spec
            .as_ref()?
            .taints
            .as_ref()
            .is_some_and(|t| t.iter().any(|t| t.key == TAINT));
        (!tainted).then_some(n)
    })
    .await;
    let labels = n.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("topology.kubernetes.io/zone")
            .map(String::as_str),
        Some("zone-a")
    );
    assert_eq!(
        labels
            .get("topology.kubernetes.io/region")
            .map(String::as_str),
        Some("region-1")
    );
    assert_eq!(
        labels
            .get("node.kubernetes.io/instance-type")
            .map(String::as_str),
        Some("metal.large")
    );
    let addrs: Vec<(String, String)> = n
        .status
        .unwrap()
        .addresses
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect();
    assert!(
        addrs.contains(&("InternalIP".into(), "192.0.2.11".into())),
        "{addrs:?}"
    );
    assert!(
        addrs.contains(&("ExternalIP".into(), "198.51.100.11".into())),
        "{addrs:?}"
    );
    assert!(
        addrs.contains(&("Hostname".into(), "inv-1".into())),
        "{addrs:?}"
    );
    let evs: Api<Event> = Api::namespaced(client.clone(), "default");
    wait("an event for the stray node", 10, logs, || async {
        evs.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some("stray")
                    && e.reason.as_deref() == Some("InventoryLookupFailed")
            })
    })
    .await;
    let stray = nodes.get("stray").await.unwrap();
    assert!(
        stray
            .spec
            .unwrap()
            .taints
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == TAINT),
        "a node outside the inventory keeps the taint"
    );

    // Service controller: allocation, then each kind of conflict.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    lb(&svcs, "a", None, json!(null)).await;
    wait("a to get the first address", 20, logs, || async {
        (ingress(&svcs, "a").await == ["10.88.0.10"]).then_some(())
    })
    .await;
    let a = svcs.get("a").await.unwrap();
    assert!(
        a.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"service.kubernetes.io/load-balancer-cleanup".to_string()),
        "the cleanup finalizer is set"
    );

    lb(&svcs, "outside", Some("192.168.200.1"), json!(null)).await;
    lb(&svcs, "taken", Some("10.88.0.10"), json!(null)).await;
    lb(
        &svcs,
        "bad",
        None,
        json!({"kelson.io/loadbalancer-ips": "not-an-ip"}),
    )
    .await;
    lb(&svcs, "t1", None, json!({"kelson.io/address-pool": "tiny"})).await;
    lb(&svcs, "t2", None, json!({"kelson.io/address-pool": "tiny"})).await;
    lb(
        &svcs,
        "wanted",
        None,
        json!({"kelson.io/loadbalancer-ips": "10.88.0.12"}),
    )
    .await;
    for (svc, needle) in [
        ("outside", "not in any configured address pool"),
        ("taken", "already in use by service default/a"),
        ("bad", "\"not-an-ip\" is not an IP address"),
        ("t2", "no available IPv4 addresses in pool(s) tiny"),
    ] {
        let msg = wait(
            &format!("SyncLoadBalancerFailed on {svc}"),
            15,
            logs,
            || async { event_for(&client, svc, "SyncLoadBalancerFailed").await },
        )
        .await;
        assert!(msg.contains(needle), "{svc}: {msg}");
        assert!(
            ingress(&svcs, svc).await.is_empty(),
            "{svc} must have no status"
        );
    }
    wait("t1 and wanted to be allocated", 10, logs, || async {
        (ingress(&svcs, "t1").await == ["10.89.0.5"]
            && ingress(&svcs, "wanted").await == ["10.88.0.12"])
        .then_some(())
    })
    .await;

    // Type change frees the address: t1 → ClusterIP; t2 (waiting on the same pool) gets it.
    svcs.patch(
        "t1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
    )
    .await
    .unwrap();
    wait(
        "t1 to lose status and finalizer, t2 to get 10.89.0.5",
        15,
        logs,
        || async {
            let t1 = svcs.get("t1").await.ok()?;
            let fin = t1.metadata.finalizers.unwrap_or_default();
            (fin.is_empty()
                && ingress(&svcs, "t1").await.is_empty()
                && ingress(&svcs, "t2").await == ["10.89.0.5"])
            .then_some(())
        },
    )
    .await;

    // Restart: allocations are rebuilt from status, so nothing moves and a new Service gets a
    // free address, not a duplicate.
    ccm.terminate(Duration::from_secs(10)).unwrap();
    let _ccm2 = start_ccm(&cp, "ccm2", CONFIG, &["--leader-elect=false"]);
    let log2 = cp.dir().join("ccm2.log");
    let logs2 = || std::fs::read_to_string(&log2).unwrap_or_default();
    lb(&svcs, "after-restart", None, json!(null)).await;
    wait(
        "after-restart to get the one free address",
        20,
        logs2,
        || async { (ingress(&svcs, "after-restart").await == ["10.88.0.11"]).then_some(()) },
    )
    .await;
    assert_eq!(ingress(&svcs, "a").await, ["10.88.0.10"]);
    assert_eq!(ingress(&svcs, "wanted").await, ["10.88.0.12"]);
    assert_eq!(ingress(&svcs, "t2").await, ["10.89.0.5"]);
    assert!(ingress(&svcs, "taken").await.is_empty());
    assert!(cp
        .kubectl_ok(&["get", "svc", "a"])
        .unwrap()
        .contains("10.88.0.10"));
}
