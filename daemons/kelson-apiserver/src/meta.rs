//! The per-kind half of selectors: which fields each kind can be selected on.
//!
//! Parsing and matching of label and field selectors is kelson-apimachinery's (upstream's
//! grammar and messages); what upstream leaves to each kind's strategy is the set of field
//! labels (`GetAttrs`/`AddFieldLabelConversionFunc`): every kind has `metadata.name` and
//! `metadata.namespace`, pods add `spec.nodeName`, `status.phase`, … ([`field_value`]). A
//! selector on any other field is a 400 like upstream's "field label not supported".
//!
//! Selectors run on the stored object (the watch cache's selectable view of it). A resource
//! served from another's storage names the labels its own way: events.k8s.io/v1 selects on
//! `regarding.name`, `reportingController`, ..., which are renamed to core/v1's labels when
//! the selector is parsed (upstream's field label conversion; `crate::events::field_label`).

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
        // Upstream's `ToSelectableFields` of core Events: `source` is the source component,
        // or the reporting controller when there is none.
        ("Event", "source") => Some(
            obj["source"]["component"]
                .as_str()
                .filter(|c| !c.is_empty())
                .or_else(|| obj["reportingComponent"].as_str())
                .unwrap_or_default()
                .to_string(),
        ),
        (
            "Event",
            "involvedObject.kind"
            | "involvedObject.name"
            | "involvedObject.namespace"
            | "involvedObject.uid"
            | "involvedObject.apiVersion"
            | "involvedObject.resourceVersion"
            | "involvedObject.fieldPath"
            | "reason"
            | "reportingComponent"
            | "type",
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
        "Event" => &[
            &["involvedObject"],
            &["reason"],
            &["type"],
            &["source"],
            &["reportingComponent"],
        ],
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

/// Renames a field label of the request's resource to the stored kind's (`None`: unsupported).
type LabelFn = fn(&str) -> Option<&'static str>;

/// A field selector checked against the field labels of one kind.
#[derive(Debug, Clone)]
pub struct FieldSelector {
    kind: &'static str,
    sel: selector::FieldSelector,
    /// For resources stored as another kind's objects (events.k8s.io/v1 Events).
    rename: Option<LabelFn>,
}

impl FieldSelector {
    /// Parses `text` (upstream's syntax) and refuses fields `kind` has no label for.
    pub fn parse(text: &str, kind: &'static str) -> Result<Self, ApiError> {
        Self::parse_with(text, kind, None)
    }

    /// Parses a selector of requests to `info`, whose labels may be renamed to those of the
    /// stored objects (events.k8s.io/v1 → core/v1 Events).
    pub fn for_resource(
        text: &str,
        info: &crate::registry::ResourceInfo,
    ) -> Result<Self, ApiError> {
        let rename =
            crate::events::is_events_v1(info).then_some(crate::events::field_label as LabelFn);
        Self::parse_with(text, info.kind, rename)
    }

    fn parse_with(
        text: &str,
        kind: &'static str,
        rename: Option<LabelFn>,
    ) -> Result<Self, ApiError> {
        let sel = selector::FieldSelector::parse(text)?;
        let fs = FieldSelector { kind, sel, rename };
        for t in fs.sel.terms() {
            let ok = fs
                .stored_label(&t.field)
                .is_some_and(|l| field_value(kind, &Value::Null, l).is_some());
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {}",
                    t.field
                )));
            }
        }
        Ok(fs)
    }

    /// The label of the stored kind a requested label selects on.
    fn stored_label<'a>(&self, label: &'a str) -> Option<&'a str> {
        match self.rename {
            Some(f) => f(label),
            None => Some(label),
        }
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
                let label = self.stored_label(&t.field)?;
                field_value(self.kind, obj, label)
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
                json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p", "namespace": "d", "uid": "u",
                    "apiVersion": "v1", "resourceVersion": "7", "fieldPath": "spec.containers{c}"},
                    "reason": "R", "type": "Normal", "source": {"component": "x", "host": "h"},
                    "reportingComponent": "r", "message": "m"}),
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
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
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

    #[test]
    fn event_field_selectors_of_both_groups_run_on_the_core_object() {
        let core = crate::registry::lookup("", "v1", "events").unwrap();
        let v1 = crate::registry::lookup("events.k8s.io", "v1", "events").unwrap();
        let ev = json!({"metadata": {"name": "e", "namespace": "d"},
            "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": "spec"},
            "reason": "R", "type": "Warning", "reportingComponent": "ctl"});
        let m = |info, text: &str| {
            FieldSelector::for_resource(text, info)
                .unwrap()
                .matches(&selectable_view("Event", &ev))
        };
        assert!(m(
            core,
            "involvedObject.name=p,involvedObject.fieldPath=spec,type=Warning"
        ));
        assert!(
            m(core, "reportingComponent=ctl,source=ctl"),
            "source falls back to the reporter"
        );
        assert!(m(
            v1,
            "regarding.name=p,regarding.kind=Pod,reportingController=ctl"
        ));
        assert!(m(v1, "reason=R,metadata.name=e,source=ctl"));
        assert!(!m(v1, "regarding.name=q"));
        assert!(!m(core, "source=other"));
        for (info, bad) in [
            (v1, "involvedObject.name=p"),
            (v1, "reportingComponent=ctl"),
            (v1, "note=x"),
            (core, "regarding.name=p"),
            (core, "message=x"),
        ] {
            let e = FieldSelector::for_resource(bad, info).unwrap_err();
            assert_eq!(e.code, 400, "{bad}");
            assert!(
                e.message.starts_with("field label not supported: "),
                "{}",
                e.message
            );
        }
        let mut with_source = ev.clone();
        with_source["source"] = json!({"component": "kubelet"});
        assert!(FieldSelector::for_resource("source=kubelet", v1)
            .unwrap()
            .matches(&selectable_view("Event", &with_source)));
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
