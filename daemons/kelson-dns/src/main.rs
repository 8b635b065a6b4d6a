//! kelson-dns: node-local cluster DNS (authoritative for the cluster domain, caching forwarder
//! for the rest).
use kelson_dns::{DnsConfig, DnsFlags};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let about = "kelson-dns: cluster DNS from Services and EndpointSlices; forwards the rest";
    let Some(d) = kelson_runtime::daemon::start::<DnsFlags, DnsConfig>("dns", "kelson-dns", about)?
    else {
        return Ok(()); // --print-config
    };
    kelson_dns::run(d.config, &d.common, d.log).await
}
