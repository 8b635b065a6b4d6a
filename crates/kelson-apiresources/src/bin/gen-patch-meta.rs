//! `gen-patch-meta <upstream-openapi-v2.json> [OUT]`: regenerates `src/patch_meta.rs`.
//!
//! Reads the upstream Kubernetes OpenAPI v2 document, starts from every definition the
//! registry serves (kinds, their lists, subresource kinds, and the meta types every API uses),
//! follows `$ref`s transitively, and writes one sorted row per field that carries a patch fact
//! (`x-kubernetes-patch-strategy`, `-patch-merge-key`, `-list-type`, `-list-map-keys`,
//! `-map-type`) or refers to an object definition a patch must descend into. Only these facts
//! are written; the document itself stays out of the repository.

use anyhow::{bail, Context};
use kelson_apiresources::registry;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

const META_ROOTS: &[&str] = &[
    "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
    "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent",
    "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList",
    "io.k8s.apimachinery.pkg.apis.meta.v1.APIGroupList",
    "io.k8s.apimachinery.pkg.apis.meta.v1.APIVersions",
];

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(input) = args.next() else {
        bail!("usage: gen-patch-meta <kubernetes-openapi-v2.json> [output.rs]");
    };
    let output = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/src/patch_meta.rs").to_string());
    let text = std::fs::read_to_string(&input).with_context(|| format!("reading {input}"))?;
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("parsing {input}"))?;
    let defs = doc
        .get("definitions")
        .and_then(Value::as_object)
        .context("the document has no `definitions` object")?;
    let code = generate(defs)?;
    std::fs::write(&output, code).with_context(|| format!("writing {output}"))?;
    eprintln!("wrote {output}");
    Ok(())
}

fn roots() -> Vec<String> {
    let mut roots: Vec<String> = META_ROOTS.iter().map(|s| s.to_string()).collect();
    for r in registry::resources() {
        roots.push(r.definition.to_string());
        if r.listable() {
            roots.push(r.list_definition());
        }
        roots.extend(r.subresources.iter().filter_map(|s| s.definition()));
    }
    roots
}

fn ref_name(v: &Value) -> Option<&str> {
    v.get("$ref")?.as_str()?.strip_prefix("#/definitions/")
}

/// The definition a property refers to, directly, through its items, or its map values.
fn property_ref(p: &Value) -> Option<(&str, &'static str)> {
    if let Some(r) = ref_name(p) {
        return Some((r, "Object"));
    }
    if let Some(r) = p.get("items").and_then(ref_name) {
        return Some((r, "List"));
    }
    p.get("additionalProperties")
        .and_then(ref_name)
        .map(|r| (r, "Map"))
}

fn is_object_definition(defs: &Map<String, Value>, name: &str) -> bool {
    defs.get(name)
        .and_then(|d| d.get("properties"))
        .is_some_and(|p| p.is_object())
}

fn quote(s: &str) -> String {
    // Debug formatting of a str is a valid Rust string literal.
    format!("{s:?}")
}

fn opt(v: Option<&Value>) -> String {
    match v.and_then(Value::as_str) {
        Some(s) => format!("Some({})", quote(s)),
        None => "None".to_string(),
    }
}

fn generate(defs: &Map<String, Value>) -> anyhow::Result<String> {
    // Breadth-first closure over `$ref`s from the registry's roots.
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<String> = roots().into();
    while let Some(name) = queue.pop_front() {
        let Some(def) = defs.get(&name) else {
            // Kinds newer or older than the reference document are simply absent.
            eprintln!("note: {name} is not in the upstream document");
            continue;
        };
        if !seen.insert(name.clone()) {
            continue;
        }
        for p in def
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.values())
        {
            if let Some((r, _)) = property_ref(p) {
                queue.push_back(r.to_string());
            }
        }
    }

    let mut rows = BTreeMap::new();
    let mut map_types = BTreeMap::new();
    for name in &seen {
        let def = &defs[name];
        if let Some(mt) = def.get("x-kubernetes-map-type").and_then(Value::as_str) {
            map_types.insert(name.clone(), mt.to_string());
        }
        let Some(props) = def.get("properties").and_then(Value::as_object) else {
            continue;
        };
        for (field, p) in props {
            let target = property_ref(p).filter(|(r, _)| is_object_definition(defs, r));
            let facts = [
                "x-kubernetes-patch-strategy",
                "x-kubernetes-patch-merge-key",
                "x-kubernetes-list-type",
                "x-kubernetes-list-map-keys",
                "x-kubernetes-map-type",
            ];
            if target.is_none() && !facts.iter().any(|f| p.get(*f).is_some()) {
                continue;
            }
            let shape = match (target, p.get("type").and_then(Value::as_str)) {
                (Some((_, shape)), _) => shape,
                (None, Some("array")) => "List",
                (None, Some("object")) if p.get("additionalProperties").is_some() => "Map",
                _ => "Scalar",
            };
            let keys: Vec<String> = p
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(quote)
                .collect();
            let mut row = String::new();
            write!(
                row,
                "    FieldMeta {{ definition: {}, field: {}, shape: Shape::{shape}, \
                 patch_strategy: {}, patch_merge_key: {}, list_type: {}, list_map_keys: &[{}], \
                 map_type: {}, ref_target: {} }},",
                quote(name),
                quote(field),
                opt(p.get("x-kubernetes-patch-strategy")),
                opt(p.get("x-kubernetes-patch-merge-key")),
                opt(p.get("x-kubernetes-list-type")),
                keys.join(", "),
                opt(p.get("x-kubernetes-map-type")),
                match target {
                    Some((r, _)) => format!("Some({})", quote(r)),
                    None => "None".to_string(),
                },
            )?;
            rows.insert((name.clone(), field.clone()), row);
        }
    }
    if rows.is_empty() {
        bail!("no field facts found: is this the Kubernetes OpenAPI v2 document?");
    }

    let mut out = String::new();
    out.push_str(
        "//! GENERATED by `cargo run -p kelson-apiresources --bin gen-patch-meta -- \
         <kubernetes-openapi-v2.json>`; do not edit.\n//!\n\
         //! Patch and list-type facts of every definition the registry uses (transitively), \
         taken\n//! from the upstream Kubernetes OpenAPI v2 document. Sorted by (definition, \
         field) for binary search.\n\n\
         use crate::patch::{FieldMeta, Shape};\n\n",
    );
    writeln!(out, "pub(crate) static FIELDS: &[FieldMeta] = &[")?;
    for row in rows.values() {
        writeln!(out, "{row}")?;
    }
    writeln!(out, "];\n")?;
    writeln!(
        out,
        "/// Definition-level `x-kubernetes-map-type`, sorted by definition.\n\
         pub(crate) static DEFINITION_MAP_TYPES: &[(&str, &str)] = &["
    )?;
    for (d, t) in &map_types {
        writeln!(out, "    ({}, {}),", quote(d), quote(t))?;
    }
    writeln!(out, "];")?;
    Ok(out)
}
