//! `kelsonctl pki renew`: re-issue the control plane's leaf certificates before they expire.
//!
//! Design:
//! - Scope: every `<name>.crt` in `--dir` that is a leaf issued by one of the directory's CAs
//!   and has its key next to it (`<name>.key`), plus the client certificates embedded in
//!   `*.kubeconfig` files of `--dir` and `--kubeconfig-dir`. The CAs are `<dir>/ca.crt` (the
//!   cluster CA) and, where the layout has one (`kelsonctl up`/`init`/`pki init`),
//!   `<dir>/store-ca.crt` (the store's own CA, CIS 2.7); each leaf is renewed by the CA that
//!   issued it — so the store's certificates stay store-CA certificates — and the output names
//!   that CA. Anything else — CAs, a certificate from a CA whose key is not in the directory
//!   (a store-only directory such as the test harness's is renewed by a second run on it), a
//!   pair whose key is missing — is left alone and reported.
//! - When: a certificate is renewed once less than `--before` of its life is left; the default
//!   is a third of its lifetime (upstream's certificate manager and issue 8 renew at 2/3 of
//!   the lifetime), and `--before` also takes a fixed duration (`720h`) or a percentage.
//!   `--force` renews regardless. So the command is idempotent and cheap to run from a timer.
//! - How: the new certificate keeps the subject, SANs, key usages and the **same key** (as
//!   `kubeadm certs renew`). Only the certificate file changes, in one atomic rename, so a
//!   daemon's reloader (kelson-runtime's tls module, which re-reads on the handshake path) or
//!   a client reading the pair can never see a certificate with a key that does not match it;
//!   with a new key the two files would be replaced by two renames and a reader between them
//!   would get a mismatched pair. A compromised key is a different operation (re-issue with
//!   `pki init` after removing the pair). The lifetime stays the same unless `--cert-lifetime`
//!   gives a new one (tests use seconds). Like the pki crate, `notBefore` is backdated for
//!   clock skew — by an hour, or a tenth of the lifetime for short-lived certificates.
//! - Daemons pick the files up by themselves: serving and client certificates loaded through
//!   kelson-runtime's tls module are re-read when they change, and API clients built by
//!   `kelson_kube::client_from_kubeconfig` rebuild their connection setup when the kubeconfig
//!   or the files it names change (embedded or referenced credentials alike).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use clap::Args;
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

/// `kelsonctl pki renew` flags.
#[derive(Debug, Clone, Args)]
pub struct RenewArgs {
    /// The PKI directory: `ca.crt`/`ca.key` and the `<name>.crt`/`<name>.key` pairs to renew.
    #[arg(long)]
    pub dir: PathBuf,
    /// Renew when less than this is left: a fraction of the lifetime (`1/3`, `33%`) or a
    /// duration (`720h`).
    #[arg(long, default_value = "1/3")]
    pub before: String,
    /// Lifetime of the renewed certificates (Go duration, e.g. `8760h`, `20s`); default: the
    /// lifetime each certificate had.
    #[arg(long)]
    pub cert_lifetime: Option<String>,
    /// Renew every certificate in scope now, however long it has left.
    #[arg(long)]
    pub force: bool,
    /// Only these certificates (file base names, e.g. `apiserver`, or kubeconfig file names).
    #[arg(long = "cert", value_delimiter = ',')]
    pub certs: Vec<String>,
    /// More directories with `*.kubeconfig` files whose embedded client certificates to renew.
    #[arg(long)]
    pub kubeconfig_dir: Vec<PathBuf>,
}

/// When to renew.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Before {
    /// When less than this fraction of the lifetime is left.
    Fraction(f64),
    /// When less than this is left.
    Remaining(Duration),
}

impl std::str::FromStr for Before {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Before> {
        let s = s.trim();
        let frac = if let Some((a, b)) = s.split_once('/') {
            let (a, b): (f64, f64) = (a.trim().parse()?, b.trim().parse()?);
            Some(a / b)
        } else if let Some(p) = s.strip_suffix('%') {
            Some(p.trim().parse::<f64>()? / 100.0)
        } else {
            None
        };
        match frac {
            Some(f) if f.is_finite() && f > 0.0 && f <= 1.0 => Ok(Before::Fraction(f)),
            Some(_) => bail!("--before {s:?}: the fraction must be in (0, 1]"),
            None => Ok(Before::Remaining(
                kelson_kube::duration::parse_duration(s)
                    .with_context(|| format!("--before {s:?}"))?,
            )),
        }
    }
}

/// Parsed options of a renewal run (the library form of [`RenewArgs`]).
#[derive(Debug, Clone)]
pub struct RenewOptions {
    pub dir: PathBuf,
    pub before: Before,
    pub lifetime: Option<Duration>,
    pub force: bool,
    pub only: Vec<String>,
    pub kubeconfig_dirs: Vec<PathBuf>,
}

impl TryFrom<&RenewArgs> for RenewOptions {
    type Error = anyhow::Error;
    fn try_from(a: &RenewArgs) -> anyhow::Result<RenewOptions> {
        let lifetime = a
            .cert_lifetime
            .as_deref()
            .map(|s| {
                kelson_kube::duration::parse_duration(s)
                    .with_context(|| format!("--cert-lifetime {s:?}"))
            })
            .transpose()?;
        if lifetime.is_some_and(|l| l < Duration::from_secs(1)) {
            bail!("--cert-lifetime must be at least 1s");
        }
        Ok(RenewOptions {
            dir: a.dir.clone(),
            before: a.before.parse()?,
            lifetime,
            force: a.force,
            only: a.certs.clone(),
            kubeconfig_dirs: a.kubeconfig_dir.clone(),
        })
    }
}

/// What happened to one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Renewed by the CA file `ca` (e.g. `store-ca.crt`).
    Renewed {
        serial: String,
        not_after: String,
        ca: String,
    },
    Kept {
        not_after: String,
        ca: String,
    },
    Skipped(String),
}

/// `kelsonctl pki renew`: prints one line per certificate; exit code 1 if any renewal failed.
pub fn run(a: &RenewArgs) -> anyhow::Result<i32> {
    let opts = RenewOptions::try_from(a)?;
    let results = renew(&opts)?;
    let mut code = 0;
    for (path, r) in results {
        match r {
            Ok(Outcome::Renewed {
                serial,
                not_after,
                ca,
            }) => println!(
                "{}: renewed by {ca} (serial {serial}, expires {not_after})",
                path.display()
            ),
            Ok(Outcome::Kept { not_after, ca }) => {
                println!("{}: kept ({ca}, expires {not_after})", path.display())
            }
            Ok(Outcome::Skipped(why)) => println!("{}: skipped ({why})", path.display()),
            Err(e) => {
                code = 1;
                println!("{}: error: {e:#}", path.display());
            }
        }
    }
    Ok(code)
}

/// The issuing CA, as rcgen needs it.
pub(crate) struct Issuer {
    /// The CA's file name in the directory (`ca.crt`, `store-ca.crt`), for the output.
    pub(crate) name: String,
    cert: rcgen::Certificate,
    key: KeyPair,
    subject_raw: Vec<u8>,
    key_id: Option<Vec<u8>>,
}

pub(crate) fn load_issuer(dir: &Path, base: &str) -> anyhow::Result<Issuer> {
    let cert_path = dir.join(format!("{base}.crt"));
    let key_path = dir.join(format!("{base}.key"));
    let der = first_cert_der(&std::fs::read(&cert_path).with_context(|| {
        format!(
            "reading {} (renewal needs the CA's key)",
            cert_path.display()
        )
    })?)
    .with_context(|| format!("{}", cert_path.display()))?;
    let key_pem = std::fs::read_to_string(&key_path)
        .with_context(|| format!("reading {}", key_path.display()))?;
    let key = KeyPair::from_pem(&key_pem).with_context(|| format!("{}", key_path.display()))?;
    let (_, x) = X509Certificate::from_der(&der)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
    if x.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        bail!(
            "{} does not match {}",
            key_path.display(),
            cert_path.display()
        );
    }
    let subject_raw = x.subject().as_raw().to_vec();
    let key_id = x
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    // Same name and key as the CA on disk: leaves chain to the original certificate.
    let params = CertificateParams::from_ca_cert_der(&CertificateDer::from(der))?;
    let cert = params.self_signed(&key)?;
    Ok(Issuer {
        name: format!("{base}.crt"),
        cert,
        key,
        subject_raw,
        key_id,
    })
}

pub(crate) fn first_cert_der(pem: &[u8]) -> anyhow::Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    Ok(CertificateDer::pem_slice_iter(pem)
        .next()
        .context("no CERTIFICATE block")??
        .to_vec())
}

/// Whether `leaf` was issued by `ca` (issuer name and, when both carry one, key identifier).
pub(crate) fn issued_by(leaf: &X509Certificate<'_>, ca: &Issuer) -> bool {
    if leaf.issuer().as_raw() != ca.subject_raw.as_slice() {
        return false;
    }
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    match (aki, &ca.key_id) {
        (Some(a), Some(k)) => &a == k,
        _ => true,
    }
}

fn due(x: &X509Certificate<'_>, opts: &RenewOptions) -> bool {
    if opts.force {
        return true;
    }
    let nb = x.validity().not_before.timestamp();
    let na = x.validity().not_after.timestamp();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let left = (na - now) as f64;
    match opts.before {
        Before::Fraction(f) => left < (na - nb) as f64 * f,
        Before::Remaining(d) => left < d.as_secs_f64(),
    }
}

/// Re-issues `cert_der` for the key in `key_pem`; returns the new PEM and its serial/expiry.
pub(crate) fn reissue(
    cert_der: &[u8],
    key_pem: &str,
    ca: &Issuer,
    lifetime: Option<Duration>,
) -> anyhow::Result<(String, String, String)> {
    let key = KeyPair::from_pem(key_pem).context("reading the private key")?;
    let (_, x) = X509Certificate::from_der(cert_der).map_err(|e| anyhow::anyhow!("{e}"))?;
    if x.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        bail!("the key does not match the certificate");
    }
    let old_span = Duration::from_secs(
        (x.validity().not_after.timestamp() - x.validity().not_before.timestamp()).max(1) as u64,
    );
    let mut params = CertificateParams::from_ca_cert_der(&CertificateDer::from(cert_der))?;
    let span = lifetime.unwrap_or(old_span);
    let backdate = (span / 10).min(Duration::from_secs(3600));
    let now = OffsetDateTime::now_utc();
    params.not_before = now - backdate;
    params.not_after = params.not_before + span;
    // A fresh random serial: clients and tests tell the new certificate by it. (rcgen's
    // default serial is a hash of the public key, which with the same key would repeat.)
    let mut serial = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut serial);
    serial[0] &= 0x7f; // positive, as RFC 5280 requires
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &ca.cert, &ca.key)?;
    let (_, nx) = X509Certificate::from_der(cert.der()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((
        cert.pem(),
        nx.raw_serial_as_string().replace(':', ""),
        nx.validity().not_after.to_string(),
    ))
}

fn wanted(opts: &RenewOptions, name: &str) -> bool {
    opts.only.is_empty() || opts.only.iter().any(|o| o == name)
}

/// Renews what is due; one result per certificate looked at.
pub fn renew(opts: &RenewOptions) -> anyhow::Result<Vec<(PathBuf, anyhow::Result<Outcome>)>> {
    let mut cas = vec![load_issuer(&opts.dir, "ca")?];
    let store = kelson_pki::STORE_CA_BASENAME;
    if opts.dir.join(format!("{store}.key")).exists() {
        cas.push(load_issuer(&opts.dir, store)?);
    }
    let mut out = Vec::new();
    for path in sorted_files(&opts.dir, "crt")? {
        let base = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if base == "ca" || base == store || !wanted(opts, &base) {
            continue;
        }
        let r = renew_pair(opts, &cas, &path, &opts.dir.join(format!("{base}.key")));
        out.push((path, r));
    }
    let mut kdirs = vec![opts.dir.clone()];
    kdirs.extend(opts.kubeconfig_dirs.iter().cloned());
    for dir in kdirs {
        for path in sorted_files(&dir, "kubeconfig")? {
            let name = path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !wanted(opts, &name) && !wanted(opts, name.trim_end_matches(".kubeconfig")) {
                continue;
            }
            let r = renew_kubeconfig(opts, &cas, &path);
            out.push((path, r));
        }
    }
    Ok(out)
}

pub(crate) fn sorted_files(dir: &Path, ext: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext) && p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

fn renew_pair(
    opts: &RenewOptions,
    cas: &[Issuer],
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Outcome> {
    let der = first_cert_der(&std::fs::read(cert)?)?;
    let (_, x) = X509Certificate::from_der(&der).map_err(|e| anyhow::anyhow!("{e}"))?;
    if x.is_ca() {
        return Ok(Outcome::Skipped("a CA".into()));
    }
    let Some(ca) = cas.iter().find(|ca| issued_by(&x, ca)) else {
        return Ok(Outcome::Skipped("issued by another CA".into()));
    };
    if !due(&x, opts) {
        return Ok(Outcome::Kept {
            not_after: x.validity().not_after.to_string(),
            ca: ca.name.clone(),
        });
    }
    let Ok(key_pem) = std::fs::read_to_string(key) else {
        return Ok(Outcome::Skipped(format!("no key at {}", key.display())));
    };
    let (pem, serial, not_after) = reissue(&der, &key_pem, ca, opts.lifetime)?;
    kelson_pki::write_atomic(cert, pem.as_bytes(), 0o644)?;
    tracing::info!(cert = %cert.display(), %serial, ca = %ca.name, "certificate renewed");
    Ok(Outcome::Renewed {
        serial,
        not_after,
        ca: ca.name.clone(),
    })
}

/// Renews the `client-certificate-data` of a kubeconfig (first user that has one), rewriting
/// only that value so everything else in the file stays as it was.
fn renew_kubeconfig(opts: &RenewOptions, cas: &[Issuer], path: &Path) -> anyhow::Result<Outcome> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = std::fs::read_to_string(path)?;
    let value = |field: &str| -> Option<(usize, String)> {
        text.lines().enumerate().find_map(|(i, l)| {
            let v = l.trim_start().strip_prefix(field)?.trim();
            Some((i, v.trim_matches('"').to_string()))
        })
    };
    let (Some((line, cert_b64)), Some((_, key_b64))) =
        (value("client-certificate-data:"), value("client-key-data:"))
    else {
        return Ok(Outcome::Skipped("no embedded client certificate".into()));
    };
    let der = first_cert_der(&b64.decode(&cert_b64)?)?;
    let (_, x) = X509Certificate::from_der(&der).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(ca) = cas.iter().find(|ca| issued_by(&x, ca)) else {
        return Ok(Outcome::Skipped("issued by another CA".into()));
    };
    if !due(&x, opts) {
        return Ok(Outcome::Kept {
            not_after: x.validity().not_after.to_string(),
            ca: ca.name.clone(),
        });
    }
    let key_pem = String::from_utf8(b64.decode(&key_b64)?)?;
    let (pem, serial, not_after) = reissue(&der, &key_pem, ca, opts.lifetime)?;
    let new: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == line {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}client-certificate-data: {}", b64.encode(&pem))
            } else {
                l.to_string()
            }
        })
        .collect();
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)?.permissions().mode() & 0o777
    };
    kelson_pki::write_atomic(path, (new.join("\n") + "\n").as_bytes(), mode)?;
    Ok(Outcome::Renewed {
        serial,
        not_after,
        ca: ca.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelson_pki::{Ca, CertRequest, Usage};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::client::danger::ServerCertVerifier;

    #[test]
    fn before_parses_fractions_percentages_and_durations() {
        assert_eq!(
            "1/3".parse::<Before>().unwrap(),
            Before::Fraction(1.0 / 3.0)
        );
        assert_eq!("50%".parse::<Before>().unwrap(), Before::Fraction(0.5));
        assert_eq!(
            "720h".parse::<Before>().unwrap(),
            Before::Remaining(Duration::from_secs(720 * 3600))
        );
        assert!("0/3".parse::<Before>().is_err());
        assert!("soon".parse::<Before>().is_err());
    }

    #[test]
    fn renews_due_leaves_with_the_same_key_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test-ca").unwrap();
        ca.pair().write_pair(dir.path(), "ca").unwrap();
        let req = CertRequest {
            dns_names: vec!["localhost".into()],
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            organization: Some("org".into()),
            ..CertRequest::new("srv", Usage::Server)
        };
        ca.issue(&req)
            .unwrap()
            .write_pair(dir.path(), "srv")
            .unwrap();
        let other = Ca::generate("other").unwrap();
        other
            .issue(&CertRequest::new("x", Usage::Client))
            .unwrap()
            .write_pair(dir.path(), "foreign")
            .unwrap();
        let key_before = std::fs::read(dir.path().join("srv.key")).unwrap();
        let mut opts = RenewOptions {
            dir: dir.path().to_path_buf(),
            before: Before::Fraction(1.0 / 3.0),
            lifetime: None,
            force: false,
            only: vec![],
            kubeconfig_dirs: vec![],
        };
        // A one-year certificate is not due.
        let r = renew(&opts).unwrap();
        assert!(matches!(r[1].1, Ok(Outcome::Kept { .. })), "{r:?}");
        assert!(matches!(r[0].1, Ok(Outcome::Skipped(_))), "{r:?}");
        // Forced, with a short lifetime: same names and key, new serial, 20 s left.
        opts.force = true;
        opts.lifetime = Some(Duration::from_secs(20));
        let r = renew(&opts).unwrap();
        assert!(matches!(r[1].1, Ok(Outcome::Renewed { .. })), "{r:?}");
        let info = kelson_pki::cert_info(&dir.path().join("srv.crt")).unwrap();
        assert!(info.subject.contains("CN=srv") && info.subject.contains("O=org"));
        assert_eq!(info.sans, vec!["localhost", "127.0.0.1"]);
        assert!(info.expires_within(Duration::from_secs(21)));
        assert!(!info.expires_within(Duration::from_secs(15)));
        assert_eq!(
            std::fs::read(dir.path().join("srv.key")).unwrap(),
            key_before
        );
        let Ok(Outcome::Renewed { serial: first, .. }) = &r[1].1 else {
            unreachable!()
        };
        // Now 20 s of which ~18 s are left: not due at 1/3, due at 95%.
        opts.force = false;
        let r = renew(&opts).unwrap();
        assert!(matches!(r[1].1, Ok(Outcome::Kept { .. })), "{r:?}");
        opts.before = Before::Fraction(0.95);
        let r = renew(&opts).unwrap();
        let Ok(Outcome::Renewed { serial: second, .. }) = &r[1].1 else {
            panic!("{r:?}")
        };
        assert_ne!(first, second, "a renewal must get a new serial number");
        // Still chains to the CA: rustls accepts it as a server certificate for 127.0.0.1.
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(CertificateDer::from(
                first_cert_der(ca.cert_pem().as_bytes()).unwrap(),
            ))
            .unwrap();
            std::sync::Arc::new(r)
        };
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = first_cert_der(&std::fs::read(dir.path().join("srv.crt")).unwrap()).unwrap();
        verifier
            .verify_server_cert(
                &CertificateDer::from(leaf),
                &[],
                &rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(),
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .expect("renewed certificate verifies against the CA");
    }

    #[test]
    fn each_leaf_is_renewed_by_the_ca_that_issued_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = kelson_pki::init_cluster_pki(dir.path(), &[]).unwrap();
        Ca::load(dir.path())
            .unwrap()
            .issue(&CertRequest::new("kube-apiserver", Usage::Server))
            .unwrap()
            .write_pair(dir.path(), "apiserver")
            .unwrap();
        let opts = RenewOptions {
            dir: dir.path().to_path_buf(),
            before: Before::Fraction(1.0 / 3.0),
            lifetime: Some(Duration::from_secs(3600)),
            force: true,
            only: vec![],
            kubeconfig_dirs: vec![],
        };
        let r = renew(&opts).unwrap();
        let ca_of = |name: &str| -> String {
            let (_, o) = r
                .iter()
                .find(|(p, _)| p.file_name().unwrap() == name)
                .unwrap_or_else(|| panic!("{name} not looked at: {r:?}"));
            match o {
                Ok(Outcome::Renewed { ca, .. }) => ca.clone(),
                other => panic!("{name}: {other:?}"),
            }
        };
        assert_eq!(ca_of("apiserver.crt"), "ca.crt");
        for leaf in ["kv-server.crt", "kv-peer.crt", "kv-client.crt"] {
            assert_eq!(ca_of(leaf), "store-ca.crt", "{leaf}");
        }
        assert!(
            !r.iter()
                .any(|(p, _)| p.ends_with("store-ca.crt") || p.ends_with("ca.crt")),
            "CAs are not renewed: {r:?}"
        );
        let pem = |p: &Path| std::fs::read_to_string(p).unwrap();
        for leaf in [&p.server_cert, &p.peer_cert, &p.client_cert] {
            let info = kelson_pki::cert_info(leaf).unwrap();
            assert!(
                info.expires_within(Duration::from_secs(3601)),
                "{leaf:?} renewed"
            );
            assert!(kelson_pki::issued_by(&pem(leaf), &pem(&p.store_ca_cert)));
            assert!(!kelson_pki::issued_by(&pem(leaf), &pem(&p.ca_cert)));
        }
        assert!(kelson_pki::issued_by(
            &pem(&dir.path().join("apiserver.crt")),
            &pem(&p.ca_cert)
        ));
    }
}
