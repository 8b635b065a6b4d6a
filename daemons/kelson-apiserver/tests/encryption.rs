//! Encryption at rest: a Secret read straight from the store is ciphertext with upstream's
//! prefix; rotating the key (a second API server over the same store with a new first key,
//! then `kubectl get secrets -A -o json | kubectl replace -f -`) rewrites every Secret under
//! the new key and keeps all of them readable.
//!
//! Needs `cargo build -p kelson-kv -p kelson-apiserver`.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context};
use kelson_testsupport::{
    apiserver_args, bin_path, free_port, kubectl_with, ChildGuard, ControlPlane, ControlPlaneOpts,
};

const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

fn config(keys: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n",
    );
    for (name, secret) in keys {
        s.push_str(&format!("      - name: {name}\n        secret: {secret}\n"));
    }
    s.push_str("  - identity: {}\n");
    s
}

/// The raw stored value of a key.
fn raw(cp: &ControlPlane, key: &str) -> anyhow::Result<Vec<u8>> {
    let out = cp.store().etcdctl(&["get", key, "--print-value-only"]);
    ensure!(
        out.status.success(),
        "etcdctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    // kubectl's cache goes next to the kubeconfig (both kubeconfigs are in the test's dirs).
    let home = kubeconfig.parent().context("kubeconfig dir")?;
    let out = kubectl_with(kubeconfig, home, args, stdin);
    ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn secrets_are_encrypted_and_rotation_rewrites_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg1 = dir.path().join("enc1.yaml");
    std::fs::write(&cfg1, config(&[("key1", KEY1)]))?;
    let cp = ControlPlane::start_with(ControlPlaneOpts {
        apiserver_args: vec![
            "--encryption-provider-config".into(),
            cfg1.display().to_string(),
        ],
    })
    .await?;
    cp.kubectl_ok(&["create", "namespace", "other"])?;
    let secrets = [("default", "s1"), ("default", "s2"), ("other", "s3")];
    for (ns, name) in secrets {
        cp.kubectl_ok(&[
            "create",
            "secret",
            "generic",
            name,
            "-n",
            ns,
            &format!("--from-literal=pw={name}-secret"),
        ])?;
    }
    cp.kubectl_ok(&["create", "configmap", "plain", "--from-literal=k=visible"])?;
    for (ns, name) in secrets {
        let v = raw(&cp, &format!("/registry/secrets/{ns}/{name}"))?;
        ensure!(
            v.starts_with(b"k8s:enc:aesgcm:v1:key1:"),
            "{ns}/{name} stored as {:?}",
            String::from_utf8_lossy(&v[..v.len().min(40)])
        );
        ensure!(
            !String::from_utf8_lossy(&v).contains(&format!("{name}-secret")),
            "plaintext in the store"
        );
    }
    // Resources not listed stay plaintext.
    let v = raw(&cp, "/registry/configmaps/default/plain")?;
    ensure!(String::from_utf8_lossy(&v).contains("visible"));
    let got = cp.kubectl_ok(&["get", "secret", "s1", "-o", "jsonpath={.data.pw}"])?;
    assert_eq!(got, "czEtc2VjcmV0"); // base64("s1-secret")

    // Rotation: a second API server over the same store, key2 first, key1 still readable.
    let cfg2 = dir.path().join("enc2.yaml");
    std::fs::write(&cfg2, config(&[("key2", KEY2), ("key1", KEY1)]))?;
    let port = free_port();
    let mut cmd = Command::new(bin_path("kelson-apiserver"));
    cmd.arg("--no-dbus")
        .args(apiserver_args(cp.store(), &cp.dir().join("pki"), port)?)
        .arg("--encryption-provider-config")
        .arg(&cfg2);
    let server2 = ChildGuard::spawn(
        "kelson-apiserver-2",
        cmd,
        &dir.path().join("apiserver2.log"),
    )?;
    let kc2 = dir.path().join("admin2.kubeconfig");
    let admin = std::fs::read_to_string(cp.kubeconfig_path())?;
    std::fs::write(
        &kc2,
        admin.replace(&cp.server_url(), &format!("https://127.0.0.1:{port}")),
    )?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !kubectl(&kc2, &["get", "--raw", "/readyz"], None).is_ok_and(|s| s.trim() == "ok") {
        ensure!(
            std::time::Instant::now() < deadline,
            "second API server not ready:\n{}",
            server2.log_tail(20)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let all = kubectl(&kc2, &["get", "secrets", "-A", "-o", "json"], None)?;
    // kubectl validates a v1 List on the client, with the protobuf /openapi/v2.
    kubectl(&kc2, &["replace", "-f", "-"], Some(&all))?;
    for (ns, name) in secrets {
        let v = raw(&cp, &format!("/registry/secrets/{ns}/{name}"))?;
        ensure!(
            v.starts_with(b"k8s:enc:aesgcm:v1:key2:"),
            "{ns}/{name} not rewritten: {:?}",
            String::from_utf8_lossy(&v[..v.len().min(40)])
        );
        let pw = kubectl(
            &kc2,
            &["get", "secret", name, "-n", ns, "-o", "jsonpath={.data.pw}"],
            None,
        )?;
        use base64::Engine;
        let pw = base64::engine::general_purpose::STANDARD.decode(pw.trim())?;
        assert_eq!(pw, format!("{name}-secret").as_bytes());
    }
    // The old server (key1 only) can no longer read what key2 wrote: proof of the rewrite.
    let out = cp.kubectl(&["get", "secret", "s1"]);
    ensure!(
        !out.status.success(),
        "a server without key2 read a key2 secret"
    );
    Ok(())
}
