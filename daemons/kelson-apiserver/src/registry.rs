//! The served resources: kelson-apiresources' registry plus what the handlers need from it.
//!
//! The table itself (kinds, scope, verbs, short names, subresources, OpenAPI definitions) lives
//! in kelson-apiresources so discovery, OpenAPI and the handlers cannot disagree. This module
//! adds the handler-side views: which subresources the generic handlers implement, verb checks
//! and the storage key layout under `--etcd-prefix`.

pub use kelson_apiresources::{by_kind, lookup, resources, ResourceInfo};

/// The subresources the generic handlers implement (others are listed in discovery but
/// answered with 405 until their handlers exist: log, exec, eviction, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Status,
    Scale,
    Binding,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
        }
    }
    pub fn from_name(s: &str) -> Option<Subresource> {
        Some(match s {
            "status" => Subresource::Status,
            "scale" => Subresource::Scale,
            "binding" => Subresource::Binding,
            _ => return None,
        })
    }
}

pub trait ResourceExt {
    fn has(&self, s: Subresource) -> bool;
    fn supports(&self, verb: &str) -> bool;
    /// The etcd key prefix (ending in '/') under `root`, optionally within a namespace:
    /// `/registry/pods/default/`, `/registry/apps/deployments/`.
    fn key_prefix(&self, root: &str, ns: Option<&str>) -> String;
}

impl ResourceExt for ResourceInfo {
    fn has(&self, s: Subresource) -> bool {
        self.subresource(s.name()).is_some()
    }
    fn supports(&self, verb: &str) -> bool {
        self.has_verb(verb)
    }
    fn key_prefix(&self, root: &str, ns: Option<&str>) -> String {
        // events.k8s.io Events live in the core Event storage (crate::events).
        let s = self.shared_storage().unwrap_or(self);
        let mut k = root.trim_end_matches('/').to_string();
        k.push('/');
        if !s.group.is_empty() {
            k.push_str(s.group);
            k.push('/');
        }
        k.push_str(s.resource);
        k.push('/');
        if let Some(ns) = ns {
            k.push_str(ns);
            k.push('/');
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_keys() {
        let d = lookup("apps", "v1", "deployments").unwrap();
        assert_eq!(d.kind, "Deployment");
        assert!(d.has(Subresource::Scale) && d.has(Subresource::Status));
        assert_eq!(
            d.key_prefix("/registry", Some("default")),
            "/registry/apps/deployments/default/"
        );
        let p = by_kind("", "v1", "Pod").unwrap();
        assert!(p.has(Subresource::Binding));
        assert_eq!(p.key_prefix("/registry", None), "/registry/pods/");
        assert!(lookup("", "v1", "nope").is_none());
    }
}
