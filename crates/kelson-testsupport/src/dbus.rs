//! A private D-Bus daemon for tests: daemons under test get `--dbus-address` pointing at it, so
//! their D-Bus objects are exercised without touching (or needing) the system bus.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::ChildGuard;

/// A `dbus-daemon` on a unix socket in its own temp dir; killed on drop.
#[derive(Debug)]
pub struct DbusDaemon {
    address: String,
    _guard: ChildGuard,
    _dir: tempfile::TempDir,
}

impl DbusDaemon {
    /// Starts the daemon with the session-bus policy (everything allowed for our own user) and
    /// waits (bounded) until its socket exists.
    pub fn start() -> anyhow::Result<DbusDaemon> {
        let dir = tempfile::tempdir().context("temp dir for dbus")?;
        let socket = dir.path().join("bus");
        let address = format!("unix:path={}", socket.display());
        let mut cmd = Command::new("dbus-daemon");
        cmd.arg("--session")
            .arg("--nofork")
            .arg("--nopidfile")
            .arg(format!("--address={address}"));
        let mut guard = ChildGuard::spawn("dbus-daemon", cmd, &dir.path().join("dbus.log"))
            .context("starting dbus-daemon (install the dbus package: scripts/setup.sh)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_socket(&socket) {
            if !guard.is_running() {
                bail!("dbus-daemon exited: {}", guard.log());
            }
            if Instant::now() > deadline {
                bail!("dbus-daemon socket did not appear: {}", guard.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(DbusDaemon {
            address,
            _guard: guard,
            _dir: dir,
        })
    }

    /// The bus address, e.g. `unix:path=/tmp/.tmpXXXX/bus`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_bus_answers_and_goes_away() {
        let bus = DbusDaemon::start().unwrap();
        let out = Command::new("dbus-send")
            .arg(format!("--bus={}", bus.address()))
            .args([
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.GetId",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let path = bus.address().trim_start_matches("unix:path=").to_string();
        drop(bus);
        assert!(
            !Path::new(&path).exists(),
            "temp dir removed with the daemon"
        );
    }
}
