//! Node-pressure eviction and image garbage collection against a real control plane and a
//! private containerd (see `common`).
//!
//! Pressure is made real, not faked: a hard threshold `memory.available<(MemTotal + 1Gi)` is
//! one the machine always meets, so the kubelet's own signals (cgroups, /proc) put the node
//! under memory pressure. Thresholds live in a config file the test rewrites, and SIGHUP
//! reloads them — the same path an operator takes with `systemctl reload`.
//!
//! Needs root, containerd, runc, /usr/lib/cni, busybox-static and the binaries built:
//! `cargo build -p kelson-kv -p kelson-apiserver -p kelson-kubelet`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestNode, BUSYBOX};
use k8s_openapi::api::core::v1::Node;
use kelson_testsupport::wait_for;
use kube::api::Api;
use serde_json::json;

fn mem_total_bytes() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kib * 1024
}

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn sighup(node: &TestNode) {
    let pid = node.kubelet.as_ref().expect("kubelet running").pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP to the kubelet");
}

async fn node_state(node: &TestNode) -> (String, Vec<String>) {
    let nodes: Api<Node> = Api::all(node.client.clone());
    let n = nodes.get(&node.node_name).await.unwrap();
    let mem = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "MemoryPressure"))
        .map(|c| c.status.clone())
        .unwrap_or_default();
    let taints = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| {
            t.iter()
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect()
        })
        .unwrap_or_default();
    (mem, taints)
}

fn sleeper(resources: serde_json::Value) -> serde_json::Value {
    json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "c", "image": BUSYBOX, "imagePullPolicy": "Never",
            "command": ["sleep", "3600"], "resources": resources,
        }],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_evicts_besteffort_before_guaranteed_and_lifts_on_reload() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("kubelet.toml");
    // Start with a threshold no machine meets.
    write_config(&cfg, "eviction-hard = \"memory.available<1Ki\"\n");
    let node = TestNode::start(
        61,
        &[
            format!("--config={}", cfg.display()),
            "--housekeeping-interval=1".into(),
            "--eviction-pressure-transition-period=2".into(),
        ],
    )
    .await;
    assert_eq!(node_state(&node).await, ("False".to_string(), vec![]));

    let be = node.create("besteffort", sleeper(json!({}))).await;
    let g_res = json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}});
    let g = node.create("guaranteed", sleeper(g_res)).await;
    for name in ["besteffort", "guaranteed"] {
        node.wait_status(name, 60, "Running", |s| s["phase"] == "Running")
            .await;
    }

    // Pressure: available memory is always below MemTotal + 1Gi.
    let threshold_kib = (mem_total_bytes() + (1 << 30)) / 1024;
    write_config(
        &cfg,
        &format!("eviction-hard = \"memory.available<{threshold_kib}Ki\"\n"),
    );
    sighup(&node);

    // The BestEffort pod goes first: when it is seen Failed, the Guaranteed one still runs.
    let deadline = Instant::now() + Duration::from_secs(40);
    let (be_st, g_phase) = loop {
        assert!(
            Instant::now() < deadline,
            "no eviction within 40s\nkubelet log:\n{}",
            node.log_tail()
        );
        let b = node.status("besteffort").await.unwrap();
        let gs = node.status("guaranteed").await.unwrap();
        assert_ne!(
            gs["phase"], "Failed",
            "the Guaranteed pod was evicted first: {gs}\nBestEffort: {b}"
        );
        if b["phase"] == "Failed" {
            break (b, gs["phase"].clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(g_phase, "Running");
    assert_eq!(be_st["reason"], "Evicted", "{be_st}");
    let msg = be_st["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with(&format!(
            "The node was low on resource: memory. Threshold quantity: {threshold_kib}Ki, available: "
        )),
        "message: {msg}"
    );
    let disruption = be_st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "DisruptionTarget")
        .cloned()
        .unwrap_or_default();
    assert_eq!(disruption["status"], "True", "{be_st}");
    assert_eq!(disruption["reason"], "TerminationByKubelet");
    // Its containers are stopped (kept for logs, not running).
    let running = |cs: Vec<k8s_cri::v1::Container>| {
        cs.iter()
            .filter(|c| c.state == k8s_cri::v1::ContainerState::ContainerRunning as i32)
            .count()
    };
    assert_eq!(running(node.containers_of(&be).await), 0);

    // The condition is set. The taint is the node lifecycle controller's (NodeRestriction
    // forbids a node to change its own taints), so the kubelet leaves them alone.
    wait_for(Duration::from_secs(15), "MemoryPressure", || async {
        let (mem, taints) = node_state(&node).await;
        anyhow::ensure!(
            mem == "True" && taints.is_empty(),
            "MemoryPressure={mem} taints={taints:?}"
        );
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
    let events = node.events_of("besteffort").await;
    assert!(
        events.iter().any(|(r, m)| r == "Evicted" && m == msg),
        "events: {events:?}"
    );

    // Under memory pressure a new BestEffort pod is not admitted.
    node.create("late", sleeper(json!({}))).await;
    let late = node
        .wait_status("late", 30, "rejected", |s| s["phase"] == "Failed")
        .await;
    assert_eq!(late["reason"], "Evicted");
    assert_eq!(
        late["message"],
        "The node had condition: [MemoryPressure]. "
    );

    // The pressure persists, so the Guaranteed pod goes next.
    node.wait_status("guaranteed", 40, "evicted", |s| {
        s["phase"] == "Failed" && s["reason"] == "Evicted"
    })
    .await;
    assert_eq!(running(node.containers_of(&g).await), 0);

    // Lift the threshold: after the transition period the condition goes away and pods run
    // again.
    write_config(&cfg, "eviction-hard = \"memory.available<1Ki\"\n");
    sighup(&node);
    wait_for(Duration::from_secs(20), "pressure lifted", || async {
        let (mem, taints) = node_state(&node).await;
        anyhow::ensure!(
            mem == "False" && taints.is_empty(),
            "MemoryPressure={mem} taints={taints:?}"
        );
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
    node.create("after", sleeper(json!({}))).await;
    node.wait_status("after", 60, "Running", |s| s["phase"] == "Running")
        .await;
}

/// A third image (distinct config, so a distinct image ID) in the node's containerd.
fn import_unused_image(node: &TestNode, name: &str) {
    let dir = node.work.path().join("extra-image");
    std::fs::create_dir_all(&dir).unwrap();
    let layer = kelson_oci::busybox_layer(Path::new(kelson_oci::DEFAULT_BUSYBOX)).unwrap();
    let mut spec = kelson_oci::ImageSpec::busybox();
    spec.name = name.into();
    spec.cmd = vec!["true".into()];
    let tar = dir.join("unused.tar");
    kelson_oci::write_image_layout(&tar, &layer, &[spec]).unwrap();
    let target = kelson_oci::ImportTarget {
        address: node.ctrd.socket().to_path_buf(),
        namespace: "k8s.io".into(),
        snapshotter: Some(node.ctrd.snapshotter().to_string()),
    };
    kelson_oci::import(&target, &tar).expect("importing the extra image");
}

async fn image_tags(node: &TestNode) -> Vec<String> {
    node.cri
        .list_images()
        .await
        .unwrap()
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_gc_removes_unused_images_only() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("kubelet.toml");
    // GC off while the pod starts (otherwise the busybox image, unused until then, would go).
    write_config(&cfg, "image-gc-high-threshold = 100\n");
    let node = TestNode::start(
        62,
        &[
            format!("--config={}", cfg.display()),
            "--image-minimum-gc-age=0".into(),
            "--image-gc-period=1".into(),
        ],
    )
    .await;
    node.create("user", sleeper(json!({}))).await;
    node.wait_status("user", 60, "Running", |s| s["phase"] == "Running")
        .await;
    let unused = "kelson.local/unused:1";
    import_unused_image(&node, unused);
    let before = image_tags(&node).await;
    assert!(before.iter().any(|t| t == unused), "images: {before:?}");

    // Any usage is over 1%: GC frees down to 0%, i.e. removes every image it may.
    write_config(
        &cfg,
        "image-gc-high-threshold = 1\nimage-gc-low-threshold = 0\n",
    );
    sighup(&node);
    wait_for(
        Duration::from_secs(30),
        "the unused image removed",
        || async {
            let tags = image_tags(&node).await;
            anyhow::ensure!(!tags.iter().any(|t| t == unused), "images: {tags:?}");
            Ok(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
    // The image in use and the sandbox image stay, through several more GC periods.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = image_tags(&node).await;
    for keep in [BUSYBOX, kelson_oci::PAUSE_IMAGE] {
        assert!(after.iter().any(|t| t == keep), "{keep} removed: {after:?}");
    }
    let st = node.status("user").await.unwrap();
    assert_eq!(st["phase"], "Running", "{st}");
    let log = std::fs::read_to_string(node.work.path().join("kubelet.log")).unwrap_or_default();
    assert!(
        log.contains("image garbage collected"),
        "kubelet log:\n{}",
        node.log_tail()
    );
}

/// A pod's status conditions of one type (empty if absent).
fn has_condition(st: &serde_json::Value, ty: &str) -> bool {
    st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == ty)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_over_their_ephemeral_storage_limits_are_evicted() {
    let node = TestNode::start(64, &["--housekeeping-interval=1".into()]).await;
    let writer = |mb: u32| {
        format!(
            "dd if=/dev/zero of=/data/f bs=1024 count={} && sleep 3600",
            mb * 1024
        )
    };
    // emptyDir over its sizeLimit.
    node.create(
        "over-dir",
        json!({
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "1Mi"}}],
            "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sh", "-c", writer(2)],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        }),
    )
    .await;
    // The pod's total (an emptyDir without its own limit) over its containers' limit.
    let over_pod = node
        .create(
            "over-pod",
            json!({
                "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", writer(2)],
                    "resources": {"limits": {"ephemeral-storage": "1Mi"}},
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            }),
        )
        .await;
    // Within its limits.
    node.create(
        "within",
        json!({
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "8Mi"}}],
            "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sh", "-c", writer(1)],
                "resources": {"limits": {"ephemeral-storage": "8Mi"}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        }),
    )
    .await;
    let evicted = |s: &serde_json::Value| s["phase"] == "Failed" && s["reason"] == "Evicted";
    let st = node.wait_status("over-dir", 60, "evicted", evicted).await;
    assert_eq!(
        st["message"], "Usage of EmptyDir volume \"data\" exceeds the limit \"1Mi\". ",
        "{st}"
    );
    // Upstream adds no DisruptionTarget for a pod over its own limits.
    assert!(!has_condition(&st, "DisruptionTarget"), "{st}");
    let st = node.wait_status("over-pod", 60, "evicted", evicted).await;
    assert_eq!(
        st["message"],
        "Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. ",
        "{st}"
    );
    let running = node
        .containers_of(&over_pod)
        .await
        .iter()
        .filter(|c| c.state == k8s_cri::v1::ContainerState::ContainerRunning as i32)
        .count();
    assert_eq!(running, 0);
    let events = node.events_of("over-dir").await;
    assert!(
        events.iter().any(|(r, _)| r == "Evicted"),
        "events: {events:?}"
    );
    // The pod within its limits has written its megabyte and keeps running.
    node.wait_status("within", 30, "Running", |s| s["phase"] == "Running")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = node.status("within").await.unwrap();
    assert_eq!(st["phase"], "Running", "{st}");
}

/// The log file of a container (what `kubectl logs` reads for it).
async fn container_log(node: &TestNode, id: &str) -> String {
    let st = node.cri.container_status(id).await.unwrap();
    std::fs::read_to_string(&st.log_path).unwrap_or_default()
}

/// A container in `sandbox` created behind the kubelet's back, labelled as container `name`
/// of pod `uid` on `node`, that exits at once.
async fn ghost_container(node: &TestNode, sandbox: &str, uid: &str, name: &str, n: u32) -> String {
    use k8s_cri::v1 as cri;
    use std::collections::HashMap;
    let logs = node.work.path().join("ghost-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let labels = HashMap::from([
        ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
        ("io.kubernetes.container.name".to_string(), name.to_string()),
        ("io.kelson.node".to_string(), node.node_name.clone()),
    ]);
    let cfg = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: format!("{name}-{n}"),
            attempt: n,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["true".into()],
        labels,
        log_path: format!("{name}-{n}.log"),
        ..Default::default()
    };
    let sb_cfg = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "ghost".into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        ..Default::default()
    };
    let id = node
        .cri
        .create_container(sandbox, cfg, sb_cfg)
        .await
        .expect("creating a ghost container");
    node.cri.start_container(&id).await.expect("starting it");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_gc_removes_dead_containers_but_keeps_the_last_one() {
    let node = TestNode::start(65, &["--container-gc-period=1".into()]).await;
    let uid = node
        .create(
            "crasher",
            json!({
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "echo run-$(cat /proc/sys/kernel/random/uuid); sleep 1; exit 1"]}],
            }),
        )
        .await;
    // Three instances: the first restart is immediate, the second after 10 s of back-off.
    node.wait_status("crasher", 60, "two restarts", |s| {
        s["containerStatuses"][0]["restartCount"].as_i64() >= Some(2)
    })
    .await;
    let of_c = |cs: Vec<k8s_cri::v1::Container>| {
        cs.into_iter()
            .filter(|c| {
                c.labels
                    .get("io.kubernetes.container.name")
                    .map(String::as_str)
                    == Some("c")
            })
            .collect::<Vec<_>>()
    };
    // The current instance and the one before it stay; the oldest is gone.
    let mut cs = of_c(node.containers_of(&uid).await);
    assert_eq!(cs.len(), 2, "{cs:?}");
    cs.sort_by_key(|c| c.created_at);
    // What `logs --previous` reads: the older kept instance's log.

    let prev = cs[0].id.clone();
    let log = container_log(&node, &prev).await;
    assert!(log.contains("run-"), "{log:?}");

    // Dead containers the kubelet never made: of a pod that does not exist (all go), and
    // three instances of one name in the live pod (the current one and the one before stay).
    let sandbox = cs[0].pod_sandbox_id.clone();
    let orphan = ghost_container(&node, &sandbox, "no-such-pod", "x", 0).await;
    let mut ghosts = Vec::new();
    for n in 0..3 {
        ghosts.push(ghost_container(&node, &sandbox, &uid, "ghost", n).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (old, new) = (ghosts[0].clone(), ghosts[2].clone());
    wait_for(Duration::from_secs(20), "ghosts collected", || async {
        let all: Vec<String> = node
            .cri
            .list_containers(None, Default::default())
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        anyhow::ensure!(
            !all.contains(&orphan) && !all.contains(&old),
            "containers still there: {all:?}"
        );
        anyhow::ensure!(
            all.contains(&new) && all.contains(&ghosts[1]),
            "a ghost GC should keep was removed"
        );
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
    // Several GC passes later the crasher still has its current and previous instances.
    let cs = of_c(node.containers_of(&uid).await);
    assert_eq!(cs.len(), 2, "{cs:?}");
    let oldest = cs.iter().min_by_key(|c| c.created_at).unwrap().id.clone();
    assert!(container_log(&node, &oldest).await.contains("run-"));
}
