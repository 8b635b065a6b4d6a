//! kelson-scheduler against a real control plane (kelson-kv + kelson-apiserver) with simulated
//! Nodes (objects only, no kubelet): placement rules, FailedScheduling, preemption, and leader
//! election failover between two instances.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kelson_testsupport::{wait_for, ChildGuard, ControlPlane};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{json, Value};

fn spawn_scheduler(cp: &ControlPlane, name: &str, extra: &[&str]) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelson-scheduler"));
    cmd.arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["--no-dbus", "--log-level", "info,kube=warn"])
        .args(extra);
    ChildGuard::spawn(name, cmd, &cp.dir().join(format!("{name}.log"))).unwrap()
}

async fn create_node(client: &kube::Client, name: &str, cpu: &str, labels: Value, taints: Value) {
    let mut labels = if labels.is_null() { json!({}) } else { labels };
    labels["kubernetes.io/hostname"] = json!(name);
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {
            "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
    .unwrap();
    let api: Api<Node> = Api::all(client.clone());
    let created = api.create(&PostParams::default(), &node).await.unwrap();
    // Some servers drop status on create; make sure it is there.
    if created
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .is_none()
    {
        let st = json!({"status": node.status});
        api.patch_status(name, &Default::default(), &kube::api::Patch::Merge(&st))
            .await
            .unwrap();
    }
}

async fn create_pod(client: &kube::Client, name: &str, labels: Value, spec: Value) {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": spec
    }))
    .unwrap();
    match Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
    {
        Ok(_) => {}
        // The client retries a create the server answered with 503/504 after committing it.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating pod {name}: {e}"),
    }
}

fn cpu(c: &str) -> Value {
    json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": c}}}]})
}

async fn node_of(client: &kube::Client, pod: &str) -> Option<String> {
    Api::<Pod>::namespaced(client.clone(), "default")
        .get(pod)
        .await
        .ok()
        .and_then(|p| p.spec.and_then(|s| s.node_name))
}

async fn wait_bound(client: &kube::Client, pod: &str, log: &Path) -> String {
    wait_for(
        Duration::from_secs(20),
        &format!("pod {pod} bound"),
        || async {
            node_of(client, pod)
                .await
                .ok_or_else(|| anyhow::anyhow!("not bound"))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- scheduler log ---\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn placement_rules_failed_scheduling_and_recovery() {
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client().await.unwrap();
    for z in 0..3 {
        create_node(
            &client,
            &format!("z{z}"),
            "4",
            json!({"topology.kubernetes.io/zone": format!("zone-{z}")}),
            json!(null),
        )
        .await;
    }
    create_node(
        &client,
        "gpu",
        "4",
        json!({"accel": "gpu"}),
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    )
    .await;
    let _s = spawn_scheduler(&cp, "sched", &["--leader-elect=false"]);
    let log = cp.dir().join("sched.log");

    // Zone spread: 6 replicas over 3 zones land 2/2/2 (the gpu node has no zone label).
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}],
        "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100m"}}}]});
    for i in 0..6 {
        create_pod(
            &client,
            &format!("web-{i}"),
            json!({"app": "web"}),
            spread.clone(),
        )
        .await;
    }
    let mut per_node = std::collections::BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(wait_bound(&client, &format!("web-{i}"), &log).await)
            .or_insert(0) += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{per_node:?}"
    );

    // Anti-affinity keeps replicas apart.
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}}}]}}});
    for i in 0..3 {
        create_pod(
            &client,
            &format!("db-{i}"),
            json!({"app": "db"}),
            anti.clone(),
        )
        .await;
    }
    let mut db_nodes = std::collections::BTreeSet::new();
    for i in 0..3 {
        db_nodes.insert(wait_bound(&client, &format!("db-{i}"), &log).await);
    }
    assert_eq!(db_nodes.len(), 3, "{db_nodes:?}");
    assert!(!db_nodes.contains("gpu"));

    // Tolerations + node affinity: only a tolerating pod reaches the gpu node.
    let gpu_aff = |tolerate: bool| {
        let mut v = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "accel", "operator": "In", "values": ["gpu"]}]}]}}}});
        if tolerate {
            v["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
        }
        v
    };
    create_pod(&client, "trainer", json!({}), gpu_aff(true)).await;
    assert_eq!(wait_bound(&client, "trainer", &log).await, "gpu");

    // Resource fit / unschedulable: nothing has 10 CPUs.
    create_pod(&client, "huge", json!({}), cpu("10")).await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let msg = wait_for(
        Duration::from_secs(20),
        "FailedScheduling event",
        || async {
            let list = events.list(&ListParams::default()).await?;
            list.items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("FailedScheduling")
                        && e.involved_object.name.as_deref() == Some("huge")
                })
                .and_then(|e| e.message)
                .ok_or_else(|| anyhow::anyhow!("no event yet"))
        },
    )
    .await
    .unwrap();
    assert!(
        msg.starts_with("0/4 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 3 Insufficient cpu. preemption: 0/4 nodes are available:"),
        "{msg}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cond = wait_for(Duration::from_secs(10), "PodScheduled=False", || async {
        let p = pods.get("huge").await?;
        p.status
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "PodScheduled"))
            .ok_or_else(|| anyhow::anyhow!("no condition"))
    })
    .await
    .unwrap();
    assert_eq!(cond.status, "False");
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    // The untolerating gpu pod stays pending too.
    create_pod(&client, "no-toleration", json!({}), gpu_aff(false)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(node_of(&client, "no-toleration").await, None);

    // A fitting node appears: the pod schedules there promptly (node-added event).
    create_node(
        &client,
        "big",
        "16",
        json!({"topology.kubernetes.io/zone": "zone-0"}),
        json!(null),
    )
    .await;
    assert_eq!(wait_bound(&client, "huge", &log).await, "big");
    // Successful binds are reported (the event is written right after the binding).
    wait_for(Duration::from_secs(10), "Scheduled event", || async {
        let list = events.list(&ListParams::default()).await?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("Scheduled")
                    && e.message.as_deref() == Some("Successfully assigned default/huge to big")
            })
            .map(|_| ())
            .ok_or_else(|| anyhow::anyhow!("no Scheduled event"))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn high_priority_pod_preempts_lower_priority_one() {
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client().await.unwrap();
    create_node(&client, "small", "1", json!(null), json!(null)).await;
    let pc: PriorityClass = serde_json::from_value(json!({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "high"}, "value": 1000
    }))
    .unwrap();
    Api::<PriorityClass>::all(client.clone())
        .create(&PostParams::default(), &pc)
        .await
        .unwrap();
    let _s = spawn_scheduler(&cp, "sched", &["--leader-elect=false"]);
    let log = cp.dir().join("sched.log");
    create_pod(&client, "low", json!({}), cpu("800m")).await;
    assert_eq!(wait_bound(&client, "low", &log).await, "small");

    let mut spec = cpu("500m");
    spec["priorityClassName"] = json!("high");
    create_pod(&client, "high", json!({}), spec).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_for(Duration::from_secs(20), "victim deleted", || async {
        match pods.get_opt("low").await? {
            None => Ok(()),
            Some(p) if p.metadata.deletion_timestamp.is_some() => Ok(()),
            Some(_) => anyhow::bail!("low still there"),
        }
    })
    .await
    .unwrap();
    // The preemptor is nominated to the node while the victim terminates.
    let nominated = wait_for(Duration::from_secs(10), "nominatedNodeName", || async {
        pods.get("high")
            .await?
            .status
            .and_then(|s| s.nominated_node_name)
            .ok_or_else(|| anyhow::anyhow!("not nominated"))
    })
    .await
    .unwrap();
    assert_eq!(nominated, "small");
    // Play the kubelet: finish the graceful deletion; the preemptor then fits.
    let _ = pods
        .delete(
            "low",
            &kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(wait_bound(&client, "high", &log).await, "small");
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_selector_in_affinity_terms_follows_namespace_labels() {
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client().await.unwrap();
    create_node(&client, "n1", "4", json!(null), json!(null)).await;
    create_node(&client, "n2", "4", json!(null), json!(null)).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "team-a", "labels": {"team": "a"}}
    }))
    .unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
    // A db pod in team-a, already on n1.
    let db: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db0", "labels": {"app": "db"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), "team-a")
        .create(&PostParams::default(), &db)
        .await
        .unwrap();
    let _s = spawn_scheduler(&cp, "sched", &["--leader-elect=false"]);
    let log = cp.dir().join("sched.log");
    let term = |kind: &str, sel: Value| {
        json!({"affinity": {kind: {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}},
             "namespaceSelector": sel}]}}})
    };
    // Anti-affinity to db pods in namespaces labelled team=a: away from n1.
    create_pod(
        &client,
        "away",
        json!({}),
        term("podAntiAffinity", json!({"matchLabels": {"team": "a"}})),
    )
    .await;
    assert_eq!(wait_bound(&client, "away", &log).await, "n2");
    // Affinity to db pods in namespaces labelled tier=data: none yet, so unschedulable ...
    create_pod(
        &client,
        "near",
        json!({}),
        term("podAffinity", json!({"matchLabels": {"tier": "data"}})),
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_for(
        Duration::from_secs(20),
        "FailedScheduling for near",
        || async {
            let l = events
                .list(&ListParams::default().fields("involvedObject.name=near"))
                .await?;
            l.items
                .iter()
                .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
                .map(|e| e.message.clone().unwrap_or_default())
                .ok_or_else(|| anyhow::anyhow!("no FailedScheduling event yet"))
        },
    )
    .await
    .map(|m| assert!(m.contains("didn't match pod affinity rules"), "{m}"))
    .unwrap();
    assert_eq!(node_of(&client, "near").await, None);
    // ... until team-a gets the label: the namespace event re-activates the pod.
    nss.patch(
        "team-a",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"labels": {"tier": "data"}}})),
    )
    .await
    .unwrap();
    assert_eq!(wait_bound(&client, "near", &log).await, "n1");
}

fn holder(l: &Lease) -> Option<String> {
    l.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_one_leader_and_failover() {
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client().await.unwrap();
    create_node(&client, "n1", "4", json!(null), json!(null)).await;
    let fast = [
        "--leader-elect-lease-duration",
        "3s",
        "--leader-elect-renew-deadline",
        "2s",
        "--leader-elect-retry-period",
        "500ms",
    ];
    let mut a = spawn_scheduler(&cp, "sched-a", &fast);
    let mut b = spawn_scheduler(&cp, "sched-b", &fast);
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let first = wait_for(Duration::from_secs(20), "a Lease holder", || async {
        let l = leases.get("kube-scheduler").await?;
        holder(&l)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow::anyhow!("no holder"))
    })
    .await
    .unwrap();
    // Let both settle, then exactly one says it leads.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leading = |g: &ChildGuard| g.log().contains("became leader");
    assert!(
        leading(&a) ^ leading(&b),
        "a:\n{}\nb:\n{}",
        a.log_tail(20),
        b.log_tail(20)
    );
    create_pod(&client, "p1", json!({}), json!({})).await;
    wait_bound(&client, "p1", &cp.dir().join("sched-a.log")).await;

    // Kill the leader hard (no lease release): the other takes over within the lease duration.
    let (leader, standby) = if leading(&a) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    leader.kill9();
    let killed_at = std::time::Instant::now();
    let second = wait_for(Duration::from_secs(10), "a new Lease holder", || async {
        let l = leases.get("kube-scheduler").await?;
        holder(&l)
            .filter(|h| *h != first)
            .ok_or_else(|| anyhow::anyhow!("still held by {first}"))
    })
    .await
    .unwrap();
    // Lease 3 s + one retry period + slack for a loaded CI box.
    assert!(
        killed_at.elapsed() < Duration::from_secs(7),
        "{:?}",
        killed_at.elapsed()
    );
    assert_ne!(second, first);
    create_pod(&client, "p2", json!({}), json!({})).await;
    assert_eq!(wait_bound(&client, "p2", standby.log_path()).await, "n1");
    assert!(standby.is_running());
}

/// User+system CPU seconds of process `pid` so far (`/proc/<pid>/stat`, USER_HZ = 100).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc stat");
    let rest = &stat[stat.rfind(')').expect("stat has a comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// Every bound pod gets exactly one upstream-style Scheduled event and the PodScheduled
/// condition, written through the scheduler's multiplexed writer; and a scheduler without
/// leader election idles without burning CPU (it used to spin on the closed election channel).
#[tokio::test(flavor = "multi_thread")]
async fn one_scheduled_event_per_pod_and_an_idle_loop_that_sleeps() {
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client().await.unwrap();
    create_node(&client, "n1", "4", json!(null), json!(null)).await;
    create_node(&client, "n2", "4", json!(null), json!(null)).await;
    let sched = spawn_scheduler(&cp, "sched", &["--leader-elect=false"]);
    let log = cp.dir().join("sched.log");
    const PODS: usize = 30;
    for i in 0..PODS {
        create_pod(&client, &format!("e-{i}"), json!({"app": "e"}), cpu("10m")).await;
    }
    let mut nodes = Vec::new();
    for i in 0..PODS {
        nodes.push(wait_bound(&client, &format!("e-{i}"), &log).await);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..PODS {
        let p = pods.get(&format!("e-{i}")).await.unwrap();
        let conds = p.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(
            conds
                .iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "True"),
            "e-{i}: {conds:?}"
        );
    }
    // Events are written right after each binding; wait (bounded) for all of them.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let scheduled = wait_for(Duration::from_secs(20), "a Scheduled event per pod", || {
        let events = events.clone();
        async move {
            let evs: Vec<Event> = events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("Scheduled"))
                .collect();
            if evs.len() >= PODS {
                Ok(evs)
            } else {
                anyhow::bail!("{} Scheduled events so far", evs.len())
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        scheduled.len(),
        PODS,
        "one Scheduled event per pod, no more"
    );
    for (i, node) in nodes.iter().enumerate() {
        let name = format!("e-{i}");
        let ev: Vec<&Event> = scheduled
            .iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name.as_str()))
            .collect();
        assert_eq!(ev.len(), 1, "{name}: {ev:?}");
        assert_eq!(ev[0].type_.as_deref(), Some("Normal"));
        assert_eq!(
            ev[0].message.as_deref(),
            Some(format!("Successfully assigned default/{name} to {node}").as_str())
        );
        assert_eq!(ev[0].involved_object.kind.as_deref(), Some("Pod"));
    }
    // Idle: nothing to schedule for 3 s. A spinning loop would use ~3 s of CPU here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = cpu_seconds(sched.pid());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = cpu_seconds(sched.pid()) - cpu0;
    assert!(
        idle < 0.5,
        "the idle scheduler used {idle:.2} s of CPU in 3 s (busy loop?)"
    );
}

/// Deleting a Node can make a pending pod schedulable (a topology domain disappears, so a hard
/// spread constraint is satisfied again): like upstream's PodTopologySpread, which registers
/// for Node deletes, the scheduler retries unschedulable pods then, not at the 5-minute flush.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_node_retries_pods_its_zone_kept_pending() {
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client().await.unwrap();
    create_node(
        &client,
        "za",
        "4",
        json!({"topology.kubernetes.io/zone": "zone-a"}),
        json!(null),
    )
    .await;
    // Zone b exists only through a node no pod here tolerates.
    create_node(
        &client,
        "zb",
        "4",
        json!({"topology.kubernetes.io/zone": "zone-b"}),
        json!([{"key": "dedicated", "value": "other", "effect": "NoSchedule"}]),
    )
    .await;
    // One pod already runs in zone a.
    create_pod(
        &client,
        "anchor",
        json!({"app": "spread"}),
        json!({"nodeName": "za", "containers": [{"name": "c", "image": "busybox"}]}),
    )
    .await;
    let _s = spawn_scheduler(&cp, "sched", &["--leader-elect=false"]);
    let log = cp.dir().join("sched.log");

    // A second one would make zone a two ahead of zone b: it stays Pending.
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}],
        "containers": [{"name": "c", "image": "busybox"}]});
    create_pod(&client, "second", json!({"app": "spread"}), spread).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_for(
        Duration::from_secs(20),
        "second marked unschedulable",
        || async {
            let p = pods.get("second").await?;
            let unschedulable = p
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable"));
            anyhow::ensure!(unschedulable, "not yet");
            Ok(())
        },
    )
    .await
    .unwrap();
    assert_eq!(node_of(&client, "second").await, None);

    // Zone b goes away with its only node: the constraint holds on za, and the scheduler
    // retries at once (bounded well below the 5-minute flush of unschedulable pods).
    Api::<Node>::all(client.clone())
        .delete("zb", &Default::default())
        .await
        .unwrap();
    assert_eq!(wait_bound(&client, "second", &log).await, "za");
}
