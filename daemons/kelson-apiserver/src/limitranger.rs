//! LimitRanger admission: container defaults and bounds from a namespace's LimitRanges.
//!
//! For every `type: Container` item of every LimitRange in the pod's namespace, as upstream:
//! the item is defaulted first (`default` ← `max`, `defaultRequest` ← `default`, then ←
//! `min`: upstream's `SetDefaults_LimitRangeItem`; Kelson applies it when reading, the stored
//! LimitRange keeps what the client wrote); containers (and init containers) missing a
//! limit or request get the default and the pod is annotated
//! `kubernetes.io/limit-ranger: LimitRanger plugin set: ...`; then every container must lie
//! within `min`/`max` (and `maxLimitRequestRatio`), else 403 with upstream's words
//! (`maximum cpu usage per Container is 1, but limit is 2`). Only pod creation is judged (as
//! upstream, which skips updates that do not change resources — pod resources are immutable
//! here). `type: Pod` and `PersistentVolumeClaim` items are not enforced yet.
//!
//! Quantities are compared as f64 (exact for every integer milli-value below 2^53, which
//! covers real cpu and memory sizes); the messages quote the strings the objects carry.

use kelson_apimachinery::ApiError;
use serde_json::{json, Map, Value};

use crate::registry;
use crate::server::Api;

/// A Kubernetes quantity (`500m`, `128Mi`, `1.5G`, `1e3`) as a number of units.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mul = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * mul)
}

/// A quantity as JSON may hold it (a string, or a bare number).
fn qstr(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn q(v: &Value) -> Option<f64> {
    qstr(v).and_then(|s| parse_quantity(&s))
}

/// Upstream's `SetDefaults_LimitRangeItem` for a Container item.
fn defaulted(item: &Value) -> Value {
    let mut item = item.clone();
    let mut fill = |to: &str, from: &str| {
        let src = item[from].as_object().cloned().unwrap_or_default();
        if !item[to].is_object() {
            item[to] = json!({});
        }
        let dst = item[to].as_object_mut().expect("just made an object");
        for (k, v) in src {
            dst.entry(k).or_insert(v);
        }
    };
    fill("default", "max");
    fill("defaultRequest", "default");
    fill("defaultRequest", "min");
    item
}

fn container_items(ranges: &[Value]) -> Vec<Value> {
    ranges
        .iter()
        .flat_map(|lr| lr["spec"]["limits"].as_array().cloned().unwrap_or_default())
        .filter(|i| i["type"] == "Container")
        .map(|i| defaulted(&i))
        .collect()
}

/// Sets missing limits and requests from the items' defaults; returns what was set, in
/// upstream's annotation words (`cpu request for container c`).
fn apply_defaults(pod: &mut Value, items: &[Value]) -> Vec<String> {
    let mut set = Vec::new();
    for list in ["initContainers", "containers"] {
        let kind = if list == "initContainers" {
            "init container"
        } else {
            "container"
        };
        let Some(cs) = pod["spec"][list].as_array_mut() else {
            continue;
        };
        for c in cs {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            for item in items {
                for (field, src, what) in [
                    ("requests", "defaultRequest", "request"),
                    ("limits", "default", "limit"),
                ] {
                    for (res, val) in item[src].as_object().into_iter().flatten() {
                        if !c["resources"].is_object() {
                            c["resources"] = json!({});
                        }
                        if !c["resources"][field].is_object() {
                            c["resources"][field] = Value::Object(Map::new());
                        }
                        let m = c["resources"][field]
                            .as_object_mut()
                            .expect("just made an object");
                        if !m.contains_key(res) {
                            m.insert(res.clone(), val.clone());
                            set.push(format!("{res} {what} for {kind} {name}"));
                        }
                    }
                }
            }
        }
    }
    set
}

/// The bound violations of every container, upstream's messages.
fn check_bounds(pod: &Value, items: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_array().into_iter().flatten() {
            let req = &c["resources"]["requests"];
            let lim = &c["resources"]["limits"];
            for item in items {
                for (res, min) in item["min"].as_object().into_iter().flatten() {
                    let m = qstr(min).unwrap_or_default();
                    match q(&req[res]) {
                        None => errs.push(format!(
                            "minimum {res} usage per Container is {m}.  No request is specified"
                        )),
                        Some(r) if q(min).is_some_and(|mv| r < mv) => errs.push(format!(
                            "minimum {res} usage per Container is {m}, but request is {}",
                            qstr(&req[res]).unwrap_or_default()
                        )),
                        _ => {}
                    }
                }
                for (res, max) in item["max"].as_object().into_iter().flatten() {
                    let m = qstr(max).unwrap_or_default();
                    match q(&lim[res]) {
                        None => errs.push(format!(
                            "maximum {res} usage per Container is {m}.  No limit is specified"
                        )),
                        Some(l) if q(max).is_some_and(|mv| l > mv) => errs.push(format!(
                            "maximum {res} usage per Container is {m}, but limit is {}",
                            qstr(&lim[res]).unwrap_or_default()
                        )),
                        _ => {}
                    }
                }
                for (res, ratio) in item["maxLimitRequestRatio"]
                    .as_object()
                    .into_iter()
                    .flatten()
                {
                    let (Some(l), Some(r), Some(max)) = (q(&lim[res]), q(&req[res]), q(ratio))
                    else {
                        continue;
                    };
                    if r > 0.0 && l / r > max {
                        errs.push(format!(
                            "{res} max limit to request ratio per Container is {}, but provided ratio is {:.6}",
                            qstr(ratio).unwrap_or_default(),
                            l / r
                        ));
                    }
                }
            }
        }
    }
    errs
}

/// LimitRanger for a pod being created in `ns`.
pub async fn admit_pod(api: &Api, ns: &str, name: &str, pod: &mut Value) -> Result<(), ApiError> {
    let info = registry::lookup("", "v1", "limitranges").expect("limitranges are registered");
    let ranges = api
        .admission_list(info, Some(ns))
        .await
        .map_err(|e| e.to_api_error("", "limitranges", ""))?;
    let items = container_items(&ranges);
    if items.is_empty() {
        return Ok(());
    }
    let set = apply_defaults(pod, &items);
    if !set.is_empty() {
        if !pod["metadata"]["annotations"].is_object() {
            pod["metadata"]["annotations"] = json!({});
        }
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"] =
            json!(format!("LimitRanger plugin set: {}", set.join("; ")));
    }
    let errs = check_bounds(pod, &items);
    match errs.len() {
        0 => Ok(()),
        1 => Err(ApiError::forbidden_for("", "pods", name, &errs[0])),
        _ => Err(ApiError::forbidden_for(
            "",
            "pods",
            name,
            &format!("[{}]", errs.join(", ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("2e3"), Some(2000.0));
        assert_eq!(parse_quantity("1.5k"), Some(1500.0));
        assert_eq!(parse_quantity("x"), None);
    }

    #[test]
    fn defaults_then_bounds() {
        let items = container_items(&[json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "1"}, "defaultRequest": {"cpu": "100m"},
             "default": {"memory": "64Mi"}}
        ]}})]);
        let mut pod = json!({"spec": {"containers": [
            {"name": "a"},
            {"name": "b", "resources": {"limits": {"cpu": "2"}}}
        ]}});
        let set = apply_defaults(&mut pod, &items);
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "100m"
        );
        // default ← max, defaultRequest ← default for memory.
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"]["memory"],
            "64Mi"
        );
        assert!(set.contains(&"cpu limit for container a".to_string()));
        assert!(!set.contains(&"cpu limit for container b".to_string()));
        assert_eq!(
            check_bounds(&pod, &items),
            vec!["maximum cpu usage per Container is 1, but limit is 2".to_string()]
        );
    }
}
