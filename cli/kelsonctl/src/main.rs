//! `kelsonctl` binary: parse arguments, set up logging, run on a current-thread runtime.
//!
//! A current-thread runtime keeps every child spawn on the main thread: the parent-death signal
//! the `up` supervisor sets on its children is tied to the thread that forked them.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = kelsonctl::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kelsonctl: starting runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = match rt.block_on(kelsonctl::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kelsonctl: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
