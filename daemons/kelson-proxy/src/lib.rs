//! kelson-proxy: Service virtual IPs on a node.
pub mod config;
pub mod model;
pub mod nft;
pub use config::{ProxyConfig, ProxyFlags};
pub async fn run(_c: ProxyConfig, _k: &kelson_runtime::config::CommonArgs, _l: kelson_runtime::logging::LogHandle) -> anyhow::Result<()> { Ok(()) }
