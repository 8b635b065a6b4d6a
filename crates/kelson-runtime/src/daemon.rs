//! The common start of every daemon's `main`: command line, effective configuration,
//! `--print-config`, logging.
//!
//! Every Kelson daemon has the same shape (see the crate docs): `CommonArgs` flattened next to
//! the component's own `Option`-typed flags, a config struct that denies unknown keys, and the
//! three layers defaults ← `--config` file ← flags. [`start`] does all of it once, so a daemon's
//! `main.rs` is two lines and every daemon behaves identically at the edges (`--help`,
//! `--version`, config errors naming key and file, `--print-config` exiting 0).

use clap::{Args, CommandFactory, FromArgMatches, Parser};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{self, CommonArgs, ConfigError};
use crate::logging::{self, LogHandle};
use crate::RuntimeError;

/// The full command line of a daemon: the shared flags plus the component's own.
#[derive(Parser, Debug, Serialize)]
pub struct DaemonCli<F: Args> {
    #[command(flatten)]
    #[serde(skip)]
    pub common: CommonArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub flags: F,
}

/// What a daemon runs with.
#[derive(Debug)]
pub struct Started<C> {
    pub config: C,
    pub common: CommonArgs,
    pub log: LogHandle,
}

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // The message carries the cause (key and file) on one line; not chained as a source too.
    #[error("loading configuration: {0}")]
    Config(ConfigError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

/// Parses `std::env::args` for the binary `bin` (clap exits on `--help`, `--version` and usage
/// errors, as any CLI), builds the effective configuration, prints it and returns `None` on
/// `--print-config`, else initialises logging for `component` and returns what to run with.
pub fn start<F, C>(
    component: &str,
    bin: &'static str,
    about: &'static str,
) -> Result<Option<Started<C>>, StartError>
where
    F: Args + Serialize,
    C: DeserializeOwned + Serialize,
{
    let cmd = DaemonCli::<F>::command()
        .name(bin)
        .bin_name(bin)
        .about(about)
        .version(env!("CARGO_PKG_VERSION"));
    let matches = cmd.get_matches();
    let cli = DaemonCli::<F>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let cfg: C = config::load(
        cli.common.config.as_deref(),
        config::overrides_from(&cli.flags)?,
    )?;
    if cli.common.print_config {
        print!("{}", config::print_config(&cfg)?);
        return Ok(None);
    }
    let log = logging::init(component, &cli.common.log_level)?;
    Ok(Some(Started {
        config: cfg,
        common: cli.common,
        log,
    }))
}
