//! The Node authorizer and NodeRestriction end to end, with kubectl as the judge: a control
//! plane with `--authorization-mode=Node,RBAC` and a kubelet identity issued from the cluster
//! CA (CN=system:node:n1, O=system:nodes). The node reads its own Node but not another's,
//! reads a Secret its bound pod uses but not one it does not, and may not relabel itself
//! into a restricted label namespace or modify another node.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{eventually, text};
use kelson_testsupport::{kubectl_with, ControlPlane, ControlPlaneOpts, KUBECTL};

fn kubectl_as(cp: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> Output {
    kubectl_with(kubeconfig, cp.dir(), args, None)
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
---
apiVersion: v1
kind: Secret
metadata: {name: used, namespace: default}
stringData: {k: v}
---
apiVersion: v1
kind: Secret
metadata: {name: unused, namespace: default}
stringData: {k: v}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec:
  nodeName: n1
  containers: [{name: c, image: busybox}]
  volumes: [{name: s, secret: {secretName: used}}]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_node_reads_only_what_its_pods_use() {
    let cp = ControlPlane::start_with(ControlPlaneOpts {
        apiserver_args: vec!["--authorization-mode".into(), "Node,RBAC".into()],
    })
    .await
    .expect("control plane");
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], Some(OBJECTS));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let n1 = cp
        .kubeconfig_for("system:node:n1", Some("system:nodes"))
        .unwrap();
    let n2 = cp
        .kubeconfig_for("system:node:n2", Some("system:nodes"))
        .unwrap();

    // Its own Node, by name and by a metadata.name field selector (the kubelet's informer).
    let out = kubectl_as(&cp, &n1, &["get", "node", "n1", "-o", "name"]);
    assert_eq!(text(&out.stdout), "node/n1", "{}", text(&out.stderr));
    let out = kubectl_as(
        &cp,
        &n1,
        &[
            "get",
            "nodes",
            "--field-selector",
            "metadata.name=n1",
            "-o",
            "name",
        ],
    );
    assert_eq!(text(&out.stdout), "node/n1", "{}", text(&out.stderr));
    // Not another node's, nor all nodes; RBAC's system:node binding gives nothing back.
    let out = kubectl_as(&cp, &n1, &["get", "node", "n2"]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        "Error from server (Forbidden): nodes \"n2\" is forbidden: User \"system:node:n1\" cannot get resource \"nodes\" in API group \"\" at the cluster scope: node 'n1' cannot read 'n2', only its own Node object"
    );
    let out = kubectl_as(&cp, &n1, &["get", "nodes"]);
    assert!(
        text(&out.stderr).contains("node 'n1' cannot read all nodes, only its own Node object"),
        "{}",
        text(&out.stderr)
    );

    // The Secret its bound pod mounts, once the graph has the pod; not the other one.
    eventually("n1 reads the secret its pod uses", || {
        kubectl_as(&cp, &n1, &["get", "secret", "used"])
            .status
            .success()
    });
    let out = kubectl_as(&cp, &n1, &["get", "secret", "unused"]);
    assert_eq!(
        text(&out.stderr),
        "Error from server (Forbidden): secrets \"unused\" is forbidden: User \"system:node:n1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'n1' and this object"
    );
    let out = kubectl_as(&cp, &n2, &["get", "secret", "used"]);
    assert!(
        text(&out.stderr).contains("no relationship found between node 'n2'"),
        "{}",
        text(&out.stderr)
    );
    // Its pod, and that pod's status, but not a list of every secret.
    let out = kubectl_as(&cp, &n1, &["get", "pod", "web", "-o", "name"]);
    assert_eq!(text(&out.stdout), "pod/web", "{}", text(&out.stderr));
    assert!(!kubectl_as(&cp, &n2, &["get", "pod", "web"])
        .status
        .success());
    assert!(!kubectl_as(&cp, &n1, &["get", "secrets"]).status.success());
    // Deleting the pod cuts the edge.
    cp.kubectl_ok(&[
        "delete",
        "pod",
        "web",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ])
    .unwrap();
    eventually("n1 loses the secret with its pod", || {
        let out = kubectl_as(&cp, &n1, &["get", "secret", "used"]);
        text(&out.stderr).contains("no relationship found")
    });

    // NodeRestriction: labels in allowed namespaces yes, restricted ones and others' nodes no.
    let out = kubectl_as(
        &cp,
        &n1,
        &["label", "node", "n1", "node.kubernetes.io/pool=a"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = kubectl_as(
        &cp,
        &n1,
        &[
            "label",
            "node",
            "n1",
            "node-restriction.kubernetes.io/trusted=yes",
        ],
    );
    assert_eq!(
        text(&out.stderr),
        "Error from server (Forbidden): nodes \"n1\" is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/trusted"
    );
    // kubectl label/patch read the object first (denied above), so PUT it raw.
    let n2_body = cp.dir().join("n2.json");
    std::fs::write(
        &n2_body,
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n2","labels":{"x":"y"}}}"#,
    )
    .unwrap();
    let out = kubectl_as(
        &cp,
        &n1,
        &[
            "replace",
            "--raw",
            "/api/v1/nodes/n2",
            "-f",
            n2_body.to_str().unwrap(),
        ],
    );
    assert!(
        text(&out.stderr).contains("node \"n1\" is not allowed to modify node \"n2\""),
        "{}",
        text(&out.stderr)
    );
    let out = kubectl_as(&cp, &n1, &["taint", "node", "n1", "k=v:NoSchedule"]);
    assert!(
        text(&out.stderr).contains("node \"n1\" is not allowed to modify taints"),
        "{}",
        text(&out.stderr)
    );
    // A node may create only mirror pods bound to itself.
    let out = kubectl_as(&cp, &n1, &["run", "p", "--image=busybox"]);
    assert!(
        text(&out.stderr).contains("node \"n1\" can only create mirror pods"),
        "{}",
        text(&out.stderr)
    );
    // Its own lease only.
    let lease = |n: &str| {
        format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {n}, namespace: kube-node-lease}}\nspec: {{holderIdentity: {n}}}\n")
    };
    let create = |kc: &Path, body: String| {
        Command::new(KUBECTL)
            .env("KUBECONFIG", kc)
            .env("HOME", cp.dir())
            .args(["create", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(body.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap()
    };
    let out = create(&n1, lease("n1"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = create(&n1, lease("n2"));
    assert!(
        text(&out.stderr).contains("can only access node lease with the same name"),
        "{}",
        text(&out.stderr)
    );
}
