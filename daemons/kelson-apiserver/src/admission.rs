//! Admission for pod creation: the ServiceAccount and Priority plugins, as upstream runs them
//! (mutating, after NamespaceLifecycle and before validation).
//!
//! - ServiceAccount: a pod without `spec.serviceAccountName` gets `default` (and the deprecated
//!   `spec.serviceAccount` mirrors it). A pod that *names* a service account must name an
//!   existing one, else `403 error looking up service account <ns>/<name>: serviceaccount
//!   "<name>" not found`, upstream's words. Deviation: the implicit `default` is not required
//!   to exist yet, because the account is made by the controller manager, which API clients
//!   under test (scheduler, kubelet) often run without; upstream would refuse such pods.
//! - Priority: `spec.priority` comes from the PriorityClass named by
//!   `spec.priorityClassName`, else from the `globalDefault` class (the lowest value if several
//!   claim it), else 0; `spec.preemptionPolicy` from the class (default
//!   `PreemptLowerPriority`). An unknown class is `403 no PriorityClass with name <x> was found`;
//!   a client-set priority or policy that differs from the computed one is a 403 too.
//!   The two system classes exist from bootstrap ([`SYSTEM_PRIORITY_CLASSES`]).
//! - DefaultTolerationSeconds lives in the pod strategy (the not-ready / unreachable
//!   `NoExecute` tolerations for 300 s), since it needs no store lookups.

use kelson_apimachinery::ApiError;
use kelson_apistorage::{ListOptions, StorageError};
use serde_json::{json, Value};

use crate::handlers::key;
use crate::registry::{self, ResourceExt, ResourceInfo};
use crate::server::Api;

/// Upstream's built-in priority classes: (name, value, description).
pub const SYSTEM_PRIORITY_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

const DEFAULT_PREEMPTION_POLICY: &str = "PreemptLowerPriority";

fn priority_classes() -> &'static ResourceInfo {
    registry::lookup("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priorityclasses are registered")
}

/// The PriorityClass objects upstream creates at start-up.
pub fn system_priority_classes() -> Vec<Value> {
    SYSTEM_PRIORITY_CLASSES
        .iter()
        .map(|(name, value, description)| {
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                   "metadata": {"name": name}, "value": value, "description": description,
                   "preemptionPolicy": DEFAULT_PREEMPTION_POLICY})
        })
        .collect()
}

/// Runs the pod admission plugins on a pod about to be created in `ns`.
pub async fn admit_pod_create(
    api: &Api,
    ns: &str,
    name: &str,
    pod: &mut Value,
) -> Result<(), ApiError> {
    service_account(api, ns, name, pod).await?;
    priority(api, name, pod).await
}

fn forbidden(name: &str, why: &str) -> ApiError {
    ApiError::forbidden_for("", "pods", name, why)
}

async fn service_account(api: &Api, ns: &str, name: &str, pod: &mut Value) -> Result<(), ApiError> {
    let spec = &mut pod["spec"];
    let named = spec["serviceAccountName"]
        .as_str()
        .or_else(|| spec["serviceAccount"].as_str())
        .filter(|s| !s.is_empty())
        .map(String::from);
    let sa = named.clone().unwrap_or_else(|| "default".to_string());
    spec["serviceAccountName"] = json!(sa);
    spec["serviceAccount"] = json!(sa);
    let Some(sa) = named else { return Ok(()) };
    let info =
        registry::lookup("", "v1", "serviceaccounts").expect("serviceaccounts are registered");
    match api.store.get(&key(api, info, Some(ns), &sa), None).await {
        Ok(_) => Ok(()),
        Err(StorageError::NotFound { .. }) => Err(forbidden(
            name,
            &format!(
                "error looking up service account {ns}/{sa}: serviceaccount {} not found",
                kelson_apimachinery::error::go_quote(&sa)
            ),
        )),
        Err(e) => Err(e.to_api_error("", "serviceaccounts", &sa)),
    }
}

async fn priority(api: &Api, name: &str, pod: &mut Value) -> Result<(), ApiError> {
    let info = priority_classes();
    let class_name = pod["spec"]["priorityClassName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from);
    let (class_name, value, policy) = match class_name {
        Some(pc) => match api.store.get(&key(api, info, None, &pc), None).await {
            Ok(c) => (
                Some(pc),
                c["value"].as_i64().unwrap_or(0),
                c["preemptionPolicy"].clone(),
            ),
            Err(StorageError::NotFound { .. }) => {
                return Err(forbidden(
                    name,
                    &format!("no PriorityClass with name {pc} was found"),
                ))
            }
            Err(e) => return Err(e.to_api_error(info.group, info.resource, &pc)),
        },
        None => {
            let prefix = info.key_prefix(&api.root, None);
            let all = api
                .store
                .list(&prefix, &ListOptions::default(), None)
                .await
                .map_err(|e| e.to_api_error(info.group, info.resource, ""))?;
            let default = all
                .items
                .into_iter()
                .filter(|c| c["globalDefault"] == true)
                .min_by_key(|c| c["value"].as_i64().unwrap_or(0));
            match default {
                Some(c) => (
                    c["metadata"]["name"].as_str().map(String::from),
                    c["value"].as_i64().unwrap_or(0),
                    c["preemptionPolicy"].clone(),
                ),
                None => (None, 0, Value::Null),
            }
        }
    };
    let spec = &mut pod["spec"];
    if let Some(p) = spec["priority"].as_i64().filter(|p| *p != value) {
        return Err(forbidden(
            name,
            &format!("the integer value of priority ({p}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"),
        ));
    }
    let policy = policy
        .as_str()
        .unwrap_or(DEFAULT_PREEMPTION_POLICY)
        .to_string();
    if let Some(p) = spec["preemptionPolicy"].as_str().filter(|p| *p != policy) {
        return Err(forbidden(
            name,
            &format!("the string value of PreemptionPolicy ({p}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"),
        ));
    }
    if let Some(c) = class_name {
        spec["priorityClassName"] = json!(c);
    }
    spec["priority"] = json!(value);
    spec["preemptionPolicy"] = json!(policy);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_classes_are_upstreams() {
        let pcs = system_priority_classes();
        assert_eq!(pcs.len(), 2);
        assert_eq!(pcs[0]["metadata"]["name"], "system-node-critical");
        assert_eq!(pcs[0]["value"], 2_000_001_000);
        assert_eq!(pcs[1]["metadata"]["name"], "system-cluster-critical");
        assert_eq!(pcs[1]["value"], 2_000_000_000);
        assert_eq!(
            forbidden("p", "no PriorityClass with name x was found").message,
            "pods \"p\" is forbidden: no PriorityClass with name x was found"
        );
    }
}
