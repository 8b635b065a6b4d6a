//! The kubelet against a real control plane (kelson-kv + kelson-apiserver) and a private
//! containerd with runc and CNI: node registration, pods running for real, status reasons,
//! restarts with adoption, graceful deletion.
//!
//! Needs root, containerd, runc, /usr/lib/cni and busybox-static (scripts/setup.sh), and the
//! binaries built: `cargo build -p kelson-kv -p kelson-apiserver -p kelson-kubelet`. Pod traffic
//! stays on a bridge and network namespaces this test creates; nothing leaves the machine.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kelson_kubelet::cri::Cri;
use kelson_testsupport::{
    bin_path, wait_for, wait_until, ChildGuard, Containerd, ControlPlane, DbusDaemon, HostCleanup,
};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn prerequisites() -> bool {
    let ok = is_root()
        && Path::new("/usr/bin/containerd").exists()
        && Path::new("/usr/lib/cni/bridge").exists()
        && Path::new(kelson_oci::DEFAULT_BUSYBOX).exists();
    if !ok {
        eprintln!(
            "missing: root, containerd, CNI plugins or busybox-static (scripts/setup.sh installs them)"
        );
    }
    ok
}

struct Kubelet {
    args: Vec<String>,
    log: PathBuf,
    child: Option<ChildGuard>,
}

impl Kubelet {
    fn start(&mut self) {
        let mut cmd = Command::new(bin_path("kelson-kubelet"));
        cmd.args(&self.args)
            .env("KELSON_LOG_LEVEL", "info,kube=warn");
        self.child = Some(ChildGuard::spawn("kelson-kubelet", cmd, &self.log).unwrap());
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(15)).unwrap();
        }
    }
    fn log_tail(&self) -> String {
        self.child
            .as_ref()
            .map(|c| c.log_tail(40))
            .unwrap_or_default()
    }
}

/// `busctl` against the kubelet's object on the private bus; returns stdout.
fn busctl(address: &str, args: &[&str]) -> String {
    let out = Command::new("busctl")
        .arg(format!("--address={address}"))
        .args(args)
        .output()
        .expect("running busctl");
    assert!(
        out.status.success(),
        "busctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const OBJ: &str = "/io/kelson/Kubelet1";
const IFACE: &str = "io.kelson.Kubelet1";

fn pod(name: &str, node: &str, spec: serde_json::Value) -> Pod {
    let mut spec = spec;
    spec["nodeName"] = json!(node);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .unwrap()
}

async fn status_of(pods: &Api<Pod>, name: &str) -> anyhow::Result<serde_json::Value> {
    let p = pods.get(name).await?;
    Ok(serde_json::to_value(p.status.unwrap_or_default())?)
}

fn waiting_reason(st: &serde_json::Value) -> String {
    st["containerStatuses"][0]["state"]["waiting"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn containers_of(cri: &Cri, uid: &str) -> Vec<k8s_cri::v1::Container> {
    cri.list_containers(
        None,
        HashMap::from([("io.kubernetes.pod.uid".to_string(), uid.to_string())]),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_runs_pods_through_containerd() {
    // CI runs as root after scripts/setup.sh: missing prerequisites fail the test, never skip it.
    assert!(
        prerequisites(),
        "needs root, containerd, CNI plugins and busybox-static"
    );
    let cp = ControlPlane::start().await.expect("control plane");
    let work = tempfile::tempdir().unwrap();
    let ctrd = Containerd::start(&work.path().join("containerd"))
        .await
        .expect("containerd");
    let suffix = format!("{:04x}", std::process::id() & 0xffff);
    let node_name = format!("kt-node-{suffix}");
    let host_dir = work.path().join("hostpath");
    let logs_dir = work.path().join("pod-logs");
    let bus = DbusDaemon::start().expect("private D-Bus daemon");
    let _cleanup = HostCleanup {
        bridge: format!("kb{suffix}"),
        cgroup_root: format!("kelson-test-{suffix}"),
    };
    let kubeconfig = cp
        .kubeconfig_for(&format!("system:node:{node_name}"), Some("system:nodes"))
        .unwrap_or_else(|_| cp.kubeconfig_path().to_path_buf());
    let mut kubelet = Kubelet {
        args: vec![
            format!("--dbus-address={}", bus.address()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--hostname-override={node_name}"),
            format!("--container-runtime-endpoint={}", ctrd.endpoint()),
            format!("--cni-conf-dir={}", ctrd.cni_conf_dir().display()),
            format!("--cni-bridge-name=kb{suffix}"),
            format!("--cni-ipam-data-dir={}", work.path().join("ipam").display()),
            "--pod-cidr=10.251.7.0/24".into(),
            format!("--root-dir={}", work.path().join("kubelet").display()),
            format!("--pod-logs-dir={}", logs_dir.display()),
            "--node-ip=127.0.0.1".into(),
            "--zone=zone-a".into(),
            "--register-with-taints=dedicated=test:PreferNoSchedule".into(),
            "--node-status-update-frequency=2".into(),
            format!("--cgroup-root=/kelson-test-{suffix}"),
            // An ephemeral kubelet API port: tests run in parallel.
            "--port=0".into(),
        ],
        log: work.path().join("kubelet.log"),
        child: None,
    };
    kubelet.start();
    let client = cp.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cri = Cri::connect(ctrd.socket()).unwrap();
    // What the controller manager would create: every pod mounts kube-api-access-*.
    common::namespace_defaults(&client, &cp, "default").await;

    // 1. The node registers Ready with labels, taints, capacity, and a Lease.
    let node = wait_for(Duration::from_secs(30), "node Ready", || async {
        let n = nodes.get(&node_name).await?;
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        anyhow::ensure!(ready.as_deref() == Some("True"), "Ready is {ready:?}");
        Ok(n)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", kubelet.log_tail()));
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], node_name);
    assert_eq!(labels["topology.kubernetes.io/zone"], "zone-a");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    let spec = node.spec.clone().unwrap();
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.251.7.0/24"));
    assert_eq!(spec.taints.unwrap()[0].key, "dedicated");
    let status = node.status.clone().unwrap();
    assert!(status.capacity.unwrap().contains_key("memory"));
    assert!(status
        .node_info
        .unwrap()
        .container_runtime_version
        .starts_with("containerd://"));
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = wait_for(Duration::from_secs(10), "node lease", || async {
        Ok(leases.get(&node_name).await?)
    })
    .await
    .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some(node_name.as_str())
    );

    // 2. A busybox pod runs, with env from the downward API, writing to a hostPath and its log.
    let writer = pod(
        "writer",
        &node_name,
        json!({
            "terminationGracePeriodSeconds": 3,
            "containers": [{
                "name": "main",
                "image": kelson_oci::BUSYBOX_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c"],
                "args": ["echo hello-$(POD_NAME) > /out/msg; echo logged-line; trap 'exit 0' TERM; while :; do sleep 1; done"],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                "resources": {"limits": {"memory": "64Mi", "cpu": "200m"}},
            }],
            "volumes": [{"name": "out", "hostPath": {"path": host_dir.display().to_string(), "type": "DirectoryOrCreate"}}],
        }),
    );
    let created = pods.create(&PostParams::default(), &writer).await.unwrap();
    let writer_uid = created.metadata.uid.clone().unwrap();
    let st = wait_for(Duration::from_secs(60), "writer Running", || async {
        let st = status_of(&pods, "writer").await?;
        anyhow::ensure!(st["phase"] == "Running", "status {st}");
        anyhow::ensure!(st["podIP"].is_string(), "no podIP yet: {st}");
        Ok(st)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", kubelet.log_tail()));
    let ip = st["podIP"].as_str().unwrap();
    assert!(ip.starts_with("10.251.7."), "pod IP {ip}");
    assert_eq!(st["qosClass"], "Guaranteed");
    assert_eq!(st["containerStatuses"][0]["ready"], true);
    assert!(st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True"));
    wait_until(Duration::from_secs(10), "hostPath file", || async {
        std::fs::read_to_string(host_dir.join("msg")).is_ok_and(|s| s.trim() == "hello-writer")
    })
    .await
    .unwrap();
    let log_file = logs_dir
        .join(format!("default_writer_{writer_uid}"))
        .join("main/0.log");
    wait_until(Duration::from_secs(10), "container log", || async {
        std::fs::read_to_string(&log_file).is_ok_and(|s| s.contains("stdout F logged-line"))
    })
    .await
    .unwrap();
    let writer_cid = st["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .to_string();
    // resources.limits reached the container's cgroup (cgroupfs: <pod cgroup>/<container id>).
    let mem_limit = format!(
        "/sys/fs/cgroup/memory/kelson-test-{suffix}/pod{writer_uid}/{}/memory.limit_in_bytes",
        writer_cid.trim_start_matches("containerd://")
    );
    assert_eq!(
        std::fs::read_to_string(&mem_limit)
            .unwrap_or_default()
            .trim(),
        (64u64 << 20).to_string(),
        "{mem_limit}"
    );

    // D-Bus: NodeName and RunningPods; Cordon/Uncordon flip spec.unschedulable.
    let name_prop = busctl(
        bus.address(),
        &["get-property", IFACE, OBJ, IFACE, "NodeName"],
    );
    assert_eq!(name_prop, format!("s \"{node_name}\""));
    wait_until(Duration::from_secs(10), "RunningPods = 1", || async {
        busctl(
            bus.address(),
            &["get-property", IFACE, OBJ, IFACE, "RunningPods"],
        ) == "u 1"
    })
    .await
    .unwrap();
    busctl(bus.address(), &["call", IFACE, OBJ, IFACE, "Cordon"]);
    let n = nodes.get(&node_name).await.unwrap();
    assert_eq!(n.spec.unwrap().unschedulable, Some(true));
    busctl(bus.address(), &["call", IFACE, OBJ, IFACE, "Uncordon"]);
    let n = nodes.get(&node_name).await.unwrap();
    assert_ne!(n.spec.unwrap().unschedulable, Some(true));

    // 3. A missing image with pullPolicy Never: ErrImageNeverPull with upstream's message.
    let missing = pod(
        "missing",
        &node_name,
        json!({"containers": [{"name": "c", "image": "kelson.local/absent:1", "imagePullPolicy": "Never"}]}),
    );
    pods.create(&PostParams::default(), &missing).await.unwrap();
    let st = wait_for(Duration::from_secs(30), "ErrImageNeverPull", || async {
        let st = status_of(&pods, "missing").await?;
        anyhow::ensure!(waiting_reason(&st) == "ErrImageNeverPull", "status {st}");
        Ok(st)
    })
    .await
    .unwrap();
    assert_eq!(st["phase"], "Pending");
    assert_eq!(
        st["containerStatuses"][0]["state"]["waiting"]["message"],
        "Container image \"kelson.local/absent:1\" is not present with pull policy of Never"
    );

    // 4. A crashing container backs off: CrashLoopBackOff with a restart count.
    let crasher = pod(
        "crasher",
        &node_name,
        json!({"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": kelson_oci::BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", "exit 3"]}]}),
    );
    pods.create(&PostParams::default(), &crasher).await.unwrap();
    let st = wait_for(Duration::from_secs(40), "CrashLoopBackOff", || async {
        let st = status_of(&pods, "crasher").await?;
        anyhow::ensure!(waiting_reason(&st) == "CrashLoopBackOff", "status {st}");
        Ok(st)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", kubelet.log_tail()));
    let cs = &st["containerStatuses"][0];
    assert!(cs["restartCount"].as_i64().unwrap() >= 1, "{cs}");
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3, "{cs}");
    assert_eq!(st["phase"], "Running");

    // 5. Restarting the kubelet adopts the running container instead of restarting it.
    kubelet.stop();
    kubelet.start();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let st = wait_for(Duration::from_secs(30), "writer still Running", || async {
        let st = status_of(&pods, "writer").await?;
        anyhow::ensure!(st["phase"] == "Running", "status {st}");
        Ok(st)
    })
    .await
    .unwrap();
    assert_eq!(
        st["containerStatuses"][0]["containerID"],
        writer_cid.as_str()
    );
    assert_eq!(st["containerStatuses"][0]["restartCount"], 0);
    let running: Vec<_> = containers_of(&cri, &writer_uid)
        .await
        .into_iter()
        .filter(|c| c.state == k8s_cri::v1::ContainerState::ContainerRunning as i32)
        .collect();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(format!("containerd://{}", running[0].id), writer_cid);

    // 6. Graceful deletion: the pod object goes away and no container is left behind.
    for name in ["writer", "missing", "crasher"] {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in ["writer", "missing", "crasher"] {
        wait_until(
            Duration::from_secs(40),
            &format!("{name} deleted"),
            || async { matches!(pods.get_opt(name).await, Ok(None)) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", kubelet.log_tail()));
    }
    assert!(containers_of(&cri, &writer_uid).await.is_empty());
    let left = cri
        .list_pod_sandboxes(HashMap::from([(
            "io.kelson.node".to_string(),
            node_name.clone(),
        )]))
        .await
        .unwrap();
    assert!(left.is_empty(), "sandboxes left: {left:?}");
    let pod_cgroup = format!("/sys/fs/cgroup/memory/kelson-test-{suffix}/pod{writer_uid}");
    assert!(!Path::new(&pod_cgroup).exists(), "{pod_cgroup} left behind");
    kubelet.stop();
}
