//! PersistentVolume and PersistentVolumeClaim: upstream's registry strategies and the parts of
//! `ValidatePersistentVolume(Claim)(Update)` that decide whether an object is usable.
//!
//! - Defaults (`SetDefaults_PersistentVolume(Claim)`): a new object's status is reset to phase
//!   `Pending`; `spec.persistentVolumeReclaimPolicy` defaults to `Retain` (PV) and
//!   `spec.volumeMode` to `Filesystem` (both).
//! - PV validation: access modes (required, known, `ReadWriteOncePod` alone), capacity with
//!   exactly `storage`, the reclaim policy, the volume mode, exactly one volume source; on
//!   update the volume source and mode are immutable.
//! - PVC validation: access modes (at least one), `resources.requests.storage` (> 0), the volume
//!   mode; on update the spec is immutable except `resources.requests` (only growing, only
//!   for bound claims) and `volumeAttributesClassName`, as upstream's messages say.
//!
//! Deviation: volume source contents (paths, servers, drivers) are not validated beyond their
//! presence; the volume controllers that would use them are not part of Kelson yet.

use serde_json::{json, Value};

use super::{default, obj_mut, Strategy};
use kelson_apimachinery::field;
use kelson_apimachinery::StatusCause;

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];
const RECLAIM_POLICIES: &[&str] = &["Delete", "Recycle", "Retain"];
const VOLUME_MODES: &[&str] = &["Block", "Filesystem"];

/// The fields of `PersistentVolumeSource` (one of them must be set).
const PV_SOURCES: &[&str] = &[
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "hostPath",
    "glusterfs",
    "nfs",
    "rbd",
    "iscsi",
    "cinder",
    "cephfs",
    "fc",
    "flocker",
    "flexVolume",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "local",
    "storageos",
    "csi",
];

fn access_modes(path: &str, modes: &Value, required_detail: &str) -> Vec<StatusCause> {
    let field = format!("{path}.accessModes");
    let list = modes.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return vec![field::required(&field, required_detail)];
    }
    let mut out: Vec<StatusCause> = list
        .iter()
        .filter(|m| !m.as_str().is_some_and(|m| ACCESS_MODES.contains(&m)))
        .map(|m| field::not_supported(&field, m, ACCESS_MODES))
        .collect();
    if list.len() > 1 && list.iter().any(|m| m == "ReadWriteOncePod") {
        out.push(field::forbidden(
            &field,
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
    out
}

fn volume_mode(path: &str, spec: &Value) -> Option<StatusCause> {
    let m = &spec["volumeMode"];
    (!m.is_null() && !m.as_str().is_some_and(|m| VOLUME_MODES.contains(&m)))
        .then(|| field::not_supported(&format!("{path}.volumeMode"), m, VOLUME_MODES))
}

fn reset_status(obj: &mut Value) {
    obj["status"] = json!({"phase": "Pending"});
}

/// `spec.volumeMode` with its default (objects stored before defaulting compare equal).
fn defaulted_mode(spec: &Value) -> Value {
    match &spec["volumeMode"] {
        Value::Null => json!("Filesystem"),
        m => m.clone(),
    }
}

/// Upstream's `ValidateImmutableField`.
fn immutable(path: &str, new: &Value, old: &Value) -> Option<StatusCause> {
    (new != old).then(|| field::invalid(path, new, "field is immutable"))
}

pub struct PersistentVolumeStrategy;
impl Strategy for PersistentVolumeStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj);
        self.prepare_for_create_defaults(obj);
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
        default(spec, "volumeMode", json!("Filesystem"));
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let spec = &obj["spec"];
        let mut out = access_modes("spec", &spec["accessModes"], "");
        let capacity = spec["capacity"].as_object();
        match capacity {
            None => out.push(field::required("spec.capacity", "")),
            Some(c) if c.is_empty() => out.push(field::required("spec.capacity", "")),
            Some(c) if !c.contains_key("storage") || c.len() > 1 => out.push(field::not_supported(
                "spec.capacity",
                &spec["capacity"],
                &["storage"],
            )),
            Some(c) => {
                let q = &c["storage"];
                if q.as_str()
                    .and_then(crate::limitranger::parse_quantity)
                    .is_some_and(|v| v <= 0.0)
                {
                    out.push(field::invalid(
                        "spec.capacity[storage]",
                        q,
                        "must be greater than zero",
                    ));
                }
            }
        }
        let policy = &spec["persistentVolumeReclaimPolicy"];
        if !policy.is_null()
            && !policy
                .as_str()
                .is_some_and(|p| RECLAIM_POLICIES.contains(&p))
        {
            out.push(field::not_supported(
                "spec.persistentVolumeReclaimPolicy",
                policy,
                RECLAIM_POLICIES,
            ));
        }
        out.extend(volume_mode("spec", spec));
        let sources: Vec<&str> = PV_SOURCES
            .iter()
            .copied()
            .filter(|s| spec[*s].is_object())
            .collect();
        match sources.as_slice() {
            [] => out.push(field::required("spec", "must specify a volume type")),
            [_] => {}
            [_, rest @ ..] => {
                for s in rest {
                    out.push(field::forbidden(
                        &format!("spec.{s}"),
                        "may not specify more than 1 volume type",
                    ));
                }
            }
        }
        out
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        let mut out = self.validate(new);
        if PV_SOURCES
            .iter()
            .any(|s| new["spec"][*s] != old["spec"][*s])
        {
            out.push(field::forbidden(
                "spec.persistentvolumesource",
                "spec.persistentvolumesource is immutable after creation",
            ));
        }
        out.extend(immutable(
            "volumeMode",
            &defaulted_mode(&new["spec"]),
            &defaulted_mode(&old["spec"]),
        ));
        out
    }
}

pub struct PersistentVolumeClaimStrategy;
impl Strategy for PersistentVolumeClaimStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj);
        self.prepare_for_create_defaults(obj);
    }
    fn prepare_for_create_defaults(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        default(spec, "volumeMode", json!("Filesystem"));
    }
    fn validate(&self, obj: &Value) -> Vec<StatusCause> {
        let spec = &obj["spec"];
        let mut out = access_modes(
            "spec",
            &spec["accessModes"],
            "at least 1 access mode is required",
        );
        let storage = &spec["resources"]["requests"]["storage"];
        if storage.is_null() {
            out.push(field::required("spec.resources[storage]", ""));
        } else if storage
            .as_str()
            .and_then(crate::limitranger::parse_quantity)
            .is_some_and(|v| v <= 0.0)
        {
            out.push(field::invalid(
                "spec.resources[storage]",
                storage,
                "must be greater than zero",
            ));
        }
        out.extend(volume_mode("spec", spec));
        out
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<StatusCause> {
        let mut out = self.validate(new);
        // What may change: resources.requests (bound claims, growing only) and the volume
        // attributes class. Everything else of the spec is compared as a whole.
        let strip = |spec: &Value| {
            let mut s = spec.clone();
            if let Some(m) = s.as_object_mut() {
                // Objects stored before the default existed compare as defaulted.
                m.insert("volumeMode".into(), defaulted_mode(spec));
                m.remove("volumeAttributesClassName");
                if let Some(r) = m.get_mut("resources").and_then(Value::as_object_mut) {
                    r.remove("requests");
                }
            }
            s
        };
        let bound = old["status"]["phase"] == "Bound";
        let requests_changed =
            new["spec"]["resources"]["requests"] != old["spec"]["resources"]["requests"];
        if strip(&new["spec"]) != strip(&old["spec"]) || (requests_changed && !bound) {
            out.push(field::forbidden(
                "spec",
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            ));
        } else if requests_changed {
            let q = |v: &Value| {
                v["spec"]["resources"]["requests"]["storage"]
                    .as_str()
                    .and_then(crate::limitranger::parse_quantity)
            };
            if let (Some(n), Some(o)) = (q(new), q(old)) {
                if n < o {
                    out.push(field::forbidden(
                        "spec.resources.requests.storage",
                        "field can not be less than previous value",
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(c: &[StatusCause]) -> Vec<String> {
        c.iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn pv_defaults_and_validation() {
        let s = PersistentVolumeStrategy;
        let mut pv = json!({"metadata": {"name": "pv"}, "status": {"phase": "Bound"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/d"}}});
        s.prepare_for_create(&mut pv);
        assert_eq!(pv["status"], json!({"phase": "Pending"}));
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(pv["spec"]["volumeMode"], "Filesystem");
        assert!(s.validate(&pv).is_empty(), "{:?}", s.validate(&pv));

        let bad = json!({"spec": {"accessModes": ["ReadWriteOncePod", "Sometimes"],
            "persistentVolumeReclaimPolicy": "Keep", "nfs": {"server": "s", "path": "/"},
            "hostPath": {"path": "/d"}}});
        let m = msgs(&s.validate(&bad));
        assert!(m.contains(&"spec.accessModes: Unsupported value: \"Sometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"".to_string()), "{m:?}");
        assert!(m.contains(&"spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes".to_string()), "{m:?}");
        assert!(
            m.contains(&"spec.capacity: Required value".to_string()),
            "{m:?}"
        );
        assert!(
            m.iter().any(|x| x
                .starts_with("spec.persistentVolumeReclaimPolicy: Unsupported value: \"Keep\"")),
            "{m:?}"
        );
        assert!(
            m.contains(&"spec.nfs: Forbidden: may not specify more than 1 volume type".to_string()),
            "{m:?}"
        );
        let none = json!({"spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi", "cpu": "1"}}});
        let m = msgs(&s.validate(&none));
        assert!(
            m.contains(&"spec: Required value: must specify a volume type".to_string()),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|x| x.starts_with("spec.capacity: Unsupported value")),
            "{m:?}"
        );

        let mut moved = pv.clone();
        moved["spec"]["hostPath"]["path"] = json!("/elsewhere");
        let m = msgs(&s.validate_update(&moved, &pv));
        assert!(
            m.iter()
                .any(|x| x.starts_with("spec.persistentvolumesource: Forbidden")),
            "{m:?}"
        );
    }

    #[test]
    fn pvc_defaults_validation_and_update() {
        let s = PersistentVolumeClaimStrategy;
        let mut pvc = json!({"metadata": {"name": "c"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        s.prepare_for_create(&mut pvc);
        assert_eq!(pvc["status"]["phase"], "Pending");
        assert_eq!(pvc["spec"]["volumeMode"], "Filesystem");
        assert!(s.validate(&pvc).is_empty());

        let m = msgs(&s.validate(&json!({"spec": {"resources": {"requests": {"storage": "0"}}}})));
        assert_eq!(
            m,
            [
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: Invalid value: \"0\": must be greater than zero"
            ]
        );
        let m = msgs(&s.validate(&json!({"spec": {"accessModes": ["ReadWriteOnce"]}})));
        assert_eq!(m, ["spec.resources[storage]: Required value"]);

        // Pending claims: the spec is immutable, requests included.
        let mut grown = pvc.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        let m = msgs(&s.validate_update(&grown, &pvc));
        assert_eq!(m, ["spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"]);
        // Bound claims may grow, not shrink; the class of volume attributes may change.
        let mut bound = pvc.clone();
        bound["status"]["phase"] = json!("Bound");
        assert!(s.validate_update(&grown, &bound).is_empty());
        let mut shrunk = bound.clone();
        shrunk["spec"]["resources"]["requests"]["storage"] = json!("512Mi");
        let m = msgs(&s.validate_update(&shrunk, &bound));
        assert_eq!(m, ["spec.resources.requests.storage: Forbidden: field can not be less than previous value"]);
        let mut vac = pvc.clone();
        vac["spec"]["volumeAttributesClassName"] = json!("gold");
        assert!(s.validate_update(&vac, &pvc).is_empty());
        let mut modes = pvc.clone();
        modes["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert_eq!(s.validate_update(&modes, &pvc).len(), 1);
    }
}
