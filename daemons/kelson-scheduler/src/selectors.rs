//! Label and node selector matching (metav1.LabelSelector, core NodeSelector terms), as
//! apimachinery's `labels` package evaluates them. Unknown operators never match: a scheduler
//! must refuse rather than guess.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub type Labels = BTreeMap<String, String>;

/// `selector` matches `labels`. A missing selector matches nothing (upstream's
/// `LabelSelectorAsSelector(nil)` = Nothing); an empty one matches everything.
pub fn label_selector_matches(selector: Option<&LabelSelector>, labels: &Labels) -> bool {
    let Some(sel) = selector else {
        return false;
    };
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.as_deref().unwrap_or(&[]);
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|h| vals.contains(h)),
            "NotIn" => have.is_none_or(|h| !vals.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn requirement_matches(r: &NodeSelectorRequirement, labels: &Labels) -> bool {
    let vals = r.values.as_deref().unwrap_or(&[]);
    let have = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => have.is_some_and(|h| vals.contains(h)),
        "NotIn" => have.is_none_or(|h| !vals.contains(h)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" | "Lt" => {
            let (Some(h), Some(v)) = (
                have.and_then(|h| h.parse::<i64>().ok()),
                vals.first().and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                h > v
            } else {
                h < v
            }
        }
        _ => false,
    }
}

/// One node selector term: all its expressions match (field selectors support only
/// `metadata.name`). An empty term matches nothing, as upstream.
pub fn node_selector_term_matches(t: &NodeSelectorTerm, name: &str, labels: &Labels) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
    let fields = t.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let mut name_labels = Labels::new();
    name_labels.insert("metadata.name".into(), name.into());
    exprs.iter().all(|r| requirement_matches(r, labels))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, &name_labels))
}

/// Terms are ORed.
pub fn node_selector_terms_match(terms: &[NodeSelectorTerm], name: &str, labels: &Labels) -> bool {
    terms
        .iter()
        .any(|t| node_selector_term_matches(t, name, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(p: &[(&str, &str)]) -> Labels {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }))
        .unwrap();
        assert!(label_selector_matches(
            Some(&sel),
            &labels(&[("app", "web")])
        ));
        assert!(!label_selector_matches(
            Some(&sel),
            &labels(&[("app", "web"), ("tier", "db")])
        ));
        assert!(!label_selector_matches(None, &labels(&[("app", "web")])));
        assert!(label_selector_matches(
            Some(&LabelSelector::default()),
            &labels(&[])
        ));
    }

    #[test]
    fn node_selector_terms() {
        let t: NodeSelectorTerm = serde_json::from_value(json!({
            "matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}],
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]
        }))
        .unwrap();
        assert!(node_selector_term_matches(
            &t,
            "n1",
            &labels(&[("cores", "8")])
        ));
        assert!(!node_selector_term_matches(
            &t,
            "n2",
            &labels(&[("cores", "8")])
        ));
        assert!(!node_selector_term_matches(
            &t,
            "n1",
            &labels(&[("cores", "2")])
        ));
        assert!(!node_selector_term_matches(
            &NodeSelectorTerm::default(),
            "n1",
            &labels(&[])
        ));
    }
}
