//! Machines: systemd-nspawn containers with systemd as PID 1.
//!
//! Disk: one shared lower layer per lab (`DIR/base`: a copy of the cached debootstrap rootfs
//! with Kelson installed by `kelsonctl install --root`, exactly as on a real machine) and one
//! overlayfs per machine on top of it, so a machine costs only what it writes (the debug
//! binaries alone are ~450 MB, which a full copy per machine would pay again).
//!
//! Boot: `systemd-nspawn --boot --register=no --keep-unit --network-namespace-path=...` in its
//! own session, detached from `kelsonctl` (the machine outlives the `lab up` that started it),
//! console to `DIR/machines/<m>/console.log`. The host runs no systemd-machined, so
//! machines are driven with `nsenter` into the container's init (its PID and start time are
//! recorded in the state file), and killed by SIGKILL to that init, which takes down the whole
//! PID namespace at once, like pulling the power cord.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::state::{MachineState, Proc};
use super::{cmd, process};

/// Written last into a finished base layer.
const BASE_MARKER: &str = ".kelson-lab-base";
/// The rootfs scripts' markers (scripts/nspawn-rootfs.sh, ansible/tests/target-rootfs.sh): a
/// rootfs with neither is incomplete.
const ROOTFS_MARKERS: &[&str] = &[".kelson-rootfs-complete", ".kelson-ansible-target-complete"];

/// Bound for a machine to reach `running`/`degraded`.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// What a machine provisioned by Ansible carries in its image besides Kelson: the operator's
/// ssh key for root (as a cloud image gets it from its metadata), and the build already staged
/// where `ansible/roles/common` stages it, so the play's checksum comparison finds it current
/// instead of sending the same ~500 MB of debug binaries to every machine (a golden image with
/// the release preloaded; an upgrade to another build still goes over ssh).
pub struct AnsibleSeed<'a> {
    pub pubkey: &'a Path,
    pub binaries: &'a [&'a str],
}

/// Where the play stages the build on a machine (`kelson_dist_dir`/bin).
pub const DIST_BIN: &str = "var/lib/kelson-dist/bin";

/// Builds `base` from `rootfs` + `kelsonctl install --root` once (reused when complete).
pub fn prepare_base(
    rootfs: &Path,
    base: &Path,
    bin_dir: &Path,
    seed: Option<&AnsibleSeed>,
) -> anyhow::Result<()> {
    if base.join(BASE_MARKER).is_file() {
        return Ok(());
    }
    if !ROOTFS_MARKERS.iter().any(|m| rootfs.join(m).is_file()) {
        bail!(
            "{} is not a finished machine rootfs (no {}): build it with scripts/nspawn-rootfs.sh \
             (or, for Ansible, ansible/tests/target-rootfs.sh)",
            rootfs.display(),
            ROOTFS_MARKERS.join(" or ")
        );
    }
    if seed.is_some() {
        for (f, pkg) in [
            ("usr/bin/python3", "python3"),
            ("usr/sbin/sshd", "openssh-server"),
        ] {
            if !rootfs.join(f).exists() {
                bail!(
                    "{} has no /{f} ({pkg}), which Ansible needs on a managed machine: build the \
                     rootfs with ansible/tests/target-rootfs.sh, or pass --provision copy",
                    rootfs.display()
                );
            }
        }
    }
    let tmp = base.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let t = Instant::now();
    cmd::run(
        "cp",
        &[
            "-a",
            "--reflink=auto",
            &rootfs.to_string_lossy(),
            &tmp.to_string_lossy(),
        ],
    )?;
    install_root(bin_dir, &tmp)?;
    if let Some(seed) = seed {
        use std::os::unix::fs::PermissionsExt;
        let ssh = tmp.join("root/.ssh");
        std::fs::create_dir_all(&ssh)?;
        std::fs::copy(seed.pubkey, ssh.join("authorized_keys"))
            .with_context(|| format!("copying {}", seed.pubkey.display()))?;
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))?;
        let dist = tmp.join(DIST_BIN);
        std::fs::create_dir_all(&dist)?;
        for b in seed.binaries {
            let dst = dist.join(b);
            std::fs::copy(bin_dir.join(b), &dst)
                .with_context(|| format!("staging {}", bin_dir.join(b).display()))?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    // Nothing in a lab machine needs the interactive login prompts or time sync.
    for m in ROOTFS_MARKERS {
        let _ = std::fs::remove_file(tmp.join(m));
    }
    std::fs::write(tmp.join(BASE_MARKER), b"kelson lab base\n")?;
    std::fs::rename(&tmp, base).with_context(|| format!("renaming to {}", base.display()))?;
    tracing::info!(base = %base.display(), elapsed = ?t.elapsed(), "base layer ready");
    Ok(())
}

/// `kelsonctl install --root ROOT --bin-dir BIN_DIR` with the build's own kelsonctl: Kelson
/// laid out in a machine tree exactly as on a real machine (binaries, units, D-Bus policy,
/// sysusers, tmpfiles).
pub fn install_root(bin_dir: &Path, root: &Path) -> anyhow::Result<()> {
    let kelsonctl = bin_dir.join("kelsonctl");
    let out = Command::new(&kelsonctl)
        .arg("install")
        .arg("--root")
        .arg(root)
        .arg("--bin-dir")
        .arg(bin_dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", kelsonctl.display()))?;
    if !out.status.success() {
        bail!(
            "kelsonctl install --root {} failed: {}{}",
            root.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Mounts the machine's overlay (lower = base) unless it is mounted already.
pub fn mount_root(base: &Path, m: &MachineState) -> anyhow::Result<()> {
    for d in [&m.root, &m.upper, &m.work] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    if is_mounted(&m.root) {
        return Ok(());
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        base.display(),
        m.upper.display(),
        m.work.display()
    );
    cmd::run(
        "mount",
        &[
            "-t",
            "overlay",
            "overlay",
            "-o",
            &opts,
            &m.root.to_string_lossy(),
        ],
    )?;
    Ok(())
}

/// True when `path` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_ref()))
}

pub fn unmount_root(m: &MachineState) {
    if is_mounted(&m.root) {
        // Lazy: a process that still holds a file open must not make `down` fail.
        cmd::best_effort("umount", &["-l", &m.root.to_string_lossy()]);
    }
}

/// Starts systemd-nspawn for the machine, detached; returns (nspawn, init) once the container's
/// systemd exists. The caller records both and then waits for the boot.
pub fn spawn(m: &MachineState, console: &Path) -> anyhow::Result<(Proc, Proc)> {
    let netns = format!("/run/netns/{}", m.netns);
    let mut c = Command::new("systemd-nspawn");
    c.arg("-D")
        .arg(&m.root)
        .args([
            "--boot",
            // No systemd-machined on the host.
            "--register=no",
            "--keep-unit",
            "--console=read-only",
            // The speaker adds the VIP to an interface and sends gratuitous ARP; nspawn drops
            // these capabilities when it did not create the network namespace itself. They
            // only reach the machine's own namespace.
            "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
        ])
        .arg(format!("--machine={}", m.name))
        .arg(format!("--network-namespace-path={netns}"))
        // kubectl for the operator inside the machine, as on a real control-plane machine.
        .arg("--bind-ro=/usr/bin/kubectl");
    // Detached: the machine survives kelsonctl (its init is reaped by nspawn afterwards).
    let nspawn = process::spawn_detached(&mut c, console)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if !nspawn.alive() {
            bail!(
                "systemd-nspawn for {} exited:\n{}",
                m.name,
                tail(console, 30)
            );
        }
        for c in process::children(nspawn) {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", c.pid)).unwrap_or_default();
            if comm.trim() == "systemd" {
                return Ok((nspawn, c));
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no systemd inside {} after 20 s:\n{}",
                m.name,
                tail(console, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of a file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `args` inside the machine's namespaces (mount, UTS, IPC, network, PID), bounded by
/// `timeout`.
pub fn exec(init: Proc, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
    if !init.alive() {
        bail!("the machine is not running");
    }
    let pid = init.pid.to_string();
    Command::new("timeout")
        .arg(timeout.as_secs().max(1).to_string())
        .args(["nsenter", "-t", &pid, "-m", "-u", "-i", "-n", "-p", "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running nsenter")
}

/// Like [`exec`], but the command must succeed; returns its stdout.
pub fn exec_ok(init: Proc, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let out = exec(init, args, timeout)?;
    if !out.status.success() {
        bail!(
            "`{}` failed in the machine ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits (bounded) until the machine's systemd reports `running` or `degraded`.
pub fn wait_booted(init: Proc, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(out) = exec(
            init,
            &["systemctl", "is-system-running"],
            Duration::from_secs(10),
        ) {
            last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if last == "running" || last == "degraded" {
                return Ok(());
            }
        }
        if !init.alive() {
            bail!("the machine's init exited while booting");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("not booted after {timeout:?} (state {last:?})")
}

/// Every systemd-nspawn process running `root` (found in /proc by its `-D` argument), with
/// the container init it started if any. This covers a machine whose processes were never
/// recorded: `lab up` crashed between spawning nspawn and saving the state.
pub fn find_nspawn(root: &Path) -> Vec<(Proc, Option<Proc>)> {
    let root = root.as_os_str().as_encoded_bytes();
    process::scan(|args| {
        args.first()
            .is_some_and(|a0| a0.ends_with(b"systemd-nspawn"))
            && args.windows(2).any(|w| w[0] == b"-D" && w[1] == root)
    })
    .into_iter()
    .map(|nspawn| (nspawn, process::children(nspawn).into_iter().next()))
    .collect()
}

/// Kills a machine at once: SIGKILL to its init ends every process of its PID namespace, and
/// then systemd-nspawn exits. Targets the recorded processes and any nspawn found running the
/// machine's root. Waits (bounded) for all of them to be gone.
pub fn kill(m: &MachineState) -> anyhow::Result<()> {
    process::kill_until_gone(
        &format!("machine {}", m.name),
        Duration::from_secs(20),
        |elapsed| {
            // Rescanned each round: an nspawn caught while setting up gets its init later.
            let found = find_nspawn(&m.root);
            let inits = m
                .init
                .into_iter()
                .chain(found.iter().filter_map(|(_, i)| *i))
                .map(|p| (p, true));
            // nspawn exits by itself once its container is gone; one that did not notice
            // (or never had a container) is ended too after a moment.
            let nspawns = m
                .nspawn
                .into_iter()
                .chain(found.iter().map(|(n, _)| *n))
                .map(|p| (p, elapsed > Duration::from_secs(3)));
            inits.chain(nspawns).collect()
        },
    )
}

/// The directory a machine's files live in.
pub fn machine_dir(lab_dir: &Path, name: &str) -> PathBuf {
    lab_dir.join("machines").join(name)
}
