//! Test harness: a control plane, the ccm binary in controller or speaker mode, Node objects,
//! and an L2 lab made of network namespaces.
//!
//! The lab is self-contained: a "switch" namespace holds a bridge; every host namespace
//! (nodes and a client) gets a veth whose other end is a bridge port. The veths are created
//! inside the switch namespace and moved, so nothing is ever created in the test machine's own
//! namespace, and the fixed subnet inside the lab cannot collide with other tests. Namespace
//! names carry the pid and a counter; dropping the lab deletes every namespace (and with them
//! the bridge and veths).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kelson_testsupport::{ChildGuard, ControlPlane};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

pub const SUBNET_PREFIX: &str = "10.77.0";

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, raw sockets); run it as root"
    );
    assert!(
        Command::new("ip").arg("-V").output().is_ok(),
        "this test needs iproute2's `ip`"
    );
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "this test needs curl (the client in the lab)"
    );
}

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One host on the lab's segment.
pub struct Host {
    pub netns: String,
    pub ip: String,
    pub mac: String,
}

pub struct Lab {
    pub switch: String,
    pub hosts: Vec<Host>,
}

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// A bridge and one host per `(label, last octet)`; each host's interface is `eth0` with
    /// address `10.77.0.<octet>/24` and MAC `02:00:00:00:00:<octet in hex>`.
    pub fn new(hosts: &[(&str, u8)]) -> Lab {
        let id = format!(
            "kccm{}x{}",
            std::process::id(),
            LAB_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{id}-sw");
        run_ok(&["ip", "netns", "add", &switch]);
        let mut lab = Lab {
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        run_ok(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"]);
        run_ok(&["ip", "-n", &switch, "link", "set", "br0", "up"]);
        for (i, (label, octet)) in hosts.iter().enumerate() {
            let ns = format!("{id}-{label}");
            run_ok(&["ip", "netns", "add", &ns]);
            // Pushed before configuring so Drop deletes it even if a step below panics.
            let mac = format!("02:00:00:00:00:{octet:02x}");
            let ip = format!("{SUBNET_PREFIX}.{octet}");
            lab.hosts.push(Host {
                netns: ns.clone(),
                ip: ip.clone(),
                mac: mac.clone(),
            });
            let port = format!("p{i}");
            let inner = format!("h{i}");
            run_ok(&[
                "ip", "-n", &switch, "link", "add", &inner, "type", "veth", "peer", "name", &port,
            ]);
            run_ok(&[
                "ip", "-n", &switch, "link", "set", &port, "master", "br0", "up",
            ]);
            run_ok(&["ip", "-n", &switch, "link", "set", &inner, "netns", &ns]);
            run_ok(&["ip", "-n", &ns, "link", "set", &inner, "name", "eth0"]);
            run_ok(&["ip", "-n", &ns, "link", "set", "eth0", "address", &mac]);
            run_ok(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
            run_ok(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            run_ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    pub fn host(&self, label: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.netns.ends_with(&format!("-{label}")))
            .unwrap_or_else(|| panic!("no host {label}"))
    }

    /// `busybox httpd` in the host's namespace serving `body` on port 8080.
    pub fn http_server(&self, label: &str, body: &str, dir: &Path) -> ChildGuard {
        let h = self.host(label);
        let root = dir.join(format!("www-{label}"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("index.html"), body).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", &h.netns, "busybox", "httpd", "-f", "-p", "8080", "-h",
        ])
        .arg(&root);
        ChildGuard::spawn(
            &format!("httpd-{label}"),
            cmd,
            &dir.join(format!("httpd-{label}.log")),
        )
        .unwrap()
    }

    /// HTTP GET from the host `label` (2 s bound); the body, or None on failure.
    pub fn fetch(&self, label: &str, ip: &str) -> Option<String> {
        let h = self.host(label);
        // curl rather than busybox wget: the static busybox wget segfaults on these
        // machines; --noproxy so a proxy in the environment never sees lab addresses.
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &h.netns,
            "curl",
            "-s",
            "--noproxy",
            "*",
            "-m",
            "2",
            &format!("http://{ip}:8080/"),
        ]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The MAC the host `label` has in its neighbour table for `ip`, if any.
    pub fn neighbor_mac(&self, label: &str, ip: &str) -> Option<String> {
        let h = self.host(label);
        let out = run_ok(&["ip", "-n", &h.netns, "neigh", "show", ip]);
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "lladdr" {
                return words.next().map(str::to_string);
            }
        }
        None
    }

    pub fn has_address(&self, label: &str, ip: &str) -> bool {
        let h = self.host(label);
        run_ok(&["ip", "-n", &h.netns, "-o", "addr", "show", "dev", "eth0"])
            .contains(&format!(" {ip}/"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = run(&["ip", "netns", "del", &h.netns]);
        }
        let _ = run(&["ip", "netns", "del", &self.switch]);
    }
}

/// Starts the ccm binary with `config` (TOML text) and `args`.
pub fn start_ccm(cp: &ControlPlane, name: &str, config: &str, args: &[&str]) -> ChildGuard {
    let cfg_path = cp.dir().join(format!("{name}.toml"));
    std::fs::write(&cfg_path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelson-cloud-controller-manager"));
    cmd.arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .arg("--config")
        .arg(&cfg_path)
        .args([
            "--no-dbus",
            "--log-level",
            "info,kelson_cloud_controller_manager=debug",
        ])
        .args(args);
    ChildGuard::spawn(name, cmd, &cp.dir().join(format!("{name}.log"))).expect("ccm starts")
}

/// Creates a Node and sets its Ready condition through the status subresource.
pub async fn create_node(client: &kube::Client, name: &str, taints: serde_json::Value) {
    let api: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints},
    }))
    .unwrap();
    api.create(&PostParams::default(), &node)
        .await
        .expect("create node");
    set_ready(client, name, true).await;
}

pub async fn set_ready(client: &kube::Client, name: &str, ready: bool) {
    let api: Api<Node> = Api::all(client.clone());
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{
            "type": "Ready", "status": if ready { "True" } else { "False" },
            "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now
        }]}})),
    )
    .await
    .expect("patch node status");
}

/// Polls `f` every 100 ms until Some, at most `secs`; panics with `logs()` otherwise.
pub async fn wait<T, F, Fut>(what: &str, secs: u64, logs: impl Fn() -> String, mut f: F) -> T
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
            panic!("timed out after {secs}s waiting for {what}\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
