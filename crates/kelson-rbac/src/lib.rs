//! kelson-rbac: Kubernetes role-based access control, as upstream's
//! `plugin/pkg/auth/authorizer/rbac` evaluates it.
//!
//! The pieces, in the order a request meets them:
//! - [`source::PolicySource`]: how the evaluator reads Roles, ClusterRoles and their bindings.
//!   It is a trait so the API server can back it with whatever it likes; [`cache::PolicyCache`]
//!   is the in-memory implementation fed by list + watch events of the four RBAC kinds (JSON
//!   objects as stored), which is what upstream's informer-backed listers are.
//! - [`authorizer::Rbac`]: the evaluator. It visits every rule bound to the user (cluster role
//!   bindings first, then role bindings in the request's namespace) and allows on the first
//!   match; otherwise it has no opinion and explains only resolution errors (a binding naming a
//!   missing role), exactly like upstream, so the API server's 403 text is upstream's.
//!   Aggregated ClusterRoles (`aggregationRule`) are expanded in the evaluator's view, so
//!   `admin`/`edit`/`view` work without a controller having written their `rules`.
//! - [`rule`]: one `PolicyRule` against one request (verbs, API groups, `resource/subresource`
//!   and `*/subresource`, resource names, non-resource URLs with a trailing `*`).
//! - [`bootstrap`]: the default ClusterRoles and ClusterRoleBindings (upstream's
//!   `bootstrappolicy`) as JSON objects for the API server to create when missing.
//! - [`review`]: `SelfSubjectRulesReview` status (`kubectl auth can-i --list`) and upstream's
//!   Forbidden message text.
//!
//! The crate has its own small [`User`] / [`Attributes`] / [`Decision`] types so it does not
//! depend on the API server; the server maps its request attributes onto them.

pub mod authorizer;
pub mod bootstrap;
pub mod cache;
pub mod review;
pub mod rule;
pub mod source;

pub use authorizer::Rbac;
pub use cache::{CacheError, EventType, Kind, PolicyCache};
pub use source::{PolicySource, SourceError};

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of requests without credentials.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The group of every service account.
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// The group of kubelets.
pub const NODES: &str = "system:nodes";
/// The privileged group (the API server lets it through before RBAC; bound to cluster-admin).
pub const MASTERS: &str = "system:masters";

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn new(name: impl Into<String>, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    /// The identity a service account token authenticates as: the user
    /// `system:serviceaccount:<ns>:<name>` in the groups `system:serviceaccounts`,
    /// `system:serviceaccounts:<ns>` and `system:authenticated` (as upstream's authenticator).
    pub fn service_account(namespace: &str, name: &str) -> User {
        User {
            name: service_account_username(namespace, name),
            groups: vec![
                SERVICE_ACCOUNTS.to_string(),
                format!("{SERVICE_ACCOUNTS}:{namespace}"),
                AUTHENTICATED.to_string(),
            ],
        }
    }
}

/// `system:serviceaccount:<ns>:<name>`.
pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// What a request wants to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The URL path of a non-resource request (`/healthz`, `/apis`).
    pub path: String,
    pub resource_request: bool,
}

impl Attributes {
    /// A resource request; `resource` may be `"pods/log"` to give the subresource.
    pub fn resource(verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> Self {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            path: String::new(),
            resource_request: true,
        }
    }

    /// A non-resource request.
    pub fn non_resource(verb: &str, path: &str) -> Self {
        Attributes {
            verb: verb.into(),
            path: path.into(),
            ..Default::default()
        }
    }
}

/// The evaluator's answer. RBAC never denies outright: without a matching rule it has no
/// opinion, and the API server turns that into 403 with `reason` appended when non-empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with upstream's reason (`RBAC: allowed by ClusterRoleBinding "x" of ...`).
    Allow(String),
    /// No rule allows it; the reason is empty or `RBAC: <resolution errors>`.
    NoOpinion(String),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}
