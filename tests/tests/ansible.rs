//! The Ansible path (`ansible/`): static checks of every playbook and a real provisioning run.
//!
//! - `every_playbook_passes_syntax_check`: `ansible-playbook --syntax-check` of each playbook
//!   with the example three-zone inventory.
//! - `example_inventory_matches_the_cluster_description`: the inventory's hosts, groups, zones
//!   and addresses are those of `examples/cluster/three-zones.toml` (read with Python's
//!   `tomllib`, listed with `ansible-inventory`), so the two cannot drift.
//! - `ansible_lint_is_clean`: `ansible-lint` with the committed `.ansible-lint` (profile
//!   `production`, the strictest; no skipped rules).
//! - `site_playbook_provisions_a_machine_over_ssh_idempotently`: a throwaway machine — a copy
//!   of the cached Debian rootfs plus python3 and openssh-server (`ansible/tests/target-rootfs.sh`)
//!   booted with systemd-nspawn, systemd as PID 1 — is provisioned by `site.yml` over real ssh
//!   (root with a key baked into the copy; sshd runs as the machine's `ssh.service` on its own
//!   loopback, and ssh reaches it through a `ProxyCommand` that runs `nc` inside the machine's
//!   network namespace, so nothing is added to the host's network). Asserts: the first run
//!   succeeds, the control plane answers inside the machine, keys have the modes and owners the
//!   play promises and no CA key reached the machine, a second run reports `changed=0`,
//!   `upgrade.yml` with the same build changes nothing and passes its health checks, and
//!   `backup.yml` fetches a kv snapshot to the controller.
//!
//! The machine is a single control-plane machine without the node role: containerd cannot
//! create containers inside nspawn on these hosts (see tests/tests/systemd_machine.rs), so the
//! node role (containerd, kubelet) is exercised by the lab's VMs, not here. Its speaker is off
//! (the test puts the machine's address and the VIP on the machine's loopback itself).
//!
//! Prerequisites (each missing one fails the test with what to do): ansible-core and
//! ansible-lint (scripts/setup.sh), and for the real run root, systemd-nspawn, debootstrap, a
//! Debian mirror for the first rootfs build, and every Kelson binary in target/debug.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::ansible::{changed_tasks, recap};
use common::lab::{ansible_rootfs, is_root, BINARIES};
use kelson_testsupport::nspawn::{self, NspawnMachine};
use kelson_testsupport::{bin_path, workspace_root};

const PLAYBOOKS: &[&str] = &[
    "site.yml",
    "add-node.yml",
    "remove-node.yml",
    "upgrade.yml",
    "backup.yml",
];

fn ansible_dir() -> PathBuf {
    workspace_root().join("ansible")
}

/// Fails the test with the package to install when `tool` is not on PATH.
fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: install the `{package}` Debian package (scripts/setup.sh does)"
    );
}

fn text(out: &Output) -> String {
    nspawn::output_text(out)
}

/// An ansible command run in ansible/ with its ansible.cfg, no colors, bounded by `timeout`.
fn ansible(tool: &str, secs: u64, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .arg(tool)
        .args(args)
        .current_dir(ansible_dir())
        .env("ANSIBLE_CONFIG", ansible_dir().join("ansible.cfg"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("PY_COLORS", "0")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"))
}

#[test]
fn every_playbook_passes_syntax_check() {
    require("ansible-playbook", "ansible-core");
    for pb in PLAYBOOKS {
        let out = ansible(
            "ansible-playbook",
            120,
            &[
                "--syntax-check",
                "-i",
                "inventories/three-zones/hosts.yml",
                "-e",
                "kelson_node=worker-b",
                pb,
            ],
        );
        assert!(
            out.status.success(),
            "{pb}: syntax check failed:\n{}",
            text(&out)
        );
    }
}

#[test]
fn example_inventory_matches_the_cluster_description() {
    require("ansible-inventory", "ansible-core");
    require("python3", "python3");
    let toml = workspace_root().join("examples/cluster/three-zones.toml");
    assert!(
        toml.is_file(),
        "{} is missing (the cluster description the example inventory mirrors)",
        toml.display()
    );
    // (name → (group, zone, address)) from the cluster description.
    let py = "import json,sys,tomllib\n\
              c=tomllib.load(open(sys.argv[1],'rb'))\n\
              m={}\n\
              for g,k in (('control_plane','control_plane'),('workers','workers')):\n\
              \x20   for x in c.get(k,[]): m[x['name']]=[g,x['zone'],x['address']]\n\
              print(json.dumps(m))";
    let out = Command::new("python3")
        .args(["-c", py])
        .arg(&toml)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "reading {}: {}",
        toml.display(),
        text(&out)
    );
    let want: BTreeMap<String, Vec<String>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(want.len(), 5, "three-zones.toml: {want:?}");

    let out = ansible(
        "ansible-inventory",
        60,
        &["-i", "inventories/three-zones/hosts.yml", "--list"],
    );
    assert!(out.status.success(), "ansible-inventory: {}", text(&out));
    let inv: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut got = BTreeMap::new();
    for group in ["control_plane", "workers"] {
        for h in inv[group]["hosts"].as_array().cloned().unwrap_or_default() {
            let h = h.as_str().unwrap().to_string();
            let vars = &inv["_meta"]["hostvars"][&h];
            got.insert(
                h.clone(),
                vec![
                    group.to_string(),
                    vars["zone"].as_str().unwrap_or("?").to_string(),
                    vars["ansible_host"].as_str().unwrap_or("?").to_string(),
                ],
            );
        }
    }
    assert_eq!(
        got, want,
        "inventories/three-zones/hosts.yml has drifted from examples/cluster/three-zones.toml"
    );
}

#[test]
fn ansible_lint_is_clean() {
    require("ansible-lint", "ansible-lint");
    let cfg = std::fs::read_to_string(ansible_dir().join(".ansible-lint"))
        .expect("ansible/.ansible-lint is committed");
    assert!(
        cfg.lines().any(|l| l.trim() == "profile: production"),
        "the lint profile changed:\n{cfg}"
    );
    for blanket in ["skip_list", "warn_list"] {
        assert!(
            !cfg.lines().any(|l| l.trim_start().starts_with(blanket)),
            "ansible/.ansible-lint must not skip or downgrade rules ({blanket}):\n{cfg}"
        );
    }
    let out = ansible("ansible-lint", 600, &[]);
    let all = text(&out);
    assert!(out.status.success(), "ansible-lint failed:\n{all}");
    assert!(
        all.contains("Passed with production profile"),
        "ansible-lint did not pass the production profile:\n{all}"
    );
}

// --- the real run -------------------------------------------------------------------------

const CLUSTER_TOML: &str = r#"# One control-plane machine for the Ansible test (tests/tests/ansible.rs).
name = "ansible-test"
[[zones]]
name = "a"
subnet = "192.168.77.0/24"
[vip]
address = "192.168.77.100"
interface = "lo"
[[control_plane]]
name = "cp-a"
zone = "a"
address = "192.168.77.11"
"#;

#[test]
fn site_playbook_provisions_a_machine_over_ssh_idempotently() {
    let started = Instant::now();
    require("ansible-playbook", "ansible-core");
    require("ssh", "openssh-client");
    require("systemd-nspawn", "systemd-container");
    assert!(
        Path::new("/usr/sbin/debootstrap").exists(),
        "debootstrap is missing: run scripts/setup.sh"
    );
    assert!(
        Path::new("/usr/bin/kubectl").exists(),
        "/usr/bin/kubectl is missing (the play copies it)"
    );
    assert!(
        is_root(),
        "the Ansible machine test needs root (systemd-nspawn)"
    );
    // bin_path panics with the cargo command when one is missing.

    let base = ansible_rootfs();
    let dir = tempfile::Builder::new()
        .prefix("kelson-ansible-")
        .tempdir()
        .expect("tempdir");
    let root = dir.path().join("root");
    nspawn::copy_tree(&base, &root);
    std::fs::write(root.join("etc/hostname"), "cp-a\n").unwrap();

    // A snapshot of the build: target/debug is shared, and another build replacing a binary
    // between the two runs would rightly make the second one report a change.
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    for b in BINARIES {
        // bin_path panics with the cargo command when one is missing.
        std::fs::copy(bin_path(b), bin_dir.join(b)).unwrap();
    }

    // The operator's key, baked into this copy for root.
    let key = dir.path().join("id_ed25519");
    let kg = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "kelson-ansible-test",
            "-f",
        ])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(kg.status.success(), "ssh-keygen: {}", text(&kg));
    let ssh_dir = root.join("root/.ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    std::fs::copy(key.with_extension("pub"), ssh_dir.join("authorized_keys")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ssh_dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    let m = NspawnMachine::boot(&root, &dir.path().join("console.log"), &[]);
    eprintln!("ansible: machine booted after {:?}", started.elapsed());
    // The machine's address and the VIP, on its own loopback (its network namespace).
    for a in ["192.168.77.11/32", "192.168.77.100/32"] {
        m.ok(&["ip", "addr", "add", a, "dev", "lo"]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = m.run(&["systemctl", "is-active", "ssh.service"]);
        if String::from_utf8_lossy(&out.stdout).trim() == "active" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sshd did not start in the machine: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The cluster description and an inventory that agrees with it.
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, CLUSTER_TOML).unwrap();
    let render = dir.path().join("render");
    let backups = dir.path().join("backups");
    let inventory = dir.path().join("hosts.yml");
    let proxy = format!("nsenter -t {} -n -m nc 127.0.0.1 22", m.init_pid());
    std::fs::write(
        &inventory,
        format!(
            r#"all:
  vars:
    kelson_cluster_file: {cluster}
    kelson_render_dir: {render}
    kelson_bin_dir: {bin}
    # The machine has no network beyond its loopback; its packages are preinstalled.
    kelson_apt_update_cache: false
    # containerd cannot create containers inside nspawn here (see the test's doc).
    kelson_node_enabled: false
    kelson_speaker_enabled: false
    ansible_user: root
    ansible_ssh_private_key_file: {key}
    ansible_ssh_common_args: >-
      -o ProxyCommand="{proxy}" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
  children:
    control_plane:
      hosts:
        cp-a:
          ansible_host: 192.168.77.11
          zone: a
    workers:
      hosts: {{}}
"#,
            cluster = cluster.display(),
            render = render.display(),
            bin = bin_dir.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    let inv = inventory.to_str().unwrap();

    let play = |pb: &str, extra: &[&str]| -> (BTreeMap<String, u32>, String) {
        let t = Instant::now();
        let mut args = vec!["-i", inv, pb];
        args.extend_from_slice(extra);
        let out = ansible("ansible-playbook", 900, &args);
        let all = text(&out);
        assert!(out.status.success(), "{pb} failed ({}):\n{all}", out.status);
        let r = recap(&all, "cp-a");
        eprintln!("ansible: {pb} took {:?}: {r:?}", t.elapsed());
        (r, all)
    };

    let (first, _) = play("site.yml", &[]);
    assert_eq!(first["failed"], 0);
    assert_eq!(first["unreachable"], 0);
    assert!(
        first["changed"] > 0,
        "the first run changed nothing: {first:?}"
    );

    // The control plane answers, through the VIP, with the admin kubeconfig the play placed.
    let kc = "--kubeconfig=/etc/kelson/admin.kubeconfig";
    let readyz = m.ok(&["/usr/local/bin/kubectl", kc, "get", "--raw", "/readyz"]);
    assert!(readyz.contains("ok"), "{readyz}");
    let ns = m.ok(&["/usr/local/bin/kubectl", kc, "get", "ns", "-o", "name"]);
    assert!(ns.contains("namespace/kube-system"), "{ns}");
    let ci = m.ok(&[
        "/usr/local/bin/kubectl",
        kc,
        "-n",
        "kube-public",
        "get",
        "configmap",
        "cluster-info",
        "-o",
        "jsonpath={.data.kubeconfig}",
    ]);
    assert!(
        ci.contains("server: https://192.168.77.100:6443"),
        "cluster-info: {ci}"
    );
    for unit in [
        "kelson-kv",
        "kelson-apiserver",
        "kelson-scheduler",
        "kelson-controller-manager",
    ] {
        assert_eq!(
            m.ok(&["systemctl", "is-enabled", unit]).trim(),
            "enabled",
            "{unit}"
        );
        assert_eq!(
            m.ok(&["systemctl", "is-active", unit]).trim(),
            "active",
            "{unit}"
        );
    }
    // Modes and owners: a kelson daemon's key is 0640 root:kelson, the admin credentials
    // root's alone, certificates public; no CA key on the machine.
    let stat = |p: &str| m.ok(&["stat", "-c", "%a %U:%G", p]).trim().to_string();
    assert_eq!(stat("/etc/kelson/pki/kv-server.key"), "640 root:kelson");
    assert_eq!(stat("/etc/kelson/pki/apiserver.key"), "640 root:kelson");
    assert_eq!(stat("/etc/kelson/admin.kubeconfig"), "600 root:root");
    assert_eq!(stat("/etc/kelson/kubelet.kubeconfig"), "600 root:root");
    assert_eq!(
        stat("/etc/kelson/pki/ca.crt").split(' ').next(),
        Some("644")
    );
    let keys = m.ok(&[
        "find",
        "/etc/kelson",
        "-name",
        "ca.key",
        "-o",
        "-name",
        "*ca*.key",
    ]);
    assert!(
        keys.trim().is_empty(),
        "a CA key reached the machine: {keys}"
    );
    assert_eq!(stat("/etc/sysctl.d/90-kelson.conf"), "644 root:root");

    // Idempotence: nothing changes the second time.
    let (second, out) = play("site.yml", &[]);
    assert_eq!(
        second["changed"],
        0,
        "the second run changed something: {:#?}",
        changed_tasks(&out)
    );

    // Handlers act on what changed, and only on that: drift in the controller manager's config
    // is put back and reloads the controller manager (in place) and nothing else. (Not the
    // scheduler: kelson-scheduler registers no SIGHUP handler yet, so its reload ends it.)
    let reloads = |unit: &str| {
        m.ok(&["journalctl", "--no-pager", "-o", "cat", "-u", unit])
            .lines()
            .filter(|l| l.starts_with("Reloading"))
            .count()
    };
    let show = |unit: &str| {
        m.ok(&["systemctl", "show", "-p", "MainPID", "--value", unit])
            .trim()
            .to_string()
    };
    let cm_before = reloads("kelson-controller-manager");
    let others: Vec<(&str, usize)> = ["kelson-apiserver", "kelson-scheduler", "kelson-kv"]
        .into_iter()
        .map(|u| (u, reloads(u)))
        .collect();
    let cm_pid = show("kelson-controller-manager");
    m.ok(&[
        "sh",
        "-c",
        "echo '# drift' >> /etc/kelson/controller-manager.toml",
    ]);
    let (third, out) = play("site.yml", &[]);
    let changed = changed_tasks(&out);
    assert_eq!(third["changed"], 2, "drift repair: {changed:#?}");
    assert!(
        changed
            .iter()
            .any(|t| t.contains("Distribute this machine's configuration")
                && t.contains("/etc/kelson/controller-manager.toml"))
            && changed
                .iter()
                .any(|t| t.contains("Reload changed Kelson units")),
        "drift repair: {changed:#?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads("kelson-controller-manager") <= cm_before {
        assert!(
            Instant::now() < deadline,
            "the controller manager was not reloaded after its config changed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGHUP reloads in place: the same process, still active.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = m.ok(&[
            "systemctl",
            "show",
            "-p",
            "ActiveState",
            "--value",
            "kelson-controller-manager",
        ]);
        if state.trim() == "active" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller manager is {} after its reload:\n{}",
            state.trim(),
            m.ok(&[
                "journalctl",
                "--no-pager",
                "-n",
                "40",
                "-u",
                "kelson-controller-manager"
            ])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        show("kelson-controller-manager"),
        cm_pid,
        "reload restarted the controller manager:\n{}",
        m.ok(&[
            "journalctl",
            "--no-pager",
            "-n",
            "40",
            "-u",
            "kelson-controller-manager"
        ])
    );
    for (unit, before) in others {
        assert_eq!(
            reloads(unit),
            before,
            "{unit} was reloaded although none of its files changed"
        );
    }
    let cm_toml = m.ok(&["cat", "/etc/kelson/controller-manager.toml"]);
    assert!(!cm_toml.contains("# drift"), "{cm_toml}");

    // A rolling upgrade with the same build is a no-op that passes its health checks.
    let (up, out) = play("upgrade.yml", &[]);
    assert_eq!(
        up["changed"],
        0,
        "upgrade changed: {:#?}",
        changed_tasks(&out)
    );
    assert!(
        out.contains("Wait until every kv member is healthy"),
        "{out}"
    );

    // Backup: a snapshot on the controller.
    let dest = format!("kelson_backup_dir={}", backups.display());
    play("backup.yml", &["-e", &dest]);
    let snaps: Vec<_> = std::fs::read_dir(&backups)
        .expect("backup dir")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let size = std::fs::metadata(&snaps[0]).unwrap().len();
    assert!(
        size > 1024,
        "snapshot {} is {size} bytes",
        snaps[0].display()
    );
    eprintln!("ansible: all checks done after {:?}", started.elapsed());
    drop(m);
}
