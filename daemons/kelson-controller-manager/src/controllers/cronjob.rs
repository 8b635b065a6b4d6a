//! The cronjob controller (upstream's CronJob controller v2).
//!
//! Per CronJob: find the most recent scheduled time `t` with `earliest < t <= now`, where
//! `earliest` is `status.lastScheduleTime` (or the creation time) raised to
//! `now - startingDeadlineSeconds` when a deadline is set — a schedule missed by more than
//! the deadline is skipped, one missed by less (e.g. while the controller was down) still
//! fires at once, as upstream. If there is such a `t` and the concurrency policy allows it
//! (Forbid: no active Job; Replace: delete the active ones first), create the Job
//! `<cronjob>-<t in minutes since the epoch>` — the deterministic name makes a repeated sync
//! for the same `t` a harmless AlreadyExists. Then requeue for the next schedule time.
//!
//! Also kept up to date: `status.active` (unfinished owned Jobs), `lastScheduleTime`,
//! `lastSuccessfulTime`, and the finished-Job history trimmed to
//! successful/failedJobsHistoryLimit (oldest first).
//!
//! Schedules are parsed with `croner` (5 fields, Vixie-cron day-of-month OR day-of-week, the
//! `@hourly`-style descriptors). `timeZone` is read from the system tz database through jiff;
//! croner then works in that zone's UTC offset at `now` (exact except within an hour of a
//! DST change).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use super::{err_message, is_status, job, patch_status, Controller, Ctx, Result};
use crate::events::EventType;

/// The reporting controller name of upstream's cronjob controller.
const COMPONENT: &str = "cronjob-controller";
use crate::informer::{key_of, split_key};
use crate::queue::WorkQueue;
use crate::util;

pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub fn controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.cronjobs.on_change(move |c, _| q.add(key_of(c)));
    let q = queue.clone();
    ctx.inf.jobs.on_change(move |j, _| {
        if let Some(r) = util::controller_of(&j.metadata) {
            if r.kind == "CronJob" {
                let ns = j.metadata.namespace.clone().unwrap_or_default();
                q.add(format!("{ns}/{}", r.name));
            }
        }
    });
    let c = ctx.clone();
    let cjs = ctx.inf.cronjobs.clone();
    Controller::new(COMPONENT, queue, 1, move |key| {
        let c = c.clone();
        async move { reconcile(&c, &key).await }
    })
    .resync(Duration::from_secs(30), move || {
        cjs.list().iter().map(|j| key_of(&**j)).collect()
    })
}

/// Parses a CronJob schedule the way upstream accepts it (5 fields or a descriptor).
pub fn parse_schedule(s: &str) -> std::result::Result<Cron, String> {
    let s = s.trim();
    if !s.starts_with('@') && s.split_whitespace().count() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}",
            s.split_whitespace().count()
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(s)
        .map_err(|e| e.to_string())
}

/// The UTC offset of `tz` (an IANA name from the system tz database) at `now`.
pub fn offset_of(tz: Option<&str>, now: Timestamp) -> std::result::Result<FixedOffset, String> {
    let Some(tz) = tz else {
        return Ok(FixedOffset::east_opt(0).expect("zero offset"));
    };
    if tz == "UTC" || tz == "Etc/UTC" {
        return Ok(FixedOffset::east_opt(0).expect("zero offset"));
    }
    if tz.contains("..") || tz.starts_with('/') {
        return Err(format!("unknown time zone {tz}"));
    }
    let path = std::path::Path::new("/usr/share/zoneinfo").join(tz);
    let bytes = std::fs::read(&path).map_err(|_| format!("unknown time zone {tz}"))?;
    let zone = k8s_openapi::jiff::tz::TimeZone::tzif(tz, &bytes)
        .map_err(|e| format!("time zone {tz}: {e}"))?;
    let off = zone.to_offset(now).seconds();
    FixedOffset::east_opt(off).ok_or_else(|| format!("time zone {tz}: bad offset"))
}

fn to_chrono(t: Timestamp, off: FixedOffset) -> DateTime<FixedOffset> {
    Utc.timestamp_opt(t.as_second(), 0)
        .single()
        .unwrap_or_default()
        .with_timezone(&off)
}

fn to_ts(t: &DateTime<FixedOffset>) -> Timestamp {
    Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// What the schedule says at `now`: the unmet scheduled time to run (if any) and when to look
/// again.
pub fn next_schedule(
    cron: &Cron,
    off: FixedOffset,
    earliest: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let n = to_chrono(now, off);
    let due = cron
        .find_previous_occurrence(&n, true)
        .ok()
        .map(|t| to_ts(&t))
        .filter(|t| *t > earliest);
    let next = cron.find_next_occurrence(&n, false).ok().map(|t| to_ts(&t));
    (due, next)
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

async fn delete_job(ctx: &Ctx, cj: &CronJob, api: &Api<Job>, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            ctx.events.event(
                COMPONENT,
                cj,
                EventType::Normal,
                "SuccessfulDelete",
                format!("Deleted job {name}"),
            );
            Ok(())
        }
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Option<Duration>> {
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let Some(cj) = ctx.inf.cronjobs.get(Some(ns), name) else {
        return Ok(None);
    };
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let cj_api: Api<CronJob> = Api::namespaced(ctx.client.clone(), ns);
    let mut jobs: Vec<Arc<Job>> = ctx
        .inf
        .jobs
        .list_ns(ns)
        .into_iter()
        .filter(|j| util::controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    jobs.sort_by_key(|j| {
        j.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .or(j.metadata.creation_timestamp.as_ref())
            .map_or(0, |t| t.0.as_second())
    });
    let old = cj.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let now = Timestamp::now();

    // Active list and last success from the owned Jobs.
    let mut active: Vec<ObjectReference> = Vec::new();
    let (mut succ, mut fail) = (Vec::new(), Vec::new());
    for j in &jobs {
        let finished = job::finished(j);
        if let Some(c) = finished {
            let was_active = old
                .active
                .iter()
                .flatten()
                .any(|r| r.uid.is_some() && r.uid == j.metadata.uid);
            if was_active {
                ctx.events.event(
                    COMPONENT,
                    &*cj,
                    EventType::Normal,
                    "SawCompletedJob",
                    format!(
                        "Saw completed job: {}, condition: {}",
                        j.metadata.name.as_deref().unwrap_or_default(),
                        c.type_
                    ),
                );
            }
        }
        match finished {
            None => active.push(job_ref(j)),
            Some(c) if c.type_ == "Complete" => {
                if let Some(t) = j.status.as_ref().and_then(|s| s.completion_time.clone()) {
                    if st.last_successful_time.as_ref().is_none_or(|l| l.0 < t.0) {
                        st.last_successful_time = Some(t);
                    }
                }
                succ.push(j.clone());
            }
            Some(_) => fail.push(j.clone()),
        }
    }
    st.active = (!active.is_empty()).then_some(active.clone());

    // History limits: delete the oldest finished Jobs beyond the limits.
    for (list, limit) in [
        (&succ, spec.successful_jobs_history_limit.unwrap_or(3)),
        (&fail, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let excess = list.len().saturating_sub(limit.max(0) as usize);
        for j in list.iter().take(excess) {
            if !util::is_deleting(&j.metadata) {
                delete_job(
                    ctx,
                    &cj,
                    &jobs_api,
                    j.metadata.name.as_deref().unwrap_or_default(),
                )
                .await?;
            }
        }
    }

    let mut again = None;
    if !util::is_deleting(&cj.metadata) && spec.suspend != Some(true) {
        let cron = match parse_schedule(&spec.schedule) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(cronjob = key, error = %e, "unparseable schedule");
                ctx.events.event(
                    COMPONENT,
                    &*cj,
                    EventType::Warning,
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {e}", spec.schedule),
                );
                None
            }
        };
        let off = match offset_of(spec.time_zone.as_deref(), now) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(cronjob = key, error = %e, "unknown time zone");
                ctx.events.event(
                    COMPONENT,
                    &*cj,
                    EventType::Warning,
                    "UnknownTimeZone",
                    format!(
                        "invalid timeZone: {:?}: {e}",
                        spec.time_zone.as_deref().unwrap_or_default()
                    ),
                );
                None
            }
        };
        if let (Some(cron), Some(off)) = (cron, off) {
            let mut earliest = st
                .last_schedule_time
                .as_ref()
                .or(cj.metadata.creation_timestamp.as_ref())
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
            if let Some(d) = spec.starting_deadline_seconds {
                let floor = Timestamp::from_second(now.as_second() - d).unwrap_or(earliest);
                // Schedules missed by more than the deadline are skipped (upstream: too late).
                if floor > earliest {
                    earliest = Timestamp::from_second(floor.as_second() - 1).unwrap_or(floor);
                }
            }
            let (due, next) = next_schedule(&cron, off, earliest, now);
            again = next.map(|n| {
                Duration::from_secs((n.as_second() - now.as_second()).max(0) as u64)
                    + Duration::from_millis(100)
            });
            if let Some(t) = due {
                let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                // The Job for `t` already exists: a sync on a cache that has not seen our
                // status write yet. Record it; never let Forbid/Replace act on it.
                let this_run = job_name(name, t);
                let exists = jobs
                    .iter()
                    .any(|j| j.metadata.name.as_deref() == Some(this_run.as_str()));
                let blocked = policy == "Forbid" && !active.is_empty();
                if exists {
                    st.last_schedule_time = Some(Time(t));
                } else if !blocked {
                    if policy == "Replace" {
                        for a in active
                            .iter()
                            .filter(|a| a.name.as_deref() != Some(&this_run))
                        {
                            delete_job(ctx, &cj, &jobs_api, a.name.as_deref().unwrap_or_default())
                                .await?;
                        }
                        st.active = None;
                    }
                    let created = match create_job(&jobs_api, &cj, t).await {
                        Ok(j) => j,
                        Err(e) => {
                            let msg = match &e {
                                super::Error::Kube(k) => err_message(k),
                                e => e.to_string(),
                            };
                            ctx.events.event(
                                COMPONENT,
                                &*cj,
                                EventType::Warning,
                                "FailedCreate",
                                format!("Error creating job: {msg}"),
                            );
                            return Err(e);
                        }
                    };
                    if created.metadata.name.as_deref() == Some(this_run.as_str()) {
                        ctx.events.event(
                            COMPONENT,
                            &*cj,
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created job {this_run}"),
                        );
                    }
                    let refs = st.active.get_or_insert_with(Vec::new);
                    if !refs.iter().any(|r| r.uid == created.metadata.uid) {
                        refs.push(job_ref(&created));
                    }
                    st.last_schedule_time = Some(Time(t));
                }
            }
        }
    }
    if st != old {
        let status = CronJobStatus {
            active: Some(st.active.clone().unwrap_or_default()),
            ..st.clone()
        };
        if !patch_status(&cj_api, name, json!({"status": status})).await? {
            return Ok(None);
        }
    }
    Ok(again)
}

/// `<cronjob>-<minutes since epoch>`, as upstream's `getJobName`.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second() / 60)
}

async fn create_job(api: &Api<Job>, cj: &CronJob, t: Timestamp) -> Result<Job> {
    let name = job_name(cj.metadata.name.as_deref().unwrap_or_default(), t);
    let tmpl = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let mut meta = tmpl.metadata.clone().unwrap_or_default();
    meta.name = Some(name.clone());
    meta.namespace = cj.metadata.namespace.clone();
    meta.owner_references = Some(vec![util::controller_ref(
        "batch/v1",
        "CronJob",
        &cj.metadata,
    )]);
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(
            SCHEDULED_TIMESTAMP.into(),
            t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
    let job = Job {
        metadata: meta,
        spec: tmpl.spec.clone(),
        status: None,
    };
    match api.create(&PostParams::default(), &job).await {
        Ok(j) => Ok(j),
        Err(e) if is_status(&e, 409) => {
            // Created by an earlier sync for the same time: ours if we own it.
            let j = api.get(&name).await?;
            let ours = util::controller_of(&j.metadata)
                .is_some_and(|r| Some(&r.uid) == cj.metadata.uid.as_ref());
            if ours {
                Ok(j)
            } else {
                Err(super::Error::Other(format!(
                    "job {name} exists and is not owned by the cronjob"
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn schedules() {
        let c = parse_schedule("*/5 * * * *").unwrap();
        let utc = offset_of(None, Timestamp::now()).unwrap();
        let now = ts("2024-05-01T10:07:30Z");
        let (due, next) = next_schedule(&c, utc, ts("2024-05-01T10:00:00Z"), now);
        assert_eq!(due, Some(ts("2024-05-01T10:05:00Z")));
        assert_eq!(next, Some(ts("2024-05-01T10:10:00Z")));
        // Already ran at 10:05: nothing due.
        let (due, _) = next_schedule(&c, utc, ts("2024-05-01T10:05:00Z"), now);
        assert_eq!(due, None);
        assert!(parse_schedule("@hourly").is_ok());
        assert!(parse_schedule("* * * * * *").is_err());
        assert!(parse_schedule("61 * * * *").is_err());
        assert_eq!(
            job_name("hello", ts("2024-05-01T10:05:00Z")),
            "hello-28575965"
        );
    }

    #[test]
    fn time_zones() {
        let now = ts("2024-01-15T12:00:00Z");
        assert!(offset_of(Some("../etc/passwd"), now).is_err());
        let off = offset_of(Some("Asia/Tokyo"), now)
            .expect("the system tz database (Debian package tzdata) is needed for timeZone");
        assert_eq!(off.local_minus_utc(), 9 * 3600);
        // 09:00 Tokyo is 00:00 UTC.
        let c = parse_schedule("0 9 * * *").unwrap();
        let (due, _) = next_schedule(&c, off, ts("2024-01-14T12:00:00Z"), now);
        assert_eq!(due, Some(ts("2024-01-15T00:00:00Z")));
        assert!(offset_of(Some("Nowhere/Atlantis"), now).is_err());
    }
}
