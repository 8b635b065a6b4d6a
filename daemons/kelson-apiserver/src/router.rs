//! Request paths → what they address.
//!
//! The REST layout upstream serves: `/api/v1/...` for the legacy group and
//! `/apis/<group>/<version>/...` for the others; under either, `namespaces/<ns>/<resource>`
//! for namespaced collections, `<resource>` for cluster-scoped ones (and all-namespace lists),
//! `/<name>` and `/<name>/<subresource>` below that, and the legacy `watch/` prefix. The
//! `namespaces/<name>/status|finalize` paths address the Namespace itself, not a resource
//! called "status". Anything else is a 404 Status, never an empty 200.

use crate::registry::{self, ResourceInfo, Subresource};
use kelson_apimachinery::ApiError;

/// A non-resource endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Version,
    Health {
        kind: &'static str,
        check: Option<String>,
    },
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    OpenApiV2,
    OpenApiV3Root,
    OpenApiV3(String),
    /// `/.well-known/openid-configuration` (service account issuer discovery).
    OpenIdConfiguration,
    /// `/openid/v1/jwks`.
    OpenIdJwks,
}

/// A resource request.
#[derive(Debug, Clone)]
pub struct Target {
    pub info: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<SubTarget>,
    pub watch_path: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubTarget {
    Known(Subresource),
    /// `namespaces/<name>/finalize`.
    Finalize,
    /// A subresource discovery lists but no handler serves yet (log, exec, eviction, ...).
    Unsupported(&'static str),
}

impl SubTarget {
    pub fn name(self) -> &'static str {
        match self {
            SubTarget::Known(s) => s.name(),
            SubTarget::Finalize => "finalize",
            SubTarget::Unsupported(n) => n,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Route {
    Endpoint(Endpoint),
    Resource(Target),
}

fn nf() -> ApiError {
    ApiError::path_not_found()
}

pub fn route(path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    use Endpoint::*;
    let ep = |e| Ok(Route::Endpoint(e));
    match segs.as_slice() {
        ["version"] => ep(Version),
        [h @ ("healthz" | "livez" | "readyz"), rest @ ..] if rest.len() <= 1 => {
            let kind = match *h {
                "healthz" => "healthz",
                "livez" => "livez",
                _ => "readyz",
            };
            ep(Health {
                kind,
                check: rest.first().map(|s| s.to_string()),
            })
        }
        ["openapi", "v2"] => ep(OpenApiV2),
        [".well-known", "openid-configuration"] => ep(OpenIdConfiguration),
        ["openid", "v1", "jwks"] => ep(OpenIdJwks),
        ["openapi", "v3"] => ep(OpenApiV3Root),
        ["openapi", "v3", rest @ ..] => ep(OpenApiV3(rest.join("/"))),
        ["api"] => ep(Api),
        ["api", "v1"] => ep(GroupVersion(String::new(), "v1".into())),
        ["api", "v1", rest @ ..] => resource("", "v1", rest),
        ["api", ..] => Err(nf()),
        ["apis"] => ep(Apis),
        ["apis", g] => ep(Group(g.to_string())),
        ["apis", g, v] => ep(GroupVersion(g.to_string(), v.to_string())),
        ["apis", g, v, rest @ ..] => resource(g, v, rest),
        _ => Err(nf()),
    }
}

fn resource(group: &str, version: &str, segs: &[&str]) -> Result<Route, ApiError> {
    let (watch_path, segs) = match segs {
        ["watch", rest @ ..] => (true, rest),
        s => (false, s),
    };
    let ns_self = |s: &str| matches!(s, "status" | "finalize");
    let (res, ns, name, sub) = match segs {
        ["namespaces", ns, res, rest @ ..] if !(rest.is_empty() && ns_self(res)) => {
            if rest.len() > 2 {
                return Err(nf());
            }
            (
                *res,
                Some(ns.to_string()),
                rest.first().map(|s| s.to_string()),
                rest.get(1).copied(),
            )
        }
        // nodes/<name>/proxy/<path...>: the rest is the kubelet's path (nodeproxy.rs).
        [res @ "nodes", name, "proxy", _, ..] => {
            (*res, None, Some(name.to_string()), Some("proxy"))
        }
        [res, rest @ ..] => {
            if rest.len() > 2 {
                return Err(nf());
            }
            (
                *res,
                None,
                rest.first().map(|s| s.to_string()),
                rest.get(1).copied(),
            )
        }
        [] => return Err(nf()),
    };
    let info = registry::lookup(group, version, res)
        .or_else(|| crate::crd::lookup(group, version, res))
        .ok_or_else(nf)?;
    if ns.is_some() && !info.namespaced {
        return Err(nf());
    }
    if info.namespaced && ns.is_none() && name.is_some() {
        return Err(nf());
    }
    let sub = match sub {
        None => None,
        Some("finalize") if info.kind == "Namespace" => Some(SubTarget::Finalize),
        Some(s) => {
            let sr = info.subresource(s).ok_or_else(nf)?;
            Some(match Subresource::from_name(sr.name) {
                Some(k) => SubTarget::Known(k),
                None => SubTarget::Unsupported(sr.name),
            })
        }
    };
    if watch_path && sub.is_some() {
        return Err(nf());
    }
    Ok(Route::Resource(Target {
        info,
        namespace: ns,
        name,
        sub,
        watch_path,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(p: &str) -> Target {
        match route(p).unwrap() {
            Route::Resource(t) => t,
            other => panic!("{p}: {other:?}"),
        }
    }

    #[test]
    fn resource_paths() {
        let t = target("/api/v1/namespaces/default/pods/p1/status");
        assert_eq!(
            (t.info.resource, t.namespace.as_deref(), t.name.as_deref()),
            ("pods", Some("default"), Some("p1"))
        );
        assert_eq!(t.sub, Some(SubTarget::Known(Subresource::Status)));
        let t = target("/api/v1/namespaces/kube-system");
        assert_eq!(
            (t.info.resource, t.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let t = target("/api/v1/namespaces/x/finalize");
        assert_eq!(t.sub, Some(SubTarget::Finalize));
        let t = target("/apis/apps/v1/namespaces/d/deployments/web/scale");
        assert_eq!(t.sub, Some(SubTarget::Known(Subresource::Scale)));
        let t = target("/api/v1/pods");
        assert!(t.namespace.is_none() && t.name.is_none());
        let t = target("/api/v1/watch/namespaces/d/pods");
        assert!(t.watch_path);
        let t = target("/api/v1/nodes/n1");
        assert_eq!(t.name.as_deref(), Some("n1"));
        let t = target("/api/v1/nodes/n1/proxy/stats/summary");
        assert_eq!(t.name.as_deref(), Some("n1"));
        assert_eq!(t.sub, Some(SubTarget::Unsupported("proxy")));
        let t = target("/api/v1/namespaces/d/pods/p/exec");
        assert_eq!(t.sub, Some(SubTarget::Unsupported("exec")));
    }

    #[test]
    fn bad_paths_are_404() {
        for p in [
            "/api/v1/pods/p1",
            "/api/v1/namespaces/d/nodes",
            "/api/v1/namespaces/d/pods/p/logz",
            "/api/v1/namespaces/d/pods/p/status/x",
            "/apis/nope/v1/things",
            "/nope",
            "/api/v2",
            "/api/v1/namespaces/d/configmaps/c/status",
        ] {
            assert_eq!(route(p).unwrap_err().code, 404, "{p}");
        }
        assert!(matches!(
            route("/version"),
            Ok(Route::Endpoint(Endpoint::Version))
        ));
        assert!(matches!(
            route("/readyz/etcd"),
            Ok(Route::Endpoint(Endpoint::Health { .. }))
        ));
        assert!(
            matches!(route("/openapi/v3/apis/apps/v1"), Ok(Route::Endpoint(Endpoint::OpenApiV3(p))) if p == "apis/apps/v1")
        );
    }
}
