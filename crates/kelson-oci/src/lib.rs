//! OCI image-layout archives built without a registry, and their import into containerd.
//!
//! No registry is reachable on Kelson's machines (and many on-prem clusters are air-gapped), so
//! the project builds its own small images from the host's statically linked busybox
//! (`busybox-static`):
//!
//! - [`BUSYBOX_IMAGE`]: `/bin/busybox` plus one symlink per applet (`busybox --list-full`), a
//!   minimal `/etc/passwd`/`/etc/group`, and `sh` as the default command;
//! - [`PAUSE_IMAGE`]: the same single layer (so containerd stores it once) with an entrypoint
//!   that sleeps until SIGTERM/SIGINT. It is a busybox `sh` with `trap 'exit 0' TERM INT` around
//!   `sleep & wait` rather than a dedicated static program: PID 1 in a PID namespace ignores
//!   signals it has no handler for, and the shell's trap installs one, so the sandbox exits
//!   promptly on StopPodSandbox's SIGTERM.
//!
//! Archives are byte-for-byte reproducible (fixed mtimes, owners and entry order), so the
//! digests only change when the busybox binary does. Layers are stored uncompressed
//! (`application/vnd.oci.image.layer.v1.tar`): the archive never leaves the machine, and
//! skipping gzip keeps this crate free of a compression dependency.
//!
//! [`import`] runs containerd's own `ctr images import` against a given socket and namespace
//! (`k8s.io` is the namespace the CRI plugin serves images from), unpacking into the snapshotter
//! the CRI plugin uses.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

pub mod containerd;
use sha2::{Digest, Sha256};

/// Reference of the busybox test image.
pub const BUSYBOX_IMAGE: &str = "kelson.local/busybox:latest";
/// Reference of the locally built pause (sandbox) image.
pub const PAUSE_IMAGE: &str = "kelson.local/pause:3.10";
/// Where Debian's busybox-static installs the binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// The pause image's entrypoint script (see the module docs for why a trap).
/// The trap also kills the pending `sleep`, so nothing outlives the script (outside a PID
/// namespace, e.g. in this crate's test, an orphaned sleep would linger).
pub const PAUSE_SCRIPT: &str =
    "trap 'kill $! 2>/dev/null; exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// A fixed mtime for reproducible archives (2000-01-01: some tools dislike the epoch).
const MTIME: u64 = 946_684_800;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the archive: {0}")]
    Archive(#[source] std::io::Error),
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{0} is not a busybox binary (`--list-full` printed no applets)")]
    NotBusybox(PathBuf),
    #[error("invalid image reference {0:?}")]
    BadReference(String),
    #[error("containerd plugin {plugin} did not load:\n{listing}")]
    Plugin { plugin: String, listing: String },
}

/// What an image runs and is called; every image of a test archive shares one layer.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Full reference, e.g. `kelson.local/busybox:latest`.
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
}

impl ImageSpec {
    /// The busybox image: default command `sh`.
    pub fn busybox() -> Self {
        ImageSpec {
            name: BUSYBOX_IMAGE.into(),
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec![default_path()],
            working_dir: "/".into(),
        }
    }

    /// The pause image: sleeps until SIGTERM/SIGINT, then exits 0.
    pub fn pause() -> Self {
        ImageSpec {
            name: PAUSE_IMAGE.into(),
            entrypoint: vec!["/bin/sh".into(), "-c".into(), PAUSE_SCRIPT.into()],
            cmd: vec![],
            env: vec![default_path()],
            working_dir: "/".into(),
        }
    }
}

fn default_path() -> String {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
}

/// The OCI architecture name of this build (`amd64`, `arm64`, ...).
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

/// The single layer: busybox, its applet symlinks, a minimal /etc and the usual empty dirs.
pub fn busybox_layer(busybox: &Path) -> Result<Vec<u8>, OciError> {
    let bin = std::fs::read(busybox).map_err(|source| OciError::Io {
        what: "reading",
        path: busybox.into(),
        source,
    })?;
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| OciError::Io {
            what: "running",
            path: busybox.into(),
            source,
        })?;
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != "bin/busybox" && !l.contains(".."))
        .collect();
    if applets.is_empty() {
        return Err(OciError::NotBusybox(busybox.into()));
    }
    applets.sort();
    applets.dedup();

    let mut b = tar::Builder::new(Vec::new());
    let dirs: [(&str, u32); 14] = [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("run", 0o755),
        ("sbin", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("var", 0o755),
    ];
    for (d, mode) in dirs {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, format!("{d}/"), std::io::empty())
            .map_err(OciError::Archive)?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, bin.len() as u64);
    b.append_data(&mut h, "bin/busybox", &bin[..])
        .map_err(OciError::Archive)?;
    let files: [(&str, &str); 3] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hosts", "127.0.0.1 localhost\n"),
    ];
    for (path, content) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, content.len() as u64);
        b.append_data(&mut h, path, content.as_bytes())
            .map_err(OciError::Archive)?;
    }
    for applet in &applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, applet, "/bin/busybox")
            .map_err(OciError::Archive)?;
    }
    b.into_inner().map_err(OciError::Archive)
}

/// Writes an OCI image-layout tar holding `images`, all on the one `layer`.
pub fn write_image_layout(out: &Path, layer: &[u8], images: &[ImageSpec]) -> Result<(), OciError> {
    let layer_digest = sha256_hex(layer);
    // Blobs in insertion order, deduplicated by digest.
    let mut blobs: Vec<(String, Vec<u8>)> = vec![(layer_digest.clone(), layer.to_vec())];
    let mut manifests = Vec::new();
    for img in images {
        let (_, tag) = split_reference(&img.name)?;
        let mut cfg = json!({
            "Env": img.env,
            "WorkingDir": img.working_dir,
        });
        if !img.entrypoint.is_empty() {
            cfg["Entrypoint"] = json!(img.entrypoint);
        }
        if !img.cmd.is_empty() {
            cfg["Cmd"] = json!(img.cmd);
        }
        let config = json!({
            "created": "2000-01-01T00:00:00Z",
            "architecture": oci_arch(),
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
            "history": [{"created": "2000-01-01T00:00:00Z", "created_by": "kelson-oci (busybox-static)"}],
        });
        let config = serde_json::to_vec(&config).map_err(|e| OciError::Archive(e.into()))?;
        let config_digest = sha256_hex(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": format!("sha256:{config_digest}"), "size": config.len()},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": format!("sha256:{layer_digest}"), "size": layer.len()}],
        });
        let manifest = serde_json::to_vec(&manifest).map_err(|e| OciError::Archive(e.into()))?;
        let manifest_digest = sha256_hex(&manifest);
        manifests.push(json!({
            "mediaType": MEDIA_MANIFEST,
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": {"architecture": oci_arch(), "os": "linux"},
            "annotations": {
                // containerd's importer names the image from this annotation.
                "io.containerd.image.name": img.name,
                "org.opencontainers.image.ref.name": tag,
            },
        }));
        for (d, data) in [(config_digest, config), (manifest_digest, manifest)] {
            if !blobs.iter().any(|(x, _)| *x == d) {
                blobs.push((d, data));
            }
        }
    }
    let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests});
    let index = serde_json::to_vec(&index).map_err(|e| OciError::Archive(e.into()))?;

    let mut b = tar::Builder::new(Vec::new());
    let put = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, path, data).map_err(OciError::Archive)
    };
    put(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    put(&mut b, "index.json", &index)?;
    for d in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, d, std::io::empty())
            .map_err(OciError::Archive)?;
    }
    for (d, data) in &blobs {
        put(&mut b, &format!("blobs/sha256/{d}"), data)?;
    }
    let bytes = b.into_inner().map_err(OciError::Archive)?;
    // Write to a temp name and rename, so a reader never sees half an archive.
    let tmp = out.with_extension("tar.part");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)
    };
    write().map_err(|source| OciError::Io {
        what: "writing",
        path: out.into(),
        source,
    })
}

/// Splits `repo[:tag]` (a registry port's colon is not a tag); the tag defaults to `latest`.
pub fn split_reference(reference: &str) -> Result<(&str, &str), OciError> {
    if reference.is_empty() || reference.contains(char::is_whitespace) || reference.contains('@') {
        return Err(OciError::BadReference(reference.into()));
    }
    let last_slash = reference.rfind('/').map(|i| i + 1).unwrap_or(0);
    match reference[last_slash..].rfind(':') {
        Some(i) => {
            let (repo, tag) = reference.split_at(last_slash + i);
            let tag = &tag[1..];
            if repo.is_empty() || tag.is_empty() {
                return Err(OciError::BadReference(reference.into()));
            }
            Ok((repo, tag))
        }
        None => Ok((reference, "latest")),
    }
}

/// Paths of the two test image archives.
#[derive(Debug, Clone)]
pub struct TestImages {
    pub busybox: PathBuf,
    pub pause: PathBuf,
}

/// Writes `busybox.tar` and `pause.tar` into `dir` from the busybox binary at `busybox`.
pub fn build_test_images(busybox: &Path, dir: &Path) -> Result<TestImages, OciError> {
    std::fs::create_dir_all(dir).map_err(|source| OciError::Io {
        what: "creating",
        path: dir.into(),
        source,
    })?;
    let layer = busybox_layer(busybox)?;
    let images = TestImages {
        busybox: dir.join("busybox.tar"),
        pause: dir.join("pause.tar"),
    };
    write_image_layout(&images.busybox, &layer, &[ImageSpec::busybox()])?;
    write_image_layout(&images.pause, &layer, &[ImageSpec::pause()])?;
    Ok(images)
}

/// Where and how `ctr` imports: containerd's socket, the namespace, the snapshotter to unpack
/// into (must be the CRI plugin's, or containers cannot be created from the image).
#[derive(Debug, Clone)]
pub struct ImportTarget {
    pub address: PathBuf,
    pub namespace: String,
    pub snapshotter: Option<String>,
}

impl ImportTarget {
    /// The system containerd's default socket and the CRI namespace.
    pub fn system() -> Self {
        ImportTarget {
            address: "/run/containerd/containerd.sock".into(),
            namespace: "k8s.io".into(),
            snapshotter: None,
        }
    }
}

/// Imports an OCI-layout or docker-archive tar with `ctr images import`; returns the image
/// references containerd reports.
pub fn import(target: &ImportTarget, archive: &Path) -> Result<Vec<String>, OciError> {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(&target.address)
        .arg("--namespace")
        .arg(&target.namespace)
        .args(["images", "import", "--no-unpack=false"]);
    if let Some(s) = &target.snapshotter {
        cmd.arg("--snapshotter").arg(s);
    }
    cmd.arg(archive);
    let cmd_text = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| OciError::Io {
        what: "running ctr for",
        path: archive.into(),
        source,
    })?;
    if !out.status.success() {
        return Err(OciError::Command {
            cmd: cmd_text,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    // `ctr` prints "unpacking NAME (sha256:...)...done" per image.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("unpacking "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_busybox() -> bool {
        Path::new(DEFAULT_BUSYBOX).is_file()
    }

    #[test]
    fn references_split_like_docker() {
        assert_eq!(split_reference("busybox").unwrap(), ("busybox", "latest"));
        assert_eq!(
            split_reference("kelson.local/pause:3.10").unwrap(),
            ("kelson.local/pause", "3.10")
        );
        assert_eq!(
            split_reference("host:5000/a/b").unwrap(),
            ("host:5000/a/b", "latest")
        );
        assert!(split_reference("").is_err());
        assert!(split_reference("a b").is_err());
        assert!(split_reference("x:").is_err());
    }

    #[test]
    fn layer_has_busybox_and_applets_and_is_reproducible() {
        if !have_busybox() {
            eprintln!("skipping: {DEFAULT_BUSYBOX} missing (apt-get install busybox-static)");
            return;
        }
        let a = busybox_layer(Path::new(DEFAULT_BUSYBOX)).unwrap();
        let b = busybox_layer(Path::new(DEFAULT_BUSYBOX)).unwrap();
        assert_eq!(sha256_hex(&a), sha256_hex(&b), "layer must be reproducible");
        let mut ar = tar::Archive::new(&a[..]);
        let mut names = Vec::new();
        let mut sh_target = None;
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            if p == "bin/sh" {
                sh_target = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned());
            }
            names.push(p);
        }
        assert!(names.contains(&"bin/busybox".to_string()));
        assert!(names.contains(&"etc/passwd".to_string()));
        assert_eq!(sh_target.as_deref(), Some("/bin/busybox"));
        assert!(names.iter().any(|n| n.ends_with("/sleep")));
    }

    #[test]
    fn not_busybox_is_an_error() {
        let err = busybox_layer(Path::new("/bin/true")).unwrap_err();
        assert!(matches!(err, OciError::NotBusybox(_)), "{err}");
        let err = busybox_layer(Path::new("/no/such/busybox")).unwrap_err();
        assert!(err.to_string().contains("/no/such/busybox"), "{err}");
    }

    #[test]
    fn image_layout_is_consistent() {
        if !have_busybox() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let imgs = build_test_images(Path::new(DEFAULT_BUSYBOX), dir.path()).unwrap();
        let data = std::fs::read(&imgs.pause).unwrap();
        let mut files = std::collections::HashMap::new();
        for e in tar::Archive::new(&data[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut buf).unwrap();
            files.insert(p, buf);
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["io.containerd.image.name"], PAUSE_IMAGE);
        // Every digest names a blob whose content hashes to it.
        let blob = |d: &serde_json::Value| {
            let d = d.as_str().unwrap().strip_prefix("sha256:").unwrap();
            let b = &files[&format!("blobs/sha256/{d}")];
            assert_eq!(sha256_hex(b), d);
            b.clone()
        };
        let manifest: serde_json::Value = serde_json::from_slice(&blob(&m["digest"])).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
        let layer = blob(&manifest["layers"][0]["digest"]);
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_hex(&layer))
        );
        assert_eq!(config["config"]["Entrypoint"][2], PAUSE_SCRIPT);
        assert_eq!(config["architecture"], oci_arch());
        assert!(!dir.path().join("pause.tar.part").exists());
    }

    #[test]
    fn pause_script_exits_on_sigterm() {
        if !have_busybox() {
            return;
        }
        let mut child = Command::new(DEFAULT_BUSYBOX)
            .args(["sh", "-c", PAUSE_SCRIPT])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let sleeps = children_named(child.id(), "sleep");
        assert_eq!(sleeps.len(), 1, "the script should be waiting on one sleep");
        let pid = child.id();
        nix_kill(pid, libc_sigterm());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                assert!(s.success(), "pause exited with {s}");
                // The sleep must not outlive the script (gone, or a zombie awaiting reaping).
                let sleep_pid = sleeps[0];
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while std::fs::read_to_string(format!("/proc/{sleep_pid}/stat")).is_ok_and(|st| {
                    !st.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                }) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "sleep {sleep_pid} outlived pause"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pause ignored SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// PIDs of the children of `pid` whose comm is `name` (from /proc).
    fn children_named(pid: u32, name: &str) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p: u32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let comm = stat.split('(').nth(1).and_then(|r| r.split(')').next());
                let ppid = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(1));
                (comm == Some(name) && ppid == Some(&pid.to_string())).then_some(p)
            })
            .collect()
    }

    fn libc_sigterm() -> &'static str {
        "TERM"
    }

    fn nix_kill(pid: u32, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}
