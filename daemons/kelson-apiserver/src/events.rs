//! events.k8s.io/v1 Events: the core/v1 Event resource served in a second group.
//!
//! Upstream keeps one Event resource: objects live under `/registry/events/<ns>/<name>` as
//! core/v1 JSON and the events.k8s.io/v1 endpoints convert on every read, list, watch and
//! write (k8s.io/kubernetes `pkg/apis/events/v1/conversion.go`). So does Kelson:
//! - storage: kelson-apiresources' `ResourceInfo::shared_storage` sends events.k8s.io Events
//!   to the core prefix (`registry::ResourceExt::key_prefix`), which gives both groups one
//!   watch cache too;
//! - conversion: the handlers' conversion hooks (`crd::conversion`: `to_request`,
//!   `to_storage`, `output`, `output_list`, `watch_event`, `converts`) defer to [`to_request`],
//!   [`to_storage`] and [`output`] here for events.k8s.io. Objects in the cache and the store
//!   are core/v1 bytes, so `converts` also turns off the handlers' byte-splicing fast paths
//!   (spliced lists, shared watch frames, raw cached GETs) for events.k8s.io requests: those
//!   decode, convert and encode each object. core/v1 requests keep the fast paths;
//! - the renamed fields: `involvedObject`↔`regarding`, `message`↔`note`, `count`↔
//!   `deprecatedCount`, `firstTimestamp`↔`deprecatedFirstTimestamp`, `lastTimestamp`↔
//!   `deprecatedLastTimestamp`, `source`↔`deprecatedSource`, `reportingComponent`↔
//!   `reportingController`; `reportingInstance`, `related`, `series`, `action`, `reason`,
//!   `type`, `eventTime` and `metadata` carry over. Fields neither schema has are dropped by a
//!   conversion (upstream never stores them: its decoder drops them before conversion);
//! - field selectors: events.k8s.io's labels (`regarding.kind`, `reportingController`, ...)
//!   are renamed to core's ([`field_label`], upstream's `AddFieldLabelConversionsForEvent`)
//!   and matched against the stored core object, so one filter serves both groups;
//! - validation: writes through events.k8s.io/v1 are validated as upstream's
//!   `ValidateEventCreate`/`ValidateEventUpdate` for that version ([`EventsV1Strategy`]),
//!   on the core form, so causes name core's fields as upstream's do (`message`, not `note`).
//!   core/v1 writes get upstream's "legacy" checks only ([`CoreEventStrategy`]: the event's
//!   namespace must agree with the involved object's, and an event with `eventTime` set must
//!   name its reporter, action and reason), as `ValidateEventCreate/Update` do for core/v1.
//!
//! Data written by earlier Kelson builds under the old `/registry/events.k8s.io/events/`
//! prefix is **migrated** at start ([`migrate_legacy`], called from `bootstrap`): each object
//! is converted, created under `/registry/events/` and removed from the old key. Migrating
//! once is simpler and cheaper than reading both prefixes on every request (two caches, merged
//! lists and watches, continue tokens over two prefixes) and events are short-lived anyway.
//! In a rolling upgrade of several API servers, events an old-build server writes after the
//! migration stay under the old prefix until a new-build server starts again (every start
//! migrates; an empty old prefix costs one list).

use std::borrow::Cow;
use std::sync::Arc;

use kelson_apimachinery::field;
use kelson_apimachinery::validation::is_qualified_name;
use kelson_apimachinery::{ApiError, StatusCause};
use kelson_apistorage::{ListOptions, Preconditions, StorageError};
use serde_json::{Map, Value};

use crate::registry::ResourceInfo;
use crate::server::Api;
use crate::strategy::Strategy;

/// The events API group.
pub const GROUP: &str = "events.k8s.io";
/// `apiVersion` of events.k8s.io/v1 objects.
pub const API_VERSION: &str = "events.k8s.io/v1";
/// `apiVersion` of the stored (core/v1) objects.
pub const CORE_API_VERSION: &str = "v1";

/// core/v1 field ↔ events.k8s.io/v1 field, for the fields the two versions name differently.
const RENAMED: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("count", "deprecatedCount"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("source", "deprecatedSource"),
    ("reportingComponent", "reportingController"),
];

/// Fields both versions name alike.
const SHARED: [&str; 8] = [
    "metadata",
    "reason",
    "type",
    "eventTime",
    "series",
    "action",
    "related",
    "reportingInstance",
];

/// Limits of upstream's `legacyValidateEvent`.
const REPORTING_INSTANCE_LIMIT: usize = 128;
const ACTION_LIMIT: usize = 128;
const REASON_LIMIT: usize = 128;
const NOTE_LIMIT: usize = 1024;

/// Whether `info` is events.k8s.io's Event (served from the core Event storage).
pub fn is_events_v1(info: &ResourceInfo) -> bool {
    info.group == GROUP && info.kind == "Event"
}

/// Whether objects of `info` are converted on their way in and out.
pub fn converts(info: &ResourceInfo) -> bool {
    is_events_v1(info)
}

fn is_event(obj: &Value) -> bool {
    obj["kind"] == "Event"
}

/// Moves the known fields of `from` into a new object of `api_version`, renaming by `rename`.
fn convert(from: Value, api_version: &str, rename: impl Fn(&str) -> Option<&'static str>) -> Value {
    let Value::Object(from) = from else {
        return from;
    };
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::from(api_version));
    out.insert("kind".into(), Value::from("Event"));
    for (k, v) in from {
        if v.is_null() {
            continue;
        }
        if let Some(to) = rename(&k) {
            out.insert(to.into(), v);
        }
    }
    Value::Object(out)
}

/// A core/v1 Event as events.k8s.io/v1 shows it (anything else passes through).
pub fn core_to_v1(obj: Value) -> Value {
    if !is_event(&obj) || obj["apiVersion"] == API_VERSION {
        return obj;
    }
    convert(obj, API_VERSION, |k| {
        SHARED
            .iter()
            .find(|s| **s == k)
            .copied()
            .or_else(|| RENAMED.iter().find(|(c, _)| *c == k).map(|(_, v)| *v))
    })
}

/// An events.k8s.io/v1 Event as core/v1 stores it (anything else passes through).
pub fn v1_to_core(obj: Value) -> Value {
    if !is_event(&obj) || obj["apiVersion"] == CORE_API_VERSION {
        return obj;
    }
    let mut out = convert(obj, CORE_API_VERSION, |k| {
        SHARED
            .iter()
            .find(|s| **s == k)
            .copied()
            .or_else(|| RENAMED.iter().find(|(_, v)| *v == k).map(|(c, _)| *c))
    });
    // `involvedObject` is required in core/v1 (Go always writes the struct): clients such as
    // the Python client refuse an Event without it.
    if out["involvedObject"].is_null() {
        out["involvedObject"] = Value::Object(Map::new());
    }
    out
}

/// An object as the request's group shows it.
pub fn to_request(info: &ResourceInfo, obj: Value) -> Value {
    if is_events_v1(info) {
        core_to_v1(obj)
    } else {
        obj
    }
}

/// An object as it is stored (core/v1).
pub fn to_storage(info: &ResourceInfo, obj: Value) -> Value {
    if is_events_v1(info) {
        v1_to_core(obj)
    } else {
        obj
    }
}

/// A response's object in the request's group (borrowed when nothing changes).
pub fn output<'a>(info: &ResourceInfo, obj: &'a Value) -> Cow<'a, Value> {
    if is_events_v1(info) && is_event(obj) && obj["apiVersion"] != API_VERSION {
        Cow::Owned(core_to_v1(obj.clone()))
    } else {
        Cow::Borrowed(obj)
    }
}

/// events.k8s.io/v1's field label `label` as the core label it selects on (upstream's
/// `AddFieldLabelConversionsForEvent`); `None`: not a field label of events.k8s.io/v1.
pub fn field_label(label: &str) -> Option<&'static str> {
    Some(match label {
        "reason" => "reason",
        "regarding.kind" => "involvedObject.kind",
        "regarding.namespace" => "involvedObject.namespace",
        "regarding.name" => "involvedObject.name",
        "regarding.uid" => "involvedObject.uid",
        "regarding.apiVersion" => "involvedObject.apiVersion",
        "regarding.resourceVersion" => "involvedObject.resourceVersion",
        "regarding.fieldPath" => "involvedObject.fieldPath",
        "reportingController" => "reportingComponent",
        "source" => "source",
        "type" => "type",
        "metadata.namespace" => "metadata.namespace",
        "metadata.name" => "metadata.name",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Validation (k8s.io/kubernetes pkg/apis/core/validation/events.go)

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Go's zero time: absent, null or empty.
fn zero_time(v: &Value) -> bool {
    text(v).is_empty()
}

/// A value as Go compares it after decoding: null, "", 0, false and empty objects are the
/// zero value (absent fields decode to it), objects compare without their zero fields, and
/// timestamps compare as instants (`2024-01-01T00:00:00Z` = `...00.000000Z`).
fn normalized(v: &Value) -> Value {
    match v {
        Value::String(s) if s.is_empty() => Value::Null,
        Value::String(s) => {
            use time::format_description::well_known::Rfc3339;
            match time::OffsetDateTime::parse(s, &Rfc3339) {
                Ok(t) => Value::from(t.unix_timestamp_nanos().to_string() + "@t"),
                Err(_) => v.clone(),
            }
        }
        Value::Number(n) if n.as_f64() == Some(0.0) => Value::Null,
        Value::Bool(false) => Value::Null,
        Value::Object(m) => {
            let m: Map<String, Value> = m
                .iter()
                .map(|(k, v)| (k.clone(), normalized(v)))
                .filter(|(_, v)| !v.is_null())
                .collect();
            if m.is_empty() {
                Value::Null
            } else {
                Value::Object(m)
            }
        }
        Value::Array(a) if a.is_empty() => Value::Null,
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// Upstream's `legacyValidateEvent`, on a core/v1 Event (every version's writes pass it),
/// naming the reporter field as events.k8s.io/v1 does.
pub fn legacy_causes(ev: &Value) -> Vec<StatusCause> {
    legacy_causes_as(ev, "reportingController")
}

/// `legacyValidateEvent` with the reporter's field named as the request's version names it
/// (`reportingComponent` for core/v1 requests, as upstream).
fn legacy_causes_as(ev: &Value, controller_field: &str) -> Vec<StatusCause> {
    let mut causes = Vec::new();
    let ns = text(&ev["metadata"]["namespace"]);
    let involved_ns = &ev["involvedObject"]["namespace"];
    let mismatch = || {
        field::invalid(
            "involvedObject.namespace",
            &Value::from(text(involved_ns)),
            "does not match event.namespace",
        )
    };
    if zero_time(&ev["eventTime"]) {
        let ok = if text(involved_ns).is_empty() {
            ns.is_empty() || ns == "default"
        } else {
            ns == text(involved_ns)
        };
        if !ok {
            causes.push(mismatch());
        }
        return causes;
    }
    if text(involved_ns).is_empty() && ns != "default" && ns != "kube-system" {
        causes.push(mismatch());
    }
    let controller = text(&ev["reportingComponent"]);
    if controller.is_empty() {
        causes.push(field::required(controller_field, ""));
    }
    for m in is_qualified_name(controller) {
        causes.push(field::invalid_str(controller_field, controller, &m));
    }
    let too_long = |path: &str, limit: usize| {
        field::invalid_str(path, "", &format!("can have at most {limit} characters"))
    };
    for (path, limit) in [
        ("reportingInstance", REPORTING_INSTANCE_LIMIT),
        ("action", ACTION_LIMIT),
        ("reason", REASON_LIMIT),
    ] {
        let v = text(&ev[path]);
        if v.is_empty() {
            causes.push(field::required(path, ""));
        }
        if v.len() > limit {
            causes.push(too_long(path, limit));
        }
    }
    if text(&ev["message"]).len() > NOTE_LIMIT {
        causes.push(too_long("message", NOTE_LIMIT));
    }
    causes
}

/// Upstream's `validateV1EventSeries`.
fn series_causes(ev: &Value) -> Vec<StatusCause> {
    let s = &ev["series"];
    if s.is_null() {
        return Vec::new();
    }
    let mut causes = Vec::new();
    if s["count"].as_i64().unwrap_or(0) < 2 {
        causes.push(field::invalid_str(
            "series.count",
            "",
            "should be at least 2",
        ));
    }
    if zero_time(&s["lastObservedTime"]) {
        causes.push(field::required("series.lastObservedTime", ""));
    }
    causes
}

/// Upstream's `ValidateEventCreate` for events.k8s.io/v1 (object metadata is the handlers').
pub fn create_causes(ev: &Value) -> Vec<StatusCause> {
    let mut causes = legacy_causes(ev);
    causes.extend(series_causes(ev));
    if zero_time(&ev["eventTime"]) {
        causes.push(field::required("eventTime", ""));
    }
    let ty = text(&ev["type"]);
    if ty != "Normal" && ty != "Warning" {
        causes.push(field::invalid_str(
            "type",
            "",
            &format!("has invalid value: {ty}"),
        ));
    }
    for f in ["firstTimestamp", "lastTimestamp"] {
        if !zero_time(&ev[f]) {
            causes.push(field::invalid_str(f, "", "needs to be unset"));
        }
    }
    if ev["count"].as_i64().unwrap_or(0) != 0 {
        causes.push(field::invalid_str("count", "", "needs to be unset"));
    }
    if !text(&ev["source"]["component"]).is_empty() || !text(&ev["source"]["host"]).is_empty() {
        causes.push(field::invalid_str("source", "", "needs to be unset"));
    }
    causes
}

/// Upstream's `ValidateEventUpdate` for events.k8s.io/v1: everything but metadata and
/// `series` is immutable.
pub fn update_causes(new: &Value, old: &Value) -> Vec<StatusCause> {
    let mut causes = legacy_causes(new);
    // `series` is a pointer in Go: `{}` is a (changed) series, absent or null is none.
    let (ns, os) = (&new["series"], &old["series"]);
    if ns.is_null() != os.is_null() || normalized(ns) != normalized(os) {
        causes.extend(series_causes(new));
    }
    for (path, stored) in [
        ("involvedObject", "involvedObject"),
        ("reason", "reason"),
        ("message", "message"),
        ("source", "source"),
        ("firstTimestamp", "firstTimestamp"),
        ("lastTimestamp", "lastTimestamp"),
        ("count", "count"),
        ("type", "type"),
        ("eventTime", "eventTime"),
        ("action", "action"),
        ("related", "related"),
        ("reportingController", "reportingComponent"),
        ("reportingInstance", "reportingInstance"),
    ] {
        if normalized(&new[stored]) != normalized(&old[stored]) {
            causes.push(field::invalid(path, &new[stored], "field is immutable"));
        }
    }
    causes
}

/// events.k8s.io/v1 Events: validated on their core form (see the module doc).
pub struct EventsV1Strategy;

impl Strategy for EventsV1Strategy {
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        create_causes(&v1_to_core(obj.clone()))
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        update_causes(&v1_to_core(new.clone()), &v1_to_core(old.clone()))
    }
}

/// core/v1 Events: upstream's `ValidateEventCreate`/`ValidateEventUpdate` for a core/v1
/// request stop after the legacy checks ("no further validation for backwards
/// compatibility"): no immutable fields, no required `eventTime`.
pub struct CoreEventStrategy;

impl Strategy for CoreEventStrategy {
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        legacy_causes_as(obj, "reportingComponent")
    }
    fn validate_update(&self, new: &Value, _old: &Value) -> Vec<StatusCause> {
        legacy_causes_as(new, "reportingComponent")
    }
}

// ---------------------------------------------------------------------------------------------
// Migration of the old events.k8s.io prefix

/// How many objects one pass of [`migrate_legacy`] reads at a time.
const MIGRATE_PAGE: i64 = 500;
/// Bound on pages (500 000 events; a store with more is migrated by the next start).
const MIGRATE_MAX_PAGES: usize = 1000;

/// Moves Events that earlier Kelson builds stored under `/registry/events.k8s.io/events/`
/// to `/registry/events/` as core/v1 JSON. An Event whose name is taken in the new place is
/// dropped (the two groups share one name space now; events are best-effort records).
/// Returns how many objects were moved.
pub async fn migrate_legacy(api: &Arc<Api>) -> Result<usize, ApiError> {
    let root = api.root.trim_end_matches('/');
    let old_prefix = format!("{root}/{GROUP}/events/");
    let core = crate::registry::lookup("", "v1", "events").expect("core events are registered");
    let mut moved = 0;
    for _ in 0..MIGRATE_MAX_PAGES {
        let opts = ListOptions {
            limit: MIGRATE_PAGE,
            ..Default::default()
        };
        let page = api
            .store
            .list(&old_prefix, &opts, None)
            .await
            .map_err(|e| e.to_api_error(GROUP, "events", ""))?;
        if page.items.is_empty() {
            break;
        }
        for old in page.items {
            let ns = text(&old["metadata"]["namespace"]).to_string();
            let name = text(&old["metadata"]["name"]).to_string();
            let uid = old["metadata"]["uid"].as_str().map(String::from);
            let mut obj = v1_to_core(old);
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            let new_key = crate::handlers::key(api, core, Some(&ns), &name);
            match api.store.create(&new_key, obj, false).await {
                Ok(_) => moved += 1,
                Err(StorageError::AlreadyExists { .. }) => {
                    tracing::warn!(namespace = %ns, %name,
                        "events.k8s.io Event from an earlier build has the name of a core Event; dropping it");
                }
                Err(e) => return Err(e.to_api_error("", "events", &name)),
            }
            let old_key = format!("{old_prefix}{ns}/{name}");
            let pre = Preconditions {
                uid,
                resource_version: None,
            };
            match api
                .store
                .delete(&old_key, &pre, false, |_| Ok::<_, ApiError>(()))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into_api_error(GROUP, "events", &name)),
            }
        }
    }
    if moved > 0 {
        tracing::info!(
            moved,
            "moved events.k8s.io Events of an earlier build to /registry/events"
        );
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn core_event() -> Value {
        json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "p.1", "namespace": "d", "uid": "u", "resourceVersion": "5"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "d", "uid": "pu"},
            "reason": "Started", "message": "started container", "count": 3,
            "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:01:00Z",
            "source": {"component": "kubelet", "host": "n1"}, "type": "Normal",
            "eventTime": "2024-01-01T00:00:00.000000Z", "action": "Start",
            "related": {"kind": "Node", "name": "n1"},
            "series": {"count": 2, "lastObservedTime": "2024-01-01T00:01:00.000000Z"},
            "reportingComponent": "kubelet", "reportingInstance": "n1"})
    }

    #[test]
    fn core_events_get_upstreams_legacy_checks_only() {
        let s = CoreEventStrategy;
        let mut ev = core_event();
        ev["metadata"]["namespace"] = json!("evs");
        ev["involvedObject"]["namespace"] = json!("evs");
        ev["eventTime"] = Value::Null;
        assert!(s.validate(&ev).is_empty(), "{:?}", s.validate(&ev));
        // The namespaces must agree.
        ev["involvedObject"]["namespace"] = json!("other");
        let c = s.validate(&ev);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].field, "involvedObject.namespace");
        // A cluster-scoped object's events live in "default" (or no namespace).
        ev["involvedObject"]["namespace"] = Value::Null;
        ev["metadata"]["namespace"] = json!("default");
        assert!(s.validate(&ev).is_empty());
        ev["metadata"]["namespace"] = json!("evs");
        assert_eq!(s.validate(&ev).len(), 1);
        // With eventTime set: reporter (named as core/v1 names it), instance, action, reason.
        let new_style = json!({"metadata": {"namespace": "evs"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "evs"},
            "eventTime": "2024-01-01T00:00:00.000000Z"});
        let fields: Vec<String> = s
            .validate(&new_style)
            .into_iter()
            .map(|c| c.field)
            .collect();
        for f in [
            "reportingComponent",
            "reportingInstance",
            "action",
            "reason",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} missing in {fields:?}");
        }
        // No immutable fields through core/v1.
        let mut changed = core_event();
        changed["metadata"]["namespace"] = json!("evs");
        changed["involvedObject"]["namespace"] = json!("evs");
        changed["message"] = json!("changed");
        assert!(s.validate_update(&changed, &core_event()).is_empty());
    }

    #[test]
    fn conversion_renames_every_field_and_round_trips() {
        let v1 = core_to_v1(core_event());
        assert_eq!(
            v1,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"name": "p.1", "namespace": "d", "uid": "u", "resourceVersion": "5"},
                "regarding": {"kind": "Pod", "name": "p", "namespace": "d", "uid": "pu"},
                "reason": "Started", "note": "started container", "deprecatedCount": 3,
                "deprecatedFirstTimestamp": "2024-01-01T00:00:00Z",
                "deprecatedLastTimestamp": "2024-01-01T00:01:00Z",
                "deprecatedSource": {"component": "kubelet", "host": "n1"}, "type": "Normal",
                "eventTime": "2024-01-01T00:00:00.000000Z", "action": "Start",
                "related": {"kind": "Node", "name": "n1"},
                "series": {"count": 2, "lastObservedTime": "2024-01-01T00:01:00.000000Z"},
                "reportingController": "kubelet", "reportingInstance": "n1"})
        );
        assert_eq!(v1_to_core(v1.clone()), core_event());
        // Already in the wanted version, or not an Event: untouched.
        assert_eq!(core_to_v1(v1.clone()), v1);
        let status = json!({"kind": "Status", "apiVersion": "v1", "code": 404});
        assert_eq!(core_to_v1(status.clone()), status);
        assert_eq!(v1_to_core(status.clone()), status);
    }

    #[test]
    fn conversion_drops_foreign_fields_and_fills_involved_object() {
        let core = v1_to_core(json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e"}, "message": "not a v1 field", "note": "n", "bogus": 1}));
        assert_eq!(
            core,
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
                   "message": "n", "involvedObject": {}})
        );
        let v1 = core_to_v1(json!({"apiVersion": "v1", "kind": "Event", "metadata": {},
            "note": "stale", "message": "m", "count": null}));
        assert_eq!(
            v1,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {}, "note": "m"})
        );
    }

    #[test]
    fn output_borrows_unless_converting() {
        let core = registry_info("");
        let ev1 = registry_info(GROUP);
        let obj = core_event();
        assert!(matches!(output(core, &obj), Cow::Borrowed(_)));
        assert!(matches!(output(ev1, &obj), Cow::Owned(ref o) if o["note"] == "started container"));
        let v1 = core_to_v1(obj);
        assert!(matches!(output(ev1, &v1), Cow::Borrowed(_)));
        assert!(converts(ev1) && !converts(core));
        assert_eq!(to_storage(ev1, v1.clone())["message"], "started container");
        assert_eq!(to_request(ev1, to_storage(ev1, v1.clone())), v1);
        assert_eq!(
            to_storage(core, v1.clone()),
            v1,
            "core requests never convert"
        );
    }

    fn registry_info(group: &str) -> &'static ResourceInfo {
        let version = "v1";
        crate::registry::lookup(group, version, "events").unwrap()
    }

    #[test]
    fn field_labels_map_to_core() {
        assert_eq!(field_label("regarding.name"), Some("involvedObject.name"));
        assert_eq!(
            field_label("reportingController"),
            Some("reportingComponent")
        );
        assert_eq!(field_label("involvedObject.name"), None);
        assert_eq!(field_label("note"), None);
    }

    fn fields(causes: &[StatusCause]) -> Vec<(&str, &str)> {
        causes
            .iter()
            .map(|c| (c.field.as_str(), c.message.as_str()))
            .collect()
    }

    fn v1_event() -> Value {
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "p.1", "namespace": "d"},
            "regarding": {"kind": "Pod", "name": "p", "namespace": "d"},
            "eventTime": "2024-01-01T00:00:00.000000Z", "reportingController": "example.com/ctl",
            "reportingInstance": "ctl-1", "action": "Sync", "reason": "Synced", "type": "Normal",
            "note": "ok"})
    }

    #[test]
    fn create_validation_is_upstreams() {
        let s = EventsV1Strategy;
        assert!(
            s.validate(&v1_event()).is_empty(),
            "{:?}",
            s.validate(&v1_event())
        );
        let mut bad = v1_event();
        let m = bad.as_object_mut().unwrap();
        for f in [
            "eventTime",
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
        ] {
            m.remove(f);
        }
        bad["type"] = json!("Info");
        bad["note"] = json!("x".repeat(1025));
        bad["deprecatedCount"] = json!(2);
        bad["deprecatedSource"] = json!({"component": "c"});
        let causes = s.validate(&bad);
        assert_eq!(
            fields(&causes),
            [
                ("eventTime", "Required value"),
                ("type", "Invalid value: \"\": has invalid value: Info"),
                ("count", "Invalid value: \"\": needs to be unset"),
                ("source", "Invalid value: \"\": needs to be unset"),
            ],
            "without eventTime the legacy checks are the namespace ones only"
        );
        let mut bad = v1_event();
        bad["metadata"]["namespace"] = json!("other");
        bad["regarding"] = json!({"kind": "Pod", "name": "p"});
        bad["reportingController"] = json!("");
        bad["note"] = json!("x".repeat(1025));
        bad["action"] = json!("a".repeat(129));
        bad["series"] = json!({"count": 1});
        bad["deprecatedFirstTimestamp"] = json!("2024-01-01T00:00:00Z");
        let causes = s.validate(&bad);
        let name_msgs: Vec<String> = is_qualified_name("")
            .iter()
            .map(|m| format!("Invalid value: \"\": {m}"))
            .collect();
        assert!(!name_msgs.is_empty());
        let mut want = vec![
            (
                "involvedObject.namespace",
                "Invalid value: \"\": does not match event.namespace",
            ),
            ("reportingController", "Required value"),
        ];
        want.extend(
            name_msgs
                .iter()
                .map(|m| ("reportingController", m.as_str())),
        );
        want.extend([
            (
                "action",
                "Invalid value: \"\": can have at most 128 characters",
            ),
            (
                "message",
                "Invalid value: \"\": can have at most 1024 characters",
            ),
            ("series.count", "Invalid value: \"\": should be at least 2"),
            ("series.lastObservedTime", "Required value"),
            ("firstTimestamp", "Invalid value: \"\": needs to be unset"),
        ]);
        assert_eq!(fields(&causes), want);
        // Cluster-scoped objects: events of the default namespace may leave regarding's empty.
        let mut node = v1_event();
        node["metadata"]["namespace"] = json!("default");
        node["regarding"] = json!({"kind": "Node", "name": "n1"});
        assert!(s.validate(&node).is_empty());
    }

    #[test]
    fn update_validation_keeps_all_but_series_and_metadata() {
        let s = EventsV1Strategy;
        let old = v1_event();
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({"a": "b"});
        new["series"] = json!({"count": 2, "lastObservedTime": "2024-01-01T00:02:00.000000Z"});
        // Same instant, other spelling; an empty object is Go's zero struct.
        new["eventTime"] = json!("2024-01-01T00:00:00Z");
        new["related"] = json!({});
        assert!(
            s.validate_update(&new, &old).is_empty(),
            "{:?}",
            s.validate_update(&new, &old)
        );
        new["note"] = json!("changed");
        new["regarding"]["name"] = json!("q");
        new["reportingController"] = json!("other");
        new["series"] = json!({"count": 0});
        let causes = s.validate_update(&new, &old);
        let f: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            f,
            [
                "series.count",
                "series.lastObservedTime",
                "involvedObject",
                "message",
                "reportingController"
            ]
        );
        assert_eq!(
            causes[3].message,
            "Invalid value: \"changed\": field is immutable"
        );
    }
}
