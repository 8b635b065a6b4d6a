//! Server-side printing: `metav1.Table` for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`.
//!
//! kubectl's `get` renders these tables as they come (its own printers are only a fallback), so
//! the column sets follow upstream's printers for the kinds people look at most: pods, nodes,
//! namespaces, services, deployments, replicasets, configmaps, secrets, persistent volumes and
//! claims, events (core/v1 and
//! events.k8s.io/v1 alike: upstream converts both to one internal Event before printing); every
//! other kind gets NAME and AGE. Columns with priority 1 appear only with `-o wide`. Each row carries the object
//! as `PartialObjectMetadata` (default `includeObject=Metadata`), the full object
//! (`includeObject=Object`) or nothing (`None`), as upstream.

use kelson_apimachinery::table::{ColumnDefinition, IncludeObject, Table};

/// Canonical quantities for the PV and PVC columns.
#[path = "quantity.rs"]
mod quantity;
use serde_json::{json, Value};

/// kubectl's AGE of an object, from its creationTimestamp.
fn age(obj: &Value) -> String {
    kelson_apimachinery::table::age(
        obj["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default(),
        time::OffsetDateTime::now_utc(),
    )
}

struct Col(&'static str, &'static str, u8, &'static str);

fn columns(kind: &str) -> Vec<Col> {
    let name = Col("Name", "string", 0, "name");
    let age = Col("Age", "string", 0, "");
    match kind {
        "Pod" => vec![
            name,
            Col("Ready", "string", 0, ""),
            Col("Status", "string", 0, ""),
            Col("Restarts", "string", 0, ""),
            age,
            Col("IP", "string", 1, ""),
            Col("Node", "string", 1, ""),
            Col("Nominated Node", "string", 1, ""),
            Col("Readiness Gates", "string", 1, ""),
        ],
        "Deployment" => vec![
            name,
            Col("Ready", "string", 0, ""),
            Col("Up-to-date", "integer", 0, ""),
            Col("Available", "integer", 0, ""),
            age,
            Col("Containers", "string", 1, ""),
            Col("Images", "string", 1, ""),
            Col("Selector", "string", 1, ""),
        ],
        "ReplicaSet" => vec![
            name,
            Col("Desired", "integer", 0, ""),
            Col("Current", "integer", 0, ""),
            Col("Ready", "integer", 0, ""),
            age,
            Col("Containers", "string", 1, ""),
            Col("Images", "string", 1, ""),
            Col("Selector", "string", 1, ""),
        ],
        "Service" => vec![
            name,
            Col("Type", "string", 0, ""),
            Col("Cluster-IP", "string", 0, ""),
            Col("External-IP", "string", 0, ""),
            Col("Port(s)", "string", 0, ""),
            age,
            Col("Selector", "string", 1, ""),
        ],
        "Node" => vec![
            name,
            Col("Status", "string", 0, ""),
            Col("Roles", "string", 0, ""),
            age,
            Col("Version", "string", 0, ""),
            Col("Internal-IP", "string", 1, ""),
            Col("External-IP", "string", 1, ""),
            Col("OS-Image", "string", 1, ""),
            Col("Kernel-Version", "string", 1, ""),
            Col("Container-Runtime", "string", 1, ""),
        ],
        "Namespace" => vec![name, Col("Status", "string", 0, ""), age],
        "CertificateSigningRequest" => vec![
            name,
            age,
            Col("SignerName", "string", 0, ""),
            Col("Requestor", "string", 0, ""),
            Col("RequestedDuration", "string", 0, ""),
            Col("Condition", "string", 0, ""),
        ],
        "PersistentVolume" => vec![
            name,
            Col("Capacity", "string", 0, ""),
            Col("Access Modes", "string", 0, ""),
            Col("Reclaim Policy", "string", 0, ""),
            Col("Status", "string", 0, ""),
            Col("Claim", "string", 0, ""),
            Col("StorageClass", "string", 0, ""),
            Col("VolumeAttributesClass", "string", 0, ""),
            Col("Reason", "string", 0, ""),
            age,
            Col("VolumeMode", "string", 1, ""),
        ],
        "PersistentVolumeClaim" => vec![
            name,
            Col("Status", "string", 0, ""),
            Col("Volume", "string", 0, ""),
            Col("Capacity", "string", 0, ""),
            Col("Access Modes", "string", 0, ""),
            Col("StorageClass", "string", 0, ""),
            Col("VolumeAttributesClass", "string", 0, ""),
            age,
            Col("VolumeMode", "string", 1, ""),
        ],
        "ConfigMap" => vec![name, Col("Data", "integer", 0, ""), age],
        "Secret" => vec![
            name,
            Col("Type", "string", 0, ""),
            Col("Data", "integer", 0, ""),
            age,
        ],
        "Event" => vec![
            Col("Last Seen", "string", 0, ""),
            Col("Type", "string", 0, ""),
            Col("Reason", "string", 0, ""),
            Col("Object", "string", 0, ""),
            Col("Subobject", "string", 1, ""),
            Col("Source", "string", 1, ""),
            Col("Message", "string", 0, ""),
            Col("First Seen", "string", 1, ""),
            Col("Count", "string", 1, ""),
            Col("Name", "string", 1, "name"),
        ],
        _ => vec![name, age],
    }
}

/// kubectl's age of an optional timestamp (empty when absent, so callers can fall back).
fn since(ts: &Value) -> Option<String> {
    ts.as_str()
        .filter(|t| !t.is_empty())
        .map(|t| kelson_apimachinery::table::age(t, time::OffsetDateTime::now_utc()))
}

/// Upstream's `printEvent` cells (server side always prints the wide set). A core/v1 Event
/// and an events.k8s.io/v1 Event name the same things differently (`involvedObject` /
/// `regarding`, `message` / `note`, `count` / `deprecatedCount`, ...): read either.
fn event_cells(o: &Value) -> Vec<Value> {
    let either = |a: &str, b: &str| {
        if o[a].is_null() {
            o[b].clone()
        } else {
            o[a].clone()
        }
    };
    let first = since(&either("firstTimestamp", "deprecatedFirstTimestamp"))
        .or_else(|| since(&o["eventTime"]))
        .unwrap_or_else(|| "<unknown>".into());
    let mut last =
        since(&either("lastTimestamp", "deprecatedLastTimestamp")).unwrap_or_else(|| first.clone());
    let mut count = n(&either("count", "deprecatedCount"));
    if o["series"].is_object() {
        last = since(&o["series"]["lastObservedTime"]).unwrap_or_else(|| "<unknown>".into());
        count = n(&o["series"]["count"]);
    } else if count == 0 {
        // Singleton events carry no count in events.k8s.io/v1.
        count = 1;
    }
    let involved = either("involvedObject", "regarding");
    let kind = s(&involved["kind"]).to_lowercase();
    let target = match involved["name"].as_str().filter(|n| !n.is_empty()) {
        Some(name) => format!("{kind}/{name}"),
        None => kind,
    };
    let source = either("source", "deprecatedSource");
    let non_empty = |a: String, b: String| if a.is_empty() { b } else { a };
    // core/v1 calls the reporting controller `reportingComponent`.
    let component = non_empty(
        s(&source["component"]),
        s(&either("reportingComponent", "reportingController")),
    );
    let instance = non_empty(s(&source["host"]), s(&o["reportingInstance"]));
    let source = if instance.is_empty() {
        component
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last),
        json!(s(&o["type"])),
        json!(s(&o["reason"])),
        json!(target),
        json!(s(&involved["fieldPath"])),
        json!(source),
        json!(s(&either("message", "note")).trim()),
        json!(first),
        json!(count),
        json!(s(&o["metadata"]["name"])),
    ]
}

/// Upstream's `GetAccessModesAsString`: the short forms in a fixed order, duplicates dropped.
fn access_modes(modes: &Value) -> String {
    let has = |m: &str| {
        modes
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(m)))
    };
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(long, _)| has(long))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// The storage class of a PV or PVC: the beta annotation wins, as upstream's helpers.
fn storage_class(o: &Value) -> String {
    match o["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"].as_str() {
        Some(c) => c.to_string(),
        None => s(&o["spec"]["storageClassName"]),
    }
}

/// `<unset>` for an absent optional string (VolumeMode, VolumeAttributesClass columns).
fn or_unset(v: &Value) -> String {
    v.as_str().unwrap_or("<unset>").to_string()
}

/// A PV's or PVC's phase, `Terminating` once deletion started (upstream's printers).
fn volume_phase(o: &Value) -> String {
    if o["metadata"]["deletionTimestamp"].is_string() {
        "Terminating".into()
    } else {
        s(&o["status"]["phase"])
    }
}

/// `printPersistentVolume`: capacity, modes, reclaim policy, phase, `ns/name` of the claim.
fn pv_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let spec = &o["spec"];
    let claim = if spec["claimRef"].is_object() {
        format!(
            "{}/{}",
            s(&spec["claimRef"]["namespace"]),
            s(&spec["claimRef"]["name"])
        )
    } else {
        String::new()
    };
    vec![
        name,
        json!(quantity(&spec["capacity"]["storage"])),
        json!(access_modes(&spec["accessModes"])),
        json!(s(&spec["persistentVolumeReclaimPolicy"])),
        json!(volume_phase(o)),
        json!(claim),
        json!(storage_class(o)),
        json!(or_unset(&spec["volumeAttributesClassName"])),
        json!(s(&o["status"]["reason"])),
        age,
        json!(or_unset(&spec["volumeMode"])),
    ]
}

/// `printPersistentVolumeClaim`: capacity and access modes only once bound to a volume.
fn pvc_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let spec = &o["spec"];
    let volume = s(&spec["volumeName"]);
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (
            quantity(&o["status"]["capacity"]["storage"]),
            access_modes(&o["status"]["accessModes"]),
        )
    };
    vec![
        name,
        json!(volume_phase(o)),
        json!(volume),
        json!(capacity),
        json!(modes),
        json!(storage_class(o)),
        json!(or_unset(&spec["volumeAttributesClassName"])),
        age,
        json!(or_unset(&spec["volumeMode"])),
    ]
}

/// A quantity as upstream's printers show it (`Quantity.String()`: canonical, `0` when absent).
fn quantity(v: &Value) -> String {
    match v {
        Value::String(q) => quantity::canonical(q),
        // Quantities may be sent as JSON numbers.
        Value::Number(n) => quantity::canonical(&n.to_string()),
        _ => "0".into(),
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}
fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}
fn or_none(x: String) -> Value {
    if x.is_empty() {
        json!("<none>")
    } else {
        json!(x)
    }
}

fn containers_images(spec: &Value) -> (String, String) {
    let cs = spec["containers"].as_array().cloned().unwrap_or_default();
    (
        cs.iter()
            .map(|c| s(&c["name"]))
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| s(&c["image"]))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn selector_string(sel: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = sel["matchLabels"].as_object() {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    if let Some(es) = sel["matchExpressions"].as_array() {
        for e in es {
            let vals: Vec<String> = e["values"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            parts.push(match e["operator"].as_str().unwrap_or_default() {
                "In" => format!("{} in ({})", s(&e["key"]), vals.join(",")),
                "NotIn" => format!("{} notin ({})", s(&e["key"]), vals.join(",")),
                "Exists" => s(&e["key"]),
                _ => format!("!{}", s(&e["key"])),
            });
        }
    }
    parts.join(",")
}

fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let name = json!(s(&o["metadata"]["name"]));
    let a = json!(age(o));
    match kind {
        "Pod" => {
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total = o["spec"]["containers"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0);
            let ready = statuses
                .iter()
                .filter(|c| c["ready"].as_bool() == Some(true))
                .count();
            let restarts: i64 = statuses.iter().map(|c| n(&c["restartCount"])).sum();
            let mut status = o["status"]["reason"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| s(&o["status"]["phase"]));
            for c in &statuses {
                if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
                    status = r.to_string();
                }
            }
            if o["metadata"]["deletionTimestamp"].is_string() {
                status = "Terminating".into();
            }
            let gates = o["spec"]["readinessGates"]
                .as_array()
                .map(|g| g.len())
                .unwrap_or(0);
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                a,
                or_none(s(&o["status"]["podIP"])),
                or_none(s(&o["spec"]["nodeName"])),
                or_none(s(&o["status"]["nominatedNodeName"])),
                if gates == 0 {
                    json!("<none>")
                } else {
                    json!(format!("0/{gates}"))
                },
            ]
        }
        "Deployment" => {
            let (c, i) = containers_images(&o["spec"]["template"]["spec"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    n(&o["status"]["readyReplicas"]),
                    n(&o["spec"]["replicas"])
                )),
                json!(n(&o["status"]["updatedReplicas"])),
                json!(n(&o["status"]["availableReplicas"])),
                a,
                json!(c),
                json!(i),
                json!(selector_string(&o["spec"]["selector"])),
            ]
        }
        "ReplicaSet" => {
            let (c, i) = containers_images(&o["spec"]["template"]["spec"]);
            vec![
                name,
                json!(n(&o["spec"]["replicas"])),
                json!(n(&o["status"]["replicas"])),
                json!(n(&o["status"]["readyReplicas"])),
                a,
                json!(c),
                json!(i),
                json!(selector_string(&o["spec"]["selector"])),
            ]
        }
        "Service" => {
            let ports = o["spec"]["ports"].as_array().cloned().unwrap_or_default();
            let ps: Vec<String> = ports
                .iter()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) => format!("{}:{np}/{proto}", n(&p["port"])),
                        None => format!("{}/{proto}", n(&p["port"])),
                    }
                })
                .collect();
            let ext: Vec<String> = o["status"]["loadBalancer"]["ingress"]
                .as_array()
                .map(|a| a.iter().map(|i| s(&i["ip"])).collect())
                .unwrap_or_default();
            let ext = if !ext.is_empty() {
                ext.join(",")
            } else if o["spec"]["type"] == "LoadBalancer" {
                "<pending>".into()
            } else {
                "<none>".into()
            };
            let sel = o["spec"]["selector"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP")),
                or_none(s(&o["spec"]["clusterIP"])),
                json!(ext),
                or_none(ps.join(",")),
                a,
                or_none(sel),
            ]
        }
        "Node" => {
            let conds = o["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut status = match conds.iter().find(|c| c["type"] == "Ready") {
                Some(c) if c["status"] == "True" => "Ready".to_string(),
                Some(_) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if o["spec"]["unschedulable"].as_bool() == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = o["metadata"]["labels"]
                .as_object()
                .map(|m| {
                    m.keys()
                        .filter_map(|k| {
                            k.strip_prefix("node-role.kubernetes.io/").map(String::from)
                        })
                        .collect()
                })
                .unwrap_or_default();
            roles.sort();
            let addr = |t: &str| {
                o["status"]["addresses"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["type"] == t))
                    .map(|x| s(&x["address"]))
                    .unwrap_or_default()
            };
            let info = &o["status"]["nodeInfo"];
            vec![
                name,
                json!(status),
                or_none(roles.join(",")),
                a,
                json!(s(&info["kubeletVersion"])),
                or_none(addr("InternalIP")),
                or_none(addr("ExternalIP")),
                json!(s(&info["osImage"])),
                json!(s(&info["kernelVersion"])),
                json!(s(&info["containerRuntimeVersion"])),
            ]
        }
        "Namespace" => vec![
            name,
            json!(o["status"]["phase"].as_str().unwrap_or("Active")),
            a,
        ],
        "ConfigMap" => {
            let d = o["data"].as_object().map(|m| m.len()).unwrap_or(0)
                + o["binaryData"].as_object().map(|m| m.len()).unwrap_or(0);
            vec![name, json!(d), a]
        }
        "Secret" => {
            let d = o["data"].as_object().map(|m| m.len()).unwrap_or(0);
            vec![
                name,
                json!(o["type"].as_str().unwrap_or("Opaque")),
                json!(d),
                a,
            ]
        }
        "Event" => event_cells(o),
        "PersistentVolume" => pv_cells(o, name, a),
        "PersistentVolumeClaim" => pvc_cells(o, name, a),
        "CertificateSigningRequest" => {
            let mut c = vec![name, a];
            c.extend(crate::strategy::csr::table_cells(o));
            c
        }
        _ => vec![name, a],
    }
}

/// What each row's `object` holds (`?includeObject=`; unknown values get the default).
pub type Include = IncludeObject;

/// `includeObject` from the query: `Metadata` unless `None` or `Object`.
pub fn include(q: Option<&str>) -> Include {
    IncludeObject::parse(q.unwrap_or_default()).unwrap_or_default()
}

/// A Table of `items` of `kind`; `list_meta` is the list's metadata (resourceVersion, continue).
/// `beta` answers a `meta.k8s.io/v1beta1` request in that version.
pub fn table(kind: &str, items: &[Value], list_meta: Value, inc: Include, beta: bool) -> Value {
    // Custom resources print their CRD's additionalPrinterColumns (crd/).
    if let Some(t) = crate::crd::table(kind, items, &list_meta, inc, beta) {
        return t;
    }
    let defs = columns(kind)
        .into_iter()
        .map(|Col(name, ty, prio, fmt)| ColumnDefinition::new(name, ty, fmt, name, prio.into()))
        .collect();
    let mut t = Table::new(defs);
    for o in items {
        t.push(cells(kind, o), o, inc);
    }
    t.resource_version = s(&list_meta["resourceVersion"]);
    t.continue_token = s(&list_meta["continue"]);
    t.remaining_item_count = list_meta["remainingItemCount"].as_i64();
    let mut v = t.to_value(false);
    if beta {
        let beta_version = json!("meta.k8s.io/v1beta1");
        v["apiVersion"] = beta_version.clone();
        if let Some(rows) = v["rows"].as_array_mut() {
            for r in rows
                .iter_mut()
                .filter(|r| r["object"]["kind"] == "PartialObjectMetadata")
            {
                r["object"]["apiVersion"] = beta_version.clone();
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_and_deployment_rows() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": kelson_apimachinery::meta::now_rfc3339()},
            "spec": {"containers": [{"name": "c"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        let t = table(
            "Pod",
            &[pod],
            json!({"resourceVersion": "5"}),
            Include::Metadata,
            false,
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "1/1");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "2");
        assert_eq!(cells[5], "10.0.0.5");
        assert_eq!(cells[6], "n1");
        assert_eq!(
            t["columnDefinitions"].as_array().unwrap().len(),
            cells.as_array().unwrap().len()
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let d = json!({"metadata": {"name": "d"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "w"}}, "template": {"spec": {"containers": [{"name": "w", "image": "nginx"}]}}}, "status": {"readyReplicas": 1}});
        let t = table("Deployment", &[d], json!({}), Include::None, false);
        assert_eq!(t["rows"][0]["cells"][1], "1/3");
        assert_eq!(t["rows"][0]["cells"][7], "app=w");
        assert!(t["rows"][0].get("object").is_none());
        let cm = table(
            "Widget",
            &[json!({"metadata": {"name": "x"}})],
            json!({}),
            Include::Object,
            false,
        );
        assert_eq!(cm["columnDefinitions"][1]["name"], "Age");
        assert_eq!(cm["rows"][0]["cells"][1], "<unknown>");
    }

    #[test]
    fn persistent_volume_and_claim_rows() {
        let pv = json!({"metadata": {"name": "pv1"},
            "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce", "ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "slow", "volumeMode": "Filesystem",
                     "claimRef": {"namespace": "ns", "name": "c1"}, "hostPath": {"path": "/tmp"}},
            "status": {"phase": "Bound"}});
        let t = table("PersistentVolume", &[pv], json!({}), Include::None, false);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Capacity",
                "Access Modes",
                "Reclaim Policy",
                "Status",
                "Claim",
                "StorageClass",
                "VolumeAttributesClass",
                "Reason",
                "Age",
                "VolumeMode"
            ]
        );
        assert_eq!(t["columnDefinitions"][10]["priority"], 1);
        let c = &t["rows"][0]["cells"];
        assert_eq!(c[1], "5Gi");
        assert_eq!(c[2], "RWO,RWX", "upstream's order, duplicates dropped");
        assert_eq!(c[3], "Retain");
        assert_eq!(c[4], "Bound");
        assert_eq!(c[5], "ns/c1");
        assert_eq!(c[6], "slow");
        assert_eq!(c[7], "<unset>");
        assert_eq!(c[8], "");
        assert_eq!(c[10], "Filesystem");

        let pending = json!({"metadata": {"name": "c1", "deletionTimestamp": "2026-01-01T00:00:00Z",
                "annotations": {"volume.beta.kubernetes.io/storage-class": "beta"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "fast"},
            "status": {"phase": "Pending"}});
        let bound = json!({"metadata": {"name": "c2"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                     "volumeName": "pv1", "volumeAttributesClassName": "gold"},
            "status": {"phase": "Bound", "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"]}});
        let t = table(
            "PersistentVolumeClaim",
            &[pending, bound],
            json!({}),
            Include::None,
            false,
        );
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
        let c = &t["rows"][0]["cells"];
        assert_eq!(c[1], "Terminating");
        assert_eq!(c[2], "");
        assert_eq!(c[3], "", "no capacity before the claim is bound");
        assert_eq!(c[4], "");
        assert_eq!(c[5], "beta", "the beta annotation wins");
        assert_eq!(c[8], "<unset>");
        let c = &t["rows"][1]["cells"];
        assert_eq!(c[1], "Bound");
        assert_eq!(c[2], "pv1");
        assert_eq!(c[3], "5Gi");
        assert_eq!(c[4], "RWO,ROX");
        assert_eq!(c[5], "");
        assert_eq!(c[6], "gold");

        // Capacities print canonicalized, as upstream's Quantity.String().
        let pv = json!({"metadata": {"name": "pv2"}, "spec": {"capacity": {"storage": "1024Mi"}}});
        let t = table("PersistentVolume", &[pv], json!({}), Include::None, false);
        assert_eq!(t["rows"][0]["cells"][1], "1Gi");
        let bound = json!({"metadata": {"name": "c3"}, "spec": {"volumeName": "pv2"},
            "status": {"capacity": {"storage": "1536Mi"}}});
        let no_capacity = json!({"metadata": {"name": "c4"}, "spec": {"volumeName": "pv3"}});
        let t = table(
            "PersistentVolumeClaim",
            &[bound, no_capacity],
            json!({}),
            Include::None,
            false,
        );
        assert_eq!(t["rows"][0]["cells"][3], "1536Mi");
        assert_eq!(
            t["rows"][1]["cells"][3], "0",
            "a bound claim without capacity: zero"
        );
    }

    #[test]
    fn event_rows_core_and_events_k8s_io() {
        let ago = |secs: i64| {
            (time::OffsetDateTime::now_utc() - time::Duration::seconds(secs))
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let core = json!({"metadata": {"name": "p.1"}, "type": "Normal", "reason": "Scheduled",
            "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{c}"},
            "message": "assigned p to n1 ", "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": ago(300), "lastTimestamp": ago(30), "count": 3});
        let new = json!({"metadata": {"name": "e.2"}, "type": "Warning", "reason": "Failed",
            "regarding": {"kind": "Node", "name": ""}, "note": "boom",
            "reportingController": "ctl", "eventTime": ago(10)});
        let t = table("Event", &[core, new], json!({}), Include::None, false);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["priority"] == 0)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Last Seen", "Type", "Reason", "Object", "Message"]);
        let c = &t["rows"][0]["cells"];
        assert_eq!(c[0], "30s");
        assert_eq!(c[1], "Normal");
        assert_eq!(c[2], "Scheduled");
        assert_eq!(c[3], "pod/p");
        assert_eq!(c[4], "spec.containers{c}");
        assert_eq!(c[5], "kubelet, n1");
        assert_eq!(c[6], "assigned p to n1");
        assert_eq!(c[7], "5m");
        assert_eq!(c[8], 3);
        assert_eq!(c[9], "p.1");
        let c = &t["rows"][1]["cells"];
        assert_eq!(c[0], "10s", "last seen falls back to first, then eventTime");
        assert_eq!(c[3], "node");
        assert_eq!(c[5], "ctl");
        assert_eq!(c[6], "boom");
        assert_eq!(c[8], 1);
        // A core/v1 Event with the new fields only (written through events.k8s.io).
        let core_new = json!({"metadata": {"name": "e.3"}, "involvedObject": {"kind": "Pod", "name": "q"},
            "reportingComponent": "kubelet", "reportingInstance": "n2", "eventTime": ago(5)});
        let t = table("Event", &[core_new], json!({}), Include::None, false);
        assert_eq!(t["rows"][0]["cells"][5], "kubelet, n2");
    }
}
