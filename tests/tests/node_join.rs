//! Node join, discovery half (issue 8, "must be demonstrated" item 5, as far as it is built):
//! `kelsonctl token create` makes a bootstrap token; `kelsonctl join --token --ca-cert-hash`
//! fetches `cluster-info`, checks the CA against the hash (computed here independently with
//! openssl, kubeadm's documented recipe) and writes a bootstrap kubeconfig that authenticates
//! as `system:bootstrap:<id>` in the node-token group. A wrong hash, an unknown token, an
//! expired token and a deleted token are all refused.
//!
//! Needs `cargo build -p kelson-kv -p kelson-apiserver -p kelsonctl` and /usr/bin/openssl.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use kelson_testsupport::{bin_path, ControlPlane, ControlPlaneOpts, KUBECTL};

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
