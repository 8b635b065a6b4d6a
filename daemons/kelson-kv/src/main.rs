use anyhow::Context;
use clap::Parser;
use kelson_kv::{KvConfig, KvFlags};
use kelson_runtime::config::{self, CommonArgs};

/// kelson-kv: Raft-replicated key-value store speaking the etcd v3 API.
#[derive(Parser, Debug, serde::Serialize)]
#[command(name = "kelson-kv", version)]
struct Cli {
    #[command(flatten)]
    #[serde(skip)]
    common: CommonArgs,
    #[command(flatten)]
    #[serde(flatten)]
    kv: KvFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: KvConfig = config::load(
        cli.common.config.as_deref(),
        config::overrides_from(&cli.kv)?,
    )
    .context("loading configuration")?;
    if cli.common.print_config {
        print!("{}", config::print_config(&cfg)?);
        return Ok(());
    }
    let log = kelson_runtime::logging::init("kv", &cli.common.log_level)?;
    kelson_kv::server::run(cfg, &cli.common, log).await
}
