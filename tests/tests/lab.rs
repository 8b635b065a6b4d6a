//! `kelsonctl lab` end to end: a three-zone control plane of three systemd-nspawn machines
//! (systemd PID 1, Kelson installed by `kelsonctl install --root`, each machine's files rendered
//! by `kelsonctl cluster render` from the same cluster.toml an operator would write), each in
//! its own network namespace on its zone's bridge, zones
//! routed through the lab's router namespace, the host reaching every machine through the
//! lab's veth. Everything is observed from the host with the stock clients (kubectl, etcdctl):
//!
//! 1. `lab up` → the store is one cluster of three members (one leader, every member reports
//!    it) and every machine's API server answers kubectl from the host.
//! 2. `lab partition a` → the majority side (b, c) keeps accepting API writes; a put to zone
//!    a's store member fails (no leader / timeout); `lab heal` → zone a's member converges to
//!    the majority's revision and accepts writes again.
//! 3. `lab kill` of the machine holding the store leader while a writer creates a numbered
//!    ConfigMap sequence through the surviving API servers → writes resume within 5 s of the
//!    kill (measured, printed) and every acknowledged write is there afterwards; `lab start`
//!    boots it again and its member catches up.
//! 4. `lab down` → no namespace, host veth, mount or process of the lab is left.
//!
//! Needs root, systemd-nspawn (systemd-container), debootstrap and a Debian mirror for the
//! cached rootfs (scripts/nspawn-rootfs.sh), nftables, etcdctl and kubectl, and every Kelson
//! binary built in target/debug. A missing prerequisite fails the test saying what to do.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kelson_testsupport::{bin_path, workspace_root};

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

/// (machine, zone, address). Subnets 10.213.{1,2,3}.0/24 are used by this test only; the
/// crash test uses 10.214.x (the tests may run in parallel; the lab refuses routed subnets).
const MACHINES: &[(&str, &str, &str)] = &[
    ("cp-a", "a", "10.213.1.11"),
    ("cp-b", "b", "10.213.2.11"),
    ("cp-c", "c", "10.213.3.11"),
];

/// The control-plane VIP of the main test (`interface = "vip0"`: its own segment).
const VIP: &str = "10.213.100.100";

/// The cluster description of [`MACHINES`] with the second octet `net`.
fn cluster_toml(net: u8) -> String {
    let mut s = format!(
        "name = \"lab\"\n\n[vip]\naddress = \"10.{net}.100.100\"\ninterface = \"vip0\"\n\n"
    );
    for (n, z) in ["a", "b", "c"].iter().enumerate() {
        s.push_str(&format!(
            "[[zones]]\nname = \"{z}\"\nsubnet = \"10.{net}.{}.0/24\"\n\n",
            n + 1
        ));
    }
    for (name, zone, addr) in MACHINES {
        let addr = addr.replace("10.213.", &format!("10.{net}."));
        s.push_str(&format!(
            "[[control_plane]]\nname = \"{name}\"\nzone = \"{zone}\"\naddress = \"{addr}\"\n\n"
        ));
    }
    s
}

fn require_tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the `{package}` package (scripts/setup.sh does)"
    );
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Builds or reuses the cached rootfs (shared with the systemd machine test).
fn rootfs() -> PathBuf {
    let dir = workspace_root().join("target").join("nspawn-rootfs");
    let script = workspace_root().join("scripts").join("nspawn-rootfs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("running scripts/nspawn-rootfs.sh");
    assert!(
        out.status.success(),
        "scripts/nspawn-rootfs.sh failed ({}); the lab needs debootstrap and a Debian mirror \
         (KELSON_DEBIAN_MIRROR):\n{}",
        out.status,
        text(&out)
    );
    dir
}

/// A lab directory; Drop runs `lab down` (bounded) so a failing test leaves nothing behind.
struct Lab {
    dir: tempfile::TempDir,
    kelsonctl: PathBuf,
    cluster: PathBuf,
    down: bool,
}

impl Lab {
    fn new(net: u8) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("kelson-lab-")
            .tempdir()
            .expect("tempdir");
        let cluster = dir.path().join("cluster.toml");
        std::fs::write(&cluster, cluster_toml(net)).unwrap();
        Lab {
            kelsonctl: bin_path("kelsonctl"),
            cluster,
            dir,
            down: false,
        }
    }

    fn lab_dir(&self) -> PathBuf {
        self.dir.path().join("lab")
    }

    /// `kelsonctl lab <args> --lab-dir ... --cluster ...`, bounded by `secs`.
    fn ctl(&self, secs: u64, args: &[&str]) -> Output {
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

    fn ctl_ok(&self, secs: u64, args: &[&str]) -> String {
        let out = self.ctl(secs, args);
        assert!(
            out.status.success(),
            "kelsonctl lab {args:?} failed ({}):\n{}",
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pki(&self, f: &str) -> String {
        self.lab_dir().join("pki").join(f).display().to_string()
    }

    /// etcdctl against `endpoints` with the lab's store client certificate.
    fn etcdctl(&self, endpoints: &str, timeout: &str, args: &[&str]) -> Output {
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

    /// kubectl against one machine's API server.
    fn kubectl(&self, addr: &str, timeout: &str, args: &[&str]) -> Output {
        Command::new("/usr/bin/kubectl")
            .arg(format!(
                "--kubeconfig={}",
                self.lab_dir().join("admin.kubeconfig").display()
            ))
            .arg(format!("--server=https://{addr}:6443"))
            .arg(format!("--request-timeout={timeout}"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running kubectl")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.down {
            let out = self.ctl(120, &["down"]);
            if !out.status.success() {
                eprintln!("lab down (cleanup) failed:\n{}", text(&out));
            }
        }
    }
}

/// Member status of one endpoint: (member id, leader id, revision, raft index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    id: u64,
    leader: u64,
    revision: i64,
}

fn endpoint_status(lab: &Lab, addr: &str) -> Result<Member, String> {
    let out = lab.etcdctl(
        &format!("https://{addr}:2379"),
        "3s",
        &["endpoint", "status", "-w", "json"],
    );
    if !out.status.success() {
        return Err(text(&out));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))?;
    let s = &v[0]["Status"];
    let h = &s["header"];
    Ok(Member {
        id: h["member_id"].as_u64().ok_or("no member_id")?,
        leader: s["leader"].as_u64().ok_or("no leader")?,
        revision: h["revision"].as_i64().ok_or("no revision")?,
    })
}

/// Waits (bounded) until `check` holds; panics with the last diagnostic.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Every member reports the same leader, which is one of them; returns the statuses.
fn healthy_cluster(lab: &Lab, addrs: &[&str]) -> Result<Vec<Member>, String> {
    let ms: Vec<Member> = addrs
        .iter()
        .map(|a| endpoint_status(lab, a).map_err(|e| format!("{a}: {e}")))
        .collect::<Result<_, _>>()?;
    let leader = ms[0].leader;
    if leader == 0 || ms.iter().any(|m| m.leader != leader) {
        return Err(format!("no agreed leader: {ms:?}"));
    }
    if !ms.iter().any(|m| m.id == leader) {
        return Err(format!("leader {leader:x} is not a member: {ms:?}"));
    }
    Ok(ms)
}

#[test]
fn three_zone_control_plane_survives_kill_and_partition() {
    let started = Instant::now();
    require_tool("/usr/bin/systemd-nspawn", "systemd-container");
    require_tool("/usr/sbin/debootstrap", "debootstrap");
    require_tool("/usr/sbin/nft", "nftables");
    require_tool("/usr/bin/etcdctl", "etcd-client");
    require_tool(
        "/usr/bin/kubectl",
        "kubectl (preinstalled on these machines)",
    );
    assert!(
        nix_is_root(),
        "the lab test needs root (namespaces, mounts, systemd-nspawn)"
    );
    let bins: Vec<PathBuf> = BINARIES.iter().map(|b| bin_path(b)).collect();
    let bin_dir = bins[0].parent().unwrap().display().to_string();
    let rootfs = rootfs().display().to_string();
    eprintln!("lab: rootfs ready after {:?}", started.elapsed());

    let mut lab = Lab::new(213);
    let up = lab.ctl_ok(300, &["up", "--rootfs", &rootfs, "--bin-dir", &bin_dir]);
    eprintln!("lab: up after {:?}\n{up}", started.elapsed());
    let status = lab.ctl_ok(30, &["status"]);
    let id = status
        .split_whitespace()
        .skip_while(|w| *w != "(id")
        .nth(1)
        .expect("lab id in status")
        .trim_end_matches(')')
        .to_string();
    for (m, _, _) in MACHINES {
        assert!(
            status.contains(&format!("machine {m} ")) && !status.contains("stopped"),
            "{status}"
        );
    }
    // exec: the machine's own hostname and address.
    let ip = lab.ctl_ok(
        30,
        &[
            "exec", "cp-b", "--", "ip", "-4", "-o", "addr", "show", "eth0",
        ],
    );
    assert!(ip.contains("10.213.2.11/24"), "{ip}");

    // 1. One store cluster across the zones; every API server answers from the host.
    let addrs: Vec<&str> = MACHINES.iter().map(|m| m.2).collect();
    let members = wait_for(
        "a 3-member store with one leader",
        Duration::from_secs(60),
        || healthy_cluster(&lab, &addrs),
    );
    let ids: BTreeSet<u64> = members.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 3, "three distinct members: {members:?}");
    let endpoints: Vec<String> = addrs.iter().map(|a| format!("https://{a}:2379")).collect();
    let list = lab.etcdctl(&endpoints.join(","), "5s", &["member", "list"]);
    assert_eq!(text(&list).lines().count(), 3, "{}", text(&list));
    for a in &addrs {
        wait_for(
            &format!("API server on {a}"),
            Duration::from_secs(60),
            || {
                let out = lab.kubectl(a, "5s", &["get", "ns", "kube-system", "-o", "name"]);
                if out.status.success() && text(&out).contains("namespace/kube-system") {
                    Ok(())
                } else {
                    Err(text(&out))
                }
            },
        );
    }
    eprintln!(
        "lab: store and API servers healthy after {:?}",
        started.elapsed()
    );
    // The VIP (its own segment stretched over the zones, announced by the speaker of the
    // machine holding its Lease) answers from the host.
    wait_for(
        "API server through the VIP",
        Duration::from_secs(30),
        || {
            let out = lab.kubectl(VIP, "3s", &["get", "ns", "kube-system", "-o", "name"]);
            if out.status.success() {
                Ok(())
            } else {
                Err(text(&out))
            }
        },
    );

    // 2. Partition zone a.
    lab.ctl_ok(30, &["partition", "a"]);
    let (a, b, c) = (addrs[0], addrs[1], addrs[2]);
    let t = Instant::now();
    // Bounded generously: an API server whose store client was connected to zone a's member
    // keeps waiting on it until the client gives that endpoint up (seen: 0.2-15 s).
    wait_for(
        "majority (b, c) accepts API writes",
        Duration::from_secs(45),
        || {
            let out = lab.kubectl(b, "3s", &["create", "configmap", "during-partition"]);
            let s = text(&out);
            if out.status.success() || s.contains("AlreadyExists") {
                Ok(())
            } else {
                Err(s)
            }
        },
    );
    eprintln!(
        "lab: majority writing {:?} after the partition",
        t.elapsed()
    );
    let put = lab.etcdctl(
        &format!("https://{a}:2379"),
        "3s",
        &["put", "/lab/minority", "x"],
    );
    assert!(
        !put.status.success(),
        "the partitioned member accepted a write:\n{}",
        text(&put)
    );
    eprintln!("lab: minority put refused: {}", text(&put).trim());
    let majority_rev = endpoint_status(&lab, c).expect("status of c").revision;
    lab.ctl_ok(30, &["heal"]);
    let t = Instant::now();
    wait_for(
        "zone a converges after heal",
        Duration::from_secs(30),
        || {
            let ms = healthy_cluster(&lab, &addrs)?;
            let revs: BTreeSet<i64> = ms.iter().map(|m| m.revision).collect();
            if revs.len() == 1 && ms[0].revision >= majority_rev {
                Ok(())
            } else {
                Err(format!("revisions differ: {ms:?}"))
            }
        },
    );
    eprintln!("lab: zone a converged {:?} after heal", t.elapsed());
    let put = lab.etcdctl(
        &format!("https://{a}:2379"),
        "5s",
        &["put", "/lab/healed", "x"],
    );
    assert!(
        put.status.success(),
        "put through a after heal: {}",
        text(&put)
    );

    // 3. Kill the machine holding the store leader under a write stream.
    let ms = healthy_cluster(&lab, &addrs).expect("healthy before the kill");
    let li = ms.iter().position(|m| m.id == ms[0].leader).unwrap();
    let victim = MACHINES[li].0;
    let survivors: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, a)| a.to_string())
        .collect();
    eprintln!("lab: store leader is on {victim}; killing it under writes");
    let stop = Arc::new(AtomicBool::new(false));
    // (sequence number, request started, acknowledged)
    let acks: Arc<Mutex<Vec<(u32, Instant, Instant)>>> = Arc::default();
    let writer = {
        let (stop, acks, survivors) = (stop.clone(), acks.clone(), survivors.clone());
        let kubeconfig = lab.lab_dir().join("admin.kubeconfig");
        std::thread::spawn(move || {
            let mut n = 0u32;
            let mut target = 0usize;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let t0 = Instant::now();
                let out = Command::new("/usr/bin/kubectl")
                    .arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .arg(format!("--server=https://{}:6443", survivors[target]))
                    .arg("--request-timeout=2s")
                    .args(["create", "configmap", &format!("seq-{n}")])
                    .stdin(Stdio::null())
                    .output()
                    .expect("kubectl");
                let s = text(&out);
                // A timed-out create may have been committed: AlreadyExists acknowledges it.
                if out.status.success() || s.contains("AlreadyExists") {
                    acks.lock().unwrap().push((n, t0, Instant::now()));
                    n += 1;
                } else {
                    target = (target + 1) % survivors.len();
                }
            }
        })
    };
    wait_for(
        "writes flowing before the kill",
        Duration::from_secs(20),
        || {
            let n = acks.lock().unwrap().len();
            if n >= 5 {
                Ok(())
            } else {
                Err(format!("{n} acks"))
            }
        },
    );
    // The kill happens between these two instants; the gap is measured conservatively, from
    // the start of `lab kill` to the first acknowledged write that started after it returned
    // (so it cannot have been served by the old leader).
    let kill_started = Instant::now();
    lab.ctl_ok(60, &["kill", victim]);
    let kill_done = Instant::now();
    let resumed = wait_for("writes after the kill", Duration::from_secs(20), || {
        let a = acks.lock().unwrap();
        let after: Vec<_> = a.iter().filter(|(_, s, _)| *s >= kill_done).collect();
        match after.first() {
            Some((_, _, done)) if after.len() >= 5 => Ok(*done - kill_started),
            _ => Err(format!(
                "{} acks so far, {} after the kill",
                a.len(),
                after.len()
            )),
        }
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked: Vec<u32> = acks.lock().unwrap().iter().map(|(n, _, _)| *n).collect();
    let victim_id = ms[li].id;
    let survivor_addrs: Vec<&str> = survivors.iter().map(String::as_str).collect();
    let after = healthy_cluster(&lab, &survivor_addrs).expect("survivors agree on a leader");
    assert_ne!(
        after[0].leader, victim_id,
        "leadership did not move: {after:?}"
    );
    println!(
        "lab: writes through the surviving API servers resumed {resumed:?} after killing the leader's machine ({} writes acknowledged)",
        acked.len()
    );
    assert!(
        resumed < Duration::from_secs(5),
        "writes resumed only after {resumed:?}"
    );
    let out = lab.kubectl(&survivors[0], "10s", &["get", "configmaps", "-o", "name"]);
    assert!(out.status.success(), "{}", text(&out));
    let present: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("configmap/").to_string())
        .collect();
    let lost: Vec<&u32> = acked
        .iter()
        .filter(|n| !present.contains(&format!("seq-{n}")))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // The VIP answers again (moved if the killed machine held it: Lease expiry, not bounded
    // by the 5 s of the store).
    let t = Instant::now();
    wait_for("the VIP after the kill", Duration::from_secs(40), || {
        let out = lab.kubectl(VIP, "2s", &["get", "ns", "kube-system", "-o", "name"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(text(&out))
        }
    });
    println!(
        "lab: the VIP answered {:?} after the writes resumed",
        t.elapsed()
    );

    // The killed machine boots again on its disk and its member catches up.
    lab.ctl_ok(120, &["start", victim]);
    wait_for(
        &format!("{victim} rejoins"),
        Duration::from_secs(60),
        || {
            let ms = healthy_cluster(&lab, &addrs)?;
            let revs: BTreeSet<i64> = ms.iter().map(|m| m.revision).collect();
            if revs.len() == 1 {
                Ok(())
            } else {
                Err(format!("revisions differ: {ms:?}"))
            }
        },
    );

    // stop-zone takes every machine of the zone down.
    lab.ctl_ok(60, &["stop-zone", "a"]);
    let status = lab.ctl(30, &["status"]);
    let st = text(&status);
    assert!(
        !status.status.success(),
        "status must report stopped machines: {st}"
    );
    assert!(
        st.lines()
            .any(|l| l.starts_with("machine cp-a ") && l.ends_with("stopped")),
        "{st}"
    );
    assert!(
        st.lines()
            .any(|l| l.starts_with("machine cp-b ") && l.contains("running")),
        "{st}"
    );

    // 4. Down leaves nothing behind.
    lab.ctl_ok(120, &["down"]);
    lab.down = true;
    assert_nothing_left(&id, &lab.lab_dir());
    eprintln!("lab: all checks done after {:?}", started.elapsed());
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// No namespace, host veth, mount or machine process of lab `id` in `lab_dir` is left.
fn assert_nothing_left(id: &str, lab_dir: &Path) {
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
    let lab_dir = lab_dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&lab_dir), "mounts left under {lab_dir}");
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&lab_dir) && c.contains("systemd-nspawn"))
        .collect();
    assert!(procs.is_empty(), "processes left: {procs:?}");
}

/// `lab up` SIGKILLed once its machines are booting (namespaces made, overlays mounted, nspawn
/// running) → `lab down` still removes everything, from the state file alone.
#[test]
fn down_cleans_up_after_a_crashed_up() {
    require_tool("/usr/bin/systemd-nspawn", "systemd-container");
    require_tool("/usr/sbin/debootstrap", "debootstrap");
    assert!(nix_is_root(), "the lab test needs root");
    let bins: Vec<PathBuf> = BINARIES.iter().map(|b| bin_path(b)).collect();
    let bin_dir = bins[0].parent().unwrap().display().to_string();
    let rootfs = rootfs().display().to_string();
    let mut lab = Lab::new(214);
    let mut up = Command::new(&lab.kelsonctl)
        .arg("lab")
        .arg("--lab-dir")
        .arg(lab.lab_dir())
        .arg("--cluster")
        .arg(&lab.cluster)
        .args(["up", "--rootfs", &rootfs, "--bin-dir", &bin_dir])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning kelsonctl lab up");
    let state_file = lab.lab_dir().join("state.json");
    // Wait (bounded) for the first machine to have an init recorded, then crash `up`.
    let id = wait_for(
        "a booting machine in state.json",
        Duration::from_secs(120),
        || {
            if let Ok(Some(status)) = up.try_wait() {
                return Ok(Err(format!("lab up exited early: {status}")));
            }
            let text = std::fs::read_to_string(&state_file).map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if v["machines"][0]["init"].is_object() {
                Ok(Ok(v["id"].as_str().unwrap_or_default().to_string()))
            } else {
                Err("no init yet".into())
            }
        },
    )
    .expect("lab up");
    up.kill().unwrap();
    up.wait().unwrap();
    assert!(
        Path::new(&format!("/run/netns/kl{id}-fab")).exists(),
        "the crashed up should have left its fabric namespace"
    );
    lab.ctl_ok(120, &["down"]);
    lab.down = true;
    assert_nothing_left(&id, &lab.lab_dir());
    assert!(!state_file.exists(), "state.json left after down");
}
