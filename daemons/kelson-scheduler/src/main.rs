use anyhow::Context;
use clap::Parser;
use kelson_runtime::config::{self, CommonArgs};
use kelson_scheduler::{SchedulerConfig, SchedulerFlags};

/// kelson-scheduler: assigns pods to nodes (a kube-scheduler-compatible API client).
#[derive(Parser, Debug, serde::Serialize)]
#[command(name = "kelson-scheduler", version)]
struct Cli {
    #[command(flatten)]
    #[serde(skip)]
    common: CommonArgs,
    #[command(flatten)]
    #[serde(flatten)]
    flags: SchedulerFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: SchedulerConfig = config::load(
        cli.common.config.as_deref(),
        config::overrides_from(&cli.flags)?,
    )
    .context("loading configuration")?;
    if cli.common.print_config {
        print!("{}", config::print_config(&cfg)?);
        return Ok(());
    }
    let log = kelson_runtime::logging::init("scheduler", &cli.common.log_level)?;
    kelson_scheduler::run(cfg, &cli.common, log).await
}
