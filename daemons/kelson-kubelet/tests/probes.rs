//! Probes, lifecycle hooks, restarts and graceful deletion against a real control plane and a
//! private containerd (see `common`). Needs root, containerd, runc, CNI plugins and
//! busybox-static, and `cargo build -p kelson-kv -p kelson-apiserver -p kelson-kubelet
//! -p kelson-scheduler -p kelson-controller-manager`.
//! Pod traffic (httpGet/tcpSocket probes) stays on the test's own bridge.

mod common;

use std::time::{Duration, Instant};

use common::{condition, waiting_reason, TestNode, BUSYBOX};
use kelson_testsupport::wait_until;
use kube::api::DeleteParams;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_gate_readiness_and_restart_unhealthy_containers() {
    let node = TestNode::start(11, &[]).await;

    // Readiness (exec): Ready only while /tmp/ready exists; it appears after 2 s and goes
    // away 5 s later. httpGet + tcpSocket readiness against busybox httpd in a second pod.
    node.create(
        "ready-exec",
        json!({
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "sleep 2; touch /tmp/ready; sleep 5; rm /tmp/ready; exec sleep 3600"],
                "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1},
            }],
        }),
    )
    .await;
    node.create(
        "ready-http",
        json!({
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "web", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "periodSeconds": 1},
                "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                "startupProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 30},
            }],
        }),
    )
    .await;
    // Liveness: healthy for ~2 s, then failing: killed, restarted, then backing off.
    node.create(
        "liveness",
        json!({
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "touch /tmp/alive; sleep 2; rm /tmp/alive; exec sleep 3600"],
                "livenessProbe": {"exec": {"command": ["cat", "/tmp/alive"]}, "periodSeconds": 1, "failureThreshold": 1},
            }],
        }),
    )
    .await;
    // A startup probe that never succeeds keeps the container un-started and not ready.
    node.create(
        "never-started",
        json!({
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
                "startupProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 100},
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
            }],
        }),
    )
    .await;

    let st = node
        .wait_status("ready-exec", 30, "Running, not Ready", |st| {
            st["phase"] == "Running"
        })
        .await;
    assert_eq!(condition(&st, "Ready"), "False", "{st}");
    assert_eq!(st["containerStatuses"][0]["ready"], false, "{st}");
    let st = node
        .wait_status("ready-exec", 20, "Ready", |st| {
            condition(st, "Ready") == "True"
        })
        .await;
    assert_eq!(condition(&st, "ContainersReady"), "True", "{st}");
    assert_eq!(st["containerStatuses"][0]["ready"], true);
    node.wait_status("ready-exec", 20, "NotReady again", |st| {
        condition(st, "Ready") == "False" && st["containerStatuses"][0]["ready"] == false
    })
    .await;
    let ev = node.events_of("ready-exec").await;
    assert!(
        ev.iter()
            .any(|(r, m)| r == "Unhealthy" && m.starts_with("Readiness probe failed:")),
        "{ev:?}"
    );

    let st = node
        .wait_status("ready-http", 30, "httpGet readiness Ready", |st| {
            condition(st, "Ready") == "True"
        })
        .await;
    assert_eq!(st["containerStatuses"][0]["started"], true);
    assert_eq!(st["containerStatuses"][0]["restartCount"], 0, "{st}");

    let st = node
        .wait_status("never-started", 20, "Running", |st| {
            st["phase"] == "Running"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st2 = node.status("never-started").await.unwrap();
    for s in [&st, &st2] {
        assert_eq!(s["containerStatuses"][0]["started"], false, "{s}");
        assert_eq!(s["containerStatuses"][0]["ready"], false, "{s}");
    }

    // Liveness: restarted with restartCount and lastState, then CrashLoopBackOff.
    let st = node
        .wait_status("liveness", 40, "restarted, then backing off", |st| {
            st["containerStatuses"][0]["restartCount"]
                .as_i64()
                .unwrap_or(0)
                >= 1
                && waiting_reason(st, 0) == "CrashLoopBackOff"
        })
        .await;
    let cs = &st["containerStatuses"][0];
    assert!(cs["lastState"]["terminated"].is_object(), "{cs}");
    let ev = node.events_of("liveness").await;
    assert!(
        ev.iter()
            .any(|(r, m)| r == "Unhealthy" && m.starts_with("Liveness probe failed:")),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|(r, m)| r == "Killing"
                && m == "Container c failed liveness probe, will be restarted"),
        "{ev:?}"
    );
    assert!(
        waiting_reason(&st, 0) == "CrashLoopBackOff"
            && cs["state"]["waiting"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("back-off 10s restarting failed container=c pod=liveness_default("),
        "{cs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_grace_and_killed_containers() {
    let node = TestNode::start(12, &[]).await;
    let host_dir = node.work.path().join("hooks");
    std::fs::create_dir_all(&host_dir).unwrap();
    let hp = host_dir.display().to_string();

    // postStart writes a file before the pod counts as started; preStop writes another; the
    // main process ignores SIGTERM, so deletion takes the whole 3 s grace period.
    let uid = node
        .create(
            "hooked",
            json!({
                "terminationGracePeriodSeconds": 3,
                "containers": [{
                    "name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
                    "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                    "lifecycle": {
                        "postStart": {"exec": {"command": ["sh", "-c", "echo started > /out/poststart"]}},
                        "preStop": {"exec": {"command": ["sh", "-c", "echo bye > /out/prestop"]}},
                    },
                }],
                "volumes": [{"name": "out", "hostPath": {"path": hp}}],
            }),
        )
        .await;
    // A failing postStart kills the container: FailedPostStartHook.
    node.create(
        "bad-hook",
        json!({
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
                "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "echo nope; exit 7"]}}},
            }],
        }),
    )
    .await;
    // Killed from outside: noticed and restarted (restartPolicy Always).
    let victim_uid = node
        .create(
            "victim",
            json!({
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}],
            }),
        )
        .await;

    node.wait_status("hooked", 30, "Running", |st| st["phase"] == "Running")
        .await;
    assert_eq!(
        std::fs::read_to_string(host_dir.join("poststart")).unwrap_or_default(),
        "started\n"
    );

    let st = node
        .wait_status("victim", 30, "Running", |st| st["phase"] == "Running")
        .await;
    let cid = st["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("containerd://")
        .to_string();
    let killed_at = Instant::now();
    let out = node.ctrd.ctr(&["tasks", "kill", "-s", "SIGKILL", &cid]);
    assert!(out.status.success(), "ctr kill: {out:?}");
    let st = node
        .wait_status("victim", 10, "restarted after a kill", |st| {
            st["containerStatuses"][0]["restartCount"] == 1
                && st["containerStatuses"][0]["state"]["running"].is_object()
        })
        .await;
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(5), "restart took {took:?}");
    assert_eq!(
        st["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 137,
        "{st}"
    );
    assert_eq!(
        node.containers_of(&victim_uid).await.len(),
        2,
        "running + previous"
    );

    let st = node
        .wait_status("bad-hook", 30, "PostStartHookError", |st| {
            matches!(
                waiting_reason(st, 0).as_str(),
                "PostStartHookError" | "CrashLoopBackOff"
            )
        })
        .await;
    let ev = node.events_of("bad-hook").await;
    assert!(
        ev.iter()
            .any(|(r, m)| r == "FailedPostStartHook" && m.contains("nope")),
        "{ev:?} {st}"
    );

    // Graceful delete: preStop ran, the grace period was waited out, nothing left behind.
    let t0 = Instant::now();
    node.pods
        .delete("hooked", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "hooked deleted", || async {
        matches!(node.pods.get_opt("hooked").await, Ok(None))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(15),
        "deletion took {took:?} with a 3 s grace period"
    );
    assert_eq!(
        std::fs::read_to_string(host_dir.join("prestop")).unwrap_or_default(),
        "bye\n"
    );
    assert!(node.containers_of(&uid).await.is_empty());
    for name in ["bad-hook", "victim"] {
        node.pods
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    // Grace 0 in the spec deletes the API object at once; the kubelet then tears down.
    wait_until(
        Duration::from_secs(20),
        "victim's containers removed",
        || async { node.containers_of(&victim_uid).await.is_empty() },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
}

/// A Deployment of 3 replicas with a readiness probe through the real scheduler and
/// controller manager: `kubectl rollout status` completes only once the probes pass.
/// Also needs `cargo build -p kelson-scheduler -p kelson-controller-manager`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rollout_waits_for_readiness() {
    let node = TestNode::start(16, &[]).await;
    let kc = node.cp.kubeconfig_path().display().to_string();
    let spawn = |name: &str, args: &[&str]| {
        let mut cmd = std::process::Command::new(kelson_testsupport::bin_path(name));
        cmd.arg(format!("--kubeconfig={kc}"))
            .args(["--no-dbus", "--leader-elect=false"])
            .args(args)
            .env("KELSON_LOG_LEVEL", "info,kube=warn");
        kelson_testsupport::ChildGuard::spawn(
            name,
            cmd,
            &node.work.path().join(format!("{name}.log")),
        )
        .unwrap()
    };
    let _sched = spawn("kelson-scheduler", &[]);
    let _cm = spawn(
        "kelson-controller-manager",
        &["--controllers=deployment,replicaset"],
    );
    let manifest = serde_json::to_string(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{
                        "name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", "sleep 3; touch /tmp/ready; exec sleep 3600"],
                        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }))
    .unwrap();
    let out = node
        .cp
        .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest));
    assert!(out.status.success(), "kubectl apply: {out:?}");
    let t0 = Instant::now();
    let out = node
        .cp
        .kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "rollout status: {}\n{}\nkubelet log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log_tail()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("successfully rolled out"),
        "{out:?}"
    );
    // The probes gate readiness: pods cannot be Ready before their file exists (3 s).
    assert!(took >= Duration::from_secs(3), "rolled out in {took:?}");
    let pods = node
        .pods
        .list(&kube::api::ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 3);
    for p in &pods.items {
        let st = serde_json::to_value(p.status.clone().unwrap()).unwrap();
        assert_eq!(condition(&st, "Ready"), "True", "{st}");
    }
}
