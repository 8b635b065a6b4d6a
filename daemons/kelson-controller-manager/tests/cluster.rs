//! Garbage collection, namespaces, endpoints and node lifecycle against a real control plane.

mod common;

use std::time::Duration;

use common::Env;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

async fn count<K>(api: &Api<K>, labels: &str) -> usize
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default().labels(labels))
        .await
        .map(|l| l.items.len())
        .unwrap_or(usize::MAX)
}

/// `kubectl create deployment <name>` with `replicas`, waited for until rolled out.
fn rolled_out_deployment(env: &Env, name: &str, replicas: u32) {
    env.kubectl(&[
        "create",
        "deployment",
        name,
        "--image=registry.invalid/x:1",
        &format!("--replicas={replicas}"),
    ]);
    env.kubectl(&[
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout=60s",
    ]);
}

/// Deployment `name` is gone and left its one ReplicaSet behind without an owner.
async fn orphaned(deps: &Api<Deployment>, rss: &Api<ReplicaSet>, name: &str) -> Option<()> {
    let gone = deps.get_opt(name).await.ok()?.is_none();
    let l = rss
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await
        .ok()?
        .items;
    let free = l.len() == 1
        && l[0]
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty());
    (gone && free).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_policies() {
    let env = Env::start(&[], &[("n1", "a")]).await;
    let rss: Api<ReplicaSet> = Api::namespaced(env.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let deps: Api<Deployment> = Api::namespaced(env.client.clone(), "default");

    // Background (kubectl's default): the Deployment goes at once, the GC removes the rest.
    rolled_out_deployment(&env, "bg", 2);
    env.kubectl(&["delete", "deployment", "bg", "--cascade=background"]);
    env.wait("background cascade", 30, || async {
        (count(&rss, "app=bg").await == 0 && count(&pods, "app=bg").await == 0).then_some(())
    })
    .await;

    // Orphan: an owner carrying the orphan finalizer; dependents lose the reference and stay.
    rolled_out_deployment(&env, "or", 1);
    deps.patch(
        "or",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["orphan"]}})),
    )
    .await
    .unwrap();
    deps.delete("or", &DeleteParams::orphan()).await.unwrap();
    env.wait("orphaned replica set", 30, || orphaned(&deps, &rss, "or"))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&pods, "app=or").await, 1, "orphaned pods stay");

    // Foreground: the owner (foregroundDeletion finalizer) is deleted only after its dependents.
    rolled_out_deployment(&env, "fg", 2);
    deps.patch(
        "fg",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["foregroundDeletion"]}})),
    )
    .await
    .unwrap();
    deps.delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    env.wait("foreground cascade", 30, || async {
        let d = deps.get_opt("fg").await.ok()?;
        if d.is_some() {
            return None;
        }
        Some(())
    })
    .await;
    assert_eq!(
        count(&rss, "app=fg").await,
        0,
        "dependents went before the owner"
    );

    // Through kubectl: the API server records --cascade as the finalizer the GC acts on.
    rolled_out_deployment(&env, "ko", 1);
    env.kubectl(&["delete", "deployment", "ko", "--cascade=orphan"]);
    env.wait(
        "kubectl --cascade=orphan keeps the replica set, unowned",
        30,
        || orphaned(&deps, &rss, "ko"),
    )
    .await;
    rolled_out_deployment(&env, "kf", 2);
    env.kubectl(&[
        "delete",
        "deployment",
        "kf",
        "--cascade=foreground",
        "--timeout=30s",
    ]);
    env.wait("kubectl --cascade=foreground", 30, || async {
        let gone = deps.get_opt("kf").await.ok()?.is_none();
        (gone && count(&rss, "app=kf").await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_serviceaccounts_root_ca() {
    let env = Env::start(&[], &[("n1", "a")]).await;
    env.kubectl(&["create", "namespace", "team"]);
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), "team");
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "team");
    env.wait("default SA and root CA", 30, || async {
        let sa = sas.get_opt("default").await.ok()??;
        let cm = cms.get_opt("kube-root-ca.crt").await.ok()??;
        let ca = std::fs::read_to_string(env.cp.dir().join("pki/ca.crt")).ok()?;
        (sa.metadata.name.is_some() && cm.data?.get("ca.crt") == Some(&ca)).then_some(())
    })
    .await;
    // Deleted SA comes back; an edited root CA is restored.
    sas.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    cms.patch(
        "kube-root-ca.crt",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ca.crt": "tampered"}})),
    )
    .await
    .unwrap();
    env.wait("repair", 30, || async {
        let ok_sa = sas.get_opt("default").await.ok()?.is_some();
        let ok_cm = cms
            .get_opt("kube-root-ca.crt")
            .await
            .ok()??
            .data?
            .get("ca.crt")
            .is_some_and(|c| c.contains("BEGIN CERTIFICATE"));
        (ok_sa && ok_cm).then_some(())
    })
    .await;
    env.kubectl(&[
        "-n",
        "team",
        "create",
        "deployment",
        "app",
        "--image=registry.invalid/x:1",
        "--replicas=2",
    ]);
    env.kubectl(&[
        "-n",
        "team",
        "create",
        "configmap",
        "settings",
        "--from-literal=a=b",
    ]);
    env.kubectl(&[
        "-n",
        "team",
        "rollout",
        "status",
        "deployment/app",
        "--timeout=60s",
    ]);
    env.kubectl(&["delete", "namespace", "team", "--wait=false"]);
    let nss: Api<Namespace> = Api::all(env.client.clone());
    env.wait("namespace emptied and gone", 60, || async {
        nss.get_opt("team").await.ok()?.is_none().then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "team");
    assert_eq!(count(&pods, "").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_readiness() {
    let env = Env::start(&[], &[("n1", "zone-a"), ("n2", "zone-b")]).await;
    env.kubectl(&[
        "create",
        "deployment",
        "api",
        "--image=registry.invalid/x:1",
        "--replicas=2",
        "--port=8080",
    ]);
    env.kubectl(&[
        "expose",
        "deployment",
        "api",
        "--port=80",
        "--target-port=8080",
    ]);
    env.kubectl(&["rollout", "status", "deployment/api", "--timeout=60s"]);
    let eps: Api<Endpoints> = Api::namespaced(env.client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(env.client.clone(), "default");
    env.wait("2 ready endpoints", 30, || async {
        let e = eps.get_opt("api").await.ok()??;
        let s = e.subsets?.into_iter().next()?;
        (s.addresses?.len() == 2 && s.ports?[0].port == 8080).then_some(())
    })
    .await;
    env.wait("slice with zones", 30, || async {
        let l = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
            .await
            .ok()?
            .items;
        let s = l.first()?;
        let zones: Vec<_> = s.endpoints.iter().filter_map(|e| e.zone.clone()).collect();
        let ready = s
            .endpoints
            .iter()
            .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true));
        (l.len() == 1
            && s.endpoints.len() == 2
            && ready
            && zones.contains(&"zone-a".to_string())
            && zones.contains(&"zone-b".to_string()))
        .then_some(())
    })
    .await;
    // One pod turns not ready: it moves to notReadyAddresses and ready=false in the slice.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let victim = pods
        .list(&ListParams::default().labels("app=api"))
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    env.kubectl(&["label", "pod", &victim, "fake-ready=false"]);
    env.wait("not-ready endpoint", 30, || async {
        let s = eps
            .get_opt("api")
            .await
            .ok()??
            .subsets?
            .into_iter()
            .next()?;
        let nr = s.not_ready_addresses?;
        let sl = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
            .await
            .ok()?
            .items;
        let e = sl
            .first()?
            .endpoints
            .iter()
            .find(|e| {
                e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(victim.as_str())
            })?
            .clone();
        let c = e.conditions?;
        (s.addresses?.len() == 1
            && nr.len() == 1
            && c.ready == Some(false)
            && c.serving == Some(false))
        .then_some(())
    })
    .await;
    env.kubectl(&["delete", "service", "api"]);
    env.wait("endpoints removed with the service", 30, || async {
        let gone = eps.get_opt("api").await.ok()?.is_none();
        let none = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
            .await
            .ok()?
            .items
            .is_empty();
        (gone && none).then_some(())
    })
    .await;
}

fn has_taint(n: &Node, key: &str, effect: &str) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == key && t.effect == effect))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_lifecycle_taints_and_evicts() {
    let env = Env::start(
        &[
            "--node-monitor-grace-period=3s",
            "--node-monitor-period=500ms",
            "--cluster-cidr=10.244.0.0/16",
            "--node-eviction-rate=0.25",
        ],
        &[
            ("n1", "a"),
            ("n2", "a"),
            ("n3", "b"),
            ("n4", "b"),
            ("n5", "b"),
        ],
    )
    .await;
    let nodes: Api<Node> = Api::all(env.client.clone());
    env.wait("pod CIDRs", 30, || async {
        let l = nodes.list(&ListParams::default()).await.ok()?.items;
        let mut cidrs: Vec<String> = l
            .iter()
            .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
            .collect();
        cidrs.sort();
        cidrs.dedup();
        (cidrs.len() == 5
            && cidrs
                .iter()
                .all(|c| c.starts_with("10.244.") && c.ends_with("/24")))
        .then_some(())
    })
    .await;
    // Pods tolerate unreachable for 2 s: evicted and replaced soon after the taint.
    let d = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec:\n  replicas: 5\n  selector: {matchLabels: {app: w}}\n  template:\n    metadata: {labels: {app: w}}\n    spec:\n      tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}]\n      containers: [{name: c, image: registry.invalid/x:1}]\n";
    assert!(env
        .cp
        .kubectl_stdin(&["apply", "-f", "-"], Some(d))
        .status
        .success());
    env.kubectl(&["rollout", "status", "deployment/w", "--timeout=60s"]);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let on = |node: &'static str| {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().labels("app=w"))
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .filter(|p| {
                            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                                && p.metadata.deletion_timestamp.is_none()
                        })
                        .count()
                })
        }
    };
    assert!(on("n1").await.unwrap() >= 1);
    env.nodes.stop("n1");
    env.wait("n1 NotReady and tainted", 30, || async {
        let n = nodes.get("n1").await.ok()?;
        let ready = n
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")?
            .status
            .clone();
        (ready == "Unknown" && has_taint(&n, "node.kubernetes.io/unreachable", "NoExecute"))
            .then_some(())
    })
    .await;
    // Its pods go (the fake kubelet on n1 is dead; the harness finishes deletions only for live
    // nodes, so check deletion was requested) and replacements land elsewhere.
    env.wait("pods evicted from n1 and replaced", 30, || async {
        let l = pods
            .list(&ListParams::default().labels("app=w"))
            .await
            .ok()?
            .items;
        let live_on_n1 = l
            .iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("n1")
                    && p.metadata.deletion_timestamp.is_none()
            })
            .count();
        let active_elsewhere = l
            .iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some("n1")
                    && p.metadata.deletion_timestamp.is_none()
            })
            .count();
        (live_on_n1 == 0 && active_elsewhere == 5).then_some(())
    })
    .await;
    // Upstream's events: on the Node (node-controller, uid = node name), NodeNotReady on its
    // pods, and TaintManagerEviction for each eviction.
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    let evs = env
        .wait("node lifecycle events", 20, || async {
            let evs = events.list(&ListParams::default()).await.ok()?.items;
            let has = |reason: &str, kind: &str, msg: &dyn Fn(&str) -> bool| {
                evs.iter().any(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.involved_object.kind.as_deref() == Some(kind)
                        && e.message.as_deref().is_some_and(msg)
                })
            };
            (has("RegisteredNode", "Node", &|m| {
                m == "Node n1 event: Registered Node n1 in Controller"
            }) && has("NodeNotReady", "Node", &|m| {
                m == "Node n1 status is now: NodeNotReady"
            }) && has("NodeNotReady", "Pod", &|m| m == "Node is not ready")
                && has("TaintManagerEviction", "Pod", &|m| {
                    m.starts_with("Marking for deletion Pod default/w-")
                }))
            .then_some(evs)
        })
        .await;
    let node_ev = evs
        .iter()
        .find(|e| {
            e.reason.as_deref() == Some("NodeNotReady")
                && e.involved_object.kind.as_deref() == Some("Node")
        })
        .unwrap();
    assert_eq!(node_ev.involved_object.uid.as_deref(), Some("n1"));
    assert_eq!(
        node_ev.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("node-controller")
    );
    let evicted = evs
        .iter()
        .find(|e| e.reason.as_deref() == Some("TaintManagerEviction"))
        .unwrap();
    assert_eq!(
        evicted.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("taint-eviction-controller")
    );

    // A whole zone going dark while another zone is healthy: upstream evicts it, but at
    // --node-eviction-rate (0.25 nodes/s here), one node at a time.
    for n in ["n3", "n4", "n5"] {
        env.nodes.stop(n);
    }
    let tainted = env
        .wait("zone b tainted NoExecute, node by node", 60, || async {
            let l = nodes.list(&ListParams::default()).await.ok()?.items;
            let mut added: Vec<i64> = Vec::new();
            for n in &l {
                if !["n3", "n4", "n5"].contains(&n.metadata.name.as_deref().unwrap_or_default()) {
                    continue;
                }
                let t = n.spec.as_ref()?.taints.as_ref()?.iter().find(|t| {
                    t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"
                })?;
                added.push(t.time_added.as_ref()?.0.as_second());
            }
            added.sort();
            (added.len() == 3).then_some(added)
        })
        .await;
    for w in tainted.windows(2) {
        // 4 s apart by the limiter; timeAdded has whole seconds.
        assert!(
            w[1] - w[0] >= 3,
            "NoExecute taints not rate limited: {tainted:?}"
        );
    }
    env.wait("zone b's pods replaced in zone a", 60, || async {
        let elsewhere = on("n2").await.ok()?;
        (elsewhere == 5).then_some(())
    })
    .await;

    // Every zone dark: the controller trusts its own view no more, adds no NoExecute and takes
    // back the ones it set, so nothing more is evicted.
    env.nodes.stop("n2");
    env.wait("no NoExecute when every zone is down", 30, || async {
        let l = nodes.list(&ListParams::default()).await.ok()?.items;
        let all_unknown_no_execute_free = l.iter().all(|n| {
            has_taint(n, "node.kubernetes.io/unreachable", "NoSchedule")
                && !has_taint(n, "node.kubernetes.io/unreachable", "NoExecute")
        });
        all_unknown_no_execute_free.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        on("n2").await.unwrap(),
        5,
        "no evictions when every zone is down"
    );
}

#[test]
fn zone_states_and_eviction_rates_follow_upstream() {
    use kelson_controller_manager::controllers::nodelifecycle::{zone_state, ZoneState};
    assert_eq!(zone_state(3, 0, 0.55), ZoneState::Normal);
    assert_eq!(zone_state(1, 1, 0.55), ZoneState::FullDisruption);
    assert_eq!(zone_state(5, 5, 0.55), ZoneState::FullDisruption);
    // Two unhealthy nodes are never a partial disruption, whatever the fraction.
    assert_eq!(zone_state(3, 2, 0.55), ZoneState::Normal);
    assert_eq!(zone_state(5, 3, 0.55), ZoneState::PartialDisruption);
    assert_eq!(zone_state(10, 3, 0.55), ZoneState::Normal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_conditions_and_cordon_become_noschedule_taints() {
    let env = Env::start(&["--node-monitor-period=500ms"], &[("n1", "a")]).await;
    let nodes: Api<Node> = Api::all(env.client.clone());
    let conditions = |memory: &str| {
        let now = Timestamp::now().to_string();
        json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "MemoryPressure", "status": memory, "reason": "KubeletHasInsufficientMemory", "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "DiskPressure", "status": "False", "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
    };
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(conditions("True")),
        )
        .await
        .unwrap();
    env.kubectl(&["cordon", "n1"]);
    let n = env
        .wait("pressure and cordon taints", 30, || async {
            let n = nodes.get("n1").await.ok()?;
            (has_taint(&n, "node.kubernetes.io/memory-pressure", "NoSchedule")
                && has_taint(&n, "node.kubernetes.io/unschedulable", "NoSchedule"))
            .then_some(n)
        })
        .await;
    // Only what the conditions say: no disk-pressure, and a Ready node is not tainted not-ready.
    assert!(!has_taint(
        &n,
        "node.kubernetes.io/disk-pressure",
        "NoSchedule"
    ));
    assert!(!has_taint(&n, "node.kubernetes.io/not-ready", "NoSchedule"));
    // The condition clears and the node is uncordoned: both taints go, nothing else is touched.
    env.kubectl(&["taint", "node", "n1", "example.com/keep=yes:NoSchedule"]);
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(conditions("False")),
        )
        .await
        .unwrap();
    env.kubectl(&["uncordon", "n1"]);
    env.wait("taints lifted", 30, || async {
        let n = nodes.get("n1").await.ok()?;
        (!has_taint(&n, "node.kubernetes.io/memory-pressure", "NoSchedule")
            && !has_taint(&n, "node.kubernetes.io/unschedulable", "NoSchedule")
            && has_taint(&n, "example.com/keep", "NoSchedule"))
        .then_some(())
    })
    .await;
}
