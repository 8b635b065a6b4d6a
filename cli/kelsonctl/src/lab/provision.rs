//! Configuring the machines once they are booted, without Ansible (`lab up --provision copy`;
//! the default runs `ansible/site.yml`, see [`super::ansible`], and only [`control_plane_done`]
//! and [`workers_ready`] are shared): the control plane, and the workers.
//!
//! The configuration comes from `kelsonctl cluster render` (run on the host, as an operator
//! would on their workstation): one directory per machine laid out as that machine's root.
//! Each control-plane machine gets its `etc/kelson` copied in; ownership is then set the way
//! the installers do it (render writes modes, not owners): files a `kelson` daemon reads
//! (mode 0640) become group `kelson` — the machine's own `kelson` group from its
//! `/etc/group`, created by `kelsonctl install`'s sysusers step — and `pki/` is 0750
//! root:kelson. Then `kelson-control-plane.target` starts on every machine at once (no store
//! member can elect a leader before a majority runs).
//!
//! For the host, the lab keeps `DIR/admin.kubeconfig` (render's, pointed at the first
//! control-plane machine: the lab does not announce the VIP) and `DIR/pki/` with the store CA
//! and a store client certificate for etcdctl.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::spec::Role;
use super::state::{LabState, MachineState};
use super::{cmd, machine};

const CONTROL_PLANE_UNITS: &[&str] = &[
    "kelson-kv",
    "kelson-apiserver",
    "kelson-scheduler",
    "kelson-controller-manager",
];

const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// The cloud-controller-manager's configuration in a control-plane machine, and its unit.
pub const CCM_CONFIG: &str = "etc/kelson/cloud-controller-manager.toml";
pub const CCM_UNIT: &str = "kelson-cloud-controller-manager.service";

/// Runs `kelsonctl cluster render --out OUT CLUSTER` with the given kelsonctl.
pub fn render(kelsonctl: &Path, cluster: &Path, out: &Path) -> anyhow::Result<()> {
    let o = std::process::Command::new(kelsonctl)
        .args(["cluster", "render", "--out"])
        .arg(out)
        .arg(cluster)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", kelsonctl.display()))?;
    if !o.status.success() {
        bail!(
            "kelsonctl cluster render failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// The gid of group `name` in a machine's `/etc/group`.
pub fn group_gid(group_file: &str, name: &str) -> Option<u32> {
    group_file.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(name))
            .then(|| f.nth(1)?.parse().ok())
            .flatten()
    })
}

/// Copies a machine's rendered `etc/kelson` into its root and sets owners as installers do.
fn install_rendered(rendered: &Path, m: &MachineState) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let src = rendered.join(&m.name).join("etc/kelson");
    if !src.is_dir() {
        bail!("render produced nothing for {} ({})", m.name, src.display());
    }
    let dst = m.root.join("etc/kelson");
    std::fs::create_dir_all(&dst)?;
    // `src/.` copies the contents; -a keeps render's modes.
    cmd::run(
        "cp",
        &[
            "-a",
            &format!("{}/.", src.display()),
            &dst.to_string_lossy(),
        ],
    )?;
    let groups = std::fs::read_to_string(m.root.join("etc/group"))?;
    let kelson = group_gid(&groups, "kelson")
        .context("no kelson group in the machine (kelsonctl install creates it)")?;
    let chown = |p: &Path, gid: u32| {
        nix::unistd::chown(
            p,
            Some(nix::unistd::Uid::from_raw(0)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .with_context(|| format!("chown {}", p.display()))
    };
    chown(&dst, 0)?;
    let pki = dst.join("pki");
    chown(&pki, kelson)?;
    std::fs::set_permissions(&pki, std::fs::Permissions::from_mode(0o750))?;
    for dir in [&dst, &pki] {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                continue;
            }
            let mode = std::fs::metadata(&p)?.permissions().mode() & 0o777;
            chown(&p, if mode == 0o640 { kelson } else { 0 })?;
        }
    }
    Ok(())
}

/// Configures and starts the control plane of every running control-plane machine from the
/// rendered tree, and writes `DIR/admin.kubeconfig` and `DIR/pki/`.
pub fn control_plane(dir: &Path, state: &LabState, rendered: &Path) -> anyhow::Result<()> {
    let cps: Vec<&MachineState> = state
        .machines
        .iter()
        .filter(|m| m.role == Role::ControlPlane)
        .collect();
    let t = Instant::now();
    for m in &cps {
        install_rendered(rendered, m)?;
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
    // The speaker announces the VIP from whichever machine holds its Lease.
    for m in cps
        .iter()
        .filter(|m| m.root.join("etc/kelson/speaker.toml").is_file())
    {
        machine::exec_ok(
            m.init.context("machine not running")?,
            &["systemctl", "start", "--no-block", "kelson-speaker.service"],
            EXEC_TIMEOUT,
        )?;
    }
    // LoadBalancer addresses: the cloud-controller-manager (controller mode, leader-elected)
    // assigns them from the description's pools and picks the announcing node. Not part of
    // kelson-control-plane.target (a cluster without pools does not need it): started when
    // render wrote its configuration.
    for m in cps.iter().filter(|m| m.root.join(CCM_CONFIG).is_file()) {
        machine::exec_ok(
            m.init.context("machine not running")?,
            &["systemctl", "start", "--no-block", CCM_UNIT],
            EXEC_TIMEOUT,
        )?;
    }
    control_plane_done(dir, state, rendered)?;
    tracing::info!(elapsed = ?t.elapsed(), "control plane active on every machine");
    Ok(())
}

/// However the control plane was configured: waits (bounded) until its units are active on
/// every machine, and writes the host's credentials (`DIR/admin.kubeconfig`, `DIR/pki/`).
pub fn control_plane_done(dir: &Path, state: &LabState, rendered: &Path) -> anyhow::Result<()> {
    let cps: Vec<&MachineState> = state
        .machines
        .iter()
        .filter(|m| m.role == Role::ControlPlane)
        .collect();
    for m in &cps {
        wait_units_active(m, CONTROL_PLANE_UNITS, Duration::from_secs(90))?;
    }
    write_host_credentials(
        dir,
        rendered,
        cps.first().context("no control-plane machine")?,
    )
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

/// Render's admin kubeconfig (which names the VIP) pointed at `server` instead.
pub fn admin_kubeconfig_for(text: &str, server: Ipv4Addr) -> anyhow::Result<String> {
    let mut done = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if let Some(url) = t.strip_prefix("server: ") {
                if url.starts_with("https://") {
                    done = true;
                    let port = url.rsplit(':').next().unwrap_or("6443");
                    let indent = &l[..l.len() - t.len()];
                    return format!("{indent}server: https://{server}:{port}");
                }
            }
            l.to_string()
        })
        .collect();
    if !done {
        bail!("the rendered admin kubeconfig has no `server: https://...` line");
    }
    Ok(out.join("\n") + "\n")
}

fn write_host_credentials(dir: &Path, rendered: &Path, first: &MachineState) -> anyhow::Result<()> {
    let src = rendered.join("admin.kubeconfig");
    let text =
        std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    let kc = admin_kubeconfig_for(&text, first.address)?;
    kelson_pki::write_atomic(&dir.join("admin.kubeconfig"), kc.as_bytes(), 0o600)?;
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    let from = rendered.join(&first.name).join("etc/kelson/pki");
    for (f, to) in [
        ("store-ca.crt", "kv-ca.crt"),
        ("apiserver-etcd-client.crt", "kv-client.crt"),
        ("apiserver-etcd-client.key", "kv-client.key"),
    ] {
        std::fs::copy(from.join(f), pki.join(to))
            .with_context(|| format!("copying {f} of {}", first.name))?;
    }
    Ok(())
}

/// Run on a worker after its `etc/kelson` arrived: owners as the installers set them (see
/// [`install_rendered`]), the test images imported into containerd's CRI namespace, the node
/// units enabled (a worker that reboots, or is started again after `lab kill`, comes back as a
/// node by itself, as one provisioned by ansible/roles/node does) and started.
const WORKER_SETUP: &str = r#"set -eu
cd /etc/kelson
chown -R root:root .
chgrp kelson pki
chmod 0750 pki
find . -type f -perm 0640 -exec chgrp kelson {} +
# The boot may still be settling (`starting`): wait for containerd like any other client.
systemctl start containerd
for f in /var/lib/kelson-lab/images/*.tar; do
  ctr -n k8s.io images import --no-unpack=false "$f" >/dev/null
done
systemctl enable -q kelson-node.target kelson-kubelet.service kelson-proxy.service kelson-dns.service
systemctl start --no-block kelson-node.target
"#;

/// Added to [`WORKER_SETUP`] when the worker has a NIC on the VIP segment: its speaker
/// announces LoadBalancer addresses there.
const WORKER_SPEAKER: &str = r#"if [ -f /etc/kelson/speaker.toml ]; then
  systemctl enable -q kelson-speaker.service
  systemctl start --no-block kelson-speaker.service
fi
"#;

/// `--provision copy`: provisions booted worker VMs over ssh without Ansible (the lab's key is
/// baked into their image): copies each worker's rendered `etc/kelson` (a tar stream over ssh,
/// as `scp -r` would, keeping render's modes), runs [`WORKER_SETUP`] (what ansible/roles/node
/// does), then [`workers_ready`].
pub fn workers(
    dir: &Path,
    state: &LabState,
    workers: &[&MachineState],
    rendered: &Path,
) -> anyhow::Result<()> {
    let key = dir.join("ssh/id_ed25519");
    for m in workers {
        let src = rendered.join(&m.name);
        if !src.join("etc/kelson").is_dir() {
            bail!("render produced nothing for {} ({})", m.name, src.display());
        }
        let ssh = super::vm::ssh_opts(&key).join(" ");
        let script = format!(
            "tar -C {} -cf - etc/kelson | timeout 120 ssh {ssh} root@{} tar -C / --no-same-owner -xf -",
            src.display(),
            m.address
        );
        cmd::run("sh", &["-c", &script])
            .with_context(|| format!("copying etc/kelson to {}", m.name))?;
        let mut setup = WORKER_SETUP.to_string();
        if m.vm.as_ref().is_some_and(|v| v.vip_tap.is_some()) {
            setup.push_str(WORKER_SPEAKER);
        }
        super::vm::ssh_ok(dir, m, &setup, Duration::from_secs(180))?;
    }
    workers_ready(dir, state, workers)
}

/// However the workers were provisioned: waits (bounded) until each node is Ready with a pod
/// CIDR, and routes that CIDR through the lab's router (the lab's stand-in for a cloud route
/// table: zones are separate L2 segments, so nodes cannot route pods to each other directly).
pub fn workers_ready(
    dir: &Path,
    state: &LabState,
    workers: &[&MachineState],
) -> anyhow::Result<()> {
    let t = Instant::now();
    let kubeconfig = dir.join("admin.kubeconfig");
    for m in workers {
        let deadline = Instant::now() + Duration::from_secs(240);
        let cidr = loop {
            let out = kubectl(
                &kubeconfig,
                &[
                    "get",
                    "node",
                    &m.name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.podCIDR}",
                ],
            );
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if let Some(cidr) = text.strip_prefix("True ") {
                break cidr.to_string();
            }
            if Instant::now() >= deadline {
                let journal = super::vm::ssh(
                    dir,
                    m,
                    &[
                        "journalctl",
                        "--no-pager",
                        "-n",
                        "40",
                        "-u",
                        "kelson-kubelet",
                    ],
                    EXEC_TIMEOUT,
                )
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
                bail!(
                    "node {} not Ready with a pod CIDR after 240 s ({text:?}, {}):\n{journal}",
                    m.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        let via = m.address.to_string();
        cmd::run(
            "ip",
            &[
                "-n",
                &state.router_ns,
                "route",
                "replace",
                &cidr,
                "via",
                &via,
            ],
        )?;
        tracing::info!(node = %m.name, %cidr, "worker Ready, pod CIDR routed");
    }
    eprintln!(
        "lab: {} workers Ready, pod CIDRs routed, in {:?}",
        workers.len(),
        t.elapsed()
    );
    Ok(())
}

/// kubectl on the host with the lab's admin kubeconfig (bounded).
fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("timeout")
        .arg("30")
        .arg("kubectl")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--request-timeout=10s")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| std::process::Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
            stdout: vec![],
            stderr: format!("running kubectl: {e}").into_bytes(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_kubeconfig_points_at_a_machine() {
        let kc = "clusters:\n- cluster:\n    server: https://10.0.1.100:6443\n    certificate-authority-data: x\n";
        let out = admin_kubeconfig_for(kc, Ipv4Addr::new(10, 0, 1, 11)).unwrap();
        assert!(
            out.contains("    server: https://10.0.1.11:6443\n"),
            "{out}"
        );
        assert!(admin_kubeconfig_for("apiVersion: v1\n", Ipv4Addr::LOCALHOST).is_err());
    }

    #[test]
    fn group_lookup() {
        let g = "root:x:0:\nkelson:x:998:\n";
        assert_eq!(group_gid(g, "kelson"), Some(998));
        assert_eq!(group_gid(g, "nobody"), None);
    }
}
