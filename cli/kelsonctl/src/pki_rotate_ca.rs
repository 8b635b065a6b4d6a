//! `kelsonctl pki rotate-ca`: replace the cluster CA or the store CA without downtime, in the
//! three phases of upstream's manual CA rotation
//! (<https://kubernetes.io/docs/tasks/tls/manual-rotation-of-ca-certificates/>).
//!
//! Design:
//! - The CA file (`ca.crt`, or `store-ca.crt` with `--ca store`) is the trust bundle every
//!   daemon and client verifies peers with, and its first certificate with the key next to it
//!   (`ca.key`) is the issuer `pki renew` and `pki init` sign with. Every Kelson daemon re-reads
//!   both its certificate and its trust bundle when the files change (kelson-runtime's tls
//!   module for servers and clients, kelson-kube's kubeconfig clients, the store client), so
//!   a rotation is three file rewrites with a reload interval (3 s) in between:
//!   1. `--phase trust`: a new CA is generated into `<ca>-new.crt/.key` and the old one is kept
//!      as `<ca>-old.crt/.key`; the bundle becomes old + new (the old one first, so the issuer
//!      and the key on disk still match and `pki renew` keeps working). Embedded
//!      `certificate-authority-data` of kubeconfigs that trusted the old CA gets the bundle.
//!      After this, every peer accepts certificates from either CA.
//!   2. `--phase reissue`: the bundle becomes new + old and the key the new one (the new CA is
//!      now the issuer); every leaf in the directory issued by the old CA, and every embedded
//!      kubeconfig client certificate, is re-issued by the new CA with the same subject, names,
//!      usages and key (as `pki renew`), each in one atomic rename.
//!   3. `--phase finish`: refuses while anything still comes from the old CA (unless
//!      `--force`); then the bundle is the new CA alone and the `-old`/`-new` files are
//!      removed. From then on a certificate from the old CA is refused everywhere.
//! - Each phase checks where the directory stands (the `-new` files and the bundle's
//!   contents), so running a phase again is harmless and phases cannot be run out of order.
//! - Multi-machine clusters: the bundle and the re-issued files must reach every machine
//!   between phases (docs/operations.md); this command works on one directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Args, ValueEnum};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::pki_renew::{first_cert_der, issued_by, load_issuer, reissue, sorted_files, Issuer};

/// Which CA to rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WhichCa {
    /// `ca.crt`: the API server, its clients, the kubelets.
    Cluster,
    /// `store-ca.crt` (`ca.crt` in a store-only directory): kelson-kv and its clients.
    Store,
}

/// The phases of a rotation (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// New CA generated; the bundle trusts old and new.
    Trust,
    /// Leaves re-issued by the new CA.
    Reissue,
    /// The old CA is dropped from the bundle.
    Finish,
}

/// `kelsonctl pki rotate-ca` flags.
#[derive(Debug, Clone, Args)]
pub struct RotateCaArgs {
    /// The PKI directory (as for `pki renew`).
    #[arg(long)]
    pub dir: PathBuf,
    /// The CA to rotate.
    #[arg(long, value_enum, default_value = "cluster")]
    pub ca: WhichCa,
    /// The phase to run; run them in order, letting daemons reload in between.
    #[arg(long, value_enum)]
    pub phase: Phase,
    /// More directories with `*.kubeconfig` files (embedded CA data and client certificates).
    #[arg(long)]
    pub kubeconfig_dir: Vec<PathBuf>,
    /// `finish` even though some certificates still come from the old CA.
    #[arg(long)]
    pub force: bool,
}

/// The files of the CA being rotated.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub dir: PathBuf,
    /// `ca` or `store-ca`.
    pub base: String,
}

impl CaFiles {
    pub fn new(dir: &Path, which: WhichCa) -> CaFiles {
        let store = kelson_pki::STORE_CA_BASENAME;
        let base = match which {
            WhichCa::Store if dir.join(format!("{store}.crt")).exists() => store,
            _ => "ca",
        };
        CaFiles {
            dir: dir.to_path_buf(),
            base: base.to_string(),
        }
    }
    fn path(&self, suffix: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{}{suffix}.{ext}", self.base))
    }
    /// The bundle (`<base>.crt`).
    pub fn bundle(&self) -> PathBuf {
        self.path("", "crt")
    }
    fn key(&self) -> PathBuf {
        self.path("", "key")
    }
    fn new_base(&self) -> String {
        format!("{}-new", self.base)
    }
    fn old_base(&self) -> String {
        format!("{}-old", self.base)
    }
}

/// One CA certificate's PEM text per entry of a bundle file.
fn bundle_pems(path: &Path) -> anyhow::Result<Vec<String>> {
    let out = bundle_text_pems(&read(path)?);
    if out.is_empty() {
        bail!("{}: no certificate", path.display());
    }
    Ok(out)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn write(path: &Path, data: &str, mode: u32) -> anyhow::Result<()> {
    kelson_pki::write_atomic(path, data.as_bytes(), mode)
        .with_context(|| format!("writing {}", path.display()))
}

/// The same certificate (whitespace aside)?
fn same_pem(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

/// The subject CN of a PEM certificate.
fn common_name(pem: &str) -> Option<String> {
    let der = first_cert_der(pem.as_bytes()).ok()?;
    let (_, x) = X509Certificate::from_der(&der).ok()?;
    let cn = x.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// `kelsonctl pki rotate-ca`: prints what it did and what to do next.
pub fn run(a: &RotateCaArgs) -> anyhow::Result<i32> {
    let files = CaFiles::new(&a.dir, a.ca);
    let lines = rotate(&files, a.phase, &a.kubeconfig_dir, a.force)?;
    for l in lines {
        println!("{l}");
    }
    Ok(0)
}

/// Runs one phase; returns a report, one line per file touched.
pub fn rotate(
    files: &CaFiles,
    phase: Phase,
    kubeconfig_dirs: &[PathBuf],
    force: bool,
) -> anyhow::Result<Vec<String>> {
    let mut kdirs = vec![files.dir.clone()];
    kdirs.extend(kubeconfig_dirs.iter().cloned());
    match phase {
        Phase::Trust => trust(files, &kdirs),
        Phase::Reissue => reissue_all(files, &kdirs),
        Phase::Finish => finish(files, &kdirs, force),
    }
}

fn trust(f: &CaFiles, kdirs: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let new_crt = f.path("-new", "crt");
    let bundle = bundle_pems(&f.bundle())?;
    if new_crt.exists() {
        let new_pem = read(&new_crt)?;
        if bundle.iter().any(|p| same_pem(p, &new_pem)) {
            return Ok(vec![format!(
                "{}: already trusts the new CA ({}); next: --phase reissue",
                f.bundle().display(),
                new_crt.display()
            )]);
        }
        bail!(
            "{} exists but {} does not contain it: a rotation was interrupted; remove {} and {} to start over",
            new_crt.display(),
            f.bundle().display(),
            new_crt.display(),
            f.path("-new", "key").display()
        );
    }
    if bundle.len() != 1 {
        bail!(
            "{} holds {} certificates: finish the rotation in progress first",
            f.bundle().display(),
            bundle.len()
        );
    }
    let old_pem = bundle[0].clone();
    let old_key = read(&f.key())?;
    // Fails unless the key on disk is the bundle's CA: the issuer must stay consistent.
    kelson_pki::Ca::from_pem(&old_pem, &old_key).context("the current CA")?;
    let cn = common_name(&old_pem).unwrap_or_else(|| match f.base.as_str() {
        "ca" => kelson_pki::CLUSTER_CA_CN.into(),
        _ => kelson_pki::STORE_CA_CN.into(),
    });
    let new = kelson_pki::Ca::generate(&cn)?;
    // The old CA's copy first, the bundle last: an interruption leaves the old state working.
    write(&f.path("-old", "crt"), &old_pem, 0o644)?;
    write(&f.path("-old", "key"), &old_key, 0o600)?;
    new.pair().write_pair(&f.dir, &f.new_base())?;
    let both = format!("{old_pem}{}", new.cert_pem());
    write(&f.bundle(), &both, 0o644)?;
    let mut out = vec![
        format!("{}: new CA (CN {cn})", new_crt.display()),
        format!("{}: trusts the old and the new CA", f.bundle().display()),
    ];
    out.extend(rewrite_kubeconfig_cas(kdirs, &old_pem, &both)?);
    out.push("next: copy the bundle to every machine, wait until the daemons reloaded it (3 s), then --phase reissue".into());
    Ok(out)
}

/// The old and new issuers of a rotation in progress (phases 2 and 3).
fn issuers(f: &CaFiles) -> anyhow::Result<(Issuer, Issuer, String, String)> {
    let new_crt = f.path("-new", "crt");
    if !new_crt.exists() {
        bail!(
            "no rotation in progress: {} is missing (run --phase trust first)",
            new_crt.display()
        );
    }
    let old = load_issuer(&f.dir, &f.old_base())?;
    let new = load_issuer(&f.dir, &f.new_base())?;
    Ok((old, new, read(&f.path("-old", "crt"))?, read(&new_crt)?))
}

fn reissue_all(f: &CaFiles, kdirs: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let (old, new, old_pem, new_pem) = issuers(f)?;
    let bundle = bundle_pems(&f.bundle())?;
    if !bundle.iter().any(|p| same_pem(p, &new_pem)) {
        bail!(
            "{} does not trust the new CA yet: run --phase trust first",
            f.bundle().display()
        );
    }
    let mut out = Vec::new();
    // The new CA becomes the issuer: key first, then the bundle with the new CA first; both
    // CAs stay trusted.
    write(&f.key(), &read(&f.path("-new", "key"))?, 0o600)?;
    let both = format!("{new_pem}{old_pem}");
    write(&f.bundle(), &both, 0o644)?;
    out.push(format!(
        "{}: the new CA issues, both are trusted",
        f.bundle().display()
    ));
    for path in sorted_files(&f.dir, "crt")? {
        let base = file_stem(&path);
        let der = match std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|p| first_cert_der(&p))
        {
            Ok(d) => d,
            Err(_) => continue,
        };
        let Ok((_, x)) = X509Certificate::from_der(&der) else {
            continue;
        };
        if x.is_ca() || !issued_by(&x, &old) {
            continue;
        }
        let key = f.dir.join(format!("{base}.key"));
        let Ok(key_pem) = std::fs::read_to_string(&key) else {
            out.push(format!(
                "{}: not re-issued (no key at {})",
                path.display(),
                key.display()
            ));
            continue;
        };
        let (pem, serial, _) = reissue(&der, &key_pem, &new, None)
            .with_context(|| format!("re-issuing {}", path.display()))?;
        write(&path, &pem, 0o644)?;
        out.push(format!(
            "{}: re-issued by the new CA (serial {serial})",
            path.display()
        ));
    }
    for dir in kdirs {
        for path in sorted_files(dir, "kubeconfig")? {
            out.extend(reissue_kubeconfig(&path, &old, &new, &old_pem, &both)?);
        }
    }
    out.push("next: copy the re-issued files to every machine, wait until the daemons reloaded them (3 s), then --phase finish".into());
    Ok(out)
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Certificates in the directory and the kubeconfigs still issued by the old CA.
fn still_old(f: &CaFiles, kdirs: &[PathBuf], old: &Issuer) -> anyhow::Result<Vec<PathBuf>> {
    let mut left = Vec::new();
    for path in sorted_files(&f.dir, "crt")? {
        let Ok(der) = std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|p| first_cert_der(&p))
        else {
            continue;
        };
        if let Ok((_, x)) = X509Certificate::from_der(&der) {
            if !x.is_ca() && issued_by(&x, old) {
                left.push(path);
            }
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    for dir in kdirs {
        for path in sorted_files(dir, "kubeconfig")? {
            let text = read(&path)?;
            let Some(v) = field(&text, "client-certificate-data:") else {
                continue;
            };
            let Ok(der) = b64
                .decode(v.1.as_bytes())
                .map_err(anyhow::Error::from)
                .and_then(|p| first_cert_der(&p))
            else {
                continue;
            };
            if let Ok((_, x)) = X509Certificate::from_der(&der) {
                if issued_by(&x, old) {
                    left.push(path);
                }
            }
        }
    }
    Ok(left)
}

fn finish(f: &CaFiles, kdirs: &[PathBuf], force: bool) -> anyhow::Result<Vec<String>> {
    let (old, _new, old_pem, new_pem) = issuers(f)?;
    let key = read(&f.key())?;
    if kelson_pki::Ca::from_pem(&new_pem, &key).is_err() {
        bail!(
            "{} is not the new CA's key yet: run --phase reissue first",
            f.key().display()
        );
    }
    let left = still_old(f, kdirs, &old)?;
    if !left.is_empty() && !force {
        bail!(
            "still issued by the old CA (re-issue them, or --force): {}",
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    write(&f.bundle(), &new_pem, 0o644)?;
    let mut out = vec![format!("{}: trusts only the new CA", f.bundle().display())];
    // Kubeconfigs that trusted the old CA (alone or in a bundle) now trust only the new one.
    out.extend(rewrite_kubeconfig_cas(kdirs, &old_pem, &new_pem)?);
    for suffix in ["-old", "-new"] {
        for ext in ["crt", "key"] {
            let p = f.path(suffix, ext);
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    for p in left {
        out.push(format!(
            "{}: still from the old CA (--force): it is no longer trusted",
            p.display()
        ));
    }
    out.push("done: copy the bundle to every machine; certificates from the old CA are refused once the daemons reloaded it (3 s)".into());
    Ok(out)
}

/// The first `name value` line of a kubeconfig: (line index, value without quotes).
fn field(text: &str, name: &str) -> Option<(usize, String)> {
    text.lines().enumerate().find_map(|(i, l)| {
        let v = l.trim_start().strip_prefix(name)?.trim();
        Some((i, v.trim_matches('"').to_string()))
    })
}

/// Rewrites lines of a kubeconfig: `edit(field name, value)` returns a new value or `None`.
/// Everything else stays as it was; the mode is kept.
fn edit_kubeconfig(
    path: &Path,
    mut edit: impl FnMut(&str, &str) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<bool> {
    let text = read(path)?;
    let mut changed = false;
    let mut lines = Vec::new();
    for l in text.lines() {
        let trimmed = l.trim_start();
        let indent = &l[..l.len() - trimmed.len()];
        let new = match trimmed.split_once(':') {
            Some((name, v)) if name.ends_with("-data") => {
                edit(name, v.trim().trim_matches('"'))?.map(|v| format!("{indent}{name}: {v}"))
            }
            _ => None,
        };
        match new {
            Some(n) => {
                changed = true;
                lines.push(n);
            }
            None => lines.push(l.to_string()),
        }
    }
    if changed {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        write(path, &(lines.join("\n") + "\n"), mode)?;
    }
    Ok(changed)
}

/// Every `certificate-authority-data` that contains `old_pem` becomes `new_bundle`.
fn rewrite_kubeconfig_cas(
    kdirs: &[PathBuf],
    old_pem: &str,
    new_bundle: &str,
) -> anyhow::Result<Vec<String>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for dir in kdirs {
        for path in sorted_files(dir, "kubeconfig")? {
            let changed = edit_kubeconfig(&path, |name, v| {
                if name != "certificate-authority-data" {
                    return Ok(None);
                }
                let Ok(pem) = b64.decode(v.as_bytes()) else {
                    return Ok(None);
                };
                let pem = String::from_utf8_lossy(&pem).into_owned();
                let mentions = bundle_text_pems(&pem).iter().any(|p| same_pem(p, old_pem));
                Ok(mentions.then(|| b64.encode(new_bundle.as_bytes())))
            })?;
            if changed {
                out.push(format!("{}: CA data updated", path.display()));
            }
        }
    }
    Ok(out)
}

fn bundle_text_pems(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END CERTIFICATE-----") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// Phase 2 for one kubeconfig: CA data that trusted the old CA gets `bundle`, and an embedded
/// client certificate from the old CA is re-issued by the new one (same key).
fn reissue_kubeconfig(
    path: &Path,
    old: &Issuer,
    new: &Issuer,
    old_pem: &str,
    bundle: &str,
) -> anyhow::Result<Vec<String>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = read(path)?;
    let key_pem = field(&text, "client-key-data:")
        .and_then(|(_, v)| b64.decode(v.as_bytes()).ok())
        .map(|k| String::from_utf8_lossy(&k).into_owned());
    let mut report = Vec::new();
    edit_kubeconfig(path, |name, v| {
        let Ok(pem) = b64.decode(v.as_bytes()) else {
            return Ok(None);
        };
        match name {
            "certificate-authority-data" => {
                let pem = String::from_utf8_lossy(&pem).into_owned();
                let mentions = bundle_text_pems(&pem).iter().any(|p| same_pem(p, old_pem));
                Ok(mentions.then(|| b64.encode(bundle.as_bytes())))
            }
            "client-certificate-data" => {
                let Ok(der) = first_cert_der(&pem) else {
                    return Ok(None);
                };
                let Ok((_, x)) = X509Certificate::from_der(&der) else {
                    return Ok(None);
                };
                if !issued_by(&x, old) {
                    return Ok(None);
                }
                let Some(key) = &key_pem else {
                    report.push(format!(
                        "{}: client certificate not re-issued (no embedded key)",
                        path.display()
                    ));
                    return Ok(None);
                };
                let (pem, serial, _) = reissue(&der, key, new, None)?;
                report.push(format!(
                    "{}: client certificate re-issued by the new CA (serial {serial})",
                    path.display()
                ));
                Ok(Some(b64.encode(pem.as_bytes())))
            }
            _ => Ok(None),
        }
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelson_pki::{Ca, CertRequest, Usage};

    fn pem(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn three_phases_move_every_leaf_to_the_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let paths = kelson_pki::init_cluster_pki(d, &[]).unwrap();
        let old = Ca::load(d).unwrap();
        old.issue(&CertRequest::new("kube-apiserver", Usage::Server))
            .unwrap()
            .write_pair(d, "apiserver")
            .unwrap();
        let client = old
            .issue(&CertRequest::new("admin", Usage::Client))
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let kc = d.join("admin.kubeconfig");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://127.0.0.1:6443\n  name: k\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
                b64.encode(old.cert_pem()),
                b64.encode(&client.cert_pem),
                b64.encode(&client.key_pem)
            ),
        )
        .unwrap();
        let store_before = pem(&paths.store_ca_cert);
        let kv_before = pem(&paths.server_cert);
        let key_before = pem(&d.join("apiserver.key"));
        let files = CaFiles::new(d, WhichCa::Cluster);
        assert_eq!(files.base, "ca");

        // Out of order: nothing to reissue or finish yet.
        assert!(rotate(&files, Phase::Reissue, &[], false).is_err());
        assert!(rotate(&files, Phase::Finish, &[], false).is_err());

        rotate(&files, Phase::Trust, &[], false).unwrap();
        let bundle = bundle_pems(&paths.ca_cert).unwrap();
        assert_eq!(bundle.len(), 2);
        assert!(same_pem(&bundle[0], old.cert_pem()));
        let new_pem = pem(&d.join("ca-new.crt"));
        assert!(same_pem(&bundle[1], &new_pem));
        // The issuer on disk is still the old CA (renew keeps working), and a second run is a
        // no-op.
        assert!(Ca::load(d)
            .unwrap()
            .issued_pem(&pem(&d.join("apiserver.crt"))));
        let again = rotate(&files, Phase::Trust, &[], false).unwrap();
        assert!(again[0].contains("already"), "{again:?}");
        assert_eq!(bundle_pems(&paths.ca_cert).unwrap().len(), 2);
        let kc_text = pem(&kc);
        let ca_data = field(&kc_text, "certificate-authority-data:").unwrap().1;
        assert_eq!(
            bundle_text_pems(&String::from_utf8(b64.decode(ca_data).unwrap()).unwrap()).len(),
            2
        );
        // Not yet: the leaves are still from the old CA.
        assert!(rotate(&files, Phase::Finish, &[], false).is_err());

        rotate(&files, Phase::Reissue, &[], false).unwrap();
        let api = pem(&d.join("apiserver.crt"));
        assert!(kelson_pki::issued_by(&api, &new_pem));
        assert!(!kelson_pki::issued_by(&api, old.cert_pem()));
        assert_eq!(pem(&d.join("apiserver.key")), key_before, "same key");
        let info = kelson_pki::cert_info(&d.join("apiserver.crt")).unwrap();
        assert!(info.subject.contains("CN=kube-apiserver"), "{info:?}");
        let kc_text = pem(&kc);
        let cert = field(&kc_text, "client-certificate-data:").unwrap().1;
        let cert = String::from_utf8(b64.decode(cert).unwrap()).unwrap();
        assert!(
            kelson_pki::issued_by(&cert, &new_pem),
            "kubeconfig client re-issued"
        );
        // The store CA and its leaves are another CA's business.
        assert_eq!(pem(&paths.store_ca_cert), store_before);
        assert_eq!(pem(&paths.server_cert), kv_before);
        // The new CA issues from now on (pki renew, pki init).
        assert!(Ca::load(d).unwrap().issued_pem(&api));

        rotate(&files, Phase::Finish, &[], false).unwrap();
        let bundle = bundle_pems(&paths.ca_cert).unwrap();
        assert_eq!(bundle.len(), 1);
        assert!(same_pem(&bundle[0], &new_pem));
        for f in ["ca-new.crt", "ca-new.key", "ca-old.crt", "ca-old.key"] {
            assert!(!d.join(f).exists(), "{f} left behind");
        }
        let kc_text = pem(&kc);
        let ca_data = field(&kc_text, "certificate-authority-data:").unwrap().1;
        let ca_data = String::from_utf8(b64.decode(ca_data).unwrap()).unwrap();
        assert!(same_pem(&ca_data, &new_pem));
        // Nothing in progress any more.
        assert!(rotate(&files, Phase::Finish, &[], false).is_err());
    }

    #[test]
    fn the_store_ca_rotates_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let paths = kelson_pki::init_cluster_pki(d, &[]).unwrap();
        let cluster_before = pem(&paths.ca_cert);
        let files = CaFiles::new(d, WhichCa::Store);
        assert_eq!(files.base, "store-ca");
        for phase in [Phase::Trust, Phase::Reissue, Phase::Finish] {
            rotate(&files, phase, &[], false).unwrap();
        }
        let store = pem(&paths.store_ca_cert);
        for leaf in [&paths.server_cert, &paths.peer_cert, &paths.client_cert] {
            assert!(kelson_pki::issued_by(&pem(leaf), &store), "{leaf:?}");
        }
        assert_eq!(pem(&paths.ca_cert), cluster_before);
        // In a store-only directory the store CA is ca.crt.
        let solo = tempfile::tempdir().unwrap();
        kelson_pki::init_store_pki(solo.path(), &[]).unwrap();
        assert_eq!(CaFiles::new(solo.path(), WhichCa::Store).base, "ca");
    }
}
