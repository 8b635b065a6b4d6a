//! Pods and routes that come from outside the pod API: static pods from a manifest directory
//! (run, mirrored into the API, stopped when the file goes) and routes to other nodes'
//! podCIDRs, applied inside a network namespace this test creates (the host's routing table is
//! never touched). Needs root, containerd, runc, CNI plugins, busybox-static, iproute2 and
//! `cargo build -p kelson-kv -p kelson-apiserver -p kelson-kubelet`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TestNode, BUSYBOX};
use k8s_openapi::api::core::v1::Node;
use kelson_testsupport::{wait_for, wait_until};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// A network namespace with a veth link on 192.168.77.0/24; deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Netns {
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("running ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", name]);
        let ns = Netns(name.to_string());
        // Both ends of a veth pair inside the namespace: a connected subnet, no host link.
        ip(&[
            "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ]);
        ip(&["-n", name, "addr", "add", "192.168.77.1/24", "dev", "d0"]);
        ip(&["-n", name, "link", "set", "d1", "up"]);
        ip(&["-n", name, "link", "set", "d0", "up"]);
        ns
    }

    fn routes(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0, "route", "show", "proto", "77"])
            .output()
            .expect("running ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

async fn add_node(nodes: &Api<Node>, name: &str, cidr: &str, ip: &str) {
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &n).await.unwrap();
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
            ),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pods_are_mirrored_and_routes_follow_nodes() {
    let manifests = tempfile::tempdir().unwrap();
    let ns_name = format!("kr{:04x}", std::process::id() & 0xffff);
    let netns = Netns::create(&ns_name);
    let node = TestNode::start(
        14,
        &[
            format!("--pod-manifest-path={}", manifests.path().display()),
            "--file-check-frequency=1".into(),
            "--pod-routes=true".into(),
            format!("--pod-routes-netns={ns_name}"),
        ],
    )
    .await;

    // Routes: a reachable node gets one, an unreachable one does not; changes and deletes follow.
    let nodes: Api<Node> = Api::all(node.client.clone());
    add_node(
        &nodes,
        &format!("{}-b", node.node_name),
        "10.253.1.0/24",
        "192.168.77.2",
    )
    .await;
    add_node(
        &nodes,
        &format!("{}-c", node.node_name),
        "10.253.2.0/24",
        "203.0.113.5",
    )
    .await;
    wait_until(Duration::from_secs(10), "route to node b", || async {
        netns
            .routes()
            .contains("10.253.1.0/24 via 192.168.77.2 dev d0")
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nroutes: {}\nkubelet log:\n{}",
            netns.routes(),
            node.log_tail()
        )
    });
    assert!(
        !netns.routes().contains("10.253.2.0/24"),
        "{}",
        netns.routes()
    );
    assert!(
        !netns.routes().contains("10.252.14.0/24"),
        "own podCIDR routed"
    );
    nodes
        .patch_status(
            &format!("{}-b", node.node_name),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.3"}]}})),
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "route follows the new address",
        || async {
            let r = netns.routes();
            r.contains("10.253.1.0/24 via 192.168.77.3") && !r.contains("192.168.77.2")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nroutes: {}", netns.routes()));
    nodes
        .delete(&format!("{}-b", node.node_name), &DeleteParams::default())
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "route removed with the node",
        || async { netns.routes().trim().is_empty() },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nroutes: {}", netns.routes()));

    // Static pod: runs, mirrored (annotation, owner = the Node), status on the mirror.
    std::fs::write(
        manifests.path().join("web.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {{app: web}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '3600']\n"
        ),
    )
    .unwrap();
    std::fs::write(manifests.path().join("broken.yaml"), "kind: Pod\nspec: [\n").unwrap();
    let mirror_name = format!("web-{}", node.node_name);
    let mirror = wait_for(Duration::from_secs(30), "mirror pod Running", || async {
        let p = node.pods.get(&mirror_name).await?;
        let phase = p.status.as_ref().and_then(|s| s.phase.clone());
        anyhow::ensure!(phase.as_deref() == Some("Running"), "phase {phase:?}");
        Ok(p)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
    let ann = mirror.metadata.annotations.clone().unwrap_or_default();
    let hash = ann
        .get("kubernetes.io/config.mirror")
        .cloned()
        .unwrap_or_else(|| panic!("no mirror annotation: {ann:?}"));
    assert_eq!(ann["kubernetes.io/config.source"], "file");
    let owner = &mirror.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Node", node.node_name.as_str())
    );
    let running = node.containers_of(&hash).await;
    assert_eq!(running.len(), 1, "{running:?}");

    // Deleting the mirror through the API does not stop the static pod; the mirror comes back.
    node.pods
        .delete(&mirror_name, &DeleteParams::default())
        .await
        .unwrap();
    let old_uid = mirror.metadata.uid.clone().unwrap();
    wait_until(Duration::from_secs(20), "mirror pod recreated", || async {
        node.pods
            .get_opt(&mirror_name)
            .await
            .ok()
            .flatten()
            .is_some_and(|p| {
                p.metadata.uid.as_deref() != Some(old_uid.as_str())
                    && p.metadata.deletion_timestamp.is_none()
            })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
    let after = node.containers_of(&hash).await;
    assert_eq!(
        after.iter().map(|c| &c.id).collect::<Vec<_>>(),
        running.iter().map(|c| &c.id).collect::<Vec<_>>(),
        "the static pod's container was restarted"
    );

    // Removing the file stops the pod and deletes the mirror.
    std::fs::remove_file(manifests.path().join("web.yaml")).unwrap();
    wait_until(Duration::from_secs(20), "mirror pod deleted", || async {
        matches!(node.pods.get_opt(&mirror_name).await, Ok(None))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
    assert!(node.containers_of(&hash).await.is_empty());
}

/// Node IPAM assigns the podCIDR after the node registered: the kubelet must notice at once
/// (a watch on its Node), not at its next status post — with the 10 s default that kept the
/// first pods of `kelsonctl up` in ContainerCreating for ~10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cidr_assigned_after_registration_is_used_at_once() {
    let node = TestNode::start(0, &["--node-status-update-frequency=60".into()]).await;
    node.create(
        "early",
        json!({"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]}),
    )
    .await;
    node.wait_status("early", 20, "waiting for the network", |st| {
        st["containerStatuses"][0]["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no podCIDR"))
    })
    .await;
    let nodes: Api<Node> = Api::all(node.client.clone());
    let t0 = std::time::Instant::now();
    nodes
        .patch(
            &node.node_name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"podCIDR": "10.252.15.0/24", "podCIDRs": ["10.252.15.0/24"]}}),
            ),
        )
        .await
        .unwrap();
    let st = node
        .wait_status("early", 20, "Running", |st| st["phase"] == "Running")
        .await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "Running {took:?} after the podCIDR was set"
    );
    assert!(
        st["podIP"].as_str().unwrap_or("").starts_with("10.252.15."),
        "{st}"
    );
}
