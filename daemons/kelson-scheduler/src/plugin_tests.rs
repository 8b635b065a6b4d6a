//! Plugin and algorithm tests on in-memory snapshots (no API server).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

use crate::framework::{num_feasible_nodes_to_find, preempt, Algorithm};
use crate::nodeinfo::{NodeInfo, PodInfo, Snapshot};
use crate::plugins::Weights;

fn node(name: &str, cpu: &str, mem: &str, labels: Value, taints: Value) -> NodeInfo {
    let mut labels = labels;
    if labels.is_null() {
        labels = json!({});
    }
    labels["kubernetes.io/hostname"] = json!(name);
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"}}
    }))
    .unwrap();
    NodeInfo::new(Arc::new(n))
}

fn pod(name: &str, spec: Value) -> Arc<PodInfo> {
    pod_l(name, json!({}), spec, 0)
}

fn pod_l(name: &str, labels: Value, mut spec: Value, prio: i32) -> Arc<PodInfo> {
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
    }
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels},
        "spec": spec
    }))
    .unwrap();
    Arc::new(PodInfo::new(Arc::new(p), prio))
}

fn cpu(c: &str) -> Value {
    json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": c}}}]})
}

fn snap(nodes: Vec<NodeInfo>) -> Snapshot {
    Snapshot::new(nodes.into_iter().map(Arc::new).collect())
}

fn with_pods(mut n: NodeInfo, pods: Vec<Arc<PodInfo>>) -> NodeInfo {
    for p in pods {
        n.add_pod(p);
    }
    n
}

fn alg() -> Algorithm {
    Algorithm::new(Weights::default(), 0)
}

fn place(s: &Snapshot, p: Arc<PodInfo>) -> Result<String, String> {
    alg()
        .schedule(p, s)
        .map(|i| s.nodes[i].name.clone())
        .map_err(|e| e.message())
}

#[test]
fn resource_fit_and_message() {
    let s = snap(vec![
        with_pods(
            node("a", "1", "1Gi", json!(null), json!(null)),
            vec![pod("x", cpu("800m"))],
        ),
        node("b", "2", "1Gi", json!(null), json!(null)),
        node(
            "c",
            "1",
            "1Gi",
            json!(null),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        ),
    ]);
    assert_eq!(place(&s, pod("p", cpu("500m"))).unwrap(), "b");
    let msg = place(&s, pod("p", cpu("3"))).unwrap_err();
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu."
    );
    // Extended resources and memory are checked too.
    let spec = json!({"containers": [{"name": "c", "resources": {"requests": {"example.com/gpu": "1", "memory": "2Gi"}}}]});
    let msg = place(&s, pod("p", spec)).unwrap_err();
    assert!(
        msg.contains("2 Insufficient example.com/gpu") && msg.contains("2 Insufficient memory"),
        "{msg}"
    );
}

#[test]
fn taints_and_tolerations() {
    let s = snap(vec![node(
        "t",
        "4",
        "4Gi",
        json!(null),
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}, {"key": "soft", "effect": "PreferNoSchedule"}]),
    )]);
    assert!(place(&s, pod("p", json!({}))).is_err());
    let tol = json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]});
    assert_eq!(place(&s, pod("p", tol)).unwrap(), "t");
    let wrong = json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "cpu"}]});
    assert!(place(&s, pod("p", wrong)).is_err());
    let all = json!({"tolerations": [{"operator": "Exists"}]});
    assert_eq!(place(&s, pod("p", all)).unwrap(), "t");
    // PreferNoSchedule does not filter but scores lower.
    let s = snap(vec![
        node(
            "soft",
            "4",
            "4Gi",
            json!(null),
            json!([{"key": "soft", "effect": "PreferNoSchedule"}]),
        ),
        node("plain", "4", "4Gi", json!(null), json!(null)),
    ]);
    assert_eq!(place(&s, pod("p", json!({}))).unwrap(), "plain");
}

#[test]
fn node_affinity_selector_name_ports_unschedulable() {
    let s = snap(vec![
        node(
            "a",
            "4",
            "4Gi",
            json!({"disk": "ssd", "zone": "z1"}),
            json!(null),
        ),
        node(
            "b",
            "4",
            "4Gi",
            json!({"disk": "hdd", "zone": "z2"}),
            json!(null),
        ),
    ]);
    assert_eq!(
        place(&s, pod("p", json!({"nodeSelector": {"disk": "hdd"}}))).unwrap(),
        "b"
    );
    let aff = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}});
    assert_eq!(place(&s, pod("p", aff)).unwrap(), "a");
    let none = json!({"nodeSelector": {"disk": "nvme"}});
    assert_eq!(
        place(&s, pod("p", none)).unwrap_err(),
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    );
    // Preferred affinity steers among feasible nodes.
    let pref = json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2"]}]}}]}}});
    assert_eq!(place(&s, pod("p", pref)).unwrap(), "b");
    assert_eq!(place(&s, pod("p", json!({"nodeName": "a"}))).unwrap(), "a");

    let hp =
        json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
    let s2 = snap(vec![
        with_pods(
            node("a", "4", "4Gi", json!(null), json!(null)),
            vec![pod("x", hp.clone())],
        ),
        node("b", "4", "4Gi", json!(null), json!(null)),
    ]);
    assert_eq!(place(&s2, pod("p", hp.clone())).unwrap(), "b");
    let mut cordoned = node("b", "4", "4Gi", json!(null), json!(null));
    cordoned.unschedulable = true;
    let s3 = snap(vec![
        with_pods(
            node("a", "4", "4Gi", json!(null), json!(null)),
            vec![pod("x", hp.clone())],
        ),
        cordoned,
    ]);
    assert_eq!(
        place(&s3, pod("p", hp)).unwrap_err(),
        "0/2 nodes are available: 1 node(s) didn't have free ports for the requested pod ports, 1 node(s) were unschedulable."
    );
}

fn zones(counts: &[usize]) -> Snapshot {
    let mut nodes = Vec::new();
    for (z, &c) in counts.iter().enumerate() {
        let mut n = node(
            &format!("n{z}"),
            "100",
            "100Gi",
            json!({"topology.kubernetes.io/zone": format!("z{z}")}),
            json!(null),
        );
        for i in 0..c {
            n.add_pod(pod_l(
                &format!("w{z}-{i}"),
                json!({"app": "web"}),
                json!({}),
                0,
            ));
        }
        nodes.push(n);
    }
    snap(nodes)
}

#[test]
fn topology_spread_hard_and_soft() {
    let spread = |when: &str| {
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": when, "labelSelector": {"matchLabels": {"app": "web"}}}]})
    };
    let s = zones(&[2, 1, 2]);
    assert_eq!(
        place(
            &s,
            pod_l("p", json!({"app": "web"}), spread("DoNotSchedule"), 0)
        )
        .unwrap(),
        "n1"
    );
    assert_eq!(
        place(
            &s,
            pod_l("p", json!({"app": "web"}), spread("ScheduleAnyway"), 0)
        )
        .unwrap(),
        "n1"
    );
    // Skew already at max everywhere but z1: only z1 is feasible.
    let s = zones(&[2, 1, 2]);
    let mut a = alg();
    let st = crate::plugins::CycleState::prepare(
        pod_l("p", json!({"app": "web"}), spread("DoNotSchedule"), 0),
        &s,
    );
    assert!(crate::plugins::filter(&st, &s.nodes[0]).is_err());
    assert!(crate::plugins::filter(&st, &s.nodes[1]).is_ok());
    let _ = a.schedule(pod("q", json!({})), &s);
    // A node without the topology key cannot take a pod with a hard constraint.
    let s = snap(vec![node("nolabel", "4", "4Gi", json!(null), json!(null))]);
    assert_eq!(
        place(&s, pod_l("p", json!({"app": "web"}), spread("DoNotSchedule"), 0)).unwrap_err(),
        "0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label)."
    );
    // Sequential placement over 3 empty zones lands evenly.
    let mut nodes: Vec<NodeInfo> = (0..3)
        .map(|z| {
            node(
                &format!("n{z}"),
                "100",
                "100Gi",
                json!({"topology.kubernetes.io/zone": format!("z{z}")}),
                json!(null),
            )
        })
        .collect();
    let mut a = alg();
    for i in 0..9 {
        let s = snap(nodes.clone());
        let p = pod_l(
            &format!("r{i}"),
            json!({"app": "web"}),
            spread("DoNotSchedule"),
            0,
        );
        let idx = a.schedule(p.clone(), &s).unwrap();
        nodes[idx].add_pod(p);
    }
    let counts: Vec<usize> = nodes.iter().map(|n| n.pods.len()).collect();
    assert_eq!(counts, vec![3, 3, 3]);
}

#[test]
fn inter_pod_affinity_and_anti_affinity() {
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}}}]}}});
    let s = snap(vec![
        with_pods(
            node("a", "4", "4Gi", json!(null), json!(null)),
            vec![pod_l("db0", json!({"app": "db"}), anti.clone(), 0)],
        ),
        node("b", "4", "4Gi", json!(null), json!(null)),
    ]);
    // The incoming pod's own anti-affinity keeps it off a.
    assert_eq!(
        place(&s, pod_l("db1", json!({"app": "db"}), anti.clone(), 0)).unwrap(),
        "b"
    );
    // The existing pod's anti-affinity also rejects a plain pod with the matching label.
    assert_eq!(
        place(&s, pod_l("x", json!({"app": "db"}), json!({}), 0)).unwrap(),
        "b"
    );
    // Existing pods' rules are checked first (upstream order) ...
    let s1 = snap(vec![with_pods(
        node("a", "4", "4Gi", json!(null), json!(null)),
        vec![pod_l("db0", json!({"app": "db"}), anti.clone(), 0)],
    )]);
    assert_eq!(
        place(&s1, pod_l("db1", json!({"app": "db"}), anti.clone(), 0)).unwrap_err(),
        "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules."
    );
    // ... then the incoming pod's own.
    let s1 = snap(vec![with_pods(
        node("a", "4", "4Gi", json!(null), json!(null)),
        vec![pod_l("db0", json!({"app": "db"}), json!({}), 0)],
    )]);
    assert_eq!(
        place(&s1, pod_l("db1", json!({"app": "db"}), anti, 0)).unwrap_err(),
        "0/1 nodes are available: 1 node(s) didn't match pod anti-affinity rules."
    );
    // Required affinity: next to a cache pod; the first pod of its own group may go anywhere.
    let aff = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "cache"}}}]}}});
    let s = snap(vec![
        node("a", "4", "4Gi", json!(null), json!(null)),
        with_pods(
            node("b", "4", "4Gi", json!(null), json!(null)),
            vec![pod_l("c0", json!({"app": "cache"}), json!({}), 0)],
        ),
    ]);
    assert_eq!(
        place(&s, pod_l("w", json!({}), aff.clone(), 0)).unwrap(),
        "b"
    );
    let empty = snap(vec![node("a", "4", "4Gi", json!(null), json!(null))]);
    assert_eq!(
        place(&empty, pod_l("c1", json!({"app": "cache"}), aff.clone(), 0)).unwrap(),
        "a"
    );
    assert_eq!(
        place(&empty, pod_l("w", json!({}), aff, 0)).unwrap_err(),
        "0/1 nodes are available: 1 node(s) didn't match pod affinity rules."
    );
    // Preferred anti-affinity spreads.
    let pref = json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "cache"}}}}]}}});
    assert_eq!(
        place(&s, pod_l("c2", json!({"app": "cache"}), pref, 0)).unwrap(),
        "a"
    );
}

fn pod_ns(name: &str, ns: &str, labels: Value, spec: Value) -> Arc<PodInfo> {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
    }
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "labels": labels},
        "spec": spec
    }))
    .unwrap();
    Arc::new(PodInfo::new(Arc::new(p), 0))
}

/// A required pod (anti-)affinity term on the hostname over pods labelled app=`app`, with the
/// given `namespaces` and `namespaceSelector` (JSON null = absent).
fn term(kind: &str, app: &str, namespaces: Value, selector: Value) -> Value {
    let mut t = json!({"topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": {"app": app}}});
    if !namespaces.is_null() {
        t["namespaces"] = namespaces;
    }
    if !selector.is_null() {
        t["namespaceSelector"] = selector;
    }
    json!({"affinity": {kind: {"requiredDuringSchedulingIgnoredDuringExecution": [t]}}})
}

#[test]
fn namespace_selector_in_affinity_terms() {
    // A db pod in namespace team-a on node a; node b is empty.
    let mut s = snap(vec![
        with_pods(
            node("a", "4", "4Gi", json!(null), json!(null)),
            vec![pod_ns("db0", "team-a", json!({"app": "db"}), json!({}))],
        ),
        node("b", "4", "4Gi", json!(null), json!(null)),
    ]);
    for (ns, team) in [("team-a", "a"), ("team-b", "b")] {
        s.namespaces
            .insert(ns.into(), [("team".to_string(), team.to_string())].into());
    }
    s.namespaces.insert("default".into(), Default::default());
    let place_ns = |s: &Snapshot, spec: Value| place(s, pod_ns("w", "default", json!({}), spec));
    let aff = |ns: Value, sel: Value| term("podAffinity", "db", ns, sel);
    let unschedulable =
        "0/2 nodes are available: 2 node(s) didn't match pod affinity rules.".to_string();

    // Selected by label: next to the db pod in team-a.
    let by_label = json!({"matchLabels": {"team": "a"}});
    assert_eq!(
        place_ns(&s, aff(json!(null), by_label.clone())).unwrap(),
        "a"
    );
    // A selector matching other namespaces only: nothing to be next to.
    let other = json!({"matchLabels": {"team": "b"}});
    assert_eq!(
        place_ns(&s, aff(json!(null), other.clone())),
        Err(unschedulable.clone())
    );
    // `{}` selects every namespace.
    assert_eq!(place_ns(&s, aff(json!(null), json!({}))).unwrap(), "a");
    // Listed namespaces and the selector are united.
    assert_eq!(
        place_ns(&s, aff(json!(["team-a"]), other.clone())).unwrap(),
        "a"
    );
    assert_eq!(
        place_ns(&s, aff(json!(["team-b"]), by_label.clone())).unwrap(),
        "a"
    );
    assert_eq!(
        place_ns(&s, aff(json!(["team-b"]), json!(null))),
        Err(unschedulable.clone())
    );
    // Neither: the pod's own namespace only.
    assert_eq!(
        place_ns(&s, aff(json!(null), json!(null))),
        Err(unschedulable.clone())
    );
    // Expressions work on namespace labels too; a namespace without labels matches only
    // selectors that accept no labels.
    let expr =
        json!({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "c"]}]});
    assert_eq!(place_ns(&s, aff(json!(null), expr)).unwrap(), "a");

    // Anti-affinity of the incoming pod with a selector keeps it off a.
    let anti = term("podAntiAffinity", "db", json!(null), by_label.clone());
    assert_eq!(place_ns(&s, anti).unwrap(), "b");

    // An existing pod's anti-affinity with a selector rejects pods from selected namespaces
    // only (the incoming pod's namespace labels decide).
    let mut s2 = snap(vec![
        with_pods(
            node("a", "4", "4Gi", json!(null), json!(null)),
            vec![pod_ns(
                "guard",
                "team-a",
                json!({"app": "guard"}),
                term(
                    "podAntiAffinity",
                    "web",
                    json!(null),
                    json!({"matchLabels": {"team": "b"}}),
                ),
            )],
        ),
        node("b", "4", "4Gi", json!(null), json!(null)),
    ]);
    s2.namespaces = s.namespaces.clone();
    let one_node = |s: &Snapshot| {
        let mut only_a = snap(vec![s.nodes[0].as_ref().clone()]);
        only_a.namespaces = s.namespaces.clone();
        only_a
    };
    let only_a = one_node(&s2);
    assert_eq!(
        place(
            &only_a,
            pod_ns("web", "team-b", json!({"app": "web"}), json!({}))
        ),
        Err(
            "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules."
                .to_string()
        )
    );
    assert_eq!(
        place(
            &only_a,
            pod_ns("web", "default", json!({"app": "web"}), json!({}))
        )
        .unwrap(),
        "a"
    );
    // Relabelling a namespace changes the outcome (the snapshot is the informer's view).
    let mut relabelled = one_node(&s2);
    relabelled.namespaces.insert(
        "default".into(),
        [("team".to_string(), "b".to_string())].into(),
    );
    assert!(place(
        &relabelled,
        pod_ns("web", "default", json!({"app": "web"}), json!({}))
    )
    .is_err());
}

#[test]
fn scores_least_allocated_and_image_locality() {
    let s = snap(vec![
        with_pods(
            node("busy", "4", "8Gi", json!(null), json!(null)),
            vec![pod("x", cpu("3"))],
        ),
        node("idle", "4", "8Gi", json!(null), json!(null)),
    ]);
    assert_eq!(place(&s, pod("p", cpu("100m"))).unwrap(), "idle");
    let img = |name: &str, images: Value| {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}, "images": images}
        }))
        .unwrap();
        NodeInfo::new(Arc::new(n))
    };
    let s = snap(vec![
        img("cold", json!([])),
        img(
            "warm",
            json!([{"names": ["docker.io/library/bigimage:1"], "sizeBytes": 900_000_000i64}]),
        ),
    ]);
    let p = pod(
        "p",
        json!({"containers": [{"name": "c", "image": "bigimage:1"}]}),
    );
    assert_eq!(place(&s, p).unwrap(), "warm");
}

#[test]
fn preemption_picks_lowest_priority_victims_and_honors_pdbs() {
    let s = snap(vec![
        with_pods(
            node("a", "1", "4Gi", json!(null), json!(null)),
            vec![pod_l("low-a", json!({"app": "a"}), cpu("800m"), 10)],
        ),
        with_pods(
            node("b", "1", "4Gi", json!(null), json!(null)),
            vec![pod_l("low-b", json!({"app": "b"}), cpu("800m"), 5)],
        ),
        with_pods(
            node("c", "1", "4Gi", json!(null), json!(null)),
            vec![pod_l("high-c", json!({}), cpu("800m"), 2000)],
        ),
    ]);
    let hi = pod_l("hi", json!({}), cpu("500m"), 1000);
    let err = alg().schedule(hi.clone(), &s).unwrap_err();
    let plan = preempt(hi.clone(), &s, &err, &|_| false).unwrap();
    assert_eq!(s.nodes[plan.node].name, "b");
    assert_eq!(plan.victims.len(), 1);
    assert_eq!(plan.victims[0].name, "low-b");
    // A PDB protecting low-b moves the choice to a.
    let plan = preempt(hi.clone(), &s, &err, &|p| p.name == "low-b").unwrap();
    assert_eq!(s.nodes[plan.node].name, "a");
    assert_eq!(plan.pdb_violations, 0);
    // A low-priority pod cannot preempt anything.
    let lo = pod_l("lo", json!({}), cpu("500m"), 0);
    let err = alg().schedule(lo.clone(), &s).unwrap_err();
    let msg = preempt(lo, &s, &err, &|_| false).unwrap_err();
    assert_eq!(
        msg,
        "preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );
    // preemptionPolicy Never.
    let never = pod_l(
        "n",
        json!({}),
        json!({"preemptionPolicy": "Never", "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}),
        1000,
    );
    assert!(preempt(never, &s, &err, &|_| false)
        .unwrap_err()
        .contains("preemptionPolicy=Never"));
}

#[test]
fn sampling_like_upstream() {
    assert_eq!(num_feasible_nodes_to_find(0, 50), 50);
    assert_eq!(num_feasible_nodes_to_find(0, 5000), 5000 * 10 / 100);
    assert_eq!(num_feasible_nodes_to_find(0, 1000), 1000 * 42 / 100);
    assert_eq!(num_feasible_nodes_to_find(0, 200), 100);
    assert_eq!(num_feasible_nodes_to_find(0, 150), 100);
    assert_eq!(num_feasible_nodes_to_find(100, 5000), 5000);
}

#[test]
fn big_cluster_attempts_are_fast_enough_in_debug() {
    let nodes: Vec<NodeInfo> = (0..5000)
        .map(|i| {
            node(
                &format!("n{i}"),
                "32",
                "64Gi",
                json!({"topology.kubernetes.io/zone": format!("z{}", i % 3)}),
                json!(null),
            )
        })
        .collect();
    let s = snap(nodes);
    let mut a = alg();
    let start = std::time::Instant::now();
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        let idx = a.schedule(pod(&format!("p{i}"), cpu("100m")), &s).unwrap();
        seen.insert(idx);
    }
    // Rotation spreads the search start; bound generously (debug build, shared CI cores).
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(seen.len() > 1);
}

#[test]
fn nominated_pods_hold_their_room_against_lower_priority_pods() {
    let mut s = snap(vec![
        node("a", "1", "4Gi", json!(null), json!(null)),
        node("b", "2", "4Gi", json!(null), json!(null)),
    ]);
    // A preemptor of priority 10 waits for node a (1 cpu) with 800m.
    let preemptor = pod_l("pre", json!({}), cpu("800m"), 10);
    let nominated = vec![("a".to_string(), preemptor.clone())];
    let before = format!(
        "{:?}",
        s.nodes
            .iter()
            .map(|n| n.requested.clone())
            .collect::<Vec<_>>()
    );
    // Without the nomination, LeastAllocated would not matter for a: force a by node name.
    let low = pod_l(
        "low",
        json!({}),
        json!({"nodeName": "a", "containers": [{"name": "c",
        "image": "busybox", "resources": {"requests": {"cpu": "500m"}}}]}),
        5,
    );
    let err = alg()
        .schedule_with_nominated(low.clone(), &mut s, &nominated)
        .map(|i| s.nodes[i].name.clone())
        .expect_err("a lower-priority pod must not take the nominated room");
    assert!(
        err.message().contains("1 Insufficient cpu"),
        "{}",
        err.message()
    );
    // The same pod fits when the nomination is gone.
    assert_eq!(
        alg()
            .schedule_with_nominated(low, &mut s, &[])
            .map(|i| s.nodes[i].name.clone())
            .unwrap(),
        "a"
    );
    // A higher-priority pod ignores the lower nomination.
    let high = pod_l(
        "high",
        json!({}),
        json!({"nodeName": "a", "containers": [{"name": "c",
        "image": "busybox", "resources": {"requests": {"cpu": "500m"}}}]}),
        20,
    );
    assert_eq!(
        alg()
            .schedule_with_nominated(high, &mut s, &nominated)
            .map(|i| s.nodes[i].name.clone())
            .unwrap(),
        "a"
    );
    // The preemptor itself is not counted against itself.
    assert_eq!(
        alg()
            .schedule_with_nominated(preemptor, &mut s, &nominated)
            .map(|i| s.nodes[i].name.clone())
            .unwrap(),
        "b",
        "2-cpu b is less allocated"
    );
    // The snapshot is restored after each attempt.
    let after = format!(
        "{:?}",
        s.nodes
            .iter()
            .map(|n| n.requested.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(before, after);
    assert!(s.nodes.iter().all(|n| n.pods.is_empty()));
}
