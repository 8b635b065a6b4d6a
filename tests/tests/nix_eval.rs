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

/// The module's `config` for a machine, evaluated with a stand-in for nixpkgs' `lib` and
/// `pkgs` (nixpkgs is not reachable here): enough to run the module's own logic — roles →
/// /etc files, units, targets, firewall, assertions — though not the NixOS module system's
/// merging and type checks, which only a real `nixos-rebuild`/VM test exercises.
const MODULE_EXPR: &str = r#"
{ repo, out }:
let
  lib = rec {
    mkEnableOption = d: { _option = d; };
    mkOption = a: a // { _option = true; };
    types = { package = "package"; attrsOf = t: "attrsOf"; anything = "anything"; str = "str"; bool = "bool"; };
    literalExpression = t: t;
    # The real mkIf is a lazy merge marker; for one module in isolation "content or nothing" is
    # what it amounts to.
    mkIf = cond: content: if cond then content else { };
    mkDefault = x: x;
    mapAttrs' = f: set: builtins.listToAttrs (map (n: f n set.${n}) (builtins.attrNames set));
    nameValuePair = name: value: { inherit name value; };
    listToAttrs = builtins.listToAttrs;
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
    escapeShellArg = s: "'${s}'";
    escapeShellArgs = xs: builtins.concatStringsSep " " (map escapeShellArg xs);
  };
  pkgs = {
    formats.toml = _: { generate = name: value: "/nix/store/eval-${name}"; };
    coreutils = "coreutils";
    findutils = "findutils";
  };
  cluster = builtins.fromTOML (builtins.readFile "${repo}/examples/cluster/three-zones.toml");
  eval = machine: secretsDir: (import "${repo}/nix/module.nix" {
    inherit lib pkgs;
    config = {
      services.kelson = { enable = true; package = "kelson"; inherit cluster machine secretsDir; openFirewall = true; };
      networking.hostName = machine;
    };
  }).config;
  ok = cfg: map (a: a.assertion) cfg.assertions;
in {
  cp = eval "cp-b" "/run/keys/kelson";
  worker = eval "worker-a" "/run/agenix/kelson";
  unknownMachine = ok (eval "cp-z" "/run/keys/kelson");
  secretsInStore = ok (eval "cp-a" "${builtins.storeDir}/abc-secrets");
}
"#;

#[test]
fn module_nix_derives_the_machine_from_the_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let v = eval_json(MODULE_EXPR, tmp.path());
    let keys = |x: &Value| -> Vec<String> {
        let mut k: Vec<String> = x.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };

    let cp = &v["cp"];
    assert_eq!(cp["assertions"][0]["assertion"], true);
    assert_eq!(cp["assertions"][1]["assertion"], true);
    let etc = keys(&cp["environment"]["etc"]);
    for f in [
        "kelson/kv.toml",
        "kelson/apiserver.toml",
        "kelson/speaker.toml",
        "kelson/scheduler.kubeconfig",
        "kelson/pki",
    ] {
        assert!(etc.contains(&f.to_string()), "{f} not in {etc:?}");
    }
    assert_eq!(
        cp["environment"]["etc"]["kelson/pki"]["source"],
        "/run/keys/kelson/pki"
    );
    let svc = &cp["systemd"]["services"];
    assert_eq!(
        svc["kelson-kv"]["wantedBy"],
        serde_json::json!(["kelson-control-plane.target"])
    );
    assert_eq!(
        svc["kelson-kubelet"]["wantedBy"],
        serde_json::json!(["kelson-node.target"])
    );
    assert_eq!(
        svc["kelson-speaker"]["requires"],
        serde_json::json!(["kelson-secrets.service"])
    );
    let script = svc["kelson-secrets"]["script"].as_str().unwrap();
    assert!(
        script.contains("pki/kv-server.key") && script.contains("pki/sa.key"),
        "{script}"
    );
    assert_eq!(
        cp["networking"]["firewall"]["allowedTCPPorts"],
        serde_json::json!([2379, 2380, 6443, 10250, 53])
    );
    assert_eq!(
        cp["systemd"]["targets"]["kelson-control-plane"]["wantedBy"],
        serde_json::json!(["multi-user.target"])
    );

    let w = &v["worker"];
    let etc = keys(&w["environment"]["etc"]);
    assert_eq!(
        etc,
        [
            "kelson/dns.kubeconfig",
            "kelson/dns.toml",
            "kelson/kubelet.kubeconfig",
            "kelson/kubelet.toml",
            "kelson/pki",
            "kelson/proxy.kubeconfig",
            "kelson/proxy.toml",
            "kelson/speaker.kubeconfig",
            "kelson/speaker.toml",
        ]
    );
    assert_eq!(
        w["environment"]["etc"]["kelson/pki"]["source"],
        "/run/agenix/kelson/pki"
    );
    assert_eq!(
        keys(&w["systemd"]["services"]),
        [
            "kelson-dns",
            "kelson-kubelet",
            "kelson-proxy",
            "kelson-secrets",
            "kelson-speaker"
        ]
    );
    assert_eq!(
        w["systemd"]["targets"]["kelson-control-plane"],
        serde_json::json!({})
    );
    assert_eq!(w["virtualisation"]["containerd"]["enable"], true);
    let script = w["systemd"]["services"]["kelson-secrets"]["script"]
        .as_str()
        .unwrap();
    assert!(!script.contains("kv-server.key"), "{script}");

    assert_eq!(
        v["unknownMachine"][0], false,
        "an unknown machine must fail an assertion"
    );
    assert_eq!(v["secretsInStore"], serde_json::json!([true, false]));
}
