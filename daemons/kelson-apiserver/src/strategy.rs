//! Per-kind defaulting, validation and create/update preparation.
//!
//! Upstream's registry strategies, reduced to what matters for correctness of objects clients
//! write: each kind gets a [`Strategy`]; the default one does nothing beyond the generic
//! metadata checks the handlers already apply. Objects stay `serde_json::Value` (what is stored
//! is what clients see); the strategies touch only the fields they own. Service IP/port
//! allocation needs the store and lives in the handlers (`alloc`), not here.

use base64::Engine;
use serde_json::{json, Map, Value};

use kelson_apimachinery::field;
use kelson_apimachinery::selector::label_selector_as_selector;
use kelson_apimachinery::validation::is_dns1123_label;
use kelson_apimachinery::StatusCause;

/// DNS-1123 label causes for `name` at `path` (container and port names).
fn validate_label(path: &str, name: &str) -> Vec<StatusCause> {
    is_dns1123_label(name)
        .iter()
        .map(|m| field::invalid_str(path, name, m))
        .collect()
}

pub trait Strategy: Send + Sync {
    /// Defaults and resets on create (e.g. a new Deployment's status is cleared).
    fn prepare_for_create(&self, _obj: &mut Value) {}
    /// Defaults and carry-overs on update (`old` is the stored object).
    fn prepare_for_update(&self, new: &mut Value, _old: &Value) {
        self.prepare_for_create_defaults(new);
    }
    /// Defaulting shared by create and update (fields clients may omit).
    fn prepare_for_create_defaults(&self, _obj: &mut Value) {}
    /// Kind-specific validation of a whole object.
    fn validate(&self, _obj: &Value) -> Vec<StatusCause> {
        Vec::new()
    }
    /// Validation of an update (immutable fields); defaults to [`Strategy::validate`].
    fn validate_update(&self, new: &Value, _old: &Value) -> Vec<StatusCause> {
        self.validate(new)
    }
}

/// Job, CronJob, StatefulSet, DaemonSet, PDB and ResourceQuota (a child module so it can
/// reuse the private helpers here).
#[path = "strategy_workloads.rs"]
pub mod workloads;

/// PersistentVolume and PersistentVolumeClaim.
#[path = "strategy_volumes.rs"]
pub mod volumes;

/// certificates.k8s.io CertificateSigningRequests: strategy, subresources, admission.
#[path = "csr.rs"]
pub mod csr;

pub struct DefaultStrategy;
impl Strategy for DefaultStrategy {}

pub fn for_kind(group: &str, kind: &str) -> &'static dyn Strategy {
    match (group, kind) {
        ("", "Namespace") => &NamespaceStrategy,
        ("", "Pod") => &PodStrategy,
        ("", "Service") => &ServiceStrategy,
        ("", "ConfigMap") => &ConfigMapStrategy,
        ("", "Secret") => &SecretStrategy,
        ("", "Node") => &NodeStrategy,
        ("apps", "Deployment") => &DeploymentStrategy,
        ("apps", "ReplicaSet") => &WorkloadStrategy,
        ("apps", "StatefulSet") => &workloads::StatefulSetStrategy,
        ("apps", "DaemonSet") => &workloads::DaemonSetStrategy,
        ("batch", "Job") => &workloads::JobStrategy,
        ("batch", "CronJob") => &workloads::CronJobStrategy,
        ("policy", "PodDisruptionBudget") => &workloads::PdbStrategy,
        (csr::GROUP, csr::KIND) => &csr::CsrStrategy,
        ("", "ResourceQuota") => &workloads::ResourceQuotaStrategy,
        ("", "PersistentVolume") => &volumes::PersistentVolumeStrategy,
        ("", "PersistentVolumeClaim") => &volumes::PersistentVolumeClaimStrategy,
        (crate::events::GROUP, "Event") => &crate::events::EventsV1Strategy,
        ("", "Event") => &crate::events::CoreEventStrategy,
        (crate::crd::GROUP, "CustomResourceDefinition") => &crate::crd::CrdStrategy,
        (g, k) if crate::crd::is_custom_kind(g, k) => &crate::crd::CustomStrategy,
        _ => &DefaultStrategy,
    }
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v[key].is_object() {
        v[key] = json!({});
    }
    v[key].as_object_mut().expect("just made an object")
}

fn default(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.into(), v);
    }
}

// ---------------------------------------------------------------------------------------------
// Namespace

pub struct NamespaceStrategy;
impl Strategy for NamespaceStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Active"});
        self.prepare_for_create_defaults(obj);
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let meta = obj_mut(obj, "metadata");
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if labels.is_object() {
            labels["kubernetes.io/metadata.name"] = json!(name);
        }
        let spec = obj_mut(obj, "spec");
        default(spec, "finalizers", json!(["kubernetes"]));
    }
}

// ---------------------------------------------------------------------------------------------
// Pod

/// Container defaults upstream applies (SetDefaults_Container and friends).
fn default_containers(spec: &mut Value) {
    for field in ["containers", "initContainers"] {
        let Some(cs) = spec[field].as_array_mut() else {
            continue;
        };
        for c in cs.iter_mut() {
            let Some(m) = c.as_object_mut() else { continue };
            let image = m
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let tag = image.rsplit('/').next().unwrap_or_default();
            let latest = !tag.contains(':') || tag.ends_with(":latest");
            let latest = latest && !image.contains('@');
            default(
                m,
                "imagePullPolicy",
                json!(if latest { "Always" } else { "IfNotPresent" }),
            );
            default(m, "terminationMessagePath", json!("/dev/termination-log"));
            default(m, "terminationMessagePolicy", json!("File"));
            default(m, "resources", json!({}));
            if let Some(ports) = m.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    default(p, "protocol", json!("TCP"));
                }
            }
        }
    }
}

fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default_containers(spec);
    let m = spec.as_object_mut().expect("checked");
    default(m, "restartPolicy", json!("Always"));
    default(m, "terminationGracePeriodSeconds", json!(30));
    default(m, "dnsPolicy", json!("ClusterFirst"));
    default(m, "securityContext", json!({}));
    default(m, "schedulerName", json!("default-scheduler"));
    default(m, "enableServiceLinks", json!(true));
}

fn validate_pod_spec(spec: &Value, path: &str) -> Vec<StatusCause> {
    let mut out = Vec::new();
    let cs = spec["containers"].as_array();
    if cs.is_none_or(|c| c.is_empty()) {
        out.push(StatusCause::required(&format!("{path}.containers")));
        return out;
    }
    let mut seen = std::collections::HashSet::new();
    for field in ["initContainers", "containers"] {
        for (i, c) in spec[field].as_array().into_iter().flatten().enumerate() {
            let f = format!("{path}.{field}[{i}]");
            match c["name"].as_str() {
                None | Some("") => out.push(StatusCause::required(&format!("{f}.name"))),
                Some(n) => {
                    out.extend(validate_label(&format!("{f}.name"), n));
                    if !seen.insert(n.to_string()) {
                        out.push(StatusCause {
                            reason: "FieldValueDuplicate".into(),
                            message: format!("Duplicate value: {n:?}"),
                            field: format!("{f}.name"),
                        });
                    }
                }
            }
            if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
                out.push(StatusCause::required(&format!("{f}.image")));
            }
            for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                let port = p["containerPort"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    out.push(StatusCause::invalid(
                        &format!("{f}.ports[{j}].containerPort"),
                        format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
                    ));
                }
            }
        }
    }
    if let Some(rp) = spec["restartPolicy"].as_str() {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            out.push(StatusCause {
                reason: "FieldValueNotSupported".into(),
                message: format!("Unsupported value: {rp:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
                field: format!("{path}.restartPolicy"),
            });
        }
    }
    out
}

/// QoS class from requests/limits, as upstream computes it for status.qosClass.
fn qos_class(spec: &Value) -> &'static str {
    let cs: Vec<&Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = !cs.is_empty();
    for c in &cs {
        let req = c["resources"]["requests"].as_object();
        let lim = c["resources"]["limits"].as_object();
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(res));
            let r = req.and_then(|r| r.get(res)).or(l);
            if l.is_none() || r != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

pub struct PodStrategy;
impl Strategy for PodStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        self.prepare_for_create_defaults(obj);
        let qos = qos_class(&obj["spec"]);
        obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        // DefaultTolerationSeconds admission: tolerate not-ready/unreachable for 300 s.
        let spec = obj_mut(obj, "spec");
        let tol = spec.entry("tolerations").or_insert_with(|| json!([]));
        if let Some(t) = tol.as_array_mut() {
            for key in [
                "node.kubernetes.io/not-ready",
                "node.kubernetes.io/unreachable",
            ] {
                if !t.iter().any(|x| x["key"] == key) {
                    t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                }
            }
        }
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        default_pod_spec(&mut obj["spec"]);
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        validate_pod_spec(&obj["spec"], "spec")
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        let mut out = self.validate(new);
        // Pod specs are immutable except images, activeDeadlineSeconds and tolerations.
        let strip = |s: &Value| {
            let mut s = s.clone();
            for f in ["containers", "initContainers"] {
                if let Some(cs) = s[f].as_array_mut() {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
            if let Some(m) = s.as_object_mut() {
                m.remove("activeDeadlineSeconds");
                m.remove("tolerations");
            }
            s
        };
        if strip(&new["spec"]) != strip(&old["spec"]) {
            out.push(StatusCause {
                reason: "FieldValueForbidden".into(),
                message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations)".into(),
                field: "spec".into(),
            });
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Service

pub struct ServiceStrategy;
impl Strategy for ServiceStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"loadBalancer": {}});
        self.prepare_for_create_defaults(obj);
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        default(spec, "type", json!("ClusterIP"));
        default(spec, "sessionAffinity", json!("None"));
        let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
        if ty != "ExternalName" {
            default(spec, "ipFamilies", json!(["IPv4"]));
            default(spec, "ipFamilyPolicy", json!("SingleStack"));
            default(spec, "internalTrafficPolicy", json!("Cluster"));
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            default(spec, "externalTrafficPolicy", json!("Cluster"));
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                default(p, "protocol", json!("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    default(p, "targetPort", port);
                }
            }
        }
    }
    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        self.prepare_for_create_defaults(new);
        // Allocated values carry over when the client omits them (upstream patchAllocatedValues).
        for f in ["clusterIP", "clusterIPs"] {
            if new["spec"][f].is_null() && !old["spec"][f].is_null() {
                new["spec"][f] = old["spec"][f].clone();
            }
        }
        let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let node_ports = |v: &Value| {
            matches!(
                v["spec"]["type"].as_str(),
                Some("NodePort" | "LoadBalancer")
            )
        };
        if !node_ports(new) {
            // Switching away from NodePort drops the node ports the client did not change
            // (upstream's dropTypeDependentFields).
            if let Some(ports) = new["spec"]["ports"].as_array_mut() {
                for p in ports.iter_mut() {
                    let same = old_ports
                        .iter()
                        .any(|o| !o["nodePort"].is_null() && o["nodePort"] == p["nodePort"]);
                    if same {
                        if let Some(m) = p.as_object_mut() {
                            m.remove("nodePort");
                        }
                    }
                }
            }
            return;
        }
        if let Some(ports) = new["spec"]["ports"].as_array_mut() {
            for p in ports.iter_mut() {
                if p["nodePort"].is_null() {
                    if let Some(op) = old_ports
                        .iter()
                        .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                    {
                        if !op["nodePort"].is_null() {
                            p["nodePort"] = op["nodePort"].clone();
                        }
                    }
                }
            }
        }
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let mut out = Vec::new();
        let spec = &obj["spec"];
        let ty = spec["type"].as_str().unwrap_or("ClusterIP");
        if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
            out.push(StatusCause {
                reason: "FieldValueNotSupported".into(),
                message: format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
                field: "spec.type".into(),
            });
        }
        let headless = spec["clusterIP"] == "None";
        let ports = spec["ports"].as_array().cloned().unwrap_or_default();
        if ports.is_empty() && ty != "ExternalName" && !headless {
            out.push(StatusCause::required("spec.ports"));
        }
        if ty == "ExternalName" && spec["externalName"].as_str().is_none_or(str::is_empty) {
            out.push(StatusCause::required("spec.externalName"));
        }
        if ty == "ClusterIP" && ports.iter().any(|p| !p["nodePort"].is_null()) {
            out.push(StatusCause {
                reason: "FieldValueForbidden".into(),
                message: "Forbidden: may not be used when `type` is 'ClusterIP'".into(),
                field: "spec.ports[0].nodePort".into(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let port = p["port"].as_i64().unwrap_or(0);
            if !(1..=65535).contains(&port) {
                out.push(StatusCause::invalid(
                    &format!("spec.ports[{i}].port"),
                    format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
                ));
            }
            let name = p["name"].as_str().unwrap_or_default();
            if ports.len() > 1 && name.is_empty() {
                out.push(StatusCause::required(&format!("spec.ports[{i}].name")));
            }
            if !name.is_empty() && !names.insert(name.to_string()) {
                out.push(StatusCause {
                    reason: "FieldValueDuplicate".into(),
                    message: format!("Duplicate value: {name:?}"),
                    field: format!("spec.ports[{i}].name"),
                });
            }
        }
        out
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        let mut out = self.validate(new);
        let (o, n) = (&old["spec"]["clusterIP"], &new["spec"]["clusterIP"]);
        if !o.is_null() && o != n && new["spec"]["type"] != "ExternalName" {
            out.push(StatusCause::invalid(
                "spec.clusterIPs[0]",
                format!("Invalid value: {n}: may not change once set"),
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// ConfigMap / Secret

fn valid_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        && k != "."
        && k != ".."
}

fn validate_keys(obj: &Value, fields: &[&str]) -> Vec<StatusCause> {
    let mut out = Vec::new();
    for f in fields {
        for k in obj[*f].as_object().into_iter().flatten().map(|(k, _)| k) {
            if !valid_config_key(k) {
                out.push(StatusCause::invalid(f, format!("Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")));
            }
        }
    }
    out
}

pub struct ConfigMapStrategy;
impl Strategy for ConfigMapStrategy {
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let mut out = validate_keys(obj, &["data", "binaryData"]);
        for (k, v) in obj["data"].as_object().into_iter().flatten() {
            if !v.is_string() {
                out.push(StatusCause::invalid(
                    &format!("data[{k}]"),
                    "Invalid value: must be a string",
                ));
            }
        }
        for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
            if v.as_str()
                .is_none_or(|s| base64::engine::general_purpose::STANDARD.decode(s).is_err())
            {
                out.push(StatusCause::invalid(
                    &format!("binaryData[{k}]"),
                    "Invalid value: illegal base64 data",
                ));
            }
        }
        out
    }
}

pub struct SecretStrategy;
impl SecretStrategy {
    fn fold_string_data(obj: &mut Value) {
        let sd = obj.as_object_mut().and_then(|m| m.remove("stringData"));
        if let Some(Value::Object(sd)) = sd {
            let data = obj_mut(obj, "data");
            for (k, v) in sd {
                let s = v
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string());
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
        }
    }
}
impl Strategy for SecretStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        self.prepare_for_create_defaults(obj);
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        Self::fold_string_data(obj);
        if let Some(m) = obj.as_object_mut() {
            default(m, "type", json!("Opaque"));
        }
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let mut out = validate_keys(obj, &["data"]);
        for (k, v) in obj["data"].as_object().into_iter().flatten() {
            if v.as_str()
                .is_none_or(|s| base64::engine::general_purpose::STANDARD.decode(s).is_err())
            {
                out.push(StatusCause::invalid(
                    &format!("data[{k}]"),
                    "Invalid value: illegal base64 data",
                ));
            }
        }
        out
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        let mut out = self.validate(new);
        if old["type"] != new["type"] {
            out.push(StatusCause::invalid(
                "type",
                format!("Invalid value: {}: field is immutable", new["type"]),
            ));
        }
        if old["immutable"] == json!(true) && old["data"] != new["data"] {
            out.push(StatusCause {
                reason: "FieldValueForbidden".into(),
                message: "Forbidden: field is immutable when `immutable` is set".into(),
                field: "data".into(),
            });
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Node

pub struct NodeStrategy;
impl Strategy for NodeStrategy {
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let mut out = Vec::new();
        if let Some(cidr) = obj["spec"]["podCIDR"].as_str() {
            if crate::alloc::Cidr::parse(cidr).is_err() && !cidr.contains(':') {
                out.push(StatusCause::invalid(
                    "spec.podCIDR",
                    format!("Invalid value: {cidr:?}: must be a valid CIDR value"),
                ));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

/// Selector present, non-empty and matching the template's labels; immutable on update.
fn validate_selector(obj: &Value) -> Vec<StatusCause> {
    let sel = &obj["spec"]["selector"];
    let empty = sel["matchLabels"].as_object().is_none_or(|m| m.is_empty())
        && sel["matchExpressions"]
            .as_array()
            .is_none_or(|a| a.is_empty());
    if sel.is_null() || empty {
        return vec![StatusCause::required("spec.selector")];
    }
    let template_labels = &obj["spec"]["template"]["metadata"]["labels"];
    let labels = template_labels.as_object();
    match label_selector_as_selector(Some(sel)) {
        Err(e) => vec![StatusCause::invalid(
            "spec.selector",
            format!("Invalid value: {e}"),
        )],
        Ok(s) if !s.matches(template_labels) => {
            let shown = labels
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            vec![StatusCause::invalid(
                "spec.template.metadata.labels",
                format!("Invalid value: map[string]string{{{shown}}}: `selector` does not match template `labels`"),
            )]
        }
        Ok(_) => vec![],
    }
}

fn validate_workload(obj: &Value) -> Vec<StatusCause> {
    let mut out = validate_selector(obj);
    if let Some(r) = obj["spec"]["replicas"].as_i64() {
        if r < 0 {
            out.push(StatusCause::invalid(
                "spec.replicas",
                format!("Invalid value: {r}: must be greater than or equal to 0"),
            ));
        }
    }
    out.extend(validate_pod_spec(
        &obj["spec"]["template"]["spec"],
        "spec.template.spec",
    ));
    out
}

fn selector_immutable(new: &Value, old: &Value) -> Vec<StatusCause> {
    if new["spec"]["selector"] != old["spec"]["selector"] {
        vec![StatusCause::invalid(
            "spec.selector",
            format!(
                "Invalid value: {}: field is immutable",
                new["spec"]["selector"]
            ),
        )]
    } else {
        vec![]
    }
}

pub struct DeploymentStrategy;
impl Strategy for DeploymentStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({});
        self.prepare_for_create_defaults(obj);
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        default(spec, "replicas", json!(1));
        default(spec, "revisionHistoryLimit", json!(10));
        default(spec, "progressDeadlineSeconds", json!(600));
        let strat = spec.entry("strategy").or_insert_with(|| json!({}));
        if let Some(s) = strat.as_object_mut() {
            default(s, "type", json!("RollingUpdate"));
            if s["type"] == "RollingUpdate" {
                let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    default(ru, "maxUnavailable", json!("25%"));
                    default(ru, "maxSurge", json!("25%"));
                }
            }
        }
        default_pod_spec(&mut obj["spec"]["template"]["spec"]);
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        validate_workload(obj)
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        let mut out = validate_workload(new);
        out.extend(selector_immutable(new, old));
        out
    }
}

pub struct WorkloadStrategy;
impl Strategy for WorkloadStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({});
        self.prepare_for_create_defaults(obj);
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let spec = obj_mut(obj, "spec");
        if kind != "DaemonSet" {
            default(spec, "replicas", json!(1));
        }
        default(spec, "revisionHistoryLimit", json!(10));
        default_pod_spec(&mut obj["spec"]["template"]["spec"]);
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        validate_workload(obj)
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        let mut out = validate_workload(new);
        out.extend(selector_immutable(new, old));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(sel: Value, labels: Value) -> Value {
        json!({"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"selector": sel,
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}})
    }

    #[test]
    fn deployment_defaults_and_selector_rules() {
        let s = for_kind("apps", "Deployment");
        let mut d = deploy(json!({"matchLabels": {"app": "w"}}), json!({"app": "w"}));
        s.prepare_for_create(&mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert!(s.validate(&d).is_empty());
        let bad = deploy(json!({"matchLabels": {"app": "x"}}), json!({"app": "w"}));
        assert_eq!(s.validate(&bad)[0].field, "spec.template.metadata.labels");
        let none = deploy(Value::Null, json!({"app": "w"}));
        assert_eq!(s.validate(&none)[0].field, "spec.selector");
        let moved = deploy(
            json!({"matchLabels": {"app": "w", "x": "y"}}),
            json!({"app": "w", "x": "y"}),
        );
        assert!(s
            .validate_update(&moved, &d)
            .iter()
            .any(|c| c.field == "spec.selector"));
    }

    #[test]
    fn pods_secrets_services() {
        let p = for_kind("", "Pod");
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        p.prepare_for_create(&mut pod);
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["status"]["qosClass"], "BestEffort");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert!(p.validate(&pod).is_empty());
        assert_eq!(p.validate(&json!({"spec": {}}))[0].field, "spec.containers");
        let mut changed = pod.clone();
        changed["spec"]["restartPolicy"] = json!("Never");
        assert!(!p.validate_update(&changed, &pod).is_empty());
        let mut image = pod.clone();
        image["spec"]["containers"][0]["image"] = json!("busybox:2");
        assert!(p.validate_update(&image, &pod).is_empty());

        let s = for_kind("", "Secret");
        let mut sec = json!({"stringData": {"a": "hello"}});
        s.prepare_for_create(&mut sec);
        assert_eq!(sec["data"]["a"], "aGVsbG8=");
        assert_eq!(sec["type"], "Opaque");
        assert!(s.validate(&json!({"data": {"a": "!!"}}))[0]
            .message
            .contains("base64"));

        let svc = for_kind("", "Service");
        let mut o = json!({"spec": {"ports": [{"port": 80}]}});
        svc.prepare_for_create(&mut o);
        assert_eq!(o["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(o["spec"]["type"], "ClusterIP");
        assert!(svc.validate(&o).is_empty());
        assert_eq!(
            svc.validate(&json!({"spec": {"type": "ClusterIP"}}))[0].field,
            "spec.ports"
        );
    }
}
