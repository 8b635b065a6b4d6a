//! What the lab needs from a cluster description (`cluster.toml`): the machines, their zones
//! and addresses. Everything else in the file (CIDRs, LB pools, labels, ...) belongs to the
//! configuration renderer and is ignored here, so the lab keeps working as that format grows.
//!
//! Addressing rule: every zone is one IPv4 /24 (the subnet of its machines' addresses); its
//! `.1` is the router's leg in that zone and the machines' default gateway. Two zones must not
//! share a /24 and a machine must not take the gateway address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

/// A machine as declared (control plane or worker).
#[derive(Debug, Clone)]
pub struct MachineDecl {
    pub name: String,
    pub zone: String,
    pub address: Ipv4Addr,
}

/// As written: the address may carry a prefix length (`10.0.1.11/24`), which the lab ignores
/// (its zones are /24s).
#[derive(Debug, Deserialize)]
struct RawMachine {
    name: String,
    zone: String,
    address: String,
}

impl RawMachine {
    fn decl(self) -> anyhow::Result<MachineDecl> {
        let a = self.address.split('/').next().unwrap_or_default();
        let address = a.parse().with_context(|| {
            format!(
                "machine {:?}: address {:?} is not an IPv4 address (the lab builds IPv4 zones)",
                self.name, self.address
            )
        })?;
        Ok(MachineDecl {
            name: self.name,
            zone: self.zone,
            address,
        })
    }
}

#[derive(Debug, Deserialize)]
struct File {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, alias = "control-plane", alias = "controlPlane")]
    control_plane: Vec<RawMachine>,
    #[serde(default)]
    workers: Vec<RawMachine>,
    #[serde(default)]
    vip: Option<RawVip>,
}

#[derive(Debug, Deserialize)]
struct RawVip {
    address: String,
    interface: String,
}

/// The control-plane VIP, when it gets its own segment (see [`LabSpec::vip`]).
#[derive(Debug, Clone)]
pub struct VipDecl {
    pub address: Ipv4Addr,
    pub interface: String,
}

/// Role of a lab machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

/// The lab-relevant view of a cluster description.
#[derive(Debug, Clone)]
pub struct LabSpec {
    pub name: String,
    /// Zone name → its /24 (network address).
    pub zones: BTreeMap<String, Ipv4Addr>,
    pub machines: Vec<(MachineDecl, Role)>,
    /// A VIP outside every zone's /24, on an interface other than `eth0`: the lab builds a
    /// segment stretched over all zones for it (every control-plane machine has that interface
    /// on it, the router has the /24's `.1`), so whichever machine holds the VIP is reachable,
    /// like a VLAN spanning the zones. A VIP inside a zone's /24 stays on that zone's segment.
    pub vip: Option<VipDecl>,
}

/// The /24 network address of `a`.
pub fn subnet24(a: Ipv4Addr) -> Ipv4Addr {
    let o = a.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 0)
}

/// The zone router's address in a /24.
pub fn gateway(net: Ipv4Addr) -> Ipv4Addr {
    let o = net.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 1)
}

impl LabSpec {
    pub fn load(path: &Path) -> anyhow::Result<LabSpec> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<LabSpec> {
        let f: File = toml::from_str(text).context("parsing the cluster description")?;
        let mut machines: Vec<(MachineDecl, Role)> = Vec::new();
        for m in f.control_plane {
            machines.push((m.decl()?, Role::ControlPlane));
        }
        for m in f.workers {
            machines.push((m.decl()?, Role::Worker));
        }
        if machines.is_empty() {
            bail!("no machines: declare [[control_plane]] entries");
        }
        let mut zones = BTreeMap::new();
        let mut names = std::collections::BTreeSet::new();
        for (m, _) in &machines {
            // Machine names become netns and host names: keep them short and plain.
            if m.name.is_empty()
                || m.name.len() > 20
                || !m
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                bail!(
                    "machine name {:?}: use 1-20 characters of a-z, 0-9 and -",
                    m.name
                );
            }
            if !names.insert(m.name.clone()) {
                bail!("machine {:?} is declared twice", m.name);
            }
            if m.zone.is_empty() {
                bail!("machine {:?} has an empty zone", m.name);
            }
            let net = subnet24(m.address);
            if m.address == gateway(net)
                || m.address.octets()[3] == 0
                || m.address.octets()[3] == 255
            {
                bail!(
                    "machine {:?}: {} is reserved (the zone's .1 is its router, .0/.255 are not hosts)",
                    m.name,
                    m.address
                );
            }
            match zones.get(&m.zone) {
                Some(n) if *n != net => bail!(
                    "zone {:?}: machine {:?} ({}) is outside the zone's /24 {n}",
                    m.zone,
                    m.name,
                    m.address
                ),
                Some(_) => {}
                None => {
                    if let Some((other, _)) = zones.iter().find(|(_, n)| **n == net) {
                        bail!("zones {other:?} and {:?} share the /24 {net}", m.zone);
                    }
                    zones.insert(m.zone.clone(), net);
                }
            }
        }
        let mut addrs = std::collections::BTreeSet::new();
        for (m, _) in &machines {
            if !addrs.insert(m.address) {
                bail!("address {} is used twice", m.address);
            }
        }
        let vip = match f.vip {
            Some(v) => {
                let address: Ipv4Addr = v
                    .address
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .with_context(|| format!("vip.address {:?} is not IPv4", v.address))?;
                let net = subnet24(address);
                let own_segment = v.interface != "eth0" && !zones.values().any(|z| *z == net);
                if own_segment && address == gateway(net) {
                    bail!("vip.address {address} is the lab router's address in its /24");
                }
                if own_segment && (v.interface.len() > 15 || v.interface.contains('/')) {
                    bail!("vip.interface {:?} is not an interface name", v.interface);
                }
                own_segment.then_some(VipDecl {
                    address,
                    interface: v.interface,
                })
            }
            None => None,
        };
        Ok(LabSpec {
            name: f.name.unwrap_or_else(|| "kelson".into()),
            zones,
            machines,
            vip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_from_addresses() {
        let s = LabSpec::parse(
            r#"
name = "t"
pod_cidr = "10.244.0.0/16"
[[control_plane]]
name = "cp-a"
zone = "a"
address = "10.9.1.11"
[[control_plane]]
name = "cp-b"
zone = "b"
address = "10.9.2.11"
"#,
        )
        .unwrap();
        assert_eq!(s.zones["a"], Ipv4Addr::new(10, 9, 1, 0));
        assert_eq!(s.zones["b"], Ipv4Addr::new(10, 9, 2, 0));
        assert_eq!(s.machines.len(), 2);
    }

    #[test]
    fn rejects_bad_layouts() {
        let m = |name: &str, zone: &str, addr: &str| {
            format!(
                "[[control_plane]]\nname = \"{name}\"\nzone = \"{zone}\"\naddress = \"{addr}\"\n"
            )
        };
        let shared = format!("{}{}", m("x", "a", "10.9.1.11"), m("y", "b", "10.9.1.12"));
        let e = LabSpec::parse(&shared).unwrap_err().to_string();
        assert!(e.contains("share"), "{e}");
        assert!(LabSpec::parse(&m("x", "a", "10.9.1.1")).is_err());
        let outside = format!("{}{}", m("x", "a", "10.9.1.11"), m("y", "a", "10.9.2.12"));
        assert!(LabSpec::parse(&outside).is_err());
        let twice = format!("{}{}", m("x", "a", "10.9.1.11"), m("x", "a", "10.9.1.12"));
        assert!(LabSpec::parse(&twice).is_err());
        assert!(LabSpec::parse("").is_err());
    }
}
