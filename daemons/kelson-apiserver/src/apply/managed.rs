//! `metadata.managedFields`: who owns which fields, and how a write changes that.
//!
//! Entries are keyed as upstream's manager identifiers: manager, operation, subresource, and
//! for `Update` entries the apiVersion (an applier keeps one entry whatever version it uses).
//! [`Managers::update`] is upstream's `managedFieldsUpdater` + `Updater.Update`: the request's
//! changes (added and modified fields) go to the writer's `Update` entry and are taken from
//! everyone else; removed fields leave every entry; the writer's time moves only when it
//! changed something. [`Managers::apply`] is `Updater.Apply`: the applier's entry becomes
//! exactly the applied configuration's fields, fields it applied last time and no longer
//! applies are pruned unless someone else owns them, and a change to a field another manager
//! owns is a conflict unless forced.

use serde_json::{json, Value};

use super::fieldset::{self, Element, Set};
use super::typed::{self, Ty};

pub const APPLY: &str = "Apply";
pub const UPDATE: &str = "Update";

/// One `ManagedFieldsEntry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub set: Set,
}

impl Entry {
    fn same_identity(&self, manager: &str, op: &str, api_version: &str, sub: &str) -> bool {
        self.manager == manager
            && self.operation == op
            && self.subresource == sub
            && (op == APPLY || self.api_version == api_version)
    }

    /// How a conflict names this entry: `"m"`, `"m" with subresource "status"`, and for
    /// updaters ` using apps/v1` (upstream's `printManager` of an identifier, which has no time).
    pub fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == UPDATE {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// Why request-supplied managedFields are unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not decodable (wrong fieldsType, malformed fieldsV1): upstream falls back to the live
    /// object's entries.
    Undecodable(String),
    /// Decodable but invalid: upstream's ObjectMeta validation rejects it (422).
    Invalid {
        index: usize,
        field: &'static str,
        value: String,
        message: String,
    },
}

/// The entries of an object, in stored order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Managers(pub Vec<Entry>);

impl Managers {
    /// Decodes a `managedFields` value (`null` or absent: none).
    pub fn decode(v: &Value) -> Result<Managers, DecodeError> {
        let list = match v {
            Value::Null => return Ok(Managers::default()),
            Value::Array(a) => a,
            _ => {
                return Err(DecodeError::Undecodable(
                    "managedFields must be a list".into(),
                ))
            }
        };
        let mut out = Vec::with_capacity(list.len());
        for (index, e) in list.iter().enumerate() {
            let s = |k: &str| {
                e.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let operation = s("operation");
            if operation != APPLY && operation != UPDATE {
                return Err(DecodeError::Invalid {
                    index,
                    field: "operation",
                    value: operation,
                    message: "must be `Apply` or `Update`".into(),
                });
            }
            let manager = s("manager");
            if manager.len() > super::MAX_MANAGER_LEN {
                return Err(DecodeError::Invalid {
                    index,
                    field: "manager",
                    value: String::new(),
                    message: format!("must have at most {} bytes", super::MAX_MANAGER_LEN),
                });
            }
            let ft = s("fieldsType");
            if ft != "FieldsV1" {
                return Err(DecodeError::Undecodable(format!(
                    "field type not supported: {ft}"
                )));
            }
            let set = match e.get("fieldsV1") {
                None | Some(Value::Null) => Set::new(),
                Some(f) => Set::from_fields_v1(f).map_err(DecodeError::Undecodable)?,
            };
            out.push(Entry {
                manager,
                operation,
                api_version: s("apiVersion"),
                time: e.get("time").and_then(Value::as_str).map(String::from),
                subresource: s("subresource"),
                set,
            });
        }
        Ok(Managers(out))
    }

    /// Whether a request's `managedFields` asks for a reset (`[]` or `[{}]`).
    pub fn is_reset(v: &Value) -> bool {
        match v.as_array() {
            Some(a) if a.is_empty() => true,
            Some(a) if a.len() == 1 => a[0].as_object().is_some_and(|o| o.is_empty()),
            _ => false,
        }
    }

    /// The `managedFields` value, sorted as upstream (operation, time, manager, apiVersion,
    /// subresource); `None` when there are no entries.
    pub fn encode(&self) -> Option<Value> {
        let mut entries: Vec<&Entry> = self.0.iter().filter(|e| !e.set.is_empty()).collect();
        if entries.is_empty() {
            return None;
        }
        entries.sort_by(|a, b| {
            (
                &a.operation,
                &a.time,
                &a.manager,
                &a.api_version,
                &a.subresource,
            )
                .cmp(&(
                    &b.operation,
                    &b.time,
                    &b.manager,
                    &b.api_version,
                    &b.subresource,
                ))
        });
        Some(Value::Array(
            entries
                .into_iter()
                .map(|e| {
                    let mut o = json!({
                        "manager": e.manager,
                        "operation": e.operation,
                        "apiVersion": e.api_version,
                        "fieldsType": "FieldsV1",
                        "fieldsV1": e.set.to_fields_v1(),
                    });
                    if let Some(t) = &e.time {
                        o["time"] = json!(t);
                    }
                    if !e.subresource.is_empty() {
                        o["subresource"] = json!(e.subresource);
                    }
                    o
                })
                .collect(),
        ))
    }

    fn position(&self, manager: &str, op: &str, api_version: &str, sub: &str) -> Option<usize> {
        self.0
            .iter()
            .position(|e| e.same_identity(manager, op, api_version, sub))
    }

    fn prune_empty(&mut self) {
        self.0.retain(|e| !e.set.is_empty());
    }

    /// Records an `Update` by `who` that turned `old` into `new` (both without managedFields).
    pub fn update(&mut self, old: &Value, new: &Value, who: &Writer<'_>) {
        let mut cmp = typed::compare(old, new, who.ty);
        cmp.filter(who.ignored);
        if cmp.is_same() {
            return;
        }
        let changed = cmp.added.union(&cmp.modified);
        for e in &mut self.0 {
            // Upstream computes the request as a fresh manager, so the writer's own earlier
            // entry loses removed fields like everyone else's and then gains the changes.
            e.set = e.set.difference(&changed).difference(&cmp.removed);
        }
        match self.position(who.manager, UPDATE, who.api_version, who.subresource) {
            Some(i) if !changed.is_empty() => {
                self.0[i].set.union_with(&changed);
                self.0[i].time = Some(who.now.to_string());
            }
            Some(_) => {}
            None if !changed.is_empty() => self.0.push(Entry {
                manager: who.manager.to_string(),
                operation: UPDATE.into(),
                api_version: who.api_version.to_string(),
                time: Some(who.now.to_string()),
                subresource: who.subresource.to_string(),
                set: changed,
            }),
            None => {}
        }
        self.prune_empty();
    }

    /// Applies `config` to `live` (both without managedFields; `live` is `{}` on create) for
    /// `who`. Returns the new object, or the conflicts (manager description and path) when
    /// `force` is off and another manager owns a field the apply changes.
    pub fn apply(
        &mut self,
        live: &Value,
        config: &Value,
        who: &Writer<'_>,
        force: bool,
    ) -> Result<Value, Vec<Conflict>> {
        let new_set = typed::field_set(config, who.ty).recursive_difference(who.ignored);
        let me = self.position(who.manager, APPLY, who.api_version, who.subresource);
        let last = me.map(|i| self.0[i].set.clone()).unwrap_or_default();
        let mut merged = typed::merge(Some(live), config, who.ty);
        let entry = Entry {
            manager: who.manager.to_string(),
            operation: APPLY.into(),
            api_version: who.api_version.to_string(),
            time: me.and_then(|i| self.0[i].time.clone()),
            subresource: who.subresource.to_string(),
            set: new_set,
        };
        let me = match me {
            Some(i) => {
                self.0[i] = entry;
                i
            }
            None => {
                self.0.push(entry);
                self.0.len() - 1
            }
        };
        // Prune what this applier applied last time and no longer does, unless owned.
        let mut keep = Set::new();
        for e in &self.0 {
            keep.union_with(&e.set);
        }
        let remove = last.difference(&keep);
        if !remove.is_empty() {
            typed::remove_items(&mut merged, who.ty, &remove, Some(&keep));
        }
        typed::drop_nulls(&mut merged);

        let mut cmp = typed::compare(live, &merged, who.ty);
        cmp.filter(who.ignored);
        let changed = cmp.added.union(&cmp.modified);
        let mut conflicts = Vec::new();
        for (i, e) in self.0.iter().enumerate() {
            if i == me {
                continue;
            }
            for p in e.set.intersection(&changed).paths() {
                conflicts.push(Conflict {
                    manager: e.describe(),
                    path: p,
                });
            }
        }
        if !conflicts.is_empty() && !force {
            conflicts.sort();
            return Err(conflicts);
        }
        for (i, e) in self.0.iter_mut().enumerate() {
            if i != me {
                e.set = e.set.difference(&changed).difference(&cmp.removed);
            }
        }
        if !cmp.is_same() || self.0[me].time.is_none() {
            self.0[me].time = Some(who.now.to_string());
        }
        self.prune_empty();
        Ok(merged)
    }
}

/// The writer of a request and what its field sets ignore.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub subresource: &'a str,
    pub ty: Ty,
    /// Paths no manager owns (server-owned metadata, reset fields), recursively.
    pub ignored: &'a Set,
    /// RFC 3339 time of the request.
    pub now: &'a str,
}

/// A field another manager owns that an apply changes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    /// [`Entry::describe`] of the owner.
    pub manager: String,
    pub path: Vec<Element>,
}

impl Conflict {
    pub fn path_string(&self) -> String {
        fieldset::path_string(&self.path)
    }
}

/// Upstream's conflict message: `Apply failed with 1 conflict: conflict with "m" using
/// apps/v1: .spec.replicas`, several grouped by manager.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager,
            c.path_string()
        );
    }
    let mut managers: Vec<&String> = conflicts.iter().map(|c| &c.manager).collect();
    managers.sort();
    managers.dedup();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {m}:"));
        for c in conflicts.iter().filter(|c| &c.manager == m) {
            lines.push(format!("- {}", c.path_string()));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}
