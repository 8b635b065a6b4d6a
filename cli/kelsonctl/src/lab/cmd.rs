//! Running the host tools the lab drives (`ip`, `nft`, `nsenter`, `mount`, `cp`, ...).
//!
//! The lab shells out to iproute2 and nftables rather than speaking netlink itself: these are
//! the tools an operator uses to inspect the same objects (`ip netns`, `nft list ruleset`),
//! so what the lab does can be reproduced and debugged by hand, and it adds no netlink crate
//! to the workspace. Every invocation is bounded by `timeout(1)`, so a wedged tool cannot hang
//! `lab up` or `lab down`.

use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context};

/// Upper bound for a single tool invocation (seconds).
pub const TOOL_TIMEOUT_S: u64 = 60;

/// Runs `prog args...` (bounded); fails with its stderr when it exits non-zero.
pub fn run(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = output(prog, args)?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `prog args...` (bounded) and returns its output whatever the exit status.
pub fn output(prog: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new("timeout")
        .arg(TOOL_TIMEOUT_S.to_string())
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {prog}"))
}

/// Like [`run`] but only logs a failure: used by teardown, which must go on.
pub fn best_effort(prog: &str, args: &[&str]) {
    if let Err(e) = run(prog, args) {
        tracing::debug!("ignored: {e:#}");
    }
}
