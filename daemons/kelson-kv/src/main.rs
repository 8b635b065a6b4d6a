//! kelson-kv: Raft-replicated key-value store speaking the etcd v3 API.
use kelson_kv::{KvConfig, KvFlags};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let about = "kelson-kv: Raft-replicated key-value store speaking the etcd v3 API";
    let Some(d) = kelson_runtime::daemon::start::<KvFlags, KvConfig>("kv", "kelson-kv", about)?
    else {
        return Ok(()); // --print-config
    };
    kelson_kv::server::run(d.config, &d.common, d.log).await
}
