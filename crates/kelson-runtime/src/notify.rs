//! systemd service notifications (`sd_notify(3)`): READY, STATUS, STOPPING, RELOADING, WATCHDOG.
//!
//! Message formatting is `sd-notify`'s [`NotifyState`]; sending is done here over a
//! [`UnixDatagram`] so that (a) the target socket can be given explicitly — tests bind their
//! own socket instead of mutating `NOTIFY_SOCKET` in a multi-threaded process — and (b)
//! abstract-namespace sockets (`NOTIFY_SOCKET=@name`) work, which `sd-notify` 0.4 does not
//! handle.
//!
//! The environment is read once ([`Notifier::from_env`]); every call is a no-op when
//! `NOTIFY_SOCKET` was unset, so daemons call these unconditionally. Send errors are returned
//! but a daemon normally just logs them: a lost notification must not take the service down.
//!
//! `RELOADING=1` carries `MONOTONIC_USEC=` because systemd 253+ (`Type=notify-reload`) uses it
//! to tell a new reload apart from a stale one.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use sd_notify::NotifyState;
use tokio::task::JoinHandle;

/// Where notifications go, and the watchdog interval systemd asked for.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the watchdog applies only if
    /// `WATCHDOG_PID` is unset or is our pid, as `sd_watchdog_enabled` does).
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|s| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(s.as_os_str()).to_vec();
            match bytes.first() {
                None => None,
                Some(b'@') => Some(Target::Abstract(bytes[1..].to_vec())),
                Some(_) => Some(Target::Path(PathBuf::from(s))),
            }
        });
        let pid_ok = match std::env::var("WATCHDOG_PID") {
            Ok(pid) => pid.trim().parse::<u32>().ok() == Some(std::process::id()),
            Err(_) => true,
        };
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&us| us > 0 && pid_ok)
            .map(Duration::from_micros);
        Notifier {
            target: target.map(Arc::new),
            watchdog,
        }
    }

    /// Notify a socket at `path` (tests, or a supervisor other than systemd).
    pub fn with_socket(path: impl Into<PathBuf>, watchdog: Option<Duration>) -> Self {
        Notifier {
            target: Some(Arc::new(Target::Path(path.into()))),
            watchdog,
        }
    }

    /// A notifier that never sends anything.
    pub fn disabled() -> Self {
        Notifier::default()
    }

    /// Whether a notification socket is configured.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout systemd asked for, if any.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Send `states` in one datagram.
    pub fn send(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let msg = format_message(states);
        let sock = UnixDatagram::unbound()?;
        let sent = match &**target {
            Target::Path(p) => sock.send_to(msg.as_bytes(), p)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(msg.as_bytes(), &addr)?
            }
        };
        if sent != msg.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short notify write",
            ));
        }
        Ok(())
    }

    /// `READY=1`: the daemon is actually serving.
    pub fn ready(&self) -> io::Result<()> {
        self.send(&[NotifyState::Ready])
    }

    /// `STATUS=<text>`: one line of human-readable status for `systemctl status`.
    pub fn status(&self, text: &str) -> io::Result<()> {
        let line = one_line(text);
        self.send(&[NotifyState::Status(&line)])
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) -> io::Result<()> {
        self.send(&[NotifyState::Stopping])
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=`; send `READY=1` when the reload is done.
    pub fn reloading(&self) -> io::Result<()> {
        let now = NotifyState::monotonic_usec_now()?;
        self.send(&[NotifyState::Reloading, now])
    }

    /// `WATCHDOG=1`: one keep-alive.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send(&[NotifyState::Watchdog])
    }

    /// If a watchdog is configured, spawn a task that sends `WATCHDOG=1` every half timeout
    /// while `healthy()` returns true. When it returns false the pings stop, so systemd
    /// restarts a daemon whose main loop is wedged instead of a timer keeping it "alive".
    pub fn spawn_watchdog<F>(&self, healthy: F) -> Option<JoinHandle<()>>
    where
        F: Fn() -> bool + Send + 'static,
    {
        let timeout = self.watchdog?;
        self.target.as_ref()?;
        let this = self.clone();
        let period = (timeout / 2).max(Duration::from_millis(1));
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if !healthy() {
                    tracing::warn!("health check failed; withholding watchdog ping");
                    continue;
                }
                if let Err(err) = this.watchdog() {
                    tracing::warn!(error = %err, "watchdog notification failed");
                }
            }
        }))
    }
}

/// The datagram payload for `states`: one `KEY=VALUE` per line.
pub fn format_message(states: &[NotifyState<'_>]) -> String {
    let mut msg = String::new();
    for s in states {
        msg.push_str(&s.to_string());
        msg.push('\n');
    }
    msg
}

/// STATUS is line-oriented: a newline would end it early and the rest would be read as keys.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn global() -> &'static Notifier {
    static GLOBAL: OnceLock<Notifier> = OnceLock::new();
    GLOBAL.get_or_init(Notifier::from_env)
}

/// `READY=1` to the process's systemd (no-op without `NOTIFY_SOCKET`).
pub fn ready() -> io::Result<()> {
    global().ready()
}

/// `STATUS=<text>` to the process's systemd.
pub fn status(text: &str) -> io::Result<()> {
    global().status(text)
}

/// `STOPPING=1` to the process's systemd.
pub fn stopping() -> io::Result<()> {
    global().stopping()
}

/// `RELOADING=1` + `MONOTONIC_USEC` to the process's systemd.
pub fn reloading() -> io::Result<()> {
    global().reloading()
}

/// Watchdog pings for the process's systemd; `None` when `WATCHDOG_USEC` is unset.
pub fn spawn_watchdog<F>(healthy: F) -> Option<JoinHandle<()>>
where
    F: Fn() -> bool + Send + 'static,
{
    global().spawn_watchdog(healthy)
}

/// The process-wide notifier read from the environment.
pub fn notifier() -> Notifier {
    global().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_lines() {
        assert_eq!(
            format_message(&[NotifyState::Ready, NotifyState::Status("up 3/3")]),
            "READY=1\nSTATUS=up 3/3\n"
        );
        assert_eq!(one_line("a\nb"), "a b");
    }

    #[test]
    fn disabled_is_noop() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.ready().unwrap();
    }
}
