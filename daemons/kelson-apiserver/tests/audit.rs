//! The audit log records a create with user, verb, resource and response code, with the
//! request and response bodies at `RequestResponse`, and a `None` rule suppresses events.
//!
//! Needs `cargo build -p kelson-kv -p kelson-apiserver`.

use std::time::{Duration, Instant};

use anyhow::ensure;
use kelson_testsupport::{ControlPlane, ControlPlaneOpts};
use serde_json::Value;

const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  namespaces: [quiet]
- level: RequestResponse
  resources: [{group: "", resources: [configmaps]}]
- level: Metadata
"#;

fn events(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every audit line is JSON"))
        .collect()
}

#[tokio::test]
async fn audit_log_records_creates_and_honours_none() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("audit/audit.log");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY)?;
    let cp = ControlPlane::start_with(ControlPlaneOpts {
        apiserver_args: vec![
            "--audit-log-path".into(),
            log.display().to_string(),
            "--audit-policy-file".into(),
            policy.display().to_string(),
        ],
    })
    .await?;
    cp.kubectl_ok(&["create", "namespace", "quiet"])?;
    cp.kubectl_ok(&["create", "configmap", "c1", "--from-literal=k=v"])?;
    cp.kubectl_ok(&[
        "create",
        "configmap",
        "hush",
        "-n",
        "quiet",
        "--from-literal=k=v",
    ])?;
    let out = cp.kubectl(&["create", "configmap", "c1", "--from-literal=k=v"]);
    ensure!(!out.status.success(), "a second create must fail");

    // Written off the request path: wait (bounded) for the writer.
    let deadline = Instant::now() + Duration::from_secs(10);
    let find = |evs: &[Value], code: i64| {
        evs.iter()
            .find(|e| {
                e["verb"] == "create"
                    && e["objectRef"]["resource"] == "configmaps"
                    && e["objectRef"]["name"] == "c1"
                    && e["responseStatus"]["code"] == code
            })
            .cloned()
    };
    let (created, conflict) = loop {
        let evs = events(&log);
        if let (Some(a), Some(b)) = (find(&evs, 201), find(&evs, 409)) {
            break (a, b);
        }
        ensure!(
            Instant::now() < deadline,
            "no create events for c1 in the audit log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(created["kind"], "Event");
    assert_eq!(created["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(created["stage"], "ResponseComplete");
    assert_eq!(created["level"], "RequestResponse");
    assert_eq!(created["user"]["username"], "kubernetes-admin");
    assert_eq!(created["objectRef"]["namespace"], "default");
    assert_eq!(created["sourceIPs"][0], "127.0.0.1");
    assert!(created["userAgent"]
        .as_str()
        .unwrap_or_default()
        .starts_with("kubectl"));
    assert_eq!(created["requestObject"]["data"]["k"], "v");
    assert_eq!(created["responseObject"]["metadata"]["name"], "c1");
    assert!(!created["auditID"].as_str().unwrap_or_default().is_empty());
    assert_eq!(conflict["responseStatus"]["reason"], "AlreadyExists");

    let evs = events(&log);
    assert!(
        evs.iter().all(|e| e["stage"] != "RequestReceived"),
        "omitStages: RequestReceived is not logged"
    );
    assert!(
        evs.iter().all(|e| e["objectRef"]["namespace"] != "quiet"),
        "the None rule for namespace quiet is not honoured"
    );
    // Other requests fall through to the Metadata rule: no bodies.
    let ns = evs
        .iter()
        .find(|e| e["objectRef"]["resource"] == "namespaces" && e["verb"] == "create")
        .expect("the namespace create is logged");
    assert_eq!(ns["level"], "Metadata");
    assert!(ns.get("requestObject").is_none() && ns.get("responseObject").is_none());
    Ok(())
}
