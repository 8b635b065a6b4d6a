//! Discovery documents, derived from the registry.
//!
//! Two families exist upstream and kubectl 1.32 uses both:
//! - the legacy documents: `/api` (`APIVersions`), `/apis` (`APIGroupList`) and one
//!   `APIResourceList` per group version (`/api/v1`, `/apis/<group>/<version>`);
//! - aggregated discovery (`APIGroupDiscoveryList`, `apidiscovery.k8s.io/v2`, or `v2beta1` for
//!   older clients), which kubectl asks for first on `/api` and `/apis` through the `Accept`
//!   header, getting every group, version and resource in two requests.
//!
//! The daemon calls [`negotiate_discovery`] with the request's `Accept` header and answers
//! with the document and [`DiscoveryFormat::content_type`]: client-go recognises an
//! aggregated answer by that content type, so it must be exact. Documents are built once and
//! cached; the functions hand out clones.

use crate::registry::{self, ResourceInfo, Subresource};
use serde_json::{json, Value};
use std::sync::OnceLock;

/// Which discovery document a request for `/api` or `/apis` wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryFormat {
    /// `APIVersions` / `APIGroupList`.
    Legacy,
    /// `APIGroupDiscoveryList` in `apidiscovery.k8s.io/v2`.
    AggregatedV2,
    /// `APIGroupDiscoveryList` in `apidiscovery.k8s.io/v2beta1` (same shape).
    AggregatedV2Beta1,
}

impl DiscoveryFormat {
    /// The `Content-Type` to answer with.
    pub fn content_type(self) -> &'static str {
        match self {
            DiscoveryFormat::Legacy => "application/json",
            DiscoveryFormat::AggregatedV2 => {
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            }
            DiscoveryFormat::AggregatedV2Beta1 => {
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
            }
        }
    }
}

/// Picks the discovery format from an `Accept` header: the first acceptable media range in
/// the client's order wins (what upstream's negotiation does for these types). Protobuf
/// variants are skipped because only JSON is served; anything unrecognised means legacy.
pub fn negotiate_discovery(accept: &str) -> DiscoveryFormat {
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let (mut g, mut v, mut as_) = (None, None, None);
        for p in parts {
            if let Some((k, val)) = p.split_once('=') {
                let val = val.trim().trim_matches('"');
                match k.trim() {
                    "g" => g = Some(val),
                    "v" => v = Some(val),
                    "as" => as_ = Some(val),
                    _ => {}
                }
            }
        }
        let json_like = matches!(media.as_str(), "application/json" | "application/*" | "*/*");
        if !json_like {
            continue;
        }
        match (g, v, as_) {
            (Some("apidiscovery.k8s.io"), Some("v2"), Some("APIGroupDiscoveryList")) => {
                return DiscoveryFormat::AggregatedV2
            }
            (Some("apidiscovery.k8s.io"), Some("v2beta1"), Some("APIGroupDiscoveryList")) => {
                return DiscoveryFormat::AggregatedV2Beta1
            }
            (None, _, None) => return DiscoveryFormat::Legacy,
            // A typed range we do not serve (another group/version): try the next one.
            _ => {}
        }
    }
    DiscoveryFormat::Legacy
}

/// `/api` with no server address (an empty `serverAddressByClientCIDRs`).
pub fn discovery_api() -> Value {
    discovery_api_for("")
}

/// `/api`: `APIVersions`. `server_address` (`host:port`) is advertised for every client CIDR,
/// as kube-apiserver does with its advertise address; empty means none is advertised.
pub fn discovery_api_for(server_address: &str) -> Value {
    let cidrs = if server_address.is_empty() {
        json!([])
    } else {
        json!([{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }])
    };
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": cidrs,
    })
}

/// `/apis`: `APIGroupList` of every non-core group with its preferred version.
pub fn discovery_apis() -> Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let groups: Vec<Value> = groups()
            .into_iter()
            .filter(|(g, _)| !g.is_empty())
            .map(|(group, versions)| {
                let entries: Vec<Value> = versions
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                    .collect();
                json!({
                    "name": group,
                    "versions": entries,
                    "preferredVersion": entries[0],
                })
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    })
    .clone()
}

/// `/api/v1` or `/apis/<group>/<version>`: the `APIResourceList`, or `None` if not served.
pub fn discovery_group_version(group: &str, version: &str) -> Option<Value> {
    static DOCS: OnceLock<Vec<((String, String), Value)>> = OnceLock::new();
    let docs = DOCS.get_or_init(|| {
        registry::group_versions()
            .iter()
            .map(|(g, v)| ((g.to_string(), v.to_string()), build_resource_list(g, v)))
            .collect()
    });
    docs.iter()
        .find(|((g, v), _)| g == group && v == version)
        .map(|(_, doc)| doc.clone())
}

/// Aggregated discovery for `/api` (`legacy`) or `/apis`, in `v2` or `v2beta1`.
pub fn aggregated_discovery(legacy: bool, accept_v2: bool) -> Value {
    static DOCS: OnceLock<[Value; 2]> = OnceLock::new();
    let docs = DOCS.get_or_init(|| [build_aggregated(true), build_aggregated(false)]);
    let mut doc = docs[usize::from(!legacy)].clone();
    if !accept_v2 {
        doc["apiVersion"] = json!("apidiscovery.k8s.io/v2beta1");
    }
    doc
}

/// Groups in discovery order with their versions, preferred first.
fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for (g, v) in registry::group_versions() {
        match out.iter_mut().find(|(name, _)| name == g) {
            Some((_, versions)) => versions.push(v),
            None => out.push((g, vec![v])),
        }
    }
    out
}

fn build_resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in registry::resources_in(group, version) {
        let mut entry = json!({
            "name": r.resource,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        if r.listable() {
            entry["storageVersionHash"] = json!(r.storage_version_hash());
        }
        resources.push(entry);
        for s in r.subresources {
            let mut sub = json!({
                "name": format!("{}/{}", r.resource, s.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            // Upstream names the group/version only when the subresource's kind lives
            // elsewhere (Scale in autoscaling/v1, Eviction in policy/v1, ...).
            if (s.group, s.version) != (r.group, r.version) {
                sub["group"] = json!(s.group);
                sub["version"] = json!(s.version);
            }
            resources.push(sub);
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": registry::api_version(group, version),
        "resources": resources,
    })
}

fn response_kind(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

fn aggregated_subresource(s: &Subresource) -> Value {
    json!({
        "subresource": s.name,
        "responseKind": response_kind(s.group, s.version, s.kind),
        "verbs": s.verbs,
    })
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let mut entry = json!({
        "resource": r.resource,
        "responseKind": response_kind(r.group, r.version, r.kind),
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = json!(r.categories);
    }
    if !r.subresources.is_empty() {
        entry["subresources"] = r.subresources.iter().map(aggregated_subresource).collect();
    }
    entry
}

fn build_aggregated(legacy: bool) -> Value {
    let items: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == legacy)
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = registry::resources_in(group, v)
                        .map(aggregated_resource)
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut metadata = json!({"creationTimestamp": null});
            if !group.is_empty() {
                metadata["name"] = json!(group);
            }
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        APIGroupList, APIResourceList, APIVersions,
    };

    const KUBECTL_ACCEPT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

    #[test]
    fn negotiation() {
        assert_eq!(
            negotiate_discovery(KUBECTL_ACCEPT),
            DiscoveryFormat::AggregatedV2
        );
        assert_eq!(
            negotiate_discovery(
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
            ),
            DiscoveryFormat::AggregatedV2Beta1
        );
        // Protobuf is skipped in favour of the JSON range behind it.
        assert_eq!(
            negotiate_discovery(
                "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList, application/json; g=apidiscovery.k8s.io; v=v2; as=APIGroupDiscoveryList"
            ),
            DiscoveryFormat::AggregatedV2
        );
        assert_eq!(
            negotiate_discovery("application/json"),
            DiscoveryFormat::Legacy
        );
        assert_eq!(negotiate_discovery(""), DiscoveryFormat::Legacy);
        assert_eq!(negotiate_discovery("*/*"), DiscoveryFormat::Legacy);
        assert_eq!(
            negotiate_discovery("application/json;g=apidiscovery.k8s.io;v=v3;as=X"),
            DiscoveryFormat::Legacy
        );
        assert!(DiscoveryFormat::AggregatedV2
            .content_type()
            .contains("v=v2;as=APIGroupDiscoveryList"));
    }

    #[test]
    fn legacy_documents_decode_into_k8s_types() {
        let api: APIVersions = serde_json::from_value(discovery_api_for("10.0.0.1:6443")).unwrap();
        assert_eq!(api.versions, ["v1"]);
        assert_eq!(api.server_address_by_client_cidrs.len(), 1);
        let _: APIVersions = serde_json::from_value(discovery_api()).unwrap();

        let apis: APIGroupList = serde_json::from_value(discovery_apis()).unwrap();
        let names: Vec<_> = apis.groups.iter().map(|g| g.name.as_str()).collect();
        assert!(names.contains(&"apps") && names.contains(&"rbac.authorization.k8s.io"));
        assert!(!names.contains(&""));
        for g in &apis.groups {
            let pref = g.preferred_version.as_ref().unwrap();
            assert_eq!(pref.group_version, format!("{}/{}", g.name, pref.version));
        }

        for (g, v) in registry::group_versions() {
            let list: APIResourceList =
                serde_json::from_value(discovery_group_version(g, v).unwrap()).unwrap();
            assert_eq!(list.group_version, registry::api_version(g, v));
            for r in registry::resources_in(g, v) {
                let entry = list
                    .resources
                    .iter()
                    .find(|e| e.name == r.resource)
                    .unwrap();
                assert_eq!(entry.kind, r.kind);
                assert_eq!(entry.namespaced, r.namespaced);
                for s in r.subresources {
                    let name = format!("{}/{}", r.resource, s.name);
                    assert!(list.resources.iter().any(|e| e.name == name), "{name}");
                }
            }
        }
        assert!(discovery_group_version("apps", "v1beta1").is_none());

        let core: APIResourceList =
            serde_json::from_value(discovery_group_version("", "v1").unwrap()).unwrap();
        let pods = core.resources.iter().find(|e| e.name == "pods").unwrap();
        assert_eq!(pods.short_names.as_deref(), Some(&["po".to_string()][..]));
        assert_eq!(pods.storage_version_hash.as_deref(), Some("xPOwRZ+Yhw8="));
        let eviction = core
            .resources
            .iter()
            .find(|e| e.name == "pods/eviction")
            .unwrap();
        assert_eq!(eviction.group.as_deref(), Some("policy"));
        assert_eq!(eviction.kind, "Eviction");
    }

    #[test]
    fn aggregated_discovery_has_every_resource() {
        for accept_v2 in [true, false] {
            let mut seen = 0;
            for legacy in [true, false] {
                let doc = aggregated_discovery(legacy, accept_v2);
                assert_eq!(doc["kind"], "APIGroupDiscoveryList");
                assert_eq!(
                    doc["apiVersion"],
                    if accept_v2 {
                        "apidiscovery.k8s.io/v2"
                    } else {
                        "apidiscovery.k8s.io/v2beta1"
                    }
                );
                for item in doc["items"].as_array().unwrap() {
                    let group = item["metadata"]["name"].as_str().unwrap_or("");
                    assert_eq!(group.is_empty(), legacy);
                    for version in item["versions"].as_array().unwrap() {
                        assert_eq!(version["freshness"], "Current");
                        let v = version["version"].as_str().unwrap();
                        for res in version["resources"].as_array().unwrap() {
                            let name = res["resource"].as_str().unwrap();
                            let info = registry::lookup(group, v, name).unwrap();
                            assert_eq!(res["responseKind"]["kind"], info.kind);
                            assert_eq!(
                                res["scope"],
                                if info.namespaced {
                                    "Namespaced"
                                } else {
                                    "Cluster"
                                }
                            );
                            let subs = res["subresources"].as_array().map_or(0, Vec::len);
                            assert_eq!(subs, info.subresources.len());
                            seen += 1;
                        }
                    }
                }
            }
            assert_eq!(seen, registry::resources().len());
        }
        let apis = aggregated_discovery(false, true);
        let apps = apis["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "apps")
            .unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        assert_eq!(deploy["categories"], json!(["all"]));
        let scale = deploy["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subresource"] == "scale")
            .unwrap();
        assert_eq!(
            scale["responseKind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
    }
}
