//! RBAC end to end: the real kubectl against a control plane (kelson-kv + kelson-apiserver
//! with `--authorization-mode=RBAC`, the default), as several identities issued from the
//! cluster CA: a user without bindings is forbidden with upstream's message, a RoleBinding to
//! the aggregated `view` role takes effect through the watch-fed policy cache, and
//! `kubectl auth can-i` answers for users, component identities and service accounts from the
//! bootstrap policy.

mod common;

use std::path::Path;
use std::process::Output;

use common::eventually;
use kelson_testsupport::{kubectl_with, ControlPlane};
use serde_json::Value;

fn kubectl_as(cp: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> Output {
    kubectl_with(kubeconfig, cp.dir(), args, None)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `kubectl auth can-i ...` as `kubeconfig`: true for "yes", false for "no" (which kubectl
/// follows with ` - <reason>` when the server gave one), panics otherwise.
fn can_i(cp: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> bool {
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    let out = kubectl_as(cp, kubeconfig, &full);
    match stdout(&out).as_str() {
        "yes" => true,
        no if no == "no" || no.starts_with("no - ") => false,
        other => panic!("kubectl auth can-i {args:?}: {other:?} / {}", stderr(&out)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rbac_with_kubectl() {
    let cp = ControlPlane::start().await.unwrap();

    // The bootstrap policy exists, labelled as upstream's.
    let crb: Value = serde_json::from_str(
        &cp.kubectl_ok(&[
            "get",
            "clusterrolebinding",
            "system:kube-scheduler",
            "-o",
            "json",
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        crb["metadata"]["labels"]["kubernetes.io/bootstrapping"],
        "rbac-defaults"
    );
    assert_eq!(crb["subjects"][0]["name"], "system:kube-scheduler");
    let roles = cp
        .kubectl_ok(&["get", "clusterroles", "-o", "name"])
        .unwrap();
    for r in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:node",
        "system:discovery",
    ] {
        assert!(
            roles.contains(&format!("clusterrole.rbac.authorization.k8s.io/{r}\n")),
            "{roles}"
        );
    }

    // A user with no bindings: upstream's message, nothing appended.
    let bob = cp.kubeconfig_for("bob", None).unwrap();
    let out = kubectl_as(&cp, &bob, &["get", "pods", "-n", "default"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        r#"Error from server (Forbidden): pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#
    );
    // Everyone authenticated may read discovery and ask what they may do.
    assert!(kubectl_as(&cp, &bob, &["get", "--raw", "/apis"])
        .status
        .success());
    assert!(!can_i(&cp, &bob, &["list", "pods", "-n", "demo"]));

    // bob views namespace demo.
    cp.kubectl_ok(&["create", "namespace", "demo"]).unwrap();
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "bob-view",
        "--clusterrole=view",
        "--user=bob",
        "-n",
        "demo",
    ])
    .unwrap();
    cp.kubectl_ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "demo",
        "--from-literal=a=1",
    ])
    .unwrap();
    eventually("bob can list pods in demo", || {
        kubectl_as(&cp, &bob, &["get", "pods", "-n", "demo"])
            .status
            .success()
    });
    let cms = kubectl_as(
        &cp,
        &bob,
        &["get", "configmaps", "-n", "demo", "-o", "name"],
    );
    assert_eq!(stdout(&cms), "configmap/cfg", "{}", stderr(&cms));
    assert!(can_i(&cp, &bob, &["list", "pods", "-n", "demo"]));
    assert!(can_i(&cp, &bob, &["get", "deployments.apps", "-n", "demo"]));
    assert!(!can_i(&cp, &bob, &["create", "pods", "-n", "demo"]));
    assert!(!can_i(&cp, &bob, &["get", "secrets", "-n", "demo"]));
    assert!(!can_i(&cp, &bob, &["list", "pods", "-n", "default"]));
    // `can-i --list` (SelfSubjectRulesReview) shows view's rules in demo, not elsewhere.
    let list = kubectl_as(&cp, &bob, &["auth", "can-i", "--list", "-n", "demo"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let pods_rule = |out: &str| {
        out.lines().any(|l| {
            l.split_whitespace().next() == Some("pods")
                && l.trim_end().ends_with("[get list watch]")
        })
    };
    assert!(pods_rule(&stdout(&list)), "{}", stdout(&list));
    let list = kubectl_as(&cp, &bob, &["auth", "can-i", "--list", "-n", "default"]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(!pods_rule(&stdout(&list)), "{}", stdout(&list));
    // Subresources are named `pods/log` in the message, the object by its resource.
    let out = kubectl_as(
        &cp,
        &bob,
        &["get", "--raw", "/api/v1/namespaces/default/pods/x/log"],
    );
    assert_eq!(
        stderr(&out),
        r#"Error from server (Forbidden): pods "x" is forbidden: User "bob" cannot get resource "pods/log" in API group "" in the namespace "default""#
    );
    // A denied non-resource URL: no reason, so nothing after the path.
    let out = kubectl_as(&cp, &bob, &["get", "--raw", "/metrics"]);
    assert_eq!(
        stderr(&out),
        r#"Error from server (Forbidden): forbidden: User "bob" cannot get path "/metrics""#
    );
    let out = kubectl_as(&cp, &bob, &["create", "configmap", "x", "-n", "demo"]);
    assert_eq!(
        stderr(&out),
        r#"error: failed to create configmap: configmaps is forbidden: User "bob" cannot create resource "configmaps" in API group "" in the namespace "demo""#
    );

    // A binding to a missing role: the resolution error is the RBAC reason, as upstream.
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "ghost",
        "--role=nope",
        "--user=bob",
        "-n",
        "demo",
    ])
    .unwrap();
    eventually("the dangling binding is seen", || {
        stderr(&kubectl_as(&cp, &bob, &["delete", "configmap", "cfg", "-n", "demo"])).ends_with(
            r#"configmaps "cfg" is forbidden: User "bob" cannot delete resource "configmaps" in API group "" in the namespace "demo": RBAC: role.rbac.authorization.k8s.io "nope" not found"#,
        )
    });

    // Removing the binding takes the access away again.
    cp.kubectl_ok(&["delete", "rolebinding", "bob-view", "-n", "demo"])
        .unwrap();
    eventually("bob loses view", || {
        !can_i(&cp, &bob, &["list", "pods", "-n", "demo"])
    });

    // Component identities get the bootstrap roles' rules.
    let sched = cp.kubeconfig_for("system:kube-scheduler", None).unwrap();
    assert!(can_i(
        &cp,
        &sched,
        &["create", "pods", "--subresource=binding", "-n", "default"]
    ));
    assert!(can_i(
        &cp,
        &sched,
        &[
            "update",
            "leases.coordination.k8s.io/kube-scheduler",
            "-n",
            "kube-system"
        ]
    ));
    assert!(!can_i(
        &cp,
        &sched,
        &[
            "update",
            "leases.coordination.k8s.io/other",
            "-n",
            "kube-system"
        ]
    ));
    assert!(!can_i(&cp, &sched, &["get", "secrets", "-n", "default"]));
    let kcm = cp
        .kubeconfig_for("system:kube-controller-manager", None)
        .unwrap();
    assert!(can_i(
        &cp,
        &kcm,
        &["watch", "deployments.apps", "--all-namespaces"]
    ));
    assert!(!can_i(
        &cp,
        &kcm,
        &["create", "deployments.apps", "-n", "default"]
    ));
    let node = cp
        .kubeconfig_for("system:node:n1", Some("system:nodes"))
        .unwrap();
    assert!(can_i(
        &cp,
        &node,
        &["patch", "nodes", "--subresource=status"]
    ));
    assert!(can_i(
        &cp,
        &node,
        &[
            "create",
            "leases.coordination.k8s.io",
            "-n",
            "kube-node-lease"
        ]
    ));
    assert!(!can_i(&cp, &node, &["delete", "nodes"]));

    // A service account (certificate CN/O as its token would authenticate it).
    let robot = cp
        .kubeconfig_for(
            "system:serviceaccount:demo:robot",
            Some("system:serviceaccounts"),
        )
        .unwrap();
    assert!(!can_i(
        &cp,
        &robot,
        &["create", "deployments.apps", "-n", "demo"]
    ));
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "robot-edit",
        "--clusterrole=edit",
        "--serviceaccount=demo:robot",
        "-n",
        "demo",
    ])
    .unwrap();
    eventually("the service account can edit demo", || {
        can_i(&cp, &robot, &["create", "deployments.apps", "-n", "demo"])
    });
    assert!(can_i(&cp, &robot, &["get", "secrets", "-n", "demo"]));
    assert!(!can_i(
        &cp,
        &robot,
        &[
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            "-n",
            "demo"
        ]
    ));
    assert!(!can_i(
        &cp,
        &robot,
        &["create", "deployments.apps", "-n", "default"]
    ));
    // The group system:serviceaccounts (from the certificate's O) is bound upstream's way.
    assert!(can_i(&cp, &robot, &["get", "/openid/v1/jwks"]));

    // The admin asks about others: a SubjectAccessReview with the SA authenticator's groups.
    let sar = r#"{"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:demo:robot",
                 "groups": ["system:serviceaccounts", "system:serviceaccounts:demo", "system:authenticated"],
                 "resourceAttributes": {"verb": "delete", "group": "apps", "resource": "deployments", "namespace": "demo"}}}"#;
    let out = cp.kubectl_stdin(&["create", "-f", "-", "-o", "json"], Some(sar));
    assert!(out.status.success(), "{}", stderr(&out));
    let review: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(review["status"]["allowed"], true, "{review}");
}
