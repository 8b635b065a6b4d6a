//! The kubelet's HTTPS API end to end, driven by the real kubectl through the API server:
//! `kubectl logs` (plain, `--tail`, `-f`, `--previous`), `kubectl exec` (exit codes, stdin),
//! `kubectl cp` both ways, `kubectl port-forward` to a pod's HTTP server, `nodes/proxy`, and
//! the kubelet's own authentication (401) and SubjectAccessReview authorization (403).
//! Exec, `exec -i`, `cp` and port-forward go over WebSocket (kubectl 1.32 tries it first; the
//! kubelet translates to the runtime's SPDY), checked in kubectl's `-v=7` log; the official
//! Python client's `stream()` exec runs over v5 and v4.channel.k8s.io.
//!
//! One control plane (kelson-kv + kelson-apiserver with a kubelet client certificate), a
//! private containerd, one kubelet on an ephemeral API port with a CA-issued serving
//! certificate, and one pod with three containers (a ticker, an httpd, a crasher), so the
//! expensive parts start once. Needs root, containerd, runc, CNI plugins and busybox-static,
//! and `cargo build -p kelson-kv -p kelson-apiserver -p kelson-kubelet`. Traffic stays on
//! loopback and the test's own bridge.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kelson_pki::{CertRequest, Usage};
use kelson_testsupport::{
    bin_path, free_port, wait_for, wait_until, ChildGuard, Containerd, ControlPlane,
    ControlPlaneOpts, DbusDaemon, HostCleanup, KUBECTL,
};
use kube::api::{Api, PostParams};
use serde_json::json;

fn prerequisites() -> Result<(), String> {
    let missing: Vec<&str> = [
        (nix::unistd::geteuid().is_root(), "root"),
        (Path::new("/usr/bin/containerd").exists(), "containerd"),
        (Path::new("/usr/lib/cni/bridge").exists(), "CNI plugins"),
        (
            Path::new(kelson_oci::DEFAULT_BUSYBOX).exists(),
            "busybox-static",
        ),
        (Path::new("/usr/bin/curl").exists(), "curl"),
        (Path::new(KUBECTL).exists(), "kubectl"),
        (
            Command::new("python3")
                .args(["-c", "import kubernetes"])
                .output()
                .is_ok_and(|o| o.status.success()),
            "python3 with the kubernetes package",
        ),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, n)| n)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing prerequisites: {missing:?} (scripts/setup.sh)"
        ))
    }
}

fn kubectl_cmd(cp: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(KUBECTL);
    c.env("KUBECONFIG", kubeconfig)
        .env("HOME", cp.dir())
        .args(["--request-timeout", "20s"])
        .args(args);
    c
}

/// kubectl with `stdin` fed and closed, bounded by `timeout` (killed after it).
fn kubectl_io(cp: &ControlPlane, args: &[&str], stdin: &[u8], timeout: Duration) -> Output {
    let mut child = kubectl_cmd(cp, cp.kubeconfig_path(), args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl");
    let mut w = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&data);
    });
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = writer.join();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `curl` against the kubelet API; returns (HTTP code, body).
fn curl(url: &str, cert: Option<(&Path, &Path)>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sk", "--max-time", "10", "-w", "\n%{http_code}"]);
    if let Some((crt, key)) = cert {
        c.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    let out = c.arg(url).output().expect("curl");
    let s = text(&out.stdout);
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Fetches `/index.html` from `pod`'s `port` through the Python client's `portforward()`.
fn python_port_forward(cp: &ControlPlane, dir: &Path, pod: &str, port: u16) -> serde_json::Value {
    let script = dir.join("port_forward.py");
    std::fs::write(
        &script,
        r#"import json, sys
from kubernetes import client, config
from kubernetes.stream import portforward
kubeconfig, pod, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
config.load_kube_config(config_file=kubeconfig)
api = client.CoreV1Api()
pf = portforward(api.connect_get_namespaced_pod_portforward, pod, "default", ports=str(port))
s = pf.socket(port)
s.settimeout(20)
s.sendall(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
s.close()
print(json.dumps({"response": data.decode(errors="replace"), "error": pf.error(port)}))
"#,
    )
    .unwrap();
    run_python(
        &script,
        &[
            cp.kubeconfig_path().to_str().unwrap(),
            pod,
            &port.to_string(),
        ],
    )
}

/// Runs a Python script (bounded to 40 s) and parses the JSON it prints.
fn run_python(script: &Path, args: &[&str]) -> serde_json::Value {
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let deadline = Instant::now() + Duration::from_secs(40);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; stdout {:?}; stderr {}",
            script.display(),
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// Runs `sh -c 'echo hi; echo err >&2; exit 3'` in `pod` with the Python `kubernetes`
/// client's `stream()` (WebSocket), offering only `protocol` ("v5" or "v4").
fn python_exec(
    cp: &ControlPlane,
    dir: &Path,
    protocol: &str,
    pod: &str,
    container: &str,
) -> serde_json::Value {
    let script = dir.join("exec.py");
    std::fs::write(
        &script,
        r#"import json, sys, time
from kubernetes import client, config
from kubernetes.stream import stream, ws_client
kubeconfig, pod, container, protocol = sys.argv[1:5]
if protocol == "v4":
    # The client offers v5 then v4; offering v4 twice makes the server pick v4.
    ws_client.V5_CHANNEL_PROTOCOL = ws_client.V4_CHANNEL_PROTOCOL
config.load_kube_config(config_file=kubeconfig)
api = client.CoreV1Api()
resp = stream(api.connect_get_namespaced_pod_exec, pod, "default", container=container,
              command=["sh", "-c", "echo hi; echo err >&2; exit 3"],
              stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
resp.run_forever(timeout=20)
out = {"stdout": resp.read_stdout(timeout=0) or "", "stderr": resp.read_stderr(timeout=0) or "",
       "code": resp.returncode, "protocol": getattr(resp, "subprotocol", None)}
print(json.dumps(out))
"#,
    )
    .unwrap();
    run_python(
        &script,
        &[
            cp.kubeconfig_path().to_str().unwrap(),
            pod,
            container,
            protocol,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_exec_cp_port_forward_through_the_kubelet_api() {
    prerequisites().unwrap_or_else(|e| panic!("{e}"));
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();

    // The API server's kubelet client identity is issued from the cluster CA once it exists;
    // the CA is generated by the fixture, so the certificates are issued from a CA of our own
    // that the kubelet trusts for callers and the API server trusts for the kubelet.
    let ca = kelson_pki::Ca::generate("kelson-test-kubelet-ca").unwrap();
    ca.pair().write_pair(&pki, "kubelet-ca").unwrap();
    ca.issue(&CertRequest {
        organization: Some("system:masters".into()),
        ..CertRequest::new("kube-apiserver-kubelet-client", Usage::Client)
    })
    .unwrap()
    .write_pair(&pki, "apiserver-kubelet-client")
    .unwrap();
    ca.issue(&CertRequest {
        ip_addresses: vec!["127.0.0.1".parse().unwrap()],
        ..CertRequest::new("kubelet", Usage::Server)
    })
    .unwrap()
    .write_pair(&pki, "kubelet")
    .unwrap();
    ca.issue(&CertRequest::new("alice", Usage::Client))
        .unwrap()
        .write_pair(&pki, "alice")
        .unwrap();
    let p = |n: &str| pki.join(n).display().to_string();
    let cp = ControlPlane::start_with(ControlPlaneOpts {
        apiserver_args: vec![
            format!(
                "--kubelet-client-certificate={}",
                p("apiserver-kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
            format!("--kubelet-certificate-authority={}", p("kubelet-ca.crt")),
        ],
    })
    .await
    .expect("control plane");
    let ctrd = Containerd::start(&work.path().join("containerd"))
        .await
        .expect("containerd");
    let suffix = format!("{:04x}", (std::process::id() ^ 0x5a5a) & 0xffff);
    let node = format!("ks-node-{suffix}");
    let _cleanup = HostCleanup {
        bridge: format!("ks{suffix}"),
        cgroup_root: format!("kelson-stream-{suffix}"),
    };
    let node_kubeconfig = cp
        .kubeconfig_for(&format!("system:node:{node}"), Some("system:nodes"))
        .unwrap();
    let port = free_port();
    let bus = DbusDaemon::start().expect("private D-Bus daemon");
    let mut cmd = Command::new(bin_path("kelson-kubelet"));
    cmd.args([
        format!("--dbus-address={}", bus.address()),
        format!("--kubeconfig={}", node_kubeconfig.display()),
        format!("--hostname-override={node}"),
        format!("--container-runtime-endpoint={}", ctrd.endpoint()),
        format!("--cni-conf-dir={}", ctrd.cni_conf_dir().display()),
        format!("--cni-bridge-name=ks{suffix}"),
        format!("--cni-ipam-data-dir={}", work.path().join("ipam").display()),
        "--pod-cidr=10.251.9.0/24".into(),
        format!("--root-dir={}", work.path().join("kubelet").display()),
        format!("--pod-logs-dir={}", work.path().join("pod-logs").display()),
        "--node-ip=127.0.0.1".into(),
        format!("--cgroup-root=/kelson-stream-{suffix}"),
        "--node-status-update-frequency=2".into(),
        "--address=127.0.0.1".into(),
        format!("--port={port}"),
        format!("--tls-cert-file={}", p("kubelet.crt")),
        format!("--tls-private-key-file={}", p("kubelet.key")),
        format!("--client-ca-file={}", p("kubelet-ca.crt")),
    ])
    .env("KELSON_LOG_LEVEL", "info,kube=warn");
    let kubelet = ChildGuard::spawn("kelson-kubelet", cmd, &work.path().join("kubelet.log"))
        .expect("kubelet");
    let client = cp.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "box", "namespace": "default", "labels": {"app": "box"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [
                {"name": "ticker", "image": kelson_oci::BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                 "command": ["sh", "-c", "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.2; done"]},
                {"name": "web", "image": kelson_oci::BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                 "command": ["sh", "-c", "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www"]},
                {"name": "crash", "image": kelson_oci::BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                 "command": ["sh", "-c", "n=$(cat /s/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /s/n; echo run-$n; sleep 1; exit 1"],
                 "volumeMounts": [{"name": "scratch", "mountPath": "/s"}]},
            ],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let log_tail = || kubelet.log_tail(30);
    wait_for(
        Duration::from_secs(60),
        "box running with a restarted crasher",
        || async {
            let p = pods.get("box").await?;
            let st = serde_json::to_value(p.status.unwrap_or_default())?;
            let cs = st["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let running = |n: &str| {
                cs.iter()
                    .any(|c| c["name"] == n && c["state"]["running"].is_object())
            };
            anyhow::ensure!(running("ticker") && running("web"), "status {st}");
            anyhow::ensure!(
                cs.iter()
                    .any(|c| c["name"] == "crash" && c["restartCount"].as_i64() >= Some(1)),
                "crash not restarted yet: {st}"
            );
            Ok(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", log_tail()));

    // The kubelet API itself: anonymous → 401; a valid identity without RBAC → 403 through
    // the SubjectAccessReview; the API server's identity → served.
    let base = format!("https://127.0.0.1:{port}");
    assert_eq!(curl(&format!("{base}/pods"), None).0, 401);
    let alice = (pki.join("alice.crt"), pki.join("alice.key"));
    let (code, body) = curl(&format!("{base}/pods"), Some((&alice.0, &alice.1)));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("user=alice") && body.contains("subresource=proxy"),
        "{body}"
    );
    let admin = (
        pki.join("apiserver-kubelet-client.crt"),
        pki.join("apiserver-kubelet-client.key"),
    );
    let (code, body) = curl(&format!("{base}/pods"), Some((&admin.0, &admin.1)));
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "PodList");
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["metadata"]["name"] == "box"));
    assert_eq!(
        curl(&format!("{base}/healthz"), Some((&admin.0, &admin.1))),
        (200, "ok".into())
    );
    assert_eq!(
        curl(&format!("{base}/nope"), Some((&admin.0, &admin.1))).0,
        404
    );

    // nodes/proxy through the API server.
    assert_eq!(
        cp.kubectl_ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/healthz")
        ])
        .unwrap(),
        "ok"
    );

    // kubectl logs: whole log, --tail, --timestamps, -f, --previous.
    let all = cp.kubectl_ok(&["logs", "box", "-c", "ticker"]).unwrap();
    assert!(all.starts_with("tick-0\ntick-1\n"), "{all}");
    let tail = cp
        .kubectl_ok(&["logs", "box", "-c", "ticker", "--tail=2"])
        .unwrap();
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.lines().all(|l| l.starts_with("tick-")), "{tail}");
    let ts = cp
        .kubectl_ok(&["logs", "box", "-c", "ticker", "--tail=1", "--timestamps"])
        .unwrap();
    assert!(ts.contains("Z tick-"), "{ts}");
    let mut follow = kubectl_cmd(
        &cp,
        cp.kubeconfig_path(),
        &["logs", "-f", "box", "-c", "ticker", "--tail=1"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.len() < 4 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            got.push(l);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(got.len() >= 4, "logs -f produced {got:?}");
    let nums: Vec<u64> = got
        .iter()
        .map(|l| l.trim_start_matches("tick-").parse().unwrap())
        .collect();
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    let prev = cp
        .kubectl_ok(&["logs", "box", "-c", "crash", "--previous"])
        .unwrap();
    let cur = cp.kubectl_ok(&["logs", "box", "-c", "crash"]).unwrap();
    let n = |s: &str| s.trim().trim_start_matches("run-").parse::<u32>().unwrap();
    assert_eq!(n(&prev) + 1, n(&cur), "previous {prev:?}, current {cur:?}");
    let out = cp.kubectl(&["logs", "box", "-c", "nope"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("container nope is not valid for pod box"),
        "{}",
        text(&out.stderr)
    );

    // kubectl exec: output and exit code; stdin.
    let out = kubectl_io(
        &cp,
        &[
            "exec",
            "box",
            "-c",
            "ticker",
            "--",
            "sh",
            "-c",
            "echo hi; exit 3",
        ],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(
        text(&out.stdout),
        "hi\n",
        "{:?} {}\nKUBELET {}",
        out.status,
        text(&out.stderr),
        log_tail()
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = kubectl_io(
        &cp,
        &[
            "exec",
            "-i",
            "box",
            "-c",
            "ticker",
            "--",
            "sh",
            "-c",
            "cat; echo done",
        ],
        b"from-stdin\n",
        Duration::from_secs(30),
    );
    assert_eq!(
        text(&out.stdout),
        "from-stdin\ndone\n",
        "{}",
        text(&out.stderr)
    );
    assert!(out.status.success());

    // WebSocket exec: kubectl 1.32 asks for v5.channel.k8s.io first and now gets it (no
    // fallback to SPDY: the upgrade is a GET answered with 101).
    let out = kubectl_io(
        &cp,
        &[
            "-v=7", "exec", "box", "-c", "ticker", "--", "sh", "-c", "echo ws",
        ],
        b"",
        Duration::from_secs(30),
    );
    let err = text(&out.stderr);
    assert_eq!(text(&out.stdout), "ws\n", "{err}");
    // kubectl ≤ 1.32 logs `GET https://…/exec?… 101 Switching Protocols`, 1.33 `"Request"
    // verb="GET" url=…/exec?…` and `"Response" status="101 Switching Protocols"`.
    assert!(
        err.lines()
            .any(|l| l.contains("GET") && l.contains("/exec?"))
            && err.contains("101 Switching Protocols"),
        "no WebSocket upgrade in kubectl's log:\n{err}"
    );
    assert!(
        !err.lines()
            .any(|l| l.contains("POST") && l.contains("/exec?")),
        "kubectl fell back to SPDY:\n{err}"
    );
    // The official Python client's stream(): stdout, stderr and the exit code from the error
    // channel, over v5 (what it asks for first) and v4.
    for protocol in ["v5", "v4"] {
        let mut out = python_exec(&cp, work.path(), protocol, "box", "ticker");
        // Clients older than v30 neither report the subprotocol nor offer v5 (v4 only).
        let negotiated = out["protocol"].take();
        assert!(
            negotiated.is_null() || negotiated == format!("{protocol}.channel.k8s.io").as_str(),
            "python exec over {protocol} negotiated {negotiated}"
        );
        assert_eq!(
            out,
            json!({"stdout": "hi\n", "stderr": "err\n", "code": 3, "protocol": null}),
            "python exec over {protocol}"
        );
    }

    // kubectl cp in and out (tar over exec with stdin).
    let local = work.path().join("payload.txt");
    let payload: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&local, &payload).unwrap();
    let out = kubectl_io(
        &cp,
        &[
            "cp",
            &local.display().to_string(),
            "box:/tmp/payload.txt",
            "-c",
            "ticker",
        ],
        b"",
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "cp in: {}", text(&out.stderr));
    let out = kubectl_io(
        &cp,
        &[
            "exec",
            "box",
            "-c",
            "ticker",
            "--",
            "wc",
            "-l",
            "/tmp/payload.txt",
        ],
        b"",
        Duration::from_secs(30),
    );
    assert!(
        text(&out.stdout).trim_start().starts_with("2000"),
        "{}",
        text(&out.stdout)
    );
    let back = work.path().join("back.txt");
    let out = kubectl_io(
        &cp,
        &[
            "cp",
            "box:/tmp/payload.txt",
            &back.display().to_string(),
            "-c",
            "ticker",
        ],
        b"",
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "cp out: {}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&back).unwrap(), payload);

    // kubectl port-forward to the httpd, then an HTTP GET through the local port.
    let mut pf = kubectl_cmd(
        &cp,
        cp.kubeconfig_path(),
        &[
            "-v=7",
            "port-forward",
            "pod/box",
            ":8080",
            "--address=127.0.0.1",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut pf_out = BufReader::new(pf.stdout.take().unwrap());
    let mut first = String::new();
    let (ltx, lrx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = pf_out.read_line(&mut first);
        let _ = ltx.send(first);
        // Keep draining: kubectl prints "Handling connection for ..." per connection and
        // must not hit a closed pipe.
        let _ = std::io::copy(&mut pf_out, &mut std::io::sink());
    });
    let line = lrx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_default();
    let local_port: u16 = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            let _ = pf.kill();
            let mut e = String::new();
            let _ = pf.stderr.take().unwrap().read_to_string(&mut e);
            panic!("port-forward printed {line:?}; stderr {e}")
        });
    let mut resp = String::new();
    for _ in 0..3 {
        let (code, body) = curl(&format!("http://127.0.0.1:{local_port}/index.html"), None);
        if code == 200 {
            resp = body;
            break;
        }
        eprintln!("GET through port-forward: {code} {body:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = pf.kill();
    let _ = pf.wait();
    let mut pf_err = String::new();
    let _ = pf.stderr.take().unwrap().read_to_string(&mut pf_err);
    assert_eq!(
        resp.trim(),
        "hello-from-pod",
        "port-forward stderr: {pf_err}"
    );
    // kubectl tunnels SPDY through a WebSocket (no fallback to a plain SPDY upgrade).
    assert!(
        pf_err.contains("SPDY/3.1+portforward.k8s.io")
            && pf_err.contains("101 Switching Protocols")
            && !pf_err
                .lines()
                .any(|l| l.contains("POST") && l.contains("/portforward")),
        "port-forward did not use the WebSocket tunnel:\n{pf_err}"
    );

    // The Python client's portforward() (v4.channel.k8s.io over WebSocket, `ports=` query).
    let out = python_port_forward(&cp, work.path(), "box", 8080);
    assert_eq!(out["error"], serde_json::Value::Null, "{out}");
    let resp = out["response"].as_str().unwrap_or_default();
    assert!(
        resp.starts_with("HTTP/1.") && resp.contains(" 200 ") && resp.ends_with("hello-from-pod\n"),
        "{resp:?}"
    );

    // D-Bus Drain: cordons, and a budget allowing no disruption keeps the pod (429s retried
    // until the timeout); once the budget allows one, the pod is evicted and goes.
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: box\nspec:\n  maxUnavailable: 0\n  selector:\n    matchLabels: {app: box}\n"),
    );
    let budget = |allowed: u32| {
        cp.kubectl_ok(&[
            "patch", "pdb", "box", "--subresource=status", "--type=merge", "-p",
            &format!(r#"{{"status":{{"observedGeneration":1,"disruptionsAllowed":{allowed},"currentHealthy":1,"desiredHealthy":1,"expectedPods":1}}}}"#),
        ])
        .unwrap()
    };
    budget(0);
    let drain = |secs: u32| {
        Command::new("busctl")
            .arg(format!("--address={}", bus.address()))
            .args([
                "--timeout=60",
                "call",
                "io.kelson.Kubelet1",
                "/io/kelson/Kubelet1",
                "io.kelson.Kubelet1",
                "Drain",
                "u",
            ])
            .arg(secs.to_string())
            .output()
            .expect("busctl")
    };
    let out = drain(3);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("drain timed out") && err.contains("default/box"),
        "{err}"
    );
    assert!(err.contains("disruption budget"), "{err}");
    let unsched = cp
        .kubectl_ok(&["get", "node", &node, "-o", "jsonpath={.spec.unschedulable}"])
        .unwrap();
    assert_eq!(unsched, "true");
    assert!(cp.kubectl(&["get", "pod", "box"]).status.success());
    budget(1);
    let out = drain(40);
    assert_eq!(text(&out.stdout).trim(), "u 1", "{}", text(&out.stderr));
    wait_until(Duration::from_secs(20), "box gone", || async {
        !cp.kubectl(&["get", "pod", "box"]).status.success()
    })
    .await
    .unwrap();
    drop(kubelet);
}
