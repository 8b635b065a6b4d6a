//! Field sets: which fields of an object a manager owns, and their `fieldsV1` encoding.
//!
//! A set is a trie of path elements, structured-merge-diff's `fieldpath.Set`. Elements are
//! kept in their `fieldsV1` spelling (`f:name`, `k:{"name":"a"}`, `v:"x"`, `i:0`) so the trie
//! is its own serialization: a node that is itself a member (a leaf field, a list item, a
//! map that was set as a whole) has `member`; its children are the fields below it. In
//! `fieldsV1` a member without children is `{}` and a member with children carries `".": {}`.
//! `BTreeMap` keeps elements sorted, so encoding is deterministic (the same set always
//! encodes to the same bytes, which lets an unchanged apply store nothing).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One step of a path, in `fieldsV1` spelling.
pub type Element = String;

/// A set of paths (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    member: bool,
    children: BTreeMap<Element, Set>,
}

/// `f:<name>`: a struct field or map key.
pub fn field(name: &str) -> Element {
    format!("f:{name}")
}

/// `v:<json>`: an item of a set-typed list.
pub fn value(v: &Value) -> Element {
    format!("v:{v}")
}

/// `k:<json object>`: an item of an associative list, by its key fields.
pub fn key(fields: &BTreeMap<String, Value>) -> Element {
    let m: Map<String, Value> = fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    format!("k:{}", Value::Object(m))
}

impl Set {
    pub fn new() -> Set {
        Set::default()
    }

    /// A set of the given paths.
    pub fn from_paths<'a, I: IntoIterator<Item = &'a [Element]>>(paths: I) -> Set {
        let mut s = Set::new();
        for p in paths {
            s.insert(p);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    /// Whether this node itself is a member.
    pub fn is_member(&self) -> bool {
        self.member
    }

    pub fn insert(&mut self, path: &[Element]) {
        match path.split_first() {
            None => self.member = true,
            // Look up before `entry`: the element is cloned only when the child is new
            // (a create inserts every path, each sharing its prefixes with many others).
            Some((first, rest)) => match self.children.get_mut(first) {
                Some(c) => c.insert(rest),
                None => self.children.entry(first.clone()).or_default().insert(rest),
            },
        }
    }

    pub fn has(&self, path: &[Element]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((first, rest)) => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    /// The subtree below one element.
    pub fn child(&self, e: &str) -> Option<&Set> {
        self.children.get(e)
    }

    /// Adds every member of `other`.
    pub fn union_with(&mut self, other: &Set) {
        self.member |= other.member;
        for (e, c) in &other.children {
            self.children.entry(e.clone()).or_default().union_with(c);
        }
    }

    pub fn union(&self, other: &Set) -> Set {
        let mut s = self.clone();
        s.union_with(other);
        s
    }

    /// Members of `self` that are not members of `other` (exact paths, as `Set.Difference`).
    pub fn difference(&self, other: &Set) -> Set {
        let mut out = Set {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (e, c) in &self.children {
            let d = match other.children.get(e) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(e.clone(), d);
            }
        }
        out
    }

    /// Members of both.
    pub fn intersection(&self, other: &Set) -> Set {
        let mut out = Set {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (e, c) in &self.children {
            if let Some(o) = other.children.get(e) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(e.clone(), i);
                }
            }
        }
        out
    }

    /// Members of `self` not at or below any member of `other` (`Set.RecursiveDifference`).
    pub fn recursive_difference(&self, other: &Set) -> Set {
        if other.member {
            return Set::new();
        }
        let mut out = Set {
            member: self.member,
            children: BTreeMap::new(),
        };
        for (e, c) in &self.children {
            let d = match other.children.get(e) {
                Some(o) => c.recursive_difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(e.clone(), d);
            }
        }
        out
    }

    /// Every member path, depth first in element order.
    pub fn paths(&self) -> Vec<Vec<Element>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<Element>, out: &mut Vec<Vec<Element>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (e, c) in &self.children {
            prefix.push(e.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    /// The `fieldsV1` JSON of the set.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (e, c) in &self.children {
            m.insert(e.clone(), c.to_fields_v1());
        }
        Value::Object(m)
    }

    /// Parses `fieldsV1` (the root itself is never a member).
    pub fn from_fields_v1(v: &Value) -> Result<Set, String> {
        let mut s = Self::parse_node(v)?;
        s.member = false;
        Ok(s)
    }

    fn parse_node(v: &Value) -> Result<Set, String> {
        let m = v
            .as_object()
            .ok_or_else(|| format!("expected an object, got {v}"))?;
        let mut s = Set {
            member: m.is_empty(),
            children: BTreeMap::new(),
        };
        for (k, c) in m {
            if k == "." {
                s.member = true;
                continue;
            }
            check_element(k)?;
            s.children.insert(k.clone(), Self::parse_node(c)?);
        }
        Ok(s)
    }
}

/// Validates one `fieldsV1` element (`f:`, `k:` with a JSON object, `v:` with JSON, `i:` int).
fn check_element(e: &str) -> Result<(), String> {
    let bad = || format!("invalid path element {e:?}");
    let (kind, rest) = e.split_once(':').ok_or_else(bad)?;
    match kind {
        "f" => Ok(()),
        "k" => match serde_json::from_str::<Value>(rest) {
            Ok(Value::Object(_)) => Ok(()),
            _ => Err(bad()),
        },
        "v" => serde_json::from_str::<Value>(rest)
            .map(|_| ())
            .map_err(|_| bad()),
        "i" => rest.parse::<i64>().map(|_| ()).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// A path as structured-merge-diff prints it: `.spec.containers[name="app"].image`,
/// `.metadata.finalizers[="x"]`, `.items[0]`.
pub fn path_string(path: &[Element]) -> String {
    let mut out = String::new();
    for e in path {
        match e.split_once(':') {
            Some(("f", name)) => {
                out.push('.');
                out.push_str(name);
            }
            Some(("k", json)) => {
                let fields: Vec<String> = match serde_json::from_str::<Value>(json) {
                    Ok(Value::Object(m)) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    _ => vec![json.to_string()],
                };
                out.push_str(&format!("[{}]", fields.join(",")));
            }
            Some(("v", json)) => out.push_str(&format!("[={json}]")),
            Some(("i", n)) => out.push_str(&format!("[{n}]")),
            _ => out.push_str(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &[&str]) -> Vec<Element> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn fields_v1_round_trip_and_dot_members() {
        let v = json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                       "f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}}},
                                  "f:replicas": {}}});
        let s = Set::from_fields_v1(&v).unwrap();
        assert!(s.has(&p(&["f:metadata", "f:labels"])));
        assert!(!s.has(&p(&["f:metadata"])));
        assert!(s.has(&p(&["f:spec", "f:replicas"])));
        assert!(s.has(&p(&["f:spec", "f:containers", "k:{\"name\":\"a\"}"])));
        assert_eq!(s.to_fields_v1(), v);
        assert!(Set::from_fields_v1(&json!({"x:bad": {}})).is_err());
        assert!(Set::from_fields_v1(&json!({"k:notjson": {}})).is_err());
        assert!(Set::from_fields_v1(&json!([])).is_err());
    }

    #[test]
    fn set_algebra() {
        let a = Set::from_paths([
            p(&["f:a"]).as_slice(),
            p(&["f:b", "f:c"]).as_slice(),
            p(&["f:b", "f:d"]).as_slice(),
        ]);
        let b = Set::from_paths([p(&["f:b", "f:c"]).as_slice(), p(&["f:x"]).as_slice()]);
        assert_eq!(
            a.difference(&b).paths(),
            vec![p(&["f:a"]), p(&["f:b", "f:d"])]
        );
        assert_eq!(a.intersection(&b).paths(), vec![p(&["f:b", "f:c"])]);
        assert_eq!(a.union(&b).paths().len(), 4);
        let top = Set::from_paths([p(&["f:b"]).as_slice()]);
        assert_eq!(a.recursive_difference(&top).paths(), vec![p(&["f:a"])]);
        assert_eq!(a.difference(&top), a, "difference is exact, not recursive");
        assert!(a.difference(&a).is_empty());
    }

    #[test]
    fn paths_print_like_upstream() {
        assert_eq!(path_string(&p(&["f:spec", "f:replicas"])), ".spec.replicas");
        assert_eq!(
            path_string(&p(&[
                "f:spec",
                "k:{\"containerPort\":80,\"protocol\":\"TCP\"}",
                "f:name"
            ])),
            ".spec[containerPort=80,protocol=\"TCP\"].name"
        );
        assert_eq!(
            path_string(&p(&["f:metadata", "f:finalizers", "v:\"x\""])),
            ".metadata.finalizers[=\"x\"]"
        );
    }
}
