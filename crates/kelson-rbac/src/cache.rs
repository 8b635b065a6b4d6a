//! An in-memory [`PolicySource`] fed by list + watch of the four RBAC kinds.
//!
//! This is what upstream's shared informers give its RBAC authorizer: the API server lists
//! each kind once ([`PolicyCache::replace`]), then applies every watch event
//! ([`PolicyCache::apply`] or [`PolicyCache::apply_watch_frame`] for a `{"type","object"}`
//! frame), and relists on a broken watch. Objects arrive as the JSON the store holds and are
//! decoded once into `k8s-openapi` types, so requests only read shared `Arc`s under a
//! read lock.
//!
//! Until a kind has been listed once, lookups of that kind fail with
//! [`SourceError::Unavailable`]: the evaluator then denies with a reason saying so rather than
//! acting on a partial view (upstream waits for its informers to sync for the same reason).
//! A malformed object is an error returned to the feeder and leaves the cache unchanged.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::source::{PolicySource, SourceError};

/// The four RBAC kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Role,
    RoleBinding,
    ClusterRole,
    ClusterRoleBinding,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Role,
        Kind::RoleBinding,
        Kind::ClusterRole,
        Kind::ClusterRoleBinding,
    ];
    /// The API group all four live in.
    pub const GROUP: &'static str = "rbac.authorization.k8s.io";

    pub fn name(self) -> &'static str {
        match self {
            Kind::Role => "Role",
            Kind::RoleBinding => "RoleBinding",
            Kind::ClusterRole => "ClusterRole",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
        }
    }
    /// The plural resource name (`roles`, ...).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Role => "roles",
            Kind::RoleBinding => "rolebindings",
            Kind::ClusterRole => "clusterroles",
            Kind::ClusterRoleBinding => "clusterrolebindings",
        }
    }
    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Role | Kind::RoleBinding)
    }
    fn index(self) -> usize {
        self as usize
    }
}

impl FromStr for Kind {
    type Err = CacheError;
    fn from_str(s: &str) -> Result<Self, CacheError> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| CacheError::UnknownKind(s.to_string()))
    }
}

/// A watch event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl FromStr for EventType {
    type Err = CacheError;
    fn from_str(s: &str) -> Result<Self, CacheError> {
        match s {
            "ADDED" => Ok(EventType::Added),
            "MODIFIED" => Ok(EventType::Modified),
            "DELETED" => Ok(EventType::Deleted),
            other => Err(CacheError::UnknownEvent(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("not an RBAC kind: {0:?}")]
    UnknownKind(String),
    #[error("not a watch event type: {0:?}")]
    UnknownEvent(String),
    #[error("malformed {kind} object")]
    Decode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} object without metadata.name{}", if *.namespaced { " and metadata.namespace" } else { "" })]
    NoName {
        kind: &'static str,
        namespaced: bool,
    },
}

type Key = (String, String);

#[derive(Default)]
struct Inner {
    roles: BTreeMap<Key, Arc<Role>>,
    role_bindings: BTreeMap<Key, Arc<RoleBinding>>,
    cluster_roles: BTreeMap<String, Arc<ClusterRole>>,
    cluster_role_bindings: BTreeMap<String, Arc<ClusterRoleBinding>>,
    synced: [bool; 4],
}

/// The watch-fed policy cache.
#[derive(Default)]
pub struct PolicyCache {
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.inner.read();
        f.debug_struct("PolicyCache")
            .field("roles", &i.roles.len())
            .field("role_bindings", &i.role_bindings.len())
            .field("cluster_roles", &i.cluster_roles.len())
            .field("cluster_role_bindings", &i.cluster_role_bindings.len())
            .field("synced", &i.synced)
            .finish()
    }
}

/// One decoded object, ready to insert.
enum Decoded {
    Role(Key, Arc<Role>),
    RoleBinding(Key, Arc<RoleBinding>),
    ClusterRole(String, Arc<ClusterRole>),
    ClusterRoleBinding(String, Arc<ClusterRoleBinding>),
}

fn decode_as<T: DeserializeOwned>(kind: Kind, obj: &Value) -> Result<T, CacheError> {
    serde_json::from_value(obj.clone()).map_err(|source| CacheError::Decode {
        kind: kind.name(),
        source,
    })
}

fn key_of(kind: Kind, obj: &Value) -> Result<Key, CacheError> {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let ns = meta["namespace"].as_str().unwrap_or_default();
    if name.is_empty() || (kind.namespaced() && ns.is_empty()) {
        return Err(CacheError::NoName {
            kind: kind.name(),
            namespaced: kind.namespaced(),
        });
    }
    Ok((ns.to_string(), name.to_string()))
}

fn decode(kind: Kind, obj: &Value) -> Result<Decoded, CacheError> {
    let key = key_of(kind, obj)?;
    Ok(match kind {
        Kind::Role => Decoded::Role(key, Arc::new(decode_as(kind, obj)?)),
        Kind::RoleBinding => Decoded::RoleBinding(key, Arc::new(decode_as(kind, obj)?)),
        Kind::ClusterRole => Decoded::ClusterRole(key.1, Arc::new(decode_as(kind, obj)?)),
        Kind::ClusterRoleBinding => {
            Decoded::ClusterRoleBinding(key.1, Arc::new(decode_as(kind, obj)?))
        }
    })
}

impl Inner {
    fn insert(&mut self, d: Decoded) {
        match d {
            Decoded::Role(k, v) => {
                self.roles.insert(k, v);
            }
            Decoded::RoleBinding(k, v) => {
                self.role_bindings.insert(k, v);
            }
            Decoded::ClusterRole(k, v) => {
                self.cluster_roles.insert(k, v);
            }
            Decoded::ClusterRoleBinding(k, v) => {
                self.cluster_role_bindings.insert(k, v);
            }
        }
    }
    fn remove(&mut self, kind: Kind, key: &Key) {
        match kind {
            Kind::Role => {
                self.roles.remove(key);
            }
            Kind::RoleBinding => {
                self.role_bindings.remove(key);
            }
            Kind::ClusterRole => {
                self.cluster_roles.remove(&key.1);
            }
            Kind::ClusterRoleBinding => {
                self.cluster_role_bindings.remove(&key.1);
            }
        }
    }
    fn clear(&mut self, kind: Kind) {
        match kind {
            Kind::Role => self.roles.clear(),
            Kind::RoleBinding => self.role_bindings.clear(),
            Kind::ClusterRole => self.cluster_roles.clear(),
            Kind::ClusterRoleBinding => self.cluster_role_bindings.clear(),
        }
    }
    fn check(&self, kind: Kind) -> Result<(), SourceError> {
        if self.synced[kind.index()] {
            Ok(())
        } else {
            Err(SourceError::Unavailable(format!(
                "{} cache not synced yet",
                kind.resource()
            )))
        }
    }
}

impl PolicyCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache holding exactly `objects` (each with its `kind`), every kind marked synced.
    pub fn from_objects<'a>(
        objects: impl IntoIterator<Item = &'a Value>,
    ) -> Result<Self, CacheError> {
        let cache = PolicyCache::new();
        let mut by_kind: [Vec<Value>; 4] = Default::default();
        for o in objects {
            let kind: Kind = o["kind"].as_str().unwrap_or_default().parse()?;
            by_kind[kind.index()].push(o.clone());
        }
        for kind in Kind::ALL {
            cache.replace(kind, &by_kind[kind.index()])?;
        }
        Ok(cache)
    }

    /// Replaces every object of `kind` with a fresh list (initial list, relist after a broken
    /// watch) and marks the kind synced. All-or-nothing: a malformed item changes nothing.
    pub fn replace(&self, kind: Kind, items: &[Value]) -> Result<(), CacheError> {
        let decoded = items
            .iter()
            .map(|o| decode(kind, o))
            .collect::<Result<Vec<_>, _>>()?;
        let mut inner = self.inner.write();
        inner.clear(kind);
        for d in decoded {
            inner.insert(d);
        }
        inner.synced[kind.index()] = true;
        Ok(())
    }

    /// Applies one watch event for an object of `kind`.
    pub fn apply(&self, kind: Kind, event: EventType, obj: &Value) -> Result<(), CacheError> {
        match event {
            EventType::Added | EventType::Modified => {
                let d = decode(kind, obj)?;
                self.inner.write().insert(d);
            }
            EventType::Deleted => {
                let key = key_of(kind, obj)?;
                self.inner.write().remove(kind, &key);
            }
        }
        Ok(())
    }

    /// Applies a watch frame `{"type": "ADDED", "object": {...}}`; the kind comes from the
    /// object. `BOOKMARK` frames are ignored; `ERROR` frames are the caller's business (relist).
    pub fn apply_watch_frame(&self, frame: &Value) -> Result<(), CacheError> {
        let ty = frame["type"].as_str().unwrap_or_default();
        if ty == "BOOKMARK" {
            return Ok(());
        }
        let event: EventType = ty.parse()?;
        let obj = &frame["object"];
        let kind: Kind = obj["kind"].as_str().unwrap_or_default().parse()?;
        self.apply(kind, event, obj)
    }

    /// Whether every kind has been listed at least once.
    pub fn is_synced(&self) -> bool {
        self.inner.read().synced.iter().all(|s| *s)
    }
}

impl PolicySource for PolicyCache {
    fn get_role(&self, namespace: &str, name: &str) -> Result<Arc<Role>, SourceError> {
        let inner = self.inner.read();
        inner.check(Kind::Role)?;
        inner
            .roles
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| SourceError::role_not_found(name))
    }

    fn list_role_bindings(&self, namespace: &str) -> Result<Vec<Arc<RoleBinding>>, SourceError> {
        let inner = self.inner.read();
        inner.check(Kind::RoleBinding)?;
        // Keys sort by namespace first, so one namespace is a contiguous range.
        let from = (namespace.to_string(), String::new());
        Ok(inner
            .role_bindings
            .range(from..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(_, v)| v.clone())
            .collect())
    }

    fn get_cluster_role(&self, name: &str) -> Result<Arc<ClusterRole>, SourceError> {
        let inner = self.inner.read();
        inner.check(Kind::ClusterRole)?;
        inner
            .cluster_roles
            .get(name)
            .cloned()
            .ok_or_else(|| SourceError::cluster_role_not_found(name))
    }

    fn list_cluster_roles(&self) -> Result<Vec<Arc<ClusterRole>>, SourceError> {
        let inner = self.inner.read();
        inner.check(Kind::ClusterRole)?;
        Ok(inner.cluster_roles.values().cloned().collect())
    }

    fn list_cluster_role_bindings(&self) -> Result<Vec<Arc<ClusterRoleBinding>>, SourceError> {
        let inner = self.inner.read();
        inner.check(Kind::ClusterRoleBinding)?;
        Ok(inner.cluster_role_bindings.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(ns: &str, name: &str, verbs: &[&str]) -> Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": name, "namespace": ns},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": verbs}]})
    }
    fn rb(ns: &str, name: &str) -> Value {
        json!({"kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
               "subjects": [{"kind": "User", "name": "bob"}]})
    }

    #[test]
    fn unsynced_kinds_are_unavailable_until_listed() {
        let c = PolicyCache::new();
        assert!(matches!(
            c.get_role("a", "r"),
            Err(SourceError::Unavailable(_))
        ));
        assert!(!c.is_synced());
        c.replace(Kind::Role, &[role("a", "r", &["get"])]).unwrap();
        assert!(c.get_role("a", "r").is_ok());
        assert!(c.list_cluster_roles().is_err());
        for k in [
            Kind::RoleBinding,
            Kind::ClusterRole,
            Kind::ClusterRoleBinding,
        ] {
            c.replace(k, &[]).unwrap();
        }
        assert!(c.is_synced());
        assert_eq!(
            c.get_role("a", "missing").unwrap_err().to_string(),
            "role.rbac.authorization.k8s.io \"missing\" not found"
        );
        assert_eq!(
            c.get_cluster_role("x").unwrap_err().to_string(),
            "clusterrole.rbac.authorization.k8s.io \"x\" not found"
        );
    }

    #[test]
    fn watch_events_add_modify_delete() {
        let c = PolicyCache::from_objects(&[]).unwrap();
        c.apply_watch_frame(&json!({"type": "ADDED", "object": role("a", "r", &["get"])}))
            .unwrap();
        assert_eq!(
            c.get_role("a", "r").unwrap().rules.as_ref().unwrap()[0].verbs,
            ["get"]
        );
        c.apply_watch_frame(&json!({"type": "MODIFIED", "object": role("a", "r", &["list"])}))
            .unwrap();
        assert_eq!(
            c.get_role("a", "r").unwrap().rules.as_ref().unwrap()[0].verbs,
            ["list"]
        );
        c.apply_watch_frame(&json!({"type": "BOOKMARK", "object": {"kind": "Role"}}))
            .unwrap();
        c.apply_watch_frame(&json!({"type": "DELETED", "object": role("a", "r", &["list"])}))
            .unwrap();
        assert!(c.get_role("a", "r").is_err());
        assert!(c
            .apply_watch_frame(&json!({"type": "ERROR", "object": {"kind": "Status"}}))
            .is_err());
    }

    #[test]
    fn role_bindings_listed_per_namespace() {
        let c =
            PolicyCache::from_objects(&[rb("a", "1"), rb("ab", "2"), rb("a", "3"), rb("b", "4")])
                .unwrap();
        let names = |ns: &str| -> Vec<String> {
            c.list_role_bindings(ns)
                .unwrap()
                .iter()
                .map(|b| b.metadata.name.clone().unwrap())
                .collect()
        };
        assert_eq!(names("a"), ["1", "3"]);
        assert_eq!(names("ab"), ["2"]);
        assert!(names("c").is_empty());
    }

    #[test]
    fn malformed_objects_are_errors_and_change_nothing() {
        let c = PolicyCache::from_objects(&[role("a", "r", &["get"])]).unwrap();
        let bad = json!({"kind": "Role", "metadata": {"name": "r", "namespace": "a"},
                         "rules": [{"resources": "pods", "verbs": ["get"]}]});
        assert!(matches!(
            c.apply(Kind::Role, EventType::Modified, &bad),
            Err(CacheError::Decode { .. })
        ));
        assert!(c
            .replace(Kind::Role, &[role("a", "x", &["get"]), bad])
            .is_err());
        assert!(
            c.get_role("a", "r").is_ok(),
            "a failed relist keeps the old view"
        );
        let unnamed = json!({"kind": "Role", "metadata": {"namespace": "a"}});
        assert!(matches!(
            c.apply(Kind::Role, EventType::Added, &unnamed),
            Err(CacheError::NoName { .. })
        ));
        assert!(PolicyCache::from_objects(&[json!({"kind": "Pod"})]).is_err());
        assert!("Nope".parse::<Kind>().is_err());
    }
}
