//! Admission plugins end to end with kubectl as the judge: PodSecurity (enforce → 403 with
//! upstream's message, warn → kubectl prints the warning, workload templates warn),
//! LimitRanger (defaults and max), ResourceQuota (403 over `hard`, `status.used` counted).

use kelson_testsupport::ControlPlane;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

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
