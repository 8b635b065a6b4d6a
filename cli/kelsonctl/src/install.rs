//! `kelsonctl install`: lay Kelson out on a machine (or into an image) where a distribution
//! package would put it.
//!
//! | what | where (`--prefix /usr`) |
//! |---|---|
//! | daemons and kelsonctl | `<prefix>/bin/kelson-*` |
//! | systemd units and targets | `<prefix>/lib/systemd/system/` |
//! | D-Bus policy | `<prefix>/share/dbus-1/system.d/io.kelson.conf` |
//! | sysusers.d, tmpfiles.d | `<prefix>/lib/sysusers.d/kelson.conf`, `<prefix>/lib/tmpfiles.d/kelson.conf` |
//! | journald message catalog | `<prefix>/lib/systemd/catalog/kelson.catalog` |
//!
//! The catalog explains the key events' `MESSAGE_ID`s (docs/journald.md) to `journalctl -x`;
//! it is rendered from `kelson_runtime::events` (the same constants the daemons log with), so
//! the IDs cannot drift from the code. journald reads catalogs from the compiled database
//! only, so the postinst runs `journalctl --update-catalog` (with `--root` for a tree).
//!
//! Everything is written under `--root` (default `/`), so `install --root DIR` populates a
//! container or image tree. The units, policy and sysusers/tmpfiles snippets are compiled into
//! kelsonctl ([`ASSETS`], `include_str!` of the source tree's `systemd/`), so an installed
//! kelsonctl can install or repair itself without the sources. When the prefix is not `/usr`,
//! the units' `ExecStart=/usr/bin/kelson-*` lines are rewritten to `<prefix>/bin/`.
//!
//! Idempotent: a file whose content is already right is left alone (and reported as
//! `unchanged`); a changed one is replaced atomically (temp file + rename), which also works
//! for a binary that is running. After the files, the equivalent of a package's postinst runs:
//! `systemd-sysusers`, `systemd-tmpfiles --create` and `journalctl --update-catalog` (with
//! `--root` for a tree), then `systemctl daemon-reload` when installing into the running
//! system under systemd.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;

/// `kelsonctl install` flags.
#[derive(Debug, Args, Clone)]
pub struct InstallArgs {
    /// Install into this directory tree instead of the running system (an image or container).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Installation prefix inside the root (binaries in PREFIX/bin, units in PREFIX/lib/systemd).
    #[arg(long, default_value = "/usr")]
    pub prefix: PathBuf,
    /// Where the kelson-* binaries are (default: next to this kelsonctl).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Only lay out files: skip systemd-sysusers, systemd-tmpfiles and daemon-reload.
    #[arg(long)]
    pub no_postinst: bool,
}

/// The programs installed into `<prefix>/bin` (kelsonctl itself included).
pub const BINARIES: &[&str] = &[
    "kelson-kv",
    "kelson-apiserver",
    "kelson-scheduler",
    "kelson-controller-manager",
    "kelson-cloud-controller-manager",
    "kelson-kubelet",
    "kelson-proxy",
    "kelson-dns",
    "kelsonctl",
];

/// Where an embedded asset goes, relative to the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetKind {
    /// `lib/systemd/system/<name>`; `ExecStart=` is rewritten for the prefix.
    Unit,
    /// `share/dbus-1/system.d/<name>`.
    DbusPolicy,
    /// `lib/sysusers.d/<name>`.
    Sysusers,
    /// `lib/tmpfiles.d/<name>`.
    Tmpfiles,
}

/// One embedded file of the source tree's `systemd/` directory.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub name: &'static str,
    pub kind: AssetKind,
    pub text: &'static str,
}

macro_rules! asset {
    ($kind:ident, $dir:literal, $name:literal) => {
        Asset {
            name: $name,
            kind: AssetKind::$kind,
            text: include_str!(concat!("../../../systemd/", $dir, $name)),
        }
    };
}

/// Everything from `systemd/` that an installation needs.
pub const ASSETS: &[Asset] = &[
    asset!(Unit, "", "kelson-kv.service"),
    asset!(Unit, "", "kelson-apiserver.service"),
    asset!(Unit, "", "kelson-scheduler.service"),
    asset!(Unit, "", "kelson-controller-manager.service"),
    asset!(Unit, "", "kelson-cloud-controller-manager.service"),
    asset!(Unit, "", "kelson-kubelet.service"),
    asset!(Unit, "", "kelson-proxy.service"),
    asset!(Unit, "", "kelson-dns.service"),
    asset!(Unit, "", "kelson-speaker.service"),
    asset!(Unit, "", "kelson-pki-renew.service"),
    asset!(Unit, "", "kelson-pki-renew.timer"),
    asset!(Unit, "", "kelson-control-plane.target"),
    asset!(Unit, "", "kelson-node.target"),
    asset!(Unit, "", "kelson.target"),
    asset!(DbusPolicy, "dbus-1/system.d/", "io.kelson.conf"),
    asset!(Sysusers, "sysusers.d/", "kelson.conf"),
    asset!(Tmpfiles, "tmpfiles.d/", "kelson.conf"),
];

/// File name of the journald message catalog.
pub const CATALOG_NAME: &str = "kelson.catalog";

/// Installation paths for a root and prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The tree everything is written into (`/` for the running system).
    pub root: PathBuf,
    /// The prefix as the installed system sees it (`/usr`).
    pub prefix: PathBuf,
}

impl Layout {
    pub fn new(root: &Path, prefix: &Path) -> anyhow::Result<Layout> {
        if !prefix.is_absolute() {
            bail!("--prefix must be absolute, got {}", prefix.display());
        }
        Ok(Layout {
            root: root.to_path_buf(),
            prefix: prefix.to_path_buf(),
        })
    }

    /// `path` (absolute, as the installed system sees it) inside the root.
    pub fn in_root(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Installed path (as the installed system sees it) of a binary.
    pub fn binary(&self, name: &str) -> PathBuf {
        self.prefix.join("bin").join(name)
    }

    /// Installed path of an asset.
    pub fn asset(&self, a: &Asset) -> PathBuf {
        let dir = match a.kind {
            AssetKind::Unit => "lib/systemd/system",
            AssetKind::DbusPolicy => "share/dbus-1/system.d",
            AssetKind::Sysusers => "lib/sysusers.d",
            AssetKind::Tmpfiles => "lib/tmpfiles.d",
        };
        self.prefix.join(dir).join(a.name)
    }

    /// Installed path of the journald message catalog.
    pub fn catalog(&self) -> PathBuf {
        self.prefix.join("lib/systemd/catalog").join(CATALOG_NAME)
    }

    /// The asset's content for this prefix (units name `<prefix>/bin/kelson-*`).
    pub fn render(&self, a: &Asset) -> String {
        if a.kind != AssetKind::Unit || self.prefix == Path::new("/usr") {
            return a.text.to_string();
        }
        let bin = format!("{}/bin/kelson-", self.prefix.display());
        let mut out = String::with_capacity(a.text.len());
        for line in a.text.lines() {
            match line.strip_prefix("ExecStart=/usr/bin/kelson-") {
                Some(rest) => {
                    out.push_str("ExecStart=");
                    out.push_str(&bin);
                    out.push_str(rest);
                }
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }

    fn is_running_system(&self) -> bool {
        self.root == Path::new("/")
    }
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Wrote,
    Unchanged,
}

/// The directory the binaries are taken from: `--bin-dir`, else kelsonctl's own directory.
fn source_bin_dir(args: &InstallArgs) -> anyhow::Result<PathBuf> {
    if let Some(d) = &args.bin_dir {
        return Ok(d.clone());
    }
    let exe = std::env::current_exe().context("locating the running kelsonctl")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("kelsonctl has no parent directory")
}

/// True when `dst` exists with exactly the bytes of `src` (compared in chunks: debug builds of
/// the daemons are hundreds of MB, so neither file is read whole).
fn same_content(src: &Path, dst: &Path) -> anyhow::Result<bool> {
    let (Ok(sm), Ok(dm)) = (fs::metadata(src), fs::metadata(dst)) else {
        return Ok(false);
    };
    if sm.len() != dm.len() {
        return Ok(false);
    }
    let mut a = fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut b = fs::File::open(dst).with_context(|| format!("opening {}", dst.display()))?;
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        b.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Copies a binary into place (temp file + rename, so a running copy keeps its inode), 0755.
fn install_binary(src: &Path, dst: &Path) -> anyhow::Result<Outcome> {
    if same_content(src, dst)? {
        let mode = fs::metadata(dst)?.permissions().mode() & 0o7777;
        if mode == 0o755 {
            return Ok(Outcome::Unchanged);
        }
        fs::set_permissions(dst, fs::Permissions::from_mode(0o755))?;
        return Ok(Outcome::Wrote);
    }
    let dir = dst.parent().context("binary path without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.kelsonctl-install.{}",
        dst.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        fs::copy(src, &tmp).with_context(|| format!("copying {}", src.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::rename(&tmp, dst).with_context(|| format!("renaming into {}", dst.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| Outcome::Wrote)
}

/// Writes a text file (0644) unless it already has this content.
fn install_text(dst: &Path, text: &str) -> anyhow::Result<Outcome> {
    if fs::read(dst).is_ok_and(|cur| cur == text.as_bytes())
        && fs::metadata(dst).is_ok_and(|m| m.permissions().mode() & 0o7777 == 0o644)
    {
        return Ok(Outcome::Unchanged);
    }
    let dir = dst.parent().context("path without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    kelson_pki::write_atomic(dst, text.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", dst.display()))?;
    Ok(Outcome::Wrote)
}

/// Lays out binaries and assets under `layout`; returns every file (inside the root) with
/// what happened to it. Fails before writing anything if a binary is missing.
pub fn install_files(layout: &Layout, bin_dir: &Path) -> anyhow::Result<Vec<(PathBuf, Outcome)>> {
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !bin_dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing in {}: {} (build them: cargo build {})",
            bin_dir.display(),
            missing.join(", "),
            missing
                .iter()
                .map(|m| format!("-p {m}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let mut done = Vec::new();
    for b in BINARIES {
        let dst = layout.in_root(&layout.binary(b));
        let o = install_binary(&bin_dir.join(b), &dst)?;
        done.push((dst, o));
    }
    for a in ASSETS {
        let dst = layout.in_root(&layout.asset(a));
        let o = install_text(&dst, &layout.render(a))?;
        done.push((dst, o));
    }
    let dst = layout.in_root(&layout.catalog());
    let o = install_text(&dst, &kelson_runtime::events::catalog())?;
    done.push((dst, o));
    Ok(done)
}

/// Runs one postinst step, reporting (not failing on) a missing tool: the files are in place
/// either way and the message says what to run.
fn postinst_step(program: &str, args: &[String]) -> anyhow::Result<()> {
    let shown = format!("{program} {}", args.join(" "));
    match Command::new(program).args(args).status() {
        Ok(s) if s.success() => {
            println!("ran: {shown}");
            Ok(())
        }
        Ok(s) => bail!("{shown} failed ({s})"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: {shown} ({program} not found; run it on the target system)");
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("running {shown}")),
    }
}

/// What a distribution's postinst does: create the kelson user and group, the directories, and
/// make a running systemd see the new units.
fn postinst(layout: &Layout) -> anyhow::Result<()> {
    let root_args: Vec<String> = if layout.is_running_system() {
        Vec::new()
    } else {
        vec![format!("--root={}", layout.root.display())]
    };
    // systemd (252) opens a config file named on the command line as given, not under
    // --root, so it is named by its path inside the root.
    let file = |kind| {
        let a = ASSETS.iter().find(|a| a.kind == kind).expect("asset");
        layout.in_root(&layout.asset(a)).display().to_string()
    };
    let mut sysusers = root_args.clone();
    sysusers.push(file(AssetKind::Sysusers));
    postinst_step("systemd-sysusers", &sysusers)?;
    let mut tmpfiles = root_args.clone();
    tmpfiles.push("--create".into());
    tmpfiles.push(file(AssetKind::Tmpfiles));
    postinst_step("systemd-tmpfiles", &tmpfiles)?;
    // The catalog is read from the compiled database, not from the .catalog files.
    let mut catalog = root_args;
    catalog.push("--update-catalog".into());
    postinst_step("journalctl", &catalog)?;
    if layout.is_running_system() && Path::new("/run/systemd/system").is_dir() {
        postinst_step("systemctl", &["daemon-reload".into()])?;
    }
    Ok(())
}

/// `kelsonctl install`.
pub fn run(args: InstallArgs) -> anyhow::Result<i32> {
    let layout = Layout::new(&args.root, &args.prefix)?;
    let bin_dir = source_bin_dir(&args)?;
    for (path, outcome) in install_files(&layout, &bin_dir)? {
        let word = match outcome {
            Outcome::Wrote => "wrote",
            Outcome::Unchanged => "unchanged",
        };
        println!("{word}: {}", path.display());
    }
    if layout.prefix != Path::new("/usr") {
        println!(
            "note: dbus-daemon reads policies from /usr/share/dbus-1/system.d and /etc/dbus-1/system.d only; \
             link {} into /etc/dbus-1/system.d",
            layout
                .asset(ASSETS.iter().find(|a| a.kind == AssetKind::DbusPolicy).expect("policy"))
                .display()
        );
    }
    if layout.prefix != Path::new("/usr") {
        println!(
            "note: journalctl reads catalogs from /usr/lib/systemd/catalog and /etc/systemd/catalog only; \
             link {} into /etc/systemd/catalog",
            layout.catalog().display()
        );
    }
    if !args.no_postinst {
        postinst(&layout)?;
    } else {
        let root = if layout.is_running_system() {
            String::new()
        } else {
            format!(" --root={}", layout.root.display())
        };
        println!(
            "next: systemd-sysusers, systemd-tmpfiles --create, and journalctl{root} --update-catalog \
             (so journalctl -x explains Kelson's events)"
        );
    }
    println!("next: kelsonctl init, then systemctl start kelson.target");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_in_the_source_tree_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../systemd");
        for e in fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".service") || name.ends_with(".target") || name.ends_with(".timer") {
                assert!(
                    ASSETS
                        .iter()
                        .any(|a| a.name == name && a.kind == AssetKind::Unit),
                    "systemd/{name} is not in install::ASSETS"
                );
            }
        }
    }

    #[test]
    fn exec_start_follows_the_prefix() {
        let l = Layout::new(Path::new("/tmp/x"), Path::new("/opt/kelson")).unwrap();
        let kv = ASSETS
            .iter()
            .find(|a| a.name == "kelson-kv.service")
            .unwrap();
        let text = l.render(kv);
        assert!(text.contains("ExecStart=/opt/kelson/bin/kelson-kv --config /etc/kelson/kv.toml\n"));
        assert!(!text.contains("/usr/bin/kelson-"));
        // Everything else is as shipped.
        assert_eq!(text.lines().count(), kv.text.lines().count());
        let usr = Layout::new(Path::new("/"), Path::new("/usr")).unwrap();
        assert_eq!(usr.render(kv), kv.text);
        assert_eq!(
            l.in_root(&l.asset(kv)),
            Path::new("/tmp/x/opt/kelson/lib/systemd/system/kelson-kv.service")
        );
    }

    #[test]
    fn install_is_idempotent_and_fails_on_missing_binaries() {
        let tmp = tempfile::tempdir().unwrap();
        let bins = tmp.path().join("bins");
        fs::create_dir_all(&bins).unwrap();
        let root = tmp.path().join("root");
        let layout = Layout::new(&root, Path::new("/usr")).unwrap();
        for b in &BINARIES[..BINARIES.len() - 1] {
            fs::write(bins.join(b), format!("#!/bin/sh\necho {b}\n")).unwrap();
        }
        let err = install_files(&layout, &bins).unwrap_err().to_string();
        assert!(err.contains("kelsonctl"), "{err}");
        assert!(
            !root.exists(),
            "nothing may be written when a binary is missing"
        );
        fs::write(bins.join("kelsonctl"), "#!/bin/sh\n").unwrap();

        let first = install_files(&layout, &bins).unwrap();
        assert_eq!(first.len(), BINARIES.len() + ASSETS.len() + 1);
        assert!(first.iter().all(|(_, o)| *o == Outcome::Wrote));
        let kv = root.join("usr/bin/kelson-kv");
        assert_eq!(
            fs::metadata(&kv).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(root.join("usr/lib/systemd/system/kelson.target").is_file());
        assert!(root
            .join("usr/share/dbus-1/system.d/io.kelson.conf")
            .is_file());
        assert!(root.join("usr/lib/sysusers.d/kelson.conf").is_file());
        assert!(root.join("usr/lib/tmpfiles.d/kelson.conf").is_file());
        assert!(root
            .join("usr/lib/systemd/catalog/kelson.catalog")
            .is_file());

        let second = install_files(&layout, &bins).unwrap();
        assert!(
            second.iter().all(|(_, o)| *o == Outcome::Unchanged),
            "{second:?}"
        );

        // A changed binary and a tampered unit are replaced, nothing else.
        fs::write(bins.join("kelson-kv"), "#!/bin/sh\necho new\n").unwrap();
        let unit = root.join("usr/lib/systemd/system/kelson-kv.service");
        fs::write(&unit, "[Unit]\n").unwrap();
        let third = install_files(&layout, &bins).unwrap();
        let wrote: Vec<&PathBuf> = third
            .iter()
            .filter(|(_, o)| *o == Outcome::Wrote)
            .map(|(p, _)| p)
            .collect();
        assert_eq!(wrote, vec![&kv, &unit]);
        assert_eq!(fs::read_to_string(&kv).unwrap(), "#!/bin/sh\necho new\n");
    }

    /// The installed catalog compiles cleanly with the real `journalctl --update-catalog`
    /// (into a temporary root) and `journalctl --list-catalog` then lists every Kelson event
    /// — what `journalctl -x` looks entries up in.
    #[test]
    fn installed_catalog_is_read_by_journalctl() {
        let tmp = tempfile::tempdir().unwrap();
        let bins = tmp.path().join("bins");
        fs::create_dir_all(&bins).unwrap();
        for b in BINARIES {
            fs::write(bins.join(b), "#!/bin/sh\n").unwrap();
        }
        let root = tmp.path().join("root");
        let layout = Layout::new(&root, Path::new("/usr")).unwrap();
        install_files(&layout, &bins).unwrap();
        let journalctl = |args: &[&str]| {
            Command::new("journalctl")
                .arg(format!("--root={}", root.display()))
                .args(args)
                .output()
                .expect("journalctl is required (package systemd)")
        };
        let out = journalctl(&["--update-catalog"]);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "journalctl --update-catalog: {out:?}"
        );
        assert!(root.join("var/lib/systemd/catalog/database").is_file());
        let out = journalctl(&["--list-catalog"]);
        assert!(out.status.success(), "{out:?}");
        let list = String::from_utf8_lossy(&out.stdout);
        for e in kelson_runtime::events::ALL {
            assert!(
                list.lines()
                    .any(|l| l.starts_with(e.id) && l.contains(e.subject)),
                "{} ({}) not in the catalog listing:\n{list}",
                e.name,
                e.id
            );
        }
        // An entry in full, as `journalctl -x` shows it next to a record.
        let out = journalctl(&[
            "--dump-catalog",
            kelson_runtime::events::CERT_NEAR_EXPIRY.id,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Defined-By: kelson") && text.contains("kelsonctl pki renew"),
            "{text}"
        );
    }
}
