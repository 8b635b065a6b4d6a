//! The runtime's cross-module error type.
//!
//! Each module that touches files or the network has its own error enum (`ConfigError`,
//! `TlsError`); `RuntimeError` covers the process-level pieces (logging, signals, D-Bus,
//! metrics) that a daemon's `main` usually just reports and exits on, so one enum with a
//! `#[source]` per variant is enough there.

use std::io;

/// Errors from logging, signals, D-Bus and the metrics listener.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A log filter directive was rejected; the message says why.
    #[error("invalid log level {directive:?}: {reason}")]
    InvalidLogLevel { directive: String, reason: String },
    /// The subscriber behind a [`crate::logging::LogHandle`] was dropped or never installed.
    #[error("log filter could not be changed: {0}")]
    LogReload(String),
    /// `logging::init` was called when a global subscriber already exists.
    #[error("a global tracing subscriber is already installed")]
    LoggingAlreadyInitialized,
    /// A signal handler could not be registered.
    #[error("cannot listen for {signal}: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: io::Error,
    },
    /// Connecting to the bus, or owning the name on it, failed.
    #[error("D-Bus: cannot {action} on {bus}: {source}")]
    Dbus {
        action: String,
        bus: String,
        #[source]
        source: zbus::Error,
    },
    /// The metrics listener could not be bound.
    #[error("metrics: cannot listen on {addr}: {source}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
}
