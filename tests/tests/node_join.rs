//! Node join (issue 8, "must be demonstrated" item 5).
//!
//! Discovery: `kelsonctl token create` makes a bootstrap token; `kelsonctl join --token
//! --ca-cert-hash` fetches `cluster-info`, checks the CA against the hash (computed here
//! independently with openssl, kubeadm's documented recipe) and writes a bootstrap kubeconfig
//! that authenticates as `system:bootstrap:<id>` in the node-token group. A wrong hash, an
//! unknown token, an expired token and a deleted token are all refused.
//!
//! TLS bootstrap: a kelson-kubelet started with only that bootstrap kubeconfig creates a CSR,
//! the controller manager's csrapproving (SubjectAccessReview on `nodeclient`) approves it and
//! csrsigning signs it with the cluster CA; the kubelet writes its own kubeconfig, registers and
//! turns Ready as `system:node:<name>`. A kubelet with a wrong token gets a 401 and exits. With
//! `--cluster-signing-duration=30s` the kubelet renews its certificate (a new serial, approved
//! as `selfnodeclient`) before it expires and keeps posting status past the first
//! certificate's expiry.
//!
//! Needs `cargo build -p kelson-kv -p kelson-apiserver -p kelsonctl -p kelson-controller-manager
//! -p kelson-kubelet`, /usr/bin/openssl, and for the kubelet tests root, containerd, runc and
//! the CNI plugins (scripts/setup.sh). No pods are run; the kubelet's cgroup root and bridge
//! names are unique per test and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use kelson_testsupport::{
    bin_path, ChildGuard, Containerd, ControlPlane, ControlPlaneOpts, KUBECTL,
};

fn kelsonctl(args: &[&str]) -> Output {
    Command::new(bin_path("kelsonctl"))
        .args(args)
        .output()
        .expect("running kelsonctl (cargo build -p kelsonctl)")
}

fn ok(out: &Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// kubeadm's recipe for --discovery-token-ca-cert-hash.
fn openssl_ca_hash(ca: &Path) -> anyhow::Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der | sha256sum",
            ca.display()
        ))
        .output()
        .context("openssl is required (apt-get install openssl)")?;
    let text = ok(&out)?;
    let hex = text
        .split_whitespace()
        .next()
        .context("no sha256sum output")?;
    if hex.len() != 64 {
        bail!("unexpected sha256sum output {text:?}");
    }
    Ok(format!("sha256:{hex}"))
}

/// `cluster-info` in kube-public, readable by bootstrappers (kubeadm publishes the same).
/// `--validate=false`: kubectl's client-side schema check depends on the server's whole OpenAPI
/// document, which is being extended concurrently (certificates.k8s.io); the objects here are
/// plain ConfigMap and RBAC objects validated by the server anyway.
fn publish_cluster_info(cp: &ControlPlane) -> anyhow::Result<()> {
    let ca = std::fs::read(cp.dir().join("pki/ca.crt"))?;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: {}\n    certificate-authority-data: {}\ncontexts: []\nusers: []\n",
        cp.server_url(),
        base64::engine::general_purpose::STANDARD.encode(ca)
    );
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": kubeconfig},
    });
    cp.kubectl_stdin(
        &["apply", "--validate=false", "-f", "-"],
        Some(&cm.to_string()),
    );
    cp.kubectl_ok(&["get", "configmap", "-n", "kube-public", "cluster-info"])?;
    let rbac = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "kelson:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                    "resourceNames": ["cluster-info"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "kelson:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "kelson:bootstrap-signer-clusterinfo"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                       "name": "system:bootstrappers"}]},
    ]});
    let out = cp.kubectl_stdin(
        &["apply", "--validate=false", "-f", "-"],
        Some(&rbac.to_string()),
    );
    ok(&out)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_join_discovers_the_cluster_and_refuses_bad_tokens_and_hashes() -> anyhow::Result<()>
{
    let cp = ControlPlane::start_with(ControlPlaneOpts {
        apiserver_args: vec!["--enable-bootstrap-token-auth".into()],
    })
    .await?;
    publish_cluster_info(&cp)?;
    let admin = cp.kubeconfig_path().to_str().unwrap().to_string();
    let hash = openssl_ca_hash(&cp.dir().join("pki/ca.crt"))?;
    let server = cp.server_url();
    let work = tempfile::tempdir()?;
    let bk = work.path().join("bootstrap.kubeconfig");
    let bk_s = bk.to_str().unwrap();

    let token = ok(&kelsonctl(&[
        "token",
        "create",
        "--kubeconfig",
        &admin,
        "--ttl",
        "1h",
    ]))?
    .trim()
    .to_string();
    let (id, _) = token.split_once('.').context("token shape")?;
    let listed = ok(&kelsonctl(&["token", "list", "--kubeconfig", &admin]))?;
    assert!(listed.contains(&token), "{listed}");
    assert!(listed.contains("authentication,signing"), "{listed}");

    let join = |token: &str, hash: &str| {
        kelsonctl(&[
            "join",
            "--server",
            &server,
            "--token",
            token,
            "--ca-cert-hash",
            hash,
            "--bootstrap-kubeconfig",
            bk_s,
        ])
    };

    // The right token and hash: a bootstrap kubeconfig with the token's identity.
    ok(&join(&token, &hash))?;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&bk)?.permissions().mode() & 0o777, 0o600);
    let who = ok(&Command::new(KUBECTL)
        .args(["--kubeconfig", bk_s, "auth", "whoami", "-o", "json"])
        .output()?)?;
    let who: serde_json::Value = serde_json::from_str(&who)?;
    assert_eq!(
        who["status"]["userInfo"]["username"],
        format!("system:bootstrap:{id}"),
        "{who}"
    );
    let groups = who["status"]["userInfo"]["groups"].to_string();
    assert!(
        groups.contains("\"system:bootstrappers\"")
            && groups.contains("system:bootstrappers:kelson:default-node-token"),
        "{groups}"
    );
    std::fs::remove_file(&bk)?;

    // A wrong CA hash: refused before anything is written.
    let wrong_hash = format!("sha256:{}", "0".repeat(64));
    let out = join(&token, &wrong_hash);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to join"), "{err}");
    assert!(!bk.exists());

    // A token the cluster does not know.
    let out = join("zzzzzz.0123456789abcdef", &hash);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401"), "{err}");

    // An expired token.
    let short = ok(&kelsonctl(&[
        "token",
        "create",
        "--kubeconfig",
        &admin,
        "--ttl",
        "1s",
    ]))?
    .trim()
    .to_string();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let out = join(&short, &hash);
    assert!(!out.status.success(), "an expired token was accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // A deleted token.
    ok(&kelsonctl(&["token", "delete", id, "--kubeconfig", &admin]))?;
    let out = join(&token, &hash);
    assert!(!out.status.success(), "a deleted token was accepted");
    assert!(!bk.exists());
    Ok(())
}

/// kubeadm's bindings for TLS bootstrap: bootstrappers may create CSRs and get them
/// auto-approved (`nodeclient`); nodes may renew their own (`selfnodeclient`).
fn publish_bootstrap_rbac(cp: &ControlPlane) -> anyhow::Result<()> {
    let crb = |name: &str, role: &str, group: &str| {
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
        })
    };
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        crb("kelson:kubelet-bootstrap", "system:node-bootstrapper",
            "system:bootstrappers:kelson:default-node-token"),
        crb("kelson:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            "system:bootstrappers:kelson:default-node-token"),
        crb("kelson:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:nodes"),
    ]});
    ok(&cp.kubectl_stdin(
        &["apply", "--validate=false", "-f", "-"],
        Some(&list.to_string()),
    ))?;
    Ok(())
}

/// Removes the kubelet's cgroups and (should a pod ever have created it) its bridge.
struct HostCleanup {
    bridge: String,
    cgroup_root: String,
}

impl Drop for HostCleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            let _ = std::fs::remove_dir(Path::new(base).join(&self.cgroup_root));
        }
    }
}

fn prerequisites() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    // CI runs as root after scripts/setup.sh: a missing prerequisite fails, never skips.
    assert!(
        root && Path::new("/usr/bin/containerd").exists()
            && Path::new("/usr/lib/cni/bridge").exists()
            && Path::new("/usr/bin/openssl").exists(),
        "needs root, containerd, the CNI plugins (/usr/lib/cni) and openssl (scripts/setup.sh)"
    );
}

/// A control plane with bootstrap token auth, cluster-info and the bootstrap RBAC published,
/// a controller manager running csrapproving + csrsigning with the cluster CA, and a bootstrap
/// kubeconfig made by `kelsonctl join`.
struct JoinEnv {
    cp: ControlPlane,
    work: tempfile::TempDir,
    cm: ChildGuard,
    token_id: String,
    bootstrap: PathBuf,
}

async fn join_env(signing_duration: &str) -> anyhow::Result<JoinEnv> {
    let cp = ControlPlane::start_with(ControlPlaneOpts {
        apiserver_args: vec!["--enable-bootstrap-token-auth".into()],
    })
    .await?;
    publish_cluster_info(&cp)?;
    publish_bootstrap_rbac(&cp)?;
    let work = tempfile::tempdir()?;
    let pki = cp.dir().join("pki");
    let mut cmd = Command::new(bin_path("kelson-controller-manager"));
    cmd.arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args([
            "--no-dbus",
            "--leader-elect=false",
            "--controllers=csrapproving,csrsigning",
        ])
        .arg("--cluster-signing-cert-file")
        .arg(pki.join("ca.crt"))
        .arg("--cluster-signing-key-file")
        .arg(pki.join("ca.key"))
        .arg(format!("--cluster-signing-duration={signing_duration}"));
    let cm = ChildGuard::spawn(
        "kelson-controller-manager",
        cmd,
        &work.path().join("cm.log"),
    )?;

    let admin = cp.kubeconfig_path().to_str().unwrap().to_string();
    let token = ok(&kelsonctl(&[
        "token",
        "create",
        "--kubeconfig",
        &admin,
        "--ttl",
        "1h",
    ]))?
    .trim()
    .to_string();
    let token_id = token.split_once('.').context("token shape")?.0.to_string();
    let hash = openssl_ca_hash(&pki.join("ca.crt"))?;
    let bootstrap = work.path().join("bootstrap-kubelet.conf");
    ok(&kelsonctl(&[
        "join",
        "--server",
        &cp.server_url(),
        "--token",
        &token,
        "--ca-cert-hash",
        &hash,
        "--bootstrap-kubeconfig",
        bootstrap.to_str().unwrap(),
    ]))?;
    Ok(JoinEnv {
        cp,
        work,
        cm,
        token_id,
        bootstrap,
    })
}

/// A kubelet started with only a bootstrap kubeconfig, its own containerd, ephemeral port.
struct JoinedKubelet {
    node: String,
    kubeconfig: PathBuf,
    cert_dir: PathBuf,
    guard: ChildGuard,
    _containerd: Containerd,
    _cleanup: HostCleanup,
}

async fn start_kubelet(env: &JoinEnv, tag: &str) -> anyhow::Result<JoinedKubelet> {
    let suffix = format!("{tag}{:04x}", std::process::id() & 0xffff);
    let node = format!("join-{suffix}");
    let dir = env.work.path().join(&node);
    let ctrd = Containerd::start(&dir.join("containerd")).await?;
    let kubeconfig = dir.join("kubelet.conf");
    let cert_dir = dir.join("pki");
    let cleanup = HostCleanup {
        bridge: format!("kn{suffix}"),
        cgroup_root: format!("kelson-join-{suffix}"),
    };
    let mut cmd = Command::new(bin_path("kelson-kubelet"));
    cmd.args([
        "--no-dbus".to_string(),
        format!("--bootstrap-kubeconfig={}", env.bootstrap.display()),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--cert-dir={}", cert_dir.display()),
        format!("--hostname-override={node}"),
        format!("--container-runtime-endpoint={}", ctrd.endpoint()),
        format!("--cni-conf-dir={}", ctrd.cni_conf_dir().display()),
        format!("--cni-bridge-name=kn{suffix}"),
        format!("--cni-ipam-data-dir={}", dir.join("ipam").display()),
        "--pod-cidr=10.254.9.0/24".into(),
        format!("--root-dir={}", dir.join("kubelet").display()),
        format!("--pod-logs-dir={}", dir.join("logs").display()),
        "--node-ip=127.0.0.1".into(),
        "--port=0".into(),
        "--node-status-update-frequency=2".into(),
        format!("--cgroup-root=/kelson-join-{suffix}"),
    ])
    .env("KELSON_LOG_LEVEL", "info,kube=warn");
    let guard = ChildGuard::spawn("kelson-kubelet", cmd, &dir.join("kubelet.log"))?;
    Ok(JoinedKubelet {
        node,
        kubeconfig,
        cert_dir,
        guard,
        _containerd: ctrd,
        _cleanup: cleanup,
    })
}

fn diag(env: &JoinEnv, k: &JoinedKubelet) -> String {
    format!(
        "--- kubelet ---\n{}\n--- controller manager ---\n{}\n--- apiserver ---\n{}",
        k.guard.log_tail(40),
        env.cm.log_tail(30),
        env.cp.apiserver_log_tail(20)
    )
}

/// The node's Ready condition (status, lastHeartbeatTime), if the node exists.
fn node_ready(cp: &ControlPlane, node: &str) -> Option<(String, String)> {
    let out = cp.kubectl(&["get", "node", node, "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let c = v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    Some((
        c["status"].as_str()?.to_string(),
        c["lastHeartbeatTime"].as_str()?.to_string(),
    ))
}

async fn wait_ready(env: &JoinEnv, k: &JoinedKubelet, within: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if node_ready(&env.cp, &k.node).is_some_and(|(s, _)| s == "True") {
            return Ok(());
        }
        if start.elapsed() > within {
            bail!(
                "node {} not Ready within {within:?}\n{}",
                k.node,
                diag(env, k)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn serial_of(pem: &Path) -> anyhow::Result<String> {
    let out = Command::new("openssl")
        .args(["x509", "-serial", "-noout", "-in"])
        .arg(pem)
        .output()?;
    Ok(ok(&out)?.trim().to_string())
}

/// CSRs as (username, signerName, Approved reason, has certificate).
fn csrs(cp: &ControlPlane) -> anyhow::Result<Vec<(String, String, String, bool)>> {
    let v: serde_json::Value =
        serde_json::from_str(&cp.kubectl_ok(&["get", "csr", "-o", "json"])?)?;
    Ok(v["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|c| {
            let reason = c["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|x| x["type"] == "Approved"))
                .and_then(|x| x["reason"].as_str())
                .unwrap_or("")
                .to_string();
            (
                c["spec"]["username"].as_str().unwrap_or("").to_string(),
                c["spec"]["signerName"].as_str().unwrap_or("").to_string(),
                reason,
                c["status"]["certificate"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_token_kubelet_joins_as_a_ready_node_and_a_wrong_token_is_refused(
) -> anyhow::Result<()> {
    prerequisites();
    let env = join_env("8760h").await?;

    // A kubelet whose bootstrap token is wrong: 401 on the CSR, it exits, nothing is written.
    let bad_boot = env.work.path().join("bad-bootstrap.conf");
    let text = std::fs::read_to_string(&env.bootstrap)?;
    let token_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("token:"))
        .context("bootstrap kubeconfig has a token")?;
    std::fs::write(
        &bad_boot,
        text.replace(
            token_line,
            &format!("    token: {}.0123456789abcdef", env.token_id),
        ),
    )?;
    let bad_dir = env.work.path().join("bad");
    let mut cmd = Command::new(bin_path("kelson-kubelet"));
    cmd.args([
        "--no-dbus".to_string(),
        format!("--bootstrap-kubeconfig={}", bad_boot.display()),
        format!("--kubeconfig={}", bad_dir.join("kubelet.conf").display()),
        format!("--cert-dir={}", bad_dir.join("pki").display()),
        "--hostname-override=join-bad".into(),
        format!("--root-dir={}", bad_dir.join("root").display()),
        "--container-runtime-endpoint=unix:///nonexistent.sock".into(),
    ]);
    let mut bad = ChildGuard::spawn("kelson-kubelet", cmd, &bad_dir.join("kubelet.log"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(st) = bad.try_wait() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a kubelet with a wrong bootstrap token kept running\n{}",
            bad.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!status.success());
    let log = bad.log();
    assert!(log.contains("401") || log.contains("Unauthorized"), "{log}");
    assert!(!bad_dir.join("kubelet.conf").exists());

    // The right token: CSR → auto-approved → signed → registered, Ready.
    let k = start_kubelet(&env, "a").await?;
    wait_ready(&env, &k, Duration::from_secs(60)).await?;

    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&k.kubeconfig)?.permissions().mode() & 0o777,
        0o600
    );
    let current = k.cert_dir.join("kubelet-client-current.pem");
    assert_eq!(
        std::fs::metadata(&current)?.permissions().mode() & 0o777,
        0o600
    );

    // The kubelet's own kubeconfig authenticates as the node.
    let who = ok(&Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(&k.kubeconfig)
        .args(["auth", "whoami", "-o", "json"])
        .output()?)?;
    let who: serde_json::Value = serde_json::from_str(&who)?;
    assert_eq!(
        who["status"]["userInfo"]["username"],
        format!("system:node:{}", k.node),
        "{who}"
    );
    assert!(
        who["status"]["userInfo"]["groups"]
            .to_string()
            .contains("\"system:nodes\""),
        "{who}"
    );

    // One CSR, made by the bootstrap identity, approved by csrapproving, signed.
    let list = csrs(&env.cp)?;
    assert_eq!(
        list,
        vec![(
            format!("system:bootstrap:{}", env.token_id),
            "kubernetes.io/kube-apiserver-client-kubelet".to_string(),
            "AutoApproved".to_string(),
            true
        )],
        "{}",
        diag(&env, &k)
    );
    // The certificate chains to the cluster CA and names the node.
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(env.cp.dir().join("pki/ca.crt"))
        .arg(&current)
        .output()?;
    ok(&verify)?;
    let subject = ok(&Command::new("openssl")
        .args(["x509", "-subject", "-noout", "-in"])
        .arg(&current)
        .output()?)?;
    assert!(
        subject.contains(&format!("CN = system:node:{}", k.node))
            && subject.contains("O = system:nodes"),
        "{subject}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_renews_its_client_certificate_before_expiry_and_stays_ready() -> anyhow::Result<()>
{
    prerequisites();
    // The signer's 30 s caps every certificate (backdated 15 s: a 45 s window, renewed at
    // 70-90 % of it, i.e. 16-26 s after issue).
    let env = join_env("30s").await?;
    let k = start_kubelet(&env, "r").await?;
    wait_ready(&env, &k, Duration::from_secs(60)).await?;
    let current = k.cert_dir.join("kubelet-client-current.pem");
    let first = serial_of(&current)?;
    // The first certificate expires at most 30 s after we see it.
    let first_expiry_bound = Instant::now() + Duration::from_secs(30);

    let start = Instant::now();
    let second = loop {
        let s = serial_of(&current)?;
        if s != first {
            break s;
        }
        if start.elapsed() > Duration::from_secs(40) {
            bail!(
                "the client certificate was not renewed within 40 s\n{}",
                diag(&env, &k)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_ne!(first, second);

    // Past the first certificate's expiry the node still reports: its heartbeat moves on.
    tokio::time::sleep_until((first_expiry_bound + Duration::from_secs(2)).into()).await;
    let (st1, hb1) = node_ready(&env.cp, &k.node).context("node")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (st2, hb2) = node_ready(&env.cp, &k.node).context("node")?;
    assert_eq!(
        (st1.as_str(), st2.as_str()),
        ("True", "True"),
        "{}",
        diag(&env, &k)
    );
    assert_ne!(
        hb1,
        hb2,
        "no status posted after the first certificate expired\n{}",
        diag(&env, &k)
    );
    assert!(
        k.guard.log().contains("client certificate rotated"),
        "{}",
        diag(&env, &k)
    );
    // The client's certificate resolver loaded the new pair (and rotation closed the old
    // connections, so the heartbeats above came over handshakes with it: the old certificate
    // had expired).
    assert!(
        k.guard.log().contains("TLS certificate reloaded"),
        "{}",
        diag(&env, &k)
    );

    // The renewal was requested by the node itself and approved as such.
    let list = csrs(&env.cp)?;
    let node_user = format!("system:node:{}", k.node);
    assert!(
        list.iter()
            .any(|(u, _, r, c)| *u == node_user && r == "AutoApproved" && *c),
        "{list:?}"
    );
    // Its kubeconfig still works (it names the current-link, not a dated file).
    let who = ok(&Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(&k.kubeconfig)
        .args(["auth", "whoami", "-o", "json"])
        .output()?)?;
    assert!(who.contains(&node_user), "{who}");
    Ok(())
}
