//! Logging: `tracing` to journald under systemd, to stderr otherwise, with a reloadable filter.
//!
//! The subscriber is `Registry + reload(EnvFilter) + one output layer`. The filter sits in a
//! `tracing_subscriber::reload` layer so [`LogHandle::set_level`] (called from D-Bus
//! `SetLogLevel`) can swap it while the daemon runs.
//!
//! Journald is chosen when `JOURNAL_STREAM` names the device:inode of our stderr (what systemd
//! sets when stderr is connected to the journal) — the same test `sd_journal_stream_fd` users
//! do, so a shell started from a unit that redirects stderr does not log natively by accident.
//! Native journald logging keeps structured fields, and the mapping from `tracing` fields to
//! journal fields is fixed (tracing-journald's sanitizer with its `F_` prefix turned off):
//!
//! - a field's name is upper-cased, `.` becomes `_`, leading `_` and any character other than
//!   ASCII letters, digits and `_` are dropped: `raft_term` → `RAFT_TERM`, `node` → `NODE`,
//!   `pod` → `POD`, `namespace` → `NAMESPACE`, `node.name` → `NODE_NAME`, `"pod-ip"` →
//!   `PODIP`. Dropping the leading `_` means a log line cannot forge journald's trusted fields
//!   (`_PID`, `_UID`).
//! - the message is `MESSAGE`; `message_id` (set by [`crate::log_event!`]) is `MESSAGE_ID`.
//! - span fields are sent the same way, before the event's own fields.
//! - every entry carries `KELSON_COMPONENT=<component>` (so `journalctl KELSON_COMPONENT=kv`
//!   works), `SYSLOG_IDENTIFIER=kelson-<component>`, `TARGET` (the Rust module), `CODE_FILE`,
//!   `CODE_LINE`.
//! - `PRIORITY` follows syslog's convention (what `journalctl -p` filters on): ERROR → 3, WARN
//!   → 4, INFO → 6, DEBUG and TRACE → 7. tracing-journald's own default maps INFO to 5
//!   (notice), which would make every routine line look notable in `journalctl -p notice`.
//!
//! The tests render real journal datagrams (see `tests::capture`) and check this mapping. If
//! the journal socket cannot be opened we fall back to stderr rather than losing logs.
//!
//! Filter syntax is `EnvFilter`'s, made stricter in one way: a bare word must be a level.
//! `EnvFilter` would read `SetLogLevel("verbose")` as "trace for target `verbose`" and accept
//! it silently; an operator who typed that wants an error.

use std::sync::Arc;

use tracing_subscriber::{
    filter::EnvFilter, layer::SubscriberExt, reload, util::SubscriberInitExt, Layer, Registry,
};

use crate::RuntimeError;

/// Where logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// Journald when `JOURNAL_STREAM` matches stderr, else stderr.
    Auto,
    /// Human-readable text to stderr.
    Stderr,
    /// Native journald (falls back to stderr if the journal socket is unreachable).
    Journald,
}

type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// Changes the log filter at run time. Cheap to clone.
#[derive(Clone)]
pub struct LogHandle {
    inner: Arc<Inner>,
}

struct Inner {
    handle: FilterHandle,
    current: parking_lot::Mutex<String>,
    journald: bool,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("level", &*self.inner.current.lock())
            .field("journald", &self.inner.journald)
            .finish()
    }
}

impl LogHandle {
    /// Replace the filter with `directive` (EnvFilter syntax; bare words must be levels).
    pub fn set_level(&self, directive: &str) -> Result<(), RuntimeError> {
        let filter = parse_filter(directive)?;
        self.inner
            .handle
            .reload(filter)
            .map_err(|e| RuntimeError::LogReload(e.to_string()))?;
        *self.inner.current.lock() = directive.trim().to_string();
        tracing::info!(filter = directive, "log filter changed");
        Ok(())
    }

    /// The directive currently in force.
    pub fn level(&self) -> String {
        self.inner.current.lock().clone()
    }

    /// Whether logs go to the journal natively.
    pub fn is_journald(&self) -> bool {
        self.inner.journald
    }
}

/// Validate and build an `EnvFilter` from `directive`.
pub fn parse_filter(directive: &str) -> Result<EnvFilter, RuntimeError> {
    let directive = directive.trim();
    let invalid = |reason: String| RuntimeError::InvalidLogLevel {
        directive: directive.to_string(),
        reason,
    };
    if directive.is_empty() {
        return Err(invalid("empty filter".into()));
    }
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for part in directive.split(',').map(str::trim) {
        if !part.contains('=')
            && !part.contains('[')
            && !LEVELS.contains(&part.to_ascii_lowercase().as_str())
        {
            return Err(invalid(format!(
                "{part:?} is not a level (expected one of {}, or target=level)",
                LEVELS.join(", ")
            )));
        }
    }
    EnvFilter::builder()
        .parse(directive)
        .map_err(|e| invalid(e.to_string()))
}

/// Build the subscriber and its handle without installing it (tests, or daemons that compose
/// their own subscriber). The subscriber must be kept alive for the handle to work.
pub fn build(
    component: &str,
    level: &str,
    output: LogOutput,
) -> Result<(Box<dyn tracing::Subscriber + Send + Sync>, LogHandle), RuntimeError> {
    let filter = parse_filter(level)?;
    let (filter_layer, handle) = reload::Layer::new(filter);
    let want_journald = match output {
        LogOutput::Auto => journal_stream_is_stderr(),
        LogOutput::Stderr => false,
        LogOutput::Journald => true,
    };
    let journald = if want_journald {
        match tracing_journald::layer() {
            Ok(layer) => Some(
                layer
                    .with_field_prefix(None)
                    .with_priority_mappings(syslog_priorities())
                    .with_syslog_identifier(format!("kelson-{component}"))
                    .with_custom_fields([("KELSON_COMPONENT", component)]),
            ),
            Err(err) => {
                eprintln!("kelson: journald unavailable ({err}); logging to stderr");
                None
            }
        }
    } else {
        None
    };
    let is_journald = journald.is_some();
    let output_layer: Box<dyn Layer<_> + Send + Sync> = match journald {
        Some(j) => Box::new(j),
        None => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(true),
        ),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter_layer)
        .with(output_layer);
    let handle = LogHandle {
        inner: Arc::new(Inner {
            handle,
            current: parking_lot::Mutex::new(level.trim().to_string()),
            journald: is_journald,
        }),
    };
    Ok((Box::new(subscriber), handle))
}

/// syslog's level → priority convention (see the module docs for why not the crate default).
fn syslog_priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Install the global subscriber for `component` at `level`. Call once, first thing in main.
pub fn init(component: &str, level: &str) -> Result<LogHandle, RuntimeError> {
    let (subscriber, handle) = build(component, level, LogOutput::Auto)?;
    subscriber
        .try_init()
        .map_err(|_| RuntimeError::LoggingAlreadyInitialized)?;
    Ok(handle)
}

/// `JOURNAL_STREAM=dev:ino` names the stream systemd connected stderr to; only trust it when
/// stderr still is that stream.
fn journal_stream_is_stderr() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::net::UnixDatagram;

    /// One journal entry as journald receives it: field name → values (a field may repeat).
    type Entry = BTreeMap<String, Vec<String>>;

    /// Parse one datagram of journald's native protocol: `NAME=value\n`, or `NAME\n` + a
    /// little-endian u64 length + the value + `\n` (what tracing-journald always writes).
    fn parse(mut d: &[u8]) -> Entry {
        let mut e = Entry::new();
        while !d.is_empty() {
            let nl = d.iter().position(|&b| b == b'\n').expect("field name line");
            let line = &d[..nl];
            d = &d[nl + 1..];
            let (name, value) = match line.iter().position(|&b| b == b'=') {
                Some(eq) => (&line[..eq], line[eq + 1..].to_vec()),
                None => {
                    let len = u64::from_le_bytes(d[..8].try_into().unwrap()) as usize;
                    let value = d[8..8 + len].to_vec();
                    assert_eq!(d[8 + len], b'\n', "binary field not newline-terminated");
                    d = &d[9 + len..];
                    (line, value)
                }
            };
            e.entry(String::from_utf8(name.to_vec()).unwrap())
                .or_default()
                .push(String::from_utf8(value).unwrap());
        }
        e
    }

    /// Runs `f` under the journald subscriber [`build`] makes for `component` and returns the
    /// entries it sent. tracing-journald has the socket path `/run/systemd/journal/socket`
    /// built in (no option to change it), so this thread gets a private mount namespace with a
    /// tmpfs on /run and binds that socket itself: the host's /run is untouched, and tests in
    /// other threads or processes never see it. The path is resolved at each send, in the
    /// sending thread's namespace, so everything happens on this thread. Needs root.
    fn capture(component: &str, f: impl FnOnce() + Send + 'static) -> Vec<Entry> {
        assert!(
            nix::unistd::geteuid().is_root(),
            "journald capture needs root (a private mount namespace for /run/systemd/journal)"
        );
        let component = component.to_string();
        std::thread::spawn(move || {
            use nix::mount::{mount, MsFlags};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .expect("make / private in the new mount namespace");
            mount(
                Some("tmpfs"),
                "/run",
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=0755"),
            )
            .expect("tmpfs on /run");
            std::fs::create_dir_all("/run/systemd/journal").unwrap();
            let sock = UnixDatagram::bind("/run/systemd/journal/socket").unwrap();
            sock.set_nonblocking(true).unwrap();
            let (subscriber, handle) = build(&component, "trace", LogOutput::Journald).unwrap();
            assert!(handle.is_journald(), "journald layer fell back to stderr");
            tracing::subscriber::with_default(subscriber, f);
            let mut entries = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            for _ in 0..10_000 {
                match sock.recv(&mut buf) {
                    // The layer's connectivity probe is an empty datagram.
                    Ok(0) => continue,
                    Ok(n) => entries.push(parse(&buf[..n])),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("recv: {e}"),
                }
            }
            entries
        })
        .join()
        .expect("capture thread panicked")
    }

    fn one<'a>(e: &'a Entry, field: &str) -> &'a str {
        match e.get(field).map(Vec::as_slice) {
            Some([v]) => v,
            other => panic!("{field}: want exactly one value, got {other:?} in {e:#?}"),
        }
    }

    fn by_message<'a>(entries: &'a [Entry], msg: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.get("MESSAGE").is_some_and(|m| m.iter().any(|v| v == msg)))
            .unwrap_or_else(|| panic!("no entry with MESSAGE={msg:?} in {entries:#?}"))
    }

    #[test]
    fn journald_fields_priorities_and_message_ids() {
        let entries = capture("kv", || {
            crate::log_event!(
                tracing::Level::WARN,
                crate::events::KV_LEADER_CHANGED,
                raft_term = 7u64,
                raft_leader = "ab12",
                "leader changed"
            );
            tracing::info!(
                node = "n1",
                pod = "web-0",
                namespace = "default",
                "pod started"
            );
            tracing::debug!(
                node.name = "n2",
                _pid = 1,
                "pod-ip" = "z",
                "dotted and forged"
            );
            tracing::error!("broken");
            tracing::trace!("noise");
            let span = tracing::info_span!("reconcile", namespace = "kube-system");
            span.in_scope(|| tracing::info!(pod = "dns-0", "in span"));
        });
        assert_eq!(entries.len(), 6, "{entries:#?}");
        for e in &entries {
            assert_eq!(one(e, "KELSON_COMPONENT"), "kv");
            assert_eq!(one(e, "SYSLOG_IDENTIFIER"), "kelson-kv");
            assert!(
                e.contains_key("CODE_FILE") && e.contains_key("CODE_LINE"),
                "{e:#?}"
            );
        }

        let leader = by_message(&entries, "leader changed");
        assert_eq!(
            one(leader, "MESSAGE_ID"),
            crate::events::KV_LEADER_CHANGED.id
        );
        assert_eq!(one(leader, "KELSON_EVENT"), "kv-leader-changed");
        assert_eq!(one(leader, "RAFT_TERM"), "7");
        assert_eq!(one(leader, "RAFT_LEADER"), "ab12");
        assert_eq!(one(leader, "PRIORITY"), "4");

        let pod = by_message(&entries, "pod started");
        assert_eq!(one(pod, "NODE"), "n1");
        assert_eq!(one(pod, "POD"), "web-0");
        assert_eq!(one(pod, "NAMESPACE"), "default");
        assert_eq!(one(pod, "PRIORITY"), "6", "INFO is syslog info (6)");
        assert!(
            !pod.contains_key("MESSAGE_ID"),
            "only key events carry MESSAGE_ID"
        );

        let dotted = by_message(&entries, "dotted and forged");
        assert_eq!(one(dotted, "NODE_NAME"), "n2");
        assert_eq!(
            one(dotted, "PODIP"),
            "z",
            "characters other than [A-Za-z0-9_] are dropped"
        );
        assert_eq!(one(dotted, "PID"), "1", "a leading _ is dropped");
        assert!(
            !dotted.contains_key("_PID"),
            "a log line must not forge _PID"
        );
        assert_eq!(one(dotted, "PRIORITY"), "7");

        assert_eq!(one(by_message(&entries, "broken"), "PRIORITY"), "3");
        assert_eq!(one(by_message(&entries, "noise"), "PRIORITY"), "7");

        let in_span = by_message(&entries, "in span");
        assert_eq!(
            one(in_span, "NAMESPACE"),
            "kube-system",
            "span fields are sent too"
        );
        assert_eq!(one(in_span, "POD"), "dns-0");
        assert_eq!(one(in_span, "SPAN_NAME"), "reconcile");
    }

    #[test]
    fn filters_validate() {
        assert!(parse_filter("info").is_ok());
        assert!(parse_filter("WARN").is_ok());
        assert!(parse_filter("info,kelson_kv=debug").is_ok());
        assert!(parse_filter("verbose").is_err());
        assert!(parse_filter("").is_err());
        assert!(parse_filter("info,foo=loud").is_err());
    }
}
