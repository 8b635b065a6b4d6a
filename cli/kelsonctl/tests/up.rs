//! `kelsonctl up` end to end with the real kelson-kv binary: prints `ready`, serves etcdctl over
//! mutual TLS with the generated client cert, stops cleanly on SIGTERM leaving no child behind,
//! and a second `up` on the same data dir resumes the same data and certificates. Also offline
//! `kv snapshot restore` into a fresh data dir that kelson-kv then serves.
//!
//! With root, containerd, CNI plugins and busybox-static, the first `up` also runs the node
//! (kelson-proxy, node-local kelson-dns, private containerd + kelson-kubelet): the node turns
//! Ready, a Deployment rolls out behind a ClusterIP Service, a client pod resolves the Service
//! through cluster DNS and gets an answer through the proxy's rules, and sees its
//! ServiceAccount token volume; `kubectl logs` and `exec` work through the kubelet API; every
//! daemon is healthy on `up`'s private D-Bus; stopping leaves no containerd, shim or container
//! process, nftables table or DNS address behind. The resume run is `--no-node` (it checks
//! data, not pods).
//!
//! Needs the daemons built first: `cargo build -p kelson-kv -p kelson-apiserver
//! -p kelson-scheduler -p kelson-controller-manager -p kelson-kubelet -p kelson-proxy
//! -p kelson-dns` (bin_path explains if one is missing).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kelson_testsupport::{
    bin_path, etcdctl, free_port, ChildGuard, ClusterOpts, StoreCluster, StoreKind,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Kills a process we only know by pid (kelson-kv under kelsonctl) if the test fails midway.
struct PidGuard(i32);
impl Drop for PidGuard {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

fn alive(pid: i32) -> bool {
    // kill(pid, 0) also succeeds for zombies; a zombie has exited.
    kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
}

/// Whether this machine can run the node part (see the module docs).
fn node_prerequisites() -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && Path::new("/usr/bin/containerd").exists()
        && Path::new("/usr/lib/cni/bridge").exists()
        && Path::new(kelson_oci::DEFAULT_BUSYBOX).exists()
        && Path::new("/usr/sbin/nft").exists();
    if !ok {
        eprintln!("node part impossible: needs root, containerd, CNI plugins and busybox-static");
    }
    ok
}

/// PIDs of live processes whose command line mentions `needle` (containerd and its shims
/// name the data dir), plus `extra`.
fn pids_mentioning(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmd)
                .contains(needle)
                .then_some(pid)
        })
        .filter(|p| alive(*p))
        .collect()
}

fn start_up(data: &Path, kv_port: u16, api_port: u16, node: bool, log: &Path) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelsonctl"));
    cmd.arg("up")
        .arg("--data-dir")
        .arg(data)
        .arg("--kv-port")
        .arg(kv_port.to_string())
        .arg("--apiserver-port")
        .arg(api_port.to_string())
        .arg("--ready-timeout=60")
        .env("KELSON_KV_BIN", bin_path("kelson-kv"))
        .env("KELSON_APISERVER_BIN", bin_path("kelson-apiserver"));
    if node {
        cmd.env("KELSON_KUBELET_BIN", bin_path("kelson-kubelet"));
    } else {
        cmd.arg("--no-node");
    }
    ChildGuard::spawn("kelsonctl up", cmd, log).unwrap()
}

/// Waits for a `ready` line; returns kelson-kv's pid from the `kv: pid N` line.
fn wait_ready(up: &mut ChildGuard) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let log = up.log();
        if log.lines().any(|l| l == "ready") {
            let pid = log
                .lines()
                .filter_map(|l| l.strip_prefix("kv: pid "))
                .next_back()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("no `kv: pid` line:\n{log}"));
            return pid;
        }
        if let Some(st) = up.try_wait() {
            panic!("kelsonctl up exited ({st}) before ready:\n{log}");
        }
        assert!(Instant::now() < deadline, "no `ready` within 90 s:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tls_args(pki: &Path) -> Vec<String> {
    vec![
        format!("--cacert={}", pki.join("store-ca.crt").display()),
        format!("--cert={}", pki.join("kv-client.crt").display()),
        format!("--key={}", pki.join("kv-client.key").display()),
    ]
}

fn ctl(endpoint: &str, pki: &Path, args: &[&str]) -> std::process::Output {
    let tls = tls_args(pki);
    let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    etcdctl(endpoint, &all)
}

#[test]
fn up_serves_stops_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kelson");
    let pki = data.join("pki");
    let port = free_port();
    let api_port = free_port();
    let ep = format!("https://127.0.0.1:{port}");

    // The node part is the point of `up`: without its prerequisites the test fails, not shrinks.
    let node = node_prerequisites();
    assert!(
        node,
        "needs root, containerd, CNI plugins and busybox-static (scripts/setup.sh)"
    );
    let mut up = start_up(&data, port, api_port, node, &tmp.path().join("up1.log"));
    let kv_pid = wait_ready(&mut up);
    let _kv_guard = PidGuard(kv_pid);
    let log = up.log();
    for want in ["data dir:", "pki:", "kv.log", &ep] {
        assert!(log.contains(want), "missing {want:?} in:\n{log}");
    }

    let out = ctl(&ep, &pki, &["put", "resume-key", "resume-value"]);
    assert!(out.status.success(), "put: {out:?}\n{}", up.log());
    let out = ctl(&ep, &pki, &["get", "resume-key", "--print-value-only"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "resume-value",
        "{out:?}"
    );
    // Client-cert auth is on: no client certificate, no service.
    let out = etcdctl(
        &ep,
        &[
            &format!("--cacert={}", pki.join("store-ca.crt").display()),
            "get",
            "resume-key",
        ],
    );
    assert!(
        !out.status.success(),
        "no client cert must be refused: {out:?}"
    );

    // The API server is up behind the store, and admin.kubeconfig reaches it.
    let kubectl = |args: &[&str]| {
        Command::new("/usr/bin/kubectl")
            .env("KUBECONFIG", data.join("admin.kubeconfig"))
            .env("HOME", tmp.path())
            .args(args)
            .output()
            .unwrap()
    };
    let ns = kubectl(&["get", "ns", "-o", "name"]);
    assert!(
        String::from_utf8_lossy(&ns.stdout).contains("namespace/kube-system"),
        "{ns:?}\n{}",
        up.log()
    );
    let cm = kubectl(&[
        "-n",
        "default",
        "create",
        "configmap",
        "resume-cm",
        "--from-literal=k=v",
    ]);
    assert!(cm.status.success(), "{cm:?}");

    // kelsonctl kv status over the same TLS material.
    let tls = tls_args(&pki);
    let st = Command::new(env!("CARGO_BIN_EXE_kelsonctl"))
        .args(["kv", "status", &format!("--endpoints={ep}")])
        .args(&tls)
        .output()
        .unwrap();
    assert!(st.status.success(), "kv status: {st:?}");
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("true"),
        "{st:?}"
    );

    // The node: Ready, and a deployment's pod scheduled onto it and Running.
    let mut node_pids = Vec::new();
    if node {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = kubectl(&[
                "get",
                "nodes",
                "-o",
                r#"jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}"#,
            ]);
            if String::from_utf8_lossy(&out.stdout).trim() == "True" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node not Ready in 60 s: {out:?}
{}",
                up.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        // A Deployment behind a ClusterIP Service, and a client pod that finds it through
        // cluster DNS and talks to it through kelson-proxy's rules; it also sees its
        // ServiceAccount token volume. `kubectl logs`/`exec` go through the kubelet's API.
        let out = kubectl(&[
            "create",
            "deployment",
            "web",
            &format!("--image={}", kelson_oci::BUSYBOX_IMAGE),
            "--",
            "sh",
            "-c",
            "echo hello-from-web > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
        ]);
        assert!(out.status.success(), "{out:?}");
        let out = kubectl(&[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=8080",
        ]);
        assert!(out.status.success(), "{out:?}");
        let out = kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
        assert!(out.status.success(), "{out:?}\n{}", up.log());
        let cluster_ip = String::from_utf8_lossy(
            &kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]).stdout,
        )
        .trim()
        .to_string();
        assert!(!cluster_ip.is_empty());
        let out = kubectl(&[
            "run",
            "client",
            &format!("--image={}", kelson_oci::BUSYBOX_IMAGE),
            "--restart=Never",
            "--",
            "sh",
            "-c",
            "nslookup web.default.svc.cluster.local; wget -qO- http://web/; \
             ls /var/run/secrets/kubernetes.io/serviceaccount",
        ]);
        assert!(out.status.success(), "{out:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]);
            let phase = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if phase == "Succeeded" || phase == "Failed" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "client pod not finished in 60 s: {phase:?}\n{}",
                up.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let logs = kubectl(&["logs", "client"]);
        let text = String::from_utf8_lossy(&logs.stdout);
        assert!(logs.status.success(), "{logs:?}");
        assert!(
            text.contains(&format!("Address: {cluster_ip}")),
            "DNS did not resolve web to {cluster_ip}:\n{text}"
        );
        assert!(
            text.contains("hello-from-web"),
            "no answer through the ClusterIP:\n{text}"
        );
        assert!(text.contains("token") && text.contains("ca.crt"), "{text}");
        let pod = String::from_utf8_lossy(
            &kubectl(&[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])
            .stdout,
        )
        .trim()
        .to_string();
        let ex = kubectl(&["exec", &pod, "--", "sh", "-c", "echo exec-ok; exit 3"]);
        assert_eq!(ex.status.code(), Some(3), "{ex:?}");
        assert!(String::from_utf8_lossy(&ex.stdout).contains("exec-ok"));

        // `systemctl reload` sends SIGHUP: no daemon may die of it.
        let log = up.log();
        for d in [
            "scheduler",
            "controller-manager",
            "proxy",
            "dns",
            "kubelet",
            "apiserver",
        ] {
            let pid: i32 = log
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{d}: pid ")))
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("no `{d}: pid` line:\n{log}"));
            kill(Pid::from_raw(pid), Signal::SIGHUP).unwrap();
        }
        std::thread::sleep(Duration::from_secs(1));

        // Every node daemon shows on the private bus `up` runs (and survived the SIGHUP).
        let st = Command::new(env!("CARGO_BIN_EXE_kelsonctl"))
            .args(["status", "--json", "--bus"])
            .arg(format!(
                "unix:path={}",
                data.join("run/dbus.sock").display()
            ))
            .output()
            .unwrap();
        let rows = String::from_utf8_lossy(&st.stdout);
        for d in [
            "kelson-kubelet",
            "kelson-proxy",
            "kelson-dns",
            "kelson-apiserver",
        ] {
            assert!(
                rows.lines()
                    .any(|l| l.contains(&format!("\"component\":\"{d}\""))
                        && l.contains("\"health\":\"healthy\"")),
                "{d} not healthy on the bus:\n{rows}"
            );
        }
        // containerd, its shims and the containers' processes (task PIDs from ctr).
        node_pids = pids_mentioning(&data.join("containerd").display().to_string());
        let tasks = Command::new("ctr")
            .arg("--address")
            .arg(data.join("containerd/containerd.sock"))
            .args(["-n", "k8s.io", "tasks", "ls"])
            .output()
            .unwrap();
        node_pids.extend(
            String::from_utf8_lossy(&tasks.stdout)
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<i32>().ok())
                .filter(|p| *p > 0),
        );
        assert!(
            node_pids.len() >= 4,
            "containerd, a shim and the pod's two tasks expected: {node_pids:?} {tasks:?}"
        );
    }
    let _node_guards: Vec<PidGuard> = node_pids.iter().map(|p| PidGuard(*p)).collect();

    let ca_before = std::fs::read(pki.join("ca.crt")).unwrap();
    let store_ca_before = std::fs::read(pki.join("store-ca.crt")).unwrap();
    let status = up.terminate(Duration::from_secs(60)).unwrap();
    assert!(
        status.success(),
        "up must exit 0 on SIGTERM: {status}\n{}",
        up.log()
    );
    assert!(!alive(kv_pid), "kelson-kv {kv_pid} outlived kelsonctl up");
    let left: Vec<i32> = node_pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(
        left.is_empty(),
        "node processes outlived kelsonctl up: {left:?}\n{}",
        up.log()
    );
    if node {
        assert!(up.log().contains("killed and removed"), "{}", up.log());
        // What the proxy and DNS leave on a real node does not outlive `up`.
        let tables = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&tables.stdout).contains("kelson-proxy"),
            "{tables:?}"
        );
        let lo = Command::new("ip")
            .args(["addr", "show", "lo"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&lo.stdout).contains("169.254.20.10"),
            "{lo:?}"
        );
    }
    assert!(up.log().contains("stopped"), "{}", up.log());

    // Second run: same dir, same port → same data, same CA.
    let mut up2 = start_up(&data, port, api_port, false, &tmp.path().join("up2.log"));
    let kv_pid2 = wait_ready(&mut up2);
    let _kv_guard2 = PidGuard(kv_pid2);
    assert_eq!(
        std::fs::read(pki.join("ca.crt")).unwrap(),
        ca_before,
        "CA rotated"
    );
    assert_eq!(
        std::fs::read(pki.join("store-ca.crt")).unwrap(),
        store_ca_before,
        "store CA rotated"
    );
    let out = ctl(&ep, &pki, &["get", "resume-key", "--print-value-only"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "resume-value",
        "{out:?}\n{}",
        up2.log()
    );
    let cm = kubectl(&[
        "-n",
        "default",
        "get",
        "configmap",
        "resume-cm",
        "-o",
        "jsonpath={.data.k}",
    ]);
    assert_eq!(String::from_utf8_lossy(&cm.stdout), "v", "{cm:?}");
    let status = up2.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status}\n{}", up2.log());
    assert!(!alive(kv_pid2));
}

#[tokio::test]
async fn snapshot_save_and_restore_with_kelson_kv() {
    let src = StoreCluster::start(StoreKind::Kelson, 1, ClusterOpts::default())
        .await
        .unwrap();
    let out = src.etcdctl(&["put", "restored-key", "restored-value"]);
    assert!(out.status.success(), "{out:?}\n{}", src.logs());

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("snap.db");
    let ctl = env!("CARGO_BIN_EXE_kelsonctl");
    let out = Command::new(ctl)
        .args(["kv", "snapshot", "save", file.to_str().unwrap()])
        .arg(format!("--endpoints={}", src.endpoint(0)))
        .output()
        .unwrap();
    assert!(out.status.success(), "save: {out:?}\n{}", src.logs());
    drop(src);

    let data = tmp.path().join("restored");
    let (cport, pport) = (free_port(), free_port());
    let peer = format!("http://127.0.0.1:{pport}");
    let client = format!("http://127.0.0.1:{cport}");
    let out = Command::new(ctl)
        .args(["kv", "snapshot", "restore", file.to_str().unwrap()])
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", "r1", "--initial-cluster-token", "restored"])
        .arg(format!("--initial-cluster=r1={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {out:?}");
    // Restoring over an existing data dir is refused.
    let again = Command::new(ctl)
        .args(["kv", "snapshot", "restore", file.to_str().unwrap()])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let mut cmd = Command::new(bin_path("kelson-kv"));
    cmd.args([
        "--name",
        "r1",
        "--initial-cluster-token",
        "restored",
        "--no-dbus",
    ])
    .arg("--data-dir")
    .arg(&data)
    .arg(format!("--listen-client-urls={client}"))
    .arg(format!("--advertise-client-urls={client}"))
    .arg(format!("--listen-peer-urls={peer}"))
    .arg(format!("--initial-advertise-peer-urls={peer}"))
    .arg(format!("--initial-cluster=r1={peer}"));
    let mut kv = ChildGuard::spawn("kelson-kv restored", cmd, &tmp.path().join("kv.log")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(&client, &["get", "restored-key", "--print-value-only"]);
        if String::from_utf8_lossy(&out.stdout).trim() == "restored-value" {
            break;
        }
        assert!(kv.is_running(), "kelson-kv exited:\n{}", kv.log());
        assert!(
            Instant::now() < deadline,
            "restored data not served: {out:?}\n{}",
            kv.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    kv.terminate(Duration::from_secs(15)).unwrap();
}
