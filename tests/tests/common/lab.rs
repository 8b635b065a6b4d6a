//! Driving `kelsonctl lab` from a test: a lab in a temporary directory ([`Lab`]) whose Drop
//! runs `lab down`, bounded `kelsonctl lab` / kubectl / etcdctl calls, the cached images, and
//! the check that `lab down` left nothing behind. Used by tests/tests/lab.rs (nspawn control
//! plane, Ansible) and tests/tests/lab_workers.rs (QEMU workers).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kelson_testsupport::{bin_path, workspace_root};

/// Every binary the lab installs (and the play copies).
pub const BINARIES: &[&str] = &[
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

/// stdout then stderr, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Fails the test with the package to install when `path` is missing.
pub fn require_tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the `{package}` package (scripts/setup.sh does)"
    );
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Fails (never skips) unless the test runs as root with what an nspawn lab provisioned by
/// Ansible needs: systemd-nspawn, debootstrap, ansible-playbook, etcdctl and kubectl.
pub fn require_ansible_lab() {
    assert!(
        is_root(),
        "the lab test needs root (namespaces, mounts, systemd-nspawn)"
    );
    require_tool("/usr/bin/systemd-nspawn", "systemd-container");
    require_tool("/usr/sbin/debootstrap", "debootstrap");
    require_tool("/usr/bin/ansible-playbook", "ansible-core");
    require_tool("/usr/bin/etcdctl", "etcd-client");
    require_tool(
        "/usr/bin/kubectl",
        "kubectl (preinstalled on these machines)",
    );
}

/// Copies the lab's binaries from target/debug into `to`: target/debug is shared and may be
/// rebuilt while a lab test runs, and a later playbook must find the very files the first
/// one installed.
pub fn copy_build(to: &Path) {
    let from = bin_dir();
    for b in BINARIES {
        std::fs::copy(from.join(b), to.join(b))
            .unwrap_or_else(|e| panic!("{b}: {e} (cargo build -p {b})"));
    }
}

/// Waits (bounded) until `check` holds, polling every half second; panics with the last
/// diagnostic.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Runs one of the caching scripts (`scripts/NAME DIR...`, or any path relative to the
/// workspace) and returns its stdout.
pub fn script(name: &str, args: &[&Path]) -> String {
    let path = if name.contains('/') {
        workspace_root().join(name)
    } else {
        workspace_root().join("scripts").join(name)
    };
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}); it needs root, debootstrap/apt and a Debian mirror \
         (KELSON_DEBIAN_MIRROR):\n{}",
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cached control-plane rootfs (scripts/nspawn-rootfs.sh).
pub fn nspawn_rootfs() -> PathBuf {
    let dir = workspace_root().join("target").join("nspawn-rootfs");
    script("nspawn-rootfs.sh", &[&dir]);
    dir
}

/// The cached rootfs of a machine Ansible manages: the nspawn rootfs plus python3, sshd and
/// the packages the play installs (ansible/tests/target-rootfs.sh).
pub fn ansible_rootfs() -> PathBuf {
    let target = workspace_root().join("target");
    let dir = target.join("ansible-target-rootfs");
    script(
        "ansible/tests/target-rootfs.sh",
        &[&target.join("nspawn-rootfs"), &dir],
    );
    dir
}

/// The directory of the Kelson binaries the tests use (target/debug); panics with the cargo
/// command when one is missing.
pub fn bin_dir() -> PathBuf {
    let bins: Vec<PathBuf> = BINARIES.iter().map(|b| bin_path(b)).collect();
    bins[0].parent().unwrap().to_path_buf()
}

/// A lab directory with its cluster description; Drop runs `lab down` (bounded) so a failing
/// test leaves nothing behind.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub kelsonctl: PathBuf,
    pub cluster: PathBuf,
    pub down: bool,
}

impl Lab {
    pub fn new(prefix: &str, cluster_toml: &str) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir");
        let cluster = dir.path().join("cluster.toml");
        std::fs::write(&cluster, cluster_toml).unwrap();
        Lab {
            kelsonctl: bin_path("kelsonctl"),
            cluster,
            dir,
            down: false,
        }
    }

    pub fn lab_dir(&self) -> PathBuf {
        self.dir.path().join("lab")
    }

    /// `kelsonctl lab --lab-dir ... --cluster ... <args>`, bounded by `secs`.
    pub fn ctl(&self, secs: u64, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg(secs.to_string())
            .arg(&self.kelsonctl)
            .arg("lab")
            // Before the verb: `exec` takes everything after its machine as the command.
            .arg("--lab-dir")
            .arg(self.lab_dir())
            .arg("--cluster")
            .arg(&self.cluster)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running kelsonctl lab")
    }

    /// `lab up` from the Ansible rootfs with the binaries of `bin`, provisioned by
    /// ansible/site.yml over ssh as an operator would (bounded by `secs`); returns its output.
    pub fn up_with_ansible(&self, secs: u64, bin: &Path) -> String {
        let rootfs = ansible_rootfs().display().to_string();
        let ansible = workspace_root().join("ansible").display().to_string();
        let bin = bin.display().to_string();
        self.ctl_ok(
            secs,
            &[
                "up",
                "--rootfs",
                &rootfs,
                "--bin-dir",
                &bin,
                "--ansible",
                &ansible,
            ],
        )
    }

    pub fn ctl_ok(&self, secs: u64, args: &[&str]) -> String {
        let out = self.ctl(secs, args);
        assert!(
            out.status.success(),
            "kelsonctl lab {args:?} failed ({}):\n{}",
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The lab's id, from `lab status`.
    pub fn id(&self) -> String {
        let status = self.ctl_ok(30, &["status"]);
        status
            .split_whitespace()
            .skip_while(|w| *w != "(id")
            .nth(1)
            .expect("lab id in status")
            .trim_end_matches(')')
            .to_string()
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.lab_dir().join("admin.kubeconfig")
    }

    /// kubectl with the lab's admin kubeconfig, against `server` (an address) if given.
    pub fn kubectl_at(&self, server: Option<&str>, timeout: &str, args: &[&str]) -> Output {
        let mut c = Command::new("timeout");
        c.arg("60")
            .arg("/usr/bin/kubectl")
            .arg(format!(
                "--kubeconfig={}",
                self.admin_kubeconfig().display()
            ))
            .arg(format!("--request-timeout={timeout}"));
        if let Some(addr) = server {
            c.arg(format!("--server=https://{addr}:6443"));
        }
        c.args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running kubectl")
    }

    /// kubectl against the lab's admin kubeconfig's server (the first control-plane machine).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_at(None, "20s", args)
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get` as a result for [`wait_for`].
    pub fn get(&self, args: &[&str]) -> Result<String, String> {
        let out = self.kubectl(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(text(&out))
        }
    }

    fn pki(&self, f: &str) -> String {
        self.lab_dir().join("pki").join(f).display().to_string()
    }

    /// etcdctl against `endpoints` with the lab's store client certificate.
    pub fn etcdctl(&self, endpoints: &str, timeout: &str, args: &[&str]) -> Output {
        Command::new("/usr/bin/etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--dial-timeout=2s")
            .arg(format!("--command-timeout={timeout}"))
            .arg(format!("--cacert={}", self.pki("kv-ca.crt")))
            .arg(format!("--cert={}", self.pki("kv-client.crt")))
            .arg(format!("--key={}", self.pki("kv-client.key")))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running etcdctl")
    }

    /// `lab down`, then checks that nothing of the lab is left.
    pub fn down_and_check(&mut self, id: &str) {
        self.ctl_ok(180, &["down"]);
        self.down = true;
        assert_nothing_left(id, &self.lab_dir());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.down {
            let out = self.ctl(180, &["down"]);
            if !out.status.success() {
                eprintln!("lab down (cleanup) failed:\n{}", text(&out));
            }
        }
    }
}

/// No namespace, host veth, mount, process (machine, QEMU, ssh master) or disk of lab `id`
/// in `lab_dir` is left.
pub fn assert_nothing_left(id: &str, lab_dir: &Path) {
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains(&format!("kl{id}-")),
        "namespaces left: {netns}"
    );
    assert!(
        !Path::new(&format!("/sys/class/net/kl{id}h")).exists(),
        "host veth left"
    );
    let lab_dir_s = lab_dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&lab_dir_s),
        "mounts left under {lab_dir_s}"
    );
    let me = std::process::id().to_string();
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str() != Some(me.as_str()))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&lab_dir_s))
        .collect();
    assert!(procs.is_empty(), "processes left: {procs:?}");
    for left in [
        "worker.img",
        "machines",
        "base",
        "ssh",
        "state.json",
        "inventory.yml",
        "ansible-cp",
    ] {
        assert!(
            !lab_dir.join(left).exists(),
            "{left} left in {}",
            lab_dir.display()
        );
    }
}
