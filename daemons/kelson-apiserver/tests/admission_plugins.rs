//! Admission plugins end to end with kubectl as the judge: PodSecurity (enforce → 403 with
//! upstream's message, warn → kubectl prints the warning, workload templates warn),
//! LimitRanger (defaults and max), ResourceQuota (403 over `hard`, `status.used` counted).

mod common;

use common::text;
use kelson_testsupport::ControlPlane;

const PRIVILEGED_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: x}
spec:
  containers:
  - name: c
    image: busybox
    securityContext: {privileged: true}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn pod_security_enforce_and_warn() {
    let cp = ControlPlane::start().await.expect("control plane");
    cp.kubectl_ok(&["create", "namespace", "strict"]).unwrap();
    cp.kubectl_ok(&[
        "label",
        "namespace",
        "strict",
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .unwrap();
    let out = cp.kubectl_stdin(&["-n", "strict", "create", "-f", "-"], Some(PRIVILEGED_POD));
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        "Error from server (Forbidden): error when creating \"STDIN\": pods \"x\" is forbidden: violates PodSecurity \"restricted:latest\": \
privileged (container \"c\" must not set securityContext.privileged=true), \
allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), \
unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), \
runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), \
seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    // A workload template in the namespace is admitted with a warning.
    let out = cp.kubectl(&[
        "-n",
        "strict",
        "create",
        "deployment",
        "web",
        "--image=busybox",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("Warning: would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"),
        "{}",
        text(&out.stderr)
    );

    // warn=baseline: the pod is created and kubectl prints the warning.
    cp.kubectl_ok(&["create", "namespace", "lax"]).unwrap();
    cp.kubectl_ok(&[
        "label",
        "namespace",
        "lax",
        "pod-security.kubernetes.io/warn=baseline",
        "pod-security.kubernetes.io/warn-version=v1.33",
    ])
    .unwrap();
    let out = cp.kubectl_stdin(&["-n", "lax", "create", "-f", "-"], Some(PRIVILEGED_POD));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "Warning: would violate PodSecurity \"baseline:v1.33\": privileged (container \"c\" must not set securityContext.privileged=true)"
    );
    // Unlabelled namespaces are privileged: no warning.
    let out = cp.kubectl_stdin(&["create", "-f", "-"], Some(PRIVILEGED_POD));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn limit_ranger_defaults_and_max() {
    let cp = ControlPlane::start().await.expect("control plane");
    cp.kubectl_ok(&["create", "namespace", "lr"]).unwrap();
    let lr = r#"
apiVersion: v1
kind: LimitRange
metadata: {name: lr, namespace: lr}
spec:
  limits:
  - type: Container
    max: {cpu: "1"}
    default: {cpu: 500m}
    defaultRequest: {cpu: 100m, memory: 32Mi}
"#;
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], Some(lr));
    assert!(out.status.success(), "{}", text(&out.stderr));
    cp.kubectl_ok(&["-n", "lr", "run", "small", "--image=busybox"])
        .unwrap();
    let res = cp
        .kubectl_ok(&[
            "-n",
            "lr",
            "get",
            "pod",
            "small",
            "-o",
            "jsonpath={.spec.containers[0].resources}",
        ])
        .unwrap();
    let res: serde_json::Value = serde_json::from_str(&res).unwrap();
    assert_eq!(
        res,
        serde_json::json!({"limits": {"cpu": "500m"}, "requests": {"cpu": "100m", "memory": "32Mi"}})
    );
    let ann = cp
        .kubectl_ok(&[
            "-n",
            "lr",
            "get",
            "pod",
            "small",
            "-o",
            "jsonpath={.metadata.annotations.kubernetes\\.io/limit-ranger}",
        ])
        .unwrap();
    assert!(ann.starts_with("LimitRanger plugin set: "), "{ann}");
    let out = cp.kubectl(&[
        "-n",
        "lr",
        "run",
        "big",
        "--image=busybox",
        "--overrides",
        r#"{"spec":{"containers":[{"name":"big","image":"busybox","resources":{"limits":{"cpu":"2"}}}]}}"#,
    ]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        "Error from server (Forbidden): pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_quota_denies_over_hard_and_counts_usage() {
    let cp = ControlPlane::start().await.expect("control plane");
    cp.kubectl_ok(&["create", "namespace", "quota"]).unwrap();
    cp.kubectl_ok(&[
        "-n",
        "quota",
        "create",
        "quota",
        "q",
        "--hard=pods=2,count/configmaps=5",
    ])
    .unwrap();
    // Without usage from the resourcequota controller (not running here) the quota is unknown.
    let out = cp.kubectl(&["-n", "quota", "run", "p0", "--image=busybox"]);
    assert_eq!(
        text(&out.stderr),
        "Error from server (Forbidden): pods \"p0\" is forbidden: status unknown for quota: q, resources: pods"
    );
    // What the controller would write: nothing used yet.
    cp.kubectl_ok(&[
        "-n",
        "quota",
        "patch",
        "quota",
        "q",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"hard":{"pods":"2","count/configmaps":"5"},"used":{"pods":"0","count/configmaps":"0"}}}"#,
    ])
    .unwrap();
    for p in ["p1", "p2"] {
        cp.kubectl_ok(&["-n", "quota", "run", p, "--image=busybox"])
            .unwrap();
    }
    let out = cp.kubectl(&["-n", "quota", "run", "p3", "--image=busybox"]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        "Error from server (Forbidden): pods \"p3\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
    );
    cp.kubectl_ok(&["-n", "quota", "create", "configmap", "c1"])
        .unwrap();
    let used = cp
        .kubectl_ok(&[
            "-n",
            "quota",
            "get",
            "quota",
            "q",
            "-o",
            "jsonpath={.status.used}",
        ])
        .unwrap();
    let used: serde_json::Value = serde_json::from_str(&used).unwrap();
    assert_eq!(
        used,
        serde_json::json!({"pods": "2", "count/configmaps": "1"})
    );
    // dry-run charges nothing.
    cp.kubectl_ok(&[
        "-n",
        "quota",
        "create",
        "configmap",
        "c2",
        "--dry-run=server",
    ])
    .unwrap();
    let used = cp
        .kubectl_ok(&[
            "-n",
            "quota",
            "get",
            "quota",
            "q",
            "-o",
            "jsonpath={.status.used.count/configmaps}",
        ])
        .unwrap();
    assert_eq!(used, "1");
}
