//! ResourceQuota admission: object-count quotas charged at create time.
//!
//! As upstream's quota admission (the last validating plugin): an object created in a
//! namespace is charged against every ResourceQuota there whose `spec.hard` names a resource
//! the object counts for (`pods` / `count/pods`, the same pair for services, secrets,
//! configmaps, persistentvolumeclaims, replicationcontrollers and resourcequotas, and
//! `count/<resource>.<group>` for every other kind). If `status.used + 1` would exceed
//! `hard`, the create is refused with upstream's 403 (`exceeded quota: q, requested:
//! pods=1, used: pods=2, limited: pods=2`); a quota whose `status.used` does not know the
//! resource yet is `status unknown for quota` (the controller manager's resourcequota
//! controller fills it). Otherwise `status.used` is incremented through the store's
//! optimistic-concurrency update (a conflicting write retries on the fresh quota and is
//! judged again), before the object is stored: like upstream, a create that then fails
//! leaves the charge until the controller recomputes usage.
//!
//! Deviation: compute resources (`requests.cpu`, `limits.memory`, ...) are not charged at
//! admission yet; the controller's recomputation accounts them.

use kelson_apimachinery::ApiError;
use kelson_apistorage::Preconditions;
use serde_json::{json, Value};

use crate::registry::{self, ResourceExt, ResourceInfo};
use crate::server::Api;

/// The quota resource names an object of `info` counts for.
pub fn counted_as(info: &ResourceInfo) -> Vec<String> {
    let legacy = [
        "pods",
        "services",
        "secrets",
        "configmaps",
        "persistentvolumeclaims",
        "replicationcontrollers",
        "resourcequotas",
    ];
    if info.group.is_empty() {
        let mut v = vec![format!("count/{}", info.resource)];
        if legacy.contains(&info.resource) {
            v.insert(0, info.resource.to_string());
        }
        v
    } else {
        vec![format!("count/{}.{}", info.resource, info.group)]
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => crate::limitranger::parse_quantity(s).map(|f| f as i64),
        _ => None,
    }
}

/// Charges the creation of one object of `info` named `name` in `ns` (skipped for dry-run).
pub async fn admit_create(
    api: &Api,
    info: &ResourceInfo,
    ns: &str,
    name: &str,
    dry: bool,
) -> Result<(), ApiError> {
    let resources = counted_as(info);
    let qinfo =
        registry::lookup("", "v1", "resourcequotas").expect("resourcequotas are registered");
    let quotas = api
        .admission_list(qinfo, Some(ns))
        .await
        .map_err(|e| e.to_api_error("", "resourcequotas", ""))?;
    let deny = |why: String| ApiError::forbidden_for(info.group, info.resource, name, &why);
    for quota in quotas {
        let qname = quota["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let charged: Vec<String> = resources
            .iter()
            .filter(|r| quota["spec"]["hard"].get(r.as_str()).is_some())
            .cloned()
            .collect();
        if charged.is_empty() {
            continue;
        }
        let key = format!("{}{qname}", qinfo.key_prefix(&api.root, Some(ns)));
        let res = api
            .store
            .guaranteed_update(&key, &Preconditions::default(), dry, |mut q| {
                let mut unknown = Vec::new();
                let mut over = Vec::new();
                for r in &charged {
                    let hard = int(&q["spec"]["hard"][r]).unwrap_or(0);
                    let Some(used) = int(&q["status"]["used"][r]) else {
                        unknown.push(r.clone());
                        continue;
                    };
                    if used + 1 > hard {
                        over.push((r.clone(), used, hard));
                    }
                    q["status"]["used"][r] = json!((used + 1).to_string());
                }
                if !unknown.is_empty() {
                    return Err(deny(format!(
                        "status unknown for quota: {qname}, resources: {}",
                        unknown.join(",")
                    )));
                }
                if !over.is_empty() {
                    let f = |pick: &dyn Fn(&(String, i64, i64)) -> i64| {
                        over.iter()
                            .map(|o| format!("{}={}", o.0, pick(o)))
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    return Err(deny(format!(
                        "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                        f(&|_| 1),
                        f(&|o| o.1),
                        f(&|o| o.2)
                    )));
                }
                Ok(q)
            })
            .await;
        match res {
            Ok(_) => {}
            // Deleted meanwhile: nothing to charge.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into_api_error("", "resourcequotas", &qname)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names() {
        let pods = registry::lookup("", "v1", "pods").unwrap();
        assert_eq!(counted_as(pods), vec!["pods", "count/pods"]);
        let deps = registry::lookup("apps", "v1", "deployments").unwrap();
        assert_eq!(counted_as(deps), vec!["count/deployments.apps"]);
        let ev = registry::lookup("", "v1", "events").unwrap();
        assert_eq!(counted_as(ev), vec!["count/events"]);
        assert_eq!(int(&json!("2")), Some(2));
        assert_eq!(int(&json!(3)), Some(3));
    }
}
