//! Test harness: a control plane (kelson-kv + kelson-apiserver), the controller manager
//! binary, and fake nodes.
//!
//! The fake nodes stand in for kubelets (and the scheduler): they register Nodes with zone
//! labels, renew their Leases in kube-node-lease, bind unscheduled pods round-robin to live
//! nodes, report bound pods Running with an IP and Ready (unless the pod is labelled
//! `fake-ready: "false"`), and finish deleting pods that are terminating. A node can be
//! "stopped": it stops renewing its Lease and leaves its pods alone. Pods with a required
//! `matchFields metadata.name` node affinity (daemon pods) are bound to that node, as the
//! scheduler would; pods labelled `fake-exit: "0"` (or any other code) finish a moment after
//! running, as Succeeded (or Failed) — a stand-in kubelet for Job pods (an Indexed Job's pod
//! annotated `fake-exit-<its index>` exits with that code instead).

#![allow(dead_code)]

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kelson_testsupport::{ChildGuard, ControlPlane};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use parking_lot::Mutex;
use serde_json::json;

pub struct Env {
    pub cm: ChildGuard,
    pub cp: ControlPlane,
    pub client: Client,
    pub nodes: FakeNodes,
}

impl Env {
    /// Control plane + controller manager (`extra` flags) + `nodes` fake nodes `(name, zone)`.
    pub async fn start(extra: &[&str], nodes: &[(&str, &str)]) -> Env {
        let cp = ControlPlane::start().await.expect("control plane starts");
        let client = cp.client().await.expect("client");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelson-controller-manager"));
        cmd.arg("--kubeconfig")
            .arg(cp.kubeconfig_path())
            .args([
                "--no-dbus",
                "--leader-elect=false",
                "--log-level",
                "info,kelson_controller_manager=debug",
            ])
            .arg("--root-ca-file")
            .arg(cp.dir().join("pki/ca.crt"))
            .args(extra);
        let cm = ChildGuard::spawn("kelson-controller-manager", cmd, &cp.dir().join("cm.log"))
            .expect("cm starts");
        let nodes = FakeNodes::start(client.clone(), nodes).await;
        Env {
            cm,
            cp,
            client,
            nodes,
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        match self.cp.kubectl_ok(args) {
            Ok(s) => s,
            Err(e) => panic!(
                "{e}\n--- controller manager log ---\n{}",
                self.cm.log_tail(40)
            ),
        }
    }

    /// Events about `kind/name` in the default namespace, as `kubectl describe` finds them.
    pub async fn events_for(&self, kind: &str, name: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        api.list(&ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name}"
        )))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    }

    /// Polls `f` every 200 ms until it returns Some, at most `secs`.
    pub async fn wait<T, F, Fut>(&self, what: &str, secs: u64, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(v) = f().await {
                return v;
            }
            if start.elapsed() > Duration::from_secs(secs) {
                panic!(
                    "timed out waiting for {what}\n--- controller manager log ---\n{}",
                    self.cm.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// How many of `pods` have not finished (neither Succeeded nor Failed).
pub fn unfinished(pods: &[Pod]) -> usize {
    pods.iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            )
        })
        .count()
}

#[derive(Clone)]
pub struct FakeNodes {
    pub stopped: Arc<Mutex<HashSet<String>>>,
    names: Vec<String>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeNodes {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl FakeNodes {
    pub async fn start(client: Client, nodes: &[(&str, &str)]) -> FakeNodes {
        let ns: Api<Namespace> = Api::all(client.clone());
        let _ = ns
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "kube-node-lease"}})).unwrap(),
            )
            .await;
        let napi: Api<Node> = Api::all(client.clone());
        for (name, zone) in nodes {
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}},
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": Timestamp::now().to_string(), "lastTransitionTime": Timestamp::now().to_string()}]}
            }))
            .unwrap();
            napi.create(&PostParams::default(), &node)
                .await
                .expect("create node");
            // Status is a subresource: set it explicitly in case create dropped it.
            let _ = napi
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": node.status})),
                )
                .await;
        }
        let stopped: Arc<Mutex<HashSet<String>>> = Arc::default();
        let names: Vec<String> = nodes.iter().map(|(n, _)| n.to_string()).collect();
        let task = tokio::spawn(run(client, names.clone(), stopped.clone()));
        FakeNodes {
            stopped,
            names,
            task: Arc::new(task),
        }
    }

    pub fn stop(&self, node: &str) {
        self.stopped.lock().insert(node.to_string());
    }
}

/// The node a required `matchFields metadata.name In [n]` affinity pins a pod to.
fn pinned_node(p: &Pod) -> Option<String> {
    let terms = &p
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

async fn run(client: Client, nodes: Vec<String>, stopped: Arc<Mutex<HashSet<String>>>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let pods: Api<Pod> = Api::all(client.clone());
    let mut rr = 0usize;
    let mut tick = 0u64;
    loop {
        let live: Vec<String> = nodes
            .iter()
            .filter(|n| !stopped.lock().contains(*n))
            .cloned()
            .collect();
        if tick.is_multiple_of(5) {
            for n in &live {
                let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": n, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": n, "leaseDurationSeconds": 40, "renewTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}});
                let patched = leases
                    .patch(n, &PatchParams::default(), &Patch::Merge(&lease))
                    .await;
                if patched.is_err() {
                    let l: Lease = serde_json::from_value(lease).unwrap();
                    let _ = leases.create(&PostParams::default(), &l).await;
                }
            }
        }
        tick += 1;
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for p in list.items {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let name = p.metadata.name.clone().unwrap_or_default();
                let papi: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                if let Some(n) = &node {
                    if stopped.lock().contains(n) || !nodes.contains(n) {
                        continue;
                    }
                }
                if p.metadata.deletion_timestamp.is_some() {
                    let _ = papi
                        .delete(
                            &name,
                            &DeleteParams {
                                grace_period_seconds: Some(0),
                                ..Default::default()
                            },
                        )
                        .await;
                    continue;
                }
                let Some(node) = node else {
                    if live.is_empty() {
                        continue;
                    }
                    let pinned = pinned_node(&p);
                    let target = match &pinned {
                        Some(n) if live.contains(n) => n,
                        Some(_) => continue,
                        None => {
                            rr += 1;
                            &live[(rr - 1) % live.len()]
                        }
                    };
                    let b = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": target}});
                    let _: Result<serde_json::Value, _> = papi
                        .create_subresource("binding", &name, &PostParams::default(), &b)
                        .await;
                    continue;
                };
                let want_ready = p
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("fake-ready"))
                    .map(String::as_str)
                    != Some("false");
                let is_ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                if matches!(phase, Some("Succeeded") | Some("Failed")) {
                    continue;
                }
                let running = phase == Some("Running");
                // An Indexed Job's pod may have its own code: annotation `fake-exit-<index>`.
                let ann = p.metadata.annotations.as_ref();
                let by_index = ann
                    .and_then(|a| a.get("batch.kubernetes.io/job-completion-index"))
                    .and_then(|i| ann?.get(&format!("fake-exit-{i}")))
                    .cloned();
                let exit = by_index.or_else(|| {
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("fake-exit"))
                        .cloned()
                });
                if running {
                    if let Some(code) = exit {
                        // Finished: containers exit with `code`.
                        let ok = code == "0";
                        let now = Timestamp::now().to_string();
                        let code_n: i32 = code.parse().unwrap_or(1);
                        let statuses: Vec<serde_json::Value> = p.spec.as_ref().map(|s| s.containers.iter().map(|c| json!({
                            "name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": code_n, "reason": if ok { "Completed" } else { "Error" }, "finishedAt": now}}})).collect()).unwrap_or_default();
                        let status = json!({"status": {"phase": if ok { "Succeeded" } else { "Failed" }, "containerStatuses": statuses,
                            "conditions": [
                                {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                                {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}]}});
                        let _ = papi
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                            .await;
                        continue;
                    }
                }
                if running && is_ready == want_ready {
                    continue;
                }
                let idx = nodes.iter().position(|n| *n == node).unwrap_or(0);
                let ip = format!(
                    "10.{}.{}.{}",
                    100 + idx,
                    (fnv(&name) >> 8) % 250,
                    fnv(&name) % 250 + 2
                );
                let st = if want_ready { "True" } else { "False" };
                let now = Timestamp::now().to_string();
                let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.0.2.1", "startTime": now,
                    "conditions": [
                        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                        {"type": "ContainersReady", "status": st, "lastTransitionTime": now},
                        {"type": "Ready", "status": st, "lastTransitionTime": now},
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}]}});
                let _ = papi
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}
