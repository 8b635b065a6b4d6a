//! Helpers the controllers share: label selectors, owner references, pod readiness and
//! availability, the pod-template hash, and Go-style duration flags.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;

/// Whether `labels` satisfy `sel` (matchLabels and matchExpressions). An empty selector
/// matches everything, as in apimachinery's `LabelSelectorAsSelector`; callers that must not
/// adopt everything check for emptiness first.
pub fn selector_matches(sel: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    if let Some(ml) = &sel.match_labels {
        if ml.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.as_deref().unwrap_or_default();
        let got = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => got.is_some_and(|g| vals.contains(g)),
            "NotIn" => got.is_none_or(|g| !vals.contains(g)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether the selector selects nothing-in-particular (no labels, no expressions).
pub fn selector_is_empty(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty())
}

/// A plain map selector (`Service.spec.selector`) as a `LabelSelector`.
pub fn map_selector(m: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(m.clone()),
        match_expressions: None,
    }
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The reference a controller puts on what it creates or adopts.
pub fn controller_ref(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn is_deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// Pods that count toward a controller's replicas: not finished and not being deleted.
pub fn is_pod_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed")) && !is_deleting(&p.metadata)
}

/// When the pod's Ready condition last became True, if it is True now.
pub fn ready_since(p: &Pod) -> Option<Timestamp> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if c.status != "True" {
        return None;
    }
    Some(
        c.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

pub fn is_pod_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Ready for at least `min_ready_seconds` (upstream `IsPodAvailable`).
pub fn is_pod_available(p: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(p) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(t) => t.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
    }
}

/// Seconds until a ready-but-not-yet-available pod becomes available.
pub fn secs_until_available(p: &Pod, min_ready_seconds: i32, now: Timestamp) -> Option<u64> {
    let t = ready_since(p)?;
    let at = t.as_second() + i64::from(min_ready_seconds);
    (at > now.as_second()).then(|| (at - now.as_second()) as u64)
}

/// FNV-1a 32-bit, the hash upstream's `ComputeHash` feeds the pod template through.
pub fn fnv32a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in *p {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// apimachinery's `rand.SafeEncodeString`: maps each byte onto an alphabet without vowels
/// (no accidental words) and without confusable characters.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// The `pod-template-hash` of a template (its canonical JSON) and the collision count.
pub fn pod_template_hash(template_json: &str, collision_count: Option<i32>) -> String {
    let cc = collision_count.map(|c| c.to_le_bytes());
    let mut parts: Vec<&[u8]> = vec![template_json.as_bytes()];
    if let Some(cc) = &cc {
        parts.push(cc);
    }
    safe_encode(&fnv32a(&parts).to_string())
}

/// Parses a Go-style duration flag: `50s`, `500ms`, `1m30s`, `2h` (the one parser all daemons
/// share).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    kelson_kube::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// Resolves an IntOrString (`maxSurge: 25%`) against `total`, rounding up or down.
pub fn scaled_value(
    v: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    total: i32,
    default: &str,
    round_up: bool,
) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let s = match v {
        Some(IntOrString::Int(i)) => return (*i).max(0),
        Some(IntOrString::String(s)) => s.as_str(),
        None => default,
    };
    match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(p) => {
            let x = p * i64::from(total);
            let r = if round_up { (x + 99) / 100 } else { x / 100 };
            r.clamp(0, i64::from(i32::MAX)) as i32
        }
        None => s.parse::<i32>().unwrap_or(0).max(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> =
            [("app".into(), "web".into()), ("tier".into(), "fe".into())].into();
        let mut sel = map_selector(&[("app".to_string(), "web".to_string())].into());
        assert!(selector_matches(&sel, Some(&labels)));
        sel.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "NotIn".into(),
            values: Some(vec!["fe".into()]),
        }]);
        assert!(!selector_matches(&sel, Some(&labels)));
        assert!(!selector_matches(&map_selector(&labels), None));
        assert!(selector_is_empty(&LabelSelector::default()));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50s").unwrap().as_secs(), 50);
        assert_eq!(parse_duration("1m30s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        // As Go: a bare number other than 0 has no unit.
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn percentages_round_like_upstream() {
        let p = IntOrString::String("25%".into());
        assert_eq!(scaled_value(Some(&p), 10, "25%", true), 3);
        assert_eq!(scaled_value(Some(&p), 10, "25%", false), 2);
        assert_eq!(
            scaled_value(Some(&IntOrString::Int(2)), 10, "25%", false),
            2
        );
        assert_eq!(scaled_value(None, 4, "25%", false), 1);
    }

    #[test]
    fn template_hash_is_stable_and_safe() {
        let a = pod_template_hash("{\"x\":1}", None);
        assert_eq!(a, pod_template_hash("{\"x\":1}", None));
        assert_ne!(a, pod_template_hash("{\"x\":1}", Some(1)));
        assert!(a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        // FNV-1a test vector.
        assert_eq!(fnv32a(&[b"a"]), 0xe40c292c);
    }
}
