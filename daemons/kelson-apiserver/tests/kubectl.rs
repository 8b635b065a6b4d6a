//! The real kubectl against kelson-apiserver, over kelson-kv and over the real etcd.

mod common;

use std::time::{Duration, Instant};

use common::{ApiCluster, KUBECTL};
use kelson_testsupport::StoreKind;
use serde_json::{json, Value};

const MANIFESTS: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
data:
  a: "1"
---
apiVersion: v1
kind: Pod
metadata:
  name: p1
  labels: {app: p}
spec:
  containers:
  - name: c
    image: busybox
    command: ["sleep", "3600"]
"#;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Waits (bounded) until `path` contains `needle`.
fn wait_file_contains(path: &std::path::Path, needle: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.contains(needle) || start.elapsed() > timeout {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_workflow_on_kelson_kv() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();

    let v = c.ok(&["version"]);
    assert!(v.contains("Server Version: v1.33.0-kelson"), "{v}");
    let r = c.ok(&["api-resources"]);
    assert!(
        r.contains("deployments") && r.contains("apps/v1") && r.contains("configmaps"),
        "{r}"
    );

    c.ok(&["create", "ns", "demo"]);
    let ns = c.ok(&["get", "ns"]);
    for n in [
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "demo",
    ] {
        assert!(ns.contains(n), "{ns}");
    }
    let created = c.ok_in(&["-n", "demo", "create", "-f", "-"], MANIFESTS);
    assert!(
        created.contains("deployment.apps/web created") && created.contains("pod/p1 created"),
        "{created}"
    );

    // Defaults and metadata.
    let d = json(&c.ok(&["-n", "demo", "get", "deploy", "web", "-o", "json"]));
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert!(d["metadata"]["uid"].as_str().unwrap().len() == 36);
    let y = c.ok(&["-n", "demo", "get", "cm", "cfg", "-o", "yaml"]);
    assert!(
        y.contains("a: \"1\"") && y.contains("resourceVersion:"),
        "{y}"
    );
    let wide = c.ok(&["-n", "demo", "get", "pods", "-o", "wide"]);
    assert!(
        wide.contains("IP") && wide.contains("NODE") && wide.contains("Pending"),
        "{wide}"
    );
    // Events print upstream's columns, core/v1 and events.k8s.io/v1 alike.
    c.ok_in(
        &["-n", "demo", "create", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Event", "metadata": {"name": "p1.a"},
  "involvedObject": {"kind": "Pod", "name": "p1", "namespace": "demo"},
  "type": "Normal", "reason": "Scheduled", "message": "assigned demo/p1 to n1", "count": 2,
  "source": {"component": "default-scheduler"}}"#,
    );
    let ev = c.ok(&["-n", "demo", "get", "events"]);
    let mut lines = ev.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{ev}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(1..),
        Some(
            &[
                "Normal",
                "Scheduled",
                "pod/p1",
                "assigned",
                "demo/p1",
                "to",
                "n1"
            ][..]
        ),
        "{ev}"
    );
    c.ok_in(
        &["-n", "demo", "create", "-f", "-"],
        r#"{"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "p1.b"},
  "regarding": {"kind": "Pod", "name": "p1", "namespace": "demo"}, "type": "Warning",
  "reason": "BackOff", "note": "restarting", "action": "Restart",
  "reportingController": "kubelet", "reportingInstance": "n1",
  "eventTime": "2024-01-01T00:00:00.000000Z"}"#,
    );
    let ev = c.ok(&["-n", "demo", "get", "events.v1.events.k8s.io", "-o", "wide"]);
    assert!(
        ev.lines().next().unwrap_or_default().contains("SOURCE")
            && ev.contains("kubelet, n1")
            && ev.contains("pod/p1")
            && ev.contains("restarting")
            && ev.contains("p1.b"),
        "{ev}"
    );
    let deploys = c.ok(&["-n", "demo", "get", "deploy"]);
    assert!(
        deploys.contains("UP-TO-DATE") && deploys.contains("0/2"),
        "{deploys}"
    );

    // apply, then apply again: unchanged.
    c.ok_in(&["-n", "demo", "apply", "-f", "-"], MANIFESTS);
    let again = c.ok_in(&["-n", "demo", "apply", "-f", "-"], MANIFESTS);
    assert!(
        again.contains("deployment.apps/web unchanged")
            && again.contains("configmap/cfg unchanged"),
        "{again}"
    );

    // label + selectors.
    c.ok(&["-n", "demo", "label", "cm", "cfg", "tier=fe"]);
    assert!(c
        .ok(&["-n", "demo", "get", "cm", "-l", "tier=fe", "-o", "name"])
        .contains("configmap/cfg"));
    assert!(!c
        .ok(&["-n", "demo", "get", "cm", "-l", "tier!=fe", "-o", "name"])
        .contains("configmap/cfg"));
    assert!(c
        .ok(&[
            "-n",
            "demo",
            "get",
            "pods",
            "--field-selector",
            "status.phase=Pending",
            "-o",
            "name"
        ])
        .contains("pod/p1"));

    // The three patch types.
    c.ok(&[
        "-n",
        "demo",
        "patch",
        "cm",
        "cfg",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"b":"2"}}"#,
    ]);
    c.ok(&[
        "-n",
        "demo",
        "patch",
        "cm",
        "cfg",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/data/c","value":"3"}]"#,
    ]);
    c.ok(&[
        "-n",
        "demo",
        "patch",
        "deploy",
        "web",
        "--type",
        "strategic",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.26"}]}}}}"#,
    ]);
    let cm = json(&c.ok(&["-n", "demo", "get", "cm", "cfg", "-o", "json"]));
    assert_eq!(
        cm["data"],
        serde_json::json!({"a": "1", "b": "2", "c": "3"})
    );
    let d = json(&c.ok(&["-n", "demo", "get", "deploy", "web", "-o", "json"]));
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.26"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80,
        "strategic merge kept the port"
    );
    assert_eq!(
        d["metadata"]["generation"], 2,
        "spec change bumps generation"
    );

    // scale subresource.
    c.ok(&["-n", "demo", "scale", "deploy", "web", "--replicas", "5"]);
    assert_eq!(
        c.ok(&[
            "-n",
            "demo",
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "5"
    );

    // A stale replace is a 409.
    let stale = c.ok(&["-n", "demo", "get", "cm", "cfg", "-o", "yaml"]);
    c.ok(&[
        "-n",
        "demo",
        "patch",
        "cm",
        "cfg",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"d":"4"}}"#,
    ]);
    let e = c.fails(&["-n", "demo", "replace", "-f", "-"], Some(&stale));
    assert!(
        e.contains("Conflict") && e.contains("the object has been modified"),
        "{e}"
    );

    // Invalid objects are 422, a missing namespace 404, unknown fields 400 (Strict).
    let bad = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"bad"},"spec":{"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"c"}},"spec":{"containers":[{"name":"c","image":"x"}]}}}}"#;
    let e = c.fails(&["-n", "demo", "create", "-f", "-"], Some(bad));
    assert!(
        e.contains("is invalid") && e.contains("`selector` does not match template `labels`"),
        "{e}"
    );
    let e = c.fails(&["-n", "nope", "create", "-f", "-"], Some(MANIFESTS));
    assert!(
        e.contains("NotFound") && e.contains("namespaces \"nope\" not found"),
        "{e}"
    );
    let e = c.fails(
        &["-n", "demo", "create", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"bogus":1}"#),
    );
    assert!(e.contains("unknown field \"bogus\""), "{e}");

    // get -w sees events.
    let wfile = c.dir.path().join("watch.out");
    let mut watcher = std::process::Command::new(KUBECTL)
        .env("KUBECONFIG", &c.kubeconfig)
        .args(["-n", "demo", "get", "cm", "-w"])
        .stdout(std::fs::File::create(&wfile).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_file_contains(&wfile, "cfg", Duration::from_secs(10));
    c.ok_in(
        &["-n", "demo", "create", "-f", "-"],
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"watched"}}"#,
    );
    let seen = wait_file_contains(&wfile, "watched", Duration::from_secs(10));
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(seen.contains("watched"), "watch output: {seen}");

    // Finalizers hold deletion until removed.
    c.ok_in(&["-n", "demo", "create", "-f", "-"], r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"fin","finalizers":["example.com/hold"]}}"#);
    c.ok(&["-n", "demo", "delete", "cm", "fin", "--wait=false"]);
    let ts = c.ok(&[
        "-n",
        "demo",
        "get",
        "cm",
        "fin",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!ts.is_empty());
    c.ok(&[
        "-n",
        "demo",
        "patch",
        "cm",
        "fin",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    assert!(c
        .fails(&["-n", "demo", "get", "cm", "fin"], None)
        .contains("NotFound"));

    // delete.
    c.ok(&["-n", "demo", "delete", "pod", "p1"]);
    c.ok(&["-n", "demo", "delete", "deploy", "web"]);
    assert!(c
        .fails(&["-n", "demo", "get", "pod", "p1"], None)
        .contains("NotFound"));

    // Deleting a namespace removes its content, then the namespace.
    c.ok(&["delete", "ns", "demo", "--timeout=30s"]);
    assert!(c.fails(&["get", "ns", "demo"], None).contains("NotFound"));
    assert!(c
        .fails(&["-n", "demo", "get", "cm", "cfg"], None)
        .contains("NotFound"));
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_on_real_etcd() {
    let c = ApiCluster::start(StoreKind::Etcd, &[]).await.unwrap();
    c.ok(&["create", "ns", "e2e"]);
    c.ok_in(&["-n", "e2e", "apply", "-f", "-"], MANIFESTS);
    let pods = c.ok(&["-n", "e2e", "get", "pods"]);
    assert!(pods.contains("p1") && pods.contains("Pending"), "{pods}");
    c.ok(&[
        "-n",
        "e2e",
        "patch",
        "cm",
        "cfg",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"a":"9"}}"#,
    ]);
    assert_eq!(
        c.ok(&["-n", "e2e", "get", "cm", "cfg", "-o", "jsonpath={.data.a}"]),
        "9"
    );
    let again = c.ok_in(&["-n", "e2e", "apply", "-f", "-"], MANIFESTS);
    assert!(
        again.contains("configmap/cfg configured"),
        "apply restores data: {again}"
    );
    assert_eq!(
        c.ok(&["-n", "e2e", "get", "cm", "cfg", "-o", "jsonpath={.data.a}"]),
        "1"
    );
    // Typed kubectl generators send protobuf bodies.
    c.ok(&[
        "-n",
        "e2e",
        "create",
        "deployment",
        "gen",
        "--image=nginx:1.25",
        "--replicas=3",
    ]);
    let d = json(&c.ok(&["-n", "e2e", "get", "deploy", "gen", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.25"
    );
    c.ok(&[
        "-n",
        "e2e",
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=user=admin",
    ]);
    assert_eq!(
        c.ok(&[
            "-n",
            "e2e",
            "get",
            "secret",
            "s1",
            "-o",
            "jsonpath={.data.user}"
        ]),
        "YWRtaW4="
    );
    c.ok(&[
        "-n",
        "e2e",
        "create",
        "service",
        "nodeport",
        "np",
        "--tcp=80:8080",
    ]);
    let svc = json(&c.ok(&["-n", "e2e", "get", "svc", "np", "-o", "json"]));
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10."),
        "{svc}"
    );
    let np = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&np), "{svc}");
    let list = json(&c.ok(&["get", "--raw", "/api/v1/namespaces/e2e/configmaps?limit=1"]));
    assert_eq!(list["kind"], "ConfigMapList");
    c.ok(&["-n", "e2e", "delete", "cm", "cfg"]);
    assert!(c
        .fails(&["-n", "e2e", "get", "cm", "cfg"], None)
        .contains("NotFound"));
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_and_authorization() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    // No client certificate: 401.
    let anon = c.kubectl_as(&c.kubeconfig_for("anon"), &["get", "ns"], None);
    assert!(!anon.status.success());
    let anon_err = String::from_utf8_lossy(&anon.stderr);
    assert!(
        anon_err.contains("provide credentials") || anon_err.contains("Unauthorized"),
        "{anon_err}"
    );
    // A user outside system:masters with no RBAC bindings: upstream's 403 (see tests/rbac.rs).
    let bob = c.kubectl_as(
        &c.kubeconfig_for("bob"),
        &["get", "pods", "-n", "default"],
        None,
    );
    let err = String::from_utf8_lossy(&bob.stderr);
    assert!(
        !bob.status.success()
            && err.contains("Forbidden")
            && err.contains("User \"bob\" cannot list resource \"pods\""),
        "{err}"
    );
    assert!(
        err.trim_end()
            .ends_with("in API group \"\" in the namespace \"default\""),
        "{err}"
    );
    // Reviews: answered by the authorizer, never stored.
    assert_eq!(c.ok(&["auth", "can-i", "create", "pods"]).trim(), "yes");
    let bob_can = c.kubectl_as(
        &c.kubeconfig_for("bob"),
        &["auth", "can-i", "list", "pods"],
        None,
    );
    assert!(
        String::from_utf8_lossy(&bob_can.stdout).starts_with("no"),
        "{bob_can:?}"
    );
    // Health endpoints.
    let h = c.ok(&["get", "--raw", "/healthz?verbose"]);
    assert!(
        h.contains("[+]etcd ok") && h.contains("healthz check passed"),
        "{h}"
    );
    assert_eq!(c.ok(&["get", "--raw", "/livez"]), "ok");
    let e = c.fails(&["get", "--raw", "/apis/nope.example.com/v1/things"], None);
    assert!(e.contains("NotFound"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn always_allow_and_anonymous() {
    let c = ApiCluster::start(
        StoreKind::Kelson,
        &["--authorization-mode", "AlwaysAllow", "--anonymous-auth"],
    )
    .await
    .unwrap();
    let bob = c.kubectl_as(
        &c.kubeconfig_for("bob"),
        &["get", "ns", "default", "-o", "name"],
        None,
    );
    assert!(
        bob.status.success(),
        "{}",
        String::from_utf8_lossy(&bob.stderr)
    );
    // A request with no credentials at all is system:anonymous. (kubectl cannot send one: with
    // an empty user it prompts for a password, so the stock Rust client does.)
    let text = std::fs::read_to_string(c.kubeconfig_for("anon")).unwrap();
    let no_creds = c.kubeconfig_for("nocreds");
    std::fs::write(&no_creds, text.replace("{token: not-a-valid-token}", "{}")).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&no_creds).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let ns = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .get("default")
        .await
        .expect("anonymous get of namespace default");
    assert_eq!(ns.metadata.name.as_deref(), Some("default"));
    // A bearer token that does not authenticate is refused even with anonymous access on:
    // anonymous covers requests that no authenticator rejected, as upstream.
    let bad = c.kubectl_as(
        &c.kubeconfig_for("anon"),
        &["get", "ns", "default", "-o", "name"],
        None,
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// `kubectl auth whoami`, and pod admission: ServiceAccount defaulting and lookup, Priority
/// from PriorityClasses.
#[tokio::test(flavor = "multi_thread")]
async fn pod_admission() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    let pod = |name: &str, extra: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{{extra}"containers":[{{"name":"c","image":"busybox"}}]}}}}"#
        )
    };
    let get = |name: &str| json(&c.ok(&["get", "pod", name, "-o", "json"]));

    // `kubectl auth whoami`: a SelfSubjectReview answered from the client certificate.
    let me = json(&c.ok(&["auth", "whoami", "-o", "json"]));
    assert_eq!(me["kind"], "SelfSubjectReview", "{me}");
    let groups = me["status"]["userInfo"]["groups"].to_string();
    assert!(
        groups.contains("system:masters") && groups.contains("system:authenticated"),
        "{me}"
    );

    // The system classes exist from bootstrap.
    assert_eq!(
        c.ok(&[
            "get",
            "pc",
            "system-node-critical",
            "-o",
            "jsonpath={.value}"
        ]),
        "2000001000"
    );
    assert_eq!(
        c.ok(&[
            "get",
            "pc",
            "system-cluster-critical",
            "-o",
            "jsonpath={.value}"
        ]),
        "2000000000"
    );

    // Defaults: the `default` service account, priority 0, PreemptLowerPriority.
    c.ok_in(&["create", "-f", "-"], &pod("plain", ""));
    let p = get("plain");
    assert_eq!(p["spec"]["serviceAccountName"], "default", "{p}");
    assert_eq!(p["spec"]["priority"], 0, "{p}");
    assert_eq!(p["spec"]["preemptionPolicy"], "PreemptLowerPriority", "{p}");

    // A named class gives its value.
    c.ok_in(
        &["create", "-f", "-"],
        &pod("critical", r#""priorityClassName":"system-node-critical","#),
    );
    assert_eq!(get("critical")["spec"]["priority"], 2000001000);

    // Unknown class and missing service account: upstream's 403s.
    let e = c.fails(
        &["create", "-f", "-"],
        Some(&pod("nopc", r#""priorityClassName":"nope","#)),
    );
    assert!(
        e.contains("Forbidden") && e.contains("no PriorityClass with name nope was found"),
        "{e}"
    );
    let e = c.fails(
        &["create", "-f", "-"],
        Some(&pod("nosa", r#""serviceAccountName":"ghost","#)),
    );
    assert!(
        e.contains("Forbidden")
            && e.contains(r#"error looking up service account default/ghost: serviceaccount "ghost" not found"#),
        "{e}"
    );
    c.ok(&["create", "serviceaccount", "ghost"]);
    c.ok_in(
        &["create", "-f", "-"],
        &pod("withsa", r#""serviceAccountName":"ghost","#),
    );

    // A globalDefault class applies to pods that name none; a client-set priority that
    // differs from the class's is refused.
    c.ok_in(
        &["create", "-f", "-"],
        r#"{"apiVersion":"scheduling.k8s.io/v1","kind":"PriorityClass","metadata":{"name":"batch"},"value":100,"globalDefault":true,"preemptionPolicy":"Never"}"#,
    );
    c.ok_in(&["create", "-f", "-"], &pod("defaulted", ""));
    let p = get("defaulted");
    assert_eq!(
        (
            p["spec"]["priorityClassName"].clone(),
            p["spec"]["priority"].clone(),
            p["spec"]["preemptionPolicy"].clone()
        ),
        (json!("batch"), json!(100), json!("Never")),
        "{p}"
    );
    let e = c.fails(
        &["create", "-f", "-"],
        Some(&pod("setprio", r#""priority":7,"#)),
    );
    assert!(e.contains("must not be provided in pod spec"), "{e}");
}

/// PersistentVolumes and claims: defaults, 422 for an unusable object, and `kubectl get
/// pv,pvc -o wide` with upstream's printer columns (server-side Table).
#[tokio::test(flavor = "multi_thread")]
async fn persistent_volumes_and_claims() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    let pv = r#"{"apiVersion":"v1","kind":"PersistentVolume","metadata":{"name":"pv1"},
        "spec":{"capacity":{"storage":"2Gi"},"accessModes":["ReadWriteMany","ReadWriteOnce"],
        "storageClassName":"slow","hostPath":{"path":"/srv/pv1"},
        "claimRef":{"namespace":"default","name":"data"}}}"#;
    c.ok_in(&["create", "-f", "-"], pv);
    let pvc = r#"{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"data"},
        "spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"1Gi"}}}}"#;
    c.ok_in(&["create", "-f", "-"], pvc);
    let got = json(&c.ok(&["get", "pv", "pv1", "-o", "json"]));
    assert_eq!(got["status"]["phase"], "Pending", "{got}");
    assert_eq!(got["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(got["spec"]["volumeMode"], "Filesystem");

    let wide = c.ok(&["get", "pv,pvc", "-o", "wide"]);
    let lines: Vec<&str> = wide.lines().filter(|l| !l.trim().is_empty()).collect();
    let cols = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    let pv_head = lines
        .iter()
        .find(|l| l.starts_with("NAME") && l.contains("RECLAIM POLICY"))
        .unwrap_or_else(|| panic!("no PV header in\n{wide}"));
    assert_eq!(
        cols(pv_head),
        [
            "NAME",
            "CAPACITY",
            "ACCESS",
            "MODES",
            "RECLAIM",
            "POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "REASON",
            "AGE",
            "VOLUMEMODE"
        ],
        "{wide}"
    );
    let pv_row = lines
        .iter()
        .find(|l| l.starts_with("persistentvolume/pv1"))
        .unwrap_or_else(|| panic!("no pv row in\n{wide}"));
    let r = cols(pv_row);
    assert_eq!(
        r[1..8],
        [
            "2Gi",
            "RWO,RWX",
            "Retain",
            "Pending",
            "default/data",
            "slow",
            "<unset>"
        ],
        "{wide}"
    );
    assert_eq!(r.last().map(String::as_str), Some("Filesystem"), "{wide}");
    let pvc_head = lines
        .iter()
        .find(|l| l.starts_with("NAME") && l.contains("VOLUME ") && !l.contains("RECLAIM"))
        .unwrap_or_else(|| panic!("no PVC header in\n{wide}"));
    assert_eq!(
        cols(pvc_head),
        [
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS",
            "MODES",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "AGE",
            "VOLUMEMODE"
        ],
        "{wide}"
    );
    let pvc_row = lines
        .iter()
        .find(|l| l.starts_with("persistentvolumeclaim/data"))
        .unwrap_or_else(|| panic!("no pvc row in\n{wide}"));
    // Unbound: no volume, capacity or modes, so the row has those cells empty.
    let r = cols(pvc_row);
    assert_eq!(r[1], "Pending", "{wide}");
    assert_eq!(r.last().map(String::as_str), Some("Filesystem"), "{wide}");

    // A claim without a storage request and with an unknown access mode: 422 with causes.
    let bad = r#"{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"bad"},
        "spec":{"accessModes":["Sometimes"],"resources":{}}}"#;
    let err = c.fails(&["create", "-f", "-"], Some(bad));
    assert!(err.contains("is invalid"), "{err}");
    assert!(
        err.contains("spec.resources[storage]: Required value"),
        "{err}"
    );
    assert!(
        err.contains("spec.accessModes: Unsupported value: \"Sometimes\""),
        "{err}"
    );
    // A pending claim's spec is immutable.
    let err = c.fails(
        &[
            "patch",
            "pvc",
            "data",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"accessModes":["ReadWriteMany"]}}"#,
        ],
        None,
    );
    assert!(err.contains("spec is immutable after creation"), "{err}");
}
