//! `kelsonctl up`: an all-in-one cluster in the foreground.
//!
//! Layout under the data dir (default /var/lib/kelson as root, else ~/.local/share/kelson):
//! `pki/` (kelson-pki cluster PKI: the cluster CA `ca.*` and the store's own CA `store-ca.*`,
//! CIS 2.7), `kv/` (kelson-kv data), `logs/<component>.log`, and
//! `up.toml`, the settings chosen on first start (ports, member name, cluster token). A later
//! `up` reads `up.toml` and starts the same cluster on the same data, certificates and peer URL,
//! which is what makes it a resume rather than a new cluster.
//!
//! Components are entries in a list ([`components`]): each has a program, arguments, a log file
//! and a readiness probe. They start in order, each only after the previous one is ready; `ready`
//! is printed once all are; on SIGINT/SIGTERM they stop in reverse order (SIGTERM, bounded wait,
//! SIGKILL). The API server follows the store: it gets its own serving certificate from the
//! cluster CA and an etcd client certificate from the store CA (the only CA the store trusts), and `admin.kubeconfig` (an admin client
//! certificate in `system:masters`, everything embedded) is written next to `up.toml`; it is
//! ready when `/readyz` answers `ok` over mutual TLS. Scheduler and controller-manager follow,
//! ready on their own sd_notify `READY=1`.
//!
//! Unless `--no-node`, the machine is also a node: a private containerd under `containerd/`
//! (always ours, so its CRI sandbox image is the locally built pause image and stopping the
//! cluster stops exactly its containers; overlayfs where the kernel allows it here, else
//! `native`), ready when `ctr version` answers and its CRI plugin loaded; then the busybox and
//! pause test images are built and imported unless present; then kelson-kubelet with a
//! `system:node:<host>` client certificate (`kubelet.kubeconfig`), its pods' logs under
//! `logs/pods/`. The kubelet leaves pods running when it stops (so a restart adopts them), so
//! stopping containerd first kills and removes every container, then cleans what pods leave on
//! the host (mounts, IP reservations, the `kelson0` bridge, empty cgroups under `/kelson`).
//!
//! Children run in their own process groups (so a terminal's Ctrl-C reaches only us and we stop
//! them in order) and with a parent-death signal (so they do not outlive a killed kelsonctl).

use std::ffi::OsString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use kelson_pki::PkiPaths;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};

use crate::kv::ConnArgs;

#[derive(Debug, Args, Clone)]
pub struct UpArgs {
    /// State directory (default: /var/lib/kelson as root, else ~/.local/share/kelson).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// kelson-kv client port on 127.0.0.1 (default: the one saved by a previous `up`, else 2379).
    #[arg(long)]
    pub kv_port: Option<u16>,
    /// API server (HTTPS) port (default: the one saved by a previous `up`, else 6443).
    #[arg(long)]
    pub apiserver_port: Option<u16>,
    /// Extra DNS names / IPs for the server certificates.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Install missing system packages first (runs the source tree's scripts/setup.sh; root).
    #[arg(long)]
    pub install_deps: bool,
    /// Control plane only: no containerd and kubelet (so no root needed).
    #[arg(long)]
    pub no_node: bool,
    /// Seconds to wait for each component to become ready.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout: u64,
}

/// Settings fixed by the first `up` on a data dir (`up.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpState {
    pub name: String,
    pub cluster_token: String,
    pub kv_port: u16,
    pub kv_peer_port: u16,
    pub apiserver_port: u16,
}

const STATE_FILE: &str = "up.toml";
const DEFAULT_KV_PORT: u16 = 2379;
const DEFAULT_APISERVER_PORT: u16 = 6443;

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn any_free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Loads `up.toml`, or chooses and saves settings for a new data dir. Flags override the
/// client-facing ports; the peer port and identity are kept once chosen.
pub fn load_or_init_state(dir: &Path, args: &UpArgs) -> anyhow::Result<UpState> {
    let path = dir.join(STATE_FILE);
    let mut state = match fs::read_to_string(&path) {
        Ok(text) => toml::from_str::<UpState>(&text)
            .with_context(|| format!("parsing {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kv_port = args.kv_port.unwrap_or(DEFAULT_KV_PORT);
            let kv_peer_port = match kv_port.checked_add(1) {
                Some(p) if port_free(p) => p,
                _ => any_free_port()?,
            };
            UpState {
                name: "kelson".into(),
                cluster_token: format!("kelson-{:x}", std::process::id() as u64 ^ now_nanos()),
                kv_port,
                kv_peer_port,
                apiserver_port: args.apiserver_port.unwrap_or(DEFAULT_APISERVER_PORT),
            }
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if let Some(p) = args.kv_port {
        state.kv_port = p;
    }
    if let Some(p) = args.apiserver_port {
        state.apiserver_port = p;
    }
    if state.kv_port == state.kv_peer_port {
        bail!(
            "kv port {} is the saved peer port; pick another --kv-port",
            state.kv_port
        );
    }
    let text = toml::to_string(&state)?;
    kelson_pki::write_atomic(&path, text.as_bytes(), 0o644)?;
    Ok(state)
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// How to tell that a component is serving.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// An etcd v3 status call over mTLS answers and reports a leader.
    KvStatus { conn: ConnArgs },
    /// `GET /readyz` over mutual TLS answers 200 `ok`.
    HttpsReadyz {
        addr: std::net::SocketAddr,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
    /// containerd answers `ctr version` on its socket and loaded the CRI plugin and the
    /// snapshotter it was configured with (a skipped plugin is reported, not waited out).
    Containerd {
        socket: PathBuf,
        snapshotter: String,
    },
    /// The daemon's own `READY=1` over sd_notify: `up` plays systemd's part with a socket of its
    /// own, so the readiness it waits for is exactly what a `Type=notify` unit would.
    Notify,
    /// A unix socket accepts connections (the private D-Bus daemon).
    Socket { path: PathBuf },
}

/// The private bus `up` runs for its daemons: `DIR/run/dbus.sock`. Not the system bus, so an
/// all-in-one dev cluster never clashes with installed services; `kelsonctl status` finds it
/// (see [`crate::daemons`]).
pub fn dbus_socket(dir: &Path) -> PathBuf {
    dir.join("run").join("dbus.sock")
}

/// The `--dbus-address` value for [`dbus_socket`].
pub fn dbus_address(dir: &Path) -> String {
    format!("unix:path={}", dbus_socket(dir).display())
}

fn dbus_component(dir: &Path) -> anyhow::Result<Component> {
    let sock = dbus_socket(dir);
    if let Some(parent) = sock.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    // A socket left by a killed run would make dbus-daemon fail to bind.
    let _ = fs::remove_file(&sock);
    Ok(Component {
        name: "dbus",
        program: find_binary("dbus-daemon")?,
        args: vec![
            "--session".into(),
            "--nofork".into(),
            "--nopidfile".into(),
            format!("--address={}", dbus_address(dir)).into(),
        ],
        log: dir.join("logs").join("dbus.log"),
        readiness: Readiness::Socket { path: sock },
        info: vec![format!(
            "dbus: private bus for the daemons: export KELSON_DBUS_ADDRESS={} (kelsonctl status finds it by itself)",
            dbus_address(dir)
        )],
        after_ready: None,
        on_stop: None,
    })
}

/// The API server's files under `pki/`: issued by the cluster CA, except the store client
/// certificate, which the store CA issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServerPki {
    /// Serving certificate (`apiserver.crt/.key`).
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// The API server's client certificate towards the store (`apiserver-etcd-client`).
    pub etcd_client_cert: PathBuf,
    pub etcd_client_key: PathBuf,
    /// `kubernetes-admin` in `system:masters` (`admin.crt/.key`).
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
}

impl ApiServerPki {
    pub fn under(dir: &Path) -> ApiServerPki {
        ApiServerPki {
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            etcd_client_cert: dir.join("apiserver-etcd-client.crt"),
            etcd_client_key: dir.join("apiserver-etcd-client.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
        }
    }
}

/// The in-cluster names of the API server (the `kubernetes` service) plus local ones.
fn apiserver_names(hosts: &[String]) -> (Vec<String>, Vec<std::net::IpAddr>) {
    let mut dns: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut ips: Vec<std::net::IpAddr> = vec![
        std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::from([10, 96, 0, 1]),
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    if let Some(h) = kelson_pki::hostname() {
        dns.push(h);
    }
    for h in hosts.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
        match h.parse() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(h.to_string()),
        }
    }
    (dns, ips)
}

/// Issues the API server's certificates (the store client certificate with the store CA, the
/// others with the cluster CA), keeping valid existing ones (a resume must not change what
/// clients already trust or hold). A certificate from the other CA — e.g. a store client
/// certificate from before the store had a CA of its own — is reissued.
pub fn ensure_apiserver_pki(pki: &PkiPaths, hosts: &[String]) -> anyhow::Result<ApiServerPki> {
    use kelson_pki::{CertRequest, Usage};
    let paths = ApiServerPki::under(&pki.dir);
    let ca =
        kelson_pki::Ca::load_files(&pki.ca_cert, &pki.ca_key).context("loading the cluster CA")?;
    let store_ca = kelson_pki::Ca::load_files(&pki.store_ca_cert, &pki.store_ca_key)
        .context("loading the store CA")?;
    let (dns, ips) = apiserver_names(hosts);
    let want: Vec<(&str, &Path, &kelson_pki::Ca, CertRequest)> = vec![
        (
            "apiserver",
            &paths.serving_cert,
            &ca,
            CertRequest {
                dns_names: dns.clone(),
                ip_addresses: ips.clone(),
                ..CertRequest::new("kube-apiserver", Usage::Server)
            },
        ),
        (
            "apiserver-etcd-client",
            &paths.etcd_client_cert,
            &store_ca,
            CertRequest::new(kelson_pki::KV_CLIENT_CN, Usage::Client),
        ),
        (
            "admin",
            &paths.admin_cert,
            &ca,
            CertRequest {
                organization: Some("system:masters".into()),
                ..CertRequest::new("kubernetes-admin", Usage::Client)
            },
        ),
    ];
    for (base, cert, issuer, req) in want {
        let keep = kelson_pki::cert_info(cert).ok().is_some_and(|info| {
            !info.expires_within(Duration::from_secs(30 * 86400))
                && fs::read_to_string(cert).is_ok_and(|pem| issuer.issued_pem(&pem))
                && req.dns_names.iter().all(|d| info.sans.contains(d))
                && req
                    .ip_addresses
                    .iter()
                    .all(|i| info.sans.contains(&i.to_string()))
        }) && pki.dir.join(format!("{base}.key")).is_file();
        if !keep {
            issuer.issue(&req)?.write_pair(&pki.dir, base)?;
        }
    }
    Ok(paths)
}

/// Writes `<dir>/admin.kubeconfig` (0600) with the CA and admin credentials embedded.
pub fn write_admin_kubeconfig(
    dir: &Path,
    pki: &PkiPaths,
    api: &ApiServerPki,
    port: u16,
) -> anyhow::Result<PathBuf> {
    let path = dir.join("admin.kubeconfig");
    write_kubeconfig(
        &path,
        "kubernetes-admin",
        &pki.ca_cert,
        &api.admin_cert,
        &api.admin_key,
        port,
    )?;
    Ok(path)
}

/// Issues the kubelet's client certificate (`kubelet.crt/.key`: CN `system:node:<node>`,
/// O `system:nodes`, which the bootstrap RBAC policy binds to the `system:node` role) unless a
/// valid one for this node exists, and writes `<dir>/kubelet.kubeconfig` (0600) with it.
pub fn ensure_node_kubeconfig(
    dir: &Path,
    pki: &PkiPaths,
    node: &str,
    port: u16,
) -> anyhow::Result<PathBuf> {
    use kelson_pki::{CertRequest, Usage};
    let cn = format!("system:node:{node}");
    let (cert, key) = (pki.dir.join("kubelet.crt"), pki.dir.join("kubelet.key"));
    let keep = kelson_pki::cert_info(&cert).ok().is_some_and(|info| {
        !info.expires_within(Duration::from_secs(30 * 86400))
            && info.issuer.contains("kelson-ca")
            && info.subject.contains(&format!("CN={cn}"))
            && info.subject.contains("system:nodes")
    }) && key.is_file();
    if !keep {
        let ca = kelson_pki::Ca::load(&pki.dir).context("loading the cluster CA")?;
        let req = CertRequest {
            organization: Some("system:nodes".into()),
            ..CertRequest::new(cn.clone(), Usage::Client)
        };
        ca.issue(&req)?.write_pair(&pki.dir, "kubelet")?;
    }
    let path = dir.join("kubelet.kubeconfig");
    write_kubeconfig(&path, &cn, &pki.ca_cert, &cert, &key, port)?;
    Ok(path)
}

/// Writes a kubeconfig (0600) for `https://127.0.0.1:<port>` with the CA and the client
/// certificate and key embedded, so it stays valid when copied elsewhere.
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

/// One supervised process of the all-in-one cluster.
#[derive(Debug, Clone)]
pub struct Component {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub log: PathBuf,
    pub readiness: Readiness,
    /// Lines printed once it is ready ("where things are").
    pub info: Vec<String>,
    /// Work done once it is ready, before the next component starts.
    pub after_ready: Option<AfterReady>,
    /// Clean-up around stopping it.
    pub on_stop: Option<OnStop>,
}

/// Work `up` does once a component is ready.
#[derive(Debug, Clone)]
pub enum AfterReady {
    /// Build the busybox and pause test images and import them into containerd's `k8s.io`
    /// namespace, unless both are there already.
    TestImages {
        socket: PathBuf,
        snapshotter: String,
        images_dir: PathBuf,
    },
    /// Publish `kube-public/cluster-info` for `kelsonctl join` and print how to join a node.
    ClusterInfo {
        kubeconfig: PathBuf,
        server: String,
        ca: PathBuf,
    },
}

/// Clean-up around stopping a component.
#[derive(Debug, Clone)]
pub enum OnStop {
    /// containerd: before it stops, kill and delete every container (the shims are outside its
    /// process group and would outlive it, and the kubelet leaves pods running on purpose);
    /// after, unmount what is left under its directory, forget the pods' IP allocations (no pod
    /// holds one any more), delete the pods' bridge and the empty pod cgroups.
    Containerd {
        dir: PathBuf,
        socket: PathBuf,
        ipam_dir: PathBuf,
        bridge: String,
        cgroup_root: String,
    },
    /// After it stopped, run these commands (best effort): what the daemon leaves on purpose
    /// on a real node (kelson-proxy's nftables tables, kelson-dns's listen address) must not
    /// outlive an all-in-one cluster.
    Commands(Vec<Vec<String>>),
}

/// The node part of the cluster: containerd and the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSetup {
    /// Node name (the host name, lower-cased).
    pub name: String,
    /// containerd snapshotter (`overlayfs` where the kernel allows it here, else `native`).
    pub snapshotter: String,
    /// The kubelet's kubeconfig (`system:node:<name>` in `system:nodes`).
    pub kubeconfig: PathBuf,
    /// The node's InternalIP (given to the kubelet: its own guess could pick the cluster DNS
    /// address `up` puts on `lo`).
    pub node_ip: String,
}

/// The pods' Linux bridge (ours, so a host's `cni0` is left alone).
pub const CNI_BRIDGE: &str = "kelson0";
/// The node-local cluster DNS address (node-local-dns's default link-local address), put on
/// `lo` so pods reach it through their default route to the node.
pub const NODE_LOCAL_DNS: &str = "169.254.20.10";
/// The cluster DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Cgroup parent of all pods (cgroupfs), ours for the same reason.
pub const CGROUP_ROOT: &str = "kelson";

/// Finds a workspace binary: `$KELSON_<NAME>_BIN`, next to our own executable, else `$PATH`.
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let env = format!(
        "KELSON_{}_BIN",
        name.trim_start_matches("kelson-").to_uppercase()
    );
    if let Some(p) = std::env::var_os(&env) {
        return Ok(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("{name} not found next to kelsonctl or on PATH; build it: `cargo build -p {name}` (or set {env})")
}

/// The component list for a data dir. Order matters: each starts after the previous is ready.
/// With `node`, containerd and the kubelet follow the control plane.
pub fn components(
    dir: &Path,
    pki: &PkiPaths,
    state: &UpState,
    node: Option<&NodeSetup>,
) -> anyhow::Result<Vec<Component>> {
    let client_url = format!("https://127.0.0.1:{}", state.kv_port);
    let peer_url = format!("https://127.0.0.1:{}", state.kv_peer_port);
    let mut args: Vec<OsString> = Vec::new();
    let mut flag = |k: &str, v: &dyn AsRef<std::ffi::OsStr>| {
        args.push(k.into());
        args.push(v.as_ref().to_os_string());
    };
    flag("--name", &state.name);
    flag("--data-dir", &dir.join("kv"));
    flag("--listen-client-urls", &client_url);
    flag("--advertise-client-urls", &client_url);
    flag("--listen-peer-urls", &peer_url);
    flag("--initial-advertise-peer-urls", &peer_url);
    flag("--initial-cluster", &format!("{}={peer_url}", state.name));
    // etcd semantics: ignored once the data dir holds a member, so resume is the same command.
    flag("--initial-cluster-state", &"new");
    flag("--initial-cluster-token", &state.cluster_token);
    flag("--cert-file", &pki.server_cert);
    flag("--key-file", &pki.server_key);
    // The store trusts its own CA only: no cluster identity is a store credential (CIS 2.7).
    flag("--trusted-ca-file", &pki.store_ca_cert);
    flag("--peer-cert-file", &pki.peer_cert);
    flag("--peer-key-file", &pki.peer_key);
    flag("--peer-trusted-ca-file", &pki.store_ca_cert);
    args.push("--client-cert-auth".into());
    args.push("--peer-client-cert-auth".into());
    // Not on the system bus: an all-in-one dev cluster must not clash with installed services.
    args.push("--dbus-address".into());
    args.push(dbus_address(dir).into());

    let conn = ConnArgs {
        endpoints: vec![client_url.clone()],
        cacert: Some(pki.store_ca_cert.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        command_timeout: 3,
    };
    let kv = Component {
        name: "kv",
        program: find_binary("kelson-kv")?,
        args,
        log: dir.join("logs").join("kv.log"),
        readiness: Readiness::KvStatus { conn },
        after_ready: None,
        on_stop: None,
        info: vec![
            format!("kv: endpoint {client_url} (mutual TLS)"),
            format!(
                "kv: etcdctl --endpoints={client_url} --cacert={} --cert={} --key={} get --prefix ''",
                pki.store_ca_cert.display(),
                pki.client_cert.display(),
                pki.client_key.display()
            ),
        ],
    };
    let api = ApiServerPki::under(&pki.dir);
    let api_addr = std::net::SocketAddr::from(([127, 0, 0, 1], state.apiserver_port));
    let mut a: Vec<OsString> = Vec::new();
    let mut flag = |k: &str, v: &dyn AsRef<std::ffi::OsStr>| {
        a.push(k.into());
        a.push(v.as_ref().to_os_string());
    };
    flag("--secure-port", &state.apiserver_port.to_string());
    flag("--bind-address", &"127.0.0.1");
    flag("--etcd-servers", &client_url);
    flag("--etcd-cafile", &pki.store_ca_cert);
    flag("--etcd-certfile", &api.etcd_client_cert);
    flag("--etcd-keyfile", &api.etcd_client_key);
    flag("--tls-cert-file", &api.serving_cert);
    flag("--tls-private-key-file", &api.serving_key);
    flag("--client-ca-file", &pki.ca_cert);
    // Kubelets are confined to their own node's objects (Node authorizer + NodeRestriction).
    flag("--authorization-mode", &"Node,RBAC");
    // Secure by default: ServiceAccount tokens, Secrets encrypted at rest, an audit log, and
    // the API server's own identity towards kubelets (see crate::clusterfiles).
    let files = crate::clusterfiles::ControlPlaneFiles::under(&pki.dir);
    flag("--service-account-signing-key-file", &files.sa_key);
    flag(
        "--service-account-issuer",
        &crate::clusterfiles::SERVICE_ACCOUNT_ISSUER,
    );
    flag("--encryption-provider-config", &files.encryption_config);
    flag("--audit-policy-file", &files.audit_policy);
    flag("--audit-log-path", &dir.join("logs").join("audit.log"));
    // CIS 1.2.17-19: rotate at 100 MB, keep 10 files and at most 30 days.
    flag("--audit-log-maxage", &"30");
    flag("--audit-log-maxsize", &"100");
    flag("--audit-log-maxbackup", &"10");
    flag("--kubelet-client-certificate", &files.kubelet_client_cert);
    flag("--kubelet-client-key", &files.kubelet_client_key);
    flag("--kubelet-certificate-authority", &pki.ca_cert);
    a.push("--enable-bootstrap-token-auth".into());
    a.push("--dbus-address".into());
    a.push(dbus_address(dir).into());
    let kubeconfig = dir.join("admin.kubeconfig");
    let apiserver = Component {
        name: "apiserver",
        program: find_binary("kelson-apiserver")?,
        args: a,
        log: dir.join("logs").join("apiserver.log"),
        readiness: Readiness::HttpsReadyz {
            addr: api_addr,
            ca: pki.ca_cert.clone(),
            cert: api.admin_cert.clone(),
            key: api.admin_key.clone(),
        },
        info: vec![
            format!("apiserver: https://{api_addr}"),
            format!("apiserver: export KUBECONFIG={}", kubeconfig.display()),
        ],
        after_ready: Some(AfterReady::ClusterInfo {
            kubeconfig: kubeconfig.clone(),
            server: format!("https://{api_addr}"),
            ca: pki.ca_cert.clone(),
        }),
        on_stop: None,
    };
    // Controllers are ordinary API clients of the admin kubeconfig for now; they get identities
    // of their own (system:kube-scheduler, system:kube-controller-manager) with RBAC.
    let client = |name: &'static str, program: &str, extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut args: Vec<OsString> = vec!["--kubeconfig".into(), kubeconfig.clone().into()];
        args.extend(extra.iter().map(|a| a.as_ref().to_os_string()));
        args.push("--dbus-address".into());
        args.push(dbus_address(dir).into());
        Ok::<_, anyhow::Error>(Component {
            name,
            program: find_binary(program)?,
            args,
            log: dir.join("logs").join(format!("{name}.log")),
            readiness: Readiness::Notify,
            info: vec![format!(
                "{name}: log {}",
                dir.join("logs").join(format!("{name}.log")).display()
            )],
            after_ready: None,
            on_stop: None,
        })
    };
    let scheduler = client("scheduler", "kelson-scheduler", &[])?;
    let controller_manager = client(
        "controller-manager",
        "kelson-controller-manager",
        &[
            &"--root-ca-file",
            &pki.ca_cert,
            // csrsigning: kubelet client certificates from TLS bootstrap and rotation.
            &"--cluster-signing-cert-file",
            &pki.ca_cert,
            &"--cluster-signing-key-file",
            &pki.dir.join("ca.key"),
            &"--allocate-node-cidrs",
            &"--cluster-cidr",
            &CLUSTER_CIDR,
        ],
    )?;
    let mut all = vec![
        dbus_component(dir)?,
        kv,
        apiserver,
        scheduler,
        controller_manager,
    ];
    if let Some(node) = node {
        // Node services before the node: pods get working Service IPs and DNS from the start.
        let mut proxy = client(
            "proxy",
            "kelson-proxy",
            &[
                &"--hostname-override",
                &node.name,
                &"--cluster-cidr",
                &CLUSTER_CIDR,
            ],
        )?;
        let nft_del = |family: &str| -> Vec<String> {
            ["nft", "delete", "table", family, "kelson-proxy"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        proxy.on_stop = Some(OnStop::Commands(vec![nft_del("ip"), nft_del("ip6")]));
        let listen = format!("{NODE_LOCAL_DNS}:53");
        let mut dns = client(
            "dns",
            "kelson-dns",
            &[&"--listen", &listen, &"--cluster-domain", &CLUSTER_DOMAIN],
        )?;
        dns.info.push(format!(
            "dns: cluster DNS on {listen} (node-local, its address on lo)"
        ));
        dns.on_stop = Some(OnStop::Commands(vec![vec![
            "ip".into(),
            "addr".into(),
            "del".into(),
            format!("{NODE_LOCAL_DNS}/32"),
            "dev".into(),
            "lo".into(),
        ]]));
        all.push(proxy);
        all.push(dns);
        all.extend(node_components(dir, node)?);
    }
    Ok(all)
}

/// containerd (always a private instance under `DIR/containerd`, so its CRI sandbox image is
/// our local pause image and stopping the cluster stops exactly its containers), then the
/// kubelet on it.
fn node_components(dir: &Path, node: &NodeSetup) -> anyhow::Result<Vec<Component>> {
    use kelson_oci::containerd::Layout;
    let layout = Layout::new(dir.join("containerd"));
    let socket = layout.socket();
    let ipam_dir = dir.join("cni").join("ipam");
    let containerd = Component {
        name: "containerd",
        program: find_binary("containerd")?,
        args: vec![
            "--config".into(),
            layout.config_path().into(),
            "--log-level".into(),
            "info".into(),
        ],
        log: dir.join("logs").join("containerd.log"),
        readiness: Readiness::Containerd {
            socket: socket.clone(),
            snapshotter: node.snapshotter.clone(),
        },
        info: vec![format!(
            "containerd: ctr --address {} --namespace k8s.io containers ls",
            socket.display()
        )],
        after_ready: Some(AfterReady::TestImages {
            socket: socket.clone(),
            snapshotter: node.snapshotter.clone(),
            images_dir: layout.dir.join("images"),
        }),
        on_stop: Some(OnStop::Containerd {
            dir: layout.dir.clone(),
            socket: socket.clone(),
            ipam_dir: ipam_dir.clone(),
            bridge: CNI_BRIDGE.into(),
            cgroup_root: CGROUP_ROOT.into(),
        }),
    };
    let mut a: Vec<OsString> = Vec::new();
    let mut flag = |k: &str, v: &dyn AsRef<std::ffi::OsStr>| {
        a.push(k.into());
        a.push(v.as_ref().to_os_string());
    };
    flag("--kubeconfig", &node.kubeconfig);
    flag("--container-runtime-endpoint", &layout.endpoint());
    flag("--root-dir", &dir.join("kubelet"));
    flag("--pod-logs-dir", &dir.join("logs").join("pods"));
    flag("--hostname-override", &node.name);
    // The CRI plugin reads CNI configs from where containerd's config says; the kubelet
    // writes the node's bridge config there once it knows its podCIDR.
    flag("--cni-conf-dir", &layout.cni_conf_dir());
    flag("--cni-bridge-name", &CNI_BRIDGE);
    flag("--cni-ipam-data-dir", &ipam_dir);
    flag("--cgroup-root", &format!("/{CGROUP_ROOT}"));
    flag("--node-ip", &node.node_ip);
    flag("--cluster-dns", &NODE_LOCAL_DNS);
    flag("--cluster-domain", &CLUSTER_DOMAIN);
    // The kubelet API (logs, exec, port-forward through the API server): a serving certificate
    // from the cluster CA, callers' client certificates checked against it.
    let pki_dir = dir.join("pki");
    let (serving_cert, serving_key) = crate::clusterfiles::kubelet_serving_paths(&pki_dir);
    flag("--tls-cert-file", &serving_cert);
    flag("--tls-private-key-file", &serving_key);
    flag("--client-ca-file", &pki_dir.join("ca.crt"));
    a.push("--dbus-address".into());
    a.push(dbus_address(dir).into());
    let kubelet = Component {
        name: "kubelet",
        program: find_binary("kelson-kubelet")?,
        args: a,
        log: dir.join("logs").join("kubelet.log"),
        readiness: Readiness::Notify,
        info: vec![format!(
            "kubelet: node {} (pod logs under {})",
            node.name,
            dir.join("logs").join("pods").display()
        )],
        after_ready: None,
        on_stop: None,
    };
    Ok(vec![containerd, kubelet])
}

/// The first global IPv4 address (what the kubelet reports as InternalIP), for the serving
/// certificate's SANs.
fn node_internal_ip() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .stdin(Stdio::null())
        .output();
    if let Ok(out) = out {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut it = line.split_whitespace();
            while let Some(w) = it.next() {
                if w == "inet" {
                    if let Some(a) = it.next().and_then(|a| a.split('/').next()) {
                        // Link-local (169.254/16) is never a node address; the cluster DNS
                        // address lives there.
                        if !a.starts_with("169.254.") {
                            return a.to_string();
                        }
                    }
                }
            }
        }
    }
    "127.0.0.1".into()
}

/// Chooses the node's name and containerd snapshotter and writes containerd's config and the
/// kubelet's kubeconfig.
pub fn prepare_node(dir: &Path, pki: &PkiPaths, state: &UpState) -> anyhow::Result<NodeSetup> {
    use kelson_oci::containerd::{overlayfs_supported, Layout};
    let name = kelson_pki::hostname()
        .map(|h| h.to_lowercase())
        .unwrap_or_else(|| "localhost".into());
    let layout = Layout::new(dir.join("containerd"));
    fs::create_dir_all(&layout.dir)
        .with_context(|| format!("creating {}", layout.dir.display()))?;
    // The same mount test containerd's overlay plugin makes at start, asked first so the
    // daemon starts once with a snapshotter it will load.
    let snapshotter = if overlayfs_supported(&layout.dir) {
        "overlayfs"
    } else {
        "native"
    };
    layout.write_config(snapshotter, kelson_oci::PAUSE_IMAGE)?;
    let kubeconfig = ensure_node_kubeconfig(dir, pki, &name, state.apiserver_port)?;
    let node_ip = node_internal_ip();
    let ips: Vec<std::net::IpAddr> = ["127.0.0.1".to_string(), node_ip.clone()]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    crate::clusterfiles::ensure_kubelet_serving_cert(pki, &name, &ips)?;
    // kelson-dns listens on the node-local address; pods reach it through the node.
    let st = Command::new("ip")
        .args([
            "addr",
            "replace",
            &format!("{NODE_LOCAL_DNS}/32"),
            "dev",
            "lo",
        ])
        .stdin(Stdio::null())
        .status()
        .context("running ip addr replace")?;
    if !st.success() {
        bail!("could not add the cluster DNS address {NODE_LOCAL_DNS} to lo ({st})");
    }
    Ok(NodeSetup {
        name,
        snapshotter: snapshotter.into(),
        kubeconfig,
        node_ip,
    })
}

/// Pod network of the all-in-one cluster (node IPAM hands out a /24 per node).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// `GET /readyz` over mutual TLS (HTTP/1.1, one request per connection).
async fn readyz(
    addr: std::net::SocketAddr,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = kelson_runtime::tls::client_config(ca, Some(cert), Some(key))?;
    let tcp = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let name = rustls_pki_types::ServerName::from(addr.ip());
    let mut tls = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    tls.write_all(
        format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(3),
        (&mut tls).take(64 * 1024).read_to_end(&mut buf),
    )
    .await
    .context("no answer")??;
    let text = String::from_utf8_lossy(&buf);
    let status = text.lines().next().unwrap_or_default().to_string();
    if !status.contains(" 200 ") {
        bail!("/readyz: {status}");
    }
    Ok("readyz ok".into())
}

/// A started component.
struct Running {
    comp: Component,
    child: Child,
    notify: Option<std::os::unix::net::UnixDatagram>,
    ready: bool,
    status: String,
}

impl Running {
    fn start(comp: Component) -> anyhow::Result<Running> {
        if let Some(d) = comp.log.parent() {
            fs::create_dir_all(d)?;
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&comp.log)
            .with_context(|| format!("opening {}", comp.log.display()))?;
        let mut cmd = Command::new(&comp.program);
        cmd.args(&comp.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Logs go to the file we name, not to the journal of whoever started us.
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .process_group(0);
        let notify = if matches!(comp.readiness, Readiness::Notify) {
            // Next to the log: short enough for sun_path in any data dir a test makes.
            let dir = comp.log.parent().unwrap_or(Path::new("."));
            let path = dir.join(format!("{}.notify", comp.name));
            let _ = fs::remove_file(&path);
            let sock = std::os::unix::net::UnixDatagram::bind(&path)
                .with_context(|| format!("binding the notify socket {}", path.display()))?;
            sock.set_nonblocking(true)?;
            cmd.env("NOTIFY_SOCKET", &path);
            Some(sock)
        } else {
            None
        };
        set_parent_death_signal(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", comp.program.display()))?;
        Ok(Running {
            comp,
            child,
            notify,
            ready: false,
            status: String::new(),
        })
    }

    /// Drains sd_notify datagrams; true once `READY=1` has arrived.
    fn poll_notify(&mut self) -> bool {
        let Some(sock) = &self.notify else {
            return false;
        };
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                if line == "READY=1" {
                    self.ready = true;
                } else if let Some(st) = line.strip_prefix("STATUS=") {
                    self.status = st.to_string();
                }
            }
        }
        self.ready
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn log_tail(&self, n: usize) -> String {
        let text = fs::read(&self.comp.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM to the component's group, up to `grace` to exit, then SIGKILL; with the
    /// component's clean-up before and after.
    async fn stop(&mut self, grace: Duration) {
        if let Some(OnStop::Containerd { socket, .. }) = self.comp.on_stop.clone() {
            if self.exited().is_none() {
                let t0 = Instant::now();
                let n = tokio::task::spawn_blocking(move || {
                    kelson_oci::containerd::remove_all_containers(&socket)
                })
                .await
                .unwrap_or(0);
                if n > 0 {
                    println!(
                        "{}: killed and removed {n} containers in {:.1?}",
                        self.comp.name,
                        t0.elapsed()
                    );
                }
            }
        }
        self.signal_and_wait(grace).await;
        if let Some(OnStop::Commands(cmds)) = self.comp.on_stop.clone() {
            for c in cmds {
                let _ = Command::new(&c[0])
                    .args(&c[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Some(OnStop::Containerd {
            dir,
            ipam_dir,
            bridge,
            cgroup_root,
            ..
        }) = self.comp.on_stop.clone()
        {
            let _ = tokio::task::spawn_blocking(move || {
                node_cleanup(&dir, &ipam_dir, &bridge, &cgroup_root)
            })
            .await;
        }
    }

    async fn signal_and_wait(&mut self, grace: Duration) {
        let pgid = Pid::from_raw(self.pid() as i32);
        if self.exited().is_some() {
            let _ = killpg(pgid, Signal::SIGKILL);
            return;
        }
        let _ = killpg(pgid, Signal::SIGTERM);
        let t0 = Instant::now();
        let deadline = t0 + grace;
        while Instant::now() < deadline {
            if let Some(st) = self.exited() {
                println!("{}: stopped ({st}) in {:.1?}", self.comp.name, t0.elapsed());
                let _ = killpg(pgid, Signal::SIGKILL);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("{}: did not stop within {grace:?}; killing", self.comp.name);
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// What a stopped node leaves on the host once its containers are gone: mounts under
/// containerd's directory, host-local IP reservations (files named by IP, plus its
/// `last_reserved_ip` bookkeeping; no pod holds an address any more), the pods' bridge, and the
/// empty pod cgroups under `cgroup_root` in every hierarchy. Best effort.
fn node_cleanup(ctrd_dir: &Path, ipam_dir: &Path, bridge: &str, cgroup_root: &str) {
    kelson_oci::containerd::unmount_under(ctrd_dir);
    let _ = fs::remove_dir_all(ipam_dir);
    if Path::new("/sys/class/net").join(bridge).exists() {
        let _ = Command::new("ip")
            .args(["link", "del", bridge])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let mut dirs = Vec::new();
    let mut roots = vec![Path::new("/sys/fs/cgroup").join(cgroup_root)];
    for h in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        roots.push(h.path().join(cgroup_root));
    }
    for r in roots {
        collect_dirs(&r, &mut dirs, 0);
    }
    // Deepest first: rmdir only removes empty cgroups, and a busy one stays.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = fs::remove_dir(d);
    }
}

/// Directories under `dir` (itself included), to a bounded depth (pod/container cgroups are 2).
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 4 || !dir.is_dir() || fs::symlink_metadata(dir).is_ok_and(|m| m.is_symlink()) {
        return;
    }
    out.push(dir.to_path_buf());
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out, depth + 1);
        }
    }
}

/// Asks the kernel to SIGTERM the child when kelsonctl dies, so a `kill -9` of kelsonctl does
/// not leave daemons behind holding ports and data dirs.
#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2) and
    // getppid(2), which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            // The parent may have died between fork and prctl: then nobody would signal us.
            if nix::unistd::getppid().as_raw() != parent {
                return Err(std::io::Error::other("parent exited during start"));
            }
            Ok(())
        });
    }
}

/// Why a wait ended.
enum Stop {
    Signal(&'static str),
}

struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.int.recv() => Stop::Signal("SIGINT"),
            _ = self.term.recv() => Stop::Signal("SIGTERM"),
        }
    }
}

async fn probe(r: &Readiness) -> anyhow::Result<String> {
    match r {
        Readiness::KvStatus { conn } => {
            let s = crate::kv::endpoint_status(conn, &conn.endpoints[0]).await?;
            if s.leader == 0 {
                bail!("no leader yet");
            }
            Ok(format!(
                "member {:x}, version {}, raft term {}",
                s.member_id, s.version, s.raft_term
            ))
        }
        Readiness::HttpsReadyz {
            addr,
            ca,
            cert,
            key,
        } => readyz(*addr, ca, cert, key).await,
        Readiness::Containerd {
            socket,
            snapshotter,
        } => {
            let (socket, snapshotter) = (socket.clone(), snapshotter.clone());
            tokio::task::spawn_blocking(move || {
                let version = kelson_oci::containerd::server_version(&socket)?;
                // Serving without a plugin it needs is final: waiting will not load it.
                kelson_oci::containerd::check_plugins(&socket, &snapshotter)
                    .map_err(|e| Fatal(e.to_string()))?;
                Ok(format!("containerd {version}, snapshotter {snapshotter}"))
            })
            .await?
        }
        Readiness::Notify => bail!("waiting for READY=1"),
        Readiness::Socket { path } => {
            tokio::net::UnixStream::connect(path)
                .await
                .with_context(|| format!("connecting to {}", path.display()))?;
            Ok(format!("listening on {}", path.display()))
        }
    }
}

/// A readiness failure that waiting will not fix.
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Waits until `r` is ready; fails if its process exits or the bound passes. `Ok(None)` means
/// a stop signal arrived first.
async fn wait_ready(
    r: &mut Running,
    signals: &mut Signals,
    timeout: Duration,
) -> anyhow::Result<Option<String>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    loop {
        if let Some(st) = r.exited() {
            bail!(
                "{} exited during startup ({st}); last log lines from {}:\n{}",
                r.comp.name,
                r.comp.log.display(),
                r.log_tail(30)
            );
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} not ready after {timeout:?} ({last}); last log lines from {}:\n{}",
                r.comp.name,
                r.comp.log.display(),
                r.log_tail(30)
            );
        }
        if matches!(r.comp.readiness, Readiness::Notify) {
            if r.poll_notify() {
                return Ok(Some(r.status.clone()));
            }
            last = format!("no READY=1 yet (status: {:?})", r.status);
        } else {
            tokio::select! {
                res = probe(&r.comp.readiness) => match res {
                    Ok(what) => return Ok(Some(what)),
                    Err(e) if e.downcast_ref::<Fatal>().is_some() => bail!(
                        "{} cannot become ready: {e:#}; last log lines from {}:\n{}",
                        r.comp.name,
                        r.comp.log.display(),
                        r.log_tail(30)
                    ),
                    Err(e) => last = format!("{e:#}"),
                },
                Stop::Signal(s) = signals.recv() => {
                    println!("{s} received during startup");
                    return Ok(None);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            Stop::Signal(s) = signals.recv() => {
                println!("{s} received during startup");
                return Ok(None);
            }
        }
    }
}

async fn after_ready(name: &str, step: AfterReady) -> anyhow::Result<()> {
    match step {
        AfterReady::TestImages {
            socket,
            snapshotter,
            images_dir,
        } => {
            let imported = tokio::task::spawn_blocking(move || {
                kelson_oci::containerd::ensure_test_images(
                    &socket,
                    &snapshotter,
                    &images_dir,
                    Path::new(kelson_oci::DEFAULT_BUSYBOX),
                )
            })
            .await?
            .with_context(|| {
                format!(
                    "{name}: building and importing the test images (is busybox-static installed?)"
                )
            })?;
            if imported.is_empty() {
                println!(
                    "{name}: images {} and {} present",
                    kelson_oci::PAUSE_IMAGE,
                    kelson_oci::BUSYBOX_IMAGE
                );
            } else {
                println!("{name}: imported {}", imported.join(", "));
            }
            Ok(())
        }
        AfterReady::ClusterInfo {
            kubeconfig,
            server,
            ca,
        } => {
            crate::clusterinfo::publish(&kubeconfig, &server, &ca).await?;
            let der = kelson_pki::load_certs(&ca)?
                .into_iter()
                .next()
                .context("no certificate in the CA file")?;
            let hash = crate::join::ca_cert_hash(der.as_ref())?;
            println!("{name}: kube-public/cluster-info published; to join a node: `kelsonctl token create --kubeconfig {}`, then on the node `kelsonctl join --server {server} --token <token> --ca-cert-hash {hash}`", kubeconfig.display());
            Ok(())
        }
    }
}

async fn stop_all(running: &mut [Running]) {
    for r in running.iter_mut().rev() {
        r.stop(Duration::from_secs(15)).await;
    }
}

fn install_deps() -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/setup.sh");
    if !script.is_file() {
        bail!(
            "--install-deps needs the source tree's scripts/setup.sh (looked at {})",
            script.display()
        );
    }
    println!("deps: running {}", script.display());
    let st = Command::new("bash").arg(&script).status()?;
    if !st.success() {
        bail!("{} failed: {st}", script.display());
    }
    Ok(())
}

/// Runs the all-in-one cluster until SIGINT/SIGTERM (exit 0) or a component fails (error).
pub async fn run(args: UpArgs) -> anyhow::Result<i32> {
    // Handlers first: a signal during startup must still stop what was started.
    let mut signals = Signals::new()?;
    if args.install_deps {
        install_deps()?;
    }
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::default_data_dir);
    let created = !dir.exists();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    if created {
        use std::os::unix::fs::PermissionsExt;
        // Holds private keys and the whole keyspace. Only a directory we created is narrowed:
        // `--data-dir` pointing at an existing shared directory must not change its mode.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    }
    println!("data dir: {}", dir.display());
    let state = load_or_init_state(&dir, &args)?;
    let pki = kelson_pki::init_cluster_pki(&dir.join("pki"), &args.hosts)?;
    println!(
        "pki: {} (ca.crt; the store's own store-ca.crt with kv-server, kv-peer, kv-client)",
        pki.dir.display()
    );
    let api_pki = ensure_apiserver_pki(&pki, &args.hosts)?;
    let kubeconfig = write_admin_kubeconfig(&dir, &pki, &api_pki, state.apiserver_port)?;
    println!(
        "pki: apiserver, apiserver-etcd-client, admin (system:masters); kubeconfig: {}",
        kubeconfig.display()
    );

    let node = if args.no_node {
        None
    } else {
        let n = prepare_node(&dir, &pki, &state)?;
        println!(
            "node: {} (containerd snapshotter {}); kubeconfig: {}",
            n.name,
            n.snapshotter,
            n.kubeconfig.display()
        );
        Some(n)
    };
    let files = crate::clusterfiles::ensure_control_plane_files(&pki)?;
    println!(
        "pki: service-account key, Secrets encryption ({}), audit policy, apiserver-kubelet-client",
        files.encryption_config.display()
    );
    let comps = components(&dir, &pki, &state, node.as_ref())?;
    let timeout = Duration::from_secs(args.ready_timeout.max(1));
    let mut running: Vec<Running> = Vec::new();
    for comp in comps {
        println!(
            "{}: starting {} (log: {})",
            comp.name,
            comp.program.display(),
            comp.log.display()
        );
        let r = Running::start(comp);
        let mut r = match r {
            Ok(r) => r,
            Err(e) => {
                stop_all(&mut running).await;
                return Err(e);
            }
        };
        println!("{}: pid {}", r.comp.name, r.pid());
        let res = wait_ready(&mut r, &mut signals, timeout).await;
        running.push(r);
        match res {
            Ok(Some(what)) => {
                let r = running.last().expect("just pushed");
                println!("{}: ready ({what})", r.comp.name);
                for line in &r.comp.info {
                    println!("{line}");
                }
                if let Some(step) = r.comp.after_ready.clone() {
                    if let Err(e) = after_ready(r.comp.name, step).await {
                        stop_all(&mut running).await;
                        return Err(e);
                    }
                }
            }
            Ok(None) => {
                stop_all(&mut running).await;
                return Ok(0);
            }
            Err(e) => {
                stop_all(&mut running).await;
                return Err(e);
            }
        }
    }
    println!("logs: {}", dir.join("logs").display());
    println!("ready");

    // Serve until told to stop, or until a component dies (then stop the rest and fail).
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            Stop::Signal(s) = signals.recv() => {
                println!("{s} received; stopping");
                stop_all(&mut running).await;
                println!("stopped");
                return Ok(0);
            }
            _ = tick.tick() => {
                let mut died = None;
                for r in running.iter_mut() {
                    if let Some(st) = r.exited() {
                        died = Some(format!(
                            "{} exited unexpectedly ({st}); last log lines from {}:\n{}",
                            r.comp.name, r.comp.log.display(), r.log_tail(30)
                        ));
                        break;
                    }
                }
                if let Some(msg) = died {
                    stop_all(&mut running).await;
                    bail!(msg);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by<'a>(comps: &'a [Component], name: &str) -> &'a Component {
        comps
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no component {name}"))
    }

    fn args(dir: &Path) -> UpArgs {
        UpArgs {
            data_dir: Some(dir.to_path_buf()),
            kv_port: None,
            apiserver_port: None,
            hosts: vec![],
            install_deps: false,
            no_node: false,
            ready_timeout: 5,
        }
    }

    #[test]
    fn state_is_chosen_once_and_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.kv_port = Some(kelson_testsupport::free_port());
        let s1 = load_or_init_state(dir.path(), &a).unwrap();
        assert_eq!(s1.kv_port, a.kv_port.unwrap());
        assert_ne!(s1.kv_peer_port, s1.kv_port);
        assert_eq!(s1.apiserver_port, DEFAULT_APISERVER_PORT);
        // Resume without flags: same everything.
        let s2 = load_or_init_state(dir.path(), &args(dir.path())).unwrap();
        assert_eq!(s1, s2);
        // A new client port is honored; identity and peer port stay.
        let mut b = args(dir.path());
        b.kv_port = Some(s1.kv_port.wrapping_add(7));
        b.apiserver_port = Some(7443);
        let s3 = load_or_init_state(dir.path(), &b).unwrap();
        assert_eq!(s3.kv_peer_port, s1.kv_peer_port);
        assert_eq!(s3.cluster_token, s1.cluster_token);
        assert_eq!(s3.apiserver_port, 7443);
        // Clashing with the peer port is refused.
        let mut c = args(dir.path());
        c.kv_port = Some(s1.kv_peer_port);
        assert!(load_or_init_state(dir.path(), &c).is_err());
    }

    #[test]
    fn apiserver_pki_is_issued_once_and_kubeconfig_embeds_it() {
        let dir = tempfile::tempdir().unwrap();
        let pki = kelson_pki::init_cluster_pki(&dir.path().join("pki"), &[]).unwrap();
        let api = ensure_apiserver_pki(&pki, &["10.1.2.3".into()]).unwrap();
        let info = kelson_pki::cert_info(&api.serving_cert).unwrap();
        for name in [
            "kubernetes.default.svc",
            "127.0.0.1",
            "10.96.0.1",
            "10.1.2.3",
        ] {
            assert!(
                info.sans.iter().any(|s| s == name),
                "{name} in {:?}",
                info.sans
            );
        }
        assert!(kelson_pki::cert_info(&api.admin_cert)
            .unwrap()
            .subject
            .contains("system:masters"));
        // The store client certificate comes from the store CA, everything else from the
        // cluster CA (CIS 2.7).
        let pem = |p: &Path| fs::read_to_string(p).unwrap();
        assert!(kelson_pki::issued_by(
            &pem(&api.etcd_client_cert),
            &pem(&pki.store_ca_cert)
        ));
        for cert in [&api.serving_cert, &api.admin_cert] {
            assert!(
                kelson_pki::issued_by(&pem(cert), &pem(&pki.ca_cert)),
                "{cert:?}"
            );
            assert!(!kelson_pki::issued_by(&pem(cert), &pem(&pki.store_ca_cert)));
        }
        // A store client certificate of the cluster CA (the layout before the store had its
        // own CA) is reissued by the store CA.
        kelson_pki::Ca::load(&pki.dir)
            .unwrap()
            .issue(&kelson_pki::CertRequest::new(
                kelson_pki::KV_CLIENT_CN,
                kelson_pki::Usage::Client,
            ))
            .unwrap()
            .write_pair(&pki.dir, "apiserver-etcd-client")
            .unwrap();
        ensure_apiserver_pki(&pki, &["10.1.2.3".into()]).unwrap();
        assert!(kelson_pki::issued_by(
            &pem(&api.etcd_client_cert),
            &pem(&pki.store_ca_cert)
        ));
        let before = fs::read(&api.admin_cert).unwrap();
        ensure_apiserver_pki(&pki, &["10.1.2.3".into()]).unwrap();
        assert_eq!(
            fs::read(&api.admin_cert).unwrap(),
            before,
            "a valid cert is kept"
        );
        let kc = write_admin_kubeconfig(dir.path(), &pki, &api, 7443).unwrap();
        let text = fs::read_to_string(&kc).unwrap();
        assert!(
            text.contains("server: https://127.0.0.1:7443") && text.contains("client-key-data: ")
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&kc).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn broken_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), "kv_port = 'x'\nbogus = 1\n").unwrap();
        let err = load_or_init_state(dir.path(), &args(dir.path())).unwrap_err();
        assert!(format!("{err:#}").contains("up.toml"), "{err:#}");
    }

    #[test]
    fn kv_component_flags() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiPaths::cluster(&dir.path().join("pki"));
        let state = UpState {
            name: "n".into(),
            cluster_token: "t".into(),
            kv_port: 12379,
            kv_peer_port: 12380,
            apiserver_port: 6443,
        };
        // Any existing file will do as the binary for building the list.
        std::env::set_var("KELSON_KV_BIN", "/bin/true");
        std::env::set_var("KELSON_APISERVER_BIN", "/bin/true");
        std::env::set_var("KELSON_SCHEDULER_BIN", "/bin/true");
        std::env::set_var("KELSON_CONTROLLER-MANAGER_BIN", "/bin/true");
        std::env::set_var("KELSON_CONTAINERD_BIN", "/bin/true");
        std::env::set_var("KELSON_KUBELET_BIN", "/bin/true");
        std::env::set_var("KELSON_PROXY_BIN", "/bin/true");
        std::env::set_var("KELSON_DNS_BIN", "/bin/true");
        std::env::set_var("KELSON_DBUS-DAEMON_BIN", "/bin/true");
        let comps = components(dir.path(), &pki, &state, None).unwrap();
        assert_eq!(comps.len(), 5);
        assert_eq!(comps[0].name, "dbus");
        let api: Vec<String> = by(&comps, "apiserver")
            .args
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let api = api.join(" ");
        assert_eq!(by(&comps, "apiserver").name, "apiserver");
        assert!(
            api.contains("--etcd-servers https://127.0.0.1:12379"),
            "{api}"
        );
        assert!(api.contains("--secure-port 6443"), "{api}");
        assert!(api.contains("apiserver-etcd-client.crt"), "{api}");
        assert!(
            api.contains("--etcd-cafile ") && api.contains("pki/store-ca.crt"),
            "{api}"
        );
        assert!(
            api.contains("pki/ca.crt"),
            "--client-ca-file is the cluster CA: {api}"
        );
        assert!(
            api.contains("--audit-log-maxage 30") && api.contains("--audit-log-maxbackup 10"),
            "{api}"
        );
        for want in [
            "--service-account-signing-key-file",
            "--encryption-provider-config",
            "--audit-policy-file",
            "--kubelet-client-certificate",
        ] {
            assert!(api.contains(want), "{want} missing: {api}");
        }
        let a: Vec<String> = by(&comps, "kv")
            .args
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let joined = a.join(" ");
        assert!(
            joined.contains("--listen-client-urls https://127.0.0.1:12379"),
            "{joined}"
        );
        assert!(
            joined.contains("--initial-cluster n=https://127.0.0.1:12380"),
            "{joined}"
        );
        assert!(a.contains(&"--client-cert-auth".to_string()));
        assert!(by(&comps, "kv").log.ends_with("logs/kv.log"));
        for f in ["--trusted-ca-file", "--peer-trusted-ca-file"] {
            assert!(
                joined.contains(&format!("{f} {}", pki.store_ca_cert.display())),
                "{f} must be the store CA: {joined}"
            );
        }

        // With a node: containerd (its own socket under the data dir), then the kubelet on it.
        let node = NodeSetup {
            name: "node-a".into(),
            snapshotter: "native".into(),
            kubeconfig: dir.path().join("kubelet.kubeconfig"),
            node_ip: "192.0.2.7".into(),
        };
        let comps = components(dir.path(), &pki, &state, Some(&node)).unwrap();
        let names: Vec<&str> = comps.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "dbus",
                "kv",
                "apiserver",
                "scheduler",
                "controller-manager",
                "proxy",
                "dns",
                "containerd",
                "kubelet"
            ]
        );
        let sock = dir.path().join("containerd/containerd.sock");
        assert!(matches!(&by(&comps, "containerd").readiness,
            Readiness::Containerd { socket, snapshotter } if *socket == sock && snapshotter == "native"));
        assert!(matches!(
            by(&comps, "containerd").on_stop,
            Some(OnStop::Containerd { .. })
        ));
        let kubelet = by(&comps, "kubelet")
            .args
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let cfg = kelson_oci::containerd::config_toml(
            &dir.path().join("containerd"),
            "native",
            kelson_oci::PAUSE_IMAGE,
        );
        let conf_dir = dir.path().join("containerd/cni/net.d");
        assert!(cfg.contains(&format!("conf_dir = \"{}\"", conf_dir.display())));
        for want in [
            format!("--container-runtime-endpoint unix://{}", sock.display()),
            format!("--cni-conf-dir {}", conf_dir.display()),
            format!("--root-dir {}", dir.path().join("kubelet").display()),
            format!("--pod-logs-dir {}", dir.path().join("logs/pods").display()),
            "--hostname-override node-a".into(),
            format!("--cluster-dns {NODE_LOCAL_DNS}"),
            format!("--dbus-address {}", dbus_address(dir.path())),
        ] {
            assert!(kubelet.contains(&want), "{want} in {kubelet}");
        }
        assert!(matches!(by(&comps, "kubelet").readiness, Readiness::Notify));
    }

    #[test]
    fn node_kubeconfig_carries_a_node_identity() {
        let dir = tempfile::tempdir().unwrap();
        let pki = kelson_pki::init_cluster_pki(&dir.path().join("pki"), &[]).unwrap();
        let kc = ensure_node_kubeconfig(dir.path(), &pki, "node-a", 7443).unwrap();
        let subject = kelson_pki::cert_info(&pki.dir.join("kubelet.crt"))
            .unwrap()
            .subject;
        assert!(subject.contains("system:node:node-a"), "{subject}");
        assert!(subject.contains("system:nodes"), "{subject}");
        let text = fs::read_to_string(&kc).unwrap();
        assert!(text.contains("user: system:node:node-a"), "{text}");
        assert!(text.contains("server: https://127.0.0.1:7443"), "{text}");
        // Kept for the same node, reissued for another.
        let before = fs::read(pki.dir.join("kubelet.crt")).unwrap();
        ensure_node_kubeconfig(dir.path(), &pki, "node-a", 7443).unwrap();
        assert_eq!(fs::read(pki.dir.join("kubelet.crt")).unwrap(), before);
        ensure_node_kubeconfig(dir.path(), &pki, "node-b", 7443).unwrap();
        let subject = kelson_pki::cert_info(&pki.dir.join("kubelet.crt"))
            .unwrap()
            .subject;
        assert!(subject.contains("system:node:node-b"), "{subject}");
    }
}
