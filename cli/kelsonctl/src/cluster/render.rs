//! `kelsonctl cluster render`: the description → one directory per machine, laid out as that
//! machine's root, plus the cluster-wide secrets and the admin's kubeconfig.
//!
//! ```text
//! DIR/_ca/cluster/ca.{crt,key}   the cluster CA (API serving, clients, kubelets)
//! DIR/_ca/store/ca.{crt,key}     the store CA (kv client and peer mTLS, the API server's store client)
//! DIR/_ca/{sa.key,encryption-config.yaml,admin.crt,admin.key}
//! DIR/admin.kubeconfig           the VIP, kubernetes-admin (system:masters)
//! DIR/<machine>/roles            one role per line: kv, control-plane, node
//! DIR/<machine>/etc/kelson/<daemon>.toml, <client>.kubeconfig, pki/*
//! ```
//!
//! Two CAs, as kubeadm keeps etcd's apart: a certificate the store trusts must not also be a
//! Kubernetes identity, and vice versa. CA keys stay in `_ca/` (no machine gets one); the
//! service-account key and the Secrets encryption key are generated once there and copied to
//! every control-plane machine, since all API servers must sign and decrypt alike.
//!
//! Rendering is idempotent: CAs and shared secrets are created only when missing; a leaf is
//! kept while it was issued by the current CA (the machine's copy of `ca.crt` still matches),
//! has the wanted subject and exactly the wanted names (a changed address reissues it), and
//! has more than 30 days left. Everything else is a pure function of the description
//! ([`super::configs`]), and files are only rewritten when their bytes change, so a second
//! render changes nothing — not even modification times.
//!
//! Files carry modes but not owners: 0640 for what a daemon running as the `kelson` user reads
//! (its keys, its kubeconfig, `sa.key`, the encryption config), 0600 for other secrets, 0644
//! for certificates and configs. The installer (Nix module, Ansible role) makes the 0640 files'
//! group `kelson`, as `kelsonctl init` does on a single machine.

use std::collections::BTreeSet;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use kelson_pki::{Ca, CertRequest, Usage};

use super::configs::{self, machine_configs, roles};
use super::spec::{check, has_errors, parse_cidr, ClusterSpec};
use crate::clusterfiles;

/// What a render did.
#[derive(Debug, Default)]
pub struct RenderReport {
    /// Files whose bytes changed (created or rewritten).
    pub changed: Vec<PathBuf>,
    /// Files already as wanted.
    pub unchanged: usize,
    /// Configs and kubeconfigs a machine no longer has (its roles changed), deleted.
    pub removed: Vec<PathBuf>,
}

/// Writes `data` unless the file already holds exactly these bytes; fixes the mode either way.
fn put(report: &mut RenderReport, path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    if fs::read(path).ok().as_deref() == Some(data) {
        let perm = fs::metadata(path)?.permissions();
        if perm.mode() & 0o7777 != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))?;
        }
        report.unchanged += 1;
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    kelson_pki::write_atomic(path, data, mode)?;
    report.changed.push(path.to_path_buf());
    Ok(())
}

/// Loads `<dir>/ca.{crt,key}` or creates a CA there; `true` when it was created now.
fn ensure_ca(dir: &Path, cn: &str) -> anyhow::Result<(Ca, bool)> {
    if dir.join("ca.crt").exists() || dir.join("ca.key").exists() {
        // Never replace an existing CA: every machine's certificates chain to it.
        let ca = Ca::load(dir).with_context(|| format!("loading the CA in {}", dir.display()))?;
        return Ok((ca, false));
    }
    let ca = Ca::generate(cn)?;
    ca.pair().write_pair(dir, "ca")?;
    Ok((ca, true))
}

/// Keys a daemon running as the `kelson` user opens itself are group-readable (0640; the
/// installer makes the group `kelson`), as `kelsonctl init` does; every other key is 0600.
fn key_mode(base: &str) -> u32 {
    match base {
        "kv-server"
        | "kv-peer"
        | "apiserver"
        | "apiserver-etcd-client"
        | "apiserver-kubelet-client" => 0o640,
        _ => 0o600,
    }
}

/// Kubeconfigs of daemons running as `kelson` are 0640; the kubelet's, the proxy's and the
/// speaker's (root) 0600.
fn kubeconfig_mode(base: &str) -> u32 {
    match base {
        "scheduler" | "controller-manager" | "cloud-controller-manager" | "dns" => 0o640,
        _ => 0o600,
    }
}

/// A leaf certificate to keep or issue.
struct Leaf {
    base: &'static str,
    cn: String,
    org: Option<&'static str>,
    usage: Usage,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl Leaf {
    fn client(base: &'static str, cn: impl Into<String>, org: Option<&'static str>) -> Leaf {
        Leaf {
            base,
            cn: cn.into(),
            org,
            usage: Usage::Client,
            dns: vec![],
            ips: vec![],
        }
    }
}

/// Keeps `<dir>/<base>.{crt,key}` if still right (see the module doc), else issues a new pair.
fn ensure_leaf(
    report: &mut RenderReport,
    ca: &Ca,
    ca_changed: bool,
    dir: &Path,
    leaf: &Leaf,
) -> anyhow::Result<()> {
    let cert = dir.join(format!("{}.crt", leaf.base));
    let key = dir.join(format!("{}.key", leaf.base));
    let wanted: BTreeSet<String> = leaf
        .dns
        .iter()
        .cloned()
        .chain(leaf.ips.iter().map(|i| i.to_string()))
        .collect();
    let keep = !ca_changed
        && key.is_file()
        && kelson_pki::cert_info(&cert).ok().is_some_and(|info| {
            !info.expires_within(Duration::from_secs(30 * 86400))
                && info.subject.contains(&format!("CN={}", leaf.cn))
                && leaf
                    .org
                    .is_none_or(|o| info.subject.contains(&format!("O={o}")))
                && info.sans.iter().cloned().collect::<BTreeSet<_>>() == wanted
        });
    if !keep {
        let req = CertRequest {
            organization: leaf.org.map(str::to_string),
            dns_names: leaf.dns.clone(),
            ip_addresses: leaf.ips.clone(),
            ..CertRequest::new(leaf.cn.clone(), leaf.usage)
        };
        let pair = ca.issue(&req)?;
        fs::create_dir_all(dir)?;
        kelson_pki::write_atomic(&key, pair.key_pem.as_bytes(), key_mode(leaf.base))?;
        kelson_pki::write_atomic(&cert, pair.cert_pem.as_bytes(), 0o644)?;
        report.changed.push(cert);
        report.changed.push(key);
    } else {
        fs::set_permissions(&key, fs::Permissions::from_mode(key_mode(leaf.base)))?;
        report.unchanged += 2;
    }
    Ok(())
}

/// A kubeconfig with the CA and client credentials embedded.
fn kubeconfig(
    cluster: &str,
    server: &str,
    user: &str,
    ca_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> anyhow::Result<String> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: {user}@{cluster}\n  context:\n    cluster: {cluster}\n    user: {user}\ncurrent-context: {user}@{cluster}\n",
        b64(ca_pem),
        b64(&read(cert)?),
        b64(&read(key)?),
    ))
}

/// The first address of the service network: the `kubernetes` Service's ClusterIP, which
/// in-cluster clients dial, so the API server certificate must name it.
fn first_service_ip(cidr: &str) -> Option<IpAddr> {
    let net = parse_cidr(cidr).ok()?;
    Some(match net.network() {
        IpAddr::V4(v) => IpAddr::V4((u32::from(v) + 1).into()),
        IpAddr::V6(v) => IpAddr::V6((u128::from(v) + 1).into()),
    })
}

/// Renders `spec` into `out` (see the module doc). Refuses a description with errors.
pub fn render(spec: &ClusterSpec, out: &Path) -> anyhow::Result<RenderReport> {
    let diags = check(spec);
    if has_errors(&diags) {
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        bail!("the cluster description has errors:\n{}", text.join("\n"));
    }
    let mut report = RenderReport::default();
    let ca_dir = out.join("_ca");
    fs::create_dir_all(&ca_dir).with_context(|| format!("creating {}", ca_dir.display()))?;
    fs::set_permissions(&ca_dir, fs::Permissions::from_mode(0o700))?;
    let (cluster_ca, cluster_new) = ensure_ca(&ca_dir.join("cluster"), "kelson-ca")?;
    let (store_ca, _) = ensure_ca(&ca_dir.join("store"), "kelson-store-ca")?;

    // Cluster-wide secrets, once.
    let sa_key = ca_dir.join("sa.key");
    if !sa_key.is_file() {
        let key = rcgen::KeyPair::generate().context("generating the service-account key")?;
        kelson_pki::write_atomic(&sa_key, key.serialize_pem().as_bytes(), 0o600)?;
    }
    let enc = ca_dir.join("encryption-config.yaml");
    if !enc.is_file() {
        use base64::Engine;
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let text = clusterfiles::encryption_config(
            &base64::engine::general_purpose::STANDARD.encode(secret),
        );
        kelson_pki::write_atomic(&enc, text.as_bytes(), 0o600)?;
    }
    ensure_leaf(
        &mut report,
        &cluster_ca,
        cluster_new,
        &ca_dir,
        &Leaf::client("admin", "kubernetes-admin", Some("system:masters")),
    )?;
    let vip_url = configs::url(&spec.vip.address, spec.apiserver_port);
    let admin = kubeconfig(
        &spec.name,
        &vip_url,
        "kubernetes-admin",
        cluster_ca.cert_pem().as_bytes(),
        &ca_dir.join("admin.crt"),
        &ca_dir.join("admin.key"),
    )?;
    put(
        &mut report,
        &out.join("admin.kubeconfig"),
        admin.as_bytes(),
        0o600,
    )?;

    let sa_pem = fs::read(&sa_key)?;
    let enc_text = fs::read(&enc)?;
    let svc_ip = first_service_ip(&spec.service_cidr);
    let vip: IpAddr = spec.vip.address.parse().context("vip.address")?;
    for (m, cp) in spec.machines() {
        let root = out.join(&m.name);
        let etc = root.join(configs::CONFIG_DIR.trim_start_matches('/'));
        let pki = root.join(configs::PKI_DIR.trim_start_matches('/'));
        fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
        let addr: IpAddr = m.address.parse().context("machine address")?;
        let loopback = IpAddr::from([127, 0, 0, 1]);

        let roles = roles(cp);
        put(
            &mut report,
            &root.join("roles"),
            format!("{}\n", roles.join("\n")).as_bytes(),
            0o644,
        )?;

        // The machine's CA copies; a mismatch means the CA changed and every leaf goes.
        let ca_changed =
            fs::read(pki.join("ca.crt")).ok().as_deref() != Some(cluster_ca.cert_pem().as_bytes());
        put(
            &mut report,
            &pki.join("ca.crt"),
            cluster_ca.cert_pem().as_bytes(),
            0o644,
        )?;
        let mut leaves_cluster = vec![Leaf {
            base: "kubelet-serving",
            cn: format!("system:node:{}", m.name),
            org: Some("system:nodes"),
            usage: Usage::Server,
            dns: vec![m.name.clone()],
            ips: vec![loopback, addr],
        }];
        for (base, cn, org, _) in configs::clients(cp, &m.name) {
            leaves_cluster.push(Leaf::client(base, cn, org));
        }
        if cp {
            let store_changed = fs::read(pki.join("store-ca.crt")).ok().as_deref()
                != Some(store_ca.cert_pem().as_bytes());
            put(
                &mut report,
                &pki.join("store-ca.crt"),
                store_ca.cert_pem().as_bytes(),
                0o644,
            )?;
            let host = |base, cn: &str| Leaf {
                base,
                cn: cn.to_string(),
                org: None,
                usage: Usage::Peer,
                dns: vec!["localhost".into(), m.name.clone()],
                ips: vec![loopback, addr],
            };
            for leaf in [
                host("kv-server", "kelson-kv"),
                host("kv-peer", "kelson-kv-peer"),
                Leaf::client("apiserver-etcd-client", kelson_pki::KV_CLIENT_CN, None),
            ] {
                ensure_leaf(&mut report, &store_ca, store_changed, &pki, &leaf)?;
            }
            let mut dns: Vec<String> = vec![
                "kubernetes".into(),
                "kubernetes.default".into(),
                "kubernetes.default.svc".into(),
                format!("kubernetes.default.svc.{}", spec.domain),
                "localhost".into(),
                m.name.clone(),
            ];
            dns.dedup();
            let mut ips = vec![loopback, addr, vip];
            ips.extend(svc_ip);
            leaves_cluster.push(Leaf {
                base: "apiserver",
                cn: "kube-apiserver".into(),
                org: None,
                usage: Usage::Server,
                dns,
                ips,
            });
            leaves_cluster.push(Leaf::client(
                "apiserver-kubelet-client",
                "kube-apiserver-kubelet-client",
                Some("system:masters"),
            ));
            put(&mut report, &pki.join("sa.key"), &sa_pem, 0o640)?;
            put(
                &mut report,
                &pki.join("encryption-config.yaml"),
                &enc_text,
                0o640,
            )?;
            put(
                &mut report,
                &pki.join("audit-policy.yaml"),
                clusterfiles::AUDIT_POLICY.as_bytes(),
                0o644,
            )?;
        }
        for leaf in &leaves_cluster {
            ensure_leaf(&mut report, &cluster_ca, ca_changed, &pki, leaf)?;
        }
        for (base, cn, _, local) in configs::clients(cp, &m.name) {
            let server = configs::apiserver_url(spec, m, local);
            let text = kubeconfig(
                &spec.name,
                &server,
                &cn,
                cluster_ca.cert_pem().as_bytes(),
                &pki.join(format!("{base}.crt")),
                &pki.join(format!("{base}.key")),
            )?;
            put(
                &mut report,
                &etc.join(format!("{base}.kubeconfig")),
                text.as_bytes(),
                kubeconfig_mode(base),
            )?;
        }
        for (name, table) in machine_configs(spec, m, cp) {
            let daemon = if name == "speaker" {
                "cloud-controller-manager".to_string()
            } else {
                name.to_string()
            };
            let text = format!(
                "# Written by `kelsonctl cluster render` for {} of cluster {}; keys are kelson-{daemon}'s flag names.\n{}",
                m.name,
                spec.name,
                toml::to_string(&table).context("serializing config")?
            );
            put(
                &mut report,
                &etc.join(format!("{name}.toml")),
                text.as_bytes(),
                0o644,
            )?;
        }
        // A machine that left the control plane must not keep its old daemons' configs
        // (the units would start them); keys stay, so a machine that returns keeps its identity.
        let wanted: BTreeSet<String> = machine_configs(spec, m, cp)
            .into_iter()
            .map(|(n, _)| format!("{n}.toml"))
            .chain(
                configs::clients(cp, &m.name)
                    .into_iter()
                    .map(|(b, ..)| format!("{b}.kubeconfig")),
            )
            .collect();
        for e in fs::read_dir(&etc).with_context(|| format!("reading {}", etc.display()))? {
            let path = e?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let ours = name.ends_with(".toml") || name.ends_with(".kubeconfig");
            if ours && path.is_file() && !wanted.contains(&name) {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                report.removed.push(path);
            }
        }
    }
    Ok(report)
}
