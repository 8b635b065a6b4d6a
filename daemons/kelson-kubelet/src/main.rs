//! kelson-kubelet: the node agent (runs bound pods through CRI).
use kelson_kubelet::{KubeletConfig, KubeletFlags};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let about = "kelson-kubelet: the node agent (runs bound pods through CRI)";
    let Some(d) = kelson_runtime::daemon::start::<KubeletFlags, KubeletConfig>(
        "kubelet",
        "kelson-kubelet",
        about,
    )?
    else {
        return Ok(()); // --print-config
    };
    kelson_kubelet::run(d.config, &d.common, d.log).await
}
