//! Fuzzing entry points that go through kelson-apiserver itself: request decoding (bodies and
//! query strings) and PATCH application. Shared (via `#[path]`) by the cargo-fuzz targets
//! `decode` and `patch` and by the stable regression test
//! `daemons/kelson-apiserver/tests/fuzz_corpus.rs`, which replays `corpus/<target>/` through
//! the same functions. The property is "an error, never a panic", plus cheap invariants that
//! make a wrong `Ok` visible (a decoded body is an object that survives a JSON round trip).
//! Inputs are split by a leading selector byte and a NUL separator, so seeds stay readable.

#![allow(dead_code)]

use kelson_apimachinery::selector::{FieldSelector, Selector};
use kelson_apiserver::patch::PatchType;
use serde_json::Value;

/// Request body decoding: `kelson_apiserver::http::decode_object`, the decoder every create,
/// update and apply body goes through. The first byte picks the Content-Type: `j` JSON, `y`
/// YAML, `p` Kubernetes protobuf (`k8s\0` envelope), anything else an unsupported or odd one.
pub fn decode(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let ct = match sel {
        b'j' => "application/json",
        b'y' => "application/yaml",
        b'p' => "application/vnd.kubernetes.protobuf",
        b'Y' => "application/x-yaml; charset=utf-8",
        b'J' => "application/json;stream=watch",
        b'q' => return query(body),
        _ => "text/plain",
    };
    if let Ok(v) = kelson_apiserver::http::decode_object(Some(ct), body) {
        assert!(v.is_object(), "decode_object returned a non-object: {v}");
        // What was decoded must re-encode (the server stores and echoes it).
        let text = serde_json::to_vec(&v).expect("a decoded body re-encodes as JSON");
        let back: Value = serde_json::from_slice(&text).expect("re-encoded JSON parses");
        assert_eq!(back, v, "JSON round trip changed the decoded body");
    }
}

/// OpenAPI definitions strategic merge patch knows (and "" for schema-less patching).
const DEFINITIONS: &[&str] = &[
    "",
    "io.k8s.api.apps.v1.Deployment",
    "io.k8s.api.core.v1.Pod",
    "io.k8s.api.core.v1.Service",
    "io.k8s.api.core.v1.ConfigMap",
];

/// A small but nested object to patch when the input brings none.
const DEFAULT_ORIG: &str = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d","labels":{"a":"b"},"finalizers":["x"]},"spec":{"replicas":1,"template":{"metadata":{"labels":{"app":"d"}},"spec":{"containers":[{"name":"c","image":"i","ports":[{"containerPort":80,"protocol":"TCP"}],"env":[{"name":"E","value":"1"}]}],"volumes":[{"name":"v","emptyDir":{}}]}}}}"#;

/// Patch application: `kelson_apiserver::patch::apply_to`, what PATCH requests run. The first
/// byte picks the patch type (`j` JSON patch, `m` merge patch, `s` strategic merge patch, `a`
/// apply, else by value) and the definition (by value); the rest is `orig\0patch`, or just the
/// patch applied to a stock Deployment.
pub fn patch(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let pt = match sel {
        b'j' => PatchType::Json,
        b'm' => PatchType::Merge,
        b's' => PatchType::Strategic,
        b'a' => PatchType::Apply,
        _ => [PatchType::Json, PatchType::Merge, PatchType::Strategic][sel as usize % 3],
    };
    let definition = DEFINITIONS[(sel as usize / 3) % DEFINITIONS.len()];
    let (orig, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (DEFAULT_ORIG.as_bytes(), rest),
    };
    let orig: Value = match serde_json::from_slice(orig) {
        Ok(v @ Value::Object(_)) => v,
        _ => serde_json::from_str(DEFAULT_ORIG).expect("the stock object parses"),
    };
    let _ = kelson_apiserver::patch::apply_to(pt, &orig, body, definition);
    // The definition the server would look up for a kind it does not know.
    let _ = kelson_apiserver::patch::apply_to(pt, &orig, body, "io.k8s.unknown.v1.Thing");
}

/// Query strings: `kelson_apiserver::http::query` (percent-decoding included) and the
/// selectors it hands on, as the server reads `?labelSelector=...&fieldSelector=...`.
pub fn query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = kelson_apiserver::http::pct_decode(&text);
    if let Ok(uri) = format!("/api/v1/pods?{text}").parse::<http::Uri>() {
        let q = kelson_apiserver::http::query(&uri);
        if let Some(s) = q.get("labelSelector") {
            let _ = Selector::parse(s);
        }
        if let Some(s) = q.get("fieldSelector") {
            let _ = FieldSelector::parse(s);
        }
    }
}
