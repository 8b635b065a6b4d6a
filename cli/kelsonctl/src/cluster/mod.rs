//! `kelsonctl cluster`: a multi-machine cluster described once, in `cluster.toml`.
//!
//! - [`spec`]: the description's types and `check` (every problem at once, each with its TOML
//!   path, e.g. `control_plane[1].zone: unknown zone "d"`).
//! - [`configs`]: the pure function description → per-machine roles and daemon TOML tables,
//!   mirrored by `nix/lib.nix` (and compared with it in `tests/tests/nix_eval.rs`).
//! - [`render`]: the description → one directory per machine laid out as its root, with PKI
//!   from two CAs kept in `DIR/_ca/`; idempotent to the byte.
//!
//! `kelsonctl init` remains the single-machine path; this module reuses its defaults (ports,
//! service network) and [`crate::clusterfiles`]' audit policy and encryption config format, but
//! has its own PKI and kubeconfig writers because `init`'s assume one CA and a loopback server.

pub mod configs;
pub mod render;
pub mod spec;

use std::path::PathBuf;

use clap::{Args, Subcommand};

pub use spec::{check, ClusterSpec, Diag, Severity};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Validate a cluster description; exit 1 on errors (warnings are printed, exit 0).
    Check(CheckArgs),
    /// Render per-machine configuration and PKI into a directory (idempotent).
    Render(RenderArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The cluster description (cluster.toml).
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The cluster description (cluster.toml).
    pub file: PathBuf,
    /// Output directory: DIR/<machine>/ per machine, DIR/_ca/ (keep it secret), DIR/admin.kubeconfig.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs a `kelsonctl cluster` subcommand; the result is the exit code.
pub fn run(cmd: ClusterCommand) -> anyhow::Result<i32> {
    match cmd {
        ClusterCommand::Check(a) => {
            let spec = match ClusterSpec::load(&a.file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(1);
                }
            };
            let diags = check(&spec);
            for d in &diags {
                eprintln!("{d}");
            }
            if spec::has_errors(&diags) {
                return Ok(1);
            }
            println!(
                "{}: ok ({} control-plane, {} workers, {} zones)",
                a.file.display(),
                spec.control_plane.len(),
                spec.workers.len(),
                spec.zones.len()
            );
            Ok(0)
        }
        ClusterCommand::Render(a) => {
            let spec = match ClusterSpec::load(&a.file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(1);
                }
            };
            let diags = check(&spec);
            for d in &diags {
                eprintln!("{d}");
            }
            if spec::has_errors(&diags) {
                return Ok(1);
            }
            let report = render::render(&spec, &a.out)?;
            for p in &report.changed {
                println!("wrote {}", p.display());
            }
            for p in &report.removed {
                println!("removed {}", p.display());
            }
            // Machines no longer described keep their directories: say so rather than
            // delete what may be the only copy of their keys.
            if let Ok(dir) = std::fs::read_dir(&a.out) {
                let mut stale: Vec<String> = dir
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().join("roles").is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| spec.machine(n).is_none())
                    .collect();
                stale.sort();
                for n in stale {
                    println!("note: {n}/ is not in the description any more (left in place)");
                }
            }
            println!(
                "{}: {} files written, {} unchanged",
                a.out.display(),
                report.changed.len(),
                report.unchanged
            );
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests;
