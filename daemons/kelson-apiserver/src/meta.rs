//! The per-kind half of selectors: which fields each kind can be selected on.
//!
//! Parsing and matching of label and field selectors is kelson-apimachinery's (upstream's
//! grammar and messages); what upstream leaves to each kind's strategy is the set of field
//! labels (`GetAttrs`/`AddFieldLabelConversionFunc`): every kind has `metadata.name` and
//! `metadata.namespace`, pods add `spec.nodeName`, `status.phase`, … ([`field_value`]). A
//! selector on any other field is a 400 like upstream's "field label not supported".

use std::collections::BTreeMap;

use kelson_apimachinery::selector::{self, Selector};
use kelson_apimachinery::ApiError;
use serde_json::Value;

/// A label selector from a query string (`app=web,tier in (fe)`); errors are 400s.
pub fn label_selector(text: &str) -> Result<Selector, ApiError> {
    Ok(Selector::parse(text)?)
}

/// Whether `obj`'s labels match `sel`.
pub fn labels_match(sel: &Selector, obj: &Value) -> bool {
    sel.matches(&obj["metadata"]["labels"])
}

/// The fields a kind may be selected on, and their values.
pub fn field_value(kind: &str, obj: &Value, field: &str) -> Option<Option<String>> {
    let s = |v: &Value| v.as_str().map(String::from);
    Some(match (kind, field) {
        (_, "metadata.name") => s(&obj["metadata"]["name"]),
        (_, "metadata.namespace") => s(&obj["metadata"]["namespace"]),
        ("Pod", "spec.nodeName") => s(&obj["spec"]["nodeName"]),
        ("Pod", "spec.restartPolicy") => s(&obj["spec"]["restartPolicy"]),
        ("Pod", "spec.schedulerName") => s(&obj["spec"]["schedulerName"]),
        ("Pod", "spec.serviceAccountName") => s(&obj["spec"]["serviceAccountName"]),
        ("Pod", "spec.hostNetwork") => Some(
            obj["spec"]["hostNetwork"]
                .as_bool()
                .unwrap_or(false)
                .to_string(),
        ),
        ("Pod", "status.phase") => s(&obj["status"]["phase"]),
        ("Pod", "status.podIP") => s(&obj["status"]["podIP"]),
        ("Pod", "status.nominatedNodeName") => s(&obj["status"]["nominatedNodeName"]),
        ("Node", "spec.unschedulable") => Some(
            obj["spec"]["unschedulable"]
                .as_bool()
                .unwrap_or(false)
                .to_string(),
        ),
        ("Namespace", "status.phase") => s(&obj["status"]["phase"]),
        ("CertificateSigningRequest", "spec.signerName") => s(&obj["spec"]["signerName"]),
        ("Secret", "type") => s(&obj["type"]),
        (
            "Event",
            "involvedObject.kind"
            | "involvedObject.name"
            | "involvedObject.namespace"
            | "involvedObject.uid"
            | "reason"
            | "type"
            | "source",
        ) => {
            let mut v = obj;
            for p in field.split('.') {
                v = &v[p];
            }
            s(v)
        }
        ("ReplicaSet" | "Job", "status.replicas") => {
            obj["status"]["replicas"].as_i64().map(|n| n.to_string())
        }
        _ => return None,
    })
}

/// The paths (beyond `metadata.name`/`namespace`/`labels`) [`field_value`] reads per kind.
fn selectable_paths(kind: &str) -> &'static [&'static [&'static str]] {
    match kind {
        "Pod" => &[
            &["spec", "nodeName"],
            &["spec", "restartPolicy"],
            &["spec", "schedulerName"],
            &["spec", "serviceAccountName"],
            &["spec", "hostNetwork"],
            &["status", "phase"],
            &["status", "podIP"],
            &["status", "nominatedNodeName"],
        ],
        "Node" => &[&["spec", "unschedulable"]],
        "Namespace" => &[&["status", "phase"]],
        "CertificateSigningRequest" => &[&["spec", "signerName"]],
        "Secret" => &[&["type"]],
        "Event" => &[&["involvedObject"], &["reason"], &["type"], &["source"]],
        "ReplicaSet" | "Job" => &[&["status", "replicas"]],
        _ => &[],
    }
}

/// What the watch cache keeps of an object for selectors: its name, namespace and labels and
/// the kind's field labels' sources, so a selector on the cache never touches the full object
/// (and the cache does not keep a second full tree per object).
pub fn selectable_view(kind: &str, obj: &Value) -> Value {
    let m = &obj["metadata"];
    let mut meta = serde_json::Map::new();
    for f in ["name", "namespace", "labels"] {
        if !m[f].is_null() {
            meta.insert(f.into(), m[f].clone());
        }
    }
    let mut v = serde_json::json!({"metadata": meta});
    for path in selectable_paths(kind) {
        let mut src = obj;
        for p in *path {
            src = &src[*p];
        }
        if src.is_null() {
            continue;
        }
        let mut dst = &mut v;
        for p in &path[..path.len() - 1] {
            dst = dst
                .as_object_mut()
                .expect("built as objects")
                .entry(*p)
                .or_insert_with(|| serde_json::json!({}));
        }
        dst[path[path.len() - 1]] = src.clone();
    }
    v
}

/// A field selector checked against the field labels of one kind.
#[derive(Debug, Clone)]
pub struct FieldSelector {
    kind: &'static str,
    sel: selector::FieldSelector,
}

impl FieldSelector {
    /// Parses `text` (upstream's syntax) and refuses fields `kind` has no label for.
    pub fn parse(text: &str, kind: &'static str) -> Result<Self, ApiError> {
        let sel = selector::FieldSelector::parse(text)?;
        for t in sel.terms() {
            if field_value(kind, &Value::Null, &t.field).is_none() {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {}",
                    t.field
                )));
            }
        }
        Ok(FieldSelector { kind, sel })
    }

    /// Whether `obj`'s field labels satisfy the selector.
    pub fn matches(&self, obj: &Value) -> bool {
        if self.sel.is_empty() {
            return true;
        }
        let fields: BTreeMap<String, String> = self
            .sel
            .terms()
            .iter()
            .filter_map(|t| {
                field_value(self.kind, obj, &t.field)
                    .flatten()
                    .map(|v| (t.field.clone(), v))
            })
            .collect();
        self.sel.matches(&fields)
    }

    /// The name an exact `metadata.name=` term pins, if any (single-object watches).
    pub fn exact_name(&self) -> Option<&str> {
        self.sel.exact_match("metadata.name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}});
        for (s, want) in [
            ("app=web", true),
            ("app==web,tier=fe", true),
            ("app!=web", false),
            ("tier in (fe,be)", true),
            ("tier notin (fe)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("", true),
        ] {
            assert_eq!(labels_match(&label_selector(s).unwrap(), &o), want, "{s}");
        }
        assert_eq!(label_selector("a b c").unwrap_err().code, 400);
        let sel = selector::label_selector_as_selector(Some(&json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]}))).unwrap();
        assert!(labels_match(&sel, &o));
    }

    #[test]
    fn selectable_view_answers_every_field_label_like_the_object() {
        let objs = [
            (
                "Pod",
                json!({"metadata": {"name": "p", "namespace": "d", "labels": {"a": "b"}, "uid": "u"},
                "spec": {"nodeName": "n1", "restartPolicy": "Always", "schedulerName": "s",
                         "serviceAccountName": "sa", "hostNetwork": true, "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": "10.0.0.1", "nominatedNodeName": "n2"}}),
            ),
            (
                "Node",
                json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}}),
            ),
            (
                "Namespace",
                json!({"metadata": {"name": "n"}, "status": {"phase": "Active"}}),
            ),
            (
                "CertificateSigningRequest",
                json!({"metadata": {"name": "c"}, "spec": {"signerName": "x/y"}}),
            ),
            (
                "Secret",
                json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dg=="}}),
            ),
            (
                "Event",
                json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p", "namespace": "d", "uid": "u"}, "reason": "R", "type": "Normal", "source": "x"}),
            ),
            (
                "ReplicaSet",
                json!({"metadata": {"name": "r"}, "status": {"replicas": 3}}),
            ),
            (
                "Job",
                json!({"metadata": {"name": "j"}, "status": {"replicas": 1}}),
            ),
        ];
        let fields = [
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
            "spec.unschedulable",
            "spec.signerName",
            "type",
            "involvedObject.kind",
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.uid",
            "reason",
            "source",
            "status.replicas",
        ];
        for (kind, obj) in objs {
            let view = selectable_view(kind, &obj);
            assert_eq!(view["metadata"]["labels"], obj["metadata"]["labels"]);
            for f in fields {
                assert_eq!(
                    field_value(kind, &view, f),
                    field_value(kind, &obj, f),
                    "{kind} {f}"
                );
            }
        }
        let pod = selectable_view("Pod", &objs_pod());
        assert!(pod["spec"].get("containers").is_none(), "{pod}");
    }

    fn objs_pod() -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}], "nodeName": "n"}})
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", "Pod")
                .unwrap()
                .matches(&pod)
        );
        assert!(!FieldSelector::parse("metadata.name=q", "Pod")
            .unwrap()
            .matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=", "Pod")
            .unwrap()
            .matches(&json!({})));
        assert_eq!(
            FieldSelector::parse("spec.nodeName=x", "ConfigMap")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            FieldSelector::parse("metadata.name=a", "Pod")
                .unwrap()
                .exact_name(),
            Some("a")
        );
    }
}
