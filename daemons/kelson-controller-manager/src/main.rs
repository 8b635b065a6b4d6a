//! kelson-controller-manager: the reconcile loops (deployments, replica sets, garbage collection, namespaces, endpoints, node lifecycle, ...).
use kelson_controller_manager::{CmConfig, CmFlags};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let about = "kelson-controller-manager: the reconcile loops (deployments, replica sets, garbage collection, namespaces, endpoints, node lifecycle, ...)";
    let Some(d) = kelson_runtime::daemon::start::<CmFlags, CmConfig>(
        "controller-manager",
        "kelson-controller-manager",
        about,
    )?
    else {
        return Ok(()); // --print-config
    };
    kelson_controller_manager::run(d.config, &d.common, d.log).await
}
