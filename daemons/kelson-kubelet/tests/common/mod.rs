//! The test node shared by the kubelet feature tests: a control plane (kelson-kv +
//! kelson-apiserver), a private containerd with the test images, and one kelson-kubelet with a
//! unique node name, bridge and cgroup root, so test files and functions run in parallel.
//! Everything is removed on drop (processes by their guards, the bridge and cgroups here).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, ServiceAccount};
use kelson_kubelet::cri::Cri;
use kelson_testsupport::{
    bin_path, wait_for, ChildGuard, Containerd, ControlPlane, ControlPlaneOpts, HostCleanup,
};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

pub fn prerequisites() {
    let ok = nix::unistd::geteuid().is_root()
        && Path::new("/usr/bin/containerd").exists()
        && Path::new("/usr/lib/cni/bridge").exists()
        && Path::new(kelson_oci::DEFAULT_BUSYBOX).exists();
    // CI runs as root after scripts/setup.sh: a missing prerequisite fails, never skips.
    assert!(
        ok,
        "needs root, containerd, CNI plugins (/usr/lib/cni) and busybox-static (scripts/setup.sh)"
    );
}

/// A unique small number per test function in this process (bridge names are ≤ 15 chars).
fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("{:04x}{n}", std::process::id() & 0xffff)
}

pub struct TestNode {
    pub kubelet: Option<ChildGuard>,
    pub args: Vec<String>,
    pub node_name: String,
    pub suffix: String,
    pub logs_dir: PathBuf,
    pub pods: Api<Pod>,
    pub client: kube::Client,
    pub cri: Cri,
    // Field order is drop order: processes before the dirs and host leftovers.
    pub ctrd: Containerd,
    pub cp: ControlPlane,
    _cleanup: HostCleanup,
    pub work: tempfile::TempDir,
}

impl TestNode {
    /// Starts everything; `extra` kubelet flags are appended. `subnet` is the third octet
    /// of the node's 10.252.x.0/24 pod CIDR (distinct per test function); 0 starts the
    /// kubelet without `--pod-cidr` (the test then plays node IPAM).
    pub async fn start(subnet: u8, extra: &[String]) -> TestNode {
        prerequisites();
        let work = tempfile::tempdir().unwrap();
        // A signing key, so the API server serves TokenRequest (projected SA tokens).
        let key = work.path().join("sa.key");
        std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let cp = ControlPlane::start_with(ControlPlaneOpts {
            apiserver_args: vec![format!(
                "--service-account-signing-key-file={}",
                key.display()
            )],
        })
        .await
        .expect("control plane");
        let ctrd = Containerd::start(&work.path().join("containerd"))
            .await
            .expect("containerd");
        let suffix = unique();
        let node_name = format!("kf-{suffix}");
        let logs_dir = work.path().join("pod-logs");
        let cleanup = HostCleanup {
            bridge: format!("kf{suffix}"),
            cgroup_root: format!("kelson-feat-{suffix}"),
        };
        let kubeconfig = cp
            .kubeconfig_for(&format!("system:node:{node_name}"), Some("system:nodes"))
            .unwrap_or_else(|_| cp.kubeconfig_path().to_path_buf());
        let mut args = vec![
            "--no-dbus".to_string(),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--hostname-override={node_name}"),
            format!("--container-runtime-endpoint={}", ctrd.endpoint()),
            format!("--cni-conf-dir={}", ctrd.cni_conf_dir().display()),
            format!("--cni-bridge-name=kf{suffix}"),
            format!("--cni-ipam-data-dir={}", work.path().join("ipam").display()),
            format!("--pod-cidr=10.252.{subnet}.0/24"),
            format!("--root-dir={}", work.path().join("kubelet").display()),
            format!("--pod-logs-dir={}", logs_dir.display()),
            "--node-ip=127.0.0.1".into(),
            "--port=0".into(),
            "--node-status-update-frequency=2".into(),
            format!("--cgroup-root=/kelson-feat-{suffix}"),
        ];
        if subnet == 0 {
            args.retain(|a| !a.starts_with("--pod-cidr="));
        }
        // An extra flag replaces a default one of the same name.
        for e in extra {
            if let Some((flag, _)) = e.split_once('=') {
                args.retain(|a| !a.starts_with(&format!("{flag}=")));
            }
        }
        args.extend(extra.iter().cloned());
        let client = cp.client().await.unwrap();
        namespace_defaults(&client, &cp, "default").await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let cri = Cri::connect(ctrd.socket()).unwrap();
        let mut n = TestNode {
            kubelet: None,
            args,
            node_name,
            suffix,
            logs_dir,
            pods,
            client,
            cri,
            ctrd,
            cp,
            _cleanup: cleanup,
            work,
        };
        n.start_kubelet();
        n.wait_ready().await;
        n
    }

    pub fn start_kubelet(&mut self) {
        // The benchmark may point at a release build.
        let bin = std::env::var_os("KELSON_KUBELET_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| bin_path("kelson-kubelet"));
        let mut cmd = Command::new(bin);
        cmd.args(&self.args)
            .env("KELSON_LOG_LEVEL", "info,kube=warn");
        self.kubelet = Some(
            ChildGuard::spawn("kelson-kubelet", cmd, &self.work.path().join("kubelet.log"))
                .unwrap(),
        );
    }

    pub fn log_tail(&self) -> String {
        self.kubelet
            .as_ref()
            .map(|c| c.log_tail(60))
            .unwrap_or_default()
    }

    async fn wait_ready(&self) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        wait_for(Duration::from_secs(30), "node Ready", || async {
            let n = nodes.get(&self.node_name).await?;
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.clone());
            anyhow::ensure!(ready.as_deref() == Some("True"), "Ready is {ready:?}");
            Ok(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", self.log_tail()));
    }

    /// Creates a pod bound to this node; returns its UID.
    pub async fn create(&self, name: &str, mut spec: serde_json::Value) -> String {
        spec["nodeName"] = json!(self.node_name);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }))
        .unwrap();
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"))
            .metadata
            .uid
            .unwrap()
    }

    pub async fn status(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let p = self.pods.get(name).await?;
        Ok(serde_json::to_value(p.status.unwrap_or_default())?)
    }

    /// Waits until `check` accepts the pod's status; panics with the status and kubelet log.
    pub async fn wait_status<F>(
        &self,
        name: &str,
        secs: u64,
        what: &str,
        check: F,
    ) -> serde_json::Value
    where
        F: Fn(&serde_json::Value) -> bool,
    {
        let r = wait_for(Duration::from_secs(secs), what, || async {
            let st = self.status(name).await?;
            anyhow::ensure!(check(&st), "status {st}");
            Ok(st)
        })
        .await;
        r.unwrap_or_else(|e| panic!("{name}: {e:#}\nkubelet log:\n{}", self.log_tail()))
    }

    /// The text of a container's current log file (CRI format lines).
    pub fn log_of(&self, name: &str, uid: &str, container: &str, restart: u32) -> String {
        std::fs::read_to_string(
            self.logs_dir
                .join(format!("default_{name}_{uid}"))
                .join(container)
                .join(format!("{restart}.log")),
        )
        .unwrap_or_default()
    }

    /// Waits until a container's log contains `needle`; returns the log.
    pub async fn wait_log(&self, name: &str, uid: &str, container: &str, needle: &str) -> String {
        wait_for(Duration::from_secs(20), needle, || async {
            let l = self.log_of(name, uid, container, 0);
            anyhow::ensure!(l.contains(needle), "log so far: {l}");
            Ok(l)
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{name}/{container}: {e:#}\nkubelet log:\n{}",
                self.log_tail()
            )
        })
    }

    pub async fn containers_of(&self, uid: &str) -> Vec<k8s_cri::v1::Container> {
        self.cri
            .list_containers(
                None,
                HashMap::from([("io.kubernetes.pod.uid".to_string(), uid.to_string())]),
            )
            .await
            .unwrap()
    }

    /// (reason, message) of the events about a pod.
    pub async fn events_of(&self, name: &str) -> Vec<(String, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        api.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }
}

/// What the controller manager's serviceaccount and root-ca-cert-publisher controllers put
/// in every namespace (no controller manager runs here): the `default` ServiceAccount and the
/// `kube-root-ca.crt` ConfigMap, which the API server's ServiceAccount admission makes every
/// pod mount (the `kube-api-access-*` projected volume).
pub async fn namespace_defaults(client: &kube::Client, cp: &ControlPlane, ns: &str) {
    let pp = PostParams::default();
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    let _ = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&pp, &sa)
        .await;
    let ca = std::fs::read_to_string(cp.dir().join("pki/ca.crt")).unwrap_or_default();
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": ca}}),
    )
    .unwrap();
    let _ = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&pp, &cm)
        .await;
}

pub fn condition(st: &serde_json::Value, ty: &str) -> String {
    st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

pub fn waiting_reason(st: &serde_json::Value, i: usize) -> String {
    st["containerStatuses"][i]["state"]["waiting"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

pub const BUSYBOX: &str = kelson_oci::BUSYBOX_IMAGE;
