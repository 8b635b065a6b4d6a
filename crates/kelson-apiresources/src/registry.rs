//! The resource registry: every group/version/resource the API server serves.
//!
//! The table is static data written to match what upstream's discovery shows for Kubernetes
//! 1.33 (`kubectl api-resources -o wide`): resource names, kinds, scope, verbs (sorted the way
//! upstream sorts them), short names, categories and subresources with their response kinds.
//! Everything else (discovery documents, OpenAPI paths, storage keys in the API server) is
//! derived from this one table so the views cannot drift apart. Unit tests cross-check each row
//! against `k8s-openapi`'s `Resource` constants and the generated OpenAPI definitions.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// A subresource of a resource (`pods/status`, `deployments/scale`, `pods/exec`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    /// The path segment after the object name: `status`, `scale`, `log`, ...
    pub name: &'static str,
    /// Group of the kind the subresource accepts/returns (`autoscaling` for `scale`).
    pub group: &'static str,
    /// Version of that kind.
    pub version: &'static str,
    /// The kind (`Scale`, `Eviction`, `PodExecOptions`, or the parent's kind for `status`).
    pub kind: &'static str,
    /// Discovery verbs, sorted as upstream shows them.
    pub verbs: &'static [&'static str],
}

/// One served resource of one group version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; `""` for the legacy core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Plural resource name as in URLs (`pods`).
    pub resource: &'static str,
    pub kind: &'static str,
    /// Singular name (`pod`), what upstream discovery reports as `singularName`.
    pub singular: &'static str,
    pub namespaced: bool,
    /// Discovery verbs of the main resource, sorted as upstream shows them.
    pub verbs: &'static [&'static str],
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// The OpenAPI definition name of the kind (`io.k8s.api.apps.v1.Deployment`).
    pub definition: &'static str,
}

impl ResourceInfo {
    /// `v1` for the core group, `<group>/<version>` otherwise.
    pub fn api_version(&self) -> String {
        api_version(self.group, self.version)
    }

    /// Whether the resource can be listed (and watched); create-only review resources cannot.
    pub fn listable(&self) -> bool {
        self.has_verb("list")
    }

    pub fn has_verb(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    /// `PodList` for `Pod`; only meaningful when [`ResourceInfo::listable`].
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The OpenAPI definition name of the list kind (`io.k8s.api.core.v1.PodList`).
    pub fn list_definition(&self) -> String {
        format!("{}List", self.definition)
    }

    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Upstream's `storageVersionHash`: the first 8 bytes of SHA-256 over
    /// `<group>/<version>/<kind>` (empty group for core, so `/v1/Pod`), base64. Clients only
    /// compare it for equality (to notice storage migrations), but matching upstream keeps
    /// mixed tooling quiet.
    /// Computed from the storage version's kind, so events.k8s.io/v1 Events (stored as core/v1
    /// Events) carry the core Event's hash, as upstream's do.
    pub fn storage_version_hash(&self) -> String {
        let s = self.shared_storage().unwrap_or(self);
        let digest = Sha256::digest(format!("{}/{}/{}", s.group, s.version, s.kind));
        base64::engine::general_purpose::STANDARD.encode(&digest[..8])
    }

    /// The resource whose storage this one shares, if another: upstream serves
    /// events.k8s.io/v1 Events from the core Event storage (`/registry/events`, objects stored
    /// as core/v1 JSON and converted for the events.k8s.io endpoints), so both groups show the
    /// same objects.
    pub fn shared_storage(&self) -> Option<&'static ResourceInfo> {
        if self.group == "events.k8s.io" && self.resource == "events" {
            lookup("", "v1", "events")
        } else {
            None
        }
    }

    /// The URL prefix of the group version: `/api/v1` or `/apis/<group>/<version>`.
    pub fn group_version_path(&self) -> String {
        group_version_path(self.group, self.version)
    }

    /// The storage key prefix from the design: `/registry/<resource>/` for the core group,
    /// `/registry/<group>/<resource>/` otherwise (namespace and name follow).
    /// Resources that share another's storage ([`ResourceInfo::shared_storage`]) use its prefix.
    pub fn storage_prefix(&self) -> String {
        let s = self.shared_storage().unwrap_or(self);
        if s.group.is_empty() {
            format!("/registry/{}/", s.resource)
        } else {
            format!("/registry/{}/{}/", s.group, s.resource)
        }
    }
}

/// The Go package segment upstream definition names use for a group:
/// `io.k8s.api.<package>.<version>.<Kind>` (`core`, `apps`, `rbac`, `events`, ...).
pub fn group_package(group: &str) -> &str {
    if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    }
}

impl Subresource {
    /// The OpenAPI definition of the subresource's kind, when it is a real object
    /// (`Scale`, `Eviction`, `Binding`, `TokenRequest`, or the parent kind); connect options
    /// (`PodExecOptions`, ...) are query parameters upstream, not definitions.
    pub fn definition(&self) -> Option<String> {
        if self.kind.ends_with("Options") {
            return None;
        }
        Some(format!(
            "io.k8s.api.{}.{}.{}",
            group_package(self.group),
            self.version,
            self.kind
        ))
    }

    /// Whether this is a connect subresource (streams and proxies, no object body).
    pub fn is_connect(&self) -> bool {
        self.kind.ends_with("Options") || self.name == "log"
    }
}

/// `v1` for the core group, `<group>/<version>` otherwise.
pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// `/api/v1` for the core group, `/apis/<group>/<version>` otherwise.
pub fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

const CRUD: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
// Namespaces cannot be deleted as a collection upstream (it would be far too destructive).
const CRUD_NO_COLLECTION: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const CREATE: &[&str] = &["create"];
const GET: &[&str] = &["get"];
const UPDATE: &[&str] = &["update"];
const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];
// Connect subresources: kubectl uses POST for exec/attach/portforward, GET for upgrades.
const CONNECT: &[&str] = &["create", "get"];
const PROXY: &[&str] = &["create", "delete", "get", "patch", "update"];

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

const fn status(group: &'static str, version: &'static str, kind: &'static str) -> Subresource {
    Subresource {
        name: "status",
        group,
        version,
        kind,
        verbs: GET_PATCH_UPDATE,
    }
}

const SCALE: Subresource = Subresource {
    name: "scale",
    group: "autoscaling",
    version: "v1",
    kind: "Scale",
    verbs: GET_PATCH_UPDATE,
};

const fn core(
    name: &'static str,
    kind: &'static str,
    verbs: &'static [&'static str],
) -> Subresource {
    Subresource {
        name,
        group: "",
        version: "v1",
        kind,
        verbs,
    }
}

const POD_SUBRESOURCES: &[Subresource] = &[
    core("attach", "PodAttachOptions", CONNECT),
    core("binding", "Binding", CREATE),
    core("ephemeralcontainers", "Pod", GET_PATCH_UPDATE),
    Subresource {
        name: "eviction",
        group: "policy",
        version: "v1",
        kind: "Eviction",
        verbs: CREATE,
    },
    core("exec", "PodExecOptions", CONNECT),
    core("log", "Pod", GET),
    core("portforward", "PodPortForwardOptions", CONNECT),
    core("proxy", "PodProxyOptions", PROXY),
    core("resize", "Pod", GET_PATCH_UPDATE),
    status("", "v1", "Pod"),
];

/// Builds one row; `definition` is derived from the Go package naming upstream uses.
macro_rules! res {
    ($group:expr, $pkg:expr, $version:expr, $resource:expr, $kind:expr, $singular:expr,
     $namespaced:expr, $verbs:expr, $short:expr, $cats:expr, $subs:expr) => {
        ResourceInfo {
            group: $group,
            version: $version,
            resource: $resource,
            kind: $kind,
            singular: $singular,
            namespaced: $namespaced,
            verbs: $verbs,
            short_names: $short,
            categories: $cats,
            subresources: $subs,
            definition: concat!("io.k8s.api.", $pkg, ".", $version, ".", $kind),
        }
    };
}

static RESOURCES: &[ResourceInfo] = &[
    // core/v1, in upstream's discovery order (alphabetical by resource).
    res!(
        "",
        "core",
        "v1",
        "bindings",
        "Binding",
        "binding",
        true,
        CREATE,
        NONE,
        NONE,
        &[]
    ),
    res!(
        "",
        "core",
        "v1",
        "configmaps",
        "ConfigMap",
        "configmap",
        true,
        CRUD,
        &["cm"],
        NONE,
        &[]
    ),
    res!(
        "",
        "core",
        "v1",
        "endpoints",
        "Endpoints",
        "endpoints",
        true,
        CRUD,
        &["ep"],
        NONE,
        &[]
    ),
    res!(
        "",
        "core",
        "v1",
        "events",
        "Event",
        "event",
        true,
        CRUD,
        &["ev"],
        NONE,
        &[]
    ),
    res!(
        "",
        "core",
        "v1",
        "limitranges",
        "LimitRange",
        "limitrange",
        true,
        CRUD,
        &["limits"],
        NONE,
        &[]
    ),
    res!(
        "",
        "core",
        "v1",
        "namespaces",
        "Namespace",
        "namespace",
        false,
        CRUD_NO_COLLECTION,
        &["ns"],
        NONE,
        &[
            core("finalize", "Namespace", UPDATE),
            status("", "v1", "Namespace")
        ]
    ),
    res!(
        "",
        "core",
        "v1",
        "nodes",
        "Node",
        "node",
        false,
        CRUD,
        &["no"],
        NONE,
        &[
            core("proxy", "NodeProxyOptions", PROXY),
            status("", "v1", "Node")
        ]
    ),
    res!(
        "",
        "core",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        "persistentvolumeclaim",
        true,
        CRUD,
        &["pvc"],
        NONE,
        &[status("", "v1", "PersistentVolumeClaim")]
    ),
    res!(
        "",
        "core",
        "v1",
        "persistentvolumes",
        "PersistentVolume",
        "persistentvolume",
        false,
        CRUD,
        &["pv"],
        NONE,
        &[status("", "v1", "PersistentVolume")]
    ),
    res!(
        "",
        "core",
        "v1",
        "pods",
        "Pod",
        "pod",
        true,
        CRUD,
        &["po"],
        ALL,
        POD_SUBRESOURCES
    ),
    res!(
        "",
        "core",
        "v1",
        "podtemplates",
        "PodTemplate",
        "podtemplate",
        true,
        CRUD,
        NONE,
        NONE,
        &[]
    ),
    res!(
        "",
        "core",
        "v1",
        "replicationcontrollers",
        "ReplicationController",
        "replicationcontroller",
        true,
        CRUD,
        &["rc"],
        ALL,
        &[SCALE, status("", "v1", "ReplicationController")]
    ),
    res!(
        "",
        "core",
        "v1",
        "resourcequotas",
        "ResourceQuota",
        "resourcequota",
        true,
        CRUD,
        &["quota"],
        NONE,
        &[status("", "v1", "ResourceQuota")]
    ),
    res!(
        "",
        "core",
        "v1",
        "secrets",
        "Secret",
        "secret",
        true,
        CRUD,
        NONE,
        NONE,
        &[]
    ),
    res!(
        "",
        "core",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        "serviceaccount",
        true,
        CRUD,
        &["sa"],
        NONE,
        &[Subresource {
            name: "token",
            group: "authentication.k8s.io",
            version: "v1",
            kind: "TokenRequest",
            verbs: CREATE
        }]
    ),
    res!(
        "",
        "core",
        "v1",
        "services",
        "Service",
        "service",
        true,
        CRUD,
        &["svc"],
        ALL,
        &[
            core("proxy", "ServiceProxyOptions", PROXY),
            status("", "v1", "Service")
        ]
    ),
    // apps/v1
    res!(
        "apps",
        "apps",
        "v1",
        "controllerrevisions",
        "ControllerRevision",
        "controllerrevision",
        true,
        CRUD,
        NONE,
        NONE,
        &[]
    ),
    res!(
        "apps",
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        "daemonset",
        true,
        CRUD,
        &["ds"],
        ALL,
        &[status("apps", "v1", "DaemonSet")]
    ),
    res!(
        "apps",
        "apps",
        "v1",
        "deployments",
        "Deployment",
        "deployment",
        true,
        CRUD,
        &["deploy"],
        ALL,
        &[SCALE, status("apps", "v1", "Deployment")]
    ),
    res!(
        "apps",
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        "replicaset",
        true,
        CRUD,
        &["rs"],
        ALL,
        &[SCALE, status("apps", "v1", "ReplicaSet")]
    ),
    res!(
        "apps",
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        "statefulset",
        true,
        CRUD,
        &["sts"],
        ALL,
        &[SCALE, status("apps", "v1", "StatefulSet")]
    ),
    // events.k8s.io/v1: upstream gives it the same short name as core events.
    res!(
        "events.k8s.io",
        "events",
        "v1",
        "events",
        "Event",
        "event",
        true,
        CRUD,
        &["ev"],
        NONE,
        &[]
    ),
    // authentication.k8s.io/v1: `kubectl auth whoami`, create-only, never stored.
    res!(
        "authentication.k8s.io",
        "authentication",
        "v1",
        "selfsubjectreviews",
        "SelfSubjectReview",
        "selfsubjectreview",
        false,
        CREATE,
        NONE,
        NONE,
        &[]
    ),
    res!(
        "authentication.k8s.io",
        "authentication",
        "v1",
        "tokenreviews",
        "TokenReview",
        "tokenreview",
        false,
        CREATE,
        NONE,
        NONE,
        &[]
    ),
    // authorization.k8s.io/v1: create-only reviews, never stored.
    res!(
        "authorization.k8s.io",
        "authorization",
        "v1",
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        "localsubjectaccessreview",
        true,
        CREATE,
        NONE,
        NONE,
        &[]
    ),
    res!(
        "authorization.k8s.io",
        "authorization",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreview",
        false,
        CREATE,
        NONE,
        NONE,
        &[]
    ),
    res!(
        "authorization.k8s.io",
        "authorization",
        "v1",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreview",
        false,
        CREATE,
        NONE,
        NONE,
        &[]
    ),
    res!(
        "authorization.k8s.io",
        "authorization",
        "v1",
        "subjectaccessreviews",
        "SubjectAccessReview",
        "subjectaccessreview",
        false,
        CREATE,
        NONE,
        NONE,
        &[]
    ),
    // batch/v1
    res!(
        "batch",
        "batch",
        "v1",
        "cronjobs",
        "CronJob",
        "cronjob",
        true,
        CRUD,
        &["cj"],
        ALL,
        &[status("batch", "v1", "CronJob")]
    ),
    res!(
        "batch",
        "batch",
        "v1",
        "jobs",
        "Job",
        "job",
        true,
        CRUD,
        NONE,
        ALL,
        &[status("batch", "v1", "Job")]
    ),
    // certificates.k8s.io/v1: `approval` takes and returns the CSR itself, like `status`.
    res!(
        "certificates.k8s.io",
        "certificates",
        "v1",
        "certificatesigningrequests",
        "CertificateSigningRequest",
        "certificatesigningrequest",
        false,
        CRUD,
        &["csr"],
        NONE,
        &[
            Subresource {
                name: "approval",
                group: "certificates.k8s.io",
                version: "v1",
                kind: "CertificateSigningRequest",
                verbs: GET_PATCH_UPDATE,
            },
            status("certificates.k8s.io", "v1", "CertificateSigningRequest")
        ]
    ),
    // policy/v1
    res!(
        "policy",
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        "poddisruptionbudget",
        true,
        CRUD,
        &["pdb"],
        NONE,
        &[status("policy", "v1", "PodDisruptionBudget")]
    ),
    // rbac.authorization.k8s.io/v1
    res!(
        "rbac.authorization.k8s.io",
        "rbac",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        "clusterrolebinding",
        false,
        CRUD,
        NONE,
        NONE,
        &[]
    ),
    res!(
        "rbac.authorization.k8s.io",
        "rbac",
        "v1",
        "clusterroles",
        "ClusterRole",
        "clusterrole",
        false,
        CRUD,
        NONE,
        NONE,
        &[]
    ),
    res!(
        "rbac.authorization.k8s.io",
        "rbac",
        "v1",
        "rolebindings",
        "RoleBinding",
        "rolebinding",
        true,
        CRUD,
        NONE,
        NONE,
        &[]
    ),
    res!(
        "rbac.authorization.k8s.io",
        "rbac",
        "v1",
        "roles",
        "Role",
        "role",
        true,
        CRUD,
        NONE,
        NONE,
        &[]
    ),
    // scheduling.k8s.io/v1
    res!(
        "scheduling.k8s.io",
        "scheduling",
        "v1",
        "priorityclasses",
        "PriorityClass",
        "priorityclass",
        false,
        CRUD,
        &["pc"],
        NONE,
        &[]
    ),
    // coordination.k8s.io/v1
    res!(
        "coordination.k8s.io",
        "coordination",
        "v1",
        "leases",
        "Lease",
        "lease",
        true,
        CRUD,
        NONE,
        NONE,
        &[]
    ),
    // discovery.k8s.io/v1
    res!(
        "discovery.k8s.io",
        "discovery",
        "v1",
        "endpointslices",
        "EndpointSlice",
        "endpointslice",
        true,
        CRUD,
        NONE,
        NONE,
        &[]
    ),
];

/// Served group versions in discovery order (the order upstream's `/apis` uses for these
/// groups): the core group first. Each group serves exactly one version, which is preferred.
static GROUP_VERSIONS: &[(&str, &str)] = &[
    ("", "v1"),
    ("apps", "v1"),
    ("events.k8s.io", "v1"),
    ("authentication.k8s.io", "v1"),
    ("authorization.k8s.io", "v1"),
    ("batch", "v1"),
    ("certificates.k8s.io", "v1"),
    ("policy", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
    ("scheduling.k8s.io", "v1"),
    ("coordination.k8s.io", "v1"),
    ("discovery.k8s.io", "v1"),
];

/// Every served resource.
pub fn resources() -> &'static [ResourceInfo] {
    RESOURCES
}

/// Served `(group, version)` pairs, core first, in discovery order.
pub fn group_versions() -> &'static [(&'static str, &'static str)] {
    GROUP_VERSIONS
}

/// The resources of one group version, in discovery order.
pub fn resources_in<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceInfo> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// Finds a resource by its URL coordinates.
pub fn lookup(group: &str, version: &str, resource: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        // The resource name first: it tells most entries apart, so the scan (run several
        // times per request) mostly stops at one comparison per entry.
        .find(|r| r.resource == resource && r.group == group && r.version == version)
}

/// Finds a resource by kind (the `apiVersion`/`kind` of a request body).
pub fn by_kind(group: &str, version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.group == group && r.version == version)
}

/// Finds the resource whose list kind is `kind` (`PodList` → pods).
pub fn by_list_kind(group: &str, version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    let item_kind = kind.strip_suffix("List")?;
    by_kind(group, version, item_kind).filter(|r| r.listable())
}

/// Resolves what a user typed (`po`, `pod`, `pods`, `deploy`, `deployments.apps`) the way
/// kubectl's RESTMapper does for the built-in types; the core group wins ties.
pub fn resolve(name: &str) -> Option<&'static ResourceInfo> {
    let (name, group) = match name.split_once('.') {
        Some((n, g)) => (n, Some(g)),
        None => (name, None),
    };
    let name = name.to_ascii_lowercase();
    RESOURCES.iter().find(|r| {
        group.is_none_or(|g| g == r.group)
            && (r.resource == name || r.singular == name || r.short_names.contains(&name.as_str()))
    })
}

/// Splits an `apiVersion` into `(group, version)`.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn no_duplicate_resources_or_kinds() {
        let mut seen = HashSet::new();
        let mut kinds = HashSet::new();
        for r in resources() {
            assert!(seen.insert((r.group, r.version, r.resource)), "{r:?}");
            assert!(kinds.insert((r.group, r.version, r.kind)), "{r:?}");
        }
    }

    #[test]
    fn short_names_name_one_resource_each() {
        // `ev` is shared by core and events.k8s.io events upstream: both are `events`, so a short
        // name may repeat across groups only for the same resource name.
        let mut by_short: HashMap<&str, &str> = HashMap::new();
        for r in resources() {
            for s in r.short_names {
                if let Some(prev) = by_short.insert(s, r.resource) {
                    assert_eq!(prev, r.resource, "short name {s} names two resources");
                }
                assert!(
                    !resources()
                        .iter()
                        .any(|o| o.resource == *s || o.singular == *s),
                    "short name {s} shadows a resource name"
                );
            }
        }
        for (short, plural) in [
            ("po", "pods"),
            ("svc", "services"),
            ("deploy", "deployments"),
            ("rs", "replicasets"),
            ("sts", "statefulsets"),
            ("ds", "daemonsets"),
            ("cm", "configmaps"),
            ("ns", "namespaces"),
            ("no", "nodes"),
            ("ep", "endpoints"),
            ("sa", "serviceaccounts"),
            ("ev", "events"),
            ("pv", "persistentvolumes"),
            ("pvc", "persistentvolumeclaims"),
            ("quota", "resourcequotas"),
            ("limits", "limitranges"),
            ("cj", "cronjobs"),
            ("pdb", "poddisruptionbudgets"),
            ("pc", "priorityclasses"),
            ("rc", "replicationcontrollers"),
        ] {
            assert_eq!(by_short.get(short), Some(&plural), "{short}");
        }
    }

    #[test]
    fn category_all_is_upstreams() {
        let mut all: Vec<_> = resources()
            .iter()
            .filter(|r| r.categories.contains(&"all"))
            .map(|r| r.resource)
            .collect();
        all.sort_unstable();
        assert_eq!(
            all,
            [
                "cronjobs",
                "daemonsets",
                "deployments",
                "jobs",
                "pods",
                "replicasets",
                "replicationcontrollers",
                "services",
                "statefulsets"
            ]
        );
    }

    #[test]
    fn verbs_are_sorted_and_singular_is_lowercase_kind() {
        for r in resources() {
            assert!(r.verbs.is_sorted(), "{r:?}");
            assert_eq!(r.singular, r.kind.to_ascii_lowercase());
            for s in r.subresources {
                assert!(s.verbs.is_sorted(), "{r:?} {s:?}");
            }
            assert!(
                group_versions().contains(&(r.group, r.version)),
                "{r:?} group version not served"
            );
        }
    }

    #[test]
    fn storage_version_hash_matches_upstream() {
        // Values as a real 1.33 cluster's discovery shows them.
        assert_eq!(
            lookup("", "v1", "pods").unwrap().storage_version_hash(),
            "xPOwRZ+Yhw8="
        );
        assert_eq!(
            lookup("apps", "v1", "deployments")
                .unwrap()
                .storage_version_hash(),
            "8aSe+NMegvE="
        );
        // events.k8s.io/v1 Events are stored as core/v1 Events: one hash, one prefix.
        let ev = lookup("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(ev.storage_version_hash(), "r2yiGXH7wu8=");
        assert_eq!(
            lookup("", "v1", "events").unwrap().storage_version_hash(),
            "r2yiGXH7wu8="
        );
        assert_eq!(ev.storage_prefix(), "/registry/events/");
        assert_eq!(ev.shared_storage().unwrap().group, "");
        assert!(lookup("", "v1", "events")
            .unwrap()
            .shared_storage()
            .is_none());
    }

    #[test]
    fn lookups() {
        let d = by_kind("apps", "v1", "Deployment").unwrap();
        assert_eq!(d.resource, "deployments");
        assert_eq!(d.definition, "io.k8s.api.apps.v1.Deployment");
        assert_eq!(d.storage_prefix(), "/registry/apps/deployments/");
        assert_eq!(d.subresource("scale").unwrap().kind, "Scale");
        assert_eq!(by_list_kind("", "v1", "PodList").unwrap().resource, "pods");
        assert!(by_list_kind("authorization.k8s.io", "v1", "SubjectAccessReviewList").is_none());
        assert_eq!(
            lookup("", "v1", "pods").unwrap().storage_prefix(),
            "/registry/pods/"
        );
        assert_eq!(resolve("po").unwrap().resource, "pods");
        assert_eq!(resolve("deployments.apps").unwrap().kind, "Deployment");
        assert_eq!(resolve("ev").unwrap().group, "");
        assert_eq!(
            resolve("events.events.k8s.io").unwrap().group,
            "events.k8s.io"
        );
        assert!(resolve("nosuch").is_none());
        assert!(lookup("apps", "v1", "pods").is_none());
        assert_eq!(split_api_version("apps/v1"), ("apps", "v1"));
        assert_eq!(split_api_version("v1"), ("", "v1"));
        assert_eq!(
            lookup("rbac.authorization.k8s.io", "v1", "roles")
                .unwrap()
                .definition,
            "io.k8s.api.rbac.v1.Role"
        );
    }
}
