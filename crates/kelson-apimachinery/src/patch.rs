//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge
//! patch, over `serde_json::Value`.
//!
//! JSON patch and merge patch delegate to the `json-patch` crate; only the error mapping is
//! ours (a patch that does not decode is a 400, one that fails to apply is upstream's generic
//! 422).
//!
//! Strategic merge patch follows upstream's `strategicpatch.StrategicMergePatch` as the API
//! server runs it (`MergeParallelList` and `IgnoreUnmatchedNulls` on): maps merge recursively
//! and `null` deletes a key; lists whose field has the `merge` strategy are merged (primitives
//! as a set union, maps by their merge key), other lists are replaced. The directives are
//! `$patch: replace|delete` (in a map or as a list element), `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>`, and the result list order
//! follows upstream's `normalizeElementOrder` (`$setElementOrder` first, then patch order,
//! then live order). Which fields merge and by which key is schema knowledge the caller
//! supplies through [`PatchMeta`], one `(definition, field)` lookup at a time, so this crate
//! needs no OpenAPI document. Directives never leak into the result, even inside values that
//! are new to the object.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Upstream's limit on operations in one JSON patch.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10000;

/// Applies an RFC 6902 JSON patch to `doc`, atomically (on error `doc` is unchanged).
pub fn json_patch(doc: &mut Value, patch: &[u8]) -> Result<(), ApiError> {
    let ops: json_patch::Patch =
        serde_json::from_slice(patch).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::too_large(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.0.len()
        )));
    }
    json_patch::patch(doc, &ops).map_err(|_| ApiError::unprocessable())
}

/// Applies an RFC 7386 JSON merge patch to `doc`.
pub fn merge_patch(doc: &mut Value, patch: &Value) {
    json_patch::merge(doc, patch);
}

/// A field's `x-kubernetes-patch-strategy`, as flags (`merge,retainKeys` sets two).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Strategy {
    pub merge: bool,
    pub replace: bool,
    pub retain_keys: bool,
}

impl Strategy {
    pub const NONE: Strategy = Strategy {
        merge: false,
        replace: false,
        retain_keys: false,
    };
    pub const MERGE: Strategy = Strategy {
        merge: true,
        replace: false,
        retain_keys: false,
    };
    pub const REPLACE: Strategy = Strategy {
        merge: false,
        replace: true,
        retain_keys: false,
    };
    pub const RETAIN_KEYS: Strategy = Strategy {
        merge: false,
        replace: false,
        retain_keys: true,
    };
    pub const MERGE_RETAIN_KEYS: Strategy = Strategy {
        merge: true,
        replace: false,
        retain_keys: true,
    };

    /// Parses an `x-kubernetes-patch-strategy` value (`merge`, `replace`, `retainKeys`,
    /// `merge,retainKeys`); unknown parts are ignored.
    pub fn parse(s: &str) -> Strategy {
        let mut st = Strategy::NONE;
        for part in s.split(',').map(str::trim) {
            match part {
                "merge" => st.merge = true,
                "replace" => st.replace = true,
                "retainKeys" => st.retain_keys = true,
                _ => {}
            }
        }
        st
    }
}

/// Patch metadata of one field of one schema definition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldMeta {
    pub strategy: Strategy,
    /// `x-kubernetes-patch-merge-key` for lists of maps.
    pub merge_key: Option<String>,
    /// The definition of the field's value (for a list: of its items), to descend into.
    pub ref_definition: Option<String>,
}

/// Schema knowledge for strategic merge patch: the metadata of `field` in `definition`
/// (e.g. `("io.k8s.api.core.v1.PodSpec", "containers")`), `None` when unknown.
pub trait PatchMeta {
    fn field(&self, definition: &str, field: &str) -> Option<FieldMeta>;
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_PRIMITIVE_PREFIX: &str = "$deleteFromPrimitiveList/";
const SET_ORDER_PREFIX: &str = "$setElementOrder/";

/// Applies a strategic merge patch to `original`, whose schema is `root_definition`.
/// Malformed patches are 400s with upstream's messages; a list of lists is a 422.
pub fn strategic_merge_patch(
    original: &Value,
    patch: &Value,
    meta: &dyn PatchMeta,
    root_definition: &str,
) -> Result<Value, ApiError> {
    let Some(orig) = original.as_object() else {
        return Err(ApiError::bad_request("invalid JSON document"));
    };
    let Some(p) = patch.as_object() else {
        return Err(ApiError::bad_request("invalid JSON document"));
    };
    let smp = Smp { meta };
    smp.merge_map(orig.clone(), p.clone(), Some(root_definition))
        .map(Value::Object)
        .map_err(|e| match e {
            SmpError::NoListOfLists => ApiError::unprocessable(),
            SmpError::Bad(msg) => ApiError::bad_request(msg),
        })
}

enum SmpError {
    Bad(String),
    NoListOfLists,
}

type R<T> = Result<T, SmpError>;

fn bad<T>(msg: impl Into<String>) -> R<T> {
    Err(SmpError::Bad(msg.into()))
}

/// Element kind of a list, for choosing the list algorithm.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Map,
    Scalar,
}

fn element_kind(a: &[Value], b: &[Value]) -> R<Option<Kind>> {
    let mut kind = None;
    for v in a.iter().chain(b) {
        let k = match v {
            Value::Array(_) => return Err(SmpError::NoListOfLists),
            Value::Object(_) => Kind::Map,
            _ => Kind::Scalar,
        };
        match kind {
            None => kind = Some(k),
            Some(prev) if prev != k => {
                return bad("list elements are not all of the same type (maps mixed with values)")
            }
            _ => {}
        }
    }
    Ok(kind)
}

fn no_merge_key(m: &Map<String, Value>, key: &str) -> SmpError {
    SmpError::Bad(format!(
        "map: {} does not contain declared merge key: {key}",
        Value::Object(m.clone())
    ))
}

/// Identity of a list element for ordering: its merge key value (maps) or itself (scalars).
fn identity(v: &Value, key: Option<&str>) -> Option<String> {
    match (v, key) {
        (Value::Object(m), Some(k)) => m.get(k).map(Value::to_string),
        (Value::Object(_), None) => Some(v.to_string()),
        _ => Some(v.to_string()),
    }
}

fn positions(list: &[Value], key: Option<&str>) -> HashMap<String, usize> {
    let mut pos = HashMap::new();
    for (i, v) in list.iter().enumerate() {
        if let Some(id) = identity(v, key) {
            pos.entry(id).or_insert(i);
        }
    }
    pos
}

fn index_in(pos: &HashMap<String, usize>, v: &Value, key: Option<&str>) -> Option<usize> {
    identity(v, key).and_then(|id| pos.get(&id).copied())
}

/// Splits `merged` into items present in `list` and the rest, keeping their order.
fn partition(merged: Vec<Value>, list: &[Value], key: Option<&str>) -> (Vec<Value>, Vec<Value>) {
    let pos = positions(list, key);
    merged
        .into_iter()
        .partition(|v| index_in(&pos, v, key).is_some())
}

/// Upstream's `normalizeElementOrder`: sort the patch items by `patch_order`, the server-only
/// items by `server_order`, then interleave them by `server_order` (`mergeSortedSlice`).
fn normalize_order(
    mut patch_items: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    let ppos = positions(patch_order, key);
    patch_items.sort_by_key(|v| index_in(&ppos, v, key).unwrap_or(usize::MAX));
    let spos = positions(server_order, key);
    server_only.sort_by_key(|v| index_in(&spos, v, key).unwrap_or(usize::MAX));

    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch_items.into_iter().peekable();
    loop {
        match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => out.extend(left.by_ref()),
            (None, Some(_)) => out.extend(right.by_ref()),
            (Some(l), Some(r)) => {
                // A server-only item goes first only when both are in the live list and it
                // was ahead there; a new patch item therefore lands before remaining server
                // items, as upstream.
                let take_left = match (index_in(&spos, l, key), index_in(&spos, r, key)) {
                    (Some(li), Some(ri)) => li < ri,
                    _ => false,
                };
                if take_left {
                    out.extend(left.next());
                } else {
                    out.extend(right.next());
                }
            }
        }
    }
    out
}

fn has_directive(v: &Value) -> bool {
    v.as_object().is_some_and(|m| m.contains_key(DIRECTIVE))
}

struct Smp<'a> {
    meta: &'a dyn PatchMeta,
}

impl Smp<'_> {
    fn field_meta(&self, def: Option<&str>, field: &str) -> FieldMeta {
        def.and_then(|d| self.meta.field(d, field))
            .unwrap_or_default()
    }

    /// A patch value for a key the original lacks: merged into an empty value of its type so
    /// directives are applied and nulls dropped rather than stored.
    fn new_value(&self, pv: Value, fm: &FieldMeta) -> R<Value> {
        let def = fm.ref_definition.as_deref();
        match pv {
            Value::Object(m) => Ok(Value::Object(self.merge_map(Map::new(), m, def)?)),
            Value::Array(a) => {
                if fm.strategy.merge {
                    Ok(Value::Array(self.merge_list(Vec::new(), a, fm, false)?))
                } else {
                    let mut out = Vec::with_capacity(a.len());
                    for e in a {
                        out.push(match e {
                            Value::Object(m) => {
                                Value::Object(self.merge_map(Map::new(), m, def)?)
                            }
                            other => other,
                        });
                    }
                    Ok(Value::Array(out))
                }
            }
            other => Ok(other),
        }
    }

    fn merge_map(
        &self,
        mut original: Map<String, Value>,
        mut patch: Map<String, Value>,
        def: Option<&str>,
    ) -> R<Map<String, Value>> {
        if let Some(d) = patch.remove(DIRECTIVE) {
            match d.as_str() {
                Some("replace") => return self.merge_map(Map::new(), patch, def),
                Some("delete") => return Ok(Map::new()),
                // Upstream rejects `merge` in a map; merging is what happens anyway, so accept it.
                Some("merge") => {}
                _ => {
                    return bad(format!(
                        "unknown patch type: {} in map: {}",
                        d,
                        Value::Object(patch)
                    ))
                }
            }
        }
        self.apply_retain_keys(&mut original, &mut patch)?;
        self.merge_parallel_lists(&mut original, &mut patch, def)?;

        for (k, pv) in patch {
            if k.starts_with(SET_ORDER_PREFIX) {
                continue;
            }
            let (key, is_delete_list) = match k.strip_prefix(DELETE_PRIMITIVE_PREFIX) {
                Some(rest) => (rest.to_string(), true),
                None => (k, false),
            };
            if pv.is_null() {
                original.remove(&key);
                continue;
            }
            let fm = self.field_meta(def, &key);
            let Some(ov) = original.remove(&key) else {
                if !is_delete_list {
                    original.insert(key, self.new_value(pv, &fm)?);
                }
                continue;
            };
            let merged = match (ov, pv) {
                (Value::Object(o), Value::Object(p)) => {
                    if fm.strategy.replace {
                        self.new_value(Value::Object(p), &fm)?
                    } else {
                        Value::Object(self.merge_map(o, p, fm.ref_definition.as_deref())?)
                    }
                }
                (Value::Array(o), Value::Array(p)) => {
                    if fm.strategy.merge || is_delete_list {
                        Value::Array(self.merge_list(o, p, &fm, is_delete_list)?)
                    } else {
                        self.new_value(Value::Array(p), &fm)?
                    }
                }
                (ov, pv) => {
                    if is_delete_list {
                        ov
                    } else {
                        self.new_value(pv, &fm)?
                    }
                }
            };
            original.insert(key, merged);
        }
        Ok(original)
    }

    /// `$retainKeys`: drop every key of the original not listed (the patch may only set
    /// listed keys).
    fn apply_retain_keys(
        &self,
        original: &mut Map<String, Value>,
        patch: &mut Map<String, Value>,
    ) -> R<()> {
        let Some(keep) = patch.remove(RETAIN_KEYS) else {
            return Ok(());
        };
        let Some(keep) = keep.as_array() else {
            return bad("invalid patch format of retainKeys");
        };
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        for (k, v) in patch.iter() {
            if v.is_null()
                || k.starts_with(DELETE_PRIMITIVE_PREFIX)
                || k.starts_with(SET_ORDER_PREFIX)
                || k == DIRECTIVE
            {
                continue;
            }
            if !keep.contains(&k.as_str()) {
                return bad("invalid patch format of retainKeys");
            }
        }
        original.retain(|k, _| keep.contains(&k.as_str()));
        Ok(())
    }

    /// `$setElementOrder/<field>`: merge the field's list now and order the result by the
    /// directive's list (upstream's `mergePatchIntoOriginal`).
    fn merge_parallel_lists(
        &self,
        original: &mut Map<String, Value>,
        patch: &mut Map<String, Value>,
        def: Option<&str>,
    ) -> R<()> {
        let order_keys: Vec<String> = patch
            .keys()
            .filter(|k| k.starts_with(SET_ORDER_PREFIX))
            .cloned()
            .collect();
        for ok in order_keys {
            let field = ok[SET_ORDER_PREFIX.len()..].to_string();
            let Some(Value::Array(order)) = patch.get(&ok).cloned() else {
                return bad(format!("invalid patch format of {ok}: must be a list"));
            };
            let fm = self.field_meta(def, &field);
            let key = fm.merge_key.as_deref();
            let orig_list = match original.get(&field) {
                None => None,
                Some(Value::Array(a)) => Some(a.clone()),
                Some(_) => return bad(format!("{field} in the original is not a list")),
            };
            let patch_list = match patch.get(&field) {
                None => None,
                Some(Value::Array(a)) => Some(a.clone()),
                Some(_) => return bad(format!("{field} in the patch is not a list")),
            };
            if let Some(pl) = &patch_list {
                validate_order(pl, &order, key, &ok)?;
            }
            let server_order = orig_list.clone().unwrap_or_default();
            let merged = match (orig_list, patch_list) {
                (Some(o), None) => o,
                (None, Some(p)) => match self.new_value(Value::Array(p), &fm)? {
                    Value::Array(a) => a,
                    _ => Vec::new(),
                },
                (Some(o), Some(p)) => {
                    if fm.strategy.merge {
                        self.merge_list(o, p, &fm, false)?
                    } else {
                        match self.new_value(Value::Array(p), &fm)? {
                            Value::Array(a) => a,
                            _ => Vec::new(),
                        }
                    }
                }
                (None, None) => continue,
            };
            if element_kind(&merged, &order)? == Some(Kind::Map) && key.is_none() {
                // Without a merge key there is nothing to order maps by; keep the merge order.
                original.insert(field.clone(), Value::Array(merged));
            } else {
                let (in_order, server_only) = partition(merged, &order, key);
                let both = normalize_order(in_order, server_only, &order, &server_order, key);
                original.insert(field.clone(), Value::Array(both));
            }
            patch.remove(&field);
        }
        Ok(())
    }

    fn merge_list(
        &self,
        original: Vec<Value>,
        patch: Vec<Value>,
        fm: &FieldMeta,
        is_delete_list: bool,
    ) -> R<Vec<Value>> {
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        let kind = element_kind(&original, &patch)?;
        if kind != Some(Kind::Map) {
            if is_delete_list {
                return Ok(original
                    .into_iter()
                    .filter(|v| !patch.contains(v))
                    .collect());
            }
            let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
            for v in original.iter().chain(patch.iter()) {
                if !merged.contains(v) {
                    merged.push(v.clone());
                }
            }
            let (p_items, s_items) = partition(merged, &patch, None);
            return Ok(normalize_order(p_items, s_items, &patch, &original, None));
        }
        let Some(key) = fm.merge_key.as_deref() else {
            return bad(format!(
                "cannot merge lists without merge key for {}",
                fm.ref_definition.as_deref().unwrap_or("")
            ));
        };
        let item_def = fm.ref_definition.as_deref();

        // Special elements: `$patch: delete` removes by key, `$patch: replace` replaces the list.
        let mut original = original;
        let mut plain: Vec<Map<String, Value>> = Vec::new();
        let mut replace = false;
        for v in patch {
            let Value::Object(m) = v else { continue };
            match m.get(DIRECTIVE) {
                None => plain.push(m),
                Some(d) => match d.as_str() {
                    Some("delete") => {
                        let Some(kv) = m.get(key) else {
                            return Err(no_merge_key(&m, key));
                        };
                        original.retain(|o| o.get(key) != Some(kv));
                    }
                    Some("replace") => replace = true,
                    Some("merge") => {
                        return bad("merging lists cannot yet be specified in the patch")
                    }
                    _ => {
                        return bad(format!(
                            "unknown patch type: {} in map: {}",
                            d,
                            Value::Object(m.clone())
                        ))
                    }
                },
            }
        }
        if replace {
            let mut out = Vec::with_capacity(plain.len());
            for m in plain {
                out.push(Value::Object(self.merge_map(Map::new(), m, item_def)?));
            }
            return Ok(out);
        }

        let server_order = original.clone();
        let mut merged = original;
        let mut patch_order = Vec::with_capacity(plain.len());
        for m in plain {
            let Some(kv) = m.get(key).cloned() else {
                return Err(no_merge_key(&m, key));
            };
            patch_order.push(Value::Object(m.clone()));
            match merged.iter().position(|o| o.get(key) == Some(&kv)) {
                Some(i) => {
                    let Value::Object(o) = std::mem::take(&mut merged[i]) else {
                        return bad("list elements are not all maps");
                    };
                    merged[i] = Value::Object(self.merge_map(o, m, item_def)?);
                }
                None => merged.push(Value::Object(self.merge_map(Map::new(), m, item_def)?)),
            }
        }
        let (p_items, s_items) = partition(merged, &patch_order, Some(key));
        Ok(normalize_order(
            p_items,
            s_items,
            &patch_order,
            &server_order,
            Some(key),
        ))
    }
}

/// Upstream's `validatePatchWithSetOrderList`: the patch list's items must appear in the
/// `$setElementOrder` list, in the same relative order.
fn validate_order(patch: &[Value], order: &[Value], key: Option<&str>, directive: &str) -> R<()> {
    if patch.is_empty() || order.is_empty() {
        return Ok(());
    }
    let items: Vec<&Value> = patch.iter().filter(|v| !has_directive(v)).collect();
    let (mut pi, mut oi) = (0, 0);
    while pi < items.len() && oi < order.len() {
        if identity(items[pi], key) == identity(&order[oi], key) {
            pi += 1;
        }
        oi += 1;
    }
    if pi < items.len() {
        return bad(format!(
            "The order in patch list:\n{}\n doesn't match {} list:\n{}\n",
            Value::Array(patch.to_vec()),
            directive,
            Value::Array(order.to_vec())
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small slice of the built-in types' patch metadata.
    struct TestMeta;

    impl PatchMeta for TestMeta {
        fn field(&self, definition: &str, field: &str) -> Option<FieldMeta> {
            let m = |strategy, key: Option<&str>, r: Option<&str>| FieldMeta {
                strategy,
                merge_key: key.map(str::to_string),
                ref_definition: r.map(str::to_string),
            };
            Some(match (definition, field) {
                ("Deployment" | "Pod" | "PodTemplateSpec", "metadata") => {
                    m(Strategy::NONE, None, Some("ObjectMeta"))
                }
                ("Deployment", "spec") => m(Strategy::NONE, None, Some("DeploymentSpec")),
                ("DeploymentSpec", "template") => m(Strategy::NONE, None, Some("PodTemplateSpec")),
                ("DeploymentSpec", "strategy") => {
                    m(Strategy::RETAIN_KEYS, None, Some("DeploymentStrategy"))
                }
                ("PodTemplateSpec" | "Pod", "spec") => m(Strategy::NONE, None, Some("PodSpec")),
                ("PodSpec", "containers") => m(Strategy::MERGE, Some("name"), Some("Container")),
                ("PodSpec", "volumes") => {
                    m(Strategy::MERGE_RETAIN_KEYS, Some("name"), Some("Volume"))
                }
                ("PodSpec", "tolerations") => m(Strategy::NONE, None, Some("Toleration")),
                ("Container", "env") => m(Strategy::MERGE, Some("name"), Some("EnvVar")),
                ("Container", "ports") => m(
                    Strategy::MERGE,
                    Some("containerPort"),
                    Some("ContainerPort"),
                ),
                ("ObjectMeta", "finalizers") => m(Strategy::MERGE, None, None),
                ("ObjectMeta", "ownerReferences") => {
                    m(Strategy::MERGE, Some("uid"), Some("OwnerReference"))
                }
                _ => return None,
            })
        }
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "fe"},
                         "finalizers": ["a.io/x", "b.io/y", "c.io/z"]},
            "spec": {
                "replicas": 2,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {"name": "app", "image": "nginx:1.25",
                             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                             "ports": [{"containerPort": 80}]},
                            {"name": "sidecar", "image": "busybox", "args": ["sleep", "1d"]}
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}],
                        "tolerations": [{"key": "k", "operator": "Exists"}]
                    }
                }
            }
        })
    }

    fn smp(orig: &Value, patch: Value) -> Value {
        strategic_merge_patch(orig, &patch, &TestMeta, "Deployment").unwrap()
    }

    fn containers(v: &Value) -> &Vec<Value> {
        v["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
    }

    #[test]
    fn image_change_by_name_keeps_other_containers() {
        let d = deployment();
        let out = smp(
            &d,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}}),
        );
        let c = containers(&out);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["name"], "app");
        assert_eq!(c[0]["image"], "nginx:1.27");
        assert_eq!(c[0]["env"].as_array().unwrap().len(), 2, "env untouched");
        assert_eq!(c[1], d["spec"]["template"]["spec"]["containers"][1]);
        assert_eq!(out["spec"]["replicas"], 2);
    }

    #[test]
    fn add_env_var_with_set_element_order_like_kubectl() {
        let d = deployment();
        let out = smp(
            &d,
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [{"name": "app",
                                "$setElementOrder/env": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
                                "env": [{"name": "C", "value": "3"}]}]}}}}),
        );
        let env = &containers(&out)[0]["env"];
        assert_eq!(
            env,
            &json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}])
        );
        assert_eq!(containers(&out)[1]["name"], "sidecar");
        assert!(!out.to_string().contains('$'), "no directive leaks: {out}");
    }

    #[test]
    fn new_item_without_order_directive_goes_first_like_upstream() {
        let d = deployment();
        let out = smp(
            &d,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "C", "value": "3"}]}]}}}}),
        );
        let names: Vec<&str> = containers(&out)[0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["C", "A", "B"]);
    }

    #[test]
    fn delete_container_by_directive_and_env_value_change() {
        let d = deployment();
        let out = smp(
            &d,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "sidecar", "$patch": "delete"},
                {"name": "app", "env": [{"name": "A", "value": "10"}]}
            ]}}}}),
        );
        let c = containers(&out);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["env"][0], json!({"name": "A", "value": "10"}));
        assert_eq!(c[0]["env"][1], json!({"name": "B", "value": "2"}));
    }

    #[test]
    fn null_removes_labels_and_fields() {
        let d = deployment();
        let out = smp(
            &d,
            json!({"metadata": {"labels": {"tier": null, "new": "x"}},
                   "spec": {"template": {"spec": {"containers": [{"name": "sidecar", "args": null}]}}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "new": "x"}));
        assert!(containers(&out)[1].get("args").is_none());
        // A null for a key the object lacks is ignored, not stored.
        let out = smp(
            &d,
            json!({"metadata": {"annotations": {"a": null, "b": "1"}}}),
        );
        assert_eq!(out["metadata"]["annotations"], json!({"b": "1"}));
    }

    #[test]
    fn primitive_lists_union_and_delete_from_primitive_list() {
        let d = deployment();
        let out = smp(
            &d,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b.io/y"],
                                "finalizers": ["c.io/z", "d.io/w"]}}),
        );
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["a.io/x", "c.io/z", "d.io/w"])
        );
        let out = smp(
            &d,
            json!({"metadata": {"$setElementOrder/finalizers": ["c.io/z", "a.io/x", "b.io/y"]}}),
        );
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["c.io/z", "a.io/x", "b.io/y"])
        );
    }

    #[test]
    fn replace_strategies_and_directives() {
        let d = deployment();
        // A list without the merge strategy is replaced wholesale.
        let out = smp(
            &d,
            json!({"spec": {"template": {"spec": {"tolerations": [{"key": "other", "operator": "Exists"}]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "other", "operator": "Exists"}])
        );
        // `$patch: replace` as a list element replaces a merging list.
        let out = smp(
            &d,
            json!({"spec": {"template": {"spec": {"containers": [
                {"$patch": "replace"}, {"name": "only", "image": "x"}]}}}}),
        );
        assert_eq!(
            containers(&out),
            &vec![json!({"name": "only", "image": "x"})]
        );
        // `$patch: replace` in a map replaces the map.
        let out = smp(
            &d,
            json!({"metadata": {"labels": {"$patch": "replace", "only": "1"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"only": "1"}));
        // `$patch: delete` in a map empties it.
        let out = smp(&d, json!({"metadata": {"labels": {"$patch": "delete"}}}));
        assert_eq!(out["metadata"]["labels"], json!({}));
    }

    #[test]
    fn retain_keys_drops_unlisted_fields() {
        let d = deployment();
        let out = smp(
            &d,
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let out = smp(
            &d,
            json!({"spec": {"template": {"spec": {"volumes": [
                {"name": "data", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/d"}}]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "data", "hostPath": {"path": "/d"}}])
        );
        let e = strategic_merge_patch(
            &d,
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}),
            &TestMeta,
            "Deployment",
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "invalid patch format of retainKeys")
        );
    }

    #[test]
    fn new_subtrees_are_cleaned_of_directives() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {}});
        let out = strategic_merge_patch(
            &pod,
            &json!({"spec": {"containers": [{"name": "a", "image": "x", "env": [{"name": "gone", "$patch": "delete"}]},
                                            {"name": "b", "image": "y", "ports": null}]}}),
            &TestMeta,
            "Pod",
        )
        .unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "image": "x", "env": []}, {"name": "b", "image": "y"}])
        );
    }

    #[test]
    fn malformed_patches_are_errors() {
        let d = deployment();
        let cases = [
            json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
            json!({"metadata": {"labels": {"$patch": "bogus"}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"$patch": "merge"}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app"}, "x"]}}}}),
            json!([1]),
        ];
        for p in cases {
            let e = strategic_merge_patch(&d, &p, &TestMeta, "Deployment").unwrap_err();
            assert_eq!(e.code, 400, "{p}: {e:?}");
        }
        let e = strategic_merge_patch(
            &d,
            &json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
            &TestMeta,
            "Deployment",
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "map: {\"image\":\"x\"} does not contain declared merge key: name"
        );
        let e = strategic_merge_patch(
            &d,
            &json!({"metadata": {"finalizers": [["x"]]}}),
            &TestMeta,
            "Deployment",
        )
        .unwrap_err();
        assert_eq!(e.code, 422);
    }

    #[test]
    fn unknown_schema_merges_maps_and_replaces_lists() {
        let o = json!({"a": {"b": 1, "c": [1, 2]}, "d": 1});
        let out =
            strategic_merge_patch(&o, &json!({"a": {"c": [3], "e": 2}}), &TestMeta, "Unknown")
                .unwrap();
        assert_eq!(out, json!({"a": {"b": 1, "c": [3], "e": 2}, "d": 1}));
    }

    #[test]
    fn json_patch_ops_and_errors() {
        let mut d = json!({"metadata": {"name": "a", "labels": {"x": "1"}}});
        json_patch(
            &mut d,
            br#"[{"op":"add","path":"/metadata/labels/y","value":"2"},
                 {"op":"remove","path":"/metadata/labels/x"},
                 {"op":"test","path":"/metadata/name","value":"a"}]"#,
        )
        .unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"y": "2"}));

        let before = d.clone();
        let e = json_patch(
            &mut d,
            br#"[{"op":"add","path":"/metadata/labels/z","value":"3"},
                 {"op":"test","path":"/metadata/name","value":"b"}]"#,
        )
        .unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert_eq!(
            e.message,
            "the server rejected our request due to an error in our request"
        );
        assert_eq!(d, before, "a failed patch leaves the document unchanged");

        let e = json_patch(&mut d, br#"{"op":"add"}"#).unwrap_err();
        assert_eq!(e.code, 400);
        let e = json_patch(&mut d, br#"[{"op":"frobnicate","path":"/a"}]"#).unwrap_err();
        assert_eq!(e.code, 400);
        let e = json_patch(&mut d, br#"[{"op":"remove","path":"/nope"}]"#).unwrap_err();
        assert_eq!(e.code, 422);
    }

    #[test]
    fn merge_patch_rfc7386() {
        let mut d = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut d, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(d, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn strategy_parse() {
        assert_eq!(Strategy::parse("merge"), Strategy::MERGE);
        assert_eq!(
            Strategy::parse("merge,retainKeys"),
            Strategy::MERGE_RETAIN_KEYS
        );
        assert_eq!(Strategy::parse("retainKeys"), Strategy::RETAIN_KEYS);
        assert_eq!(Strategy::parse("replace"), Strategy::REPLACE);
        assert_eq!(Strategy::parse(""), Strategy::NONE);
    }
}
