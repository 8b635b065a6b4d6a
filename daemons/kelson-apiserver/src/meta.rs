//! Object-meta helpers: label and field selectors, name validation with upstream's messages,
//! generateName suffixes, timestamps and kubectl-style ages.
//!
//! Selectors are parsed once per request into small ASTs and evaluated against JSON objects;
//! field selectors support what upstream supports for every kind (`metadata.name`,
//! `metadata.namespace`) plus the per-kind extras from [`field_value`] (pods' `spec.nodeName`,
//! `status.phase`, …); other fields are a 400 like upstream's "field label not supported".

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{ApiError, StatusCause};

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (terms are ANDed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelReq>);

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = |m: &str| ApiError::bad_request(format!("unable to parse requirement: {m}"));
        let mut reqs = Vec::new();
        for t in split_terms(s) {
            let lower = t.to_string();
            let req = if let Some(k) = lower.strip_prefix('!') {
                LabelReq::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = lower.split_once("!=") {
                LabelReq::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = lower.split_once("==") {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = lower.split_once('=') {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some(idx) = lower.find(" notin ").or_else(|| lower.find(" notin(")) {
                LabelReq::NotIn(
                    lower[..idx].trim().into(),
                    set_values(&lower[idx + 6..]).ok_or_else(|| bad(&t))?,
                )
            } else if let Some(idx) = lower.find(" in ").or_else(|| lower.find(" in(")) {
                LabelReq::In(
                    lower[..idx].trim().into(),
                    set_values(&lower[idx + 3..]).ok_or_else(|| bad(&t))?,
                )
            } else {
                LabelReq::Exists(lower.trim().into())
            };
            let key = match &req {
                LabelReq::Eq(k, _)
                | LabelReq::Ne(k, _)
                | LabelReq::In(k, _)
                | LabelReq::NotIn(k, _)
                | LabelReq::Exists(k)
                | LabelReq::NotExists(k) => k,
            };
            if !valid_label_key(key) {
                return Err(bad(&t));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// From a `metav1.LabelSelector` object (matchLabels + matchExpressions).
    pub fn from_object(sel: &Value) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(LabelReq::Eq(
                    k.clone(),
                    v.as_str().unwrap_or_default().into(),
                ));
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let k = e["key"].as_str().unwrap_or_default().to_string();
                let vals: Vec<String> = e["values"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                reqs.push(match e["operator"].as_str().unwrap_or_default() {
                    "In" => LabelReq::In(k, vals),
                    "NotIn" => LabelReq::NotIn(k, vals),
                    "Exists" => LabelReq::Exists(k),
                    "DoesNotExist" => LabelReq::NotExists(k),
                    op => return Err(format!("{op:?} is not a valid label selector operator")),
                });
            }
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches_labels(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::Ne(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.matches_labels(obj["metadata"]["labels"].as_object())
    }
}

fn set_values(s: &str) -> Option<Vec<String>> {
    let s = s.trim();
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

/// A parsed field selector.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

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

impl FieldSelector {
    pub fn parse(s: &str, kind: &str) -> Result<Self, ApiError> {
        let mut out = Vec::new();
        for t in split_terms(s) {
            let (k, eq, v) = if let Some((k, v)) = t.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = t.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = t.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{t}'"
                )));
            };
            let k = k.trim().to_string();
            if field_value(kind, &Value::Null, &k).is_none() {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {k}"
                )));
            }
            out.push((k, eq, v.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn matches(&self, kind: &str, obj: &Value) -> bool {
        self.0.iter().all(|(k, eq, v)| {
            let have = field_value(kind, obj, k).flatten().unwrap_or_default();
            (have == *v) == *eq
        })
    }

    /// The name an exact `metadata.name=` term pins, if any (single-object watches).
    pub fn exact_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, eq, _)| k == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

/// RFC 3339 in seconds, UTC (`2024-01-02T03:04:05Z`), as upstream's metav1.Time.
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    now.format(&Rfc3339).unwrap_or_default()
}

pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// kubectl's short human duration ("5s", "3m", "2d3h", "45d", "2y").
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rem = s % 60;
        return if rem == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rem}s")
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let rm = (s % 3600) / 60;
        return if rm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rm}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    let d = h / 24;
    if d < 8 {
        let rh = h % 24;
        return if rh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{rh}h")
        };
    }
    if d < 365 * 2 {
        return format!("{d}d");
    }
    let y = d / 365;
    if y < 8 {
        let rd = d % 365;
        return if rd == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{rd}d")
        };
    }
    format!("{y}y")
}

/// Age of an object from its creationTimestamp, "<unknown>" when absent.
pub fn age(obj: &Value) -> String {
    match obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(parse_time)
    {
        Some(t) => human_duration((OffsetDateTime::now_utc() - t).whole_seconds()),
        None => "<unknown>".into(),
    }
}

/// generateName's 5-character suffix from upstream's alphabet (no vowels, no look-alikes).
pub fn name_suffix() -> String {
    use rand::Rng;
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = rand::thread_rng();
    (0..5)
        .map(|_| ALPHA[r.gen_range(0..ALPHA.len())] as char)
        .collect()
}

/// DNS-1123 subdomain: the rule for most object names.
pub fn validate_subdomain(field: &str, name: &str) -> Vec<StatusCause> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        vec![]
    } else {
        vec![StatusCause::invalid(field, format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"))]
    }
}

/// DNS-1123 label: namespaces, services, ports' names.
pub fn validate_label(field: &str, name: &str) -> Vec<StatusCause> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        vec![]
    } else {
        vec![StatusCause::invalid(field, format!("Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"))]
    }
}

/// Label keys and values (metadata.labels).
pub fn validate_labels(field: &str, labels: &Value) -> Vec<StatusCause> {
    let mut out = Vec::new();
    let Some(m) = labels.as_object() else {
        return out;
    };
    for (k, v) in m {
        let (prefix, name) = match k.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
        let prefix_ok = prefix.is_none_or(|p| validate_subdomain("", p).is_empty());
        if !name_ok || !prefix_ok {
            out.push(StatusCause::invalid(field, format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
        }
        let val = v.as_str().unwrap_or("\u{0}");
        let val_ok = val.is_empty()
            || (val.len() <= 63
                && val
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
                && val.as_bytes()[0].is_ascii_alphanumeric()
                && val.as_bytes()[val.len() - 1].is_ascii_alphanumeric());
        if !val_ok {
            out.push(StatusCause::invalid(field, format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
        }
    }
    out
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
            assert_eq!(LabelSelector::parse(s).unwrap().matches(&o), want, "{s}");
        }
        assert!(LabelSelector::parse("a b c").is_err());
        let sel = LabelSelector::from_object(&json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]})).unwrap();
        assert!(sel.matches(&o));
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", "Pod")
                .unwrap()
                .matches("Pod", &pod)
        );
        assert!(!FieldSelector::parse("metadata.name=q", "Pod")
            .unwrap()
            .matches("Pod", &pod));
        assert!(FieldSelector::parse("spec.nodeName=", "Pod")
            .unwrap()
            .matches("Pod", &json!({})));
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

    #[test]
    fn names_and_durations() {
        assert!(validate_subdomain("metadata.name", "web.example-1").is_empty());
        assert!(!validate_subdomain("metadata.name", "Web").is_empty());
        assert!(!validate_label("metadata.name", "a.b").is_empty());
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(185), "3m5s");
        assert_eq!(human_duration(3600 * 5), "5h");
        assert_eq!(human_duration(86400 * 3), "3d");
        assert_eq!(name_suffix().len(), 5);
        assert!(
            validate_labels("metadata.labels", &json!({"app": "ok", "bad key!": "x"})).len() == 1
        );
        assert!(parse_time(&now_rfc3339()).is_some());
    }
}
