//! The daemon's D-Bus object: `io.kelson.Daemon1` plus whatever the component adds.
//!
//! Each daemon owns `io.kelson.<Component>1` at `/io/kelson/<Component>1` (system bus by
//! default, `--dbus-address` for a private bus in tests). The common interface exposes the
//! lifecycle ([`DaemonState`]) as properties — `Version`, `State`, `StatusText`, `Health` — and
//! two methods: `Reload()` and `SetLogLevel(s)`. A component adds its own `#[zbus::interface]`
//! objects at the same path with [`DbusServer::interface`] before serving, and emits its own
//! signals through [`DbusHandle::signal_emitter`].
//!
//! [`DaemonState`] is the single place a daemon reports its lifecycle: its setters update the
//! D-Bus properties *and* tell systemd (`READY=1` on running, `STOPPING=1`, `RELOADING=1`,
//! `STATUS=`), so the two views cannot disagree. Setters are synchronous (usable from any
//! code, with or without a bus); when a bus connection exists each change is queued to one
//! emitter task that sends `PropertiesChanged` in order. The emitted value is read at emit
//! time, so a burst of changes may collapse but the last signal always carries the final value.
//!
//! Access control is the bus's job (`systemd/dbus-1/system.d/io.kelson.conf`): reads for
//! everyone, `Reload`/`SetLogLevel` and component methods for root and `kelson-admin`.

use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zbus::object_server::{Interface, SignalEmitter};
use zbus::zvariant::OwnedObjectPath;

use crate::logging::LogHandle;
use crate::notify::Notifier;
use crate::RuntimeError;

/// The daemon's lifecycle state, as shown in the `State` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Starting,
    Running,
    Reloading,
    Stopping,
    Failed,
}

impl Lifecycle {
    /// The property string: `starting`, `running`, `reloading`, `stopping` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Starting => "starting",
            Lifecycle::Running => "running",
            Lifecycle::Reloading => "reloading",
            Lifecycle::Stopping => "stopping",
            Lifecycle::Failed => "failed",
        }
    }
}

/// The reload action a daemon registers; the error string is returned to the D-Bus caller.
pub type ReloadFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Debug, Clone, Copy)]
enum Prop {
    State,
    StatusText,
    Health,
}

/// Shared lifecycle state of a daemon (cheap to clone). See the module docs.
#[derive(Clone)]
pub struct DaemonState {
    inner: Arc<StateInner>,
}

struct StateInner {
    version: String,
    fields: Mutex<Fields>,
    notifier: Notifier,
    changes: Mutex<Option<mpsc::UnboundedSender<Prop>>>,
    reload: Mutex<Option<ReloadFn>>,
    // One reload at a time: a SIGHUP during a D-Bus Reload waits instead of interleaving.
    reload_lock: tokio::sync::Mutex<()>,
}

struct Fields {
    state: Lifecycle,
    status_text: String,
    healthy: bool,
}

impl std::fmt::Debug for DaemonState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields = self.inner.fields.lock();
        f.debug_struct("DaemonState")
            .field("version", &self.inner.version)
            .field("state", &fields.state)
            .field("status_text", &fields.status_text)
            .field("healthy", &fields.healthy)
            .finish()
    }
}

impl DaemonState {
    /// New state ("starting", healthy) notifying the process's systemd (from the environment).
    pub fn new(version: impl Into<String>) -> Self {
        Self::with_notifier(version, crate::notify::notifier())
    }

    /// New state that sends systemd notifications through `notifier`.
    pub fn with_notifier(version: impl Into<String>, notifier: Notifier) -> Self {
        DaemonState {
            inner: Arc::new(StateInner {
                version: version.into(),
                fields: Mutex::new(Fields {
                    state: Lifecycle::Starting,
                    status_text: String::new(),
                    healthy: true,
                }),
                notifier,
                changes: Mutex::new(None),
                reload: Mutex::new(None),
                reload_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn version(&self) -> String {
        self.inner.version.clone()
    }
    pub fn state(&self) -> Lifecycle {
        self.inner.fields.lock().state
    }
    pub fn status_text(&self) -> String {
        self.inner.fields.lock().status_text.clone()
    }
    pub fn is_healthy(&self) -> bool {
        self.inner.fields.lock().healthy
    }
    /// The `Health` property string: `healthy` or `unhealthy`.
    pub fn health(&self) -> &'static str {
        if self.is_healthy() {
            "healthy"
        } else {
            "unhealthy"
        }
    }

    /// The notifier this state reports to systemd through.
    pub fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    /// Change the lifecycle state; tells systemd (`READY=1` when entering `running`,
    /// `STOPPING=1`, `RELOADING=1`) and emits `PropertiesChanged`.
    pub fn set_state(&self, state: Lifecycle) {
        let prev = {
            let mut f = self.inner.fields.lock();
            if f.state == state {
                return;
            }
            std::mem::replace(&mut f.state, state)
        };
        // The journald key events (fixed MESSAGE_IDs, docs/journald.md); a reload's return to
        // Running is not a new "ready".
        match state {
            Lifecycle::Running if prev == Lifecycle::Starting => {
                crate::log_event!(tracing::Level::INFO, crate::events::DAEMON_READY, "ready")
            }
            Lifecycle::Stopping => {
                crate::log_event!(
                    tracing::Level::INFO,
                    crate::events::DAEMON_STOPPING,
                    "stopping"
                )
            }
            _ => {}
        }
        let n = &self.inner.notifier;
        let sent = match state {
            Lifecycle::Running => n.ready(),
            Lifecycle::Stopping => n.stopping(),
            Lifecycle::Reloading => n.reloading(),
            Lifecycle::Starting | Lifecycle::Failed => Ok(()),
        };
        if let Err(err) = sent {
            tracing::warn!(error = %err, state = state.as_str(), "sd_notify failed");
        }
        self.changed(Prop::State);
    }

    /// Set the one-line human status (`STATUS=` for systemd, `StatusText` on D-Bus).
    pub fn set_status(&self, text: impl Into<String>) {
        let text = text.into();
        {
            let mut f = self.inner.fields.lock();
            if f.status_text == text {
                return;
            }
            f.status_text = text.clone();
        }
        if let Err(err) = self.inner.notifier.status(&text) {
            tracing::warn!(error = %err, "sd_notify STATUS failed");
        }
        self.changed(Prop::StatusText);
    }

    /// Set health (the watchdog also consults this via [`DaemonState::spawn_watchdog`]).
    pub fn set_health(&self, healthy: bool) {
        {
            let mut f = self.inner.fields.lock();
            if f.healthy == healthy {
                return;
            }
            f.healthy = healthy;
        }
        self.changed(Prop::Health);
    }

    /// Register what `Reload()` / SIGHUP does (re-read config, certificates, ...).
    pub fn on_reload<F>(&self, f: F)
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        *self.inner.reload.lock() = Some(Arc::new(f));
    }

    /// Run the registered reload: state `reloading` (`RELOADING=1`), the callback, then back to
    /// `running` (`READY=1`) whatever the outcome — a failed reload keeps the old settings.
    pub async fn reload(&self) -> Result<(), String> {
        let Some(f) = self.inner.reload.lock().clone() else {
            return Err("this daemon has no reload action".into());
        };
        let _guard = self.inner.reload_lock.lock().await;
        let before = self.state();
        self.set_state(Lifecycle::Reloading);
        let result = f().await;
        match &result {
            Ok(()) => tracing::info!("reload complete"),
            Err(err) => tracing::warn!(error = %err, "reload failed; keeping previous settings"),
        }
        self.set_state(if before == Lifecycle::Reloading {
            Lifecycle::Running
        } else {
            before
        });
        result
    }

    /// Watchdog pings (if systemd asked for them) while the daemon is healthy and not failed.
    pub fn spawn_watchdog(&self) -> Option<JoinHandle<()>> {
        let me = self.clone();
        self.inner
            .notifier
            .spawn_watchdog(move || me.is_healthy() && me.state() != Lifecycle::Failed)
    }

    fn changed(&self, prop: Prop) {
        if let Some(tx) = &*self.inner.changes.lock() {
            // A closed channel means the bus connection went away; nothing to tell.
            let _ = tx.send(prop);
        }
    }
}

/// The common `io.kelson.Daemon1` interface object.
pub struct Daemon1 {
    state: DaemonState,
    log: LogHandle,
}

#[zbus::interface(name = "io.kelson.Daemon1")]
impl Daemon1 {
    /// The daemon's version string.
    #[zbus(property)]
    fn version(&self) -> String {
        self.state.version()
    }

    /// `starting`, `running`, `reloading`, `stopping` or `failed`.
    #[zbus(property)]
    fn state(&self) -> String {
        self.state.state().as_str().to_string()
    }

    /// One line of human-readable status.
    #[zbus(property)]
    fn status_text(&self) -> String {
        self.state.status_text()
    }

    /// `healthy` or `unhealthy`.
    #[zbus(property)]
    fn health(&self) -> String {
        self.state.health().to_string()
    }

    /// Every certificate file the daemon loaded with its expiry (notAfter, Unix seconds); see
    /// the tls module. Read on demand, so it does not emit PropertiesChanged.
    #[zbus(property(emits_changed_signal = "false"))]
    fn certificate_expiry(&self) -> std::collections::HashMap<String, i64> {
        crate::tls::certificate_expiries().into_iter().collect()
    }

    /// Re-read configuration and certificates, as SIGHUP does.
    async fn reload(&self) -> zbus::fdo::Result<()> {
        self.state.reload().await.map_err(zbus::fdo::Error::Failed)
    }

    /// Change the log filter (`info`, `debug`, `info,kelson_raft=trace`, ...).
    fn set_log_level(&self, level: &str) -> zbus::fdo::Result<()> {
        self.log
            .set_level(level)
            .map_err(|e| zbus::fdo::Error::InvalidArgs(e.to_string()))
    }
}

/// Where and under which name to serve.
#[derive(Debug, Clone)]
pub struct DbusOptions {
    /// Bus address (`unix:path=...`); `None` means the system bus.
    pub address: Option<String>,
    /// Well-known name, e.g. `io.kelson.KV1`.
    pub name: String,
    /// Object path, e.g. `/io/kelson/KV1`.
    pub path: String,
}

impl DbusOptions {
    /// The conventional name and path for `component` (`"KV"` → `io.kelson.KV1` at
    /// `/io/kelson/KV1`).
    pub fn for_component(component: &str, address: Option<String>) -> Self {
        DbusOptions {
            address,
            name: format!("io.kelson.{component}1"),
            path: format!("/io/kelson/{component}1"),
        }
    }

    fn bus(&self) -> String {
        self.address
            .clone()
            .unwrap_or_else(|| "the system bus".into())
    }
}

/// Builder: the common interface plus the component's own, then [`DbusServer::serve`].
pub struct DbusServer {
    builder: zbus::connection::Builder<'static>,
    opts: DbusOptions,
    state: DaemonState,
}

impl std::fmt::Debug for DbusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbusServer")
            .field("opts", &self.opts)
            .finish()
    }
}

impl DbusServer {
    /// Prepare a connection serving `io.kelson.Daemon1` at `opts.path`.
    pub fn new(
        opts: DbusOptions,
        state: DaemonState,
        log: LogHandle,
    ) -> Result<Self, RuntimeError> {
        let err = |action: &str, source| RuntimeError::Dbus {
            action: action.to_string(),
            bus: opts.bus(),
            source,
        };
        let builder = match &opts.address {
            Some(addr) => zbus::connection::Builder::address(addr.as_str())
                .map_err(|e| err("parse the address", e))?,
            None => zbus::connection::Builder::system().map_err(|e| err("find", e))?,
        };
        // The name is requested after connecting (see `serve`), not via `Builder::name`, whose
        // request may end up queued behind another owner without an error.
        zbus::names::WellKnownName::try_from(opts.name.as_str())
            .map_err(|e| err(&format!("use the name {:?}", opts.name), e.into()))?;
        let builder = builder
            .serve_at(
                opts.path.clone(),
                Daemon1 {
                    state: state.clone(),
                    log,
                },
            )
            .map_err(|e| err(&format!("use the object path {:?}", opts.path), e))?;
        Ok(DbusServer {
            builder,
            opts,
            state,
        })
    }

    /// Add a component interface at the same object path.
    pub fn interface<I: Interface>(mut self, iface: I) -> Result<Self, RuntimeError> {
        self.builder = self
            .builder
            .serve_at(self.opts.path.clone(), iface)
            .map_err(|source| RuntimeError::Dbus {
                action: format!("serve {} at {}", I::name(), self.opts.path),
                bus: self.opts.bus(),
                source,
            })?;
        Ok(self)
    }

    /// Connect, export the objects and own the name. Fails clearly if the bus is unreachable
    /// or the name is taken/forbidden; the daemon decides whether to continue without D-Bus.
    pub async fn serve(self) -> Result<DbusHandle, RuntimeError> {
        let DbusServer {
            builder,
            opts,
            state,
        } = self;
        let conn = builder.build().await.map_err(|source| RuntimeError::Dbus {
            action: format!("connect (to serve {})", opts.name),
            bus: opts.bus(),
            source,
        })?;
        // DoNotQueue: if another process owns the name, fail now with NameTaken rather than
        // run as an invisible second instance.
        let reply = conn
            .request_name_with_flags(
                opts.name.as_str(),
                zbus::fdo::RequestNameFlags::DoNotQueue.into(),
            )
            .await
            .map_err(|source| RuntimeError::Dbus {
                action: format!("own the name {}", opts.name),
                bus: opts.bus(),
                source,
            })?;
        tracing::debug!(?reply, name = %opts.name, "bus name requested");
        let path =
            OwnedObjectPath::try_from(opts.path.clone()).map_err(|e| RuntimeError::Dbus {
                action: format!("use the object path {:?}", opts.path),
                bus: opts.bus(),
                source: e.into(),
            })?;
        let (tx, rx) = mpsc::unbounded_channel();
        *state.inner.changes.lock() = Some(tx);
        let task = tokio::spawn(emit_changes(conn.clone(), path.clone(), rx));
        tracing::info!(name = %opts.name, path = %opts.path, bus = %opts.bus(), "serving on D-Bus");
        Ok(DbusHandle {
            conn,
            path,
            state,
            task,
        })
    }
}

/// Serve only the common interface (no component interface).
pub async fn serve(
    opts: DbusOptions,
    state: DaemonState,
    log: LogHandle,
) -> Result<DbusHandle, RuntimeError> {
    DbusServer::new(opts, state, log)?.serve().await
}

async fn emit_changes(
    conn: zbus::Connection,
    path: OwnedObjectPath,
    mut rx: mpsc::UnboundedReceiver<Prop>,
) {
    let iface = match conn.object_server().interface::<_, Daemon1>(&path).await {
        Ok(i) => i,
        Err(err) => {
            tracing::error!(error = %err, "Daemon1 interface missing; no PropertiesChanged");
            return;
        }
    };
    while let Some(prop) = rx.recv().await {
        let obj = iface.get().await;
        let emitter = iface.signal_emitter();
        let sent = match prop {
            Prop::State => obj.state_changed(emitter).await,
            Prop::StatusText => obj.status_text_changed(emitter).await,
            Prop::Health => obj.health_changed(emitter).await,
        };
        if let Err(err) = sent {
            tracing::debug!(error = %err, "PropertiesChanged not sent");
        }
    }
}

/// A served D-Bus object. Dropping it stops property-change signals; the connection closes
/// when the last clone of it is dropped.
pub struct DbusHandle {
    conn: zbus::Connection,
    path: OwnedObjectPath,
    state: DaemonState,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for DbusHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbusHandle")
            .field("path", &self.path.as_str())
            .finish()
    }
}

impl DbusHandle {
    /// The bus connection (to add objects later or make calls).
    pub fn connection(&self) -> &zbus::Connection {
        &self.conn
    }

    /// The object path the interfaces are served at.
    pub fn path(&self) -> &OwnedObjectPath {
        &self.path
    }

    /// An emitter for signals from the daemon's object, for a component interface's
    /// `#[zbus(signal)]` functions.
    pub fn signal_emitter(&self) -> SignalEmitter<'static> {
        // The path was validated in `serve`, so this cannot fail; keep it fallible-free.
        SignalEmitter::from_parts(self.conn.clone(), self.path.clone().into_inner())
    }
}

impl Drop for DbusHandle {
    fn drop(&mut self) {
        *self.state.inner.changes.lock() = None;
        self.task.abort();
    }
}

/// Serves `io.kelson.<component>1` with the common interface plus `iface`, unless `--no-dbus`.
///
/// The system bus is optional for a daemon run by hand (dev boxes, containers): when it is
/// unreachable the daemon logs a warning and runs without D-Bus. An address given explicitly
/// with `--dbus-address` is a promise, so failing to serve there is an error.
pub async fn serve_optional<I: Interface>(
    common: &crate::config::CommonArgs,
    component: &str,
    state: &DaemonState,
    log: &LogHandle,
    iface: I,
) -> Result<Option<DbusHandle>, RuntimeError> {
    if common.no_dbus {
        return Ok(None);
    }
    let opts = DbusOptions::for_component(component, common.dbus_address.clone());
    let name = opts.name.clone();
    let served = async {
        DbusServer::new(opts, state.clone(), log.clone())?
            .interface(iface)?
            .serve()
            .await
    }
    .await;
    match served {
        Ok(h) => Ok(Some(h)),
        Err(e) if common.dbus_address.is_some() => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "D-Bus unavailable; continuing without {name}");
            Ok(None)
        }
    }
}
