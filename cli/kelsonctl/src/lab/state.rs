//! The lab's record of what it created, `DIR/state.json`.
//!
//! Every object is recorded *before* it is created and the file is rewritten atomically after
//! each step, so `lab down` can remove everything even when `lab up` crashed half-way: teardown
//! walks the record and tolerates objects that never came to exist. Process IDs are recorded
//! with their start time (field 22 of `/proc/PID/stat`), so a recycled PID is never signalled.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::spec::Role;

/// A process the lab started and may signal later.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    /// Start time in clock ticks since boot, from `/proc/PID/stat`.
    pub start: u64,
}

impl Proc {
    /// Identifies a live process, or `None` when it does not exist.
    pub fn of(pid: u32) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // comm may contain spaces: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        // rest starts at field 3 (state); starttime is field 22.
        let start = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some(Proc { pid, start })
    }

    /// True while this very process (not a successor with its PID) is alive and not a zombie.
    pub fn alive(&self) -> bool {
        let Some(now) = Proc::of(self.pid) else {
            return false;
        };
        if now.start != self.start {
            return false;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split_whitespace().next())
            .unwrap_or("Z");
        state != "Z" && state != "X"
    }
}

/// One zone: a bridge in the fabric namespace and a router leg.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneState {
    pub name: String,
    /// The /24 network address.
    pub subnet: Ipv4Addr,
    /// Bridge name inside the fabric namespace.
    pub bridge: String,
}

/// One machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineState {
    pub name: String,
    pub zone: String,
    pub role: Role,
    pub address: Ipv4Addr,
    /// The machine's own network namespace (named, under /run/netns).
    pub netns: String,
    /// Overlay directories: the merged root the machine boots, and its upper/work dirs.
    pub root: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Whether the overlay is (believed to be) mounted.
    pub mounted: bool,
    pub nspawn: Option<Proc>,
    /// The machine's init (nspawn) or its QEMU process (a worker VM).
    pub init: Option<Proc>,
    /// Set for a worker VM: its tap, MAC and disk overlay.
    #[serde(default)]
    pub vm: Option<super::vm::VmState>,
}

impl MachineState {
    pub fn running(&self) -> bool {
        self.init.is_some_and(|p| p.alive())
    }
}

/// Everything the lab created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Short unique id (derived from the lab directory) prefixing global names.
    pub id: String,
    pub name: String,
    pub fabric_ns: String,
    pub router_ns: String,
    /// The host's end of the host↔router link, and both addresses of that /30.
    pub host_veth: String,
    pub host_addr: Ipv4Addr,
    pub router_addr: Ipv4Addr,
    /// Routes added in the host's namespace (zone /24s via the router).
    pub host_routes: Vec<Ipv4Addr>,
    pub zones: Vec<ZoneState>,
    pub machines: Vec<MachineState>,
    /// The shared lower layer of every machine (rootfs + installed Kelson).
    pub base: PathBuf,
    /// The VIP's own segment, if any: (its /24, the machines' interface name on it).
    #[serde(default)]
    pub vip: Option<(Ipv4Addr, String)>,
    /// Zones currently partitioned from the rest.
    #[serde(default)]
    pub partitioned: Vec<String>,
    /// For workers: the QEMU binary and the cached VM image directory `up` used (so `start`
    /// boots a killed worker the same way).
    #[serde(default)]
    pub qemu: Option<PathBuf>,
    #[serde(default)]
    pub vm_image: Option<PathBuf>,
    /// The playbooks' directory when the lab is provisioned with Ansible (`lab ansible` runs
    /// them with the lab's inventory).
    #[serde(default)]
    pub ansible: Option<PathBuf>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

impl LabState {
    pub fn load(dir: &Path) -> anyhow::Result<Option<LabState>> {
        let p = path(dir);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Writes the record atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let p = path(dir);
        let tmp = dir.join(".state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("renaming to {}", p.display()))
    }

    pub fn machine(&self, name: &str) -> anyhow::Result<&MachineState> {
        self.machines
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("no machine {name:?} in this lab"))
    }

    pub fn machine_mut(&mut self, name: &str) -> anyhow::Result<&mut MachineState> {
        self.machines
            .iter_mut()
            .find(|m| m.name == name)
            .with_context(|| format!("no machine {name:?} in this lab"))
    }

    pub fn zone(&self, name: &str) -> anyhow::Result<&ZoneState> {
        self.zones
            .iter()
            .find(|z| z.name == name)
            .with_context(|| format!("no zone {name:?} in this lab"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_identified() {
        let me = Proc::of(std::process::id()).unwrap();
        assert!(me.alive());
        let other = Proc {
            start: me.start + 1,
            ..me
        };
        assert!(!other.alive(), "a different start time is another process");
    }
}
