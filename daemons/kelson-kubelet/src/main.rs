use anyhow::Context;
use clap::Parser;
use kelson_kubelet::{KubeletConfig, KubeletFlags};
use kelson_runtime::config::{self, CommonArgs};

/// kelson-kubelet: the node agent (runs bound pods through CRI).
#[derive(Parser, Debug, serde::Serialize)]
#[command(name = "kelson-kubelet", version)]
struct Cli {
    #[command(flatten)]
    #[serde(skip)]
    common: CommonArgs,
    #[command(flatten)]
    #[serde(flatten)]
    kubelet: KubeletFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: KubeletConfig = config::load(
        cli.common.config.as_deref(),
        config::overrides_from(&cli.kubelet)?,
    )
    .context("loading configuration")?;
    if cli.common.print_config {
        print!("{}", config::print_config(&cfg)?);
        return Ok(());
    }
    let log = kelson_runtime::logging::init("kubelet", &cli.common.log_level)?;
    kelson_kubelet::run(cfg, &cli.common, log).await
}
