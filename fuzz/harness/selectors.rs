//! Fuzzing entry point for label and field selectors (kelson-apimachinery only, so its
//! cargo-fuzz target builds without the API server: `cargo fuzz build --no-default-features
//! selectors`). Shared (via `#[path]`) by the `selectors` target and the stable regression test
//! `daemons/kelson-apiserver/tests/fuzz_corpus.rs`. Beyond "an error, never a panic": a parsed
//! selector prints to text that parses back to the same selector, as clients echo them.

#![allow(dead_code)]

use kelson_apimachinery::selector::{FieldSelector, LabelSelector, Selector};
use serde_json::Value;

/// Label and field selectors (kelson-apimachinery): `Selector::parse` (`?labelSelector=`),
/// `FieldSelector::parse` (`?fieldSelector=`), `unescape_field_value`, and
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
        // The same terms; not necessarily in the same order, since parsing sorts the raw
        // terms (as upstream's fields.ParseSelector does) and printing normalizes `==` and
        // escapes, which can sort differently.
        let terms = |s: &FieldSelector| {
            let mut t: Vec<String> = s.terms().iter().map(|t| format!("{t:?}")).collect();
            t.sort();
            t
        };
        assert_eq!(
            terms(&again),
            terms(&sel),
            "field selector {text:?} changed when reparsed"
        );
    }
    let _ = kelson_apimachinery::selector::unescape_field_value(&text);
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        if let Ok(Some(ls)) = LabelSelector::from_value(Some(&v)) {
            if let Ok(sel) = ls.to_selector() {
                let _ = sel.matches(&labels);
            }
        }
        let _ = kelson_apimachinery::selector::label_selector_as_selector(Some(&v));
    }
}
