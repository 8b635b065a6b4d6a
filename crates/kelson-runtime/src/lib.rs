//! The daemon runtime every Kelson daemon uses from `main`.
//!
//! One crate gives each daemon the same operational surface, so operators learn it once:
//!
//! - [`config`]: `--config FILE.toml` plus clap flags (flags win), unknown keys are errors that
//!   name the key and the file, `--print-config` prints the effective config.
//! - [`logging`]: `tracing` to journald with structured fields under systemd, to stderr
//!   otherwise; the filter can be changed at run time (D-Bus `SetLogLevel`).
//! - [`notify`]: `sd_notify` — `READY=1` only when serving, `STATUS=`, `STOPPING=1`,
//!   `RELOADING=1`, watchdog pings.
//! - [`signals`]: SIGTERM/SIGINT → graceful stop, SIGHUP → reload.
//! - [`dbus`]: `io.kelson.<Component>1` with the common `io.kelson.Daemon1` interface plus the
//!   component's own; [`dbus::DaemonState`] ties lifecycle, D-Bus properties and systemd
//!   notifications together.
//! - [`tls`]: rustls configs from PEM files with certificate hot-reload and a TLS accept
//!   stream for tonic.
//! - [`metrics`]: Prometheus `/metrics` on its own listener.
//! - [`events`]: key events (leader change, node NotReady, certificate expiry, quota alarm,
//!   ready/stopping) with fixed journald `MESSAGE_ID`s, logged with [`log_event!`].
//!
//! # The intended shape of a daemon's `main`
//!
//! ```no_run
//! use clap::Parser;
//! use kelson_runtime::{config, dbus, logging, metrics, signals};
//! use kelson_runtime::dbus::{DaemonState, DbusOptions, DbusServer, Lifecycle};
//!
//! #[derive(Debug, serde::Deserialize, serde::Serialize)]
//! #[serde(deny_unknown_fields, rename_all = "kebab-case")]
//! struct Config {
//!     #[serde(default = "default_listen")]
//!     listen: String,
//! }
//! fn default_listen() -> String { "127.0.0.1:2379".into() }
//!
//! #[derive(Debug, Parser, serde::Serialize)]
//! struct Flags {
//!     #[command(flatten)]
//!     #[serde(skip)]
//!     common: config::CommonArgs,
//!     /// Client listen address.
//!     #[arg(long)]
//!     listen: Option<String>,
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let flags = Flags::parse();
//!     let cfg: Config = config::load(flags.common.config.as_deref(), config::overrides_from(&flags)?)?;
//!     if flags.common.print_config {
//!         print!("{}", config::print_config(&cfg)?);
//!         return Ok(());
//!     }
//!     let log = logging::init("kv", &flags.common.log_level)?;
//!     // Register signal handlers before anything slow, so an early signal is not lost.
//!     let mut shutdown = signals::ShutdownSignals::new()?;
//!     let mut hup = signals::reload_signals()?;
//!
//!     let state = DaemonState::new(env!("CARGO_PKG_VERSION"));
//!     state.on_reload(|| Box::pin(async { /* re-read config / certs */ Ok(()) }));
//!     let _dbus = if flags.common.no_dbus {
//!         None
//!     } else {
//!         let opts = DbusOptions::for_component("KV", flags.common.dbus_address.clone());
//!         // `.interface(MyKvInterface { .. })?` adds the component's own interface.
//!         Some(DbusServer::new(opts, state.clone(), log.clone())?.serve().await?)
//!     };
//!     if let Some(addr) = flags.common.metrics_addr {
//!         metrics::serve(addr, metrics::registry()).await?;
//!     }
//!
//!     // ... start serving (recover the store, bind listeners) ...
//!     state.set_status("serving");
//!     state.set_state(Lifecycle::Running); // READY=1
//!     let _watchdog = state.spawn_watchdog();
//!
//!     loop {
//!         tokio::select! {
//!             sig = shutdown.recv() => { tracing::info!(signal = sig.name(), "stopping"); break; }
//!             Some(()) = hup.recv() => { let _ = state.reload().await; }
//!         }
//!     }
//!     state.set_state(Lifecycle::Stopping); // STOPPING=1, then a bounded drain
//!     Ok(())
//! }
//! ```

pub mod config;
pub mod daemon;
pub mod dbus;
mod error;
pub mod events;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod signals;
pub mod tls;

pub use error::RuntimeError;

/// For [`log_event!`]: the macro names `tracing` through this crate so callers need no import.
#[doc(hidden)]
pub use tracing as __tracing;
