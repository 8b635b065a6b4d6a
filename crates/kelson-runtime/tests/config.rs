//! Config loading: file + flags merge, unknown-key errors, print round-trip.

use std::path::Path;

use kelson_runtime::config::{self, ConfigError, Origin};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Cfg {
    name: String,
    #[serde(default = "default_count")]
    snapshot_count: u64,
    #[serde(default)]
    raft: Raft,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raft {
    #[serde(default)]
    tick_ms: u64,
    #[serde(default)]
    peers: Vec<String>,
}

fn default_count() -> u64 {
    10_000
}

#[derive(Debug, Default, Serialize)]
struct Flags {
    name: Option<String>,
    snapshot_count: Option<u64>,
    #[serde(rename = "raft.tick_ms")]
    raft_tick_ms: Option<u64>,
}

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("kv.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn flags_override_file_and_defaults_apply() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "name = \"from-file\"\nsnapshot-count = 5\n[raft]\ntick-ms = 100\npeers = [\"a\"]\n",
    );
    let flags = Flags {
        name: Some("from-flag".into()),
        snapshot_count: None,
        raft_tick_ms: Some(250),
    };
    let over = config::overrides_from(&flags).unwrap();
    let cfg: Cfg = config::load(Some(&file), over).unwrap();
    assert_eq!(cfg.name, "from-flag");
    assert_eq!(
        cfg.snapshot_count, 5,
        "unset flag must not clobber the file"
    );
    assert_eq!(
        cfg.raft.tick_ms, 250,
        "dotted flag overrides a key inside a section"
    );
    assert_eq!(cfg.raft.peers, vec!["a".to_string()], "merge is deep");

    let only_flags: Cfg = config::load(None, config::overrides_from(&flags).unwrap()).unwrap();
    assert_eq!(only_flags.snapshot_count, 10_000);
}

#[test]
fn unknown_key_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "name = \"x\"\nsnaphot-count = 5\n");
    let err = config::load::<Cfg>(Some(&file), Default::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, origin: Origin::File(p), .. }
            if key == "snaphot-count" && p == &file),
        "{err:?}"
    );
    assert!(msg.contains("\"snaphot-count\""), "{msg}");
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(
        msg.contains("\"snapshot-count\""),
        "lists expected keys: {msg}"
    );

    // Nested: the path includes the section.
    let file = write(dir.path(), "name = \"x\"\n[raft]\ntikc-ms = 1\n");
    let err = config::load::<Cfg>(Some(&file), Default::default()).unwrap_err();
    assert!(err.to_string().contains("\"raft.tikc-ms\""), "{err}");
}

#[test]
fn bad_values_and_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "name = \"x\"\nsnapshot-count = \"many\"\n");
    let err = config::load::<Cfg>(Some(&file), Default::default()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { key, .. } if key == "snapshot-count"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );

    // Missing required key.
    let file = write(dir.path(), "snapshot-count = 1\n");
    let err = config::load::<Cfg>(Some(&file), Default::default()).unwrap_err();
    assert!(err.to_string().contains("name"), "{err}");

    // Syntax error and missing file name the file.
    let file = write(dir.path(), "name = \n");
    let err = config::load::<Cfg>(Some(&file), Default::default()).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    let missing = dir.path().join("nope.toml");
    let err = config::load::<Cfg>(Some(&missing), Default::default()).unwrap_err();
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

#[test]
fn print_config_round_trips() {
    let cfg = Cfg {
        name: "kv-1".into(),
        snapshot_count: 42,
        raft: Raft {
            tick_ms: 100,
            peers: vec!["p1".into(), "p2".into()],
        },
    };
    let text = config::print_config(&cfg).unwrap();
    assert!(
        text.contains("snapshot-count = 42"),
        "kebab-case keys: {text}"
    );
    let back: Cfg = config::load_str(&text, Path::new("printed.toml"), Default::default()).unwrap();
    assert_eq!(back, cfg);
}

#[test]
fn common_args_parse() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: config::CommonArgs,
    }
    let cli = Cli::try_parse_from([
        "kv",
        "--config",
        "/etc/kelson/kv.toml",
        "--no-dbus",
        "--metrics-addr",
        "127.0.0.1:9100",
        "--log-level",
        "debug",
    ])
    .unwrap();
    assert_eq!(
        cli.common.config.as_deref(),
        Some(Path::new("/etc/kelson/kv.toml"))
    );
    assert!(cli.common.no_dbus);
    assert!(!cli.common.print_config);
    assert_eq!(cli.common.log_level, "debug");
    assert_eq!(
        cli.common.metrics_addr,
        Some("127.0.0.1:9100".parse().unwrap())
    );
    assert!(Cli::try_parse_from(["kv", "--metrics-addr", "nonsense"]).is_err());
}
