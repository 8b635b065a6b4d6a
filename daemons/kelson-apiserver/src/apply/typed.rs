//! Schema-aware walks over objects: the field set of an object, the comparison of two objects,
//! the merge of an applied configuration into a live object, and the removal of fields.
//!
//! These are structured-merge-diff's `ToFieldSet`, `Compare`, `Merge` and `RemoveItems`. The
//! schema is the patch-metadata table generated from upstream's OpenAPI
//! (`kelson_apiresources::patch`): per field, whether it is a struct (fields merge one by one),
//! a map (`additionalProperties`: keys merge one by one unless `x-kubernetes-map-type: atomic`),
//! a list (`x-kubernetes-list-type` `map` with `x-kubernetes-list-map-keys` merges items by key,
//! `set` merges scalar items by value, `atomic` is replaced whole; a list with only a
//! `merge` patch strategy is a map by its merge key, as upstream's schema conversion does), or
//! a scalar. Fields the table does not describe (plain scalars, `labels`-like string maps, and
//! everything of kinds without a built-in schema) are deduced from the value as upstream's
//! deduced schema does: objects are granular maps, lists are atomic, the rest are scalars.

use std::collections::{BTreeMap, HashSet};

use kelson_apiresources::patch::{definition_map_type, field_meta, FieldMeta, Shape};
use serde_json::{Map, Value};

use super::fieldset::{self, Element, Set};

/// The type of a value, as far as merging is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// A struct of the named definition: fields merge one by one.
    Struct(&'static str),
    /// A granular string-keyed map whose values are of the definition (scalars when `None`).
    Map(Option<&'static str>),
    /// An associative list: items are identified by the key fields.
    Assoc {
        keys: &'static [&'static str],
        elem: Option<&'static str>,
    },
    /// A list of distinct scalars.
    SetList,
    /// Replaced as a whole (scalars, atomic lists, maps and structs).
    Atomic,
    /// No schema: decided by the value (objects are granular maps, the rest atomic).
    Deduced,
}

/// Key fields that upstream's schema defaults (OpenAPI `default`), so an item that omits
/// them still has a key: every built-in list-map key with a default is a port `protocol`.
fn key_default(field: &str) -> Option<Value> {
    (field == "protocol").then(|| Value::String("TCP".into()))
}

impl Ty {
    /// The root type of a definition (`Deduced` for an empty definition: unknown kinds).
    pub fn root(definition: &'static str) -> Ty {
        if definition.is_empty() {
            Ty::Deduced
        } else {
            struct_ty(definition)
        }
    }

    /// The type of field `name` of a value of this type.
    pub fn field(self, name: &str) -> Ty {
        match self {
            Ty::Struct(def) => field_meta(def, name).map_or(Ty::Deduced, from_meta),
            Ty::Map(Some(def)) => struct_ty(def),
            _ => Ty::Deduced,
        }
    }

    fn elem(self) -> Ty {
        match self {
            Ty::Assoc {
                elem: Some(def), ..
            } => struct_ty(def),
            _ => Ty::Deduced,
        }
    }

    /// Whether a non-leaf node of this type is recorded as a member when it appears or goes
    /// (maps and lists are; structs are not, like upstream's non-pointer structs).
    fn records_node(self) -> bool {
        !matches!(self, Ty::Struct(_))
    }
}

fn struct_ty(def: &'static str) -> Ty {
    if definition_map_type(def) == Some("atomic") {
        Ty::Atomic
    } else {
        Ty::Struct(def)
    }
}

fn from_meta(fm: &'static FieldMeta) -> Ty {
    if fm.map_type == Some("atomic") {
        return Ty::Atomic;
    }
    match fm.shape {
        Shape::Object => fm.ref_target.map_or(Ty::Deduced, struct_ty),
        Shape::Map => Ty::Map(fm.ref_target),
        Shape::Scalar => Ty::Atomic,
        Shape::List => match fm.list_type {
            Some("map") if !fm.list_map_keys.is_empty() => Ty::Assoc {
                keys: fm.list_map_keys,
                elem: fm.ref_target,
            },
            Some("set") => Ty::SetList,
            Some(_) => Ty::Atomic,
            None if fm.merges() => match &fm.patch_merge_key {
                Some(k) => Ty::Assoc {
                    keys: std::slice::from_ref(k),
                    elem: fm.ref_target,
                },
                None => Ty::SetList,
            },
            None => Ty::Atomic,
        },
    }
}

/// How a value of a type is walked.
enum Node<'a> {
    Leaf,
    Fields(&'a Map<String, Value>),
    /// Items by key element, in list order.
    Assoc(Vec<(Element, &'a Value)>),
    Set(Vec<(Element, &'a Value)>),
}

fn item_key(item: &Value, keys: &[&str]) -> Option<Element> {
    let obj = item.as_object()?;
    let mut fields = BTreeMap::new();
    for k in keys {
        match obj
            .get(*k)
            .filter(|v| !v.is_null())
            .cloned()
            .or_else(|| key_default(k))
        {
            Some(v) => {
                fields.insert(k.to_string(), v);
            }
            None => return None,
        }
    }
    Some(fieldset::key(&fields))
}

fn node(ty: Ty, v: &Value) -> Node<'_> {
    match (ty, v) {
        (Ty::Struct(_) | Ty::Map(_) | Ty::Deduced, Value::Object(m)) => Node::Fields(m),
        (Ty::Assoc { keys, .. }, Value::Array(items)) => {
            // Items without keys, or duplicate keys, make the list atomic (upstream rejects
            // them on apply; treating the list whole keeps updates working).
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                match item_key(it, keys) {
                    Some(k) if seen.insert(k.clone()) => out.push((k, it)),
                    _ => return Node::Leaf,
                }
            }
            Node::Assoc(out)
        }
        (Ty::SetList, Value::Array(items)) => {
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                let e = fieldset::value(it);
                if it.is_object() || it.is_array() || !seen.insert(e.clone()) {
                    return Node::Leaf;
                }
                out.push((e, it));
            }
            Node::Set(out)
        }
        _ => Node::Leaf,
    }
}

/// The fields `v` sets (`ToFieldSet`), added to `set` under `path`.
pub fn to_field_set(v: &Value, ty: Ty, path: &mut Vec<Element>, set: &mut Set) {
    match node(ty, v) {
        Node::Leaf => set.insert(path),
        Node::Fields(m) => {
            if m.is_empty() {
                set.insert(path);
            }
            for (k, c) in m {
                path.push(fieldset::field(k));
                let empty = c.is_null() || c.as_object().is_some_and(|o| o.is_empty());
                if empty {
                    set.insert(path);
                } else {
                    to_field_set(c, ty.field(k), path, set);
                }
                path.pop();
            }
        }
        Node::Assoc(items) => {
            for (e, it) in items {
                path.push(e);
                set.insert(path);
                to_field_set(it, ty.elem(), path, set);
                path.pop();
            }
        }
        Node::Set(items) => {
            for (e, _) in items {
                path.push(e);
                set.insert(path);
                path.pop();
            }
        }
    }
}

/// The field set of a whole object.
pub fn field_set(v: &Value, ty: Ty) -> Set {
    let mut s = Set::new();
    to_field_set(v, ty, &mut Vec::new(), &mut s);
    s
}

/// What changed between two objects (`typed.Comparison`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub added: Set,
    pub modified: Set,
    pub removed: Set,
}

impl Comparison {
    pub fn is_same(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }

    /// Drops paths at or below any member of `ignored`.
    pub fn filter(&mut self, ignored: &Set) {
        self.added = self.added.recursive_difference(ignored);
        self.modified = self.modified.recursive_difference(ignored);
        self.removed = self.removed.recursive_difference(ignored);
    }
}

/// Compares `old` with `new` (both whole objects of type `ty`).
pub fn compare(old: &Value, new: &Value, ty: Ty) -> Comparison {
    let mut c = Comparison::default();
    compare_at(Some(old), Some(new), ty, false, &mut Vec::new(), &mut c);
    c
}

fn compare_at(
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    ty: Ty,
    item: bool,
    path: &mut Vec<Element>,
    c: &mut Comparison,
) {
    let nl = lhs.map(|v| node(ty, v));
    let nr = rhs.map(|v| node(ty, v));
    match (&nl, &nr) {
        (Some(Node::Fields(a)), Some(Node::Fields(b))) => {
            compare_fields(Some(a), Some(b), ty, path, c)
        }
        (Some(Node::Assoc(a)), Some(Node::Assoc(b))) => compare_items(a, b, ty.elem(), path, c),
        (Some(Node::Set(a)), Some(Node::Set(b))) => compare_items(a, b, Ty::Atomic, path, c),
        (Some(_), Some(_)) => {
            if lhs != rhs {
                c.modified.insert(path);
            }
        }
        (None, Some(n)) | (Some(n), None) => {
            let added = lhs.is_none();
            match n {
                Node::Leaf => {}
                Node::Fields(m) => {
                    let (a, b) = if added {
                        (None, Some(*m))
                    } else {
                        (Some(*m), None)
                    };
                    compare_fields(a, b, ty, path, c);
                }
                Node::Assoc(items) | Node::Set(items) => {
                    let elem = if matches!(n, Node::Assoc(_)) {
                        ty.elem()
                    } else {
                        Ty::Atomic
                    };
                    for (e, it) in items {
                        path.push(e.clone());
                        let (a, b) = if added {
                            (None, Some(*it))
                        } else {
                            (Some(*it), None)
                        };
                        compare_at(a, b, elem, true, path, c);
                        path.pop();
                    }
                }
            }
            let leaf = matches!(n, Node::Leaf);
            if leaf || item || ty.records_node() {
                if added {
                    c.added.insert(path);
                } else {
                    c.removed.insert(path);
                }
            }
        }
        (None, None) => {}
    }
}

fn compare_fields(
    a: Option<&Map<String, Value>>,
    b: Option<&Map<String, Value>>,
    ty: Ty,
    path: &mut Vec<Element>,
    c: &mut Comparison,
) {
    let mut keys: Vec<&String> = a.into_iter().flat_map(|m| m.keys()).collect();
    keys.extend(b.into_iter().flat_map(|m| m.keys()));
    keys.sort();
    keys.dedup();
    for k in keys {
        path.push(fieldset::field(k));
        // A `null` field is an absent one (stored objects may carry the nulls of a typed
        // round trip; an applied `null` is dropped from the result).
        compare_at(
            a.and_then(|m| m.get(k)).filter(|v| !v.is_null()),
            b.and_then(|m| m.get(k)).filter(|v| !v.is_null()),
            ty.field(k),
            false,
            path,
            c,
        );
        path.pop();
    }
}

fn compare_items(
    a: &[(Element, &Value)],
    b: &[(Element, &Value)],
    elem: Ty,
    path: &mut Vec<Element>,
    c: &mut Comparison,
) {
    let bm: BTreeMap<&Element, &Value> = b.iter().map(|(e, v)| (e, *v)).collect();
    let am: BTreeMap<&Element, &Value> = a.iter().map(|(e, v)| (e, *v)).collect();
    for (e, v) in a {
        path.push(e.clone());
        compare_at(Some(v), bm.get(e).copied(), elem, true, path, c);
        path.pop();
    }
    for (e, v) in b {
        if !am.contains_key(e) {
            path.push(e.clone());
            compare_at(None, Some(v), elem, true, path, c);
            path.pop();
        }
    }
}

/// Merges the applied configuration `rhs` into `lhs` (`TypedValue.Merge`): `rhs` wins on
/// leaves; struct fields and map keys merge one by one; associative and set lists merge by
/// item, keeping `lhs`'s order for items `rhs` does not mention and `rhs`'s order otherwise.
pub fn merge(lhs: Option<&Value>, rhs: &Value, ty: Ty) -> Value {
    let Some(lhs) = lhs else {
        return rhs.clone();
    };
    match (node(ty, lhs), node(ty, rhs)) {
        (Node::Fields(a), Node::Fields(b)) => {
            let mut out = a.clone();
            for (k, v) in b {
                let merged = merge(a.get(k), v, ty.field(k));
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Node::Assoc(a), Node::Assoc(b)) => Value::Array(merge_items(&a, &b, ty.elem())),
        (Node::Set(a), Node::Set(b)) => Value::Array(merge_items(&a, &b, Ty::Atomic)),
        _ => rhs.clone(),
    }
}

fn merge_items(a: &[(Element, &Value)], b: &[(Element, &Value)], elem: Ty) -> Vec<Value> {
    let am: BTreeMap<&Element, &Value> = a.iter().map(|(e, v)| (e, *v)).collect();
    let bm: BTreeMap<&Element, &Value> = b.iter().map(|(e, v)| (e, *v)).collect();
    let mut used: HashSet<&Element> = HashSet::new();
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && used.contains(&a[i].0) {
            i += 1;
            continue;
        }
        if i < a.len() && j < b.len() {
            let (le, lv) = &a[i];
            let (re, rv) = &b[j];
            if le == re {
                out.push(merge(Some(lv), rv, elem));
                used.insert(le);
                i += 1;
                j += 1;
            } else if !bm.contains_key(le) {
                out.push((*lv).clone());
                i += 1;
            } else {
                out.push(merge(am.get(re).copied(), rv, elem));
                used.insert(re);
                j += 1;
            }
        } else if i < a.len() {
            out.push(a[i].1.clone());
            i += 1;
        } else {
            let (re, rv) = &b[j];
            out.push(merge(am.get(re).copied(), rv, elem));
            used.insert(re);
            j += 1;
        }
    }
    out
}

/// Removes from `v` every member of `remove` (`RemoveItems`), except nodes that `keep`
/// (what any manager still owns) has members at or below: those stay and only their removed
/// children go. A map or list emptied by the removal goes too unless `keep` owns it.
pub fn remove_items(v: &mut Value, ty: Ty, remove: &Set, keep: Option<&Set>) {
    let keep_of = |e: &str| keep.and_then(|k| k.child(e));
    let owned = |s: Option<&Set>| s.is_some_and(|s| !s.is_empty());
    if matches!(ty, Ty::Assoc { .. } | Ty::SetList) {
        let elements: Vec<Element> = match node(ty, v) {
            Node::Assoc(list) | Node::Set(list) => list.into_iter().map(|(e, _)| e).collect(),
            _ => return,
        };
        let Value::Array(items) = v else { return };
        let elem = ty.elem();
        let mut out = Vec::with_capacity(items.len());
        for (mut it, e) in std::mem::take(items).into_iter().zip(elements) {
            if let Some(sub) = remove.child(&e) {
                let kept = keep_of(&e);
                if sub.is_member() && !owned(kept) {
                    continue;
                }
                remove_items(&mut it, elem, sub, kept);
            }
            out.push(it);
        }
        *items = out;
        return;
    }
    if !matches!(ty, Ty::Struct(_) | Ty::Map(_) | Ty::Deduced) {
        return;
    }
    let Value::Object(m) = v else { return };
    let keys: Vec<String> = m.keys().cloned().collect();
    for k in keys {
        let e = fieldset::field(&k);
        let Some(sub) = remove.child(&e) else {
            continue;
        };
        let kept = keep_of(&e);
        if sub.is_member() && !owned(kept) {
            m.remove(&k);
            continue;
        }
        let Some(c) = m.get_mut(&k) else { continue };
        let was_empty = is_empty_container(c);
        remove_items(c, ty.field(&k), sub, kept);
        if !was_empty && is_empty_container(c) && !kept.is_some_and(Set::is_member) {
            m.remove(&k);
        }
    }
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Drops `null` fields (an applied `null` means the field is owned but unset).
pub fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, c| !c.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}
