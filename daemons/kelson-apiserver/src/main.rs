//! kelson-apiserver: the Kubernetes API server over an etcd v3 store.
//!
//! The global allocator is mimalloc, as in kelson-kv: every request allocates and frees many
//! small JSON trees across the tokio workers, and glibc malloc kept hundreds of MB resident
//! after an HTTP/1.1 load burst (per-thread arenas holding freed TLS connection buffers);
//! mimalloc returns freed pages to the OS (docs/benchmarks.md, api-bench session 4).
use kelson_apiserver::{ApiServerConfig, ApiServerFlags};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let about = "kelson-apiserver: the Kubernetes API server over an etcd v3 store";
    let Some(d) = kelson_runtime::daemon::start::<ApiServerFlags, ApiServerConfig>(
        "apiserver",
        "kelson-apiserver",
        about,
    )?
    else {
        return Ok(()); // --print-config
    };
    kelson_apiserver::run(d.config, &d.common, d.log).await
}
