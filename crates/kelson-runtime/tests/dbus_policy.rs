//! The shipped D-Bus policy (systemd/dbus-1/system.d/io.kelson.conf) on a private bus that
//! enforces it like the system bus does: reads for everyone, mutations for root only (and
//! kelson-admin, not exercised here). Needs root, `runuser` and `dbus-send`; otherwise the
//! test says so and returns.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use kelson_runtime::dbus::{DaemonState, DbusOptions};
use kelson_runtime::logging::{self, LogOutput};
use kelson_runtime::notify::Notifier;

struct Bus(Child);
impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// dbus-send as `user` (via runuser when not root); returns (success, stderr).
fn send(addr: &str, user: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", "dbus-send"]);
            c
        }
        None => Command::new("dbus-send"),
    };
    let out = cmd
        .arg(format!("--bus={addr}"))
        .args([
            "--print-reply",
            "--reply-timeout=5000",
            "--dest=io.kelson.Policy1",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn policy_allows_reads_and_restricts_mutations() {
    // CI runs as root with dbus installed by scripts/setup.sh: missing pieces are a failure,
    // not a reason to skip the only test of the shipped policy.
    assert!(
        nix::unistd::geteuid().is_root() && have("runuser") && have("dbus-send"),
        "needs root, runuser and dbus-send (run as root after scripts/setup.sh)"
    );
    let policy = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../systemd/dbus-1/system.d/io.kelson.conf")
        .canonicalize()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // World-traversable so `nobody` can reach the socket.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let addr = format!("unix:path={}", dir.path().join("bus").display());
    // The default policy of Debian's system.conf, then ours, as the system bus reads it.
    let conf = format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>{addr}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>{}</include>
</busconfig>
"#,
        policy.display()
    );
    let conf_path = dir.path().join("bus.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf_path.display()))
        .args(["--nofork", "--nopidfile", "--print-address"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _bus = Bus(child);
    assert!(
        line.starts_with("unix:"),
        "dbus-daemon rejected the policy: {line:?}"
    );

    let (_sub, log) = logging::build("test", "info", LogOutput::Stderr).unwrap();
    let state = DaemonState::with_notifier("9.9", Notifier::disabled());
    state.on_reload(|| Box::pin(async { Ok(()) }));
    // Root may own io.kelson.* names.
    let _h = kelson_runtime::dbus::serve(
        DbusOptions::for_component("Policy", Some(addr.clone())),
        state,
        log,
    )
    .await
    .unwrap();

    let get = [
        "/io/kelson/Policy1",
        "org.freedesktop.DBus.Properties.Get",
        "string:io.kelson.Daemon1",
        "string:Version",
    ];
    let reload = ["/io/kelson/Policy1", "io.kelson.Daemon1.Reload"];
    let set_level = [
        "/io/kelson/Policy1",
        "io.kelson.Daemon1.SetLogLevel",
        "string:debug",
    ];

    let addr2 = addr.clone();
    let results = tokio::task::spawn_blocking(move || {
        (
            send(&addr2, Some("nobody"), &get),
            send(&addr2, Some("nobody"), &reload),
            send(&addr2, Some("nobody"), &set_level),
            send(&addr2, None, &reload),
            send(&addr2, None, &set_level),
        )
    })
    .await
    .unwrap();
    let (get_nobody, reload_nobody, level_nobody, reload_root, level_root) = results;
    assert!(get_nobody.0, "anyone may read properties: {}", get_nobody.1);
    assert!(
        !reload_nobody.0 && reload_nobody.1.contains("AccessDenied"),
        "{}",
        reload_nobody.1
    );
    assert!(
        !level_nobody.0 && level_nobody.1.contains("AccessDenied"),
        "{}",
        level_nobody.1
    );
    assert!(reload_root.0, "root may reload: {}", reload_root.1);
    assert!(level_root.0, "root may set the level: {}", level_root.1);
}
