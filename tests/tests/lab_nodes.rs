//! Issue 9's `remove-node.yml` and `add-node.yml` on a control-plane machine, in the lab: three
//! control-plane machines (systemd-nspawn, zones a/b/c, provisioned by `lab up` with
//! `ansible/site.yml` over ssh, as in tests/tests/lab.rs; no workers, so it stays fast), then
//!
//! 1. a ConfigMap and a raw store key are written;
//! 2. `remove-node.yml -e kelson_node=M` for a machine M whose kv member does not lead → the
//!    store lists two members, M's kv and API server are stopped and disabled, and the API
//!    still serves (a write and a read through the other machines' API servers);
//! 3. `add-node.yml -e kelson_node=M` (the same machine; the play wipes the removed member's
//!    store data itself, as for a replacement machine) → three members, all started, one agreed
//!    leader; M's own member serves the key written before (a serializable read: from its
//!    local copy), M's API server is ready and serves both ConfigMaps;
//! 4. M's kv member restarts cleanly (the joined member's drop-in keeps it joining as
//!    `existing`: its random member ID is not the one its name derives), and `add-node.yml`
//!    a second time changes nothing;
//! 5. `lab down` leaves nothing behind.
//!
//! Needs what lab.rs needs: root, systemd-nspawn, debootstrap and a Debian mirror for the cached
//! rootfs, ansible-core, etcdctl, kubectl and every Kelson binary in target/debug. A missing
//! prerequisite fails the test saying what to do.

mod common;

use std::time::{Duration, Instant};

use common::lab::{copy_build, require_ansible_lab, text, wait_for, Lab};

/// The second octet of this test's subnets: 10.219.{1,2,3}.0/24 and the VIP's 10.219.100.0/24
/// are this test's only (lab.rs uses 213, 214 and 218, lab_workers.rs 216; the lab refuses
/// subnets that are already routed, so the tests can run side by side).
const NET: u8 = 219;

/// (machine, zone, host part of the address).
const MACHINES: &[(&str, &str, &str)] = &[
    ("cp-a", "a", "1.11"),
    ("cp-b", "b", "2.11"),
    ("cp-c", "c", "3.11"),
];

fn addr(i: usize) -> String {
    format!("10.{NET}.{}", MACHINES[i].2)
}

fn cluster_toml() -> String {
    let mut s = format!(
        "name = \"lab\"\n\n[vip]\naddress = \"10.{NET}.100.100\"\ninterface = \"vip0\"\n\n"
    );
    for (n, z) in ["a", "b", "c"].iter().enumerate() {
        s.push_str(&format!(
            "[[zones]]\nname = \"{z}\"\nsubnet = \"10.{NET}.{}.0/24\"\n\n",
            n + 1
        ));
    }
    for (i, (name, zone, _)) in MACHINES.iter().enumerate() {
        s.push_str(&format!(
            "[[control_plane]]\nname = \"{name}\"\nzone = \"{zone}\"\naddress = \"{}\"\n\n",
            addr(i)
        ));
    }
    s
}

fn endpoint(a: &str) -> String {
    format!("https://{a}:2379")
}

/// `etcdctl ... --write-out=json`, parsed.
fn etcdctl_json(lab: &Lab, endpoints: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut all = args.to_vec();
    all.push("--write-out=json");
    let out = lab.etcdctl(endpoints, "5s", &all);
    if !out.status.success() {
        return Err(text(&out));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))
}

/// The member list through `endpoints`: (id, name — empty until the member started, peer URLs).
fn members(lab: &Lab, endpoints: &str) -> Result<Vec<(u64, String, Vec<String>)>, String> {
    let v = etcdctl_json(lab, endpoints, &["member", "list"])?;
    let list = v["members"]
        .as_array()
        .ok_or_else(|| format!("no members: {v}"))?;
    Ok(list
        .iter()
        .map(|m| {
            (
                m["ID"].as_u64().unwrap_or(0),
                m["name"].as_str().unwrap_or("").to_string(),
                m["peerURLs"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|u| u.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
        .collect())
}

/// (member id, leader id) of one member.
fn status(lab: &Lab, a: &str) -> Result<(u64, u64), String> {
    let v = etcdctl_json(lab, &endpoint(a), &["endpoint", "status"])?;
    let s = &v[0]["Status"];
    Ok((
        s["header"]["member_id"].as_u64().ok_or("no member_id")?,
        s["leader"].as_u64().ok_or("no leader")?,
    ))
}

/// Every member at `addrs` answers and names the same leader, which is one of them.
fn healthy(lab: &Lab, addrs: &[String]) -> Result<Vec<(u64, u64)>, String> {
    let ss: Vec<(u64, u64)> = addrs
        .iter()
        .map(|a| status(lab, a).map_err(|e| format!("{a}: {e}")))
        .collect::<Result<_, _>>()?;
    let leader = ss[0].1;
    if leader == 0 || ss.iter().any(|s| s.1 != leader) || !ss.iter().any(|s| s.0 == leader) {
        return Err(format!("no agreed leader among the members: {ss:x?}"));
    }
    Ok(ss)
}

/// The recap of `host` in an ansible-playbook output: (changed, failed, unreachable).
fn recap(out: &str, host: &str) -> (u32, u32, u32) {
    let r = common::ansible::recap(out, host);
    (r["changed"], r["failed"], r["unreachable"])
}

fn unit_states(lab: &Lab, machine: &str, verb: &str) -> Vec<String> {
    // is-active/is-enabled exit non-zero for a stopped/disabled unit: read stdout regardless.
    let out = lab.ctl(
        30,
        &[
            "exec",
            machine,
            "--",
            "systemctl",
            verb,
            "kelson-kv",
            "kelson-apiserver",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn configmap_data(lab: &Lab, server: &str, name: &str) -> Result<String, String> {
    let out = lab.kubectl_at(
        Some(server),
        "10s",
        &["get", "configmap", name, "-o", "jsonpath={.data.v}"],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(text(&out))
    }
}

#[test]
fn control_plane_machine_is_removed_and_added_again_with_the_playbooks() {
    let started = Instant::now();
    require_ansible_lab();

    // A snapshot of the build: target/debug is shared and may be rebuilt meanwhile, and
    // add-node.yml's common role must find the very files site.yml installed.
    let build = tempfile::Builder::new()
        .prefix("kelson-lab-nodes-build-")
        .tempdir()
        .expect("tempdir");
    copy_build(build.path());

    let mut lab = Lab::new("kelson-lab-nodes-", &cluster_toml());
    let t = Instant::now();
    lab.up_with_ansible(1200, build.path());
    eprintln!("lab-nodes: up (site.yml included) in {:?}", t.elapsed());
    let id = lab.id();
    let all: Vec<String> = (0..MACHINES.len()).map(addr).collect();
    let statuses = wait_for("a healthy 3-member store", Duration::from_secs(90), || {
        healthy(&lab, &all)
    });

    // The machine to remove: not cp-a (the admin kubeconfig's server) and not the kv leader
    // (removing a leader works too, but the test is about membership, not elections).
    let leader = statuses[0].1;
    let victim_i = (1..MACHINES.len())
        .find(|&i| statuses[i].0 != leader)
        .expect("two non-leaders among three members");
    let victim = MACHINES[victim_i].0;
    let victim_addr = addr(victim_i);
    let survivors: Vec<String> = (0..MACHINES.len())
        .filter(|&i| i != victim_i)
        .map(addr)
        .collect();
    let survivor_eps = survivors
        .iter()
        .map(|a| endpoint(a))
        .collect::<Vec<_>>()
        .join(",");
    eprintln!("lab-nodes: removing {victim} ({victim_addr})");

    // Written before: read back through the re-added machine at the end.
    lab.kubectl_ok(&[
        "create",
        "configmap",
        "before",
        "--from-literal=v=written-before",
    ]);
    let put = lab.etcdctl(&survivor_eps, "5s", &["put", "/lab-nodes/before", "kept"]);
    assert!(put.status.success(), "etcdctl put: {}", text(&put));

    // Remove.
    let t = Instant::now();
    let out = lab.ctl(
        600,
        &[
            "ansible",
            "remove-node.yml",
            "-e",
            &format!("kelson_node={victim}"),
        ],
    );
    let log = text(&out);
    assert!(out.status.success(), "remove-node.yml failed:\n{log}");
    eprintln!("lab-nodes: remove-node.yml in {:?}", t.elapsed());
    let (changed, failed, unreachable) = recap(&log, victim);
    assert!(
        changed > 0 && failed == 0 && unreachable == 0,
        "{victim}: remove-node.yml recap changed={changed} failed={failed} unreachable={unreachable}:\n{log}"
    );
    let left = members(&lab, &survivor_eps).expect("member list after remove-node");
    assert_eq!(left.len(), 2, "members after removing {victim}: {left:?}");
    assert!(
        left.iter().all(|m| m.1 != victim),
        "{victim} is still a member: {left:?}"
    );
    assert_eq!(
        unit_states(&lab, victim, "is-active"),
        ["inactive", "inactive"],
        "{victim}'s kv and API server must be stopped"
    );
    assert_eq!(
        unit_states(&lab, victim, "is-enabled"),
        ["disabled", "disabled"],
        "{victim}'s kv and API server must be disabled"
    );
    wait_for("a healthy 2-member store", Duration::from_secs(30), || {
        healthy(&lab, &survivors)
    });
    // The API still serves through the other machines.
    for a in &survivors {
        let name = format!("during-{}", a.replace('.', "-"));
        wait_for(
            &format!("a write through {a}"),
            Duration::from_secs(30),
            || {
                let out = lab.kubectl_at(
                    Some(a),
                    "10s",
                    &[
                        "create",
                        "configmap",
                        &name,
                        "--from-literal=v=written-during",
                    ],
                );
                if out.status.success() || text(&out).contains("AlreadyExists") {
                    Ok(())
                } else {
                    Err(text(&out))
                }
            },
        );
        assert_eq!(
            configmap_data(&lab, a, "before").expect("read through a survivor"),
            "written-before"
        );
    }

    // Add the same machine again.
    let t = Instant::now();
    let out = lab.ctl(
        900,
        &[
            "ansible",
            "add-node.yml",
            "-e",
            &format!("kelson_node={victim}"),
        ],
    );
    let log = text(&out);
    assert!(out.status.success(), "add-node.yml failed:\n{log}");
    eprintln!("lab-nodes: add-node.yml in {:?}", t.elapsed());
    let (changed, failed, unreachable) = recap(&log, victim);
    assert!(
        changed > 0 && failed == 0 && unreachable == 0,
        "{victim}: add-node.yml recap changed={changed} failed={failed} unreachable={unreachable}:\n{log}"
    );
    let back = wait_for("three started members", Duration::from_secs(60), || {
        let ms = members(&lab, &survivor_eps)?;
        if ms.len() == 3 && ms.iter().all(|m| !m.1.is_empty()) {
            Ok(ms)
        } else {
            Err(format!("{ms:?}"))
        }
    });
    let joined = back
        .iter()
        .find(|m| m.1 == victim)
        .unwrap_or_else(|| panic!("{victim} is not among the members: {back:?}"));
    assert_eq!(
        joined.2,
        [format!("https://{victim_addr}:2380")],
        "{back:?}"
    );
    wait_for("a healthy 3-member store", Duration::from_secs(60), || {
        healthy(&lab, &all)
    });
    // The key written before, from the re-added member's own copy (a serializable read is
    // answered locally, without the leader).
    let got = wait_for(
        "the earlier key on the re-added member",
        Duration::from_secs(30),
        || {
            let v = etcdctl_json(
                &lab,
                &endpoint(&victim_addr),
                &["get", "/lab-nodes/before", "--consistency=s"],
            )?;
            v["kvs"][0]["value"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("no value yet: {v}"))
        },
    );
    // etcdctl's JSON carries values base64-encoded.
    assert_eq!(got, "a2VwdA==", "/lab-nodes/before on {victim}");
    assert_eq!(
        unit_states(&lab, victim, "is-active"),
        ["active", "active"],
        "{victim}'s kv and API server must run"
    );
    assert_eq!(
        unit_states(&lab, victim, "is-enabled"),
        ["enabled", "enabled"],
        "{victim}'s kv and API server must be enabled again"
    );
    let ready = lab.kubectl_at(Some(&victim_addr), "10s", &["get", "--raw", "/readyz"]);
    assert!(
        ready.status.success(),
        "{victim}'s API server: {}",
        text(&ready)
    );
    assert_eq!(
        configmap_data(&lab, &victim_addr, "before").expect("read through the re-added machine"),
        "written-before"
    );
    let during = format!("during-{}", survivors[0].replace('.', "-"));
    assert_eq!(
        configmap_data(&lab, &victim_addr, &during).expect("read through the re-added machine"),
        "written-during"
    );

    // The joined member survives a restart (it must not start as a member of a "new" cluster,
    // whose derived member ID it does not have).
    lab.ctl_ok(
        60,
        &["exec", victim, "--", "systemctl", "restart", "kelson-kv"],
    );
    wait_for(
        "a healthy 3-member store after restarting the joined member",
        Duration::from_secs(60),
        || healthy(&lab, &all),
    );

    // Idempotent: a second add-node.yml changes nothing.
    let t = Instant::now();
    let out = lab.ctl(
        600,
        &[
            "ansible",
            "add-node.yml",
            "-e",
            &format!("kelson_node={victim}"),
        ],
    );
    let log = text(&out);
    assert!(out.status.success(), "add-node.yml (again) failed:\n{log}");
    assert_eq!(
        recap(&log, victim),
        (0, 0, 0),
        "the second add-node.yml changed something: {:#?}",
        common::ansible::changed_tasks(&log)
    );
    eprintln!(
        "lab-nodes: second add-node.yml: changed=0 in {:?}",
        t.elapsed()
    );
    assert_eq!(members(&lab, &survivor_eps).expect("member list").len(), 3);

    lab.down_and_check(&id);
    eprintln!("lab-nodes: all checks done after {:?}", started.elapsed());
}
