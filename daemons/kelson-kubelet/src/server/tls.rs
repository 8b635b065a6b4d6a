//! The kubelet API's TLS identities: its serving certificate and its callers' users.
//!
//! Without `--tls-cert-file`, upstream's kubelet generates a self-signed certificate for its
//! host name and addresses and keeps it under its PKI directory; we do the same (rcgen), and
//! reuse the pair on restart so clients that pinned it keep working. Callers are identified
//! like the API server's x509 authenticator: CN is the user, each O a group, plus
//! `system:authenticated`.

use std::path::{Path, PathBuf};

use x509_parser::prelude::*;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The user a verified client certificate (DER) names; `None` without a CN.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

/// `<dir>/kubelet.crt` and `.key`, generated (self-signed, for `host` and `ip`) if missing.
pub fn self_signed(dir: &Path, host: &str, ip: &str) -> Result<(PathBuf, PathBuf), CertError> {
    let cert = dir.join("kubelet.crt");
    let key = dir.join("kubelet.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let mut names = vec![host.to_string(), "localhost".to_string()];
    if !ip.is_empty() {
        names.push(ip.to_string());
    }
    let ck = rcgen::generate_simple_self_signed(names)?;
    let write = |path: &Path, data: &str, mode: u32| -> Result<(), CertError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let w = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(path)?;
            f.write_all(data.as_bytes())
        };
        w().map_err(|source| CertError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    write(&key, &ck.key_pair.serialize_pem(), 0o600)?;
    write(&cert, &ck.cert.pem(), 0o644)?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = self_signed(dir.path(), "node-a", "127.0.0.1").unwrap();
        let first = std::fs::read(&c).unwrap();
        assert!(std::fs::read_to_string(&k).unwrap().contains("PRIVATE KEY"));
        let (c2, _) = self_signed(dir.path(), "node-a", "127.0.0.1").unwrap();
        assert_eq!(std::fs::read(c2).unwrap(), first);
        let pem = std::fs::read_to_string(&c).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|d: rustls_pki_types::CertificateDer<'static>| d)
            .unwrap();
        let (_, x) = X509Certificate::from_der(der.as_ref()).unwrap();
        let san = x.subject_alternative_name().unwrap().unwrap();
        let names = &san.value.general_names;
        assert!(names
            .iter()
            .any(|g| matches!(g, GeneralName::DNSName("node-a"))));
        assert!(names
            .iter()
            .any(|g| matches!(g, GeneralName::IPAddress(b) if *b == [127, 0, 0, 1])));
    }
}
