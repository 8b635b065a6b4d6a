//! The Nix path, checked without nixpkgs: every file under nix/ parses, and the pure functions
//! of nix/lib.nix (cluster description → roles, kv initial cluster, daemon configurations)
//! evaluate to exactly what `kelsonctl cluster render` writes for the same cluster.toml — the
//! NixOS module and the kelsonctl/Ansible path cannot drift apart.
//!
//! Needs `nix-instantiate` (Debian's nix-bin, see scripts/setup.sh) and the kelsonctl binary
//! (`cargo build -p kelsonctl`); fails with a clear message when either is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs nix-instantiate; panics with a clear message if it is not installed.
fn nix_instantiate(args: &[&str]) -> std::process::Output {
    match Command::new("nix-instantiate").args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "nix-instantiate not found: install nix-bin (`apt-get install -y nix-bin`, \
             scripts/setup.sh does) to run the Nix evaluation tests"
        ),
        Err(e) => panic!("running nix-instantiate: {e}"),
    }
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            nix_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "nix") {
            out.push(p);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let mut files = Vec::new();
    nix_files(&repo().join("nix"), &mut files);
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "flake.nix",
        "module.nix",
        "lib.nix",
        "package.nix",
        "test.nix",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "nix/{wanted} missing: {names:?}"
        );
    }
    for f in &files {
        let out = nix_instantiate(&["--parse", f.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "nix-instantiate --parse {}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Evaluates `expr` (a function of `repo` and `out`) strictly to JSON.
fn eval_json(expr: &str, out: &Path) -> Value {
    let res = nix_instantiate(&[
        "--eval",
        "--strict",
        "--json",
        "--argstr",
        "repo",
        repo().to_str().unwrap(),
        "--argstr",
        "out",
        out.to_str().unwrap(),
        "-E",
        expr,
    ]);
    assert!(
        res.status.success(),
        "nix-instantiate --eval failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    serde_json::from_slice(&res.stdout).unwrap()
}

const EXPR: &str = r#"
{ repo, out }:
let
  lib = import "${repo}/nix/lib.nix";
  raw = builtins.fromTOML (builtins.readFile "${repo}/examples/cluster/three-zones.toml");
  c = lib.withDefaults raw;
  nix = lib.render raw;
in {
  inherit nix;
  initialCluster = lib.initialCluster c;
  etcdServers = lib.etcdServers c;
  units = builtins.listToAttrs (map (n: { name = n; value = lib.units c n; }) (lib.machineNames c));
  ports = builtins.listToAttrs (map (n: { name = n; value = lib.ports c n; }) (lib.machineNames c));
  # What kelsonctl wrote, read back through Nix's own TOML parser.
  rendered = builtins.mapAttrs (m: v:
    builtins.mapAttrs (d: _: builtins.fromTOML (builtins.readFile "${out}/${m}/etc/kelson/${d}.toml")) v.configs
  ) nix;
}
"#;

#[test]
fn lib_nix_matches_kelsonctl_render() {
    let kelsonctl = kelson_testsupport::bin_path("kelsonctl");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let res = Command::new(&kelsonctl)
        .args(["cluster", "render"])
        .arg(repo().join("examples/cluster/three-zones.toml"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "kelsonctl cluster render: {}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    let v = eval_json(EXPR, &out);

    // The kv members and their peer URLs, in file order.
    let ic = "cp-a=https://192.168.10.11:2380,cp-b=https://192.168.20.11:2380,cp-c=https://192.168.30.11:2380";
    assert_eq!(v["initialCluster"], ic);
    assert_eq!(
        v["etcdServers"],
        "https://192.168.10.11:2379,https://192.168.20.11:2379,https://192.168.30.11:2379"
    );

    // Roles per machine, from Nix and from the rendered `roles` files.
    let nix = v["nix"].as_object().unwrap();
    let mut machines: Vec<&String> = nix.keys().collect();
    machines.sort();
    assert_eq!(machines, ["cp-a", "cp-b", "cp-c", "worker-a", "worker-b"]);
    for (m, want) in [
        ("cp-a", &["kv", "control-plane", "node"][..]),
        ("cp-b", &["kv", "control-plane", "node"][..]),
        ("cp-c", &["kv", "control-plane", "node"][..]),
        ("worker-a", &["node"][..]),
        ("worker-b", &["node"][..]),
    ] {
        let nix_roles: Vec<&str> = nix[m]["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(nix_roles, want, "{m}: Nix roles");
        let file = std::fs::read_to_string(out.join(m).join("roles")).unwrap();
        let rendered: Vec<&str> = file.lines().collect();
        assert_eq!(rendered, want, "{m}: rendered roles");
        assert_eq!(
            nix[m]["configs"]["kv"]["initial-cluster"]
                .as_str()
                .is_some(),
            m.starts_with("cp-"),
            "{m}: a kv config exactly on control-plane machines"
        );
        if m.starts_with("cp-") {
            assert_eq!(nix[m]["configs"]["kv"]["initial-cluster"], ic, "{m}");
            assert_eq!(nix[m]["configs"]["kv"]["name"], m, "{m}");
        }
    }

    // The same daemon configurations, file for file: the set of TOML files kelsonctl wrote
    // equals the set Nix declares, and every table is equal.
    for m in &machines {
        let mut files: Vec<String> = std::fs::read_dir(out.join(m).join("etc/kelson"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|n| n.strip_suffix(".toml").map(str::to_string))
            .collect();
        files.sort();
        let nix_cfgs = nix[m.as_str()]["configs"].as_object().unwrap();
        let mut declared: Vec<String> = nix_cfgs.keys().cloned().collect();
        declared.sort();
        assert_eq!(files, declared, "{m}: configuration files");
        for (d, want) in nix_cfgs {
            let got = &v["rendered"][m.as_str()][d.as_str()];
            assert_eq!(
                got, want,
                "{m}/{d}.toml: kelsonctl (left) and nix/lib.nix (right) disagree"
            );
        }
    }

    // The module's units and firewall ports follow the roles.
    let units: BTreeMap<String, Vec<String>> = serde_json::from_value(v["units"].clone()).unwrap();
    assert_eq!(units["worker-a"].len(), 4, "{units:?}");
    assert!(units["cp-b"].contains(&"kelson-kv.service".to_string()));
    assert!(units["cp-b"].contains(&"kelson-speaker.service".to_string()));
    assert!(!units["worker-b"].contains(&"kelson-apiserver.service".to_string()));
    for (m, us) in &units {
        for u in us {
            assert!(
                repo().join("systemd").join(u).is_file(),
                "{m}: unit {u} is not in systemd/"
            );
        }
    }
    assert_eq!(
        v["ports"]["cp-a"],
        serde_json::json!([2379, 2380, 6443, 10250, 53])
    );
    assert_eq!(v["ports"]["worker-b"], serde_json::json!([10250, 53]));
}

#[test]
fn lib_nix_reports_an_unknown_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let res = nix_instantiate(&[
        "--eval",
        "--strict",
        "--argstr",
        "repo",
        repo().to_str().unwrap(),
        "--argstr",
        "out",
        tmp.path().to_str().unwrap(),
        "-E",
        r#"{ repo, out }: let lib = import "${repo}/nix/lib.nix"; c = lib.withDefaults (builtins.fromTOML (builtins.readFile "${repo}/examples/cluster/three-zones.toml")); in lib.roles c "cp-z""#,
    ]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("\"cp-z\" is not in the cluster description"),
        "{err}"
    );
}
