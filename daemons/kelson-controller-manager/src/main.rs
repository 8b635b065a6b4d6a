use anyhow::Context;
use clap::Parser;
use kelson_controller_manager::{CmConfig, CmFlags};
use kelson_runtime::config::{self, CommonArgs};

/// kelson-controller-manager: the reconcile loops (deployments, replica sets, garbage
/// collection, namespaces, endpoints, node lifecycle, ...).
#[derive(Parser, Debug, serde::Serialize)]
#[command(name = "kelson-controller-manager", version)]
struct Cli {
    #[command(flatten)]
    #[serde(skip)]
    common: CommonArgs,
    #[command(flatten)]
    #[serde(flatten)]
    cm: CmFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: CmConfig = config::load(
        cli.common.config.as_deref(),
        config::overrides_from(&cli.cm)?,
    )
    .context("loading configuration")?;
    if cli.common.print_config {
        print!("{}", config::print_config(&cfg)?);
        return Ok(());
    }
    let log = kelson_runtime::logging::init("controller-manager", &cli.common.log_level)?;
    kelson_controller_manager::run(cfg, &cli.common, log).await
}
