//! Configuration: one TOML file plus command-line flags, flags win.
//!
//! The design is "merge, then deserialize once": the file is parsed into a `toml::Table`, the
//! flags that were actually given are serialized into a second table ([`overrides_from`]) and
//! deep-merged on top, and only the merged table is deserialized into the daemon's config type.
//! That keeps defaults in one place (the config type's `#[serde(default)]`), makes
//! `--print-config` show exactly what the daemon runs with, and lets config types use
//! `#[serde(deny_unknown_fields)]` so a typo is an error instead of a silently ignored key.
//!
//! Errors carry the dotted key path (via `serde_path_to_error`) and where the key came from:
//! the file, the command line, or neither (a missing required key).
//!
//! Key naming: kebab-case in TOML, as in flags. [`overrides_from`] turns `snake_case` field
//! names into `kebab-case` and splits dotted names (`#[serde(rename = "raft.tick-ms")]` on a
//! flag) into nested tables, so a flag can override a key inside a section.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};
use toml::{Table, Value};

/// Flags every Kelson daemon accepts; `#[command(flatten)]` it into the daemon's own parser.
///
/// These are process-level switches, not configuration keys: a daemon's flags struct should
/// mark the flattened field `#[serde(skip)]` so it is not merged into the config table.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct CommonArgs {
    /// Configuration file (TOML). Flags given on the command line override its keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (file + flags + defaults) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Log filter: a level (error, warn, info, debug, trace) or `level,target=level,...`.
    #[arg(
        long,
        value_name = "FILTER",
        default_value = "info",
        env = "KELSON_LOG_LEVEL"
    )]
    pub log_level: String,
    /// D-Bus address to serve on instead of the system bus (tests use a private bus).
    #[arg(long, value_name = "ADDR", env = "KELSON_DBUS_ADDRESS")]
    pub dbus_address: Option<String>,
    /// Do not connect to D-Bus at all.
    #[arg(long)]
    pub no_dbus: bool,
    /// Serve Prometheus metrics on this address (no metrics listener when unset).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Where a configuration value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The named configuration file.
    File(PathBuf),
    /// A command-line flag.
    Flags,
    /// Neither: the key is missing everywhere (or the whole document is at fault).
    Defaults,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Flags => f.write_str("command-line flags"),
            Origin::Defaults => f.write_str("the configuration"),
        }
    }
}

/// Errors from loading, merging or printing configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A key no config type field matches (a typo, usually).
    #[error("unknown key {key:?} in {origin} (expected one of {expected})")]
    UnknownKey {
        /// Dotted path of the key, e.g. `raft.snaphot-count`.
        key: String,
        origin: Origin,
        /// The accepted keys at that level, quoted and comma-separated.
        expected: String,
    },
    /// A key whose value has the wrong type or is out of range, or a missing required key.
    #[error("invalid value for key {key:?} in {origin}: {message}")]
    Invalid {
        key: String,
        origin: Origin,
        message: String,
    },
    /// The flags or config could not be represented as TOML (a programming error in the type).
    #[error("cannot serialize configuration: {0}")]
    Serialize(#[from] toml::ser::Error),
}

/// Load configuration: parse `file` (if any), deep-merge `overrides` on top, deserialize.
///
/// `T` should use `#[serde(deny_unknown_fields, rename_all = "kebab-case")]` and
/// `#[serde(default)]` for keys that have defaults.
pub fn load<T: DeserializeOwned>(file: Option<&Path>, overrides: Table) -> Result<T, ConfigError> {
    let base = match file {
        Some(path) => read_file(path)?,
        None => Table::new(),
    };
    from_tables(base, file, overrides)
}

/// Like [`load`] but with the file's text given directly (for tests and for embedding defaults).
/// `name` is used in error messages as the file name.
pub fn load_str<T: DeserializeOwned>(
    text: &str,
    name: &Path,
    overrides: Table,
) -> Result<T, ConfigError> {
    let base: Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: name.to_path_buf(),
        source: Box::new(e),
    })?;
    from_tables(base, Some(name), overrides)
}

fn read_file(path: &Path) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

fn from_tables<T: DeserializeOwned>(
    base: Table,
    file: Option<&Path>,
    overrides: Table,
) -> Result<T, ConfigError> {
    let mut merged = base.clone();
    merge(&mut merged, overrides.clone());
    serde_path_to_error::deserialize(Value::Table(merged)).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        let origin = |key: &str| {
            if lookup(&overrides, key) {
                Origin::Flags
            } else if lookup(&base, key) {
                file.map(|f| Origin::File(f.to_path_buf()))
                    .unwrap_or(Origin::Flags)
            } else {
                Origin::Defaults
            }
        };
        if let Some((field, expected)) = parse_unknown_field(&message) {
            // serde_path_to_error's path normally ends at the unknown key already; append it
            // only when it stops at the enclosing table.
            let key = if path == "." || path.is_empty() {
                field
            } else if path == field || path.ends_with(&format!(".{field}")) {
                path
            } else {
                format!("{path}.{field}")
            };
            ConfigError::UnknownKey {
                origin: origin(&key),
                key,
                expected,
            }
        } else {
            let key = if path == "." { String::new() } else { path };
            ConfigError::Invalid {
                origin: origin(&key),
                key,
                message,
            }
        }
    })
}

/// Picks the field name and the expected list out of serde's `deny_unknown_fields` message:
/// "unknown field `x`, expected one of `a`, `b`" (or "expected `a`", or "there are no fields").
fn parse_unknown_field(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .trim()
        .trim_start_matches(", ")
        .trim_start_matches("expected one of ")
        .trim_start_matches("expected ")
        .replace('`', "\"");
    Some((field.to_string(), expected))
}

/// Whether the dotted `key` exists in `table`.
fn lookup(table: &Table, key: &str) -> bool {
    if key.is_empty() {
        return false;
    }
    let mut cur = table;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        match cur.get(part) {
            Some(Value::Table(t)) if parts.peek().is_some() => cur = t,
            Some(_) => return parts.peek().is_none(),
            None => return false,
        }
    }
    false
}

/// Deep-merge `over` into `base`: tables merge key by key, anything else replaces.
pub fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Serialize a flags struct (fields `Option<_>`, `None` skipped) into an override table.
///
/// Field names become kebab-case; a name containing dots (`#[serde(rename = "raft.tick-ms")]`)
/// becomes a nested key so one flag can override a key inside a section.
pub fn overrides_from<S: Serialize>(flags: &S) -> Result<Table, ConfigError> {
    let flat = Table::try_from(flags)?;
    let mut out = Table::new();
    for (k, v) in flat {
        insert_dotted(&mut out, &k, kebab_value(v));
    }
    Ok(out)
}

fn insert_dotted(out: &mut Table, key: &str, value: Value) {
    let key = key.replace('_', "-");
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut cur = out;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        match entry {
            Value::Table(t) => cur = t,
            _ => return,
        }
    }
    let mut single = Table::new();
    single.insert(last.to_string(), value);
    merge(cur, single);
}

fn kebab_value(v: Value) -> Value {
    match v {
        Value::Table(t) => Value::Table(
            t.into_iter()
                .map(|(k, v)| (k.replace('_', "-"), kebab_value(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The effective configuration as TOML, for `--print-config`.
pub fn print_config<T: Serialize>(cfg: &T) -> Result<String, ConfigError> {
    Ok(toml::to_string_pretty(cfg)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_message_is_parsed() {
        let (f, e) =
            parse_unknown_field("unknown field `snaphot-count`, expected one of `a`, `b`").unwrap();
        assert_eq!(f, "snaphot-count");
        assert_eq!(e, "\"a\", \"b\"");
        assert!(parse_unknown_field("invalid type: string").is_none());
    }

    #[test]
    fn merge_is_deep() {
        let mut a: Table = toml::from_str("x = 1\n[s]\na = 1\nb = 2").unwrap();
        let b: Table = toml::from_str("[s]\nb = 3").unwrap();
        merge(&mut a, b);
        assert_eq!(a["s"]["a"].as_integer(), Some(1));
        assert_eq!(a["s"]["b"].as_integer(), Some(3));
        assert_eq!(a["x"].as_integer(), Some(1));
    }

    #[test]
    fn dotted_lookup() {
        let t: Table = toml::from_str("[raft]\ntick = 1").unwrap();
        assert!(lookup(&t, "raft.tick"));
        assert!(!lookup(&t, "raft.other"));
        assert!(!lookup(&t, "raft.tick.deeper"));
        assert!(lookup(&t, "raft"));
    }
}
