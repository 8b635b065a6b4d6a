//! Authorization of kubelet API requests by SubjectAccessReview, as upstream's webhook mode.
//!
//! Every request maps to attributes on this node's Node object: verb from the HTTP method
//! (GET/HEAD `get`, POST `create`, PUT `update`, PATCH `patch`, DELETE `delete`), resource
//! `nodes`, name = this node, and subresource from the path (`/stats*` → `stats`,
//! `/metrics*` → `metrics`, `/logs*` → `log`, `/spec*` → `spec`, anything else — logs of
//! containers, exec, attach, port-forward, pods, healthz — `proxy`), exactly upstream's
//! mapping, so the same RBAC roles (`system:kubelet-api-admin`) work.
//!
//! The API server answers with the caller's user and groups in `spec`; answers are cached per
//! (user, groups, verb, subresource) — allowed for 5 minutes, denied for 30 seconds
//! (upstream's `--authorization-webhook-cache-*-ttl` defaults) — so a stream of log or exec
//! requests does not cost a review each.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::Method;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;

use super::tls::User;

const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);
/// Entries beyond this are dropped wholesale (a bound, not an LRU: reviews are cheap).
const MAX_ENTRIES: usize = 4096;

/// What one request asks to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attrs {
    pub verb: &'static str,
    pub subresource: &'static str,
    pub name: String,
}

/// Upstream's kubelet request → attributes mapping.
pub fn attributes(method: &Method, path: &str, node: &str) -> Attrs {
    let verb = match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    };
    let sub = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    let subresource = if sub("/stats") {
        "stats"
    } else if sub("/metrics") {
        "metrics"
    } else if sub("/logs") {
        "log"
    } else if sub("/spec") {
        "spec"
    } else {
        "proxy"
    };
    Attrs {
        verb,
        subresource,
        name: node.to_string(),
    }
}

type Key = (String, Vec<String>, &'static str, &'static str);

/// SubjectAccessReview client with a small decision cache.
pub struct Authorizer {
    client: kube::Client,
    cache: Mutex<HashMap<Key, (bool, Instant)>>,
}

impl Authorizer {
    pub fn new(client: kube::Client, _node: String) -> Self {
        Authorizer {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `user` may do `attrs`; `Err` when the API server could not be asked.
    pub async fn authorize(&self, user: &User, attrs: &Attrs) -> Result<bool, kube::Error> {
        let key: Key = (
            user.name.clone(),
            user.groups.clone(),
            attrs.verb,
            attrs.subresource,
        );
        if let Some((allowed, at)) = self.cache.lock().get(&key) {
            let ttl = if *allowed { ALLOWED_TTL } else { DENIED_TTL };
            if at.elapsed() < ttl {
                return Ok(*allowed);
            }
        }
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(attrs.verb.into()),
                    group: Some(String::new()),
                    version: Some("v1".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(attrs.subresource.into()),
                    name: Some(attrs.name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &sar).await?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (allowed, Instant::now()));
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_upstream_subresources() {
        let a = |m: Method, p: &str| {
            let x = attributes(&m, p, "n1");
            (x.verb, x.subresource)
        };
        assert_eq!(a(Method::GET, "/containerLogs/d/p/c"), ("get", "proxy"));
        assert_eq!(a(Method::POST, "/exec/d/p/c"), ("create", "proxy"));
        assert_eq!(a(Method::GET, "/metrics"), ("get", "metrics"));
        assert_eq!(a(Method::GET, "/metrics/cadvisor"), ("get", "metrics"));
        assert_eq!(a(Method::GET, "/stats/summary"), ("get", "stats"));
        assert_eq!(a(Method::GET, "/logs/syslog"), ("get", "log"));
        assert_eq!(a(Method::GET, "/metricsx"), ("get", "proxy"));
        assert_eq!(a(Method::GET, "/pods"), ("get", "proxy"));
        assert_eq!(attributes(&Method::GET, "/pods", "n1").name, "n1");
    }
}
