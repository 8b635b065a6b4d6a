//! Authentication (x509 client certificates) and authorization.
//!
//! Authentication happens once per connection: rustls has already verified the client chain
//! against `--client-ca-file`, so the leaf's subject is trusted — CN is the user name and every
//! O is a group, plus `system:authenticated`, exactly as kube-apiserver's x509 authenticator.
//! No certificate means anonymous (`system:anonymous` / `system:unauthenticated`), which is
//! refused with 401 unless `--anonymous-auth`.
//!
//! Authorization is a trait so modes plug in: `system:masters` always passes (as upstream's
//! privileged group), [`AlwaysAllow`] allows everything, and [`Rbac`] is `kelson-rbac`'s
//! evaluator over a [`PolicyCache`] that [`feed_rbac_cache`] keeps in step with storage (list
//! each RBAC kind, then watch from the list's revision; relist when a watch ends or fails),
//! as upstream's informer-fed RBAC authorizer. [`bootstrap_rbac`] creates the default
//! ClusterRoles and ClusterRoleBindings that are missing and waits until the cache has them,
//! so the server is only ready once the default policy is in force.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kelson_apimachinery::ApiError;
use kelson_apistorage::{ListOptions, WatchEvent};
use kelson_rbac::{EventType, Kind, PolicyCache, PolicySource};
use x509_parser::prelude::*;

use crate::server::Api;

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

pub const MASTERS: &str = "system:masters";

impl User {
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
    pub fn is_anonymous(&self) -> bool {
        self.name == "system:anonymous"
    }
}

/// The user a verified client certificate (DER) names, or `None` if it has no CN.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

/// What a request wants to do, as RBAC sees it.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// Non-resource requests (`/healthz`, `/version`, discovery) carry the path instead.
    pub path: String,
    pub resource_request: bool,
}

impl Attributes {
    /// The same request in kelson-rbac's terms (its evaluator and its Forbidden message).
    pub fn to_rbac(&self) -> kelson_rbac::Attributes {
        kelson_rbac::Attributes {
            verb: self.verb.clone(),
            group: self.group.clone(),
            resource: self.resource.clone(),
            subresource: self.subresource.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            path: self.path.clone(),
            resource_request: self.resource_request,
        }
    }
}

/// Upstream's 403 for `user` denied `attrs` (the authorizer's `reason` appended when there is
/// one). The text is kelson-rbac's, shared with everything else that reports a denial; the
/// details name the object by its resource (no subresource), as upstream's `NewForbidden`.
pub fn forbidden(user: &User, attrs: &Attributes, reason: &str) -> ApiError {
    let message =
        kelson_rbac::review::forbidden_message(&rbac_user(user), &attrs.to_rbac(), reason);
    if attrs.resource_request {
        ApiError {
            message,
            ..ApiError::forbidden_for(&attrs.group, &attrs.resource, &attrs.name, "")
        }
    } else {
        ApiError::forbidden_msg(message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

pub trait Authorizer: Send + Sync {
    fn authorize(&self, user: &User, attrs: &Attributes) -> Decision;
    /// `SelfSubjectRulesReview` status for `user` in `namespace`, if the mode can list rules.
    fn rules_review(&self, _user: &User, _namespace: &str) -> Option<serde_json::Value> {
        None
    }
    /// The RBAC authorizer, when this is it (the daemon feeds its cache).
    fn as_rbac(&self) -> Option<&Rbac> {
        None
    }
    /// The Node authorizer, when this is it (the daemon feeds its graph).
    fn as_node(&self) -> Option<&crate::node_authz::NodeAuthorizer> {
        None
    }
}

/// Several modes in `--authorization-mode` order (upstream's union authorizer): the first
/// that allows wins; otherwise the request is denied with every non-empty reason, joined.
pub struct Union(pub Vec<Arc<dyn Authorizer>>);

impl Authorizer for Union {
    fn authorize(&self, user: &User, attrs: &Attributes) -> Decision {
        let mut reasons = Vec::new();
        for a in &self.0 {
            match a.authorize(user, attrs) {
                Decision::Allow => return Decision::Allow,
                Decision::Deny(r) if !r.is_empty() => reasons.push(r),
                Decision::Deny(_) => {}
            }
        }
        Decision::Deny(reasons.join(", "))
    }
    fn rules_review(&self, user: &User, namespace: &str) -> Option<serde_json::Value> {
        self.0.iter().find_map(|a| a.rules_review(user, namespace))
    }
    fn as_rbac(&self) -> Option<&Rbac> {
        self.0.iter().find_map(|a| a.as_rbac())
    }
    fn as_node(&self) -> Option<&crate::node_authz::NodeAuthorizer> {
        self.0.iter().find_map(|a| a.as_node())
    }
}

#[derive(Debug, Default)]
pub struct AlwaysAllow;

impl Authorizer for AlwaysAllow {
    fn authorize(&self, _: &User, _: &Attributes) -> Decision {
        Decision::Allow
    }
    fn rules_review(&self, _: &User, _: &str) -> Option<serde_json::Value> {
        // Upstream's AlwaysAllow authorizer lists `*` for everything.
        Some(serde_json::json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        }))
    }
}

fn rbac_user(user: &User) -> kelson_rbac::User {
    kelson_rbac::User {
        name: user.name.clone(),
        groups: user.groups.clone(),
    }
}

/// `--authorization-mode=RBAC`: kelson-rbac's evaluator over a watch-fed policy cache.
#[derive(Debug)]
pub struct Rbac {
    rbac: kelson_rbac::Rbac,
    cache: Arc<PolicyCache>,
    feeding: std::sync::atomic::AtomicBool,
}

impl Default for Rbac {
    fn default() -> Self {
        Self::new()
    }
}

impl Rbac {
    /// An evaluator over an empty, unsynced cache (denies with a reason until fed).
    pub fn new() -> Self {
        let cache = Arc::new(PolicyCache::new());
        Rbac {
            rbac: kelson_rbac::Rbac::new(cache.clone()),
            cache,
            feeding: Default::default(),
        }
    }
    pub fn cache(&self) -> &Arc<PolicyCache> {
        &self.cache
    }
}

impl Authorizer for Rbac {
    fn authorize(&self, user: &User, attrs: &Attributes) -> Decision {
        match self.rbac.authorize(&rbac_user(user), &attrs.to_rbac()) {
            kelson_rbac::Decision::Allow(_) => Decision::Allow,
            kelson_rbac::Decision::NoOpinion(reason) => Decision::Deny(reason),
        }
    }
    fn rules_review(&self, user: &User, namespace: &str) -> Option<serde_json::Value> {
        Some(kelson_rbac::review::rules_review_status(
            &self.rbac,
            &rbac_user(user),
            namespace,
        ))
    }
    fn as_rbac(&self) -> Option<&Rbac> {
        Some(self)
    }
}

fn rbac_prefix(api: &Api, kind: Kind) -> String {
    use crate::registry::ResourceExt;
    let info = crate::registry::lookup(Kind::GROUP, "v1", kind.resource())
        .expect("the RBAC kinds are registered");
    info.key_prefix(&api.root, None)
}

/// One list + watch pass for `kind`: returns when the watch ends, fails, or the API is gone.
async fn list_watch(api: &Weak<Api>, cache: &PolicyCache, kind: Kind) -> Result<(), String> {
    let (prefix, mut stream) = {
        let api = api.upgrade().ok_or("API server gone")?;
        let prefix = rbac_prefix(&api, kind);
        let list = api
            .store
            .list(&prefix, &ListOptions::default(), None)
            .await
            .map_err(|e| format!("listing {}: {e}", kind.resource()))?;
        cache
            .replace(kind, &list.items)
            .map_err(|e| format!("listing {}: {e}", kind.resource()))?;
        let stream = api
            .store
            .watch(&prefix, true, list.resource_version, None, false)
            .await
            .map_err(|e| format!("watching {}: {e}", kind.resource()))?;
        (prefix, stream)
    };
    while let Some(ev) = stream.next().await {
        if api.strong_count() == 0 {
            return Ok(());
        }
        let res = match &ev {
            WatchEvent::Added(o) => cache.apply(kind, EventType::Added, o),
            WatchEvent::Modified(o) => cache.apply(kind, EventType::Modified, o),
            WatchEvent::Deleted(o) => cache.apply(kind, EventType::Deleted, o),
            WatchEvent::Bookmark(_) => Ok(()),
            WatchEvent::Error(e) => return Err(format!("watching {prefix}: {e}")),
        };
        if let Err(e) = res {
            // A stored object the cache cannot decode grants nothing; keep watching.
            tracing::warn!(kind = kind.name(), error = %e, "ignoring an RBAC object");
        }
    }
    Err(format!("watch of {prefix} ended"))
}

/// Keeps `cache` in step with storage until the API is dropped (spawn it): per kind, list then
/// watch, and relist with a bounded backoff whenever a watch ends or fails.
pub async fn feed_rbac_cache(api: Weak<Api>, cache: Arc<PolicyCache>) {
    let tasks = Kind::ALL.map(|kind| {
        let (api, cache) = (api.clone(), cache.clone());
        async move {
            let mut delay = Duration::from_millis(100);
            while api.strong_count() > 0 {
                let started = Instant::now();
                if let Err(e) = list_watch(&api, &cache, kind).await {
                    tracing::warn!(kind = kind.name(), error = %e, "RBAC cache: relisting");
                }
                if started.elapsed() > Duration::from_secs(10) {
                    delay = Duration::from_millis(100);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    });
    futures::future::join_all(tasks).await;
}

/// Creates the default RBAC policy objects that are missing (existing ones are left as they
/// are). Under RBAC it first starts [`feed_rbac_cache`] (once) and afterwards waits, bounded,
/// until the cache holds every bootstrap object, so readiness means the policy is in force.
pub async fn bootstrap_rbac(api: &Arc<Api>) -> Result<(), ApiError> {
    let rbac = api.authz.rbac();
    if let Some(rbac) = rbac {
        if !rbac.feeding.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tokio::spawn(feed_rbac_cache(Arc::downgrade(api), rbac.cache.clone()));
        }
    }
    let objects = kelson_rbac::bootstrap::objects_for(api.authz.node().is_some());
    for obj in &objects {
        let kind: Kind = obj["kind"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e| ApiError::internal(format!("bootstrap policy: {e}")))?;
        let info = crate::registry::lookup(Kind::GROUP, "v1", kind.resource())
            .expect("the RBAC kinds are registered");
        match crate::handlers::create_object(api, info, None, obj.clone(), false).await {
            Ok(_) => {
                tracing::info!(kind = kind.name(), name = %obj["metadata"]["name"], "created bootstrap RBAC object")
            }
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let Some(cache) = rbac.map(|r| &r.cache) else {
        return Ok(());
    };
    let has_all = || {
        let Ok(bindings) = cache.list_cluster_role_bindings() else {
            return false;
        };
        cache.is_synced()
            && objects.iter().all(|o| {
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                if o["kind"] == "ClusterRole" {
                    cache.get_cluster_role(name).is_ok()
                } else {
                    bindings
                        .iter()
                        .any(|b| b.metadata.name.as_deref() == Some(name))
                }
            })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !has_all() {
        if Instant::now() > deadline {
            return Err(ApiError::service_unavailable(
                "the RBAC policy cache did not catch up with the bootstrap policy in 30s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The chain every request goes through: privileged group first, then the configured mode.
pub struct Authz {
    inner: Arc<dyn Authorizer>,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authz")
    }
}

impl Authz {
    pub fn new(inner: Arc<dyn Authorizer>) -> Self {
        Authz { inner }
    }
    pub fn authorize(&self, user: &User, attrs: &Attributes) -> Decision {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Decision::Allow;
        }
        self.inner.authorize(user, attrs)
    }
    /// The RBAC authorizer, if that is the mode.
    pub fn rbac(&self) -> Option<&Rbac> {
        self.inner.as_rbac()
    }
    /// The Node authorizer, if it is one of the modes.
    pub fn node(&self) -> Option<&crate::node_authz::NodeAuthorizer> {
        self.inner.as_node()
    }
    /// `SelfSubjectRulesReview` status (`kubectl auth can-i --list`), if the mode lists rules.
    pub fn rules_review(&self, user: &User, namespace: &str) -> Option<serde_json::Value> {
        self.inner.rules_review(user, namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RBAC fed with upstream's bootstrap policy, as the daemon runs it.
    fn bootstrapped_rbac() -> Rbac {
        let rbac = Rbac::new();
        let objs = kelson_rbac::bootstrap::objects();
        for kind in Kind::ALL {
            let items: Vec<_> = objs
                .iter()
                .filter(|o| o["kind"] == kind.name())
                .cloned()
                .collect();
            rbac.cache().replace(kind, &items).unwrap();
        }
        rbac
    }

    #[test]
    fn masters_bypass_and_default_policy() {
        let authz = Authz::new(Arc::new(bootstrapped_rbac()));
        let admin = User {
            name: "admin".into(),
            groups: vec![MASTERS.into(), "system:authenticated".into()],
        };
        let bob = User {
            name: "bob".into(),
            groups: vec!["system:authenticated".into()],
        };
        let get_pods = Attributes {
            verb: "get".into(),
            resource: "pods".into(),
            resource_request: true,
            ..Default::default()
        };
        assert_eq!(authz.authorize(&admin, &get_pods), Decision::Allow);
        assert!(matches!(
            authz.authorize(&bob, &get_pods),
            Decision::Deny(_)
        ));
        // system:public-info-viewer is bound to unauthenticated users too.
        let version = Attributes {
            verb: "get".into(),
            path: "/version".into(),
            ..Default::default()
        };
        assert_eq!(
            authz.authorize(&User::anonymous(), &version),
            Decision::Allow
        );
        let allow = Authz::new(Arc::new(AlwaysAllow));
        assert_eq!(allow.authorize(&bob, &get_pods), Decision::Allow);
    }

    #[test]
    fn rbac_authorizer_over_its_cache() {
        let rbac = Rbac::new();
        let bob = User {
            name: "bob".into(),
            groups: vec!["system:authenticated".into()],
        };
        let list_pods = Attributes {
            verb: "list".into(),
            resource: "pods".into(),
            namespace: "demo".into(),
            resource_request: true,
            ..Default::default()
        };
        // Unfed: denied, saying why.
        assert_eq!(
            rbac.authorize(&bob, &list_pods),
            Decision::Deny(
                "RBAC: [clusterrolebindings cache not synced yet, rolebindings cache not synced yet]"
                    .into()
            )
        );
        let mut objs = kelson_rbac::bootstrap::objects();
        objs.push(serde_json::json!({"kind": "RoleBinding",
            "metadata": {"name": "bob-view", "namespace": "demo"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "bob"}]}));
        for kind in Kind::ALL {
            let items: Vec<_> = objs
                .iter()
                .filter(|o| o["kind"] == kind.name())
                .cloned()
                .collect();
            rbac.cache().replace(kind, &items).unwrap();
        }
        let authz = Authz::new(Arc::new(rbac));
        assert!(authz.rbac().is_some());
        assert_eq!(authz.authorize(&bob, &list_pods), Decision::Allow);
        let other_ns = Attributes {
            namespace: "default".into(),
            ..list_pods.clone()
        };
        assert_eq!(
            authz.authorize(&bob, &other_ns),
            Decision::Deny(String::new())
        );
        let review = authz.rules_review(&bob, "demo").unwrap();
        assert_eq!(review["incomplete"], false);
        assert!(review["resourceRules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"].as_array().unwrap().contains(&"pods".into())));
        assert!(Authz::new(Arc::new(AlwaysAllow)).rbac().is_none());
    }

    #[test]
    fn user_from_a_real_certificate() {
        let mut params = rcgen_params();
        params
            .0
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params
            .0
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "devs");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.0.self_signed(&key).unwrap();
        let u = user_from_cert(cert.der()).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(
            u.groups,
            vec!["devs".to_string(), "system:authenticated".to_string()]
        );
        assert!(user_from_cert(b"garbage").is_none());
    }

    fn rcgen_params() -> (rcgen::CertificateParams,) {
        (rcgen::CertificateParams::default(),)
    }
}
