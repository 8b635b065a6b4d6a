//! Workers: QEMU virtual machines under software emulation (TCG).
//!
//! Why VMs: containerd cannot create containers inside systemd-nspawn on these hosts (hybrid
//! cgroup v1 layout), and `/dev/kvm` here cannot boot a stock kernel, so a worker is a real
//! Debian machine emulated by QEMU's TCG (see ../shared/design/MACHINE-NOTES.md: ~20 s to a
//! login prompt, ~460 MB host RSS, one busy core while booting).
//!
//! Disk: `scripts/vm-image.sh` caches a debootstrapped tree (cloud kernel, systemd, containerd,
//! runc, CNI plugins, openssh-server, python3 for Ansible) with its kernel and initramfs. Per
//! lab, [`prepare_image`] copies that tree, installs Kelson with `kelsonctl install --root` (the
//! same step the nspawn machines' base layer gets), bakes in the lab's ssh public key and the
//! busybox/pause test images, and makes one ext4 image of it with `mkfs.ext4 -d` (no loop
//! mounts, no root-only block devices). For Ansible ([`ImageKind::Ansible`]) the build is also
//! staged where `ansible/roles/common` stages it (hard links: no second copy on disk), so the
//! play finds it current instead of sending it to every VM; for `--provision copy`
//! ([`ImageKind::Copy`]) containerd's configuration is baked in instead (the node role writes
//! it otherwise). Each worker boots a qcow2 overlay of that image, so a worker costs only what
//! it writes, and `lab start` after `lab kill` boots the same disk again.
//!
//! Boot: `-kernel/-initrd` from the tree's /boot with `root=/dev/vda`; the machine's address,
//! gateway and host name come from the kernel command line (`ip=` is turned into a
//! systemd-networkd file by systemd-network-generator, `systemd.hostname=`), so one image
//! serves every worker and nothing is written into an overlay before boot. The NIC is a tap
//! device on the zone's bridge inside the lab's fabric namespace: QEMU runs there (`ip netns
//! exec`), since a tap is looked up by name in the opening process's namespace. The serial
//! console goes to `DIR/machines/<m>/console.log`.
//!
//! Provisioning is over ssh as root with the lab's key (`DIR/ssh/id_ed25519`), exactly like
//! an operator's first login: by `ansible/site.yml --limit workers`
//! ([`super::ansible::site_workers`]), or with `--provision copy` by
//! [`super::provision::workers`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::state::{LabState, MachineState, Proc};
use super::{cmd, process};

/// The marker `scripts/vm-image.sh` writes last.
const IMAGE_MARKER: &str = ".kelson-vm-complete";
/// Written next to a finished per-lab image.
const LAB_IMAGE_MARKER: &str = "worker.img.done";
/// Size of the per-lab ext4 image (sparse: only what is written takes space).
const IMAGE_SIZE: &str = "4G";
/// Guest memory. The kubelet, proxy, DNS (debug builds), containerd and a few pods fit in
/// 1 GiB; the host pays only for pages the guest touches.
const GUEST_MEM: &str = "1024";
/// Bound for a worker to answer ssh after QEMU starts (TCG boot is ~20 s on an idle host;
/// two booting at once on a loaded 2-core host take several times that).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// Where the test images are baked into the worker image (imported after boot).
pub const IMAGES_DIR: &str = "var/lib/kelson-lab/images";

/// containerd for the kubelet (as ansible/roles/node's template), with the lab's pause image
/// as sandbox image: workers are air-gapped, images come from `ctr images import`. Only for
/// `--provision copy` (with Ansible the node role writes it).
const CONTAINERD_CONFIG: &str = r#"# Written by kelsonctl lab: containerd 1.6 for the kelson kubelet.
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "kelson.local/pause:3.10"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "/etc/cni/net.d"
"#;

/// The VM parts of a worker's record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    /// Tap device in the fabric namespace, on the zone's bridge.
    pub tap: String,
    pub mac: String,
    /// The worker's qcow2 overlay (backed by the lab's image).
    pub overlay: PathBuf,
    /// A second NIC on the VIP's segment (bridge `brv`), when the lab has one: the worker's
    /// speaker announces LoadBalancer addresses there, on the interface the description names
    /// for the VIP (render gives every speaker that interface).
    #[serde(default)]
    pub vip_tap: Option<String>,
    #[serde(default)]
    pub vip_mac: Option<String>,
}

/// Paths of the cached VM tree (`scripts/vm-image.sh DIR`).
pub struct CachedImage {
    pub rootfs: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl CachedImage {
    pub fn at(dir: &Path) -> anyhow::Result<CachedImage> {
        if !dir.join(IMAGE_MARKER).is_file() {
            bail!(
                "{} is not a finished worker image (no {IMAGE_MARKER}): build it with scripts/vm-image.sh {}",
                dir.display(),
                dir.display()
            );
        }
        Ok(CachedImage {
            rootfs: dir.join("rootfs"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
        })
    }
}

/// The lab's ssh key pair (created once per lab).
pub fn ssh_key(dir: &Path) -> anyhow::Result<PathBuf> {
    let d = dir.join("ssh");
    let key = d.join("id_ed25519");
    if key.is_file() && key.with_extension("pub").is_file() {
        return Ok(key);
    }
    std::fs::create_dir_all(&d)?;
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    cmd::run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "kelson-lab",
            "-f",
            &key.to_string_lossy(),
        ],
    )?;
    Ok(key)
}

/// Path of the lab's worker image.
pub fn lab_image(dir: &Path) -> PathBuf {
    dir.join("worker.img")
}

/// How the lab's workers are provisioned, which decides what their image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// By `ansible/site.yml`: the whole build staged in `/var/lib/kelson-dist/bin` (a golden
    /// image with the release preloaded); containerd's configuration is the node role's.
    Ansible,
    /// By `lab up` over ssh: only what a worker runs, containerd configured for the kubelet.
    Copy,
}

/// Builds `DIR/worker.img` (once per lab): the cached tree + Kelson + the lab's key + the
/// test images (+ the staged build, or containerd's config: see [`ImageKind`]), as one ext4
/// file system.
pub fn prepare_image(
    dir: &Path,
    cached: &CachedImage,
    bin_dir: &Path,
    pubkey: &Path,
    vip_if: Option<&str>,
    kind: ImageKind,
    resolver: std::net::Ipv4Addr,
) -> anyhow::Result<PathBuf> {
    let img = lab_image(dir);
    if dir.join(LAB_IMAGE_MARKER).is_file() && img.is_file() {
        return Ok(img);
    }
    let t = Instant::now();
    let tree = dir.join("worker-tree");
    if tree.exists() {
        std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    cmd::run(
        "cp",
        &[
            "-a",
            "--reflink=auto",
            &cached.rootfs.to_string_lossy(),
            &tree.to_string_lossy(),
        ],
    )?;
    let result = (|| -> anyhow::Result<()> {
        super::machine::install_root(bin_dir, &tree)?;
        match kind {
            ImageKind::Ansible => {
                // Where roles/common stages the build, as hard links to what `install --root`
                // laid out (the same bytes; mkfs.ext4 -d keeps hard links): the play compares
                // checksums, finds both current, and `kelsonctl install` reports `unchanged`.
                let dist = tree.join(super::machine::DIST_BIN);
                std::fs::create_dir_all(&dist)?;
                for b in super::ansible::BINARIES {
                    std::fs::hard_link(tree.join("usr/bin").join(b), dist.join(b))
                        .with_context(|| format!("staging {b} in the worker image"))?;
                }
            }
            ImageKind::Copy => {
                // Only what a worker runs: the control-plane daemons stay off its disk.
                for b in [
                    "kelson-kv",
                    "kelson-apiserver",
                    "kelson-scheduler",
                    "kelson-controller-manager",
                ] {
                    let _ = std::fs::remove_file(tree.join("usr/bin").join(b));
                }
                std::fs::create_dir_all(tree.join("etc/containerd"))?;
                std::fs::write(tree.join("etc/containerd/config.toml"), CONTAINERD_CONFIG)?;
            }
        }
        let ssh = tree.join("root/.ssh");
        std::fs::create_dir_all(&ssh)?;
        std::fs::copy(pubkey, ssh.join("authorized_keys"))
            .with_context(|| format!("copying {}", pubkey.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))?;
        if let Some(ifname) = vip_if {
            let d = tree.join("etc/systemd/network");
            std::fs::create_dir_all(&d)?;
            std::fs::write(
                d.join("20-kelson-lab-vip.network"),
                vip_network_unit(ifname),
            )?;
        }
        // kelson-dns refuses to start without an upstream resolver (as node-local-dns does),
        // and the image's resolv.conf is empty: the lab has no outside network. Its router
        // stands in (reachable from every zone; nothing answers port 53 there, so names
        // outside the cluster fail at once, and cluster names are kelson-dns's own).
        std::fs::write(
            tree.join("etc/resolv.conf"),
            format!("# Written by kelsonctl lab: the lab's router (no resolver behind it).\nnameserver {resolver}\n"),
        )?;
        let images = tree.join(IMAGES_DIR);
        std::fs::create_dir_all(&images)?;
        kelson_oci::build_test_images(Path::new(kelson_oci::DEFAULT_BUSYBOX), &images)
            .context("building the busybox and pause test images")?;
        let _ = std::fs::remove_file(&img);
        cmd::run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-L",
                "kelson-worker",
                "-d",
                &tree.to_string_lossy(),
                &img.to_string_lossy(),
                IMAGE_SIZE,
            ],
        )?;
        Ok(())
    })();
    // The tree is only the image's source: never keep a second copy of it.
    let _ = std::fs::remove_dir_all(&tree);
    result?;
    std::fs::write(dir.join(LAB_IMAGE_MARKER), b"")?;
    tracing::info!(elapsed = ?t.elapsed(), "worker image ready");
    eprintln!("lab: worker image ready in {:?}", t.elapsed());
    Ok(img)
}

/// The tap name of worker `index` (unique inside the lab's fabric namespace).
pub fn tap_name(index: usize) -> String {
    format!("t{index}")
}

/// A locally administered MAC derived from the lab id and the worker's index.
pub fn mac(lab_id: &str, index: usize) -> String {
    let h = u32::from_str_radix(lab_id, 16).unwrap_or(0);
    format!(
        "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
        (h >> 16) & 0xff,
        (h >> 8) & 0xff,
        h & 0xff,
        index & 0xff
    )
}

/// The kernel command line of a worker: root disk, serial console, address and host name,
/// and the name of its NIC on the VIP segment (`ifname=NAME:MAC` becomes a systemd .link file
/// through systemd-network-generator).
pub fn kernel_cmdline(m: &MachineState, vip_if: Option<&str>) -> String {
    let gw = super::spec::gateway(super::spec::subnet24(m.address));
    let mut c = format!(
        "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 \
         ip={addr}::{gw}:255.255.255.0:{name}:eth0:off systemd.hostname={name}",
        addr = m.address,
        name = m.name
    );
    if let (Some(ifname), Some(mac)) = (vip_if, m.vm.as_ref().and_then(|v| v.vip_mac.as_ref())) {
        c.push_str(&format!(" ifname={ifname}:{mac}"));
    }
    c
}

/// systemd-networkd for the VIP-segment NIC: up, no address of its own (the speaker adds
/// LoadBalancer addresses as /32s), not waited for by network-online.target.
pub fn vip_network_unit(ifname: &str) -> String {
    format!(
        "# Written by kelsonctl lab: the VIP segment; the speaker adds its addresses.\n\
         [Match]\nName={ifname}\n\n[Link]\nRequiredForOnline=no\n\n\
         [Network]\nLinkLocalAddressing=no\nIPv6AcceptRA=no\nConfigureWithoutCarrier=yes\n\
         KeepConfiguration=yes\n"
    )
}

/// Creates the worker's taps (its zone's bridge; the VIP segment's `brv` if any), idempotent,
/// and sets them up.
pub fn create_tap(st: &LabState, m: &MachineState) -> anyhow::Result<()> {
    let vm = m.vm.as_ref().context("not a VM")?;
    let zone = st.zone(&m.zone)?;
    let fab = &st.fabric_ns;
    let mut taps = vec![(vm.tap.as_str(), zone.bridge.as_str())];
    if let Some(t) = &vm.vip_tap {
        taps.push((t.as_str(), "brv"));
    }
    for (tap, bridge) in taps {
        if cmd::output("ip", &["-n", fab, "link", "show", tap])
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            cmd::run(
                "ip",
                &["-n", fab, "tuntap", "add", "dev", tap, "mode", "tap"],
            )?;
        }
        cmd::run(
            "ip",
            &["-n", fab, "link", "set", tap, "master", bridge, "up"],
        )?;
    }
    Ok(())
}

/// Plugs or unplugs the worker's link (its tap on the bridge).
pub fn set_link(st: &LabState, m: &MachineState, up: bool) -> anyhow::Result<()> {
    let vm = m.vm.as_ref().context("not a VM")?;
    for tap in std::iter::once(&vm.tap).chain(vm.vip_tap.as_ref()) {
        cmd::run(
            "ip",
            &[
                "-n",
                &st.fabric_ns,
                "link",
                "set",
                tap,
                if up { "up" } else { "down" },
            ],
        )?;
    }
    Ok(())
}

/// Starts QEMU for the worker, detached, in the fabric namespace; returns its process.
pub fn spawn(
    st: &LabState,
    m: &MachineState,
    qemu: &Path,
    cached: &CachedImage,
    console: &Path,
) -> anyhow::Result<Proc> {
    let vm = m.vm.as_ref().context("not a VM")?;
    if !vm.overlay.is_file() {
        let img = lab_image(st.base.parent().context("lab dir")?);
        cmd::run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                &img.to_string_lossy(),
                &vm.overlay.to_string_lossy(),
            ],
        )?;
    }
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &st.fabric_ns])
        .arg(qemu)
        .args(["-name", &m.name])
        .args(["-accel", "tcg,tb-size=64", "-cpu", "max", "-smp", "1"])
        .args(["-m", GUEST_MEM])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&cached.kernel)
        .arg("-initrd")
        .arg(&cached.initrd)
        .args([
            "-append",
            &kernel_cmdline(m, st.vip.as_ref().map(|(_, i)| i.as_str())),
        ])
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=qcow2,cache=unsafe",
            vm.overlay.display()
        ))
        .arg("-netdev")
        .arg(format!(
            "tap,id=n0,ifname={},script=no,downscript=no",
            vm.tap
        ))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={}", vm.mac));
    if let (Some(tap), Some(mac)) = (&vm.vip_tap, &vm.vip_mac) {
        c.arg("-netdev")
            .arg(format!("tap,id=n1,ifname={tap},script=no,downscript=no"))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n1,mac={mac}"));
    }
    // Detached: the VM outlives kelsonctl.
    let p = process::spawn_detached(&mut c, &console.with_extension("qemu.log"))?;
    // `ip netns exec` and the wrapper script exec QEMU in place: same PID. Give it a moment
    // to fail on bad arguments, so the error comes with QEMU's message.
    std::thread::sleep(Duration::from_millis(500));
    if !p.alive() {
        bail!(
            "qemu for {} exited:\n{}",
            m.name,
            super::machine::tail(&console.with_extension("qemu.log"), 20)
        );
    }
    Ok(p)
}

/// ssh to a worker as root with the lab's key, bounded by `timeout`.
pub fn ssh(
    dir: &Path,
    m: &MachineState,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<Output> {
    let key = dir.join("ssh/id_ed25519");
    Command::new("timeout")
        .arg(timeout.as_secs().max(1).to_string())
        .arg("ssh")
        .args(ssh_opts(&key))
        .arg(format!("root@{}", m.address))
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ssh")
}

/// Like [`ssh`], but the command must succeed; returns its stdout.
pub fn ssh_ok(
    dir: &Path,
    m: &MachineState,
    cmdline: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let out = ssh(dir, m, &[cmdline], timeout)?;
    if !out.status.success() {
        bail!(
            "`{cmdline}` failed on {} ({}): {}{}",
            m.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Options for a throwaway lab machine: its host key changes with every lab, so it is neither
/// checked nor recorded; no password prompt can block.
pub fn ssh_opts(key: &Path) -> Vec<String> {
    [
        "-i",
        &key.to_string_lossy(),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        // Includes the banner exchange: sshd in a TCG guest next to a starting kubelet, on a
        // loaded host, was seen taking more than 5 s to send it.
        "ConnectTimeout=30",
        "-o",
        "ServerAliveInterval=5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Waits (bounded) until the worker answers ssh with systemd up (`starting` counts: a
/// provisioned worker's node units take minutes to settle under TCG on a loaded host, and
/// their readiness is the node's Ready condition, not the boot's).
pub fn wait_booted(dir: &Path, m: &MachineState, qemu: Proc, console: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        if !qemu.alive() {
            bail!(
                "qemu for {} exited while booting:\n{}",
                m.name,
                super::machine::tail(console, 30)
            );
        }
        match ssh(
            dir,
            m,
            &["systemctl", "is-system-running"],
            Duration::from_secs(45),
        ) {
            Ok(out) => {
                last = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                if ["running", "degraded", "starting"].contains(&last.as_str()) {
                    return Ok(());
                }
            }
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!(
        "{} not booted after {BOOT_TIMEOUT:?} (last: {last}); console:\n{}",
        m.name,
        super::machine::tail(console, 30)
    )
}

/// Every QEMU process running this worker's overlay (found in /proc by its command line), for
/// a worker whose process was never recorded (a crashed `lab up`).
pub fn find_qemu(overlay: &Path) -> Vec<Proc> {
    // The drive argument: `file=<overlay>,if=virtio,...`.
    let needle = format!("file={},", overlay.display());
    process::scan(|args| {
        args.first()
            .is_some_and(|a0| a0.ends_with(b"qemu-system-x86_64"))
            && args.iter().any(|a| a.starts_with(needle.as_bytes()))
    })
}

/// Kills a worker at once (SIGKILL to QEMU: power loss) and waits (bounded) for it to be gone.
pub fn kill(m: &MachineState) -> anyhow::Result<()> {
    let Some(vm) = &m.vm else { return Ok(()) };
    process::kill_until_gone(
        &format!("worker {}", m.name),
        Duration::from_secs(20),
        |_| {
            m.init
                .into_iter()
                .chain(find_qemu(&vm.overlay))
                .map(|p| (p, true))
                .collect()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn cmdline_carries_address_gateway_and_name() {
        let m = MachineState {
            name: "worker-a".into(),
            zone: "a".into(),
            role: super::super::spec::Role::Worker,
            address: Ipv4Addr::new(10, 9, 1, 21),
            netns: "x".into(),
            root: "/r".into(),
            upper: "/u".into(),
            work: "/w".into(),
            mounted: false,
            nspawn: None,
            init: None,
            vm: None,
        };
        let c = kernel_cmdline(&m, Some("vip0"));
        assert!(
            c.contains("ip=10.9.1.21::10.9.1.1:255.255.255.0:worker-a:eth0:off"),
            "{c}"
        );
        assert!(c.contains("root=/dev/vda"), "{c}");
        assert!(c.contains("systemd.hostname=worker-a"), "{c}");
        // No VIP NIC recorded: no ifname=.
        assert!(!c.contains("ifname="), "{c}");
        let mut m = m;
        m.vm = Some(VmState {
            tap: "t0".into(),
            mac: mac("000001", 0),
            overlay: "/o".into(),
            vip_tap: Some("u0".into()),
            vip_mac: Some("52:54:00:00:01:80".into()),
        });
        let c = kernel_cmdline(&m, Some("vip0"));
        assert!(c.contains(" ifname=vip0:52:54:00:00:01:80"), "{c}");
    }

    #[test]
    fn macs_are_local_and_distinct() {
        let a = mac("00a1b2", 0);
        assert!(a.starts_with("52:54:"), "{a}");
        assert_ne!(a, mac("00a1b2", 1));
        assert_ne!(a, mac("00a1b3", 0));
    }
}
