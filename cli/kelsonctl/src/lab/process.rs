//! The long-lived processes the lab starts (systemd-nspawn for control-plane machines, QEMU for
//! workers, ssh connection masters of Ansible runs) and how it finds and ends them.
//!
//! A machine outlives the `kelsonctl lab` command that started it, so it is spawned detached
//! (own process group, no terminal, output to a log file) and recorded as a [`Proc`] (PID +
//! start time, so a recycled PID is never signalled). A crashed `lab up` may have started a
//! process it never recorded; such processes are found again by their command line in
//! `/proc` (the machine's root directory or disk overlay is unique to the lab), which is why
//! the scan here is by command line rather than by a PID file.
//!
//! Killing is SIGKILL, never a polite stop: for the lab that is the point (power loss), and
//! for teardown it is the only bounded way.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::state::Proc;

/// Spawns `c` detached from this process: its own process group (no terminal signal reaches
/// it), stdin from /dev/null, stdout and stderr appended to `log`. The child is never waited
/// for (it outlives us; its new parent reaps it).
pub fn spawn_detached(c: &mut Command, log: &Path) -> anyhow::Result<Proc> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    c.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    let child = c
        .spawn()
        .with_context(|| format!("spawning {}", c.get_program().to_string_lossy()))?;
    let pid = child.id();
    std::mem::forget(child);
    Proc::of(pid).with_context(|| format!("{} exited at once", c.get_program().to_string_lossy()))
}

/// Every live process whose command line (split into its NUL-separated arguments) satisfies
/// `pred`.
pub fn scan(pred: impl Fn(&[&[u8]]) -> bool) -> Vec<Proc> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if pred(&args) {
            if let Some(p) = Proc::of(pid) {
                found.push(p);
            }
        }
    }
    found
}

/// The direct children of `p` (from `/proc/PID/task/PID/children`).
pub fn children(p: Proc) -> Vec<Proc> {
    std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", p.pid))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .filter_map(Proc::of)
        .collect()
}

/// SIGKILL to `p` if it (this very process) is still alive.
pub fn sigkill(p: Proc) {
    if p.alive() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Kills until nothing is left, bounded by `timeout`. Each round `round(elapsed)` lists the
/// processes still to be gone, each with whether to SIGKILL it now (a caller may give a
/// process time to exit by itself first); the call returns once a round lists none.
pub fn kill_until_gone(
    what: &str,
    timeout: Duration,
    mut round: impl FnMut(Duration) -> Vec<(Proc, bool)>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let procs: Vec<(Proc, bool)> = round(started.elapsed())
            .into_iter()
            .filter(|(p, _)| p.alive())
            .collect();
        if procs.is_empty() {
            return Ok(());
        }
        procs
            .iter()
            .filter(|(_, now)| *now)
            .for_each(|(p, _)| sigkill(*p));
        if started.elapsed() >= timeout {
            bail!("{what} still running {timeout:?} after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_child_is_found_by_its_command_line_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        // A unique argument (sleep takes fractional seconds): found by it, whatever else runs.
        let marker = format!("30.{}", std::process::id());
        let mut c = Command::new("sleep");
        c.arg(&marker);
        let p = spawn_detached(&mut c, &dir.path().join("log")).unwrap();
        assert!(p.alive());
        let found = scan(|args| args.contains(&marker.as_bytes()));
        assert_eq!(found, vec![p], "found by its argument");
        kill_until_gone("the test sleep", Duration::from_secs(10), |_| {
            vec![(p, true)]
        })
        .unwrap();
        assert!(!p.alive());
    }
}
