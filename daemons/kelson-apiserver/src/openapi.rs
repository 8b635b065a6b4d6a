//! Minimal OpenAPI documents: enough for clients to discover what is served.
//!
//! The full schemas are kelson-apiresources' job (generated from k8s-openapi's schemars
//! schemas); until it lands these documents list every served path with its operations and
//! the `fieldValidation` / `dryRun` parameters (which is how kubectl decides to use server-side
//! field validation), and one component per kind carrying `x-kubernetes-group-version-kind`.

use serde_json::{json, Map, Value};

use crate::registry::{self, ResourceInfo};

fn gv_path(r: &ResourceInfo) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

fn definition_name(r: &ResourceInfo) -> String {
    let g = match r.group {
        "" => "core".to_string(),
        g => g.trim_end_matches(".k8s.io").replace('.', "_"),
    };
    let g = g.split('_').next().unwrap_or_default().to_string();
    format!("io.k8s.api.{g}.{}.{}", r.version, r.kind)
}

fn params() -> Value {
    json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
    ])
}

fn paths_for(r: &ResourceInfo, v3: bool) -> Vec<(String, Value)> {
    let base = format!("/{}", gv_path(r));
    let coll = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.resource)
    } else {
        format!("{base}/{}", r.resource)
    };
    let gvk = json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
    let op = |verb: &str| {
        let mut o = json!({"operationId": format!("{verb}{}", r.kind), "x-kubernetes-action": verb, "x-kubernetes-group-version-kind": gvk[0]});
        if matches!(verb, "post" | "put" | "patch") {
            o["parameters"] = params();
            if !v3 {
                o["parameters"] = json!([{"name": "fieldValidation", "in": "query", "type": "string", "uniqueItems": true}]);
            }
        }
        o
    };
    vec![
        (coll.clone(), json!({"get": op("list"), "post": op("post"), "delete": op("deletecollection")})),
        (format!("{coll}/{{name}}"), json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")})),
    ]
}

fn schema(r: &ResourceInfo) -> Value {
    json!({
        "type": "object",
        "description": format!("{} ({})", r.kind, r.api_version()),
        "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": r.kind}],
    })
}

/// `GET /openapi/v2` (JSON).
pub fn v2() -> Value {
    let mut paths = Map::new();
    let mut defs = Map::new();
    for r in registry::resources() {
        for (p, v) in paths_for(r, false) {
            paths.insert(p, v);
        }
        defs.insert(definition_name(r), schema(r));
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0-kelson"}, "paths": paths, "definitions": defs})
}

/// `GET /openapi/v3`: the per-group-version index.
pub fn v3_root() -> Value {
    let mut paths = Map::new();
    for r in registry::resources() {
        let p = gv_path(r);
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=kelson-{}", env!("CARGO_PKG_VERSION"))}));
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/<api/v1 | apis/g/v>`.
pub fn v3_group_version(gv: &str) -> Option<Value> {
    let rs: Vec<&ResourceInfo> = registry::resources().iter().filter(|r| gv_path(r) == gv).collect();
    if rs.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in rs {
        for (p, v) in paths_for(r, true) {
            paths.insert(p, v);
        }
        schemas.insert(definition_name(r), schema(r));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-kelson"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_cover_resources() {
        let root = v3_root();
        assert!(root["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap().starts_with("/openapi/v3/apis/apps/v1"));
        let apps = v3_group_version("apis/apps/v1").unwrap();
        assert!(apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"].is_object());
        assert!(apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
        assert!(v3_group_version("apis/nope/v1").is_none());
        assert!(v2()["definitions"]["io.k8s.api.core.v1.Pod"].is_object());
    }
}
