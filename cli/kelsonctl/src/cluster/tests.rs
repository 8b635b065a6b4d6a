//! Unit tests: every `check` finding, and `render`'s roles, kv wiring, PKI and idempotence.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::configs::initial_cluster;
use super::render::render;
use super::spec::{check, ClusterSpec};
use super::*;

const EXAMPLE: &str = include_str!("../../../../examples/cluster/three-zones.toml");

fn example() -> ClusterSpec {
    ClusterSpec::from_toml(EXAMPLE, "three-zones.toml").unwrap()
}

/// The findings of a description derived from the example by `edit`, as `severity path: msg`.
fn findings(edit: impl FnOnce(&mut ClusterSpec)) -> Vec<String> {
    let mut spec = example();
    edit(&mut spec);
    check(&spec).iter().map(|d| d.to_string()).collect()
}

#[track_caller]
fn assert_finding(found: &[String], wanted: &str) {
    assert!(
        found.iter().any(|f| f == wanted),
        "wanted {wanted:?} among {found:#?}"
    );
}

#[test]
fn example_is_clean() {
    let spec = example();
    assert_eq!(check(&spec), vec![]);
    assert_eq!(spec.domain, "cluster.local");
    assert_eq!(spec.control_plane.len(), 3);
    assert_eq!(spec.workers.len(), 2);
}

#[test]
fn defaults_apply() {
    let spec = ClusterSpec::from_toml(
        r#"
name = "x"
zones = [{ name = "a" }]
control_plane = [{ name = "m", zone = "a", address = "10.0.0.1" }]
vip = { address = "10.0.0.100", interface = "eth0" }
"#,
        "min.toml",
    )
    .unwrap();
    assert_eq!(check(&spec), vec![]);
    assert_eq!(
        (
            spec.domain.as_str(),
            spec.pod_cidr.as_str(),
            spec.service_cidr.as_str()
        ),
        ("cluster.local", "10.244.0.0/16", "10.96.0.0/12")
    );
    assert_eq!(
        (
            spec.kv_client_port,
            spec.kv_peer_port,
            spec.apiserver_port,
            spec.node_cidr_mask
        ),
        (2379, 2380, 6443, 24)
    );
    assert_eq!(spec.region(), "x");
}

#[test]
fn unknown_keys_are_parse_errors_naming_the_key() {
    let err = ClusterSpec::from_toml(&format!("{EXAMPLE}\n[[workers]]\nname = \"w\"\nzone = \"a\"\naddress = \"192.168.10.30\"\nlabel = {{}}\n"), "f.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("f.toml") && err.contains("label"), "{err}");
    let err = ClusterSpec::from_toml("name = \"x\"\nzones = []\n", "g.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("control_plane"), "{err}");
}

#[test]
fn machine_errors_name_their_path() {
    let f = findings(|s| s.control_plane[1].zone = "d".into());
    assert_finding(&f, r#"error: control_plane[1].zone: unknown zone "d""#);

    let f = findings(|s| s.workers[1].name = "cp-a".into());
    assert_finding(
        &f,
        r#"error: workers[1].name: duplicate machine name "cp-a" (also control_plane[0])"#,
    );

    let f = findings(|s| s.workers[0].address = "192.168.10.11".into());
    assert_finding(
        &f,
        "error: workers[0].address: duplicate address 192.168.10.11 (also control_plane[0])",
    );

    let f = findings(|s| s.workers[0].address = "192.168.10.300".into());
    assert_finding(
        &f,
        r#"error: workers[0].address: "192.168.10.300" is not an IP address"#,
    );

    let f = findings(|s| s.workers[0].address = "192.168.20.99".into());
    assert_finding(
        &f,
        r#"error: workers[0].address: 192.168.20.99 is outside zone "a"'s subnet 192.168.10.0/24"#,
    );

    let f = findings(|s| s.workers[0].name = "Worker_A".into());
    assert_finding(
        &f,
        r#"error: workers[0].name: "Worker_A" is not a DNS label"#,
    );

    let f = findings(|s| s.workers[1].taints = vec!["a=b:Sometimes".into()]);
    assert!(
        f.iter()
            .any(|x| x.starts_with("error: workers[1].taints[0]: ") && x.contains("Sometimes")),
        "{f:#?}"
    );

    let f = findings(|s| {
        s.workers[0].labels.insert("a=b".into(), "c".into());
    });
    assert_finding(&f, r#"error: workers[0].labels: "a=b" is not a label key"#);
}

#[test]
fn control_plane_size() {
    let f = findings(|s| {
        s.control_plane.pop();
    });
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(f[0].starts_with("warning: control_plane: 2 control-plane machines"));
    // A warning alone is not an error.
    let mut spec = example();
    spec.control_plane.pop();
    assert!(!spec::has_errors(&check(&spec)));

    let f = findings(|s| s.control_plane.clear());
    assert_finding(
        &f,
        "error: control_plane: at least one control-plane machine is needed",
    );
}

#[test]
fn network_errors() {
    let f = findings(|s| s.pod_cidr = "10.244.0.0/33".into());
    assert!(
        f.iter().any(|x| x.starts_with("error: pod_cidr: ")),
        "{f:#?}"
    );

    let f = findings(|s| s.service_cidr = "10.96.0.1/12".into());
    assert_finding(
        &f,
        r#"error: service_cidr: "10.96.0.1/12" has host bits set (the network is 10.96.0.0/12)"#,
    );

    let f = findings(|s| s.service_cidr = "10.244.128.0/20".into());
    assert_finding(
        &f,
        "error: service_cidr: 10.244.128.0/20 overlaps pod_cidr 10.244.0.0/16",
    );

    let f = findings(|s| s.zones[2].subnet = Some("10.96.0.0/24".into()));
    assert_finding(
        &f,
        "error: zones[2].subnet: 10.96.0.0/24 overlaps service_cidr",
    );

    let f = findings(|s| s.node_cidr_mask = 12);
    assert_finding(
        &f,
        "error: node_cidr_mask: 12 must be between pod_cidr's prefix length 16 and 32",
    );

    let f = findings(|s| s.node_cidr_mask = 18);
    assert_finding(
        &f,
        "error: node_cidr_mask: pod_cidr 10.244.0.0/16 has room for 4 node CIDRs of /18, but there are 5 machines",
    );

    let f = findings(|s| {
        s.zones.push(spec::Zone {
            name: "a".into(),
            subnet: None,
        })
    });
    assert_finding(&f, r#"error: zones[3].name: duplicate zone "a""#);

    let f = findings(|s| s.apiserver_port = 2379);
    assert_finding(
        &f,
        "error: apiserver_port: port 2379 is also kv_client_port",
    );
}

#[test]
fn vip_errors() {
    let f = findings(|s| s.vip.address = "192.168.20.11".into());
    assert_finding(
        &f,
        "error: vip.address: 192.168.20.11 is the address of control_plane[1]",
    );

    let f = findings(|s| s.vip.address = "10.244.0.5".into());
    assert_finding(&f, "error: vip.address: 10.244.0.5 is inside pod_cidr");

    let f = findings(|s| s.vip.address = "172.16.0.1".into());
    assert!(
        f.iter().any(|x| x
            .starts_with("warning: vip.address: 172.16.0.1 is in no control-plane zone's subnet")),
        "{f:#?}"
    );

    let f = findings(|s| s.vip.address = "vip".into());
    assert_finding(&f, r#"error: vip.address: "vip" is not an IP address"#);
}

#[test]
fn pool_errors() {
    let f = findings(|s| s.lb_pools[1].zone = Some("z".into()));
    assert_finding(&f, r#"error: lb_pools[1].zone: unknown zone "z""#);

    let f = findings(|s| s.lb_pools[1].ranges = vec!["192.168.10.245-192.168.10.250".into()]);
    assert_finding(
        &f,
        "error: lb_pools[1].ranges[0]: overlaps lb_pools[0].cidr",
    );

    let f = findings(|s| s.lb_pools[0].cidr = Some("192.168.10.0/28".into()));
    assert_finding(
        &f,
        "error: lb_pools[0].cidr: contains control_plane[0]'s address 192.168.10.11",
    );

    let f = findings(|s| s.lb_pools[0].cidr = Some("192.168.10.96/28".into()));
    assert_finding(
        &f,
        "error: lb_pools[0].cidr: contains the VIP 192.168.10.100",
    );

    let f = findings(|s| s.lb_pools[0].cidr = Some("10.96.0.0/28".into()));
    assert_finding(&f, "error: lb_pools[0].cidr: overlaps service_cidr");

    let f = findings(|s| s.lb_pools[1].ranges = vec!["192.168.20.250-192.168.20.240".into()]);
    assert!(
        f.iter()
            .any(|x| x.starts_with("error: lb_pools[1].ranges[0]: ") && x.contains("after")),
        "{f:#?}"
    );

    let f = findings(|s| {
        s.lb_pools[1].ranges.clear();
    });
    assert_finding(&f, "error: lb_pools[1]: a pool needs a cidr or ranges");

    let f = findings(|s| s.lb_pools[1].name = "zone-a".into());
    assert_finding(&f, r#"error: lb_pools[1].name: duplicate pool "zone-a""#);
}

#[test]
fn check_command_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.toml");
    fs::write(&good, EXAMPLE).unwrap();
    assert_eq!(
        run(ClusterCommand::Check(CheckArgs { file: good })).unwrap(),
        0
    );
    let bad = tmp.path().join("bad.toml");
    fs::write(&bad, EXAMPLE.replace("zone = \"c\"", "zone = \"d\"")).unwrap();
    assert_eq!(
        run(ClusterCommand::Check(CheckArgs { file: bad.clone() })).unwrap(),
        1
    );
    // render refuses it too, before writing anything.
    let out = tmp.path().join("out");
    assert_eq!(
        run(ClusterCommand::Render(RenderArgs {
            file: bad,
            out: out.clone()
        }))
        .unwrap(),
        1
    );
    assert!(!out.exists());
    let missing = tmp.path().join("missing.toml");
    assert_eq!(
        run(ClusterCommand::Check(CheckArgs { file: missing })).unwrap(),
        1
    );
}

#[test]
fn initial_cluster_lists_every_member_in_order() {
    let spec = example();
    assert_eq!(
        initial_cluster(&spec),
        "cp-a=https://192.168.10.11:2380,cp-b=https://192.168.20.11:2380,cp-c=https://192.168.30.11:2380"
    );
    let mut v6 = spec.clone();
    v6.control_plane.truncate(1);
    v6.control_plane[0].address = "fd00::11".into();
    assert_eq!(initial_cluster(&v6), "cp-a=https://[fd00::11]:2380");
}

/// Every file under `dir` with its bytes and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let meta = fs::metadata(&p).unwrap();
                out.insert(p.clone(), (fs::read(&p).unwrap(), meta.modified().unwrap()));
            }
        }
    }
    out
}

fn toml_at(path: &Path) -> toml::Table {
    toml::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn render_roles_kv_wiring_and_idempotence() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let spec = example();
    let first = render(&spec, &out).unwrap();
    assert!(!first.changed.is_empty());

    let roles = |m: &str| fs::read_to_string(out.join(m).join("roles")).unwrap();
    for m in ["cp-a", "cp-b", "cp-c"] {
        assert_eq!(roles(m), "kv\ncontrol-plane\nnode\n", "{m}");
    }
    for m in ["worker-a", "worker-b"] {
        assert_eq!(roles(m), "node\n", "{m}");
    }
    let etc = |m: &str| out.join(m).join("etc/kelson");
    let mut tomls: Vec<String> = fs::read_dir(etc("worker-a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    tomls.sort();
    assert_eq!(
        tomls,
        ["dns.toml", "kubelet.toml", "proxy.toml", "speaker.toml"]
    );
    assert!(!out.join("worker-a/etc/kelson/pki/store-ca.crt").exists());
    assert!(!out.join("worker-a/etc/kelson/pki/sa.key").exists());

    let kv = toml_at(&etc("cp-b").join("kv.toml"));
    assert_eq!(kv["name"].as_str(), Some("cp-b"));
    assert_eq!(
        kv["initial-cluster"].as_str(),
        Some(initial_cluster(&spec).as_str())
    );
    assert_eq!(
        kv["initial-advertise-peer-urls"].as_str(),
        Some("https://192.168.20.11:2380")
    );
    let api = toml_at(&etc("cp-c").join("apiserver.toml"));
    assert_eq!(
        api["etcd-servers"].as_str(),
        Some("https://192.168.10.11:2379,https://192.168.20.11:2379,https://192.168.30.11:2379")
    );
    let kubelet = toml_at(&etc("worker-b").join("kubelet.toml"));
    assert_eq!(kubelet["zone"].as_str(), Some("b"));
    assert_eq!(kubelet["region"].as_str(), Some("lab-1"));
    assert_eq!(kubelet["node-ip"].as_str(), Some("192.168.20.21"));
    assert_eq!(
        kubelet["node-labels"].as_array().unwrap().len(),
        2,
        "{kubelet:?}"
    );
    let speaker_cp = toml_at(&etc("cp-a").join("speaker.toml"));
    assert_eq!(
        speaker_cp["vip"]["address"].as_str(),
        Some("192.168.10.100")
    );
    assert!(toml_at(&etc("worker-a").join("speaker.toml"))
        .get("vip")
        .is_none());

    // Kubeconfigs: node agents and the admin use the VIP, the control plane its own server.
    let kc = |p: PathBuf| fs::read_to_string(p).unwrap();
    assert!(kc(etc("worker-a").join("kubelet.kubeconfig"))
        .contains("server: https://192.168.10.100:6443"));
    assert!(kc(out.join("admin.kubeconfig")).contains("server: https://192.168.10.100:6443"));
    assert!(
        kc(etc("cp-b").join("scheduler.kubeconfig")).contains("server: https://192.168.20.11:6443")
    );
    assert!(
        kc(etc("cp-b").join("speaker.kubeconfig")).contains("server: https://192.168.20.11:6443")
    );

    // PKI: per-machine names, the VIP on API server certificates, two CAs.
    let info = |m: &str, f: &str| kelson_pki::cert_info(&etc(m).join("pki").join(f)).unwrap();
    let apisrv = info("cp-b", "apiserver.crt");
    for name in [
        "192.168.20.11",
        "192.168.10.100",
        "10.96.0.1",
        "kubernetes.default.svc.cluster.local",
        "cp-b",
    ] {
        assert!(
            apisrv.sans.contains(&name.to_string()),
            "{name} not in {:?}",
            apisrv.sans
        );
    }
    assert!(apisrv.issuer.contains("kelson-ca"), "{}", apisrv.issuer);
    let peer = info("cp-c", "kv-peer.crt");
    assert!(
        peer.sans.contains(&"192.168.30.11".to_string()),
        "{:?}",
        peer.sans
    );
    assert!(peer.issuer.contains("kelson-store-ca"), "{}", peer.issuer);
    assert!(info("cp-a", "apiserver-etcd-client.crt")
        .issuer
        .contains("kelson-store-ca"));
    let serving = info("worker-b", "kubelet-serving.crt");
    assert!(serving.sans.contains(&"192.168.20.21".to_string()));
    assert_eq!(
        fs::read(etc("cp-a").join("pki/sa.key")).unwrap(),
        fs::read(etc("cp-c").join("pki/sa.key")).unwrap(),
        "all API servers sign with one key"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &Path| fs::metadata(f).unwrap().permissions().mode() & 0o777;
    for (f, m) in [
        (etc("cp-a").join("pki/kv-peer.key"), 0o640),
        (etc("cp-a").join("pki/sa.key"), 0o640),
        (etc("cp-a").join("scheduler.kubeconfig"), 0o640),
        (etc("cp-a").join("pki/scheduler.key"), 0o600),
        (etc("worker-a").join("kubelet.kubeconfig"), 0o600),
        (etc("worker-a").join("pki/kubelet-serving.key"), 0o600),
        (etc("worker-a").join("pki/ca.crt"), 0o644),
        (out.join("_ca/cluster/ca.key"), 0o600),
        (out.join("admin.kubeconfig"), 0o600),
    ] {
        assert_eq!(mode(&f), m, "{}", f.display());
    }

    // A second render changes nothing, byte for byte (and not even a modification time).
    let before = snapshot(&out);
    let second = render(&spec, &out).unwrap();
    assert_eq!(second.changed, Vec::<PathBuf>::new());
    assert_eq!(snapshot(&out), before);

    // A moved worker gets new certificates; nobody else's change.
    let mut moved = spec.clone();
    moved.workers[0].address = "192.168.10.22".into();
    let third = render(&moved, &out).unwrap();
    let changed: Vec<String> = third
        .changed
        .iter()
        .map(|p| p.strip_prefix(&out).unwrap().display().to_string())
        .collect();
    assert!(
        changed.contains(&"worker-a/etc/kelson/pki/kubelet-serving.crt".to_string()),
        "{changed:#?}"
    );
    assert!(
        changed
            .iter()
            .all(|c| c.starts_with("worker-a/") || c.starts_with("cp-")),
        "{changed:#?}"
    );
    // Control-plane machines only see the ccm inventory change.
    assert!(
        changed
            .iter()
            .filter(|c| c.starts_with("cp-"))
            .all(|c| c.ends_with("cloud-controller-manager.toml")),
        "{changed:#?}"
    );
    assert_eq!(
        fs::read(etc("cp-a").join("pki/apiserver.crt")).unwrap(),
        before[&etc("cp-a").join("pki/apiserver.crt")].0
    );

    // A control-plane machine demoted to a worker loses its control-plane configs.
    let mut demoted = moved.clone();
    let cp_c = demoted.control_plane.pop().unwrap();
    demoted.control_plane.push(demoted.workers.pop().unwrap()); // worker-b promoted: 3 again
    demoted.workers.push(cp_c);
    let fourth = render(&demoted, &out).unwrap();
    let removed: BTreeSet<String> = fourth
        .removed
        .iter()
        .map(|p| p.strip_prefix(&out).unwrap().display().to_string())
        .collect();
    let want: BTreeSet<String> = [
        "kv.toml",
        "apiserver.toml",
        "scheduler.toml",
        "controller-manager.toml",
        "cloud-controller-manager.toml",
        "scheduler.kubeconfig",
        "controller-manager.kubeconfig",
        "cloud-controller-manager.kubeconfig",
    ]
    .iter()
    .map(|f| format!("cp-c/etc/kelson/{f}"))
    .collect();
    assert_eq!(removed, want);
    assert_eq!(roles("cp-c"), "node\n");
    assert_eq!(roles("worker-b"), "kv\ncontrol-plane\nnode\n");
    assert!(etc("worker-b").join("kv.toml").is_file());
    assert!(etc("worker-b").join("pki/kv-peer.crt").is_file());
}

/// target/debug, where `cargo build -p kelson-<daemon>` puts the daemons.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Every rendered TOML loads in its daemon (`--print-config` deserializes with
/// deny_unknown_fields and validates), and the daemon runs with what was written.
#[test]
fn rendered_configs_load_in_every_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    render(&example(), &out).unwrap();
    let mut checked = 0;
    for m in ["cp-a", "worker-b"] {
        let etc = out.join(m).join("etc/kelson");
        for e in fs::read_dir(&etc).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let daemon = if name == "speaker" {
                "cloud-controller-manager"
            } else {
                &name
            };
            let bin = bin_dir().join(format!("kelson-{daemon}"));
            assert!(
                bin.is_file(),
                "{} missing: cargo build -p kelson-{daemon}",
                bin.display()
            );
            let res = Command::new(&bin)
                .arg("--config")
                .arg(&path)
                .arg("--print-config")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&res.stdout);
            assert!(
                res.status.success(),
                "kelson-{daemon} --config {} --print-config failed: {stdout}{}",
                path.display(),
                String::from_utf8_lossy(&res.stderr)
            );
            let written = toml_at(&path);
            let effective: toml::Table = toml::from_str(&stdout).unwrap();
            for (k, v) in &written {
                assert_eq!(effective.get(k), Some(v), "{m} kelson-{daemon}: key {k}");
            }
            checked += 1;
        }
    }
    // cp-a: 9 (kv, 4 control plane, 4 node); worker-b: 4.
    assert_eq!(checked, 13);
}

/// Every shipped example checks clean and renders.
#[test]
fn every_example_checks_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster");
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let spec = ClusterSpec::load(&path).unwrap();
        assert_eq!(check(&spec), vec![], "{}", path.display());
        let tmp = tempfile::tempdir().unwrap();
        render(&spec, tmp.path()).unwrap();
        n += 1;
    }
    assert!(n >= 2, "examples missing in {}", dir.display());
}
