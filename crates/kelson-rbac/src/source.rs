//! Where the evaluator reads policy from: upstream's `RoleGetter`, `RoleBindingLister`,
//! `ClusterRoleGetter` and `ClusterRoleBindingLister` in one trait.
//!
//! Objects are handed out as `Arc`s so a cache can share them with concurrent requests without
//! copying rules. Lookups return `Result` because a source may be unable to answer (a cache not
//! yet synced, a store that is down): the evaluator reports those errors in its deny reason
//! and in rules reviews (`incomplete`), as upstream does, instead of failing the request.
//! `list_cluster_roles` exists for aggregation: an aggregated ClusterRole's effective rules are
//! those of every ClusterRole its selectors match.

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

/// Why a lookup failed; the text is what upstream's listers say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// `role.rbac.authorization.k8s.io "x" not found`.
    #[error("{kind}.rbac.authorization.k8s.io \"{name}\" not found")]
    NotFound { kind: &'static str, name: String },
    /// The source cannot answer (e.g. the cache has not been filled yet).
    #[error("{0}")]
    Unavailable(String),
}

impl SourceError {
    pub fn role_not_found(name: &str) -> Self {
        SourceError::NotFound {
            kind: "role",
            name: name.into(),
        }
    }
    pub fn cluster_role_not_found(name: &str) -> Self {
        SourceError::NotFound {
            kind: "clusterrole",
            name: name.into(),
        }
    }
}

/// Read access to RBAC objects.
pub trait PolicySource: Send + Sync {
    fn get_role(&self, namespace: &str, name: &str) -> Result<Arc<Role>, SourceError>;
    fn list_role_bindings(&self, namespace: &str) -> Result<Vec<Arc<RoleBinding>>, SourceError>;
    fn get_cluster_role(&self, name: &str) -> Result<Arc<ClusterRole>, SourceError>;
    fn list_cluster_roles(&self) -> Result<Vec<Arc<ClusterRole>>, SourceError>;
    fn list_cluster_role_bindings(&self) -> Result<Vec<Arc<ClusterRoleBinding>>, SourceError>;
}
