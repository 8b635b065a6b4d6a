//! Strategies for the workload kinds the controller manager drives: batch/v1 Job and CronJob,
//! apps/v1 StatefulSet and DaemonSet, policy/v1 PodDisruptionBudget and core ResourceQuota.
//!
//! A child module of `strategy` (declared there with `#[path]`, so the API server's `lib.rs`
//! needs no edit) so it can reuse the parent's private pod-spec defaulting and selector
//! validation. Defaults and validation follow upstream's `SetDefaults_*` and
//! `Validate*` functions for the fields the controllers read; the rule of thumb is: every
//! field a controller would otherwise have to guess gets its upstream default here, so a
//! stored object always says what it means.

use serde_json::{json, Value};

use kelson_apimachinery::StatusCause;

use super::{
    default, default_pod_spec, obj_mut, selector_immutable, validate_pod_spec, validate_selector,
    validate_workload, Strategy, WorkloadStrategy,
};

/// Labels the API server puts on a Job's pod template (and uses as its selector).
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";

fn nonneg(obj: &Value, path: &str, out: &mut Vec<StatusCause>) {
    let mut v = obj;
    for p in path.split('.') {
        v = &v[p];
    }
    if let Some(n) = v.as_i64() {
        if n < 0 {
            out.push(StatusCause::invalid(
                path,
                format!("Invalid value: {n}: must be greater than or equal to 0"),
            ));
        }
    }
}

fn unsupported(path: &str, got: &str, allowed: &[&str]) -> StatusCause {
    let list = allowed
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    StatusCause {
        reason: "FieldValueNotSupported".into(),
        message: format!("Unsupported value: {got:?}: supported values: {list}"),
        field: path.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Job

/// Job defaults (`SetDefaults_Job`) and the generated selector (`generateSelector` in the job
/// registry): unless `manualSelector`, the template carries the Job's uid and name as labels
/// and the selector matches the uid, so two Jobs never fight over pods.
pub struct JobStrategy;

impl JobStrategy {
    fn generate_selector(obj: &mut Value) {
        if obj["spec"]["manualSelector"] == json!(true) {
            return;
        }
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if uid.is_empty() {
            return;
        }
        let tmpl = obj_mut(&mut obj["spec"], "template");
        let meta = tmpl.entry("metadata").or_insert_with(|| json!({}));
        if !meta["labels"].is_object() {
            meta["labels"] = json!({});
        }
        for (k, v) in [
            (CONTROLLER_UID, &uid),
            (JOB_NAME, &name),
            // The legacy keys upstream still sets for old selectors.
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            meta["labels"][k] = json!(v);
        }
        if obj["spec"]["selector"].is_null() {
            obj["spec"]["selector"] = json!({"matchLabels": {CONTROLLER_UID: uid}});
        }
    }
}

impl Strategy for JobStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({});
        Self::generate_selector(obj);
        self.prepare_for_create_defaults(obj);
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        let indexed = spec.get("completionMode").and_then(Value::as_str) == Some("Indexed");
        if spec.get("completions").is_none_or(Value::is_null)
            && spec.get("parallelism").is_none_or(Value::is_null)
        {
            spec.insert("completions".into(), json!(1));
        }
        default(spec, "parallelism", json!(1));
        if spec
            .get("backoffLimitPerIndex")
            .is_some_and(|v| !v.is_null())
            && indexed
        {
            default(spec, "backoffLimit", json!(i32::MAX));
        }
        default(spec, "backoffLimit", json!(6));
        default(spec, "completionMode", json!("NonIndexed"));
        default(spec, "suspend", json!(false));
        default(spec, "manualSelector", json!(false));
        default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
        default_pod_spec(&mut obj["spec"]["template"]["spec"]);
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let mut out = validate_selector(obj);
        for f in [
            "spec.parallelism",
            "spec.completions",
            "spec.backoffLimit",
            "spec.ttlSecondsAfterFinished",
        ] {
            nonneg(obj, f, &mut out);
        }
        if let Some(n) = obj["spec"]["activeDeadlineSeconds"].as_i64() {
            if n <= 0 {
                out.push(StatusCause::invalid(
                    "spec.activeDeadlineSeconds",
                    format!("Invalid value: {n}: must be greater than 0"),
                ));
            }
        }
        let mode = obj["spec"]["completionMode"]
            .as_str()
            .unwrap_or("NonIndexed");
        if !["NonIndexed", "Indexed"].contains(&mode) {
            out.push(unsupported(
                "spec.completionMode",
                mode,
                &["NonIndexed", "Indexed"],
            ));
        } else if mode == "Indexed" && obj["spec"]["completions"].is_null() {
            out.push(StatusCause::required("spec.completions"));
        }
        let rp = obj["spec"]["template"]["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or_default();
        if !["OnFailure", "Never"].contains(&rp) {
            out.push(unsupported(
                "spec.template.spec.restartPolicy",
                rp,
                &["OnFailure", "Never"],
            ));
        }
        out.extend(validate_pod_spec(
            &obj["spec"]["template"]["spec"],
            "spec.template.spec",
        ));
        out
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        let mut out = self.validate(new);
        out.extend(selector_immutable(new, old));
        for f in ["completionMode", "manualSelector"] {
            if new["spec"][f] != old["spec"][f] {
                out.push(StatusCause::invalid(
                    &format!("spec.{f}"),
                    format!("Invalid value: {}: field is immutable", new["spec"][f]),
                ));
            }
        }
        // Completions may only change for Indexed jobs (elastic indexed jobs).
        if new["spec"]["completionMode"] != json!("Indexed")
            && new["spec"]["completions"] != old["spec"]["completions"]
        {
            out.push(StatusCause::invalid(
                "spec.completions",
                format!(
                    "Invalid value: {}: field is immutable",
                    new["spec"]["completions"]
                ),
            ));
        }
        // The template is immutable, except while the Job is suspended and has never run.
        let never_started = old["status"]["startTime"].is_null();
        let suspended = old["spec"]["suspend"] == json!(true);
        if new["spec"]["template"] != old["spec"]["template"] && !(suspended && never_started) {
            out.push(StatusCause::invalid(
                "spec.template",
                "Invalid value: field is immutable",
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// CronJob

/// Checks a cron schedule's shape: five fields, or one of the `@` descriptors robfig/cron
/// accepts. The controller parses it for real (with the `croner` crate); this only turns a
/// malformed schedule into a 422 at write time, as upstream does.
pub fn schedule_error(s: &str) -> Option<String> {
    let s = s.trim();
    let body = match s.strip_prefix("TZ=").or_else(|| s.strip_prefix("CRON_TZ=")) {
        Some(_) => {
            return Some("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into())
        }
        None => s,
    };
    if let Some(d) = body.strip_prefix('@') {
        return match d {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => None,
            _ if d.starts_with("every ") => None,
            _ => Some(format!("unrecognized descriptor: {body}")),
        };
    }
    let fields: Vec<&str> = body.split_whitespace().collect();
    if fields.len() != 5 {
        return Some(format!(
            "expected exactly 5 fields, found {}: {body:?}",
            fields.len()
        ));
    }
    let ok = |f: &str| {
        f.chars()
            .all(|c| c.is_ascii_alphanumeric() || "*/,-?".contains(c))
    };
    fields
        .iter()
        .find(|f| !ok(f))
        .map(|f| format!("invalid field {f:?} in {body:?}"))
}

pub struct CronJobStrategy;
impl Strategy for CronJobStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({});
        self.prepare_for_create_defaults(obj);
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        default(spec, "concurrencyPolicy", json!("Allow"));
        default(spec, "suspend", json!(false));
        default(spec, "successfulJobsHistoryLimit", json!(3));
        default(spec, "failedJobsHistoryLimit", json!(1));
        let jt = &mut obj["spec"]["jobTemplate"]["spec"];
        if jt.is_object() {
            let m = jt.as_object_mut().expect("checked");
            if m.get("completions").is_none_or(Value::is_null)
                && m.get("parallelism").is_none_or(Value::is_null)
            {
                m.insert("completions".into(), json!(1));
            }
            default(m, "parallelism", json!(1));
            default(m, "backoffLimit", json!(6));
            default(m, "completionMode", json!("NonIndexed"));
            default(m, "suspend", json!(false));
            default_pod_spec(&mut jt["template"]["spec"]);
        }
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let mut out = Vec::new();
        // Jobs are named <cronjob>-<minutes>: 11 characters are kept for the suffix.
        if let Some(n) = obj["metadata"]["name"].as_str() {
            if n.len() > 52 {
                out.push(StatusCause::invalid(
                    "metadata.name",
                    format!("Invalid value: {n:?}: must be no more than 52 characters"),
                ));
            }
        }
        match obj["spec"]["schedule"].as_str() {
            None | Some("") => out.push(StatusCause::required("spec.schedule")),
            Some(s) => {
                if let Some(e) = schedule_error(s) {
                    out.push(StatusCause::invalid(
                        "spec.schedule",
                        format!("Invalid value: {s:?}: {e}"),
                    ));
                }
            }
        }
        let cp = obj["spec"]["concurrencyPolicy"].as_str().unwrap_or("Allow");
        if !["Allow", "Forbid", "Replace"].contains(&cp) {
            out.push(unsupported(
                "spec.concurrencyPolicy",
                cp,
                &["Allow", "Forbid", "Replace"],
            ));
        }
        for f in [
            "spec.startingDeadlineSeconds",
            "spec.successfulJobsHistoryLimit",
            "spec.failedJobsHistoryLimit",
        ] {
            nonneg(obj, f, &mut out);
        }
        if let Some(tz) = obj["spec"]["timeZone"].as_str() {
            let valid = !tz.is_empty()
                && !tz.starts_with('/')
                && !tz.contains("..")
                && tz
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c));
            // Upstream loads the zone (time.LoadLocation); the controller reads the same system
            // tz database, so a zone it cannot find is refused here rather than failing later.
            let known = tz == "UTC"
                || tz == "Etc/UTC"
                || std::path::Path::new("/usr/share/zoneinfo")
                    .join(tz)
                    .is_file();
            if !valid || !known {
                out.push(StatusCause::invalid(
                    "spec.timeZone",
                    format!("Invalid value: {tz:?}: unknown time zone {tz}"),
                ));
            }
        }
        let rp = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or_default();
        if !["OnFailure", "Never"].contains(&rp) {
            out.push(unsupported(
                "spec.jobTemplate.spec.template.spec.restartPolicy",
                rp,
                &["OnFailure", "Never"],
            ));
        }
        out.extend(validate_pod_spec(
            &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            "spec.jobTemplate.spec.template.spec",
        ));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// StatefulSet and DaemonSet

/// `SetDefaults_StatefulSet`: the ReplicaSet-like defaults plus OrderedReady, RollingUpdate
/// with partition 0, and Retain/Retain PVC retention.
pub struct StatefulSetStrategy;
impl Strategy for StatefulSetStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({});
        self.prepare_for_create_defaults(obj);
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        WorkloadStrategy.prepare_for_create_defaults(obj);
        let spec = obj_mut(obj, "spec");
        default(spec, "podManagementPolicy", json!("OrderedReady"));
        default(
            spec,
            "persistentVolumeClaimRetentionPolicy",
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        );
        let us = spec.entry("updateStrategy").or_insert_with(|| json!({}));
        if let Some(us) = us.as_object_mut() {
            default(us, "type", json!("RollingUpdate"));
            if us["type"] == "RollingUpdate" {
                let ru = us.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    default(ru, "partition", json!(0));
                }
            }
        }
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let mut out = validate_workload(obj);
        let pmp = obj["spec"]["podManagementPolicy"]
            .as_str()
            .unwrap_or("OrderedReady");
        if !["OrderedReady", "Parallel"].contains(&pmp) {
            out.push(unsupported(
                "spec.podManagementPolicy",
                pmp,
                &["OrderedReady", "Parallel"],
            ));
        }
        let t = obj["spec"]["updateStrategy"]["type"]
            .as_str()
            .unwrap_or("RollingUpdate");
        if !["RollingUpdate", "OnDelete"].contains(&t) {
            out.push(unsupported(
                "spec.updateStrategy.type",
                t,
                &["RollingUpdate", "OnDelete"],
            ));
        }
        nonneg(obj, "spec.updateStrategy.rollingUpdate.partition", &mut out);
        out
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        let mut out = self.validate(new);
        out.extend(selector_immutable(new, old));
        // Upstream: only replicas, ordinals, template, updateStrategy, minReadySeconds,
        // persistentVolumeClaimRetentionPolicy and revisionHistoryLimit may change.
        for f in ["serviceName", "podManagementPolicy", "volumeClaimTemplates"] {
            if new["spec"][f] != old["spec"][f] {
                out.push(StatusCause {
                    reason: "FieldValueForbidden".into(),
                    message: "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".into(),
                    field: "spec".into(),
                });
                break;
            }
        }
        out
    }
}

/// `SetDefaults_DaemonSet`: RollingUpdate with maxUnavailable 1, maxSurge 0.
pub struct DaemonSetStrategy;
impl Strategy for DaemonSetStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0});
        self.prepare_for_create_defaults(obj);
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        WorkloadStrategy.prepare_for_create_defaults(obj);
        let spec = obj_mut(obj, "spec");
        let us = spec.entry("updateStrategy").or_insert_with(|| json!({}));
        if let Some(us) = us.as_object_mut() {
            default(us, "type", json!("RollingUpdate"));
            if us["type"] == "RollingUpdate" {
                let ru = us.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    default(ru, "maxUnavailable", json!(1));
                    default(ru, "maxSurge", json!(0));
                }
            }
        }
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let mut out = validate_selector(obj);
        out.extend(validate_pod_spec(
            &obj["spec"]["template"]["spec"],
            "spec.template.spec",
        ));
        let rp = obj["spec"]["template"]["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always");
        if rp != "Always" {
            out.push(unsupported(
                "spec.template.spec.restartPolicy",
                rp,
                &["Always"],
            ));
        }
        let t = obj["spec"]["updateStrategy"]["type"]
            .as_str()
            .unwrap_or("RollingUpdate");
        if !["RollingUpdate", "OnDelete"].contains(&t) {
            out.push(unsupported(
                "spec.updateStrategy.type",
                t,
                &["RollingUpdate", "OnDelete"],
            ));
        }
        let ru = &obj["spec"]["updateStrategy"]["rollingUpdate"];
        let zero = |v: &Value| v.is_null() || *v == json!(0) || *v == json!("0%");
        if t == "RollingUpdate" && zero(&ru["maxUnavailable"]) && zero(&ru["maxSurge"]) {
            out.push(StatusCause::invalid(
                "spec.updateStrategy.rollingUpdate.maxUnavailable",
                "Invalid value: 0: may not be 0 when `maxSurge` is 0",
            ));
        }
        out
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        let mut out = self.validate(new);
        out.extend(selector_immutable(new, old));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// PodDisruptionBudget and ResourceQuota

/// minAvailable and maxUnavailable are exclusive; values are non-negative ints or percentages.
pub struct PdbStrategy;
impl Strategy for PdbStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0});
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let mut out = Vec::new();
        let min = &obj["spec"]["minAvailable"];
        let max = &obj["spec"]["maxUnavailable"];
        if !min.is_null() && !max.is_null() {
            out.push(StatusCause::invalid(
                "spec",
                "Invalid value: minAvailable and maxUnavailable cannot be both set",
            ));
        }
        for (f, v) in [("spec.minAvailable", min), ("spec.maxUnavailable", max)] {
            let bad = match v {
                Value::Null => None,
                Value::Number(n) => n
                    .as_i64()
                    .filter(|n| *n >= 0)
                    .is_none()
                    .then(|| "must be greater than or equal to 0".to_string()),
                Value::String(s) => match s.strip_suffix('%').map(str::parse::<u32>) {
                    Some(Ok(p)) if p <= 100 => None,
                    Some(Ok(_)) => Some("must not be greater than 100%".into()),
                    _ => Some("a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')".into()),
                },
                _ => Some("must be an integer or percentage".into()),
            };
            if let Some(m) = bad {
                out.push(StatusCause::invalid(f, format!("Invalid value: {v}: {m}")));
            }
        }
        if let Some(p) = obj["spec"]["unhealthyPodEvictionPolicy"].as_str() {
            if !["IfHealthyBudget", "AlwaysAllow"].contains(&p) {
                out.push(unsupported(
                    "spec.unhealthyPodEvictionPolicy",
                    p,
                    &["AlwaysAllow", "IfHealthyBudget"],
                ));
            }
        }
        out
    }
}

/// A new quota's status is computed by the controller, never taken from the client.
pub struct ResourceQuotaStrategy;
impl Strategy for ResourceQuotaStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let mut out = Vec::new();
        for (k, v) in obj["spec"]["hard"].as_object().into_iter().flatten() {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            if s.is_empty() || s.starts_with('-') {
                out.push(StatusCause::invalid(
                    &format!("spec.hard[{k}]"),
                    format!("Invalid value: {v}: must be greater than or equal to 0"),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_defaults_and_generated_selector() {
        let mut j = json!({"kind": "Job", "metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
        JobStrategy.prepare_for_create(&mut j);
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["parallelism"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(j["spec"]["completionMode"], "NonIndexed");
        assert_eq!(j["spec"]["selector"]["matchLabels"][CONTROLLER_UID], "u-1");
        assert_eq!(j["spec"]["template"]["metadata"]["labels"][JOB_NAME], "pi");
        assert!(
            JobStrategy.validate(&j).is_empty(),
            "{:?}",
            JobStrategy.validate(&j)
        );
        // Parallelism alone leaves completions unset (a work queue job).
        let mut w = json!({"metadata": {"name": "w", "uid": "u"}, "spec": {"parallelism": 3, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "b"}]}}}});
        JobStrategy.prepare_for_create(&mut w);
        assert!(w["spec"]["completions"].is_null());
        // restartPolicy Always is refused.
        let mut bad = j.clone();
        bad["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        assert!(JobStrategy
            .validate(&bad)
            .iter()
            .any(|c| c.field == "spec.template.spec.restartPolicy"));
        // Template immutable once started.
        let mut old = j.clone();
        old["status"]["startTime"] = json!("2024-01-01T00:00:00Z");
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other");
        assert!(JobStrategy
            .validate_update(&new, &old)
            .iter()
            .any(|c| c.field == "spec.template"));
    }

    #[test]
    fn cronjob_schedule_and_defaults() {
        assert!(schedule_error("*/5 * * * *").is_none());
        assert!(schedule_error("@hourly").is_none());
        assert!(schedule_error("* * *").is_some());
        assert!(schedule_error("TZ=UTC * * * * *").is_some());
        let mut c = json!({"metadata": {"name": "c"}, "spec": {"schedule": "@hourly", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "b"}]}}}}}});
        CronJobStrategy.prepare_for_create(&mut c);
        assert_eq!(c["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(c["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(c["spec"]["failedJobsHistoryLimit"], 1);
        assert!(CronJobStrategy.validate(&c).is_empty());
        c["spec"]["timeZone"] = json!("Nowhere/Atlantis");
        assert!(CronJobStrategy
            .validate(&c)
            .iter()
            .any(|e| e.field == "spec.timeZone"));
        c["spec"]["timeZone"] = json!("UTC");
        assert!(CronJobStrategy.validate(&c).is_empty());
        c["spec"]["schedule"] = json!("not a schedule");
        assert!(!CronJobStrategy.validate(&c).is_empty());
    }

    #[test]
    fn sts_ds_pdb() {
        let tmpl = json!({"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "b"}]}});
        let mut s = json!({"kind": "StatefulSet", "metadata": {"name": "s"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": tmpl}});
        StatefulSetStrategy.prepare_for_create(&mut s);
        assert_eq!(s["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(s["spec"]["updateStrategy"]["rollingUpdate"]["partition"], 0);
        assert!(StatefulSetStrategy.validate(&s).is_empty());
        let mut d = json!({"kind": "DaemonSet", "metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": tmpl}});
        DaemonSetStrategy.prepare_for_create(&mut d);
        assert_eq!(
            d["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            1
        );
        assert!(d["spec"]["replicas"].is_null());
        assert!(DaemonSetStrategy.validate(&d).is_empty());
        let p = json!({"spec": {"minAvailable": "50%", "maxUnavailable": 1}});
        assert_eq!(PdbStrategy.validate(&p).len(), 1);
        let p = json!({"spec": {"minAvailable": "150%"}});
        assert_eq!(PdbStrategy.validate(&p).len(), 1);
        assert!(PdbStrategy
            .validate(&json!({"spec": {"maxUnavailable": "25%"}}))
            .is_empty());
    }
}
