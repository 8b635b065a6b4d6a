//! `pods/eviction` against PodDisruptionBudgets, and the pod subresources that need a kubelet
//! failing the upstream way when there is none — a control plane only (kelson-kv +
//! kelson-apiserver), no kubelet: budgets get their status written through the status
//! subresource, as the disruption controller would.
//!
//! Needs `cargo build -p kelson-kv -p kelson-apiserver`.

use std::path::Path;
use std::process::{Command, Output};

use kelson_testsupport::{kubectl_with, ControlPlane};
use serde_json::{json, Value};

/// The admin's client certificate against the API server through curl: (code, JSON body).
/// (curl rather than a Rust client so the exact Status bodies, causes included, are seen.)
fn curl(cp: &ControlPlane, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let pki = cp.dir().join("pki");
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ])
    .arg("--cacert")
    .arg(pki.join("ca.crt"))
    .arg("--cert")
    .arg(pki.join("client-kubernetes-admin.crt"))
    .arg("--key")
    .arg(pki.join("client-kubernetes-admin.key"));
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let out = c
        .arg(format!("{}{path}", cp.server_url()))
        .output()
        .expect("curl");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    let v = serde_json::from_str(body).unwrap_or_else(|_| json!({ "raw": body }));
    (code.trim().parse().unwrap_or(0), v)
}

async fn post(cp: &ControlPlane, path: &str, body: &Value) -> (u16, Value) {
    curl(cp, "POST", path, Some(body))
}

async fn get(cp: &ControlPlane, path: &str) -> (u16, Value) {
    curl(cp, "GET", path, None)
}

fn eviction(name: &str) -> Value {
    json!({"apiVersion": "policy/v1", "kind": "Eviction",
           "metadata": {"name": name, "namespace": "default"}})
}

fn running_pod(cp: &ControlPlane, name: &str, labels: &str) {
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {labels}\nspec:\n  containers:\n  - name: c\n    image: busybox\n"
        )),
    );
    cp.kubectl_ok(&[
        "patch",
        "pod",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ])
    .unwrap();
}

fn set_budget(cp: &ControlPlane, allowed: i64) {
    let patch = json!({"status": {"observedGeneration": 1, "disruptionsAllowed": allowed,
                                  "currentHealthy": 2, "desiredHealthy": 2, "expectedPods": 2}});
    cp.kubectl_ok(&[
        "patch",
        "pdb",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ])
    .unwrap();
}

const EVICT: &str = "/api/v1/namespaces/default/pods";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_respects_disruption_budgets() {
    let cp = ControlPlane::start().await.expect("control plane");
    running_pod(&cp, "web-1", "{app: web}");
    running_pod(&cp, "web-2", "{app: web}");
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: web\nspec:\n  minAvailable: 2\n  selector:\n    matchLabels: {app: web}\n"),
    );

    // Not yet observed by a disruption controller: 429, "still being processed".
    let (code, st) = post(&cp, &format!("{EVICT}/web-1/eviction"), &eviction("web-1")).await;
    assert_eq!(code, 429, "{st}");
    assert!(
        st["details"]["causes"][0]["message"]
            .as_str()
            .unwrap()
            .contains("is still being processed"),
        "{st}"
    );

    // No disruption allowed: 429 with upstream's message and the DisruptionBudget cause.
    set_budget(&cp, 0);
    let (code, st) = post(&cp, &format!("{EVICT}/web-1/eviction"), &eviction("web-1")).await;
    assert_eq!(code, 429, "{st}");
    assert_eq!(st["reason"], "TooManyRequests");
    assert_eq!(
        st["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(st["details"]["causes"][0]["reason"], "DisruptionBudget");
    assert_eq!(
        st["details"]["causes"][0]["message"],
        "The disruption budget web needs 2 healthy pods and has 2 currently"
    );
    assert_eq!(get(&cp, &format!("{EVICT}/web-1")).await.0, 200);

    // One disruption allowed: the first eviction spends it, the second is refused.
    set_budget(&cp, 1);
    let (code, st) = post(&cp, &format!("{EVICT}/web-1/eviction"), &eviction("web-1")).await;
    assert_eq!(
        (code, st["status"].as_str()),
        (201, Some("Success")),
        "{st}"
    );
    assert_eq!(get(&cp, &format!("{EVICT}/web-1")).await.0, 404);
    let (_, pdb) = get(
        &cp,
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/web",
    )
    .await;
    assert_eq!(pdb["status"]["disruptionsAllowed"], 0, "{pdb}");
    assert!(pdb["status"]["disruptedPods"]["web-1"].is_string(), "{pdb}");
    let (code, _) = post(&cp, &format!("{EVICT}/web-2/eviction"), &eviction("web-2")).await;
    assert_eq!(code, 429);

    // A Pending pod cannot count against the budget: evicted regardless, with deleteOptions.
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-pending\n  labels: {app: web}\nspec:\n  containers:\n  - name: c\n    image: busybox\n"),
    );
    let mut ev = eviction("web-pending");
    ev["deleteOptions"] = json!({"gracePeriodSeconds": 0});
    let (code, st) = post(&cp, &format!("{EVICT}/web-pending/eviction"), &ev).await;
    assert_eq!(code, 201, "{st}");
    assert_eq!(get(&cp, &format!("{EVICT}/web-pending")).await.0, 404);

    // dryRun changes nothing.
    set_budget(&cp, 1);
    let (code, _) = post(
        &cp,
        &format!("{EVICT}/web-2/eviction?dryRun=All"),
        &eviction("web-2"),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(get(&cp, &format!("{EVICT}/web-2")).await.0, 200);
    let (_, pdb) = get(
        &cp,
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/web",
    )
    .await;
    assert_eq!(pdb["status"]["disruptionsAllowed"], 1, "{pdb}");

    // Bad input: unknown pod → 404; a name that disagrees with the URL → 400.
    let (code, st) = post(&cp, &format!("{EVICT}/nope/eviction"), &eviction("nope")).await;
    assert_eq!(
        (code, st["message"].as_str()),
        (404, Some("pods \"nope\" not found"))
    );
    let (code, st) = post(&cp, &format!("{EVICT}/web-2/eviction"), &eviction("other")).await;
    assert_eq!(code, 400, "{st}");
    let (code, _) = post(&cp, &format!("{EVICT}/web-2/eviction"), &json!([1])).await;
    assert_eq!(code, 400);
}

fn kubectl_as(cp: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> Output {
    kubectl_with(kubeconfig, cp.dir(), args, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_subresources_fail_with_status_errors_without_a_kubelet() {
    let cp = ControlPlane::start().await.expect("control plane");
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata:\n  name: lonely\nspec:\n  containers:\n  - name: c\n    image: busybox\n"),
    );
    // Not scheduled: 400 with upstream's message.
    let (code, st) = get(&cp, "/api/v1/namespaces/default/pods/lonely/log").await;
    assert_eq!(
        (code, st["message"].as_str()),
        (400, Some("pod lonely does not have a host assigned")),
        "{st}"
    );
    // Unknown container: 400 with upstream's message.
    let bound = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bound\nspec:\n  nodeName: ghost\n  containers:\n  - name: c\n    image: busybox\n";
    cp.kubectl_stdin(&["apply", "-f", "-"], Some(bound));
    let (code, st) = get(
        &cp,
        "/api/v1/namespaces/default/pods/bound/log?container=zz",
    )
    .await;
    assert_eq!(
        (code, st["message"].as_str()),
        (400, Some("container zz is not valid for pod bound")),
        "{st}"
    );
    // The node is not registered / has no address: 503.
    let (code, st) = get(&cp, "/api/v1/namespaces/default/pods/bound/log").await;
    assert_eq!(code, 503, "{st}");
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Node\nmetadata:\n  name: ghost\n"),
    );
    let (code, st) = get(&cp, "/api/v1/namespaces/default/pods/bound/log").await;
    assert_eq!(code, 503, "{st}");
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("no preferred addresses"),
        "{st}"
    );
    // An unknown pod: 404.
    let (code, _) = get(&cp, "/api/v1/namespaces/default/pods/nope/log").await;
    assert_eq!(code, 404);
    let out = cp.kubectl(&["logs", "bound"]);
    assert!(!out.status.success());

    // A user without RBAC for pods/exec: 403 from the API server (kubectl tries WebSocket,
    // then SPDY; both are refused).
    let alice = cp.kubeconfig_for("alice", None).unwrap();
    let out = kubectl_as(&cp, &alice, &["exec", "bound", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("forbidden") || err.contains("Forbidden"),
        "{err}"
    );
    assert!(
        err.contains("pods/exec") || err.contains("\"pods\""),
        "{err}"
    );
    // nodes/proxy for a node without address: 503 too.
    let (code, _) = get(&cp, "/api/v1/nodes/ghost/proxy/healthz").await;
    assert_eq!(code, 503);
}
