//! `meta.k8s.io/v1` `Table` responses (what `kubectl get` asks for) and kubectl-style ages.
//!
//! A [`Table`] is built from column definitions and rows of cells; each row carries the object
//! as [`IncludeObject`] asks (`PartialObjectMetadata` by default, as upstream). Resources
//! without their own printer use [`default_columns`] / [`default_row`], upstream's default
//! table convertor (`Name`, `Created At`). [`human_duration`] is upstream's
//! `duration.HumanDuration`, which kubectl's `AGE` column uses.

use serde_json::{json, Map, Value};
use time::{Duration, OffsetDateTime};

use crate::meta;

/// `metav1.TableColumnDefinition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDefinition {
    pub name: String,
    /// OpenAPI type: `string`, `integer`, `number`, `boolean`, `date`.
    pub type_: String,
    /// OpenAPI format hint, e.g. `name`; may be empty.
    pub format: String,
    pub description: String,
    /// 0 is shown by default; higher only with `-o wide`.
    pub priority: i32,
}

impl ColumnDefinition {
    pub fn new(name: &str, type_: &str, format: &str, description: &str, priority: i32) -> Self {
        ColumnDefinition {
            name: name.into(),
            type_: type_.into(),
            format: format.into(),
            description: description.into(),
            priority,
        }
    }

    /// JSON with every member present (upstream's fields have no `omitempty`).
    pub fn to_value(&self) -> Value {
        json!({
            "name": self.name, "type": self.type_, "format": self.format,
            "description": self.description, "priority": self.priority
        })
    }
}

/// What each row's `object` holds (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    /// Parses the query parameter; empty is the default (`Metadata`), unknown is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "Metadata" => Some(IncludeObject::Metadata),
            "None" => Some(IncludeObject::None),
            "Object" => Some(IncludeObject::Object),
            _ => None,
        }
    }
}

/// The object a row carries under `include`.
pub fn row_object(obj: &Value, include: IncludeObject) -> Option<Value> {
    match include {
        IncludeObject::None => None,
        IncludeObject::Object => Some(obj.clone()),
        IncludeObject::Metadata => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": meta::metadata(obj).cloned().unwrap_or_default(),
        })),
    }
}

/// One `metav1.TableRow`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    pub cells: Vec<Value>,
    pub object: Option<Value>,
}

/// A `metav1.Table` under construction.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub columns: Vec<ColumnDefinition>,
    pub rows: Vec<TableRow>,
    pub resource_version: String,
    pub continue_token: String,
    pub remaining_item_count: Option<i64>,
}

impl Table {
    pub fn new(columns: Vec<ColumnDefinition>) -> Self {
        Table {
            columns,
            ..Default::default()
        }
    }

    /// Adds a row for `obj` with its `object` chosen by `include`.
    pub fn push(&mut self, cells: Vec<Value>, obj: &Value, include: IncludeObject) {
        self.rows.push(TableRow {
            cells,
            object: row_object(obj, include),
        });
    }

    /// The Table JSON. With `no_headers` (`?noHeaders=true` in the table options) the column
    /// definitions are omitted, as upstream does.
    pub fn to_value(&self, no_headers: bool) -> Value {
        let mut md = Map::new();
        if !self.resource_version.is_empty() {
            md.insert("resourceVersion".into(), json!(self.resource_version));
        }
        if !self.continue_token.is_empty() {
            md.insert("continue".into(), json!(self.continue_token));
        }
        if let Some(n) = self.remaining_item_count {
            md.insert("remainingItemCount".into(), json!(n));
        }
        let columns: Vec<Value> = if no_headers {
            Vec::new()
        } else {
            self.columns
                .iter()
                .map(ColumnDefinition::to_value)
                .collect()
        };
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("cells".into(), Value::Array(r.cells.clone()));
                if let Some(o) = &r.object {
                    m.insert("object".into(), o.clone());
                }
                Value::Object(m)
            })
            .collect();
        json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": md,
            "columnDefinitions": columns,
            "rows": rows,
        })
    }
}

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATED_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// Upstream's default table convertor columns: `Name` and `Created At`.
pub fn default_columns() -> Vec<ColumnDefinition> {
    vec![
        ColumnDefinition::new("Name", "string", "name", NAME_DESCRIPTION, 0),
        ColumnDefinition::new("Created At", "date", "", CREATED_DESCRIPTION, 0),
    ]
}

/// The default convertor's cells: the name and the creation time in RFC 3339 UTC.
pub fn default_row(obj: &Value) -> Vec<Value> {
    let created = meta::meta_str(obj, "creationTimestamp")
        .and_then(meta::parse_rfc3339)
        .map(meta::format_rfc3339)
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string());
    vec![json!(meta::name(obj)), json!(created)]
}

/// kubectl's `AGE`: `<unknown>` for a missing or malformed timestamp, else
/// [`human_duration`] of the time since it.
pub fn age(creation_timestamp: &str, now: OffsetDateTime) -> String {
    match meta::parse_rfc3339(creation_timestamp) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".to_string(),
    }
}

/// Upstream's `duration.HumanDuration`: two or three significant figures, e.g. `45s`, `3m20s`,
/// `25m`, `5h10m`, `30h`, `2d5h`, `45d`, `3y20d`, `10y`. Slightly negative durations (clock skew
/// under two seconds) read `0s`; more negative ones `<invalid>`.
pub fn human_duration(d: Duration) -> String {
    let seconds = d.whole_seconds();
    if seconds < -1 {
        return "<invalid>".into();
    } else if seconds < 0 {
        return "0s".into();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = d.whole_minutes();
    if minutes < 10 {
        let s = seconds % 60;
        if s == 0 {
            return format!("{minutes}m");
        }
        return format!("{minutes}m{s}s");
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = d.whole_hours();
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            return format!("{hours}h");
        }
        return format!("{hours}h{m}m");
    } else if hours < 48 {
        return format!("{hours}h");
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            return format!("{}d", hours / 24);
        }
        return format!("{}d{}h", hours / 24, h);
    } else if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            return format!("{}y", hours / 24 / 365);
        }
        return format!("{}y{}d", hours / 24 / 365, dy);
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_duration_matches_upstream_table() {
        let cases: &[(i64, &str)] = &[
            (-2, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (599, "9m59s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 10 * 60, "5h10m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (53 * 3600, "2d5h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (3 * 365 * 86400 + 20 * 86400, "3y20d"),
            (10 * 365 * 86400, "10y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(Duration::seconds(*secs)), *want, "{secs}s");
        }
    }

    #[test]
    fn age_from_timestamps() {
        let now = meta::parse_rfc3339("2025-01-03T05:00:00Z").unwrap();
        assert_eq!(age("2025-01-01T00:00:00Z", now), "2d5h");
        assert_eq!(age("2025-01-03T04:59:55Z", now), "5s");
        assert_eq!(age("", now), "<unknown>");
    }

    #[test]
    fn table_json() {
        let pod = json!({"kind": "Pod", "apiVersion": "v1",
                         "metadata": {"name": "p", "creationTimestamp": "2025-01-01T00:00:00Z"},
                         "spec": {}});
        let mut t = Table::new(default_columns());
        t.resource_version = "42".into();
        t.push(default_row(&pod), &pod, IncludeObject::Metadata);
        let v = t.to_value(false);
        assert_eq!(v["kind"], "Table");
        assert_eq!(v["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(v["metadata"], json!({"resourceVersion": "42"}));
        assert_eq!(v["columnDefinitions"][0]["name"], "Name");
        assert_eq!(v["columnDefinitions"][0]["format"], "name");
        assert_eq!(v["columnDefinitions"][1]["type"], "date");
        assert_eq!(v["columnDefinitions"][1]["format"], "");
        assert_eq!(v["columnDefinitions"][1]["priority"], 0);
        assert_eq!(v["rows"][0]["cells"], json!(["p", "2025-01-01T00:00:00Z"]));
        assert_eq!(
            v["rows"][0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": {"name": "p", "creationTimestamp": "2025-01-01T00:00:00Z"}})
        );
        assert_eq!(t.to_value(true)["columnDefinitions"], json!([]));

        let mut t = Table::new(default_columns());
        t.push(default_row(&pod), &pod, IncludeObject::Object);
        t.push(default_row(&pod), &pod, IncludeObject::None);
        let v = t.to_value(false);
        assert_eq!(v["rows"][0]["object"]["spec"], json!({}));
        assert!(v["rows"][1].get("object").is_none());
        assert_eq!(IncludeObject::parse(""), Some(IncludeObject::Metadata));
        assert_eq!(IncludeObject::parse("bogus"), None);
    }
}
