//! ServiceAccount and bootstrap tokens end to end, with the real kubectl: `kubectl create
//! token` + `kubectl auth whoami` with that token; tokens die with their service account or
//! bound pod (401); a wrong audience is refused; TokenReview; bootstrap tokens; OIDC discovery.
//!
//! Needs `cargo build -p kelson-kv -p kelson-apiserver`.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context};
use base64::Engine;
use kelson_testsupport::{ControlPlane, ControlPlaneOpts};
use serde_json::{json, Value};

async fn start(dir: &Path) -> anyhow::Result<ControlPlane> {
    let key = dir.join("sa.key");
    std::fs::write(&key, rcgen::KeyPair::generate()?.serialize_pem())?;
    ControlPlane::start_with(ControlPlaneOpts {
        apiserver_args: vec![
            "--service-account-signing-key-file".into(),
            key.display().to_string(),
            "--enable-bootstrap-token-auth".into(),
        ],
    })
    .await
}

/// A kubeconfig that authenticates with `token` only (no client certificate).
fn token_kubeconfig(cp: &ControlPlane, name: &str, token: &str) -> anyhow::Result<PathBuf> {
    let path = cp.dir().join(format!("{name}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster: {{server: \"{}\", certificate-authority: \"{}\"}}\nusers:\n- name: u\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: k\n  context: {{cluster: k, user: u}}\ncurrent-context: k\n",
        cp.server_url(),
        cp.dir().join("pki/ca.crt").display()
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `kubectl auth whoami -o json` as the token's bearer: Ok(userInfo) or Err(stderr).
fn whoami(cp: &ControlPlane, token: &str) -> anyhow::Result<Result<Value, String>> {
    let kc = token_kubeconfig(cp, "whoami", token)?;
    let out = cp.kubectl(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "auth",
        "whoami",
        "-o",
        "json",
    ]);
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(Ok(v["status"]["userInfo"].clone()))
}

fn unauthorized(r: Result<Value, String>, what: &str) -> anyhow::Result<()> {
    match r {
        Ok(u) => anyhow::bail!("{what}: still authenticates as {u}"),
        Err(e) => ensure!(e.contains("Unauthorized"), "{what}: not a 401: {e}"),
    }
    Ok(())
}

fn review(cp: &ControlPlane, token: &str, audiences: &[&str]) -> anyhow::Result<Value> {
    let tr = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "spec": {"token": token, "audiences": audiences}});
    let out = cp.kubectl_stdin(&["create", "-f", "-", "-o", "json"], Some(&tr.to_string()));
    ensure!(
        out.status.success(),
        "TokenReview: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice::<Value>(&out.stdout)?["status"].clone())
}

#[tokio::test]
async fn service_account_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path()).await?;
    cp.kubectl_ok(&["create", "serviceaccount", "robot"])?;
    let token = cp
        .kubectl_ok(&["create", "token", "robot"])?
        .trim()
        .to_string();
    let me = whoami(&cp, &token)?.map_err(anyhow::Error::msg)?;
    assert_eq!(me["username"], "system:serviceaccount:default:robot");
    let groups: Vec<&str> = me["groups"]
        .as_array()
        .context("groups")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for g in [
        "system:serviceaccounts",
        "system:serviceaccounts:default",
        "system:authenticated",
    ] {
        assert!(groups.contains(&g), "{groups:?} lacks {g}");
    }

    // TokenReview: the server's audience by default; another audience only when asked for.
    let st = review(&cp, &token, &[])?;
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(
        st["user"]["username"],
        "system:serviceaccount:default:robot"
    );
    let other = cp
        .kubectl_ok(&[
            "create",
            "token",
            "robot",
            "--audience",
            "https://other.example",
        ])?
        .trim()
        .to_string();
    unauthorized(whoami(&cp, &other)?, "a token for another audience")?;
    let st = review(&cp, &other, &["https://other.example"])?;
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(st["audiences"], json!(["https://other.example"]));
    let st = review(&cp, "garbage", &[])?;
    assert_eq!(st["authenticated"], false, "{st}");

    // Too short a lifetime is a 422 with upstream's message.
    let out = cp.kubectl(&["create", "token", "robot", "--duration", "1m"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("may not specify a duration less than 10 minutes"),
        "{err}"
    );

    // A token bound to a pod dies with the pod.
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p1", "namespace": "default"},
        "spec": {"serviceAccountName": "robot", "containers": [{"name": "c", "image": "busybox"}]}});
    cp.kubectl_stdin(&["create", "-f", "-"], Some(&pod.to_string()));
    let bound = cp
        .kubectl_ok(&[
            "create",
            "token",
            "robot",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "p1",
        ])?
        .trim()
        .to_string();
    let me = whoami(&cp, &bound)?.map_err(anyhow::Error::msg)?;
    assert_eq!(me["username"], "system:serviceaccount:default:robot");
    cp.kubectl_ok(&[
        "delete",
        "pod",
        "p1",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cp.kubectl(&["get", "pod", "p1"]).status.success() {
        ensure!(
            std::time::Instant::now() < deadline,
            "pod p1 was not deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    unauthorized(whoami(&cp, &bound)?, "a token bound to a deleted pod")?;
    assert!(
        whoami(&cp, &token)?.is_ok(),
        "the unbound token still works"
    );

    // Deleting the service account revokes its tokens, also after it is recreated.
    cp.kubectl_ok(&["delete", "serviceaccount", "robot"])?;
    unauthorized(whoami(&cp, &token)?, "a token of a deleted service account")?;
    cp.kubectl_ok(&["create", "serviceaccount", "robot"])?;
    unauthorized(
        whoami(&cp, &token)?,
        "a token of a recreated service account",
    )?;

    // OIDC discovery.
    let conf: Value = serde_json::from_str(&cp.kubectl_ok(&[
        "get",
        "--raw",
        "/.well-known/openid-configuration",
    ])?)?;
    assert_eq!(
        conf["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    let jwks: Value =
        serde_json::from_str(&cp.kubectl_ok(&["get", "--raw", "/openid/v1/jwks"])?)?;
    assert_eq!(jwks["keys"][0]["alg"], "ES256", "{jwks}");
    Ok(())
}

fn bootstrap_secret(id: &str, secret: &str, expiration: &str) -> Value {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "data": {"token-id": b(id), "token-secret": b(secret),
                 "usage-bootstrap-authentication": b("true"),
                 "auth-extra-groups": b("system:bootstrappers:kelson:default-node-token"),
                 "expiration": b(expiration)}})
}

#[tokio::test]
async fn bootstrap_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path()).await?;
    let good = bootstrap_secret("abcdef", "0123456789abcdef", "2999-01-01T00:00:00Z");
    let expired = bootstrap_secret("zyxwvu", "0123456789abcdef", "2000-01-01T00:00:00Z");
    for s in [&good, &expired] {
        let out = cp.kubectl_stdin(&["create", "-f", "-"], Some(&s.to_string()));
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let me = whoami(&cp, "abcdef.0123456789abcdef")?.map_err(anyhow::Error::msg)?;
    assert_eq!(me["username"], "system:bootstrap:abcdef");
    assert_eq!(
        me["groups"],
        json!([
            "system:bootstrappers",
            "system:bootstrappers:kelson:default-node-token",
            "system:authenticated"
        ])
    );
    unauthorized(
        whoami(&cp, "abcdef.0123456789abcdee")?,
        "a wrong bootstrap secret",
    )?;
    unauthorized(
        whoami(&cp, "zyxwvu.0123456789abcdef")?,
        "an expired bootstrap token",
    )?;
    Ok(())
}

/// ServiceAccount admission injects upstream's `kube-api-access-*` projected volume (with
/// mounts in every container) when the server can issue tokens, honours
/// `automountServiceAccountToken: false` on the pod and on the account, and leaves mirror
/// pods alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_token_volume_is_injected() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path()).await?;
    let pod = |name: &str, extra: Value| {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"initContainers": [{"name": "init", "image": "busybox"}],
                     "containers": [{"name": "a", "image": "busybox"},
                                    {"name": "b", "image": "busybox"}]}});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                if k == "metadata" {
                    p["metadata"]["annotations"] = v["annotations"].clone();
                } else {
                    p["spec"][k] = v;
                }
            }
        }
        p.to_string()
    };
    let get = |name: &str| -> anyhow::Result<Value> {
        Ok(serde_json::from_str(
            &cp.kubectl_ok(&["get", "pod", name, "-o", "json"])?,
        )?)
    };
    cp.kubectl_stdin(&["create", "-f", "-"], Some(&pod("plain", json!({}))));
    let p = get("plain")?;
    let vols = p["spec"]["volumes"].as_array().context("volumes")?;
    assert_eq!(vols.len(), 1, "{p}");
    let vname = vols[0]["name"].as_str().context("volume name")?;
    assert!(vname.starts_with("kube-api-access-"), "{vname}");
    let sources = &vols[0]["projected"]["sources"];
    assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(
        sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    for c in ["initContainers", "containers"] {
        for ctr in p["spec"][c].as_array().context("containers")? {
            let m = &ctr["volumeMounts"][0];
            assert_eq!(m["name"], vname, "{ctr}");
            assert_eq!(
                m["mountPath"],
                "/var/run/secrets/kubernetes.io/serviceaccount"
            );
            assert_eq!(m["readOnly"], true);
        }
    }

    // Opted out on the pod.
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod(
            "optout",
            json!({"automountServiceAccountToken": false}),
        )),
    );
    assert!(get("optout")?["spec"]["volumes"].is_null());

    // Opted out on the account.
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        Some(
            &json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "quiet"}, "automountServiceAccountToken": false})
            .to_string(),
        ),
    );
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod("quietpod", json!({"serviceAccountName": "quiet"}))),
    );
    assert!(get("quietpod")?["spec"]["volumes"].is_null());

    // Mirror pods get nothing.
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod(
            "mirror",
            json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}}),
        )),
    );
    assert!(get("mirror")?["spec"]["volumes"].is_null());
    Ok(())
}
