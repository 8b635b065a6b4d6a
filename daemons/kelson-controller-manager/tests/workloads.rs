//! Jobs, CronJobs, DaemonSets, StatefulSets, PodDisruptionBudgets and ResourceQuotas against a
//! real control plane and the controller manager binary. Nodes are simulated by the harness in
//! `common` (it binds pods — daemon pods to the node their affinity names — and reports
//! them Running/Ready; pods labelled `fake-exit` finish with that exit code, standing in for a
//! kubelet running `sh -c 'exit N'`).

mod common;

use std::time::{Duration, Instant};

use common::Env;
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod, ResourceQuota};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

fn apply(env: &Env, name: &str, manifest: serde_json::Value) {
    let path = env.cp.dir().join(format!("{name}.json"));
    std::fs::write(&path, manifest.to_string()).unwrap();
    env.kubectl(&["apply", "-f", path.to_str().unwrap()]);
}

async fn pods_with(env: &Env, sel: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    pods.list(&ListParams::default().labels(sel))
        .await
        .unwrap()
        .items
}

fn job(
    name: &str,
    completions: i32,
    parallelism: i32,
    exit: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut j = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"completions": completions, "parallelism": parallelism, "template": {
            "metadata": {"labels": {"fake-exit": exit, "app": name}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "sleep 1"]}]}}}});
    if let (Some(s), Some(e)) = (j["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    j
}

fn annotation(p: &Pod, key: &str) -> Option<String> {
    p.metadata.annotations.as_ref()?.get(key).cloned()
}

fn condition(j: &Job, t: &str) -> Option<(String, String)> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_to_completion_with_parallelism() {
    let env = Env::start(&[], &[("n1", "a"), ("n2", "b")]).await;
    apply(&env, "pi", job("pi", 3, 2, "0", json!({})));
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    // Defaults and the generated selector.
    let j = jobs.get("pi").await.unwrap();
    let spec = j.spec.clone().unwrap();
    assert_eq!(spec.backoff_limit, Some(6));
    let uid = j.metadata.uid.clone().unwrap();
    assert_eq!(
        spec.selector.unwrap().match_labels.unwrap()["batch.kubernetes.io/controller-uid"],
        uid
    );

    let start = Instant::now();
    let mut max_active = 0;
    let done = loop {
        let pods = pods_with(&env, "app=pi").await;
        let running = common::unfinished(&pods);
        max_active = max_active.max(running);
        let j = jobs.get("pi").await.unwrap();
        if condition(&j, "Complete").is_some() {
            break j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "job did not complete: {:?}\n{}",
            j.status,
            env.cm.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        max_active <= 2,
        "parallelism 2 exceeded: {max_active} pods active"
    );
    assert!(max_active >= 1);
    let st = done.status.unwrap();
    assert_eq!(st.succeeded, Some(3));
    assert_eq!(st.failed.unwrap_or(0), 0);
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert_eq!(st.active.unwrap_or(0), 0);
    env.kubectl(&["wait", "--for=condition=complete", "job/pi", "--timeout=5s"]);
    // Exactly 3 pods, all Succeeded, none keeps the tracking finalizer.
    let pods = pods_with(&env, "app=pi").await;
    assert_eq!(pods.len(), 3, "one pod per completion");
    env.wait("tracking finalizers removed", 10, || async {
        let pods = pods_with(&env, "app=pi").await;
        pods.iter()
            .all(|p| {
                !p.metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == "batch.kubernetes.io/job-tracking")
            })
            .then_some(())
    })
    .await;

    // Indexed: each index completes once; pods carry their index.
    apply(
        &env,
        "idx",
        job("idx", 3, 3, "0", json!({"completionMode": "Indexed"})),
    );
    let j = env
        .wait("indexed job completes", 30, || async {
            let j = jobs.get("idx").await.ok()?;
            condition(&j, "Complete").map(|_| j)
        })
        .await;
    assert_eq!(j.status.unwrap().completed_indexes.as_deref(), Some("0-2"));
    let mut idx: Vec<String> = pods_with(&env, "app=idx")
        .await
        .iter()
        .map(|p| {
            let i = p.metadata.annotations.as_ref().unwrap()
                ["batch.kubernetes.io/job-completion-index"]
                .clone();
            let spec = p.spec.as_ref().unwrap();
            assert_eq!(spec.hostname.as_deref(), Some(format!("idx-{i}").as_str()));
            let env = spec.containers[0].env.as_ref().unwrap();
            assert!(env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX"));
            i
        })
        .collect();
    idx.sort();
    assert_eq!(idx, vec!["0", "1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_job_hits_backoff_limit_then_ttl_deletes_it() {
    let env = Env::start(&[], &[("n1", "a")]).await;
    apply(
        &env,
        "bad",
        job(
            "bad",
            2,
            2,
            "1",
            json!({"backoffLimit": 1, "ttlSecondsAfterFinished": 2}),
        ),
    );
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    let j = env
        .wait("job fails", 30, || async {
            let j = jobs.get("bad").await.ok()?;
            condition(&j, "Failed").map(|_| j)
        })
        .await;
    let (reason, msg) = condition(&j, "Failed").unwrap();
    assert_eq!(reason, "BackoffLimitExceeded");
    assert_eq!(msg, "Job has reached the specified backoff limit");
    // Events, as `kubectl describe job` shows them: the pods created, then the failure.
    let evs = env
        .wait("job events", 20, || async {
            let evs = env.events_for("Job", "bad").await;
            let created = evs
                .iter()
                .filter(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
                .count();
            let failed = evs
                .iter()
                .any(|e| e.reason.as_deref() == Some("BackoffLimitExceeded"));
            (created >= 2 && failed).then_some(evs)
        })
        .await;
    for e in &evs {
        assert_eq!(e.involved_object.uid, j.metadata.uid, "{e:?}");
        assert_eq!(
            e.source.as_ref().and_then(|s| s.component.as_deref()),
            Some("job-controller")
        );
        match e.reason.as_deref() {
            Some("SuccessfulCreate") => {
                assert_eq!(e.type_.as_deref(), Some("Normal"));
                assert!(e
                    .message
                    .as_deref()
                    .unwrap()
                    .starts_with("Created pod: bad-"));
            }
            Some("BackoffLimitExceeded") => {
                assert_eq!(e.type_.as_deref(), Some("Warning"));
                assert_eq!(
                    e.message.as_deref(),
                    Some("Job has reached the specified backoff limit")
                );
            }
            _ => {}
        }
    }
    assert!(!evs.iter().any(|e| e.reason.as_deref() == Some("Completed")));
    let st = j.status.unwrap();
    assert!(st.failed.unwrap() >= 2, "{st:?}");
    assert_eq!(st.succeeded.unwrap_or(0), 0);
    assert!(condition(&jobs.get("bad").await.unwrap(), "Complete").is_none());
    // ttlSecondsAfterFinished: 2 → the Job (and its pods) are deleted.
    env.wait("ttl deletes the job", 20, || async {
        jobs.get_opt("bad").await.ok()?.is_none().then_some(())
    })
    .await;
    env.wait("pods garbage collected", 20, || async {
        pods_with(&env, "app=bad").await.is_empty().then_some(())
    })
    .await;
}

/// An Indexed Job whose index `i` exits with `codes[i]`.
fn indexed_job(name: &str, codes: &[&str], extra: serde_json::Value) -> serde_json::Value {
    let n = codes.len() as i32;
    let mut j = job(name, n, n, "1", extra);
    j["spec"]["completionMode"] = json!("Indexed");
    let ann: serde_json::Map<String, serde_json::Value> = codes
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("fake-exit-{i}"), json!(c)))
        .collect();
    j["spec"]["template"]["metadata"]["annotations"] = serde_json::Value::Object(ann);
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_job_backoff_limit_per_index() {
    let env = Env::start(&[], &[("n1", "a"), ("n2", "b")]).await;
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    // FailIndex: index 0 exits 42, which fails the index at once despite 3 retries allowed;
    // index 1 succeeds. Every index is done, one failed: the Job fails with FailedIndexes.
    let fail_index = json!({"backoffLimitPerIndex": 3, "podFailurePolicy": {"rules": [
        {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [42]}}]}});
    apply(&env, "fi", indexed_job("fi", &["42", "0"], fail_index));
    // maxFailedIndexes 0 with no retries: the first failed index fails the Job.
    let max_failed = json!({"backoffLimitPerIndex": 0, "maxFailedIndexes": 0, "parallelism": 1});
    apply(
        &env,
        "mfi",
        indexed_job("mfi", &["1", "1", "1"], max_failed),
    );
    // One retry per index: indexes 0 and 2 fail twice, index 1 succeeds.
    apply(
        &env,
        "pi",
        indexed_job("pi", &["1", "0", "1"], json!({"backoffLimitPerIndex": 1})),
    );

    let j = env
        .wait("fi fails", 30, || async {
            let j = jobs.get("fi").await.ok()?;
            condition(&j, "Failed").map(|_| j)
        })
        .await;
    assert_eq!(
        condition(&j, "Failed").unwrap(),
        (
            "FailedIndexes".to_string(),
            "Job has failed indexes".to_string()
        )
    );
    let st = j.status.clone().unwrap();
    assert_eq!(st.failed_indexes.as_deref(), Some("0"));
    assert_eq!(st.completed_indexes.as_deref(), Some("1"));
    assert_eq!((st.failed, st.succeeded), (Some(1), Some(1)));
    // No retry for the failed index.
    assert_eq!(pods_with(&env, "app=fi").await.len(), 2);
    env.wait("FailedIndexes event", 20, || async {
        env.events_for("Job", "fi").await.into_iter().find(|e| {
            e.reason.as_deref() == Some("FailedIndexes")
                && e.type_.as_deref() == Some("Warning")
                && e.message.as_deref() == Some("Job has failed indexes")
        })
    })
    .await;

    let j = env
        .wait("mfi fails", 30, || async {
            let j = jobs.get("mfi").await.ok()?;
            condition(&j, "Failed").map(|_| j)
        })
        .await;
    assert_eq!(
        condition(&j, "Failed").unwrap().0,
        "MaxFailedIndexesExceeded"
    );
    let st = j.status.clone().unwrap();
    assert_eq!(st.failed_indexes.as_deref(), Some("0"));
    assert_eq!(pods_with(&env, "app=mfi").await.len(), 1);

    // Per-index retries: the replacement carries the index's failure count and comes after
    // the per-index back-off (10 s for the first failure).
    let j = env
        .wait("pi fails after retrying indexes 0 and 2", 60, || async {
            let j = jobs.get("pi").await.ok()?;
            condition(&j, "Failed").map(|_| j)
        })
        .await;
    let st = j.status.clone().unwrap();
    assert_eq!(condition(&j, "Failed").unwrap().0, "FailedIndexes");
    assert_eq!(st.failed_indexes.as_deref(), Some("0,2"));
    assert_eq!(st.completed_indexes.as_deref(), Some("1"));
    let pods = pods_with(&env, "app=pi").await;
    let summary: Vec<String> = pods
        .iter()
        .map(|p| {
            format!(
                "{} idx={:?} count={:?} phase={:?} fin={:?} del={}",
                p.metadata.name.as_deref().unwrap_or_default(),
                annotation(p, "batch.kubernetes.io/job-completion-index"),
                annotation(p, "batch.kubernetes.io/job-index-failure-count"),
                p.status.as_ref().and_then(|s| s.phase.clone()),
                p.metadata.finalizers,
                p.metadata.deletion_timestamp.is_some()
            )
        })
        .collect();
    assert_eq!(
        (st.failed, st.succeeded),
        (Some(4), Some(1)),
        "{summary:#?}\n{st:?}\n--- controller manager log ---\n{}",
        env.cm.log_tail(80)
    );
    assert_eq!(pods.len(), 5, "two attempts for 0 and 2, one for 1");
    for i in ["0", "2"] {
        let mut counts: Vec<String> = pods
            .iter()
            .filter(|p| {
                annotation(p, "batch.kubernetes.io/job-completion-index").as_deref() == Some(i)
            })
            .filter_map(|p| annotation(p, "batch.kubernetes.io/job-index-failure-count"))
            .collect();
        counts.sort();
        assert_eq!(counts, vec!["0", "1"], "index {i}");
    }
    // Every finished pod was counted: no tracking finalizer left.
    env.wait("finalizers removed", 20, || async {
        pods_with(&env, "app=pi")
            .await
            .iter()
            .all(|p| p.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty()))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_deadline_suspend_and_pod_failure_policy() {
    let env = Env::start(&[], &[("n1", "a")]).await;
    // Pods that never finish (no fake-exit label): the deadline fails the Job.
    let mut j = job("slow", 1, 1, "0", json!({"activeDeadlineSeconds": 2}));
    j["spec"]["template"]["metadata"]["labels"] = json!({"app": "slow"});
    apply(&env, "slow", j);
    let mut s = job("sus", 2, 2, "0", json!({"suspend": true}));
    s["spec"]["template"]["metadata"]["labels"] = json!({"app": "sus"});
    apply(&env, "sus", s);
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    let j = env
        .wait("deadline exceeded", 20, || async {
            let j = jobs.get("slow").await.ok()?;
            condition(&j, "Failed").map(|_| j)
        })
        .await;
    assert_eq!(condition(&j, "Failed").unwrap().0, "DeadlineExceeded");
    env.wait("deadline job's pods deleted", 10, || async {
        pods_with(&env, "app=slow")
            .await
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    // Suspended: no pods, Suspended condition.
    let j = jobs.get("sus").await.unwrap();
    assert_eq!(
        condition(&j, "Suspended").map(|c| c.0).as_deref(),
        Some("JobSuspended")
    );
    assert!(pods_with(&env, "app=sus").await.is_empty());
    env.kubectl(&[
        "patch",
        "job",
        "sus",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    env.wait("resumed job runs 2 pods", 15, || async {
        (pods_with(&env, "app=sus").await.len() == 2).then_some(())
    })
    .await;

    // podFailurePolicy: exit code 42 fails the Job at once despite backoffLimit 6; exit code 3
    // is ignored (not counted, replaced without back-off).
    let policy = |action: &str, code: i32| {
        json!({"backoffLimit": 6, "podFailurePolicy": {"rules": [
            {"action": action, "onExitCodes": {"operator": "In", "values": [code]}}]}})
    };
    apply(&env, "pfp", job("pfp", 1, 1, "42", policy("FailJob", 42)));
    let mut ign = job("ign", 1, 1, "3", policy("Ignore", 3));
    ign["spec"]["backoffLimit"] = json!(0);
    apply(&env, "ign", ign);
    let j = env
        .wait("FailJob rule fails the job", 20, || async {
            let j = jobs.get("pfp").await.ok()?;
            condition(&j, "Failed").map(|_| j)
        })
        .await;
    let (reason, msg) = condition(&j, "Failed").unwrap();
    assert_eq!(reason, "PodFailurePolicy");
    assert!(
        msg.contains("failed with exit code 42 matching FailJob rule at index 0"),
        "{msg}"
    );
    assert_eq!(j.status.unwrap().failed, Some(1));
    env.wait("ignored failures are replaced", 20, || async {
        (pods_with(&env, "app=ign").await.len() >= 3).then_some(())
    })
    .await;
    let j = jobs.get("ign").await.unwrap();
    assert!(condition(&j, "Failed").is_none(), "{:?}", j.status);
    assert_eq!(j.status.unwrap().failed.unwrap_or(0), 0);
    env.kubectl(&["delete", "job", "ign", "--wait=false"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_fires_missed_schedule() {
    let env = Env::start(&[], &[("n1", "a")]).await;
    // Created suspended, then told it last ran 3 minutes ago: the most recent minute is an
    // unmet schedule within startingDeadlineSeconds, so resuming fires it at once, exactly as
    // upstream after a controller outage.
    apply(
        &env,
        "cj",
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
            "spec": {"schedule": "*/1 * * * *", "suspend": true, "startingDeadlineSeconds": 300,
                "concurrencyPolicy": "Forbid",
                "jobTemplate": {"spec": {"template": {"metadata": {"labels": {"fake-exit": "0", "app": "tick"}},
                    "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}}}),
    );
    let cjs: Api<CronJob> = Api::namespaced(env.client.clone(), "default");
    let cj = cjs.get("tick").await.unwrap();
    assert_eq!(
        cj.spec.as_ref().unwrap().successful_jobs_history_limit,
        Some(3)
    );
    let past = Timestamp::from_second(Timestamp::now().as_second() - 180).unwrap();
    cjs.patch_status(
        "tick",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"lastScheduleTime": past.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "a suspended CronJob must not fire"
    );
    env.kubectl(&[
        "patch",
        "cronjob",
        "tick",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    let j = env
        .wait("cronjob creates a job", 15, || async {
            jobs.list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        })
        .await;
    let name = j.metadata.name.clone().unwrap();
    let minutes: i64 = name.strip_prefix("tick-").unwrap().parse().unwrap();
    let now_min = Timestamp::now().as_second() / 60;
    assert!(
        (now_min - 1..=now_min).contains(&minutes),
        "job {name} is named after the most recent minute ({now_min})"
    );
    let owner = &j.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CronJob", Some(true))
    );
    assert!(j
        .metadata
        .annotations
        .as_ref()
        .unwrap()
        .contains_key("batch.kubernetes.io/cronjob-scheduled-timestamp"));
    // The job runs to completion and the CronJob records it.
    let cj = env
        .wait("lastSuccessfulTime set", 30, || async {
            let cj = cjs.get("tick").await.ok()?;
            cj.status.as_ref()?.last_successful_time.as_ref()?;
            Some(cj)
        })
        .await;
    let st = cj.status.unwrap();
    assert_eq!(st.last_schedule_time.unwrap().0.as_second() / 60, minutes);
    assert!(st.active.unwrap_or_default().is_empty());
    // Only one job for that schedule time. The schedule fires every minute, so a later
    // minute may rightly have started another job by now; none may be for an earlier one.
    let names: Vec<String> = jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    let mut same = 0;
    for n in &names {
        let m: i64 = n.strip_prefix("tick-").unwrap().parse().unwrap();
        assert!(
            m >= minutes,
            "job {n} is older than the missed schedule: {names:?}"
        );
        same += usize::from(m == minutes);
    }
    assert_eq!(same, 1, "one job per schedule time: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_lands_one_pod_per_eligible_node() {
    let env = Env::start(&[], &[("n1", "a"), ("n2", "b"), ("n3", "c")]).await;
    let nodes: Api<Node> = Api::all(env.client.clone());
    nodes
        .patch(
            "n3",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}})),
        )
        .await
        .unwrap();
    // n1 is cordoned: daemon pods tolerate unschedulable, as upstream.
    env.kubectl(&["cordon", "n1"]);
    apply(
        &env,
        "ds",
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/agent:1"}]}}}}),
    );
    let dss: Api<DaemonSet> = Api::namespaced(env.client.clone(), "default");
    env.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=30s"]);
    let st = dss.get("agent").await.unwrap().status.unwrap();
    assert_eq!(st.desired_number_scheduled, 2);
    assert_eq!(st.current_number_scheduled, 2);
    assert_eq!(st.number_ready, 2);
    assert_eq!(st.number_misscheduled, 0);
    let pods = pods_with(&env, "app=agent").await;
    let mut on: Vec<String> = pods
        .iter()
        .map(|p| p.spec.as_ref().unwrap().node_name.clone().unwrap())
        .collect();
    on.sort();
    assert_eq!(
        on,
        vec!["n1", "n2"],
        "one pod per eligible node, none on tainted n3"
    );
    for p in &pods {
        let spec = p.spec.as_ref().unwrap();
        let tols = spec.tolerations.as_ref().unwrap();
        assert!(tols
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")));
        assert!(p
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key("controller-revision-hash"));
    }
    // Rolling update to a new image: every pod replaced, one node at a time.
    env.kubectl(&[
        "set",
        "image",
        "daemonset/agent",
        "c=registry.invalid/agent:2",
    ]);
    env.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=30s"]);
    let pods: Vec<Pod> = pods_with(&env, "app=agent")
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(pods.len(), 2);
    assert!(pods
        .iter()
        .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref()
            == Some("registry.invalid/agent:2")));
    let revs = env.kubectl(&["get", "controllerrevisions", "-o", "name"]);
    assert_eq!(revs.lines().count(), 2, "{revs}");
    let hist = env.kubectl(&["rollout", "history", "daemonset/agent"]);
    assert!(hist.contains('1') && hist.contains('2'), "{hist}");
    // Tolerating the taint adds n3.
    env.kubectl(&["patch", "daemonset", "agent", "--type=merge", "-p",
        r#"{"spec":{"template":{"spec":{"tolerations":[{"key":"dedicated","operator":"Exists","effect":"NoSchedule"}]}}}}"#]);
    env.wait("pod on n3", 30, || async {
        let st = dss.get("agent").await.ok()?.status?;
        (st.desired_number_scheduled == 3
            && st.number_ready == 3
            && st.updated_number_scheduled == Some(3))
        .then_some(())
    })
    .await;

    // Surge update (maxSurge 1, maxUnavailable 0): every node keeps a ready pod throughout.
    env.kubectl(&["patch", "daemonset", "agent", "--type=merge", "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":0}},"template":{"spec":{"containers":[{"name":"c","image":"registry.invalid/agent:3"}]}}}}"#]);
    let start = Instant::now();
    let mut saw_surge = false;
    loop {
        let pods: Vec<Pod> = pods_with(&env, "app=agent").await;
        let mut per_node: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
        for p in &pods {
            let Some(n) = p.spec.as_ref().unwrap().node_name.clone() else {
                continue;
            };
            let e = per_node.entry(n).or_default();
            e.0 += 1;
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready && p.metadata.deletion_timestamp.is_none() {
                e.1 += 1;
            }
        }
        saw_surge |= per_node.values().any(|(all, _)| *all > 1);
        assert_eq!(
            per_node.len(),
            3,
            "a node lost its daemon pod: {per_node:?}"
        );
        assert!(
            per_node.values().all(|(_, ready)| *ready >= 1),
            "a node had no ready pod: {per_node:?}"
        );
        let st = dss.get("agent").await.unwrap().status.unwrap();
        let all_new = pods.iter().all(|p| {
            p.metadata.deletion_timestamp.is_some()
                || p.spec.as_ref().unwrap().containers[0].image.as_deref()
                    == Some("registry.invalid/agent:3")
        });
        if all_new
            && st.updated_number_scheduled == Some(3)
            && st.number_available == Some(3)
            && pods.len() == 3
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "surge update stuck: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_surge, "maxSurge 1 runs old and new pod side by side");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_scales_in_order() {
    let env = Env::start(&[], &[("n1", "a"), ("n2", "b")]).await;
    // Pods start not ready (fake-ready=false) so the test controls when each becomes ready.
    apply(
        &env,
        "sts",
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web"},
            "spec": {"replicas": 3, "serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web", "fake-ready": "false"}},
                    "spec": {"containers": [{"name": "c", "image": "registry.invalid/web:1"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
    );
    let names = || async {
        let mut v: Vec<String> = pods_with(&env, "app=web")
            .await
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.metadata.name.unwrap())
            .collect();
        v.sort();
        v
    };
    for i in 0..3 {
        let want: Vec<String> = (0..=i).map(|o| format!("web-{o}")).collect();
        env.wait(&format!("web-{i} created"), 15, || async {
            (names().await == want).then_some(())
        })
        .await;
        // The next ordinal waits for this one to be Running and Ready.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            names().await,
            want,
            "web-{} created before web-{i} was ready",
            i + 1
        );
        env.kubectl(&[
            "label",
            "pod",
            &format!("web-{i}"),
            "fake-ready=true",
            "--overwrite",
        ]);
    }
    let pod = pods_with(&env, "statefulset.kubernetes.io/pod-name=web-1").await;
    let spec = pod[0].spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));
    let sets: Api<StatefulSet> = Api::namespaced(env.client.clone(), "default");
    env.wait("status ready 3", 15, || async {
        let st = sets.get("web").await.ok()?.status?;
        (st.ready_replicas == Some(3)
            && st.current_revision == st.update_revision
            && st.updated_replicas == Some(3))
        .then_some(())
    })
    .await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), "default");
    let mut claims: Vec<String> = pvcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    claims.sort();
    assert_eq!(claims, vec!["data-web-0", "data-web-1", "data-web-2"]);

    // Scale down: highest ordinal first; a lower one never goes while a higher one exists.
    env.kubectl(&["scale", "statefulset", "web", "--replicas=1"]);
    let start = Instant::now();
    loop {
        let n = names().await;
        assert!(
            !n.contains(&"web-2".to_string()) || n.contains(&"web-1".to_string()),
            "web-1 deleted before web-2: {n:?}"
        );
        if n == vec!["web-0".to_string()] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "scale down stuck at {n:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // PVCs are retained.
    assert_eq!(
        pvcs.list(&ListParams::default()).await.unwrap().items.len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdb_status_and_quota_usage() {
    let env = Env::start(&[], &[("n1", "a"), ("n2", "b")]).await;
    apply(
        &env,
        "quota",
        json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
            "spec": {"hard": {"pods": "10", "configmaps": "20", "requests.cpu": "2", "requests.memory": "1Gi", "limits.memory": "2Gi", "count/deployments.apps": "5"}}}),
    );
    apply(
        &env,
        "dep",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "registry.invalid/web:1",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}}]}}}}),
    );
    env.kubectl(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    apply(
        &env,
        "pdb1",
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "min2"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}}),
    );
    apply(
        &env,
        "pdb2",
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "max50"},
            "spec": {"maxUnavailable": "50%", "selector": {"matchLabels": {"app": "web"}}}}),
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(env.client.clone(), "default");
    let st = env
        .wait("pdb min2 status", 15, || async {
            let st = pdbs.get("min2").await.ok()?.status?;
            (st.current_healthy == 3 && st.observed_generation.is_some()).then_some(st)
        })
        .await;
    assert_eq!(
        (st.desired_healthy, st.expected_pods, st.disruptions_allowed),
        (2, 3, 1)
    );
    let c = &st.conditions.unwrap()[0];
    assert_eq!(
        (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
        ("DisruptionAllowed", "True", "SufficientPods")
    );
    // maxUnavailable 50% of the Deployment's 3 → 2 (rounded up): desired 1, allowed 2.
    let st = env
        .wait("pdb max50 status", 15, || async {
            let st = pdbs.get("max50").await.ok()?.status?;
            (st.current_healthy == 3).then_some(st)
        })
        .await;
    assert_eq!(
        (st.desired_healthy, st.expected_pods, st.disruptions_allowed),
        (1, 3, 2)
    );
    // Scaling the Deployment down to 1: min2 allows nothing.
    env.kubectl(&["scale", "deployment", "web", "--replicas=1"]);
    env.wait("pdb min2 blocks", 20, || async {
        let st = pdbs.get("min2").await.ok()?.status?;
        (st.current_healthy == 1 && st.disruptions_allowed == 0).then_some(())
    })
    .await;

    // Quota usage follows: 1 pod now.
    let quotas: Api<ResourceQuota> = Api::namespaced(env.client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    env.kubectl(&["create", "configmap", "extra", "--from-literal=a=b"]);
    let used = env
        .wait("quota used", 20, || async {
            let cm_count = cms
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .len()
                .to_string();
            let st = quotas.get("q").await.ok()?.status?;
            let used = st.used?;
            let ok = used.get("pods")?.0 == "1" && used.get("configmaps")?.0 == cm_count;
            ok.then_some((used, st.hard?))
        })
        .await;
    let (used, hard) = used;
    assert_eq!(used["requests.cpu"].0, "100m");
    assert_eq!(used["requests.memory"].0, "64Mi");
    assert_eq!(used["limits.memory"].0, "128Mi");
    assert_eq!(used["count/deployments.apps"].0, "1");
    assert_eq!(hard["pods"].0, "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_rolling_update_with_partition() {
    let env = Env::start(&[], &[("n1", "a"), ("n2", "b")]).await;
    apply(
        &env,
        "sts",
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"replicas": 3, "serviceName": "db", "podManagementPolicy": "Parallel",
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "c", "image": "registry.invalid/db:1"}]}}}}),
    );
    let sets: Api<StatefulSet> = Api::namespaced(env.client.clone(), "default");
    let ready = |n: i32| {
        let sets = sets.clone();
        move || {
            let sets = sets.clone();
            async move {
                let st = sets.get("db").await.ok()?.status?;
                (st.ready_replicas == Some(n) && st.replicas == n).then_some(st)
            }
        }
    };
    let st = env.wait("3 ready", 20, ready(3)).await;
    let rev1 = st.update_revision.clone().unwrap();
    let image = |o: i32| {
        let env = &env;
        async move {
            let p = pods_with(env, &format!("statefulset.kubernetes.io/pod-name=db-{o}")).await;
            p.first()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .and_then(|p| p.spec.as_ref()?.containers[0].image.clone())
        }
    };
    env.kubectl(&["set", "image", "statefulset/db", "c=registry.invalid/db:2"]);
    env.wait("db-2 updated", 20, || async {
        (image(2).await.as_deref() == Some("registry.invalid/db:2")).then_some(())
    })
    .await;
    let st = env.wait("3 ready after partial update", 20, ready(3)).await;
    // Below the partition nothing changes; the set is mid-update.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(image(0).await.as_deref(), Some("registry.invalid/db:1"));
    assert_eq!(image(1).await.as_deref(), Some("registry.invalid/db:1"));
    assert_eq!(st.current_revision.as_deref(), Some(rev1.as_str()));
    assert_ne!(st.update_revision.as_deref(), Some(rev1.as_str()));
    assert_eq!(st.updated_replicas, Some(1));
    // Partition 0: the rest follows, highest ordinal first.
    env.kubectl(&[
        "patch",
        "statefulset",
        "db",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
    ]);
    let start = Instant::now();
    loop {
        let (i0, i1) = (image(0).await, image(1).await);
        assert!(
            !(i0.as_deref() == Some("registry.invalid/db:2")
                && i1.as_deref() == Some("registry.invalid/db:1")),
            "db-0 updated before db-1"
        );
        let st = sets.get("db").await.unwrap().status.unwrap();
        if st.updated_replicas == Some(3)
            && st.current_revision == st.update_revision
            && st.ready_replicas == Some(3)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "update stuck: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let revs = env.kubectl(&["get", "controllerrevisions", "-o", "name"]);
    assert_eq!(revs.lines().count(), 2, "{revs}");
    env.kubectl(&["rollout", "status", "statefulset/db", "--timeout=20s"]);
    // Undo goes back to the first template (its revision becomes the newest).
    env.kubectl(&["rollout", "undo", "statefulset/db"]);
    env.wait("undo rolls back", 30, || async {
        let st = sets.get("db").await.ok()?.status?;
        let done = st.update_revision.as_deref() == Some(rev1.as_str())
            && st.current_revision == st.update_revision
            && st.updated_replicas == Some(3)
            && st.ready_replicas == Some(3);
        done.then_some(())
    })
    .await;
    assert_eq!(image(0).await.as_deref(), Some("registry.invalid/db:1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_cleaner_and_api_validation() {
    let env = Env::start(&["--controllers=*,tokencleaner"], &[("n1", "a")]).await;
    let token = |name: &str, exp: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": name, "namespace": "kube-system"},
            "stringData": {"token-id": name.trim_start_matches("bootstrap-token-"), "token-secret": "0123456789abcdef", "expiration": exp}})
    };
    apply(
        &env,
        "old",
        token("bootstrap-token-aaaaaa", "2020-01-01T00:00:00Z"),
    );
    apply(
        &env,
        "new",
        token("bootstrap-token-bbbbbb", "2099-01-01T00:00:00Z"),
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(env.client.clone(), "kube-system");
    env.wait("expired token deleted", 15, || async {
        secrets
            .get_opt("bootstrap-token-aaaaaa")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(secrets
        .get_opt("bootstrap-token-bbbbbb")
        .await
        .unwrap()
        .is_some());

    // Bad workload specs are refused with the API's own 422 causes.
    let mut bad = job("bad", 1, 1, "0", json!({"backoffLimit": -1}));
    bad["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
    let path = env.cp.dir().join("badjob.json");
    std::fs::write(&path, bad.to_string()).unwrap();
    let err = env
        .cp
        .kubectl_ok(&["create", "-f", path.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("is invalid"), "{err}");
    assert!(err.contains("spec.template.spec.restartPolicy"), "{err}");
    assert!(err.contains("spec.backoffLimit"), "{err}");
    let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
        "spec": {"schedule": "every tuesday", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "b"}]}}}}}});
    std::fs::write(&path, cj.to_string()).unwrap();
    let err = env
        .cp
        .kubectl_ok(&["create", "-f", path.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.schedule"), "{err}");
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "p"},
        "spec": {"minAvailable": 1, "maxUnavailable": 1, "selector": {"matchLabels": {"a": "b"}}}});
    std::fs::write(&path, pdb.to_string()).unwrap();
    let err = env
        .cp
        .kubectl_ok(&["create", "-f", path.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("minAvailable and maxUnavailable cannot be both set"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_replace_and_history_limits() {
    let env = Env::start(&[], &[("n1", "a")]).await;
    apply(
        &env,
        "cj",
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "rep"},
            "spec": {"schedule": "*/1 * * * *", "suspend": true, "concurrencyPolicy": "Replace",
                "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 0,
                "jobTemplate": {"spec": {"template": {"metadata": {"labels": {"app": "rep"}},
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}}}),
    );
    let cjs: Api<CronJob> = Api::namespaced(env.client.clone(), "default");
    let cj = cjs.get("rep").await.unwrap();
    let owner = json!([{"apiVersion": "batch/v1", "kind": "CronJob", "name": "rep",
        "uid": cj.metadata.uid, "controller": true, "blockOwnerDeletion": true}]);
    // Two finished-successfully jobs and one failed job from "earlier runs", plus one that
    // is still running (its pods never finish).
    for (name, exit) in [
        ("rep-1", Some("0")),
        ("rep-2", Some("0")),
        ("rep-3", Some("1")),
        ("rep-4", None),
    ] {
        let mut j = job(name, 1, 1, exit.unwrap_or("0"), json!({"backoffLimit": 0}));
        j["metadata"]["ownerReferences"] = owner.clone();
        j["spec"]["template"]["metadata"]["labels"] = match exit {
            Some(e) => json!({"fake-exit": e, "app": name}),
            None => json!({"app": name}),
        };
        apply(&env, name, j);
        // Distinct start times order the history.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    let names = || async {
        let mut v: Vec<String> = jobs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .map(|j| j.metadata.name.unwrap())
            .collect();
        v.sort();
        v
    };
    // History: only the newest successful job is kept, no failed one; the running one stays.
    env.wait("history trimmed", 30, || async {
        (names().await == vec!["rep-2", "rep-4"]).then_some(())
    })
    .await;
    let st = cjs.get("rep").await.unwrap().status.unwrap();
    let active: Vec<String> = st
        .active
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r.name)
        .collect();
    assert_eq!(active, vec!["rep-4"]);
    assert!(st.last_successful_time.is_some());

    // A missed schedule with Replace: the running job is replaced by the new one.
    let past = Timestamp::from_second(Timestamp::now().as_second() - 120).unwrap();
    cjs.patch_status(
        "rep",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"lastScheduleTime": past.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}})),
    )
    .await
    .unwrap();
    env.kubectl(&[
        "patch",
        "cronjob",
        "rep",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    let scheduled = env
        .wait("replacement job", 20, || async {
            let n = names().await;
            let new: Vec<String> = n.iter().filter(|x| x.len() > 6).cloned().collect();
            (!n.contains(&"rep-4".to_string()) && new.len() == 1).then(|| new[0].clone())
        })
        .await;
    let st = env
        .wait("active is the new job", 10, || async {
            let st = cjs.get("rep").await.ok()?.status?;
            let a: Vec<String> = st
                .active
                .clone()?
                .into_iter()
                .filter_map(|r| r.name)
                .collect();
            (a == vec![scheduled.clone()]).then_some(st)
        })
        .await;
    assert!(st.last_schedule_time.unwrap().0 > past);
}
