//! Logging: `tracing` to journald under systemd, to stderr otherwise, with a reloadable filter.
//!
//! The subscriber is `Registry + reload(EnvFilter) + one output layer`. The filter sits in a
//! `tracing_subscriber::reload` layer so [`LogHandle::set_level`] (called from D-Bus
//! `SetLogLevel`) can swap it while the daemon runs.
//!
//! Journald is chosen when `JOURNAL_STREAM` names the device:inode of our stderr (what systemd
//! sets when stderr is connected to the journal) — the same test `sd_journal_stream_fd` users
//! do, so a shell started from a unit that redirects stderr does not log natively by accident.
//! Native journald logging keeps structured fields: every event field becomes a journal field
//! with its name upper-cased (`raft_term` → `RAFT_TERM`), and every entry carries
//! `KELSON_COMPONENT=<component>` so `journalctl KELSON_COMPONENT=kv` works. If the journal
//! socket cannot be opened we fall back to stderr rather than losing logs.
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
