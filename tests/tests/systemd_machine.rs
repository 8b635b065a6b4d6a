//! A systemd test machine: a Debian bookworm root file system (debootstrap, cached under
//! `target/nspawn-rootfs` by `scripts/nspawn-rootfs.sh`) booted with `systemd-nspawn --boot`,
//! so systemd is PID 1 with its own journald and system bus, and Kelson installed into it by
//! `kelsonctl install --root` and configured inside it by `kelsonctl init`, exactly as an
//! operator would on a real machine.
//!
//! What is checked, all through the stock tools inside the machine (driven from the host with
//! `nsenter -t <container init> -m -u -i -n -p`, since the host runs no systemd-machined):
//! `systemctl start kelson-control-plane.target`, `systemctl is-active` for the store, API
//! server, scheduler and controller manager; `busctl introspect` of each daemon's
//! `io.kelson.<C>1` object on the container's system bus under the installed D-Bus policy;
//! `journalctl -o json` carrying the structured `KELSON_COMPONENT` field; `kubectl get
//! ns`/`get nodes` with the admin kubeconfig init wrote; `systemctl reload kelson-apiserver`
//! reloading in place (same main PID); kelson-cloud-controller-manager, kelson-dns and
//! kelson-proxy started as units and on the bus too; and the watchdog: the scheduler is stopped with SIGSTOP
//! and systemd must kill it (`Failed with result 'watchdog'`) and restart it (NRestarts grows).
//! The shipped WatchdogSec=30s is too slow for a test, so a drop-in in /etc sets 3s for the
//! scheduler only.
//!
//! Only the control plane is started: containerd cannot create containers inside nspawn on
//! these hosts (hybrid cgroup v1 layout: the container sees read-only v1 controllers), so the
//! node target's kubelet would fail there; the node runs in a VM or on the host (see
//! docs/operations.md).
//!
//! Needs root, systemd-nspawn (systemd-container), debootstrap and a Debian mirror for the first
//! build of the cached rootfs (about a minute), and every Kelson binary built in target/debug.
//! A missing prerequisite fails the test with a message saying what to do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kelson_testsupport::bin_path;
use kelson_testsupport::nspawn::{self, NspawnMachine};

/// Everything `kelsonctl install` lays out (it refuses to run with one missing).
const BINARIES: &[&str] = &[
    "kelsonctl",
    "kelson-kv",
    "kelson-apiserver",
    "kelson-scheduler",
    "kelson-controller-manager",
    "kelson-cloud-controller-manager",
    "kelson-kubelet",
    "kelson-proxy",
    "kelson-dns",
];

/// (unit, D-Bus component name) of the control plane.
const CONTROL_PLANE: &[(&str, &str)] = &[
    ("kelson-kv", "KV"),
    ("kelson-apiserver", "APIServer"),
    ("kelson-scheduler", "Scheduler"),
    ("kelson-controller-manager", "ControllerManager"),
];

/// Daemons that run in the machine besides the control plane, started unit by unit: the
/// optional cloud controller manager, and the node's DNS and service proxy (userspace mode:
/// there is no `nft` in the machine). Not the kubelet (no containerd here, see above).
const EXTRA: &[(&str, &str)] = &[
    ("kelson-cloud-controller-manager", "CloudControllerManager"),
    ("kelson-dns", "DNS"),
    ("kelson-proxy", "Proxy"),
];

const NODE_NAME: &str = "kelson-machine";

fn require_tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the `{package}` package (scripts/setup.sh does)"
    );
}

/// A booted copy of the cached rootfs in a temp dir: the machine powers off (field order) before
/// the copy is removed.
struct Machine {
    m: NspawnMachine,
    _dir: tempfile::TempDir,
}

impl Machine {
    /// Copies the rootfs, lets `prepare` modify the tree, then boots it.
    fn boot(prepare: impl FnOnce(&Path)) -> Machine {
        let base = nspawn::cached_rootfs();
        let dir = tempfile::Builder::new()
            .prefix("kelson-machine-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("root");
        let t = Instant::now();
        nspawn::copy_tree(&base, &root);
        eprintln!("machine: rootfs copied in {:?}", t.elapsed());
        prepare(&root);
        let m = NspawnMachine::boot(
            &root,
            &dir.path().join("console.log"),
            &["--bind-ro=/usr/bin/kubectl"],
        );
        Machine { m, _dir: dir }
    }
}

impl std::ops::Deref for Machine {
    type Target = NspawnMachine;
    fn deref(&self) -> &NspawnMachine {
        &self.m
    }
}

#[test]
fn control_plane_under_systemd_in_a_booted_machine() {
    let started = Instant::now();
    require_tool("/usr/bin/systemd-nspawn", "systemd-container");
    require_tool("/usr/sbin/debootstrap", "debootstrap");
    require_tool(
        "/usr/bin/kubectl",
        "kubectl (preinstalled on these machines)",
    );
    assert!(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
        "the systemd machine test needs root (systemd-nspawn)"
    );
    // bin_path panics with the cargo command when one is missing.
    let bins: Vec<PathBuf> = BINARIES.iter().map(|b| bin_path(b)).collect();
    let bin_dir = bins[0].parent().unwrap().to_path_buf();

    let m = Machine::boot(|root| {
        let out = Command::new(bin_dir.join("kelsonctl"))
            .arg("install")
            .arg("--root")
            .arg(root)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .output()
            .expect("kelsonctl install");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kelsonctl install --root failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("ran: systemd-sysusers"), "{stdout}");
        for f in [
            "usr/bin/kelson-kv",
            "usr/lib/systemd/system/kelson-control-plane.target",
            "usr/share/dbus-1/system.d/io.kelson.conf",
        ] {
            assert!(root.join(f).is_file(), "install did not write {f}");
        }
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(
            passwd.lines().any(|l| l.starts_with("kelson:")),
            "sysusers did not create the kelson user:\n{passwd}"
        );
        // A second install changes nothing.
        let again = Command::new(bin_dir.join("kelsonctl"))
            .args(["install", "--no-postinst", "--root"])
            .arg(root)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .output()
            .unwrap();
        let again = String::from_utf8_lossy(&again.stdout);
        assert!(
            !again.contains("wrote:"),
            "install is not idempotent:\n{again}"
        );
        // The watchdog drop-in (an admin's /etc override of the shipped unit).
        let d = root.join("etc/systemd/system/kelson-scheduler.service.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("50-test-watchdog.conf"),
            "[Service]\nWatchdogSec=3s\n",
        )
        .unwrap();
    });
    eprintln!("machine: booted after {:?}", started.elapsed());

    let init = m.ok(&["/usr/bin/kelsonctl", "init", "--node-name", NODE_NAME]);
    assert!(init.contains("/etc/kelson/kv.toml"), "{init}");

    // Starting the target returns once its own job is done; the services follow (the API
    // server after the store, the controllers after the API server).
    m.ok(&["systemctl", "start", "kelson-control-plane.target"]);
    for (unit, _) in CONTROL_PLANE {
        m.wait_for(&format!("{unit} active"), Duration::from_secs(60), || {
            let out = m.run(&["systemctl", "is-active", unit]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "active" {
                Ok(())
            } else {
                Err(format!("{state}; journal:\n{}", tail(&m.journal(unit), 15)))
            }
        });
    }
    eprintln!(
        "machine: control plane active after {:?}",
        started.elapsed()
    );
    for (unit, _) in EXTRA {
        m.ok(&["systemctl", "start", unit]);
        assert_eq!(m.show(unit, "ActiveState"), "active", "{unit}");
    }

    // D-Bus: every daemon on the machine's system bus with the common and its own interface.
    for (unit, c) in CONTROL_PLANE.iter().chain(EXTRA) {
        let name = format!("io.kelson.{c}1");
        let path = format!("/io/kelson/{c}1");
        let mut text = String::new();
        m.wait_for(&format!("{unit} on D-Bus"), Duration::from_secs(20), || {
            let out = m.run(&["busctl", "introspect", "--no-pager", &name, &path]);
            text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        });
        for iface in ["io.kelson.Daemon1", name.as_str()] {
            assert!(text.contains(iface), "{name}: no {iface} in:\n{text}");
        }
        let state = m.ok(&[
            "busctl",
            "get-property",
            &name,
            &path,
            "io.kelson.Daemon1",
            "State",
        ]);
        assert!(state.contains("\"running\""), "{name} State: {state}");
    }

    // journald: native records with the structured component field.
    let json = m.ok(&["journalctl", "--no-pager", "-o", "json", "-u", "kelson-kv"]);
    let records: Vec<serde_json::Value> = json
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let own: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r.get("KELSON_COMPONENT").is_some())
        .collect();
    assert!(
        !own.is_empty(),
        "no kelson-kv journal record has KELSON_COMPONENT ({} records)",
        records.len()
    );
    assert!(own.iter().all(|r| r["KELSON_COMPONENT"] == "kv"), "{own:?}");
    assert!(
        own.iter().all(|r| r.get("PRIORITY").is_some()),
        "records without PRIORITY"
    );

    // The API from inside the machine with the admin kubeconfig init wrote.
    let kubeconfig = "--kubeconfig=/etc/kelson/admin.kubeconfig";
    let ns = m.ok(&["kubectl", kubeconfig, "get", "ns", "-o", "name"]);
    assert!(ns.contains("namespace/kube-system"), "{ns}");
    m.ok(&["kubectl", kubeconfig, "get", "nodes"]);

    // Reload: in place, not a restart.
    let pid = m.show("kelson-apiserver", "MainPID");
    m.ok(&["systemctl", "reload", "kelson-apiserver"]);
    assert_eq!(
        m.show("kelson-apiserver", "MainPID"),
        pid,
        "reload restarted the API server"
    );
    assert_eq!(m.show("kelson-apiserver", "ActiveState"), "active");
    m.ok(&["kubectl", kubeconfig, "get", "ns", "kube-system"]);

    // Watchdog: a hung scheduler is killed and restarted.
    assert_eq!(m.show("kelson-scheduler", "WatchdogUSec"), "3s");
    let restarts: u32 = m.show("kelson-scheduler", "NRestarts").parse().unwrap();
    let hung = m.show("kelson-scheduler", "MainPID");
    m.ok(&["kill", "-STOP", &hung]);
    m.wait_for("watchdog restart", Duration::from_secs(30), || {
        let n: u32 = m.show("kelson-scheduler", "NRestarts").parse().unwrap_or(0);
        let pid = m.show("kelson-scheduler", "MainPID");
        let state = m.show("kelson-scheduler", "ActiveState");
        if n > restarts && pid != hung && pid != "0" && state == "active" {
            Ok(())
        } else {
            Err(format!("NRestarts {n}, MainPID {pid}, {state}"))
        }
    });
    let journal = m.journal("kelson-scheduler");
    assert!(
        journal.contains("Failed with result 'watchdog'"),
        "the restart was not the watchdog's:\n{}",
        tail(&journal, 20)
    );
    eprintln!("machine: all checks done after {:?}", started.elapsed());
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
