//! The job controller and the ttl-after-finished controller.
//!
//! Job (upstream's `syncJob`): keep `min(parallelism, remaining completions)` pods active
//! until the Job completes or fails, counting finished pods exactly once through the
//! `batch.kubernetes.io/job-tracking` finalizer, as upstream does since 1.26:
//!
//! 1. every pod is created with the finalizer;
//! 2. a pod that finished (or is being deleted before finishing) has its uid recorded in
//!    `status.uncountedTerminatedPods` first (so a crash cannot lose it),
//! 3. then its finalizer is removed, and
//! 4. then it moves from the uncounted list into `succeeded`/`failed` (Indexed jobs: its index
//!    into `completedIndexes`).
//!
//! A pod is therefore counted even if it is deleted right after finishing, and never twice.
//! Failures beyond `backoffLimit` fail the Job (`BackoffLimitExceeded`), as does running past
//! `activeDeadlineSeconds` (`DeadlineExceeded`); a failed or completed Job's remaining pods
//! are deleted. Replacement pods after failures wait upstream's exponential back-off (10 s
//! doubling, at most 6 min). `suspend` deletes the active pods and sets the `Suspended`
//! condition; resuming resets `startTime`. Indexed Jobs give each pod an index (annotation and
//! label `batch.kubernetes.io/job-completion-index`, env `JOB_COMPLETION_INDEX`, hostname
//! `<job>-<index>`).
//!
//! A `podFailurePolicy` is applied to each failed pod (first matching rule): FailJob fails the
//! Job at once (reason `PodFailurePolicy`), Ignore neither counts the failure nor backs off,
//! Count is the default behaviour.
//!
//! Indexed Jobs with `backoffLimitPerIndex` (upstream 1.29+): failures are counted per index,
//! in the pod annotation `batch.kubernetes.io/job-index-failure-count` (and
//! `...-ignored-failure-count` for failures a podFailurePolicy Ignore rule matched), which each
//! replacement pod carries as the previous pod's count plus its failure. A failed pod whose
//! count already reached the limit — or that a `FailIndex` rule matched — fails its index:
//! the index goes into `status.failedIndexes`, is never recreated, and its running pods are
//! deleted. More than `maxFailedIndexes` failed indexes fail the Job
//! (`MaxFailedIndexesExceeded`); otherwise, once every index has succeeded or failed, the Job
//! fails with `FailedIndexes` if any failed. The last failed pod of an index waiting for its
//! replacement keeps its tracking finalizer (and stays uncounted) until the replacement
//! exists, so the count it carries cannot be lost to a deletion, as upstream's
//! "pods with delayed deletion". Replacements wait the per-index back-off (10 s doubling with
//! the index's failures, at most 6 min) instead of the Job-wide one.
//!
//! Events as upstream's job controller: SuccessfulCreate/FailedCreate/SuccessfulDelete for
//! pods, Completed, Suspended/Resumed, and a Warning with the failure reason
//! (BackoffLimitExceeded, DeadlineExceeded, PodFailurePolicy, FailedIndexes, ...).
//!
//! ttl-after-finished: a finished Job with `ttlSecondsAfterFinished` is deleted (foreground, so
//! its pods go first) that many seconds after it finished.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PropagationPolicy};
use parking_lot::Mutex;
use serde_json::json;

use super::podcontrol::{self, Expectations};
use super::{delete_object, is_status, Controller, Ctx, Result};
use crate::events::EventType;
use crate::informer::{key_of, split_key};
use crate::queue::WorkQueue;
use crate::util;

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Counted failures of the pod's index before this pod (backoffLimitPerIndex).
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// Failures of the pod's index a podFailurePolicy Ignore rule matched, before this pod.
pub const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";
/// The reporting controller name of upstream's job controller.
const COMPONENT: &str = "job-controller";
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// Per-Job failure back-off: failures seen and when the last one was seen.
#[derive(Default, Clone)]
struct Backoff(Arc<Mutex<HashMap<String, (u32, Instant)>>>);

/// The resourceVersion of each Job's last status write. Until the cache has caught up with it
/// the cached counts are older than ours and acting on them could create pods for completions
/// already counted, so the sync waits for the cache instead.
#[derive(Default, Clone)]
struct Written(Arc<Mutex<HashMap<String, u64>>>);

/// Pod uids counted whose finalizer removal the cache may not show yet (upstream's
/// finalizer expectations): without it a lagging cache would count a pod twice.
#[derive(Default, Clone)]
struct Counted(Arc<Mutex<HashMap<String, HashSet<String>>>>);

pub fn controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.jobs.on_change(move |j, _| q.add(key_of(j)));
    let q = queue.clone();
    ctx.inf.pods.on_change(move |pod, _| {
        if let Some(r) = util::controller_of(&pod.metadata) {
            if r.kind == "Job" {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                q.add(format!("{ns}/{}", r.name));
            }
        }
    });
    let c = ctx.clone();
    let exp = Expectations::default();
    let bo = Backoff::default();
    let counted = Counted::default();
    let written = Written::default();
    let jobs = ctx.inf.jobs.clone();
    Controller::new(COMPONENT, queue, 2, move |key| {
        let (c, exp, bo) = (c.clone(), exp.clone(), bo.clone());
        let (counted, written) = (counted.clone(), written.clone());
        async move { reconcile(&c, &exp, &bo, &counted, &written, &key).await }
    })
    .resync(Duration::from_secs(30), move || {
        jobs.list().iter().map(|j| key_of(&**j)).collect()
    })
}

/// The finished condition (`Complete` or `Failed` with status True), if any.
pub fn finished(job: &Job) -> Option<&JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn cond(type_: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets (or flips) a condition, keeping the transition time when the status is unchanged.
fn set_cond(st: &mut JobStatus, c: JobCondition) {
    let conds = st.conditions.get_or_insert_with(Vec::new);
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) if x.status == c.status => {
            x.reason = c.reason;
            x.message = c.message;
        }
        Some(x) => *x = c,
        None => conds.push(c),
    }
}

fn has_finalizer(p: &Pod) -> bool {
    p.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING_FINALIZER)
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Finished from the Job's point of view: Succeeded/Failed, or deleted before finishing
/// (upstream counts such a pod as failed).
fn pod_outcome(p: &Pod) -> Option<bool> {
    match phase(p) {
        "Succeeded" => Some(true),
        "Failed" => Some(false),
        _ if util::is_deleting(&p.metadata) => Some(false),
        _ => None,
    }
}

fn pod_index(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX)?
        .parse()
        .ok()
}

fn annotation_i32(p: &Pod, key: &str) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .max(0)
}

/// All failures of the pod's index before it, counted or ignored (upstream's
/// `getIndexAbsoluteFailureCount`, what the per-index back-off grows with).
fn absolute_failure_count(p: &Pod) -> i32 {
    annotation_i32(p, INDEX_FAILURE_COUNT)
        .saturating_add(annotation_i32(p, INDEX_IGNORED_FAILURE_COUNT))
}

/// When a pod finished: its last container's `finishedAt`, else its Ready condition's
/// transition, else its creation.
fn finished_at(p: &Pod) -> Timestamp {
    let st = p.status.as_ref();
    st.into_iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| {
            st?.conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready")?
                .last_transition_time
                .as_ref()
                .map(|t| t.0)
        })
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Upstream's `isIndexFailed`: a failed pod fails its index when a FailIndex rule matches it,
/// or when it is a counted failure (no Ignore rule) and its index had already failed
/// `backoffLimitPerIndex` times before it.
fn index_failed(spec: &k8s_openapi::api::batch::v1::JobSpec, p: &Pod) -> bool {
    if pod_outcome(p) != Some(false) {
        return false;
    }
    match policy_action(spec, p) {
        Some((Action::FailIndex, _)) => true,
        Some((Action::Ignore, _)) => false,
        _ => annotation_i32(p, INDEX_FAILURE_COUNT) >= spec.backoff_limit_per_index.unwrap_or(0),
    }
}

/// The per-index view of an Indexed Job with backoffLimitPerIndex.
#[derive(Debug, Default)]
struct PerIndex {
    /// status.failedIndexes plus the indexes failed pods not yet counted have failed.
    failed: BTreeSet<i32>,
    /// Per index, its latest failed pod (most failures, then latest finish): what a
    /// replacement's counts and back-off derive from.
    last_failed: HashMap<i32, Arc<Pod>>,
    /// Uids of failed pods waiting for their index's replacement before they are counted.
    delayed: HashSet<String>,
}

impl PerIndex {
    fn compute(
        spec: &k8s_openapi::api::batch::v1::JobSpec,
        st: &JobStatus,
        pods: &[Arc<Pod>],
    ) -> Self {
        let completions = spec.completions.unwrap_or(0);
        let mut failed = parse_indexes(st.failed_indexes.as_deref().unwrap_or_default());
        let mut succeeded = parse_indexes(st.completed_indexes.as_deref().unwrap_or_default());
        let mut active = BTreeSet::new();
        let mut last_failed: HashMap<i32, Arc<Pod>> = HashMap::new();
        for p in pods {
            let Some(i) = pod_index(p).filter(|i| (0..completions).contains(i)) else {
                continue;
            };
            match pod_outcome(p) {
                None => {
                    active.insert(i);
                }
                Some(true) => {
                    succeeded.insert(i);
                }
                Some(false) => {
                    // Pods without the finalizer were counted already; their index's failure
                    // is in status.failedIndexes.
                    if has_finalizer(p) && index_failed(spec, p) {
                        failed.insert(i);
                    }
                    let later = last_failed.get(&i).is_none_or(|q| {
                        (absolute_failure_count(q), finished_at(q))
                            <= (absolute_failure_count(p), finished_at(p))
                    });
                    if later {
                        last_failed.insert(i, p.clone());
                    }
                }
            }
        }
        let delayed = last_failed
            .iter()
            .filter(|(i, p)| {
                has_finalizer(p)
                    && !failed.contains(i)
                    && !succeeded.contains(i)
                    && !active.contains(i)
            })
            .filter_map(|(_, p)| p.metadata.uid.clone())
            .collect();
        PerIndex {
            failed,
            last_failed,
            delayed,
        }
    }

    /// The annotations a replacement for index `i` carries, and how long it must still wait
    /// (upstream's `getNewIndexFailureCounts` and `getRemainingTimePerIndex`).
    fn replacement(
        &self,
        spec: &k8s_openapi::api::batch::v1::JobSpec,
        i: i32,
        now: Timestamp,
    ) -> ((i32, i32), Duration) {
        let Some(prev) = self.last_failed.get(&i) else {
            return ((0, 0), Duration::ZERO);
        };
        let (mut counted, mut ignored) = (
            annotation_i32(prev, INDEX_FAILURE_COUNT),
            annotation_i32(prev, INDEX_IGNORED_FAILURE_COUNT),
        );
        if matches!(policy_action(spec, prev), Some((Action::Ignore, _))) {
            ignored += 1;
        } else {
            counted += 1;
        }
        let failures = absolute_failure_count(prev) as u32 + 1;
        let backoff = BACKOFF_BASE
            .saturating_mul(1 << failures.saturating_sub(1).min(6))
            .min(BACKOFF_MAX);
        let since = Duration::from_millis(
            (now.as_millisecond() - finished_at(prev).as_millisecond()).max(0) as u64,
        );
        ((counted, ignored), backoff.saturating_sub(since))
    }
}

/// What a pod failure policy rule says about a failed pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    FailJob,
    Ignore,
    Count,
    FailIndex,
}

/// Upstream's `matchPodFailurePolicy`: the first rule whose `onExitCodes` (some terminated
/// container, optionally by name, whose exit code is In the values — or NotIn them and not
/// 0) or `onPodConditions` (a pod condition of that type and status) matches decides. Returns
/// the action and, for FailJob, upstream's condition message.
pub fn policy_action(
    spec: &k8s_openapi::api::batch::v1::JobSpec,
    p: &Pod,
) -> Option<(Action, String)> {
    let rules = &spec.pod_failure_policy.as_ref()?.rules;
    let pod_name = format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    );
    let status = p.status.as_ref();
    let terminated: Vec<(String, i32)> = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .filter_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            Some((c.name.clone(), t.exit_code))
        })
        .collect();
    for (i, r) in rules.iter().enumerate() {
        let action = match r.action.as_str() {
            "FailJob" => Action::FailJob,
            "Ignore" => Action::Ignore,
            "Count" => Action::Count,
            "FailIndex" => Action::FailIndex,
            _ => continue,
        };
        if let Some(oe) = &r.on_exit_codes {
            let hit = terminated.iter().find(|(name, code)| {
                let name_ok = oe.container_name.as_deref().is_none_or(|n| n == name);
                let in_vals = oe.values.contains(code);
                name_ok
                    && match oe.operator.as_str() {
                        "In" => in_vals,
                        "NotIn" => !in_vals && *code != 0,
                        _ => false,
                    }
            });
            if let Some((name, code)) = hit {
                let msg = format!(
                    "Container {name} for pod {pod_name} failed with exit code {code} matching {} rule at index {i}",
                    r.action
                );
                return Some((action, msg));
            }
        }
        for pc in r.on_pod_conditions.iter().flatten() {
            let hit = status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == pc.type_ && c.status == pc.status);
            if hit {
                let msg = format!(
                    "Pod {pod_name} has condition {} matching {} rule at index {i}",
                    pc.type_, r.action
                );
                return Some((action, msg));
            }
        }
    }
    None
}

/// `completedIndexes` ("1,3-5") to a set and back.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    out.insert(a);
                }
            }
        }
    }
    out
}

pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().unwrap_or(end);
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

async fn remove_finalizer(api: &Api<Pod>, p: &Pod) -> Result<()> {
    let fins: Vec<String> = p
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != TRACKING_FINALIZER)
        .cloned()
        .collect();
    // The uid precondition makes sure a recreated pod of the same name is left alone.
    let patch = json!({"metadata": {"finalizers": fins, "uid": p.metadata.uid}});
    match api
        .patch(
            p.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn delete_pods(ctx: &Ctx, job: &Job, api: &Api<Pod>, pods: &[&Pod]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let dp = DeleteParams::background();
    for p in pods {
        let n = p.metadata.name.clone().unwrap_or_default();
        if podcontrol::delete_pod(ctx, api, COMPONENT, job, &n, &dp).await? {
            out.push(n);
        }
    }
    Ok(out)
}

async fn reconcile(
    ctx: &Ctx,
    exp: &Expectations,
    bo: &Backoff,
    counted: &Counted,
    written: &Written,
    key: &str,
) -> Result<Option<Duration>> {
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let Some(job) = ctx.inf.jobs.get(Some(ns), name) else {
        exp.forget(key);
        bo.0.lock().remove(key);
        counted.0.lock().remove(key);
        written.0.lock().remove(key);
        return Ok(None);
    };
    let mut rv = job.metadata.resource_version.clone();
    let cached = rv.as_deref().and_then(|v| v.parse::<u64>().ok());
    let ours = written.0.lock().get(key).copied();
    if let (Some(c), Some(w)) = (cached, ours) {
        if c < w {
            // The watch event for our own write is on its way; it re-queues the key too.
            return Ok(Some(Duration::from_millis(200)));
        }
    }
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    // Expectations first, then the pods: checked after listing, a pod created by the last
    // sync could arrive in between, satisfy the check and still be missing from the list,
    // and its index be created twice (upstream checks them first too).
    let satisfied = exp.satisfied(key, ns, ctx);
    let pods: Vec<Arc<Pod>> = ctx
        .inf
        .pods
        .list_ns(ns)
        .into_iter()
        .filter(|p| util::controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let old = job.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let now = Timestamp::now();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let mut per_index = (indexed && spec.backoff_limit_per_index.is_some())
        .then(|| PerIndex::compute(&spec, &st, &pods));

    // Steps 2-4 of the finalizer protocol.
    let mut unc = st.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut usucc: BTreeSet<String> = unc
        .succeeded
        .take()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut ufail: BTreeSet<String> = unc.failed.take().unwrap_or_default().into_iter().collect();
    let mut newly = false;
    let done: HashSet<String> = {
        let mut g = counted.0.lock();
        let set = g.entry(key.to_string()).or_default();
        // Forget uids once the cache shows the finalizer gone (or the pod gone).
        set.retain(|u| {
            pods.iter()
                .any(|p| p.metadata.uid.as_deref() == Some(u) && has_finalizer(p))
        });
        set.clone()
    };
    for p in &pods {
        let puid = p.metadata.uid.clone().unwrap_or_default();
        if !has_finalizer(p)
            || done.contains(&puid)
            || usucc.contains(&puid)
            || ufail.contains(&puid)
        {
            continue;
        }
        if per_index
            .as_ref()
            .is_some_and(|x| x.delayed.contains(&puid))
        {
            // Counted once its replacement exists (which copies its failure count).
            continue;
        }
        match pod_outcome(p) {
            Some(true) => {
                usucc.insert(puid);
                newly = true;
            }
            Some(false) => {
                if matches!(policy_action(&spec, p), Some((Action::Ignore, _))) {
                    // Ignored failures are not counted and cause no back-off (upstream).
                    remove_finalizer(&pods_api, p).await?;
                    counted
                        .0
                        .lock()
                        .entry(key.to_string())
                        .or_default()
                        .insert(puid);
                    continue;
                }
                ufail.insert(puid);
                newly = true;
            }
            None => {}
        }
    }
    let uncounted = |s: &BTreeSet<String>, f: &BTreeSet<String>| {
        Some(UncountedTerminatedPods {
            succeeded: Some(s.iter().cloned().collect()),
            failed: Some(f.iter().cloned().collect()),
        })
    };
    if newly {
        st.uncounted_terminated_pods = uncounted(&usucc, &ufail);
        write_status(&jobs_api, name, &st, &mut rv, written, key).await?;
    }
    let mut policy_failure: Option<String> = None;
    let mut completed = parse_indexes(st.completed_indexes.as_deref().unwrap_or_default());
    let mut new_failures = 0u32;
    for p in &pods {
        let puid = p.metadata.uid.clone().unwrap_or_default();
        let succ = usucc.contains(&puid);
        if !(succ || ufail.contains(&puid)) {
            continue;
        }
        if has_finalizer(p) {
            remove_finalizer(&pods_api, p).await?;
            counted
                .0
                .lock()
                .entry(key.to_string())
                .or_default()
                .insert(puid.clone());
        }
        if succ {
            if indexed {
                if let Some(i) = pod_index(p) {
                    completed.insert(i);
                }
            }
            st.succeeded = Some(st.succeeded.unwrap_or(0) + 1);
            usucc.remove(&puid);
        } else {
            st.failed = Some(st.failed.unwrap_or(0) + 1);
            ufail.remove(&puid);
            new_failures += 1;
            if let (Some(x), Some(i)) = (per_index.as_mut(), pod_index(p)) {
                if index_failed(&spec, p) && (0..spec.completions.unwrap_or(0)).contains(&i) {
                    x.failed.insert(i);
                }
            }
            if let Some((Action::FailJob, msg)) = policy_action(&spec, p) {
                policy_failure = Some(msg);
            }
        }
    }
    // Uids whose pods are gone from the cache were already un-finalized: count them too.
    for u in std::mem::take(&mut usucc) {
        if pods.iter().any(|p| p.metadata.uid.as_deref() == Some(&u)) {
            usucc.insert(u);
        } else {
            st.succeeded = Some(st.succeeded.unwrap_or(0) + 1);
        }
    }
    for u in std::mem::take(&mut ufail) {
        if pods.iter().any(|p| p.metadata.uid.as_deref() == Some(&u)) {
            ufail.insert(u);
        } else {
            st.failed = Some(st.failed.unwrap_or(0) + 1);
            new_failures += 1;
        }
    }
    st.uncounted_terminated_pods = uncounted(&usucc, &ufail);
    if indexed {
        st.completed_indexes = Some(format_indexes(&completed));
    }
    if let Some(x) = &per_index {
        st.failed_indexes = Some(format_indexes(&x.failed));
    }
    if new_failures > 0 {
        let mut g = bo.0.lock();
        let e = g.entry(key.to_string()).or_insert((0, Instant::now()));
        e.0 += new_failures;
        e.1 = Instant::now();
    }

    // Finished jobs only clean up.
    let active: Vec<&Pod> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| pod_outcome(p).is_none())
        .collect();
    if finished(&job).is_some() {
        delete_pods(ctx, &job, &pods_api, &active).await?;
        st.active = Some(0);
        st.ready = Some(0);
        if st != old {
            write_status(&jobs_api, name, &st, &mut rv, written, key).await?;
        }
        return Ok(None);
    }

    let succeeded = st.succeeded.unwrap_or(0);
    let failed = st.failed.unwrap_or(0) + ufail.len() as i32;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    // The API server defaults it (6, or "unlimited" with backoffLimitPerIndex); so do we.
    let backoff_limit =
        spec.backoff_limit
            .unwrap_or(if per_index.is_some() { i32::MAX } else { 6 });
    let suspended = spec.suspend == Some(true);
    let mut again: Option<Duration> = None;

    // Suspend / resume.
    let was_suspended = st
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Suspended" && c.status == "True");
    if suspended {
        if !was_suspended {
            ctx.events.event(
                COMPONENT,
                &*job,
                EventType::Normal,
                "Suspended",
                "Job suspended",
            );
            set_cond(
                &mut st,
                cond("Suspended", "True", "JobSuspended", "Job suspended", now),
            );
        }
    } else {
        if was_suspended {
            ctx.events.event(
                COMPONENT,
                &*job,
                EventType::Normal,
                "Resumed",
                "Job resumed",
            );
            set_cond(
                &mut st,
                cond("Suspended", "False", "JobResumed", "Job resumed", now),
            );
            st.start_time = Some(Time(now));
        }
        if st.start_time.is_none() {
            st.start_time = Some(Time(now));
        }
    }

    // Failure and completion.
    let mut failure: Option<(&'static str, &str)> = None;
    if let Some(m) = &policy_failure {
        failure = Some(("PodFailurePolicy", m.as_str()));
    } else if failed > backoff_limit {
        failure = Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ));
    } else if let (Some(ads), Some(start), false) =
        (spec.active_deadline_seconds, &st.start_time, suspended)
    {
        let end = start.0.as_second() + ads;
        if now.as_second() >= end {
            failure = Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
        } else {
            again = Some(Duration::from_secs((end - now.as_second()) as u64));
        }
    }
    if let (None, Some(x)) = (failure, &per_index) {
        let n_failed = x.failed.len() as i32;
        if spec.max_failed_indexes.is_some_and(|m| n_failed > m) {
            failure = Some((
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes",
            ));
        } else if n_failed > 0 && n_failed + completed.len() as i32 >= spec.completions.unwrap_or(0)
        {
            failure = Some(("FailedIndexes", "Job has failed indexes"));
        }
    }
    let complete = match (indexed, spec.completions) {
        (true, Some(c)) => completed.len() as i32 >= c,
        (false, Some(c)) => succeeded >= c,
        // Work-queue jobs: done once one pod succeeded and none is left running.
        (_, None) => succeeded > 0 && active.is_empty(),
    };
    if let Some((reason, msg)) = failure {
        delete_pods(ctx, &job, &pods_api, &active).await?;
        ctx.events
            .event(COMPONENT, &*job, EventType::Warning, reason, msg);
        set_cond(&mut st, cond("FailureTarget", "True", reason, msg, now));
        set_cond(&mut st, cond("Failed", "True", reason, msg, now));
        st.active = Some(0);
        st.ready = Some(0);
        st.terminating = Some(active.len() as i32);
        write_status(&jobs_api, name, &st, &mut rv, written, key).await?;
        return Ok(None);
    }
    if complete && ufail.is_empty() && usucc.is_empty() {
        delete_pods(ctx, &job, &pods_api, &active).await?;
        ctx.events.event(
            COMPONENT,
            &*job,
            EventType::Normal,
            "Completed",
            "Job completed",
        );
        set_cond(
            &mut st,
            cond(
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ),
        );
        set_cond(
            &mut st,
            cond(
                "Complete",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ),
        );
        st.completion_time = Some(Time(now));
        st.active = Some(0);
        st.ready = Some(0);
        write_status(&jobs_api, name, &st, &mut rv, written, key).await?;
        return Ok(None);
    }

    // Manage active pods.
    if satisfied {
        let failed_indexes = per_index.as_ref().map(|x| &x.failed);
        let n_failed_indexes = failed_indexes.map_or(0, |f| f.len() as i32);
        // Running pods of failed indexes are stopped (upstream terminates them too).
        let doomed: Vec<&Pod> = active
            .iter()
            .copied()
            .filter(|p| {
                !util::is_deleting(&p.metadata)
                    && pod_index(p).is_some_and(|i| failed_indexes.is_some_and(|f| f.contains(&i)))
            })
            .collect();
        if !doomed.is_empty() {
            let dels = delete_pods(ctx, &job, &pods_api, &doomed).await?;
            exp.expect(key, vec![], dels);
        }
        let want: i32 = if suspended || complete {
            0
        } else {
            match spec.completions {
                Some(c) if indexed => {
                    parallelism.min(c - completed.len() as i32 - n_failed_indexes)
                }
                Some(c) => parallelism.min(c - succeeded - usucc.len() as i32),
                None if succeeded > 0 => 0,
                None => parallelism,
            }
            .max(0)
        };
        let live: Vec<&Pod> = active
            .iter()
            .copied()
            .filter(|p| !util::is_deleting(&p.metadata))
            .filter(|p| !doomed.iter().any(|d| std::ptr::eq(*d, *p)))
            .collect();
        let n = live.len() as i32;
        if n > want {
            // Delete the newest/least-progressed first, as the replicaset controller does.
            let mut victims = live.clone();
            victims.sort_by_key(|p| {
                (
                    u8::from(phase(p) == "Running"),
                    u8::from(util::is_pod_ready(p)),
                    -p.metadata
                        .creation_timestamp
                        .as_ref()
                        .map_or(0, |t| t.0.as_second()),
                )
            });
            let dels = delete_pods(ctx, &job, &pods_api, &victims[..(n - want) as usize]).await?;
            exp.expect(key, vec![], dels);
        } else if n < want {
            // With backoffLimitPerIndex the back-off is per index (below), not per Job.
            let wait = if per_index.is_some() {
                None
            } else {
                let g = bo.0.lock();
                g.get(key).and_then(|(f, at)| {
                    let d = BACKOFF_BASE
                        .saturating_mul(1 << (f.saturating_sub(1)).min(6))
                        .min(BACKOFF_MAX);
                    d.checked_sub(at.elapsed())
                })
            };
            match wait {
                Some(w) if !w.is_zero() => {
                    again = Some(again.map_or(w, |a| a.min(w)));
                }
                _ => {
                    let indexes: Vec<(i32, (i32, i32))> = if indexed {
                        let running: BTreeSet<i32> =
                            live.iter().filter_map(|p| pod_index(p)).collect();
                        let mut out = Vec::new();
                        for i in (0..spec.completions.unwrap_or(0)).filter(|i| {
                            !completed.contains(i)
                                && !running.contains(i)
                                && failed_indexes.is_none_or(|f| !f.contains(i))
                        }) {
                            if out.len() >= (want - n) as usize {
                                break;
                            }
                            let (counts, wait) = match &per_index {
                                Some(x) => x.replacement(&spec, i, now),
                                None => ((0, 0), Duration::ZERO),
                            };
                            if wait.is_zero() {
                                out.push((i, counts));
                            } else {
                                again = Some(again.map_or(wait, |a| a.min(wait)));
                            }
                        }
                        out
                    } else {
                        Vec::new()
                    };
                    let plain = if indexed { 0 } else { (want - n) as usize };
                    let (created, r) =
                        create_pods(ctx, &pods_api, &job, &indexes, plain, per_index.is_some())
                            .await;
                    exp.expect(key, created, vec![]);
                    r?;
                }
            }
        }
    }

    st.active = Some(
        active
            .iter()
            .filter(|p| !util::is_deleting(&p.metadata))
            .count() as i32,
    );
    st.ready = Some(active.iter().filter(|p| util::is_pod_ready(p)).count() as i32);
    st.terminating = Some(
        pods.iter()
            .filter(|p| {
                util::is_deleting(&p.metadata) && !matches!(phase(p), "Succeeded" | "Failed")
            })
            .count() as i32,
    );
    if st != old {
        write_status(&jobs_api, name, &st, &mut rv, written, key).await?;
    }
    Ok(again.map(|d| d + Duration::from_millis(100)))
}

/// Writes status with the resourceVersion it was computed from as a precondition (a stale
/// cache gets a 409 and a retry, never overwrites newer counts) and remembers the version
/// written, see [`Written`].
async fn write_status(
    api: &Api<Job>,
    name: &str,
    st: &JobStatus,
    rv: &mut Option<String>,
    written: &Written,
    key: &str,
) -> Result<()> {
    let patch = json!({"metadata": {"resourceVersion": rv}, "status": st});
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(j) => {
            *rv = j.metadata.resource_version.clone();
            if let Some(n) = rv.as_deref().and_then(|v| v.parse::<u64>().ok()) {
                written.0.lock().insert(key.to_string(), n);
            }
            Ok(())
        }
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates one pod per entry of `indexes` (index, (failure count, ignored failure count)) and
/// `plain` pods without an index.
async fn create_pods(
    ctx: &Ctx,
    api: &Api<Pod>,
    job: &Job,
    indexes: &[(i32, (i32, i32))],
    plain: usize,
    per_index: bool,
) -> (Vec<String>, Result<()>) {
    let indexes: Vec<Option<(i32, (i32, i32))>> = indexes
        .iter()
        .copied()
        .map(Some)
        .chain(std::iter::repeat_n(None, plain))
        .collect();
    let name = job.metadata.name.clone().unwrap_or_default();
    let tmpl = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut created = Vec::new();
    for idx in indexes {
        let generate_name = match idx {
            Some((i, _)) => format!("{name}-{i}-"),
            None => format!("{name}-"),
        };
        let mut pod =
            podcontrol::pod_from_template(&tmpl, &job.metadata, "batch/v1", "Job", generate_name);
        let meta = &mut pod.metadata;
        let spec = pod.spec.get_or_insert_with(Default::default);
        meta.finalizers
            .get_or_insert_with(Vec::new)
            .push(TRACKING_FINALIZER.into());
        if let Some((i, (failures, ignored))) = idx {
            let ann = meta.annotations.get_or_insert_with(Default::default);
            ann.insert(COMPLETION_INDEX.into(), i.to_string());
            if per_index {
                ann.insert(INDEX_FAILURE_COUNT.into(), failures.to_string());
                if ignored > 0 {
                    ann.insert(INDEX_IGNORED_FAILURE_COUNT.into(), ignored.to_string());
                }
            }
            meta.labels
                .get_or_insert_with(Default::default)
                .insert(COMPLETION_INDEX.into(), i.to_string());
            spec.hostname = Some(format!("{name}-{i}"));
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                    }),
                    ..Default::default()
                }),
            };
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                let envs = c.env.get_or_insert_with(Vec::new);
                if !envs.iter().any(|e| e.name == env.name) {
                    envs.push(env.clone());
                }
            }
        }
        match podcontrol::create_pod(ctx, api, COMPONENT, job, &pod).await {
            Ok(pn) => created.push(pn),
            Err(e) => return (created, Err(e.into())),
        }
    }
    (created, Ok(()))
}

// ---------------------------------------------------------------------------------------------
// ttl-after-finished

pub fn ttl_controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.jobs.on_change(move |j, _| {
        let has_ttl = j
            .spec
            .as_ref()
            .is_some_and(|s| s.ttl_seconds_after_finished.is_some());
        if has_ttl && finished(j).is_some() {
            q.add(key_of(j));
        }
    });
    let c = ctx.clone();
    Controller::new("ttl-after-finished-controller", queue, 1, move |key| {
        let c = c.clone();
        async move { ttl_reconcile(&c, &key).await }
    })
}

async fn ttl_reconcile(ctx: &Ctx, key: &str) -> Result<Option<Duration>> {
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let Some(job) = ctx.inf.jobs.get(Some(ns), name) else {
        return Ok(None);
    };
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(None);
    };
    if util::is_deleting(&job.metadata) {
        return Ok(None);
    }
    let Some(c) = finished(&job) else {
        return Ok(None);
    };
    let at = job
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .or(c.last_transition_time.as_ref())
        .map_or(0, |t| t.0.as_second());
    let expire = at + i64::from(ttl);
    let now = Timestamp::now().as_second();
    if now < expire {
        return Ok(Some(
            Duration::from_secs((expire - now) as u64) + Duration::from_millis(100),
        ));
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: Some(kube::api::Preconditions {
            uid: job.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    delete_object(&api, name, &dp).await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_round_trip() {
        let s = parse_indexes("0,2-4,7");
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), vec![0, 2, 3, 4, 7]);
        assert_eq!(format_indexes(&s), "0,2-4,7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    /// A pod of index `i` with `failures` counted before it, in `phase`, finished at
    /// `finished` (seconds), with or without the tracking finalizer, exiting with `code`.
    fn ipod(
        uid: &str,
        i: i32,
        failures: i32,
        phase: &str,
        finished: i64,
        finalizer: bool,
        code: i32,
    ) -> Arc<Pod> {
        let at = Timestamp::from_second(finished).unwrap().to_string();
        let fins: Vec<&str> = if finalizer {
            vec![TRACKING_FINALIZER]
        } else {
            vec![]
        };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": uid, "namespace": "d", "uid": uid, "finalizers": fins,
                    "annotations": {COMPLETION_INDEX: i.to_string(), INDEX_FAILURE_COUNT: failures.to_string()}},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"phase": phase, "containerStatuses": [{"name": "c", "image": "i", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code, "finishedAt": at}}}]}
            }))
            .unwrap(),
        )
    }

    fn spec(extra: serde_json::Value) -> k8s_openapi::api::batch::v1::JobSpec {
        let mut s = json!({"completions": 4, "completionMode": "Indexed", "backoffLimitPerIndex": 1,
            "template": {"spec": {"containers": [{"name": "c"}]}}});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        serde_json::from_value(s).unwrap()
    }

    #[test]
    fn per_index_failures_delay_counting_and_carry_the_count() {
        let spec = spec(json!({}));
        let pods = vec![
            // Index 0: failed once (count 0), no replacement yet: delayed, not failed.
            ipod("a", 0, 0, "Failed", 100, true, 1),
            // Index 1: failed with count 1 = the limit: the index fails.
            ipod("b", 1, 1, "Failed", 100, true, 1),
            // Index 2: an old counted failure and its running replacement: nothing delayed.
            ipod("c", 2, 0, "Failed", 50, false, 1),
            ipod("d", 2, 1, "Running", 0, true, 0),
        ];
        let st = JobStatus::default();
        let x = PerIndex::compute(&spec, &st, &pods);
        assert_eq!(x.failed, BTreeSet::from([1]));
        assert_eq!(x.delayed, HashSet::from(["a".to_string()]));
        // The replacement for index 0: one counted failure, 10 s after the failure.
        let now = Timestamp::from_second(104).unwrap();
        let ((counted, ignored), wait) = x.replacement(&spec, 0, now);
        assert_eq!((counted, ignored), (1, 0));
        assert_eq!(wait, Duration::from_secs(6));
        let later = Timestamp::from_second(111).unwrap();
        assert_eq!(x.replacement(&spec, 0, later).1, Duration::ZERO);
        // An index that never failed starts at zero, at once.
        assert_eq!(x.replacement(&spec, 3, now), ((0, 0), Duration::ZERO));
        // Failed indexes persist through status.failedIndexes.
        let st = JobStatus {
            failed_indexes: Some("3".into()),
            ..Default::default()
        };
        assert_eq!(
            PerIndex::compute(&spec, &st, &pods).failed,
            BTreeSet::from([1, 3])
        );
    }

    #[test]
    fn fail_index_and_ignore_rules() {
        let spec = spec(
            json!({"backoffLimitPerIndex": 5, "podFailurePolicy": {"rules": [
            {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [42]}},
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}}]}}),
        );
        // FailIndex fails the index whatever its count.
        assert!(index_failed(&spec, &ipod("a", 0, 0, "Failed", 1, true, 42)));
        assert!(!index_failed(&spec, &ipod("a", 0, 0, "Failed", 1, true, 1)));
        // Ignored failures never fail the index; the replacement counts them apart.
        let ignored = ipod("b", 1, 5, "Failed", 1, true, 3);
        assert!(!index_failed(&spec, &ignored));
        let x = PerIndex::compute(&spec, &JobStatus::default(), &[ignored]);
        let ((counted, ignored), wait) =
            x.replacement(&spec, 1, Timestamp::from_second(1).unwrap());
        assert_eq!((counted, ignored), (5, 1));
        // Back-off grows with all failures of the index (5 before, this one): 10 s · 2^5.
        assert_eq!(wait, Duration::from_secs(320));
    }
}
