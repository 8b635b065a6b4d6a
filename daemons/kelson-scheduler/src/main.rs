//! kelson-scheduler: assigns pods to nodes (a kube-scheduler-compatible API client).
use kelson_scheduler::{SchedulerConfig, SchedulerFlags};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let about = "kelson-scheduler: assigns pods to nodes (a kube-scheduler-compatible API client)";
    let Some(d) = kelson_runtime::daemon::start::<SchedulerFlags, SchedulerConfig>(
        "scheduler",
        "kelson-scheduler",
        about,
    )?
    else {
        return Ok(()); // --print-config
    };
    kelson_scheduler::run(d.config, &d.common, d.log).await
}
