//! A Job whose pods really run: control plane + controller manager + one kelson-kubelet with a
//! private containerd (runc, CNI bridge), busybox `sh -c 'sleep 1'` containers. The pods name
//! the node in the Job template (`nodeName`), so no scheduler is needed.
//!
//! Needs root, containerd, runc, /usr/lib/cni and busybox-static (scripts/setup.sh) and the
//! binaries built (`cargo build -p kelson-kv -p kelson-apiserver -p kelson-kubelet`; CI builds
//! the workspace first). Pod traffic stays on a bridge this test creates and deletes.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kelson_testsupport::{bin_path, ChildGuard, Containerd, ControlPlane, HostCleanup};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

fn prerequisites() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    // CI runs as root after scripts/setup.sh: a missing prerequisite fails, never skips.
    assert!(
        root && Path::new("/usr/bin/containerd").exists()
            && Path::new("/usr/lib/cni/bridge").exists()
            && Path::new("/bin/busybox").exists(),
        "needs root, containerd, CNI plugins (/usr/lib/cni) and busybox-static (scripts/setup.sh)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_with_real_containers_completes_with_parallelism() {
    prerequisites();
    let cp = ControlPlane::start().await.expect("control plane");
    let work = tempfile::tempdir().unwrap();
    let ctrd = Containerd::start(&work.path().join("containerd"))
        .await
        .expect("containerd");
    let suffix = format!("{:04x}", std::process::id() & 0xffff);
    let node = format!("kj-{suffix}");
    let _cleanup = HostCleanup {
        bridge: format!("kj{suffix}"),
        cgroup_root: format!("kelson-job-{suffix}"),
    };
    let mut kubelet_cmd = Command::new(bin_path("kelson-kubelet"));
    kubelet_cmd
        .args([
            "--no-dbus".to_string(),
            format!("--kubeconfig={}", cp.kubeconfig_path().display()),
            format!("--hostname-override={node}"),
            format!("--container-runtime-endpoint={}", ctrd.endpoint()),
            format!("--cni-conf-dir={}", ctrd.cni_conf_dir().display()),
            format!("--cni-bridge-name=kj{suffix}"),
            format!("--cni-ipam-data-dir={}", work.path().join("ipam").display()),
            "--pod-cidr=10.253.7.0/24".into(),
            format!("--root-dir={}", work.path().join("kubelet").display()),
            format!("--pod-logs-dir={}", work.path().join("logs").display()),
            "--node-ip=127.0.0.1".into(),
            "--port=0".into(),
            "--node-status-update-frequency=2".into(),
            format!("--cgroup-root=/kelson-job-{suffix}"),
        ])
        .env("KELSON_LOG_LEVEL", "info,kube=warn");
    let kubelet = ChildGuard::spawn(
        "kelson-kubelet",
        kubelet_cmd,
        &work.path().join("kubelet.log"),
    )
    .expect("kubelet starts");
    let mut cm_cmd = Command::new(env!("CARGO_BIN_EXE_kelson-controller-manager"));
    cm_cmd.arg("--kubeconfig").arg(cp.kubeconfig_path()).args([
        "--no-dbus",
        "--leader-elect=false",
        "--controllers=job,garbagecollector",
    ]);
    let cm = ChildGuard::spawn(
        "kelson-controller-manager",
        cm_cmd,
        &work.path().join("cm.log"),
    )
    .expect("controller manager starts");
    let client = cp.client().await.unwrap();
    let diag = || {
        format!(
            "--- kubelet ---\n{}\n--- cm ---\n{}",
            kubelet.log_tail(30),
            cm.log_tail(30)
        )
    };

    let nodes: Api<Node> = Api::all(client.clone());
    let start = Instant::now();
    while nodes.get_opt(&node).await.ok().flatten().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node never registered\n{}",
            diag()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "sleepy"},
        "spec": {"completions": 3, "parallelism": 2, "template": {"metadata": {"labels": {"app": "sleepy"}}, "spec": {
            "nodeName": node, "restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "c", "image": kelson_oci::BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "sleep 1"]}]}}}
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut max_running = 0;
    let done = loop {
        let list = pods
            .list(&ListParams::default().labels("app=sleepy"))
            .await
            .unwrap()
            .items;
        let unfinished = common::unfinished(&list);
        max_running = max_running.max(unfinished);
        let j = jobs.get("sleepy").await.unwrap();
        let complete = j
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Complete" && c.status == "True")
            });
        if complete {
            break j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "job did not complete: {:?}\n{}",
            j.status,
            diag()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let st = done.status.unwrap();
    assert_eq!(st.succeeded, Some(3), "{st:?}");
    assert_eq!(st.failed.unwrap_or(0), 0, "{st:?}");
    assert!(max_running <= 2, "parallelism 2 exceeded: {max_running}");
    let list = pods
        .list(&ListParams::default().labels("app=sleepy"))
        .await
        .unwrap()
        .items;
    assert_eq!(list.len(), 3);
    assert!(list
        .iter()
        .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")));
}
