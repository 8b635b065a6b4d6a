//! What a container sees and what bad input looks like, against a real control plane and a
//! private containerd (see `common`): cluster DNS in resolv.conf, projected volumes (bound
//! service account token, configMap, secret, downwardAPI) in upstream's atomic layout, an
//! emptyDir shared by two containers, resource limits in the container's own cgroup, and the
//! upstream reasons for a missing image, an invalid command and a missing ConfigMap volume
//! while other pods keep running. Needs root, containerd, runc, CNI plugins, busybox-static
//! and `cargo build -p kelson-kv -p kelson-apiserver -p kelson-kubelet`.

mod common;

use std::time::Duration;

use common::{waiting_reason, TestNode, BUSYBOX};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_see_dns_volumes_and_limits_and_bad_input_is_reported() {
    let node = TestNode::start(
        13,
        &[
            "--cluster-dns=10.96.0.10".into(),
            "--cluster-domain=cluster.test".into(),
        ],
    )
    .await;
    let client = node.client.clone();
    let pp = PostParams::default();
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "runner"}})).unwrap();
    let _ = Api::<ServiceAccount>::namespaced(client.clone(), "default")
        .create(&pp, &sa)
        .await;
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "cfg"}, "data": {"greeting": "hello", "other": "x"}}),
    )
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&pp, &cm)
        .await
        .unwrap();
    let sec: Secret = serde_json::from_value(
        json!({"metadata": {"name": "pw"}, "stringData": {"password": "s3cret"}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&pp, &sec)
        .await
        .unwrap();

    let uid = node
        .create(
            "env",
            json!({
                "terminationGracePeriodSeconds": 0,
                "serviceAccountName": "runner",
                "containers": [
                    {"name": "dns", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                     "command": ["sh", "-c", "cat /etc/resolv.conf; exec sleep 3600"]},
                    {"name": "limits", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                     "resources": {"limits": {"memory": "48Mi", "cpu": "250m"}},
                     "command": ["sh", "-c", "echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max); echo quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max); exec sleep 3600"]},
                    {"name": "writer", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                     "command": ["sh", "-c", "echo shared-data > /data/x; exec sleep 3600"],
                     "volumeMounts": [{"name": "scratch", "mountPath": "/data"}]},
                    {"name": "reader", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                     "command": ["sh", "-c", "i=0; until [ -f /data/x ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done; echo read=$(cat /data/x); echo cm=$(cat /proj/cfg/greeting) pw=$(cat /proj/password) ns=$(cat /proj/namespace) mode=$(stat -L -c %a /proj/cfg/greeting); exec sleep 3600"],
                     "volumeMounts": [
                         {"name": "scratch", "mountPath": "/data"},
                         {"name": "proj", "mountPath": "/proj", "readOnly": true},
                     ]},
                ],
                "volumes": [
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "proj", "projected": {"defaultMode": 0o440, "sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                        {"configMap": {"name": "cfg", "items": [{"key": "greeting", "path": "cfg/greeting", "mode": 0o400}]}},
                        {"secret": {"name": "pw"}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                    ]}},
                ],
            }),
        )
        .await;
    node.wait_status("env", 40, "Running", |st| {
        st["phase"] == "Running"
            && st["containerStatuses"]
                .as_array()
                .is_some_and(|a| a.iter().all(|c| c["state"]["running"].is_object()))
    })
    .await;

    // Cluster DNS: servers, upstream's search list (namespace first), ndots:5.
    let log = node
        .wait_log("env", &uid, "dns", "nameserver 10.96.0.10")
        .await;
    assert!(
        log.contains("search default.svc.cluster.test svc.cluster.test cluster.test"),
        "{log}"
    );
    assert!(log.contains("options ndots:5"), "{log}");

    // Limits reached the container's own cgroup (v1: bytes and quota; v2: memory.max/cpu.max).
    let log = node.wait_log("env", &uid, "limits", "quota=").await;
    assert!(log.contains(&format!("mem={}", 48u64 << 20)), "{log}");
    assert!(
        log.contains("quota=25000") || log.contains("quota=25000 100000"),
        "{log}"
    );

    // emptyDir shared; projected sources with items, modes and the downward API.
    let log = node.wait_log("env", &uid, "reader", "cm=").await;
    assert!(log.contains("read=shared-data"), "{log}");
    assert!(
        log.contains("cm=hello pw=s3cret ns=default mode=400"),
        "{log}"
    );
    // The token: a JWT, written through the ..data swap, bound to this pod.
    let vol = node.work.path().join(format!(
        "kubelet/pods/{uid}/volumes/kubernetes.io~projected/proj"
    ));
    let token = std::fs::read_to_string(vol.join("token")).unwrap();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert!(std::fs::symlink_metadata(vol.join("token"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read_link(vol.join("..data"))
        .unwrap()
        .to_string_lossy()
        .starts_with(".."));
    let claims = token.split('.').nth(1).unwrap();
    let claims = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims.trim_end_matches('='),
        )
        .unwrap(),
    )
    .unwrap();
    let claims: serde_json::Value = serde_json::from_str(&claims).unwrap();
    assert_eq!(
        claims["sub"], "system:serviceaccount:default:runner",
        "{claims}"
    );
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"],
        uid.as_str(),
        "{claims}"
    );

    // Bad input: upstream reasons and messages; the good pod keeps running.
    node.create(
        "no-image",
        json!({"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": "kelson.local/absent:1", "imagePullPolicy": "Never"}]}),
    )
    .await;
    node.create(
        "bad-command",
        json!({"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent", "command": ["/no/such/binary"]}]}),
    )
    .await;
    node.create(
        "no-configmap",
        json!({"terminationGracePeriodSeconds": 0,
               "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"],
                               "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
               "volumes": [{"name": "cfg", "configMap": {"name": "nope"}}]}),
    )
    .await;
    let st = node
        .wait_status("no-image", 30, "ErrImageNeverPull", |st| {
            waiting_reason(st, 0) == "ErrImageNeverPull"
        })
        .await;
    assert_eq!(
        st["containerStatuses"][0]["state"]["waiting"]["message"],
        "Container image \"kelson.local/absent:1\" is not present with pull policy of Never"
    );
    let st = node
        .wait_status("bad-command", 30, "RunContainerError", |st| {
            matches!(
                waiting_reason(st, 0).as_str(),
                "RunContainerError" | "CrashLoopBackOff"
            )
        })
        .await;
    let cs = &st["containerStatuses"][0];
    let text = format!(
        "{} {}",
        cs["state"]["waiting"]["message"], cs["lastState"]["terminated"]["message"]
    );
    assert!(text.contains("no such file or directory"), "{cs}");
    let st = node
        .wait_status("no-configmap", 30, "FailedMount message", |st| {
            st["containerStatuses"][0]["state"]["waiting"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("configmap \"nope\" not found"))
        })
        .await;
    assert_eq!(waiting_reason(&st, 0), "ContainerCreating");
    assert_eq!(
        st["containerStatuses"][0]["state"]["waiting"]["message"],
        "MountVolume.SetUp failed for volume \"cfg\" : configmap \"nope\" not found"
    );
    assert_eq!(st["phase"], "Pending");
    // Upstream's FailedMount event, once per distinct error although set-up is retried.
    kelson_testsupport::wait_until(Duration::from_secs(10), "FailedMount event", || async {
        node.events_of("no-configmap")
            .await
            .iter()
            .any(|(r, _)| r == "FailedMount")
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ev = node.events_of("no-configmap").await;
    assert_eq!(
        ev.iter().filter(|(r, _)| r == "FailedMount").count(),
        1,
        "{ev:?}"
    );
    let st = node.status("env").await.unwrap();
    assert_eq!(st["phase"], "Running", "{st}");
    assert!(st["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["restartCount"] == 0 && c["state"]["running"].is_object()));
}
