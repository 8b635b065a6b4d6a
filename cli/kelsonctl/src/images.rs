//! `kelsonctl images`: images without a registry.
//!
//! - `import FILE...` loads OCI image-layout or docker-archive tars into containerd's `k8s.io`
//!   namespace (the one the CRI plugin, and so the kubelet, uses) with containerd's own
//!   importer (`ctr images import`), unpacking into the CRI snapshotter.
//! - `build-test DIR` writes the project's test images, `busybox.tar` and `pause.tar`, built
//!   from the host's busybox-static (see `kelson-oci`), and with `--import` loads them too.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Import OCI-layout or docker-archive tars into containerd (namespace k8s.io).
    Import(ImportArgs),
    /// Write the busybox and pause test images (OCI layout tars) into DIR.
    BuildTest(BuildTestArgs),
}

#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: PathBuf,
    /// containerd namespace (the CRI plugin's is k8s.io).
    #[arg(long, default_value = "k8s.io")]
    pub namespace: String,
    /// Snapshotter to unpack into (default: containerd's default, overlayfs).
    #[arg(long)]
    pub snapshotter: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Archive files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
pub struct BuildTestArgs {
    /// Output directory.
    pub dir: PathBuf,
    /// The busybox binary (static) to build from.
    #[arg(long, default_value = kelson_oci::DEFAULT_BUSYBOX)]
    pub busybox: PathBuf,
    /// Also import the images into containerd.
    #[arg(long)]
    pub import: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

fn target(r: &RuntimeArgs) -> kelson_oci::ImportTarget {
    kelson_oci::ImportTarget {
        address: r.address.clone(),
        namespace: r.namespace.clone(),
        snapshotter: r.snapshotter.clone(),
    }
}

fn import_all(r: &RuntimeArgs, files: &[PathBuf]) -> anyhow::Result<()> {
    for f in files {
        if !f.is_file() {
            anyhow::bail!("{}: no such file", f.display());
        }
        let names = kelson_oci::import(&target(r), f)
            .with_context(|| format!("importing {}", f.display()))?;
        if names.is_empty() {
            println!("imported {}", f.display());
        }
        for n in names {
            println!("imported {n} from {}", f.display());
        }
    }
    Ok(())
}

/// Runs an `images` subcommand; the result is the exit code.
pub fn run(cmd: ImagesCommand) -> anyhow::Result<i32> {
    match cmd {
        ImagesCommand::Import(a) => {
            import_all(&a.runtime, &a.files)?;
            Ok(0)
        }
        ImagesCommand::BuildTest(a) => {
            let imgs = kelson_oci::build_test_images(&a.busybox, &a.dir)
                .context("building the test images")?;
            println!("{}  {}", kelson_oci::BUSYBOX_IMAGE, imgs.busybox.display());
            println!("{}  {}", kelson_oci::PAUSE_IMAGE, imgs.pause.display());
            if a.import {
                import_all(&a.runtime, &[imgs.pause, imgs.busybox])?;
            }
            Ok(0)
        }
    }
}
