//! `pods/eviction` (policy/v1 `Eviction`, POST): delete a pod unless that would violate a
//! PodDisruptionBudget — upstream's `EvictionREST` semantics.
//!
//! Design:
//! - Pods that cannot count against a budget (Pending, Succeeded, Failed, or already being
//!   deleted) are deleted straight away.
//! - Otherwise the budgets of the pod's namespace whose selector matches the pod are read. More
//!   than one is a 500 (upstream refuses to choose). A budget whose status is stale
//!   (`observedGeneration < generation`) or has `disruptionsAllowed < 1` answers 429
//!   TooManyRequests with a `DisruptionBudget` cause, so callers (`kubectl drain`, the kubelet's
//!   Drain) retry.
//! - Allowing the eviction decrements `status.disruptionsAllowed` and records the pod in
//!   `status.disruptedPods` in one compare-and-swap on the budget's resourceVersion; a lost race
//!   re-runs the check on the fresh budget (so two evictions never spend one disruption). Only
//!   then is the pod deleted with the Eviction's `deleteOptions`, like a `DELETE`.
//! - The answer is upstream's: `201` with a `Status` of `Success`.

use std::sync::Arc;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::handlers::{self, Req};
use crate::http::{self as h, Body};
use crate::registry::{self, ResourceExt};
use crate::server::Api;
use kelson_apimachinery::selector::label_selector_as_selector;
use kelson_apimachinery::{ApiError, StatusCause, StatusDetails};
use kelson_apistorage::{ListOptions, Preconditions};

/// Upstream's message for a budget that allows no disruption.
pub const VIOLATION_MESSAGE: &str =
    "Cannot evict pod as it would violate the pod's disruption budget.";

fn pdb_info() -> &'static registry::ResourceInfo {
    registry::lookup("policy", "v1", "poddisruptionbudgets").expect("PDBs are registered")
}

fn too_many(cause: String) -> ApiError {
    let mut e = ApiError::too_many_requests(VIOLATION_MESSAGE, 0);
    e.details = Some(StatusDetails {
        causes: vec![StatusCause {
            reason: "DisruptionBudget".into(),
            message: cause,
            field: String::new(),
        }],
        ..Default::default()
    });
    e
}

/// Whether `pdb` lets one more pod go; `Err` is the answer when it does not.
pub fn check_budget(pdb: &Value) -> Result<(), ApiError> {
    let name = pdb["metadata"]["name"].as_str().unwrap_or_default();
    let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = pdb["status"]["observedGeneration"].as_i64().unwrap_or(0);
    if observed < generation {
        return Err(too_many(format!(
            "The disruption budget {name} is still being processed by the server."
        )));
    }
    let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
    if allowed < 0 {
        return Err(ApiError::new(
            403,
            "Forbidden",
            "pdb disruptions allowed is negative",
        ));
    }
    if pdb["status"]["disruptedPods"]
        .as_object()
        .is_some_and(|m| m.len() > 2000)
    {
        return Err(ApiError::new(
            403,
            "Forbidden",
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        return Err(too_many(format!(
            "The disruption budget {name} needs {} healthy pods and has {} currently",
            pdb["status"]["desiredHealthy"].as_i64().unwrap_or(0),
            pdb["status"]["currentHealthy"].as_i64().unwrap_or(0)
        )));
    }
    Ok(())
}

/// Budgets in `ns` whose selector matches `pod`'s labels.
async fn matching_budgets(api: &Arc<Api>, ns: &str, pod: &Value) -> Result<Vec<Value>, ApiError> {
    let info = pdb_info();
    let list = api
        .store
        .list(
            &info.key_prefix(&api.root, Some(ns)),
            &ListOptions::default(),
            None,
        )
        .await
        .map_err(|e| e.to_api_error(info.group, info.resource, ""))?;
    let labels = &pod["metadata"]["labels"];
    let empty = json!({});
    let labels = if labels.is_object() { labels } else { &empty };
    Ok(list
        .items
        .into_iter()
        .filter(|pdb| {
            label_selector_as_selector(pdb["spec"].get("selector")).is_ok_and(|s| s.matches(labels))
        })
        .collect())
}

/// `POST .../pods/<name>/eviction`.
pub async fn create(r: &mut Req<'_>, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let ct = r
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let ev = h::decode_object(ct, body)?;
    let kind = ev["kind"].as_str().unwrap_or("Eviction");
    if kind != "Eviction" {
        return Err(ApiError::bad_request(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (kind {kind:?}, expected Eviction)"
        )));
    }
    let name = r.t.name.clone().unwrap_or_default();
    let ns = r.t.namespace.clone().unwrap_or_default();
    if ev["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let dry = r.q.get("dryRun").is_some_and(|d| d == "All")
        || ev["deleteOptions"]["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "All"));
    let pods = registry::lookup("", "v1", "pods").expect("pods are registered");
    let api = r.api;
    let pod = api
        .store
        .get(&handlers::key(api, pods, Some(&ns), &name), None)
        .await
        .map_err(|e| e.to_api_error("", "pods", &name))?;
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    let ignore_budgets = pod["metadata"]["deletionTimestamp"].is_string()
        || matches!(phase, "Pending" | "Succeeded" | "Failed" | "");
    if !ignore_budgets {
        let budgets = matching_budgets(api, &ns, &pod).await?;
        if budgets.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(pdb) = budgets.first() {
            check_budget(pdb)?;
            let pdb_name = pdb["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let info = pdb_info();
            let now = kelson_apimachinery::meta::now_rfc3339();
            api.store
                .guaranteed_update(
                    &handlers::key(api, info, Some(&ns), &pdb_name),
                    &Preconditions::default(),
                    dry,
                    |mut fresh: Value| {
                        // A lost race re-checks the budget as it is now.
                        check_budget(&fresh)?;
                        let allowed = fresh["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
                        fresh["status"]["disruptionsAllowed"] = json!(allowed - 1);
                        if !fresh["status"]["disruptedPods"].is_object() {
                            fresh["status"]["disruptedPods"] = json!({});
                        }
                        fresh["status"]["disruptedPods"][&name] = json!(now.clone());
                        Ok::<_, ApiError>(fresh)
                    },
                )
                .await
                .map_err(|e| e.into_api_error(info.group, info.resource, &pdb_name))?;
        }
    }
    let mut opts = if ev["deleteOptions"].is_object() {
        ev["deleteOptions"].clone()
    } else {
        json!({})
    };
    if dry {
        opts["dryRun"] = json!(["All"]);
    }
    handlers::delete_with_options(api, pods, &ns, &name, &opts).await?;
    Ok(h::json(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(generation: i64, observed: i64, allowed: i64) -> Value {
        json!({"metadata": {"name": "web", "generation": generation},
               "status": {"observedGeneration": observed, "disruptionsAllowed": allowed,
                          "desiredHealthy": 2, "currentHealthy": 2}})
    }

    #[test]
    fn budgets_decide_like_upstream() {
        assert!(check_budget(&pdb(1, 1, 1)).is_ok());
        let e = check_budget(&pdb(1, 1, 0)).unwrap_err();
        assert_eq!((e.code, e.reason), (429, "TooManyRequests"));
        assert_eq!(e.message, VIOLATION_MESSAGE);
        let cause = &e.details.unwrap().causes[0];
        assert_eq!(cause.reason, "DisruptionBudget");
        assert_eq!(
            cause.message,
            "The disruption budget web needs 2 healthy pods and has 2 currently"
        );
        let stale = check_budget(&pdb(2, 1, 5)).unwrap_err();
        assert_eq!(stale.code, 429);
        assert!(stale.details.unwrap().causes[0]
            .message
            .contains("still being processed"));
        assert_eq!(check_budget(&pdb(1, 1, -1)).unwrap_err().code, 403);
    }
}
