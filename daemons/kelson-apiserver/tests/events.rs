//! core/v1 and events.k8s.io/v1 Events are one resource: stored once under
//! `/registry/events/` (core/v1 JSON) and converted for events.k8s.io, as upstream. Checked
//! with the real kubectl, raw HTTP (watch frames, Status causes) and the official Python
//! client; plus the migration of events an earlier build stored under the old prefix.

mod common;

use std::time::{Duration, Instant};

use common::ApiCluster;
use kelson_testsupport::{apiserver_args, free_port, ChildGuard, StoreKind};
use serde_json::{json, Value};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The frames of a finished watch response.
fn frames(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(json)
        .collect()
}

const CORE_EVENT: &str = r#"{"apiVersion": "v1", "kind": "Event",
  "metadata": {"name": "p1.core", "labels": {"from": "core"}},
  "involvedObject": {"kind": "Pod", "name": "p1", "namespace": "evs", "fieldPath": "spec.containers{c}"},
  "type": "Normal", "reason": "Scheduled", "message": "assigned evs/p1 to n1", "count": 2,
  "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:01:00Z",
  "source": {"component": "default-scheduler"}}"#;

const V1_EVENT: &str = r#"{"apiVersion": "events.k8s.io/v1", "kind": "Event",
  "metadata": {"name": "p2.v1", "labels": {"from": "v1"}},
  "regarding": {"kind": "Pod", "name": "p2", "namespace": "evs"}, "type": "Warning",
  "reason": "BackOff", "note": "restarting failed container", "action": "Restart",
  "reportingController": "kubelet", "reportingInstance": "n1",
  "eventTime": "2024-01-01T00:00:00.000000Z"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn core_and_events_k8s_io_share_one_resource() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    c.ok(&["create", "namespace", "evs"]);
    c.ok_in(&["-n", "evs", "create", "-f", "-"], CORE_EVENT);
    c.ok_in(&["-n", "evs", "create", "-f", "-"], V1_EVENT);

    // Both groups list both events, each in its own shape.
    let v1 = json(&c.ok(&["-n", "evs", "get", "events.v1.events.k8s.io", "-o", "json"]));
    let core = json(&c.ok(&["-n", "evs", "get", "events", "-o", "json"]));
    let names = |l: &Value| -> Vec<String> {
        let mut n: Vec<String> = l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&v1), ["p1.core", "p2.v1"], "{v1}");
    assert_eq!(names(&core), ["p1.core", "p2.v1"], "{core}");
    let find = |l: &Value, n: &str| -> Value {
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == n)
            .cloned()
            .unwrap()
    };
    let e = find(&v1, "p1.core");
    assert_eq!(e["apiVersion"], "events.k8s.io/v1", "{e}");
    assert_eq!(e["note"], "assigned evs/p1 to n1");
    assert_eq!(e["regarding"]["fieldPath"], "spec.containers{c}");
    assert_eq!(e["deprecatedCount"], 2);
    assert_eq!(e["deprecatedSource"]["component"], "default-scheduler");
    assert_eq!(e["deprecatedFirstTimestamp"], "2024-01-01T00:00:00Z");
    assert!(
        e.get("message").is_none() && e.get("involvedObject").is_none(),
        "{e}"
    );
    let e = find(&core, "p2.v1");
    assert_eq!(e["apiVersion"], "v1", "{e}");
    assert_eq!(e["message"], "restarting failed container");
    assert_eq!(e["involvedObject"]["name"], "p2");
    assert_eq!(e["reportingComponent"], "kubelet");
    assert_eq!(e["reportingInstance"], "n1");
    assert_eq!(e["eventTime"], "2024-01-01T00:00:00.000000Z");
    assert!(
        e.get("note").is_none() && e.get("regarding").is_none(),
        "{e}"
    );

    // One object, one resourceVersion and uid whichever group reads it.
    let get = |res: &str, name: &str| json(&c.ok(&["-n", "evs", "get", res, name, "-o", "json"]));
    let a = get("events", "p2.v1");
    let b = get("events.v1.events.k8s.io", "p2.v1");
    assert_eq!(a["metadata"]["uid"], b["metadata"]["uid"]);
    assert_eq!(
        a["metadata"]["resourceVersion"],
        b["metadata"]["resourceVersion"]
    );
    // The watch cache's versioned GET converts too (resourceVersion=0 is served from it).
    let cached = c
        .get("/apis/events.k8s.io/v1/namespaces/evs/events/p1.core?resourceVersion=0")
        .await;
    assert_eq!(cached.status, 200, "{}", cached.text());
    assert_eq!(cached.json()["note"], "assigned evs/p1 to n1");
    assert_eq!(cached.json()["apiVersion"], "events.k8s.io/v1");

    // Tables: upstream's columns in both groups, the same rows.
    let t_core = c.ok(&["-n", "evs", "get", "events", "-o", "wide"]);
    let t_v1 = c.ok(&["-n", "evs", "get", "events.v1.events.k8s.io", "-o", "wide"]);
    for t in [&t_core, &t_v1] {
        let header = t.lines().next().unwrap_or_default();
        for col in [
            "LAST SEEN",
            "TYPE",
            "REASON",
            "OBJECT",
            "SUBOBJECT",
            "SOURCE",
            "MESSAGE",
        ] {
            assert!(header.contains(col), "{col} missing: {t}");
        }
        assert!(t.contains("pod/p1") && t.contains("pod/p2"), "{t}");
        assert!(
            t.contains("default-scheduler") && t.contains("kubelet, n1"),
            "{t}"
        );
    }

    // Field selectors: each group's labels.
    let sel =
        |res: &str, s: &str| c.ok(&["-n", "evs", "get", res, "--field-selector", s, "-o", "name"]);
    let only = |out: String, name: &str| {
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains(name), "{out}");
    };
    only(sel("events", "involvedObject.name=p2"), "p2.v1");
    only(sel("events", "reportingComponent=kubelet"), "p2.v1");
    only(sel("events", "source=default-scheduler"), "p1.core");
    only(
        sel("events", "involvedObject.fieldPath=spec.containers{c}"),
        "p1.core",
    );
    only(
        sel("events.v1.events.k8s.io", "regarding.name=p1"),
        "p1.core",
    );
    only(
        sel("events.v1.events.k8s.io", "reportingController=kubelet"),
        "p2.v1",
    );
    only(
        sel("events.v1.events.k8s.io", "type=Warning,reason=BackOff"),
        "p2.v1",
    );
    let e = c.fails(
        &[
            "-n",
            "evs",
            "get",
            "events.v1.events.k8s.io",
            "--field-selector",
            "involvedObject.name=p1",
        ],
        None,
    );
    assert!(
        e.contains("field label not supported: involvedObject.name"),
        "{e}"
    );
    let e = c.fails(
        &[
            "-n",
            "evs",
            "get",
            "events",
            "--field-selector",
            "regarding.name=p1",
        ],
        None,
    );
    assert!(
        e.contains("field label not supported: regarding.name"),
        "{e}"
    );

    // Patches through the other group (JSON merge and JSON patch); the mutable part only.
    c.ok(&[
        "-n",
        "evs",
        "patch",
        "events.v1.events.k8s.io",
        "p1.core",
        "--type",
        "merge",
        "-p",
        r#"{"metadata": {"labels": {"patched": "v1"}}}"#,
    ]);
    c.ok(&[
        "-n",
        "evs",
        "patch",
        "events",
        "p2.v1",
        "--type",
        "json",
        "-p",
        r#"[{"op": "replace", "path": "/message", "value": "edited through core"}]"#,
    ]);
    assert_eq!(
        get("events", "p1.core")["metadata"]["labels"]["patched"],
        "v1"
    );
    assert_eq!(
        get("events.v1.events.k8s.io", "p2.v1")["note"],
        "edited through core"
    );
    // events.k8s.io keeps everything but metadata and series immutable.
    let e = c.fails(
        &[
            "-n",
            "evs",
            "patch",
            "events.v1.events.k8s.io",
            "p2.v1",
            "--type",
            "merge",
            "-p",
            r#"{"note": "edited through v1"}"#,
        ],
        None,
    );
    assert!(
        e.contains("\"p2.v1\" is invalid")
            && e.contains("message: Invalid value: \"edited through v1\": field is immutable"),
        "{e}"
    );
    c.ok(&[
        "-n",
        "evs",
        "patch",
        "events.v1.events.k8s.io",
        "p2.v1",
        "--type",
        "merge",
        "-p",
        r#"{"series": {"count": 3, "lastObservedTime": "2024-01-01T00:05:00.000000Z"}}"#,
    ]);
    assert_eq!(get("events", "p2.v1")["series"]["count"], 3);
    // Strategic merge patches work in both groups (events have no merge keys: a merge).
    for (res, label) in [
        ("events.v1.events.k8s.io", "smp-v1"),
        ("events", "smp-core"),
    ] {
        c.ok(&[
            "-n",
            "evs",
            "patch",
            res,
            "p2.v1",
            "--type",
            "strategic",
            "-p",
            &format!(r#"{{"metadata": {{"labels": {{"{label}": "yes"}}}}}}"#),
        ]);
    }
    let labels = &get("events.v1.events.k8s.io", "p2.v1")["metadata"]["labels"];
    assert_eq!(
        (&labels["smp-v1"], &labels["smp-core"], &labels["from"]),
        (&json!("yes"), &json!("yes"), &json!("v1")),
        "{labels}"
    );

    // Delete through the other group.
    c.ok(&["-n", "evs", "delete", "events.v1.events.k8s.io", "p1.core"]);
    let e = c.fails(&["-n", "evs", "get", "events", "p1.core"], None);
    assert!(e.contains("NotFound"), "{e}");
    c.ok(&["-n", "evs", "delete", "events", "p2.v1"]);
    let e = c.fails(
        &["-n", "evs", "get", "events.v1.events.k8s.io", "p2.v1"],
        None,
    );
    assert!(e.contains("NotFound"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn watches_of_each_group_see_the_other_groups_writes() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    c.ok(&["create", "namespace", "evs"]);
    let list = c.get("/api/v1/namespaces/evs/events").await;
    let rv = list.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .send_json("POST", "/api/v1/namespaces/evs/events", &json(CORE_EVENT))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c
        .send_json(
            "POST",
            "/apis/events.k8s.io/v1/namespaces/evs/events",
            &json(V1_EVENT),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["apiVersion"], "events.k8s.io/v1");
    assert_eq!(r.json()["note"], "restarting failed container");
    let r = c
        .request(
            Some("admin"),
            "DELETE",
            "/apis/events.k8s.io/v1/namespaces/evs/events/p1.core",
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["note"],
        "assigned evs/p1 to n1",
        "the deleted object, converted"
    );

    // From a version (the cache's ring), with bookmarks: every frame in the request's group.
    for (path, api_version, text_field) in [
        (
            "/apis/events.k8s.io/v1/namespaces/evs/events",
            "events.k8s.io/v1",
            "note",
        ),
        ("/api/v1/namespaces/evs/events", "v1", "message"),
    ] {
        let w = c
            .get(&format!(
                "{path}?watch=true&resourceVersion={rv}&timeoutSeconds=2&allowWatchBookmarks=true"
            ))
            .await;
        assert_eq!(w.status, 200, "{}", w.text());
        let fs = frames(&w.text());
        let objects: Vec<&Value> = fs.iter().filter(|f| f["type"] != "BOOKMARK").collect();
        let types: Vec<&str> = objects
            .iter()
            .map(|f| f["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["ADDED", "ADDED", "DELETED"], "{path}: {fs:?}");
        for f in &fs {
            assert_eq!(f["object"]["apiVersion"], api_version, "{path}: {f}");
            assert_eq!(f["object"]["kind"], "Event", "{path}: {f}");
        }
        assert_eq!(objects[0]["object"][text_field], "assigned evs/p1 to n1");
        assert_eq!(
            objects[1]["object"][text_field],
            "restarting failed container"
        );
        assert_eq!(objects[2]["object"]["metadata"]["name"], "p1.core");
    }

    // Initial state (resourceVersion unset) and a selector of events.k8s.io's labels.
    let w = c
        .get("/apis/events.k8s.io/v1/namespaces/evs/events?watch=true&timeoutSeconds=1&fieldSelector=regarding.name%3Dp2")
        .await;
    let fs = frames(&w.text());
    assert_eq!(fs.len(), 1, "{fs:?}");
    assert_eq!(fs[0]["type"], "ADDED");
    assert_eq!(fs[0]["object"]["regarding"]["name"], "p2");
    // A Table watch of events.k8s.io prints the converted object.
    let w = c
        .request(
            Some("admin"),
            "GET",
            "/apis/events.k8s.io/v1/namespaces/evs/events?watch=true&timeoutSeconds=1",
            &[("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")],
            vec![],
        )
        .await;
    let fs = frames(&w.text());
    assert_eq!(fs.len(), 1, "{fs:?}");
    let cells = &fs[0]["object"]["rows"][0]["cells"];
    assert_eq!(cells[3], "pod/p2", "{cells}");
    assert_eq!(cells[6], "restarting failed container", "{cells}");

    // A live watch through kubectl sees a write through the other group.
    let wfile = c.dir.path().join("watch.out");
    let mut watcher = std::process::Command::new(common::KUBECTL)
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .args([
            "-n",
            "evs",
            "get",
            "events.v1.events.k8s.io",
            "-w",
            "-o",
            "jsonpath={.metadata.name}={.note}{\"\\n\"}",
        ])
        .stdout(std::fs::File::create(&wfile).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seen = |needle: &str| {
        let start = Instant::now();
        loop {
            let s = std::fs::read_to_string(&wfile).unwrap_or_default();
            if s.contains(needle) || start.elapsed() > Duration::from_secs(10) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let s = seen("p2.v1=");
    assert!(s.contains("p2.v1=restarting failed container"), "{s}");
    c.ok_in(
        &["-n", "evs", "create", "-f", "-"],
        &CORE_EVENT.replace("p1.core", "p3.core"),
    );
    let s = seen("p3.core=");
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(s.contains("p3.core=assigned evs/p1 to n1"), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_events_k8s_io_writes_get_422_with_causes() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    c.ok(&["create", "namespace", "evs"]);
    let path = "/apis/events.k8s.io/v1/namespaces/evs/events";
    let causes = |r: &common::Resp| -> Vec<(String, String)> {
        r.json()["details"]["causes"]
            .as_array()
            .unwrap_or(&vec![])
            .iter()
            .map(|c| {
                (
                    c["field"].as_str().unwrap_or_default().to_string(),
                    c["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let has = |r: &common::Resp, field: &str, reason: &str| {
        assert!(
            causes(r).contains(&(field.to_string(), reason.to_string())),
            "{field} {reason}: {}",
            r.text()
        );
    };
    // Nothing but a name: eventTime and type.
    let r = c
        .send_json("POST", path, &json!({"metadata": {"name": "bare"}}))
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["reason"], "Invalid");
    assert_eq!(r.json()["details"]["group"], "events.k8s.io");
    assert_eq!(r.json()["details"]["kind"], "Event");
    has(&r, "eventTime", "FieldValueRequired");
    has(&r, "type", "FieldValueInvalid");
    // With eventTime: the reporter, action and reason are required; note is bounded.
    let mut ev = json(V1_EVENT);
    for f in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        ev.as_object_mut().unwrap().remove(f);
    }
    ev["note"] = json!("x".repeat(1025));
    ev["deprecatedCount"] = json!(4);
    let r = c.send_json("POST", path, &ev).await;
    assert_eq!(r.status, 422, "{}", r.text());
    for f in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        has(&r, f, "FieldValueRequired");
    }
    has(&r, "message", "FieldValueInvalid");
    has(&r, "count", "FieldValueInvalid");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("Event.events.k8s.io \"p2.v1\" is invalid: "),
        "{}",
        r.text()
    );
    // kubectl prints the same.
    let e = c.fails(
        &["-n", "evs", "create", "-f", "-"],
        Some(&V1_EVENT.replace("\"Warning\"", "\"Info\"")),
    );
    assert!(
        e.contains("type: Invalid value: \"\": has invalid value: Info"),
        "{e}"
    );
    // core/v1 takes what events.k8s.io refuses (its validation is upstream's legacy one).
    let r = c
        .send_json(
            "POST",
            "/api/v1/namespaces/evs/events",
            &json!({"metadata": {"name": "legacy"}, "involvedObject": {"kind": "Pod", "name": "p", "namespace": "evs"}, "count": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // ... and an update through events.k8s.io then validates the whole object (eventTime and
    // friends are not required while eventTime is unset) and its immutable fields.
    let mut cur = c
        .get("/apis/events.k8s.io/v1/namespaces/evs/events/legacy")
        .await
        .json();
    cur["regarding"]["name"] = json!("other");
    let r = c
        .send_json(
            "PUT",
            "/apis/events.k8s.io/v1/namespaces/evs/events/legacy",
            &cur,
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    has(&r, "involvedObject", "FieldValueInvalid");
    // Unknown fields of events.k8s.io (e.g. core's names) under Strict.
    let mut ev = json(V1_EVENT);
    ev["message"] = json!("core's name");
    let r = c
        .send_json("POST", &format!("{path}?fieldValidation=Strict"), &ev)
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("unknown field \\\"message\\\""),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_round_trips_both_groups() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    c.ok(&["create", "namespace", "evs"]);
    let script = r#"
import json, sys, datetime
from kubernetes import config, client, watch
from kubernetes.client.rest import ApiException
api = client.ApiClient(config.new_client_from_config(sys.argv[1]).configuration)
core = client.CoreV1Api(api)
ev1 = client.EventsV1Api(api)
ns = "evs"
now = datetime.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=datetime.timezone.utc)
out = {}
start_rv = ev1.list_namespaced_event(ns).metadata.resource_version
# core/v1 -> events.k8s.io/v1
core.create_namespaced_event(ns, client.CoreV1Event(
    metadata=client.V1ObjectMeta(name="py-core"),
    involved_object=client.V1ObjectReference(kind="Pod", name="p", namespace=ns),
    reason="Started", message="hello", type="Normal", count=2, event_time=now,
    action="Start", reporting_component="kubelet", reporting_instance="n1",
    source=client.V1EventSource(component="kubelet", host="n1")))
e = ev1.read_namespaced_event("py-core", ns)
out["v1_of_core"] = {"note": e.note, "regarding": e.regarding.name, "count": e.deprecated_count,
    "controller": e.reporting_controller, "source": e.deprecated_source.host,
    "api_version": e.api_version}
# events.k8s.io/v1 -> core/v1
ev1.create_namespaced_event(ns, client.EventsV1Event(
    metadata=client.V1ObjectMeta(name="py-v1"), event_time=now,
    reporting_controller="example.com/ctl", reporting_instance="ctl-1", action="Sync",
    reason="Synced", type="Normal", note="from v1",
    regarding=client.V1ObjectReference(kind="Pod", name="q", namespace=ns)))
e = core.read_namespaced_event("py-v1", ns)
out["core_of_v1"] = {"message": e.message, "involved": e.involved_object.name,
    "component": e.reporting_component, "api_version": e.api_version}
out["lists"] = [sorted(i.metadata.name for i in core.list_namespaced_event(ns).items),
                sorted(i.metadata.name for i in ev1.list_namespaced_event(ns).items)]
# A JSON patch through events.k8s.io, read back through core.
ev1.patch_namespaced_event("py-core", ns, [{"op": "add", "path": "/series",
    "value": {"count": 2, "lastObservedTime": "2024-01-01T00:01:00.000000Z"}}])
out["series"] = core.read_namespaced_event("py-core", ns).series.count
# The watch of events.k8s.io from before both writes sees both, converted.
seen = []
for ev in watch.Watch().stream(ev1.list_namespaced_event, ns, resource_version=start_rv, timeout_seconds=2):
    seen.append([ev["type"], ev["object"].metadata.name, ev["object"].note, ev["object"].api_version])
out["watch"] = seen
# Delete through core, gone from events.k8s.io.
core.delete_namespaced_event("py-v1", ns)
try:
    ev1.read_namespaced_event("py-v1", ns)
    out["after_delete"] = None
except ApiException as ex:
    out["after_delete"] = ex.status
# Invalid through events.k8s.io: 422 with causes.
try:
    ev1.create_namespaced_event(ns, client.EventsV1Event(metadata=client.V1ObjectMeta(name="bad"),
        event_time=now, type="Normal",
        regarding=client.V1ObjectReference(kind="Pod", name="p", namespace=ns)))
    out["invalid"] = None
except ApiException as ex:
    body = json.loads(ex.body)
    out["invalid"] = [ex.status, sorted(set(c["field"] for c in body["details"]["causes"]))]
print(json.dumps(out))
"#;
    let v = c.python(script);
    assert_eq!(
        v["v1_of_core"],
        json!({"note": "hello", "regarding": "p", "count": 2, "controller": "kubelet",
               "source": "n1", "api_version": "events.k8s.io/v1"}),
        "{v}"
    );
    assert_eq!(
        v["core_of_v1"],
        json!({"message": "from v1", "involved": "q", "component": "example.com/ctl",
               "api_version": "v1"}),
        "{v}"
    );
    assert_eq!(
        v["lists"],
        json!([["py-core", "py-v1"], ["py-core", "py-v1"]]),
        "{v}"
    );
    assert_eq!(v["series"], 2, "{v}");
    assert_eq!(
        v["watch"],
        json!([
            ["ADDED", "py-core", "hello", "events.k8s.io/v1"],
            ["ADDED", "py-v1", "from v1", "events.k8s.io/v1"],
            ["MODIFIED", "py-core", "hello", "events.k8s.io/v1"]
        ]),
        "{v}"
    );
    assert_eq!(v["after_delete"], 404, "{v}");
    assert_eq!(
        v["invalid"],
        json!([
            422,
            [
                "action",
                "reason",
                "reportingController",
                "reportingInstance"
            ]
        ]),
        "{v}"
    );
}

/// An events.k8s.io Event stored by an earlier build under `/registry/events.k8s.io/events/`
/// is moved to `/registry/events/` by the next server start.
#[tokio::test(flavor = "multi_thread")]
async fn events_of_the_old_prefix_are_migrated_at_start() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    c.ok(&["create", "namespace", "evs"]);
    let mut kv = c.store.client().await.unwrap();
    let old_key = "/registry/events.k8s.io/events/evs/old.1";
    let mut old = json(V1_EVENT);
    old["metadata"] = json!({"name": "old.1", "namespace": "evs", "uid": "0b3c0c4e-0000-4000-8000-000000000001",
        "creationTimestamp": "2024-01-01T00:00:00Z"});
    kv.put(old_key, old.to_string(), None).await.unwrap();

    // A second server over the same store: its start migrates.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kelson-apiserver"));
    cmd.arg("--no-dbus")
        .args(apiserver_args(&c.store, &c.dir.path().join("pki"), free_port()).unwrap());
    let second = ChildGuard::spawn(
        "kelson-apiserver-2",
        cmd,
        &c.dir.path().join("apiserver2.log"),
    )
    .unwrap();
    let new_key = "/registry/events/evs/old.1";
    let start = Instant::now();
    let moved = loop {
        let gone = kv.get(old_key, None).await.unwrap().kvs().is_empty();
        let there = !kv.get(new_key, None).await.unwrap().kvs().is_empty();
        if gone && there {
            break true;
        }
        if start.elapsed() > Duration::from_secs(30) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(moved, "not migrated: {}", second.log_tail(30));
    let stored: Value =
        serde_json::from_slice(kv.get(new_key, None).await.unwrap().kvs()[0].value()).unwrap();
    assert_eq!(stored["apiVersion"], "v1", "stored as core/v1: {stored}");
    assert_eq!(stored["message"], "restarting failed container");
    assert_eq!(
        stored["metadata"]["uid"],
        "0b3c0c4e-0000-4000-8000-000000000001"
    );
    // The first server (whose cache watches the shared prefix) serves it in both groups.
    let start = Instant::now();
    loop {
        let out = c.kubectl(&[
            "-n",
            "evs",
            "get",
            "events.v1.events.k8s.io",
            "old.1",
            "-o",
            "json",
        ]);
        if out.status.success() {
            let e = json(&String::from_utf8_lossy(&out.stdout));
            assert_eq!(e["note"], "restarting failed container");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let core = json(&c.ok(&["-n", "evs", "get", "events", "old.1", "-o", "json"]));
    assert_eq!(core["involvedObject"]["name"], "p2");
    drop(second);
}
