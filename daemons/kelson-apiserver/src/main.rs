//! kelson-apiserver: the Kubernetes API server over an etcd v3 store.
use kelson_apiserver::{ApiServerConfig, ApiServerFlags};

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
