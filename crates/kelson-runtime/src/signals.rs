//! Unix signals a daemon reacts to: SIGTERM/SIGINT end it, SIGHUP reloads it.
//!
//! Handlers are tokio's (`signal-hook` underneath), registered when these functions are first
//! called; register them early in `main` so a signal that arrives during start-up is not lost
//! to the default action (which for SIGHUP would kill the process).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::RuntimeError;

/// Which shutdown signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Terminate,
    Interrupt,
}

impl Shutdown {
    /// The signal's name (`SIGTERM` / `SIGINT`).
    pub fn name(self) -> &'static str {
        match self {
            Shutdown::Terminate => "SIGTERM",
            Shutdown::Interrupt => "SIGINT",
        }
    }
}

/// Listens for SIGTERM and SIGINT; create it early, await [`ShutdownSignals::recv`] later.
#[derive(Debug)]
pub struct ShutdownSignals {
    term: Signal,
    int: Signal,
}

impl ShutdownSignals {
    /// Register the handlers now.
    pub fn new() -> Result<Self, RuntimeError> {
        Ok(ShutdownSignals {
            term: register(SignalKind::terminate(), "SIGTERM")?,
            int: register(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// Wait for the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> Shutdown {
        tokio::select! {
            _ = self.term.recv() => Shutdown::Terminate,
            _ = self.int.recv() => Shutdown::Interrupt,
        }
    }
}

/// Wait for SIGTERM or SIGINT (registering the handlers on the first call).
pub async fn shutdown_signal() -> Result<Shutdown, RuntimeError> {
    Ok(ShutdownSignals::new()?.recv().await)
}

/// A stream of SIGHUPs (reload requests). Several signals that arrive before the stream is
/// polled coalesce into one item, which is what a reload wants.
#[derive(Debug)]
pub struct ReloadSignals {
    hup: Signal,
}

impl ReloadSignals {
    /// Wait for the next SIGHUP. Returns `None` only if the signal driver is gone.
    pub async fn recv(&mut self) -> Option<()> {
        self.hup.recv().await
    }
}

impl futures::Stream for ReloadSignals {
    type Item = ();
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        self.hup.poll_recv(cx)
    }
}

/// Register the SIGHUP handler and return the stream of reload requests.
pub fn reload_signals() -> Result<ReloadSignals, RuntimeError> {
    Ok(ReloadSignals {
        hup: register(SignalKind::hangup(), "SIGHUP")?,
    })
}

fn register(kind: SignalKind, name: &'static str) -> Result<Signal, RuntimeError> {
    signal(kind).map_err(|source| RuntimeError::Signal {
        signal: name,
        source,
    })
}

/// Runs the daemon's reload on every SIGHUP (what `systemctl reload` sends through the units'
/// `ExecReload=`), for daemons whose main loop has no other use for the signal. Without a
/// handler SIGHUP's default action would terminate the process — a clean exit systemd would
/// not restart.
pub fn reload_on_sighup(
    state: &crate::dbus::DaemonState,
) -> Result<tokio::task::JoinHandle<()>, RuntimeError> {
    let mut hup = reload_signals()?;
    let state = state.clone();
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if let Err(e) = state.reload().await {
                tracing::warn!(error = %e, "reload failed");
            }
        }
    }))
}
