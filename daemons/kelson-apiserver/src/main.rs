use anyhow::Context;
use clap::Parser;
use kelson_apiserver::{ApiServerConfig, ApiServerFlags};
use kelson_runtime::config::{self, CommonArgs};

/// kelson-apiserver: the Kubernetes API server over an etcd v3 store.
#[derive(Parser, Debug, serde::Serialize)]
#[command(name = "kelson-apiserver", version)]
struct Cli {
    #[command(flatten)]
    #[serde(skip)]
    common: CommonArgs,
    #[command(flatten)]
    #[serde(flatten)]
    flags: ApiServerFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: ApiServerConfig = config::load(
        cli.common.config.as_deref(),
        config::overrides_from(&cli.flags)?,
    )
    .context("loading configuration")?;
    if cli.common.print_config {
        print!("{}", config::print_config(&cfg)?);
        return Ok(());
    }
    let log = kelson_runtime::logging::init("apiserver", &cli.common.log_level)?;
    kelson_apiserver::run(cfg, &cli.common, log).await
}
