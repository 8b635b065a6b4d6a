//! `kelsonctl init`: configuration and PKI for an all-in-one machine run by systemd.
//!
//! Writes what the installed units (`systemd/*.service`, `kelsonctl install`) read:
//!
//! - `<config-dir>/pki/`: the cluster CA, the store's own CA and the store's certificates
//!   (`kelson_pki::init_cluster_pki`; kelson-kv trusts only the store CA, CIS 2.7),
//!   the API server's serving, store-client and admin certificates (`up::ensure_apiserver_pki`),
//!   the kubelet's (`up::ensure_node_kubeconfig`), one client certificate per other component
//!   (`system:kube-scheduler`, `system:kube-controller-manager`,
//!   `system:cloud-controller-manager`, `system:kube-proxy`, and
//!   kelson-dns as the `kube-system/kube-dns` service account the bootstrap RBAC policy binds),
//!   and what [`crate::clusterfiles`] keeps for any control plane (the service-account signing
//!   key, the Secrets encryption config, the audit policy, the API server's kubelet client
//!   certificate) plus the kubelet's serving certificate. Existing valid files are kept,
//!   and keys are never regenerated: a second `init` changes nothing a running cluster relies on.
//! - `<config-dir>/<component>.kubeconfig` for every API client, and one TOML per daemon
//!   (`kv.toml`, `apiserver.toml`, `scheduler.toml`, `controller-manager.toml`, `kubelet.toml`,
//!   `proxy.toml`, `dns.toml`, and `cloud-controller-manager.toml` for the optional
//!   `kelson-cloud-controller-manager.service`) whose keys are the daemons' flag names.
//! - `<data-dir>/<component>` state directories, as the units' `StateDirectory=` would create them.
//!
//! Permissions follow who reads a file: the control-plane daemons and kelson-dns run as the
//! unprivileged `kelson` user, the kubelet and kelson-proxy as root. A file only root needs is
//! 0600 root:root; one a `kelson` daemon reads is 0640 root:kelson (the service user can read
//! but not change it); certificates are public (0644). The CA key and the admin credentials
//! stay root-only.
//!
//! Ports are the upstream defaults on loopback (store 2379/2380, API server 6443 on all
//! addresses); `--advertise-address` adds the machine's address to the serving certificates
//! and is where kelson-dns listens for pods.

use std::fs;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use kelson_pki::{CertRequest, PkiPaths, Usage};
use nix::unistd::{Gid, Uid};
use toml::{Table, Value};

use crate::clusterfiles::{self, ControlPlaneFiles};
use crate::up;

/// `kelsonctl init` flags.
#[derive(Debug, Args, Clone)]
pub struct InitArgs {
    /// Configuration directory (the units read /etc/kelson/<component>.toml).
    #[arg(long, default_value = "/etc/kelson")]
    pub config_dir: PathBuf,
    /// State directory (the units' StateDirectory= is /var/lib/kelson/<component>).
    #[arg(long, default_value = "/var/lib/kelson")]
    pub data_dir: PathBuf,
    /// Node name of this machine (default: the host name, lower-cased).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The machine's address: added to the serving certificates; kelson-dns serves pods on it.
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    /// The service user the unprivileged daemons run as (User= in the units).
    #[arg(long, default_value = "kelson")]
    pub service_user: String,
}

/// Upstream's default ports.
pub const KV_CLIENT_PORT: u16 = 2379;
pub const KV_PEER_PORT: u16 = 2380;
pub const APISERVER_PORT: u16 = 6443;
/// The service network (first address is the `kubernetes` service, .10 cluster DNS by habit).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// Who may read a generated file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// 0600 root:root.
    Root,
    /// 0640 root:<service group>: read by a daemon running as the service user.
    Service,
    /// 0644 root:root: certificates.
    Public,
}

/// The owner of the service user, resolved once.
#[derive(Debug, Clone, Copy)]
struct Owners {
    service_gid: Gid,
    service_uid: Uid,
}

impl Owners {
    fn lookup(user: &str) -> anyhow::Result<Owners> {
        let u = nix::unistd::User::from_name(user)
            .with_context(|| format!("looking up user {user}"))?
            .with_context(|| {
                format!(
                    "user {user:?} does not exist: run `kelsonctl install` first (its systemd-sysusers step creates it)"
                )
            })?;
        Ok(Owners {
            service_gid: u.gid,
            service_uid: u.uid,
        })
    }

    fn apply(&self, path: &Path, access: Access) -> anyhow::Result<()> {
        let (gid, mode) = match access {
            Access::Root => (Gid::from_raw(0), 0o600),
            Access::Service => (self.service_gid, 0o640),
            Access::Public => (Gid::from_raw(0), 0o644),
        };
        nix::unistd::chown(path, Some(Uid::from_raw(0)), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))
    }

    fn dir(
        &self,
        path: &Path,
        owner_service: bool,
        group_service: bool,
        mode: u32,
    ) -> anyhow::Result<()> {
        fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let uid = if owner_service {
            self.service_uid
        } else {
            Uid::from_raw(0)
        };
        let gid = if group_service || owner_service {
            self.service_gid
        } else {
            Gid::from_raw(0)
        };
        nix::unistd::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))
    }
}

/// Every file `init` produced, with who may read it (for the report and the tests).
#[derive(Debug, Default)]
pub struct InitResult {
    pub files: Vec<(PathBuf, Access)>,
    /// The daemon configuration files by component (`kv` → `<config-dir>/kv.toml`).
    pub configs: Vec<(&'static str, PathBuf)>,
    pub admin_kubeconfig: PathBuf,
}

/// A component's API client identity.
struct ClientId {
    /// File base name under pki/ and of the kubeconfig.
    base: &'static str,
    cn: &'static str,
    org: Option<&'static str>,
    access: Access,
}

/// Client identities of the API clients other than the kubelet (which `up` already handles).
const CLIENTS: &[ClientId] = &[
    ClientId {
        base: "scheduler",
        cn: "system:kube-scheduler",
        org: None,
        access: Access::Service,
    },
    // The controller manager runs every controller under its own identity (it has no
    // per-controller service-account credentials yet), and those controllers write every
    // workload resource; the bootstrap `system:kube-controller-manager` role (upstream's, meant
    // for --use-service-account-credentials) cannot. So it is in system:masters for now; the CN
    // still names it in audit records.
    ClientId {
        base: "controller-manager",
        cn: "system:kube-controller-manager",
        org: Some("system:masters"),
        access: Access::Service,
    },
    // No bootstrap role names the cloud controller manager yet (upstream leaves it to the
    // provider's manifests); it writes Node and Service status, so system:masters for now.
    ClientId {
        base: "cloud-controller-manager",
        cn: "system:cloud-controller-manager",
        org: Some("system:masters"),
        access: Access::Service,
    },
    ClientId {
        base: "proxy",
        cn: "system:kube-proxy",
        org: None,
        access: Access::Root,
    },
    // RBAC binds system:kube-dns to the kube-system/kube-dns service account; a certificate
    // with that account's user name and groups is that account.
    ClientId {
        base: "dns",
        cn: "system:serviceaccount:kube-system:kube-dns",
        org: Some("system:serviceaccounts"),
        access: Access::Service,
    },
];

/// Issues `<base>.crt/.key` for a client identity unless a valid one with this subject exists.
fn ensure_client_cert(pki: &PkiPaths, id: &ClientId) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (
        pki.dir.join(format!("{}.crt", id.base)),
        pki.dir.join(format!("{}.key", id.base)),
    );
    let keep = kelson_pki::cert_info(&cert).ok().is_some_and(|info| {
        !info.expires_within(Duration::from_secs(30 * 86400))
            && info.issuer.contains("kelson-ca")
            && info.subject.contains(&format!("CN={}", id.cn))
            && id.org.is_none_or(|o| info.subject.contains(o))
    }) && key.is_file();
    if !keep {
        let ca = kelson_pki::Ca::load(&pki.dir).context("loading the cluster CA")?;
        let req = CertRequest {
            organization: id.org.map(str::to_string),
            ..CertRequest::new(id.cn, Usage::Client)
        };
        ca.issue(&req)?.write_pair(&pki.dir, id.base)?;
    }
    Ok((cert, key))
}

/// Writes a kubeconfig for `https://127.0.0.1:<port>` with everything embedded. (`up` has the
/// same private helper; this one takes the mode, since some of these are group-readable.)
fn write_kubeconfig(
    path: &Path,
    user: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    port: u16,
) -> anyhow::Result<()> {
    use base64::Engine;
    let b64 = |p: &Path| -> anyhow::Result<String> {
        Ok(base64::engine::general_purpose::STANDARD
            .encode(fs::read(p).with_context(|| format!("reading {}", p.display()))?))
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kelson\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: {user}@kelson\n  context:\n    cluster: kelson\n    user: {user}\ncurrent-context: {user}@kelson\n",
        b64(ca)?,
        b64(cert)?,
        b64(key)?,
    );
    kelson_pki::write_atomic(path, text.as_bytes(), 0o600)?;
    Ok(())
}

/// `n` random bytes from the kernel (the only randomness init needs; no RNG crate for that).
fn random_bytes(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf)
}

fn s(v: impl AsRef<str>) -> Value {
    Value::String(v.as_ref().to_string())
}

fn p(v: &Path) -> Value {
    Value::String(v.display().to_string())
}

fn list<I: IntoIterator<Item = Value>>(items: I) -> Value {
    Value::Array(items.into_iter().collect())
}

fn table(pairs: Vec<(&str, Value)>) -> Table {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The per-daemon configuration tables (keys are the daemons' flag names).
#[allow(clippy::too_many_arguments)]
fn daemon_configs(
    cfg_dir: &Path,
    data_dir: &Path,
    pki: &PkiPaths,
    cp: &ControlPlaneFiles,
    kubelet_serving: &(PathBuf, PathBuf),
    node: &str,
    advertise: Option<IpAddr>,
    cluster_token: &str,
) -> Vec<(&'static str, Table, Access)> {
    let api = up::ApiServerPki::under(&pki.dir);
    let client_url = format!("https://127.0.0.1:{KV_CLIENT_PORT}");
    let peer_url = format!("https://127.0.0.1:{KV_PEER_PORT}");
    let kv = table(vec![
        ("name", s(node)),
        ("data-dir", p(&data_dir.join("kv"))),
        ("listen-client-urls", s(&client_url)),
        ("advertise-client-urls", s(&client_url)),
        ("listen-peer-urls", s(&peer_url)),
        ("initial-advertise-peer-urls", s(&peer_url)),
        ("initial-cluster", s(format!("{node}={peer_url}"))),
        // etcd semantics: ignored once the data dir holds a member.
        ("initial-cluster-state", s("new")),
        ("initial-cluster-token", s(cluster_token)),
        ("cert-file", p(&pki.server_cert)),
        ("key-file", p(&pki.server_key)),
        ("trusted-ca-file", p(&pki.store_ca_cert)),
        ("client-cert-auth", Value::Boolean(true)),
        ("peer-cert-file", p(&pki.peer_cert)),
        ("peer-key-file", p(&pki.peer_key)),
        ("peer-trusted-ca-file", p(&pki.store_ca_cert)),
        ("peer-client-cert-auth", Value::Boolean(true)),
    ]);
    let apiserver = table(vec![
        ("secure-port", Value::Integer(APISERVER_PORT.into())),
        ("bind-address", s("0.0.0.0")),
        ("etcd-servers", s(&client_url)),
        ("etcd-cafile", p(&pki.store_ca_cert)),
        ("etcd-certfile", p(&api.etcd_client_cert)),
        ("etcd-keyfile", p(&api.etcd_client_key)),
        ("tls-cert-file", p(&api.serving_cert)),
        ("tls-private-key-file", p(&api.serving_key)),
        ("client-ca-file", p(&pki.ca_cert)),
        ("service-cluster-ip-range", s(SERVICE_CIDR)),
        // Kubelets are confined to their own node's objects (Node authorizer +
        // NodeRestriction); everything else is RBAC.
        ("authorization-mode", s("Node,RBAC")),
        ("anonymous-auth", Value::Boolean(false)),
        ("service-account-signing-key-file", p(&cp.sa_key)),
        ("service-account-key-file", list([p(&cp.sa_key)])),
        (
            "service-account-issuer",
            s(clusterfiles::SERVICE_ACCOUNT_ISSUER),
        ),
        ("enable-bootstrap-token-auth", Value::Boolean(true)),
        // LogsDirectory=kelson in the unit: /var/log/kelson, owned by the service user.
        ("audit-log-path", s("/var/log/kelson/audit.log")),
        // CIS 1.2.17-19: at most 30 days, 10 files of 100 MB.
        ("audit-log-maxage", Value::Integer(30)),
        ("audit-log-maxsize", Value::Integer(100)),
        ("audit-log-maxbackup", Value::Integer(10)),
        ("audit-policy-file", p(&cp.audit_policy)),
        ("encryption-provider-config", p(&cp.encryption_config)),
        ("kubelet-client-certificate", p(&cp.kubelet_client_cert)),
        ("kubelet-client-key", p(&cp.kubelet_client_key)),
        ("kubelet-certificate-authority", p(&pki.ca_cert)),
    ]);
    let scheduler = table(vec![
        ("kubeconfig", p(&cfg_dir.join("scheduler.kubeconfig"))),
        ("leader-elect", Value::Boolean(true)),
    ]);
    let controller_manager = table(vec![
        (
            "kubeconfig",
            p(&cfg_dir.join("controller-manager.kubeconfig")),
        ),
        ("leader-elect", Value::Boolean(true)),
        ("root-ca-file", p(&pki.ca_cert)),
        ("allocate-node-cidrs", Value::Boolean(true)),
        ("cluster-cidr", s(up::CLUSTER_CIDR)),
    ]);
    let ccm = table(vec![
        (
            "kubeconfig",
            p(&cfg_dir.join("cloud-controller-manager.kubeconfig")),
        ),
        ("leader-elect", Value::Boolean(true)),
        ("node-name", s(node)),
    ]);
    let mut kubelet = table(vec![
        ("kubeconfig", p(&cfg_dir.join("kubelet.kubeconfig"))),
        ("hostname-override", s(node)),
        // StateDirectory=kelson/kubelet in the unit.
        ("root-dir", p(&data_dir.join("kubelet"))),
        ("client-ca-file", p(&pki.ca_cert)),
        ("tls-cert-file", p(&kubelet_serving.0)),
        ("tls-private-key-file", p(&kubelet_serving.1)),
    ]);
    let proxy = table(vec![
        ("kubeconfig", p(&cfg_dir.join("proxy.kubeconfig"))),
        ("hostname-override", s(node)),
        ("cluster-cidr", list([s(up::CLUSTER_CIDR)])),
    ]);
    let mut dns = table(vec![("kubeconfig", p(&cfg_dir.join("dns.kubeconfig")))]);
    if let Some(ip) = advertise {
        // Pods cannot reach the node's loopback: serve them on the machine's address.
        dns.insert(
            "listen".into(),
            list([s(std::net::SocketAddr::new(ip, 53).to_string())]),
        );
        kubelet.insert("cluster-dns".into(), list([s(ip.to_string())]));
        kubelet.insert("node-ip".into(), s(ip.to_string()));
    }
    vec![
        ("kv", kv, Access::Service),
        ("apiserver", apiserver, Access::Service),
        ("scheduler", scheduler, Access::Service),
        ("controller-manager", controller_manager, Access::Service),
        ("cloud-controller-manager", ccm, Access::Service),
        ("kubelet", kubelet, Access::Root),
        ("proxy", proxy, Access::Root),
        ("dns", dns, Access::Service),
    ]
}

/// Keeps the store's cluster token across runs (a new token on an initialized member would be
/// ignored by etcd semantics anyway, but the file should say what the cluster has).
fn cluster_token(kv_toml: &Path) -> anyhow::Result<String> {
    if let Ok(text) = fs::read_to_string(kv_toml) {
        if let Some(t) = toml::from_str::<Table>(&text)
            .ok()
            .and_then(|t| t.get("initial-cluster-token")?.as_str().map(str::to_string))
        {
            return Ok(t);
        }
    }
    let b = random_bytes(8)?;
    Ok(format!(
        "kelson-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// Does the work of `kelsonctl init` (also used by tests with temp directories).
pub fn init(args: &InitArgs) -> anyhow::Result<InitResult> {
    if !nix::unistd::geteuid().is_root() {
        bail!("kelsonctl init must run as root (it sets file owners for the service user)");
    }
    let owners = Owners::lookup(&args.service_user)?;
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => kelson_pki::hostname()
            .map(|h| h.to_lowercase())
            .context("no --node-name and no host name")?,
    };
    if node.is_empty() || node.contains(|c: char| c.is_whitespace() || c == '/') {
        bail!("--node-name {node:?} is not a valid node name");
    }
    let cfg_dir = &args.config_dir;
    let pki_dir = cfg_dir.join("pki");
    owners.dir(cfg_dir, false, false, 0o755)?;
    let hosts: Vec<String> = args
        .advertise_address
        .iter()
        .map(|a| a.to_string())
        .chain(std::iter::once(node.clone()))
        .collect();
    let pki = kelson_pki::init_cluster_pki(&pki_dir, &hosts).context("cluster PKI")?;
    // The pki directory: traversable by the service group, nobody else.
    owners.dir(&pki_dir, false, true, 0o750)?;
    let api = up::ensure_apiserver_pki(&pki, &hosts).context("API server PKI")?;
    let admin = up::write_admin_kubeconfig(cfg_dir, &pki, &api, APISERVER_PORT)?;
    let kubelet_kc = up::ensure_node_kubeconfig(cfg_dir, &pki, &node, APISERVER_PORT)?;
    let mut res = InitResult {
        admin_kubeconfig: admin.clone(),
        ..Default::default()
    };
    res.files.push((admin, Access::Root));
    res.files.push((kubelet_kc, Access::Root));
    for id in CLIENTS {
        let (cert, key) = ensure_client_cert(&pki, id)?;
        let kc = cfg_dir.join(format!("{}.kubeconfig", id.base));
        write_kubeconfig(&kc, id.cn, &pki.ca_cert, &cert, &key, APISERVER_PORT)?;
        res.files.push((kc, id.access));
    }
    let cp = clusterfiles::ensure_control_plane_files(&pki).context("control-plane files")?;
    res.files
        .push((cp.encryption_config.clone(), Access::Service));
    res.files.push((cp.audit_policy.clone(), Access::Service));
    let kubelet_ips: Vec<IpAddr> = std::iter::once(IpAddr::from([127, 0, 0, 1]))
        .chain(args.advertise_address)
        .collect();
    let kubelet_serving = clusterfiles::ensure_kubelet_serving_cert(&pki, &node, &kubelet_ips)
        .context("kubelet serving certificate")?;

    // Key files: those a `kelson` daemon opens itself are group-readable; the rest root-only.
    for base in [
        "kv-server",
        "kv-peer",
        "apiserver",
        "apiserver-etcd-client",
        "apiserver-kubelet-client",
        "sa",
    ] {
        res.files
            .push((pki_dir.join(format!("{base}.key")), Access::Service));
    }
    for e in fs::read_dir(&pki_dir).with_context(|| format!("reading {}", pki_dir.display()))? {
        let path = e?.path();
        let ext = path.extension().and_then(|x| x.to_str());
        if ext == Some("crt") {
            res.files.push((path, Access::Public));
        } else if ext == Some("key") && !res.files.iter().any(|(f, _)| *f == path) {
            res.files.push((path, Access::Root));
        }
    }

    let kv_toml = cfg_dir.join("kv.toml");
    let token = cluster_token(&kv_toml)?;
    for (name, tbl, access) in daemon_configs(
        cfg_dir,
        &args.data_dir,
        &pki,
        &cp,
        &kubelet_serving,
        &node,
        args.advertise_address,
        &token,
    ) {
        let path = cfg_dir.join(format!("{name}.toml"));
        let text = format!(
            "# Written by `kelsonctl init`; keys are kelson-{name}'s flag names.\n{}",
            toml::to_string(&tbl).context("serializing config")?
        );
        kelson_pki::write_atomic(&path, text.as_bytes(), 0o600)?;
        res.files.push((path.clone(), access));
        res.configs.push((name, path));
    }
    for (path, access) in &res.files {
        owners.apply(path, *access)?;
    }

    // State directories as the units' StateDirectory= creates them (so init can be followed
    // by anything that inspects them before the first start); the kubelet's is root's.
    owners.dir(&args.data_dir, false, false, 0o755)?;
    for c in ["kv", "apiserver"] {
        owners.dir(&args.data_dir.join(c), true, true, 0o700)?;
    }
    owners.dir(&args.data_dir.join("kubelet"), false, false, 0o700)?;
    Ok(res)
}

/// `kelsonctl init`.
pub fn run(args: InitArgs) -> anyhow::Result<i32> {
    let res = init(&args)?;
    for (path, access) in &res.files {
        let who = match access {
            Access::Root => "0600 root".to_string(),
            Access::Service => format!("0640 root:{}", args.service_user),
            Access::Public => "0644".to_string(),
        };
        println!("{who:>18}  {}", path.display());
    }
    if args.config_dir != Path::new("/etc/kelson") || args.data_dir != Path::new("/var/lib/kelson")
    {
        println!(
            "note: the shipped units read /etc/kelson/<component>.toml and keep state in /var/lib/kelson; \
             other directories need drop-ins"
        );
    }
    println!(
        "next: systemctl start kelson.target; kubectl --kubeconfig {} get nodes",
        res.admin_kubeconfig.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    /// target/debug, where `cargo build -p kelson-<daemon>` puts the daemons.
    fn bin_dir() -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        // target/debug/deps/kelsonctl-<hash>
        exe.parent().unwrap().parent().unwrap().to_path_buf()
    }

    /// Every generated TOML loads in its daemon (`--print-config` parses, merges and
    /// deserializes with deny_unknown_fields, then exits), and the files have the right owners.
    #[test]
    fn generated_configs_load_in_every_daemon() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test sets file owners: run it as root");
        }
        let tmp = tempfile::tempdir().unwrap();
        let args = InitArgs {
            config_dir: tmp.path().join("etc"),
            data_dir: tmp.path().join("var"),
            node_name: Some("node-a".into()),
            advertise_address: Some("192.0.2.10".parse().unwrap()),
            // Every Debian system has it; the real service user comes from sysusers.d.
            service_user: "nobody".into(),
        };
        let res = init(&args).unwrap();
        assert_eq!(res.configs.len(), 8);
        for (name, path) in &res.configs {
            let bin = bin_dir().join(format!("kelson-{name}"));
            assert!(
                bin.is_file(),
                "{} missing: cargo build -p kelson-{name}",
                bin.display()
            );
            let out = Command::new(&bin)
                .arg("--config")
                .arg(path)
                .arg("--print-config")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "kelson-{name} --config {} --print-config failed: {}{}",
                path.display(),
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
            // What the daemon runs with is what init wrote.
            let written: Table = toml::from_str(&fs::read_to_string(path).unwrap()).unwrap();
            let effective: Table = toml::from_str(&stdout).unwrap();
            for (k, v) in &written {
                assert_eq!(effective.get(k), Some(v), "kelson-{name}: key {k}");
            }
        }
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let meta = |p: &Path| fs::metadata(p).unwrap();
        let etc = &args.config_dir;
        for (file, mode, gid) in [
            (etc.join("pki/ca.key"), 0o600, 0),
            // The store CA's key signs store credentials: root only, like the cluster CA's.
            (etc.join("pki/store-ca.key"), 0o600, 0),
            (etc.join("pki/store-ca.crt"), 0o644, 0),
            (etc.join("pki/admin.key"), 0o600, 0),
            (etc.join("admin.kubeconfig"), 0o600, 0),
            (etc.join("kubelet.kubeconfig"), 0o600, 0),
            (etc.join("kubelet.toml"), 0o600, 0),
            (etc.join("pki/kv-server.key"), 0o640, nobody.gid.as_raw()),
            (etc.join("pki/sa.key"), 0o640, nobody.gid.as_raw()),
            (etc.join("scheduler.kubeconfig"), 0o640, nobody.gid.as_raw()),
            (etc.join("apiserver.toml"), 0o640, nobody.gid.as_raw()),
            (
                etc.join("pki/encryption-config.yaml"),
                0o640,
                nobody.gid.as_raw(),
            ),
            (etc.join("pki/ca.crt"), 0o644, 0),
        ] {
            let m = meta(&file);
            assert_eq!(m.mode() & 0o7777, mode, "{}", file.display());
            assert_eq!((m.uid(), m.gid()), (0, gid), "{}", file.display());
        }
        // CIS 2.7: the store and the API server's store client use the store CA only.
        let kv: Table = toml::from_str(&fs::read_to_string(etc.join("kv.toml")).unwrap()).unwrap();
        let api: Table =
            toml::from_str(&fs::read_to_string(etc.join("apiserver.toml")).unwrap()).unwrap();
        let store_ca = etc.join("pki/store-ca.crt").display().to_string();
        for (t, k) in [
            (&kv, "trusted-ca-file"),
            (&kv, "peer-trusted-ca-file"),
            (&api, "etcd-cafile"),
        ] {
            assert_eq!(t[k].as_str(), Some(store_ca.as_str()), "{k}");
        }
        assert_eq!(
            api["client-ca-file"].as_str(),
            Some(etc.join("pki/ca.crt").display().to_string().as_str())
        );
        let pki_dir = meta(&etc.join("pki"));
        assert_eq!(pki_dir.mode() & 0o7777, 0o750);
        let kv_dir = meta(&args.data_dir.join("kv"));
        assert_eq!(
            (kv_dir.uid(), kv_dir.mode() & 0o7777),
            (nobody.uid.as_raw(), 0o700)
        );

        // A second init keeps every key and certificate (a running cluster depends on them).
        let before: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(etc.join("pki"))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let b = fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        let enc = fs::read(etc.join("pki/encryption-config.yaml")).unwrap();
        let token = fs::read_to_string(etc.join("kv.toml")).unwrap();
        init(&args).unwrap();
        for (p, b) in before {
            assert_eq!(fs::read(&p).unwrap(), b, "{} changed", p.display());
        }
        assert_eq!(
            fs::read(etc.join("pki/encryption-config.yaml")).unwrap(),
            enc
        );
        assert_eq!(fs::read_to_string(etc.join("kv.toml")).unwrap(), token);
    }

    #[test]
    fn unknown_service_user_is_a_clear_error() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (init refuses to run otherwise)");
        }
        let tmp = tempfile::tempdir().unwrap();
        let err = init(&InitArgs {
            config_dir: tmp.path().join("etc"),
            data_dir: tmp.path().join("var"),
            node_name: Some("n".into()),
            advertise_address: None,
            service_user: "kelson-no-such-user".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("kelsonctl install"), "{err}");
    }
}
