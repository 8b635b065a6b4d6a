//! kelson-cloud-controller-manager: the on-prem cloud provider (node inventory, LoadBalancer
//! address pools, L2 announcement, control-plane VIP).
use kelson_cloud_controller_manager::{CcmConfig, CcmFlags};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let about = "kelson-cloud-controller-manager: on-prem node inventory, LoadBalancer IP pools and L2 announcement (--mode controller|speaker)";
    let Some(d) = kelson_runtime::daemon::start::<CcmFlags, CcmConfig>(
        "cloud-controller-manager",
        "kelson-cloud-controller-manager",
        about,
    )?
    else {
        return Ok(()); // --print-config
    };
    kelson_cloud_controller_manager::run(d.config, &d.common, d.log).await
}
