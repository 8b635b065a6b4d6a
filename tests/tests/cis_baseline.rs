//! The security baseline, checked kube-bench style against what Kelson's own tools produce.
//!
//! kube-bench audits a control plane by reading each component's command line and files and
//! comparing them with the CIS Kubernetes Benchmark. This test does the same against
//! `kelsonctl up --no-node` (a temporary data dir, ephemeral ports) and goes one step further
//! where it can: besides reading the flags from `/proc/<pid>/cmdline`, it probes the running
//! daemons (an anonymous request must get 401, a TLS 1.1 handshake must be refused, a raw read
//! of a Secret from the store must be ciphertext). The file-permission rules are also run on
//! `kelsonctl init` output. Item numbers are the CIS Kubernetes Benchmark v1.9's; every
//! assertion names the item it checks.
//!
//! Findings that are known and owned elsewhere (not fixed by this test) are listed in
//! [`KNOWN_FINDINGS`]: the test fails when a finding appears that is not listed, and also when
//! a listed one is fixed (so the list is kept honest). Each is printed on stderr.
//!
//! Needs root (file owners), curl, openssl, etcdctl, and the binaries:
//! `cargo build -p kelsonctl -p kelson-kv -p kelson-apiserver -p kelson-scheduler
//! -p kelson-controller-manager`. Run: `cargo test -p kelson-tests --test cis_baseline`.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kelson_testsupport::{bin_path, etcdctl, free_port, ChildGuard};

/// Known findings, by CIS item, with who owns the fix. See the module docs.
/// None at the moment: 2.7 (the store's own CA) and 1.2.18 (--audit-log-maxage) were fixed
/// in session 3 and are ordinary checks now.
const KNOWN_FINDINGS: &[&str] = &[];

fn need(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} is required (scripts/setup.sh installs it)");
}

fn need_root() {
    // SAFETY-free check without nix: root's files are owned by uid 0.
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    assert_eq!(
        uid, 0,
        "cis_baseline checks file owners and runs the control plane: run it as root"
    );
}

/// The command line of a process, as kube-bench reads it.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The value of `--flag value` or `--flag=value`; `Some("")` for a bare `--flag`.
fn flag(args: &[String], name: &str) -> Option<String> {
    let eq = format!("{name}=");
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix(&eq) {
            return Some(v.to_string());
        }
        if a == name {
            return Some(match args.get(i + 1) {
                Some(v) if !v.starts_with("--") => v.clone(),
                _ => String::new(),
            });
        }
    }
    None
}

/// Collected results: violations fail the test unless listed in [`KNOWN_FINDINGS`].
#[derive(Default)]
struct Report {
    violations: Vec<String>,
    findings: BTreeSet<String>,
}

impl Report {
    fn check(&mut self, ok: bool, item: &str, what: impl std::fmt::Display) {
        if !ok {
            self.violations.push(format!("CIS {item}: {what}"));
        }
    }
    /// A check whose failure may be a known finding (`key` = "<item> <where>").
    fn finding(&mut self, ok: bool, key: &str, what: impl std::fmt::Display) {
        if !ok {
            eprintln!("FINDING CIS {key}: {what}");
            if KNOWN_FINDINGS.contains(&key) {
                self.findings.insert(key.to_string());
            } else {
                self.violations.push(format!("CIS {key}: {what}"));
            }
        }
    }
    fn finish(self, scope: &str) {
        for k in KNOWN_FINDINGS
            .iter()
            .filter(|k| k.ends_with(&format!(" {scope}")))
        {
            assert!(
                self.findings.contains(*k),
                "CIS {k} is listed in KNOWN_FINDINGS but passes now: remove it from the list"
            );
        }
        assert!(
            self.violations.is_empty(),
            "{} CIS baseline violation(s) in {scope}:\n  {}",
            self.violations.len(),
            self.violations.join("\n  ")
        );
    }
}

/// File permission items (CIS 1.1.x) over a tree of generated files. `service_gid` is the
/// group a non-root daemon reads its files through (0640 root:<group> is allowed for those).
fn check_tree_modes(report: &mut Report, root: &Path, service_gid: Option<u32>) {
    let mut stack = vec![root.to_path_buf()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                report.check(
                    meta.mode() & 0o022 == 0,
                    "1.1.19",
                    format!("{} is a group/world-writable directory", path.display()),
                );
                stack.push(path);
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            files += 1;
            check_file_mode(report, &path, &meta, service_gid);
        }
    }
    assert!(files > 10, "only {files} files under {}", root.display());
}

fn check_file_mode(report: &mut Report, path: &Path, meta: &std::fs::Metadata, gid: Option<u32>) {
    let mode = meta.mode() & 0o7777;
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let shown = format!(
        "{} is {mode:04o} {}:{}",
        path.display(),
        meta.uid(),
        meta.gid()
    );
    let is_log = path.components().any(|c| c.as_os_str() == "logs");
    // Anything holding a secret: keys, kubeconfigs (embedded client keys), the encryption
    // config (the Secrets key), the audit log (request metadata).
    let secret = name.ends_with(".key")
        || name.ends_with(".kubeconfig")
        || name.starts_with("encryption-config")
        || name.starts_with("audit.log");
    let service_readable = |m: u32| gid.is_some_and(|g| m == 0o640 && meta.gid() == g);
    report.check(
        mode & 0o022 == 0,
        "1.1.x",
        format!("{shown}: group/world-writable"),
    );
    if name.ends_with(".key") {
        report.check(
            mode == 0o600 || service_readable(mode),
            "1.1.21",
            format!("{shown}: a private key must be 0600 (or 0640 root:<service group>)"),
        );
    } else if name == "admin.kubeconfig" {
        report.check(
            mode == 0o600,
            "1.1.13",
            format!("{shown}: admin credentials must be 0600"),
        );
    } else if secret {
        report.check(
            mode & 0o077 == 0 || service_readable(mode),
            if name.ends_with(".kubeconfig") {
                "1.1.15/1.1.17"
            } else if name.starts_with("encryption-config") {
                "1.2.28"
            } else {
                "3.2.1"
            },
            format!("{shown}: holds a secret, must be 0600 (or 0640 root:<service group>)"),
        );
    } else if name.ends_with(".crt") {
        report.check(
            mode & 0o133 == 0,
            "1.1.20",
            format!("{shown}: a certificate must be 0644 or stricter"),
        );
    } else if !is_log {
        report.check(
            mode & 0o133 == 0,
            "1.1.x",
            format!("{shown}: configuration must be 0644 or stricter"),
        );
    }
    // Control-plane files belong to root (CIS 1.1.x ownership items); `up` runs as root.
    report.check(
        meta.uid() == 0,
        "1.1.x",
        format!("{shown}: must be owned by root"),
    );
}

/// `kelsonctl up --no-node` and its component PIDs (from the `<name>: pid N` lines).
struct Up {
    guard: ChildGuard,
    data: PathBuf,
    api_port: u16,
    kv_port: u16,
}

impl Up {
    fn start(tmp: &Path) -> Up {
        let data = tmp.join("kelson");
        let kv_port = free_port();
        let api_port = free_port();
        let mut cmd = Command::new(bin_path("kelsonctl"));
        cmd.arg("up")
            .arg("--no-node")
            .arg("--data-dir")
            .arg(&data)
            .arg("--kv-port")
            .arg(kv_port.to_string())
            .arg("--apiserver-port")
            .arg(api_port.to_string())
            .arg("--ready-timeout=60");
        for b in [
            "kelson-kv",
            "kelson-apiserver",
            "kelson-scheduler",
            "kelson-controller-manager",
        ] {
            let env = format!("{}_BIN", b.replace('-', "_").to_uppercase());
            cmd.env(env, bin_path(b));
        }
        let mut guard = ChildGuard::spawn("kelsonctl up", cmd, &tmp.join("up.log")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let log = guard.log();
            if log.lines().any(|l| l == "ready") {
                break;
            }
            if let Some(st) = guard.try_wait() {
                panic!("kelsonctl up exited ({st}) before ready:\n{log}");
            }
            assert!(Instant::now() < deadline, "no `ready` within 90 s:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Up {
            guard,
            data,
            api_port,
            kv_port,
        }
    }

    fn pid(&self, component: &str) -> u32 {
        let prefix = format!("{component}: pid ");
        let log = self.guard.log();
        log.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .next_back()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{prefix}N` line in:\n{log}"))
    }

    fn pki(&self) -> PathBuf {
        self.data.join("pki")
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.api_port)
    }

    /// curl against the API server: (HTTP status, body). `cert` = None is anonymous.
    fn curl(&self, method: &str, path: &str, cert: Option<(&Path, &Path)>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .arg("--cacert")
        .arg(self.pki().join("ca.crt"));
        if let Some((c, k)) = cert {
            cmd.arg("--cert").arg(c).arg("--key").arg(k);
        }
        let out = cmd.arg(self.url(path)).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {path}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, body.to_string())
    }

    fn admin(&self) -> (PathBuf, PathBuf) {
        (self.pki().join("admin.crt"), self.pki().join("admin.key"))
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .env("KUBECONFIG", self.data.join("admin.kubeconfig"))
            .env("HOME", self.data.parent().unwrap())
            .args(args)
            .output()
            .unwrap()
    }
}

/// `openssl s_client` against `addr` with extra arguments; stdout+stderr.
fn s_client(addr: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .args([
            "10",
            "openssl",
            "s_client",
            "-connect",
            addr,
            "-servername",
            "localhost",
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A listening TCP socket's local address for each socket inode in /proc/net/tcp{,6}.
fn listening_sockets() -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // st 0A = LISTEN
            if cols.len() < 10 || cols[3] != "0A" {
                continue;
            }
            let (ip_hex, port_hex) = cols[1].split_once(':').unwrap();
            let port = u16::from_str_radix(port_hex, 16).unwrap();
            let ip = if v6 {
                let b: Vec<u8> = (0..16)
                    .map(|i| u8::from_str_radix(&ip_hex[2 * i..2 * i + 2], 16).unwrap())
                    .collect();
                // /proc prints four host-order (little-endian) 32-bit words.
                let mut o = [0u8; 16];
                for w in 0..4 {
                    for j in 0..4 {
                        o[4 * w + j] = b[4 * w + 3 - j];
                    }
                }
                std::net::IpAddr::from(o)
            } else {
                let n = u32::from_str_radix(ip_hex, 16).unwrap();
                std::net::IpAddr::from(n.to_le_bytes())
            };
            out.push((cols[9].parse().unwrap(), format!("{ip}:{port}")));
        }
    }
    out
}

/// The local addresses a process listens on (TCP), via its fds' socket inodes.
fn listening_addrs(pid: u32) -> Vec<String> {
    let inodes: BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let t = std::fs::read_link(e.path()).ok()?;
            let t = t.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    listening_sockets()
        .into_iter()
        .filter(|(ino, _)| inodes.contains(ino))
        .map(|(_, a)| a)
        .collect()
}

fn is_loopback(addr: &str) -> bool {
    let sa: std::net::SocketAddr = addr.parse().unwrap();
    sa.ip().is_loopback()
}

#[test]
fn cis_baseline_kelsonctl_up() {
    need_root();
    for t in ["curl", "openssl", "etcdctl", "kubectl", "timeout"] {
        need(t);
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut up = Up::start(tmp.path());
    let mut r = Report::default();
    let pki = up.pki();
    let api = cmdline(up.pid("apiserver"));
    let kv = cmdline(up.pid("kv"));
    let (admin_crt, admin_key) = up.admin();
    let admin = Some((admin_crt.as_path(), admin_key.as_path()));

    // A positive control: the admin gets through, so the refusals below mean something.
    let (code, body) = up.curl("GET", "/api/v1/namespaces", admin);
    assert_eq!(code, 200, "admin GET /api/v1/namespaces: {body}");

    // --- API server (1.2.x) ---
    r.check(
        flag(&api, "--anonymous-auth").is_none_or(|v| v == "false"),
        "1.2.1",
        format!("--anonymous-auth is {:?}", flag(&api, "--anonymous-auth")),
    );
    let (code, body) = up.curl("GET", "/api/v1/namespaces", None);
    r.check(
        code == 401 && body.contains("\"kind\":\"Status\"") && body.contains("\"code\":401"),
        "1.2.1",
        format!("an anonymous request got {code} (want a 401 Status): {body}"),
    );
    // /version and health endpoints are also refused without credentials (no anonymous).
    let (code, _) = up.curl("GET", "/version", None);
    r.check(
        code == 401,
        "1.2.1",
        format!("anonymous GET /version got {code}"),
    );

    r.check(
        flag(&api, "--token-auth-file").is_none(),
        "1.2.2",
        "--token-auth-file is set",
    );
    r.check(
        flag(&api, "--kubelet-client-certificate").is_some()
            && flag(&api, "--kubelet-client-key").is_some(),
        "1.2.4",
        "--kubelet-client-certificate/--kubelet-client-key not set",
    );
    r.check(
        flag(&api, "--kubelet-certificate-authority").is_some(),
        "1.2.5",
        "--kubelet-certificate-authority not set",
    );
    let authz = flag(&api, "--authorization-mode").unwrap_or_else(|| "RBAC".into());
    r.check(
        !authz.split(',').any(|m| m == "AlwaysAllow"),
        "1.2.6",
        format!("--authorization-mode={authz}"),
    );
    r.finding(
        authz.split(',').any(|m| m == "Node"),
        "1.2.7 up",
        format!("--authorization-mode={authz} lacks Node"),
    );
    r.check(
        authz.split(',').any(|m| m == "RBAC"),
        "1.2.8",
        format!("--authorization-mode={authz} lacks RBAC"),
    );
    // Authorization really happens: a valid client certificate of a user with no bindings.
    let ca = kelson_pki::Ca::load(&pki).unwrap();
    let nobody = ca
        .issue(&kelson_pki::CertRequest::new(
            "cis-unbound-user",
            kelson_pki::Usage::Client,
        ))
        .unwrap();
    let (c, k) = nobody.write_pair(tmp.path(), "cis-unbound").unwrap();
    let (code, body) = up.curl("GET", "/api/v1/secrets", Some((&c, &k)));
    r.check(
        code == 403 && body.contains("\"reason\":\"Forbidden\""),
        "1.2.6",
        format!("a user without bindings listing Secrets got {code} (want 403 Forbidden): {body}"),
    );
    let (code, body) = up.curl("GET", "/debug/pprof/", admin);
    r.check(
        flag(&api, "--profiling").is_none_or(|v| v == "false") && code == 404,
        "1.2.16",
        format!(
            "profiling: --profiling={:?}, admin GET /debug/pprof/ → {code} {body}",
            flag(&api, "--profiling")
        ),
    );

    // Audit log: configured, rotated, and written.
    let audit_path = flag(&api, "--audit-log-path");
    r.check(audit_path.is_some(), "1.2.17", "--audit-log-path not set");
    r.check(
        flag(&api, "--audit-log-maxage").is_some_and(|v| v.parse::<u32>().is_ok_and(|d| d >= 30)),
        "1.2.18",
        format!(
            "--audit-log-maxage is {:?} (want ≥ 30)",
            flag(&api, "--audit-log-maxage")
        ),
    );
    r.check(
        flag(&api, "--audit-log-maxbackup").is_some_and(|v| v.parse::<u32>().is_ok_and(|n| n >= 3)),
        "1.2.19",
        format!(
            "--audit-log-maxbackup is {:?}",
            flag(&api, "--audit-log-maxbackup")
        ),
    );
    r.check(
        flag(&api, "--audit-log-maxsize").is_some_and(|v| v.parse::<u32>().is_ok_and(|n| n >= 100)),
        "1.2.20",
        format!(
            "--audit-log-maxsize is {:?}",
            flag(&api, "--audit-log-maxsize")
        ),
    );
    r.check(
        flag(&api, "--audit-policy-file").is_some(),
        "3.2.1",
        "--audit-policy-file not set",
    );

    r.check(
        flag(&api, "--service-account-signing-key-file")
            .is_some_and(|p| std::fs::read_to_string(p).is_ok_and(|k| k.contains("PRIVATE KEY"))),
        "1.2.23/1.3.4",
        format!(
            "--service-account-signing-key-file {:?} is not a private key",
            flag(&api, "--service-account-signing-key-file")
        ),
    );
    r.check(
        flag(&api, "--etcd-certfile").is_some() && flag(&api, "--etcd-keyfile").is_some(),
        "1.2.24",
        "--etcd-certfile/--etcd-keyfile not set",
    );
    r.check(
        flag(&api, "--tls-cert-file").is_some() && flag(&api, "--tls-private-key-file").is_some(),
        "1.2.25",
        "--tls-cert-file/--tls-private-key-file not set",
    );
    r.check(
        flag(&api, "--client-ca-file").is_some(),
        "1.2.26",
        "--client-ca-file not set",
    );
    r.check(
        flag(&api, "--etcd-cafile").is_some(),
        "1.2.27",
        "--etcd-cafile not set",
    );

    // Secrets encrypted at rest: create one, read it raw from the store.
    let enc = flag(&api, "--encryption-provider-config");
    r.check(
        enc.is_some(),
        "1.2.28",
        "--encryption-provider-config not set",
    );
    let out = up.kubectl(&[
        "create",
        "secret",
        "generic",
        "cis-probe",
        "--from-literal=password=cis-plaintext-marker",
    ]);
    assert!(out.status.success(), "kubectl create secret: {out:?}");
    let ep = format!("https://127.0.0.1:{}", up.kv_port);
    // The store's own CA (2.7) verifies the store; kv-client is a store credential.
    let store_ca = pki.join("store-ca.crt");
    let raw = etcdctl(
        &ep,
        &[
            &format!("--cacert={}", store_ca.display()),
            &format!("--cert={}", pki.join("kv-client.crt").display()),
            &format!("--key={}", pki.join("kv-client.key").display()),
            "get",
            "/registry/secrets/default/cis-probe",
            "--print-value-only",
        ],
    );
    assert!(raw.status.success(), "etcdctl get: {raw:?}");
    let value = String::from_utf8_lossy(&raw.stdout);
    r.check(
        value.starts_with("k8s:enc:") && !value.contains("cis-plaintext-marker"),
        "1.2.28",
        format!(
            "the Secret is stored as {:?}…",
            value.chars().take(24).collect::<String>()
        ),
    );
    r.check(
        !value.starts_with("k8s:enc:identity"),
        "1.2.29",
        "Secrets use the identity provider",
    );

    // The audit log recorded that create (checked after it happened; the file is flushed per
    // event, bounded wait for the writer).
    if let Some(p) = &audit_path {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut text = String::new();
        while Instant::now() < deadline {
            text = std::fs::read_to_string(p).unwrap_or_default();
            if text.contains("cis-probe") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        r.check(
            text.contains("cis-probe") && text.contains("\"kind\":\"Event\""),
            "1.2.17",
            format!(
                "audit log {p} has no event for the Secret create ({} bytes)",
                text.len()
            ),
        );
        r.check(
            !text.contains("cis-plaintext-marker"),
            "3.2.2",
            "the audit log contains a Secret's data (the policy must log Secrets at Metadata)",
        );
    }

    // TLS 1.2+ with strong (AEAD, forward-secret) ciphers only (1.2.30).
    let api_addr = format!("127.0.0.1:{}", up.api_port);
    let cafile = format!("{}", pki.join("ca.crt").display());
    let (ok, text) = s_client(
        &api_addr,
        &["-tls1_2", "-CAfile", &cafile, "-cipher", "ECDHE+AESGCM"],
    );
    assert!(
        ok && text.contains("Verify return code: 0"),
        "positive control: TLS 1.2 with ECDHE-AES-GCM must work: {text}"
    );
    // SECLEVEL=0 lets this OpenSSL offer TLS 1.1 at all (it did: "Protocol  : TLSv1.1"); the
    // server must answer with an alert (rustls sends handshake_failure or protocol_version).
    let (ok, text) = s_client(&api_addr, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    r.check(
        !ok && text.contains("Protocol  : TLSv1.1")
            && text.contains("Cipher is (NONE)")
            && (text.contains("alert protocol version")
                || text.contains("alert handshake failure")),
        "1.2.30",
        format!("a TLS 1.1 handshake was not refused with protocol_version: {text}"),
    );
    // CBC/SHA-1 suites (with and without forward secrecy) and static-RSA key exchange: the
    // server itself must refuse them (its handshake_failure alert, not a client-side error).
    for weak in [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-RSA-AES128-SHA",
        "AES128-SHA",
        "AES128-GCM-SHA256",
    ] {
        let cipher = format!("{weak}@SECLEVEL=0");
        let (ok, text) = s_client(&api_addr, &["-tls1_2", "-cipher", &cipher]);
        r.check(
            !ok && text.contains("alert handshake failure"),
            "1.2.30",
            format!("the weak cipher {weak} was not refused by the server: {text}"),
        );
    }

    // --- Controller manager and scheduler (1.3.x, 1.4.x) ---
    for (comp, item_prof, item_bind) in [
        ("controller-manager", "1.3.2", "1.3.7"),
        ("scheduler", "1.4.1", "1.4.2"),
    ] {
        let pid = up.pid(comp);
        let args = cmdline(pid);
        r.check(
            flag(&args, "--profiling").is_none_or(|v| v == "false"),
            item_prof,
            format!("{comp} --profiling={:?}", flag(&args, "--profiling")),
        );
        for f in ["--metrics-addr", "--bind-address"] {
            if let Some(v) = flag(&args, f) {
                r.check(
                    v.parse::<std::net::SocketAddr>()
                        .map(|a| a.ip().is_loopback())
                        .or_else(|_| v.parse::<std::net::IpAddr>().map(|a| a.is_loopback()))
                        .unwrap_or(false),
                    item_bind,
                    format!("{comp} {f}={v} is not loopback"),
                );
            }
        }
        // What it actually listens on (whatever the flags say).
        for a in listening_addrs(pid) {
            r.check(
                is_loopback(&a),
                item_bind,
                format!("{comp} listens on {a}, not loopback"),
            );
        }
    }
    let cm = cmdline(up.pid("controller-manager"));
    r.check(
        flag(&cm, "--root-ca-file").is_some(),
        "1.3.5",
        "controller-manager --root-ca-file not set",
    );

    // --- The store (2.x) ---
    r.check(
        flag(&kv, "--cert-file").is_some() && flag(&kv, "--key-file").is_some(),
        "2.1",
        "kv --cert-file/--key-file not set",
    );
    r.check(
        flag(&kv, "--client-cert-auth").is_some_and(|v| v.is_empty() || v == "true"),
        "2.2",
        "kv --client-cert-auth not set",
    );
    let out = etcdctl(
        &ep,
        &[
            &format!("--cacert={}", store_ca.display()),
            "get",
            "/registry/",
            "--prefix",
            "--keys-only",
        ],
    );
    r.check(
        !out.status.success(),
        "2.2",
        format!("etcdctl without a client certificate was served: {out:?}"),
    );
    r.check(
        flag(&kv, "--auto-tls").is_none_or(|v| v == "false"),
        "2.3",
        "kv --auto-tls",
    );
    r.check(
        flag(&kv, "--peer-cert-file").is_some() && flag(&kv, "--peer-key-file").is_some(),
        "2.4",
        "kv --peer-cert-file/--peer-key-file not set",
    );
    r.check(
        flag(&kv, "--peer-client-cert-auth").is_some_and(|v| v.is_empty() || v == "true"),
        "2.5",
        "kv --peer-client-cert-auth not set",
    );
    r.check(
        flag(&kv, "--peer-auto-tls").is_none_or(|v| v == "false"),
        "2.6",
        "kv --peer-auto-tls",
    );
    // The peer URL refuses a client without a certificate: the handshake (TLS 1.3: the first
    // read after it) fails with certificate_required / handshake_failure, while a peer
    // certificate gets a clean session.
    let peer = flag(&kv, "--listen-peer-urls").expect("kv --listen-peer-urls");
    let peer_addr = peer
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    let store_cafile = store_ca.display().to_string();
    let (_, with_cert) = s_client(
        &peer_addr,
        &[
            "-CAfile",
            &store_cafile,
            "-cert",
            &pki.join("kv-peer.crt").display().to_string(),
            "-key",
            &pki.join("kv-peer.key").display().to_string(),
        ],
    );
    assert!(
        with_cert.contains("Verify return code: 0") && !with_cert.contains("alert"),
        "positive control: a peer certificate must get a session on {peer_addr}: {with_cert}"
    );
    // TLS 1.2: the server refuses a missing client certificate inside the handshake. (With
    // TLS 1.3 it does so after the client's Finished, and s_client may exit at stdin's EOF
    // before reading that alert — a race, not a finding.)
    let (_, no_cert) = s_client(&peer_addr, &["-CAfile", &store_cafile, "-tls1_2"]);
    r.check(
        no_cert.contains("alert certificate required")
            || no_cert.contains("alert handshake failure"),
        "2.5",
        format!("the peer URL {peer_addr} served a client without a certificate: {no_cert}"),
    );
    // 2.7: a CA of the store's own, so cluster client certificates are no store credentials.
    let kv_ca =
        std::fs::read(flag(&kv, "--trusted-ca-file").expect("kv --trusted-ca-file")).unwrap();
    let kv_peer_ca =
        std::fs::read(flag(&kv, "--peer-trusted-ca-file").expect("kv --peer-trusted-ca-file"))
            .unwrap();
    let api_ca = std::fs::read(flag(&api, "--client-ca-file").expect("--client-ca-file")).unwrap();
    r.check(
        kv_ca != api_ca && kv_peer_ca != api_ca,
        "2.7",
        "the store trusts the cluster CA (kv --trusted-ca-file or --peer-trusted-ca-file = API server --client-ca-file)",
    );
    r.check(
        flag(&api, "--etcd-cafile").is_some_and(|f| std::fs::read(f).ok() == Some(kv_ca.clone())),
        "2.7",
        "the API server's --etcd-cafile is not the store's CA",
    );
    // What 2.7 is for: a client certificate of the cluster CA — here the admin's, in
    // system:masters — is no store credential. (The positive control is the kv-client read of
    // the Secret above, through the same endpoint and CA bundle.)
    let out = etcdctl(
        &ep,
        &[
            &format!("--cacert={}", store_ca.display()),
            &format!("--cert={}", admin_crt.display()),
            &format!("--key={}", admin_key.display()),
            "get",
            "/registry/",
            "--prefix",
            "--keys-only",
        ],
    );
    r.check(
        !out.status.success(),
        "2.7",
        format!("the store served a client certificate of the cluster CA (admin.crt): {out:?}"),
    );
    // Nor a raft peer: the peer URL refuses it inside the handshake (TLS 1.2, as above).
    let (_, cluster_cert) = s_client(
        &peer_addr,
        &[
            "-CAfile",
            &store_cafile,
            "-tls1_2",
            "-cert",
            &admin_crt.display().to_string(),
            "-key",
            &admin_key.display().to_string(),
        ],
    );
    r.check(
        cluster_cert.contains("alert"),
        "2.7",
        format!("the peer URL {peer_addr} accepted a cluster-CA certificate: {cluster_cert}"),
    );

    // --- Files (1.1.x) ---
    let kv_dir = flag(&kv, "--data-dir").expect("kv --data-dir");
    let m = std::fs::metadata(&kv_dir).unwrap();
    r.check(
        m.mode() & 0o077 == 0,
        "1.1.11",
        format!("the store's data dir {kv_dir} is {:04o}", m.mode() & 0o7777),
    );
    check_tree_modes(&mut r, &up.data, None);

    up.guard.terminate(Duration::from_secs(30)).unwrap();

    // Not a CIS item, but the same run shows it cheaply: the journald key events (issue 8,
    // docs/journald.md) are logged by the real daemons. Outside systemd they log text to
    // stderr (the component logs here), with the same fields as the journal gets.
    use kelson_runtime::events;
    let log = |c: &str| std::fs::read_to_string(up.data.join("logs").join(format!("{c}.log")));
    for c in ["kv", "apiserver", "scheduler", "controller-manager"] {
        let text = log(c).unwrap_or_else(|e| panic!("{c}.log: {e}"));
        for ev in [events::DAEMON_READY, events::DAEMON_STOPPING] {
            assert!(
                text.contains(ev.id) && text.contains(ev.name),
                "{c}.log lacks the {} event (MESSAGE_ID {}):\n{text}",
                ev.name,
                ev.id
            );
        }
    }
    let kv_log = log("kv").unwrap();
    let leader = kv_log
        .lines()
        .find(|l| l.contains(events::KV_LEADER_CHANGED.id))
        .unwrap_or_else(|| panic!("kv.log has no leader-change event:\n{kv_log}"));
    assert!(
        leader.contains("raft_term") && leader.contains("raft_leader"),
        "the leader-change event lacks its Raft fields: {leader}"
    );

    r.finish("up");
}

#[test]
fn cis_baseline_kelsonctl_init_files() {
    need_root();
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    let var = tmp.path().join("var");
    // `nobody` stands in for the `kelson` service user sysusers.d creates on a real install.
    let out = Command::new(bin_path("kelsonctl"))
        .args([
            "init",
            "--node-name",
            "cis-node",
            "--service-user",
            "nobody",
        ])
        .arg("--config-dir")
        .arg(&etc)
        .arg("--data-dir")
        .arg(&var)
        .output()
        .unwrap();
    assert!(out.status.success(), "kelsonctl init: {out:?}");
    let nogroup = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == "nobody").then(|| f[3].parse::<u32>().unwrap())
        })
        .expect("user nobody");
    let mut r = Report::default();
    check_tree_modes(&mut r, &etc, Some(nogroup));
    // The CA key signs every identity: root only, whatever the service user is.
    let ca_key = std::fs::metadata(etc.join("pki/ca.key")).unwrap();
    r.check(
        ca_key.mode() & 0o7777 == 0o600 && ca_key.uid() == 0,
        "1.1.21",
        format!(
            "pki/ca.key is {:04o} {}",
            ca_key.mode() & 0o7777,
            ca_key.uid()
        ),
    );
    // Per-component state dirs (the store's data dir is 1.1.11).
    for d in ["kv", "apiserver"] {
        let p = var.join(d);
        if let Ok(m) = std::fs::metadata(&p) {
            r.check(
                m.mode() & 0o077 == 0,
                "1.1.11",
                format!("{} is {:04o}", p.display(), m.mode() & 0o7777),
            );
        }
    }
    // The configs: the same flags as `up` (kube-bench reads them from the unit's config file).
    let toml = |name: &str| std::fs::read_to_string(etc.join(format!("{name}.toml"))).unwrap();
    let kv = toml("kv");
    let api = toml("apiserver");
    r.check(
        kv.contains("client-cert-auth = true"),
        "2.2",
        "kv.toml: client-cert-auth",
    );
    r.check(
        kv.contains("peer-client-cert-auth = true"),
        "2.5",
        "kv.toml: peer-client-cert-auth",
    );
    r.check(
        api.contains("anonymous-auth = false"),
        "1.2.1",
        "apiserver.toml: anonymous-auth",
    );
    r.check(
        !api.contains("AlwaysAllow"),
        "1.2.6",
        "apiserver.toml: AlwaysAllow",
    );
    let mode = api
        .lines()
        .find_map(|l| l.strip_prefix("authorization-mode = "))
        .unwrap_or("\"RBAC\"");
    r.finding(
        mode.trim_matches('"').split(',').any(|m| m == "Node"),
        "1.2.7 init",
        format!("apiserver.toml authorization-mode = {mode} lacks Node"),
    );
    r.check(
        api.contains("encryption-provider-config"),
        "1.2.28",
        "apiserver.toml: encryption",
    );
    r.check(
        api.contains("audit-log-path"),
        "1.2.17",
        "apiserver.toml: audit-log-path",
    );
    r.check(
        api.contains("audit-log-maxage = 30"),
        "1.2.18",
        "apiserver.toml has no audit-log-maxage = 30",
    );
    let ca_of = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .map(|v| std::fs::read(v.trim_matches('"')).unwrap())
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    r.check(
        ca_of(&kv, "trusted-ca-file") != ca_of(&api, "client-ca-file")
            && ca_of(&kv, "peer-trusted-ca-file") != ca_of(&api, "client-ca-file"),
        "2.7",
        "the store trusts the cluster CA (kv.toml trusted-ca-file = apiserver.toml client-ca-file)",
    );
    r.check(
        ca_of(&kv, "trusted-ca-file") == ca_of(&api, "etcd-cafile"),
        "2.7",
        "apiserver.toml etcd-cafile is not the store's CA",
    );
    // The store CA's key is root's alone, like the cluster CA's.
    let store_key = std::fs::metadata(etc.join("pki/store-ca.key")).unwrap();
    r.check(
        store_key.mode() & 0o7777 == 0o600 && store_key.uid() == 0,
        "1.1.21",
        format!(
            "pki/store-ca.key is {:04o} {}",
            store_key.mode() & 0o7777,
            store_key.uid()
        ),
    );
    r.finish("init");
}
