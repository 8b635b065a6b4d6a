//! The token cleaner: deletes expired bootstrap tokens, as upstream's `tokencleaner`.
//!
//! Bootstrap tokens are Secrets of type `bootstrap.kubernetes.io/token` in `kube-system` with
//! an optional `expiration` (RFC 3339) in their data. An expired one is deleted (with a uid
//! precondition, so a token recreated under the same name survives); one that expires later
//! is looked at again then.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions};

use super::{delete_object, Controller, Ctx, Result};
use crate::informer::{key_of, split_key};
use crate::queue::WorkQueue;

pub const TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";
const NAMESPACE: &str = "kube-system";

fn is_token(s: &Secret) -> bool {
    s.type_.as_deref() == Some(TOKEN_TYPE) && s.metadata.namespace.as_deref() == Some(NAMESPACE)
}

/// The token's expiration, if it has a valid one.
pub fn expiration(s: &Secret) -> Option<Timestamp> {
    let raw = s.data.as_ref()?.get("expiration")?;
    std::str::from_utf8(&raw.0).ok()?.trim().parse().ok()
}

pub fn controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.secrets.on_change(move |s, _| {
        if is_token(s) {
            q.add(key_of(s));
        }
    });
    let c = ctx.clone();
    Controller::new("token-cleaner-controller", queue, 1, move |key| {
        let c = c.clone();
        async move { reconcile(&c, &key).await }
    })
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Option<Duration>> {
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let Some(s) = ctx.inf.secrets.get(Some(ns), name) else {
        return Ok(None);
    };
    if !is_token(&s) || s.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let Some(exp) = expiration(&s) else {
        return Ok(None);
    };
    let now = Timestamp::now();
    if exp > now {
        let secs = (exp.as_second() - now.as_second()).max(0) as u64;
        return Ok(Some(Duration::from_secs(secs) + Duration::from_millis(500)));
    }
    tracing::info!(secret = key, "deleting expired bootstrap token");
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: s.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    delete_object(&api, name, &dp).await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_expiration() {
        let s: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
            "type": TOKEN_TYPE,
            // base64("2020-01-01T00:00:00Z")
            "data": {"expiration": "MjAyMC0wMS0wMVQwMDowMDowMFo="}
        }))
        .unwrap();
        assert!(is_token(&s));
        assert_eq!(
            expiration(&s),
            Some("2020-01-01T00:00:00Z".parse().unwrap())
        );
    }
}
