//! Deployments and ReplicaSets driven by the real kubectl: create, rollout status, set image
//! (rolling update within maxSurge/maxUnavailable), history, undo, scale, pause/resume.

mod common;

use std::time::Duration;

use common::Env;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};

async fn active_pods(env: &Env) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    pods.list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rollout_lifecycle() {
    let env = Env::start(&[], &[("n1", "a"), ("n2", "b")]).await;
    env.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=registry.invalid/web:1",
        "--replicas=4",
    ]);
    env.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let rss: Api<ReplicaSet> = Api::namespaced(env.client.clone(), "default");
    let first = rss.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(first.len(), 1);
    let rs = &first[0];
    let hash = rs.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(rs.metadata.name.as_deref().unwrap(), format!("web-{hash}"));
    assert_eq!(
        rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "1"
    );
    let owner = &rs.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Deployment", Some(true))
    );
    assert_eq!(active_pods(&env).await.len(), 4);

    // Rolling update: 4 replicas, 25% → maxSurge 1, maxUnavailable 1. Sample while it runs.
    env.kubectl(&[
        "set",
        "image",
        "deployment/web",
        "web=registry.invalid/web:2",
    ]);
    let deps: Api<Deployment> = Api::namespaced(env.client.clone(), "default");
    let start = std::time::Instant::now();
    let mut saw_mixed = false;
    loop {
        let pods = active_pods(&env).await;
        assert!(
            pods.len() <= 5,
            "more than replicas+maxSurge pods: {}",
            pods.len()
        );
        let ready = pods
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        // Pods just created are not ready yet; pods being replaced were ready.
        let new = pods.iter().filter(|p| image_of(p).ends_with(":2")).count();
        if new > 0 && new < pods.len() {
            saw_mixed = true;
        }
        let d = deps.get("web").await.unwrap();
        let st = d.status.clone().unwrap_or_default();
        assert!(
            st.available_replicas.unwrap_or(0) >= 3
                || st.updated_replicas.unwrap_or(0) == 0
                || ready >= 3,
            "availability fell below replicas-maxUnavailable: {st:?}"
        );
        if new == 4
            && pods.len() == 4
            && st.updated_replicas == Some(4)
            && st.available_replicas == Some(4)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rollout did not finish: {st:?}\n{}",
            env.cm.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_mixed, "the update replaced pods gradually");
    env.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let hist = env.kubectl(&["rollout", "history", "deployment/web"]);
    assert!(
        hist.contains("1 ") && hist.contains("2 "),
        "history:\n{hist}"
    );

    // Undo: the old ReplicaSet comes back as revision 3.
    env.kubectl(&["rollout", "undo", "deployment/web"]);
    env.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    env.wait("the undo to finish", 60, || async {
        let pods = active_pods(&env).await;
        (pods.len() == 4 && pods.iter().all(|p| image_of(p).ends_with(":1"))).then_some(())
    })
    .await;
    let rs1 = rss.get(rs.metadata.name.as_deref().unwrap()).await.unwrap();
    assert_eq!(
        rs1.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "3"
    );
    let d = deps.get("web").await.unwrap();
    assert_eq!(
        d.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "3"
    );
    let conds = d.status.unwrap().conditions.unwrap();
    assert!(conds
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True"));
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Progressing"
                && c.reason.as_deref() == Some("NewReplicaSetAvailable"))
    );

    // Scale.
    env.kubectl(&["scale", "deployment/web", "--replicas=6"]);
    env.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    env.wait("6 pods", 30, || async {
        (active_pods(&env).await.len() == 6).then_some(())
    })
    .await;

    // Pause: a template change does not roll out until resumed.
    env.kubectl(&["rollout", "pause", "deployment/web"]);
    env.kubectl(&[
        "set",
        "image",
        "deployment/web",
        "web=registry.invalid/web:3",
    ]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        active_pods(&env)
            .await
            .iter()
            .all(|p| image_of(p).ends_with(":1")),
        "paused deployment rolled out"
    );
    let d = deps.get("web").await.unwrap();
    assert!(d
        .status
        .unwrap()
        .conditions
        .unwrap()
        .iter()
        .any(|c| c.reason.as_deref() == Some("DeploymentPaused")));
    env.kubectl(&["rollout", "resume", "deployment/web"]);
    env.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    env.wait("image 3 everywhere", 60, || async {
        let pods = active_pods(&env).await;
        (pods.len() == 6 && pods.iter().all(|p| image_of(p).ends_with(":3"))).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_and_replicaset_adoption() {
    let env = Env::start(&[], &[("n1", "a")]).await;
    // An orphan pod the ReplicaSet's selector matches is adopted, not duplicated.
    env.cp
        .kubectl_stdin(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: Pod\nmetadata: {name: stray, labels: {app: solo}}\nspec: {containers: [{name: c, image: registry.invalid/x:1}]}\n"))
        .status
        .success()
        .then_some(())
        .expect("pod created");
    let rs_yaml = "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: solo}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: solo}}\n  template:\n    metadata: {labels: {app: solo}}\n    spec: {containers: [{name: c, image: registry.invalid/x:1}]}\n";
    assert!(env
        .cp
        .kubectl_stdin(&["apply", "-f", "-"], Some(rs_yaml))
        .status
        .success());
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    env.wait("2 solo pods, stray adopted", 30, || async {
        let l = pods
            .list(&ListParams::default().labels("app=solo"))
            .await
            .ok()?
            .items;
        let stray = l
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("stray"))?;
        let adopted = stray.metadata.owner_references.as_ref().is_some_and(|r| {
            r.iter()
                .any(|r| r.kind == "ReplicaSet" && r.controller == Some(true))
        });
        (l.len() == 2 && adopted).then_some(())
    })
    .await;
    let rss: Api<ReplicaSet> = Api::namespaced(env.client.clone(), "default");
    env.wait("RS status", 30, || async {
        let st = rss.get("solo").await.ok()?.status?;
        (st.replicas == 2
            && st.ready_replicas == Some(2)
            && st.available_replicas == Some(2)
            && st.observed_generation == Some(1))
        .then_some(())
    })
    .await;
    // Relabelling a pod releases it and a replacement is created.
    env.kubectl(&["label", "pod", "stray", "app=gone", "--overwrite"]);
    env.wait("release + replacement", 30, || async {
        let l = pods
            .list(&ListParams::default().labels("app=solo"))
            .await
            .ok()?
            .items;
        let stray = pods.get("stray").await.ok()?;
        (l.len() == 2
            && stray
                .metadata
                .owner_references
                .as_ref()
                .is_none_or(|r| r.is_empty()))
        .then_some(())
    })
    .await;

    // Recreate: all old pods go before any new one exists.
    let d = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: rc}\nspec:\n  replicas: 2\n  strategy: {type: Recreate}\n  selector: {matchLabels: {app: rc}}\n  template:\n    metadata: {labels: {app: rc}}\n    spec: {containers: [{name: c, image: registry.invalid/x:1}]}\n";
    assert!(env
        .cp
        .kubectl_stdin(&["apply", "-f", "-"], Some(d))
        .status
        .success());
    env.kubectl(&["rollout", "status", "deployment/rc", "--timeout=60s"]);
    env.kubectl(&["set", "image", "deployment/rc", "c=registry.invalid/x:2"]);
    let start = std::time::Instant::now();
    loop {
        let l: Vec<Pod> = pods
            .list(&ListParams::default().labels("app=rc"))
            .await
            .unwrap()
            .items;
        let imgs: Vec<String> = l
            .iter()
            .map(|p| {
                p.spec.as_ref().unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap()
            })
            .collect();
        let old = imgs.iter().filter(|i| i.ends_with(":1")).count();
        let new = imgs.len() - old;
        assert!(
            old == 0 || new == 0,
            "Recreate ran old and new pods together: {imgs:?}"
        );
        if new == 2 && old == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "recreate did not finish: {imgs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.kubectl(&["rollout", "status", "deployment/rc", "--timeout=60s"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_records_events_like_upstream() {
    let env = Env::start(&[], &[("n1", "a"), ("n2", "b")]).await;
    env.kubectl(&[
        "create",
        "deployment",
        "ev",
        "--image=registry.invalid/web:1",
        "--replicas=3",
    ]);
    let deps: Api<Deployment> = Api::namespaced(env.client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(env.client.clone(), "default");
    let rs = env
        .wait("replica set created", 20, || async {
            rss.list(&ListParams::default()).await.ok()?.items.pop()
        })
        .await;
    let rs_name = rs.metadata.name.clone().unwrap();
    let d = deps.get("ev").await.unwrap();

    // Deployment: ScalingReplicaSet, from the deployment-controller, about the Deployment.
    let up = format!("Scaled up replica set {rs_name} from 0 to 3");
    let e = env
        .wait("ScalingReplicaSet event", 20, || async {
            env.events_for("Deployment", "ev")
                .await
                .into_iter()
                .find(|e| e.message.as_deref() == Some(up.as_str()))
        })
        .await;
    assert_eq!(e.reason.as_deref(), Some("ScalingReplicaSet"));
    assert_eq!(e.type_.as_deref(), Some("Normal"));
    assert_eq!(e.count, Some(1));
    assert_eq!(
        e.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("deployment-controller")
    );
    assert_eq!(
        e.reporting_component.as_deref(),
        Some("deployment-controller")
    );
    let io = &e.involved_object;
    assert_eq!(io.api_version.as_deref(), Some("apps/v1"));
    assert_eq!(io.uid, d.metadata.uid);

    // ReplicaSet: one SuccessfulCreate per pod, from the replicaset-controller.
    let created = env
        .wait("3 SuccessfulCreate events", 20, || async {
            let v: Vec<Event> = env
                .events_for("ReplicaSet", &rs_name)
                .await
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
                .collect();
            (v.len() == 3).then_some(v)
        })
        .await;
    for e in &created {
        let m = e.message.as_deref().unwrap();
        assert!(m.starts_with(&format!("Created pod: {rs_name}-")), "{m}");
        assert_eq!(
            e.source.as_ref().and_then(|s| s.component.as_deref()),
            Some("replicaset-controller")
        );
        assert_eq!(e.involved_object.uid, rs.metadata.uid);
    }
    // kubectl describe shows them.
    let out = env.kubectl(&["describe", "deployment", "ev"]);
    assert!(
        out.contains("ScalingReplicaSet") && out.contains(&up),
        "{out}"
    );

    // Scaling down deletes pods (SuccessfulDelete); the same scaling again bumps the count of
    // the first event instead of creating a second one.
    let down = format!("Scaled down replica set {rs_name} from 3 to 1");
    let count_of = |msg: String| {
        let env = &env;
        async move {
            env.events_for("Deployment", "ev")
                .await
                .into_iter()
                .filter(|e| e.message.as_deref() == Some(msg.as_str()))
                .map(|e| e.count.unwrap_or(1))
                .collect::<Vec<_>>()
        }
    };
    env.kubectl(&["scale", "deployment", "ev", "--replicas=1"]);
    env.wait("scaled down once", 20, || async {
        (count_of(down.clone()).await == vec![1]).then_some(())
    })
    .await;
    env.wait("2 SuccessfulDelete events", 20, || async {
        let n = env
            .events_for("ReplicaSet", &rs_name)
            .await
            .iter()
            .filter(|e| {
                e.reason.as_deref() == Some("SuccessfulDelete")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.starts_with("Deleted pod: "))
            })
            .count();
        (n == 2).then_some(())
    })
    .await;
    env.kubectl(&["scale", "deployment", "ev", "--replicas=3"]);
    let back_up = format!("Scaled up replica set {rs_name} from 1 to 3");
    env.wait("scaled up again", 20, || async {
        (count_of(back_up.clone()).await == vec![1]).then_some(())
    })
    .await;
    env.kubectl(&["scale", "deployment", "ev", "--replicas=1"]);
    env.wait("the repeated scale-down bumps the count", 20, || async {
        (count_of(down.clone()).await == vec![2]).then_some(())
    })
    .await;
}
