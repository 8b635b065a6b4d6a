//! The fuzzing entry points, shared (via `#[path]`) by the cargo-fuzz targets in
//! `fuzz_targets/` and by the stable regression test
//! `daemons/kelson-apiserver/tests/fuzz_corpus.rs`, which runs every file of `corpus/<target>/`
//! through the same function, so CI exercises the corpus without nightly or cargo-fuzz.
//!
//! Every entry point calls the API server's own functions on arbitrary input; the property is
//! "an error, never a panic", plus cheap invariants that make a wrong `Ok` visible too
//! (a decoded body is an object; a parsed selector prints to text that parses back to the
//! same selector). Inputs are split by a leading selector byte and a NUL separator, so the
//! seed corpus stays readable text.

#![allow(dead_code)]

use kelson_apimachinery::selector::{FieldSelector, LabelSelector, Selector};
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

/// Label and field selectors (kelson-apimachinery): `Selector::parse` (`?labelSelector=`),
/// `FieldSelector::parse` (`?fieldSelector=`), the query-string decoder in front of both, and
/// `LabelSelector::from_value` (a `spec.selector` in an object) when the input is JSON.
pub fn selectors(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let labels: std::collections::BTreeMap<String, String> = [
        ("app", "web"),
        ("tier", "front"),
        ("k8s.io/name", "x"),
        ("n", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    if let Ok(sel) = Selector::parse(&text) {
        let _ = sel.matches(&labels);
        // Printing and parsing again gives the same selector (clients echo selectors back).
        let printed = sel.to_string();
        let again = Selector::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(
            again.to_string(),
            printed,
            "selector {text:?} is not stable"
        );
    }
    if let Ok(sel) = FieldSelector::parse(&text) {
        let _ = sel.matches(&labels);
        let _ = sel.exact_match("metadata.name");
        let printed = sel.to_string();
        let again = FieldSelector::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(
            again.to_string(),
            printed,
            "field selector {text:?} is not stable"
        );
    }
    let _ = kelson_apimachinery::selector::unescape_field_value(&text);
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
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        if let Ok(Some(ls)) = LabelSelector::from_value(Some(&v)) {
            if let Ok(sel) = ls.to_selector() {
                let _ = sel.matches(&labels);
            }
        }
        let _ = kelson_apimachinery::selector::label_selector_as_selector(Some(&v));
    }
}
