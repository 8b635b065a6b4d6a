//! Configuring the machines' control plane once they are booted.
//!
//! Each control-plane machine is configured *inside* the machine by `kelsonctl init`, as an
//! operator would on a real one, with the cluster-wide secrets made common first: the first
//! machine's `init` creates the CA, the service-account key, the Secrets encryption key, the
//! audit policy and the API server's kubelet client certificate, and those files are copied
//! into every other machine before its own `init`, which then keeps them (init never replaces
//! valid files) and issues that machine's serving and peer certificates from the shared CA with
//! its address. Finally the store's configuration is turned from a single member into the
//! cluster's: peer and client URLs on the machine's address, the same `initial-cluster` and
//! token everywhere.
//!
//! (`kelsonctl cluster render` renders the same from `cluster.toml` on the host; the lab takes
//! this in-machine path so each machine's files are produced by the tool an operator runs on
//! that machine.)

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use toml::{Table, Value};

use super::machine;
use super::spec::Role;
use super::state::{LabState, MachineState};

/// Files every control-plane machine must share (relative to /etc/kelson/pki).
const SHARED: &[&str] = &[
    "ca.crt",
    "ca.key",
    "sa.key",
    "encryption-config.yaml",
    "audit-policy.yaml",
    "apiserver-kubelet-client.crt",
    "apiserver-kubelet-client.key",
];

const CONTROL_PLANE_UNITS: &[&str] = &[
    "kelson-kv",
    "kelson-apiserver",
    "kelson-scheduler",
    "kelson-controller-manager",
];

const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

fn pki_in(m: &MachineState) -> PathBuf {
    m.root.join("etc/kelson/pki")
}

fn init_machine(m: &MachineState) -> anyhow::Result<()> {
    let init = m.init.context("machine not running")?;
    let addr = m.address.to_string();
    machine::exec_ok(
        init,
        &[
            "/usr/bin/kelsonctl",
            "init",
            "--node-name",
            &m.name,
            "--advertise-address",
            &addr,
        ],
        EXEC_TIMEOUT,
    )
    .with_context(|| format!("kelsonctl init in {}", m.name))?;
    Ok(())
}

/// The store member configuration of a machine in a multi-member cluster.
pub fn kv_member(kv: &mut Table, m: &MachineState, initial_cluster: &str, token: &str) {
    let ip = m.address;
    let set = |kv: &mut Table, k: &str, v: String| {
        kv.insert(k.to_string(), Value::String(v));
    };
    set(kv, "name", m.name.clone());
    // Loopback for the local API server, the machine's address for the others.
    set(kv, "listen-client-urls", "https://0.0.0.0:2379".into());
    set(kv, "advertise-client-urls", format!("https://{ip}:2379"));
    set(kv, "listen-peer-urls", format!("https://{ip}:2380"));
    set(
        kv,
        "initial-advertise-peer-urls",
        format!("https://{ip}:2380"),
    );
    set(kv, "initial-cluster", initial_cluster.into());
    set(kv, "initial-cluster-state", "new".into());
    set(kv, "initial-cluster-token", token.into());
}

fn rewrite_toml(path: &Path, f: impl FnOnce(&mut Table)) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut t: Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    f(&mut t);
    // Written in place: owner and mode (root:kelson 0640) stay as init set them.
    std::fs::write(path, toml::to_string(&t)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Configures and starts the control plane of every running control-plane machine, writes
/// `DIR/admin.kubeconfig` and `DIR/pki/` (CA and store client certificate for etcdctl).
pub fn control_plane(dir: &Path, state: &LabState) -> anyhow::Result<()> {
    let cps: Vec<&MachineState> = state
        .machines
        .iter()
        .filter(|m| m.role == Role::ControlPlane)
        .collect();
    let first = cps.first().context("no control-plane machine")?;
    let t = Instant::now();
    init_machine(first)?;
    for m in &cps[1..] {
        let to = pki_in(m);
        std::fs::create_dir_all(&to)?;
        for f in SHARED {
            let from = pki_in(first).join(f);
            std::fs::copy(&from, to.join(f))
                .with_context(|| format!("copying {} to {}", from.display(), m.name))?;
        }
        init_machine(m)?;
    }
    tracing::info!(elapsed = ?t.elapsed(), "kelsonctl init done on every control-plane machine");

    let initial_cluster = cps
        .iter()
        .map(|m| format!("{}=https://{}:2380", m.name, m.address))
        .collect::<Vec<_>>()
        .join(",");
    let token = format!("kelson-lab-{}", state.id);
    for m in &cps {
        rewrite_toml(&m.root.join("etc/kelson/kv.toml"), |kv| {
            kv_member(kv, m, &initial_cluster, &token)
        })?;
    }
    // Every member must start before any can elect a leader: start them all without waiting.
    for m in &cps {
        machine::exec_ok(
            m.init.context("machine not running")?,
            &[
                "systemctl",
                "start",
                "--no-block",
                "kelson-control-plane.target",
            ],
            EXEC_TIMEOUT,
        )?;
    }
    for m in &cps {
        wait_units_active(m, CONTROL_PLANE_UNITS, Duration::from_secs(90))?;
    }
    tracing::info!(elapsed = ?t.elapsed(), "control plane active on every machine");
    write_host_credentials(dir, first)?;
    Ok(())
}

/// Waits (bounded) until every unit is active in the machine; the error carries the journal.
pub fn wait_units_active(
    m: &MachineState,
    units: &[&str],
    timeout: Duration,
) -> anyhow::Result<()> {
    let init = m.init.context("machine not running")?;
    let deadline = Instant::now() + timeout;
    for unit in units {
        loop {
            let out = machine::exec(init, &["systemctl", "is-active", unit], EXEC_TIMEOUT)?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "active" {
                break;
            }
            if Instant::now() >= deadline {
                let journal = machine::exec(
                    init,
                    &["journalctl", "--no-pager", "-n", "30", "-u", unit],
                    EXEC_TIMEOUT,
                )
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
                bail!(
                    "{unit} in {} is {state:?} after {timeout:?}:\n{journal}",
                    m.name
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    Ok(())
}

/// The admin kubeconfig pointing at `server`, from a machine's own (which names loopback).
pub fn admin_kubeconfig_for(text: &str, server: Ipv4Addr) -> anyhow::Result<String> {
    let from = "server: https://127.0.0.1:6443";
    if !text.contains(from) {
        bail!("the machine's admin kubeconfig does not name {from}");
    }
    Ok(text.replace(from, &format!("server: https://{server}:6443")))
}

fn write_host_credentials(dir: &Path, first: &MachineState) -> anyhow::Result<()> {
    let src = first.root.join("etc/kelson/admin.kubeconfig");
    let text =
        std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    let kc = admin_kubeconfig_for(&text, first.address)?;
    kelson_pki::write_atomic(&dir.join("admin.kubeconfig"), kc.as_bytes(), 0o600)?;
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    for f in ["ca.crt", "kv-client.crt", "kv-client.key"] {
        std::fs::copy(pki_in(first).join(f), pki.join(f))
            .with_context(|| format!("copying {f} out of {}", first.name))?;
    }
    Ok(())
}
