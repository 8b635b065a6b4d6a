//! kelson-proxy: programs Service load balancing on a node (a kube-proxy-compatible API client).
use kelson_proxy::{ProxyConfig, ProxyFlags};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let about =
        "kelson-proxy: Service virtual IPs on this node (nftables, or a userspace fallback)";
    let Some(d) =
        kelson_runtime::daemon::start::<ProxyFlags, ProxyConfig>("proxy", "kelson-proxy", about)?
    else {
        return Ok(()); // --print-config
    };
    kelson_proxy::run(d.config, &d.common, d.log).await
}
