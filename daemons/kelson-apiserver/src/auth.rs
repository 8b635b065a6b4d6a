//! Authentication (x509 client certificates) and authorization.
//!
//! Authentication happens once per connection: rustls has already verified the client chain
//! against `--client-ca-file`, so the leaf's subject is trusted — CN is the user name and every
//! O is a group, plus `system:authenticated`, exactly as kube-apiserver's x509 authenticator.
//! No certificate means anonymous (`system:anonymous` / `system:unauthenticated`), which is
//! refused with 401 unless `--anonymous-auth`.
//!
//! Authorization is a trait so RBAC can be written separately: `system:masters` always passes
//! (as upstream's privileged group), [`AlwaysAllow`] allows everything, and [`RbacPending`]
//! denies with a clear reason until the RBAC authorizer exists.

use std::sync::Arc;

use x509_parser::prelude::*;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

pub trait Authorizer: Send + Sync {
    fn authorize(&self, user: &User, attrs: &Attributes) -> Decision;
}

#[derive(Debug, Default)]
pub struct AlwaysAllow;

impl Authorizer for AlwaysAllow {
    fn authorize(&self, _: &User, _: &Attributes) -> Decision {
        Decision::Allow
    }
}

/// `--authorization-mode=RBAC` until the RBAC evaluator lands: only `system:masters` (handled
/// before any authorizer) and the public non-resource paths are allowed.
#[derive(Debug, Default)]
pub struct RbacPending;

/// Paths upstream's `system:public-info-viewer` / `system:discovery` grant to everyone.
fn public_path(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/livez" | "/readyz" | "/version" | "/version/"
    )
}

impl Authorizer for RbacPending {
    fn authorize(&self, user: &User, attrs: &Attributes) -> Decision {
        let authenticated = user.groups.iter().any(|g| g == "system:authenticated");
        // system:basic-user: everyone may ask what they themselves may do and who they are.
        if authenticated
            && attrs.resource_request
            && attrs.verb == "create"
            && matches!(
                (attrs.group.as_str(), attrs.resource.as_str()),
                (
                    "authorization.k8s.io",
                    "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
                ) | ("authentication.k8s.io", "selfsubjectreviews")
            )
        {
            return Decision::Allow;
        }
        if !attrs.resource_request && public_path(&attrs.path) {
            return Decision::Allow;
        }
        if !attrs.resource_request
            && user.groups.iter().any(|g| g == "system:authenticated")
            && (attrs.path.starts_with("/api") || attrs.path.starts_with("/openapi"))
        {
            // system:discovery: authenticated users may read discovery and OpenAPI.
            return Decision::Allow;
        }
        Decision::Deny("RBAC authorization is not implemented yet in kelson-apiserver; only members of system:masters are allowed (or run with --authorization-mode=AlwaysAllow)".into())
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_bypass_and_rbac_pending_denies() {
        let authz = Authz::new(Arc::new(RbacPending));
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
