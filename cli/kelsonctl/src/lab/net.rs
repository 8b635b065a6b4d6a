//! The lab's network, built only from namespaces the lab creates (the host's own interfaces
//! are never touched, except for one veth and the routes to the zone subnets through it):
//!
//! ```text
//!  host ns                router ns (kl<id>-rtr)            fabric ns (kl<id>-fab)     machine ns (kl<id>-<m>)
//!  kl<id>h 100.64.x.1/30 ── host 100.64.x.2/30
//!                           z0 10.a.1.1/24 ───────────── rz0 ─ br0 ─ m0 ─────────────── eth0 10.a.1.11/24
//!                           z1 10.a.2.1/24 ───────────── rz1 ─ br1 ─ m1 ─────────────── eth0 10.a.2.11/24
//! ```
//!
//! One bridge per zone lives in the fabric namespace, so machines in a zone talk over their
//! zone's L2 segment; traffic between zones, and from the host, is routed by the router
//! namespace (every zone's `.1`). The host reaches the zone /24s through the host↔router /30,
//! taken from 100.64.0.0/10 (shared address space, not used on these hosts) at an offset
//! derived from the lab id, so labs with distinct subnets can run side by side.
//!
//! A VIP outside the zones' /24s gets one more segment (bridge `brv`, router leg `zv` with
//! its /24's `.1`, and an interface of that name in every control-plane machine, without an
//! address until the speaker adds the VIP): a VLAN stretched over the zones, so the VIP is
//! reachable wherever its holder is.
//!
//! Partitions are nftables rules in the router namespace's forward hook that drop traffic
//! between a partitioned zone's /24 and every other zone's (the host keeps reaching every
//! machine, so a test can observe both sides). The whole `inet kelson-lab` table is rewritten
//! from the recorded partition set on each change, so partition/heal are idempotent.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context};

use super::cmd;
use super::spec::Role;
use super::state::{LabState, MachineState, ZoneState};

/// The host↔router /30 for a lab id: (host address, router address).
pub fn transit(id: &str) -> (Ipv4Addr, Ipv4Addr) {
    let h = u32::from_str_radix(id, 16).unwrap_or(0);
    // 100.64.0.0/10 has 2^20 /30 blocks; skip block 0.
    let block = 1 + h % ((1 << 20) - 1);
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + block * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// Fails when the host already uses an address in `net`/`prefix` or routes it (another lab
/// with the same subnets, or a real network).
pub fn check_host_free(net: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    let mask = u32::MAX << (32 - prefix);
    let routes = cmd::run("ip", &["-4", "-o", "route", "show", "table", "all"])?;
    for line in routes.lines() {
        let dst = line.split_whitespace().next().unwrap_or("");
        let dst = dst.strip_prefix("local ").unwrap_or(dst);
        let (a, p) = dst.split_once('/').unwrap_or((dst, "32"));
        let (Ok(a), Ok(p)) = (a.parse::<Ipv4Addr>(), p.parse::<u8>()) else {
            continue;
        };
        if p == 0 {
            continue; // the default route covers everything
        }
        let m2 = u32::MAX << (32 - p.min(32));
        let overlap = (u32::from(a) & mask & m2) == (u32::from(net) & mask & m2);
        if overlap {
            bail!("{net}/{prefix} is already routed on this host ({line}): another lab, or a real network, uses it");
        }
    }
    Ok(())
}

fn ip_n(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    cmd::run("ip", &a)
}

fn add_netns(ns: &str) -> anyhow::Result<()> {
    cmd::run("ip", &["netns", "add", ns])?;
    ip_n(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

fn sysctl(ns: &str, kv: &str) -> anyhow::Result<()> {
    cmd::run("ip", &["netns", "exec", ns, "sysctl", "-qw", kv])?;
    Ok(())
}

/// Creates the fabric and router namespaces, the host link and one bridge + router leg per
/// zone. `state` must already record every name (it is saved before this runs).
pub fn create_fabric(state: &LabState) -> anyhow::Result<()> {
    add_netns(&state.fabric_ns)?;
    add_netns(&state.router_ns)?;
    sysctl(&state.router_ns, "net.ipv4.ip_forward=1")?;
    // The host's leg.
    cmd::run(
        "ip",
        &[
            "link",
            "add",
            &state.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "host",
            "netns",
            &state.router_ns,
        ],
    )?;
    let host_cidr = format!("{}/30", state.host_addr);
    let router_cidr = format!("{}/30", state.router_addr);
    cmd::run("ip", &["addr", "add", &host_cidr, "dev", &state.host_veth])?;
    cmd::run("ip", &["link", "set", &state.host_veth, "up"])?;
    ip_n(
        &state.router_ns,
        &["addr", "add", &router_cidr, "dev", "host"],
    )?;
    ip_n(&state.router_ns, &["link", "set", "host", "up"])?;
    for (i, z) in state.zones.iter().enumerate() {
        create_zone(state, i, z)?;
    }
    if let Some((net, _)) = &state.vip {
        // The VIP's segment: a bridge of its own with a router leg, like a zone's.
        let seg = ZoneState {
            name: "vip".into(),
            subnet: *net,
            bridge: "brv".into(),
        };
        create_zone(state, usize::MAX, &seg)?;
    }
    let via = state.router_addr.to_string();
    for net in &state.host_routes {
        let dst = format!("{net}/24");
        cmd::run(
            "ip",
            &["route", "add", &dst, "via", &via, "dev", &state.host_veth],
        )?;
    }
    Ok(())
}

fn create_zone(state: &LabState, i: usize, z: &ZoneState) -> anyhow::Result<()> {
    let fab = &state.fabric_ns;
    ip_n(fab, &["link", "add", &z.bridge, "type", "bridge"])?;
    ip_n(fab, &["link", "set", &z.bridge, "up"])?;
    // usize::MAX: the VIP segment.
    let (leg, port) = if i == usize::MAX {
        ("zv".to_string(), "rzv".to_string())
    } else {
        (format!("z{i}"), format!("rz{i}"))
    };
    ip_n(
        &state.router_ns,
        &[
            "link", "add", &leg, "type", "veth", "peer", "name", &port, "netns", fab,
        ],
    )?;
    ip_n(fab, &["link", "set", &port, "master", &z.bridge, "up"])?;
    let gw = format!("{}/24", super::spec::gateway(z.subnet));
    ip_n(&state.router_ns, &["addr", "add", &gw, "dev", &leg])?;
    ip_n(&state.router_ns, &["link", "set", &leg, "up"])?;
    Ok(())
}

/// Creates machine `index`'s namespace, plugs it into its zone's bridge and addresses it.
pub fn create_machine(state: &LabState, index: usize, m: &MachineState) -> anyhow::Result<()> {
    let zone = state.zone(&m.zone)?;
    add_netns(&m.netns)?;
    let port = format!("m{index}");
    ip_n(
        &m.netns,
        &[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &state.fabric_ns,
        ],
    )?;
    ip_n(
        &state.fabric_ns,
        &["link", "set", &port, "master", &zone.bridge, "up"],
    )?;
    let cidr = format!("{}/24", m.address);
    ip_n(&m.netns, &["addr", "add", &cidr, "dev", "eth0"])?;
    ip_n(&m.netns, &["link", "set", "eth0", "up"])?;
    let gw = super::spec::gateway(zone.subnet).to_string();
    ip_n(&m.netns, &["route", "add", "default", "via", &gw])?;
    if let Some((_, ifname)) = state.vip.as_ref().filter(|_| m.role == Role::ControlPlane) {
        // No address: the speaker adds the VIP when this machine holds it.
        let port = format!("v{index}");
        ip_n(
            &m.netns,
            &[
                "link",
                "add",
                ifname,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &state.fabric_ns,
            ],
        )?;
        ip_n(
            &state.fabric_ns,
            &["link", "set", &port, "master", "brv", "up"],
        )?;
        ip_n(&m.netns, &["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// Plugs (`up`) or unplugs a machine's link (its end of the veth, inside its namespace).
pub fn set_link(state: &LabState, m: &MachineState, up: bool) -> anyhow::Result<()> {
    ip_n(
        &m.netns,
        &["link", "set", "eth0", if up { "up" } else { "down" }],
    )?;
    if let Some((_, ifname)) = state.vip.as_ref().filter(|_| m.role == Role::ControlPlane) {
        // A machine that lost power no longer holds the VIP: its address goes with it.
        if !up {
            ip_n(&m.netns, &["addr", "flush", "dev", ifname])?;
        }
        ip_n(
            &m.netns,
            &["link", "set", ifname, if up { "up" } else { "down" }],
        )?;
    }
    if up {
        // Bringing the link down dropped the default route with it.
        let gw = super::spec::gateway(super::spec::subnet24(m.address)).to_string();
        ip_n(&m.netns, &["route", "replace", "default", "via", &gw])?;
    }
    Ok(())
}

/// The nftables ruleset for the recorded partitions.
pub fn partition_rules(state: &LabState) -> String {
    let mut rules = String::new();
    for p in &state.partitioned {
        let Some(z) = state.zones.iter().find(|z| &z.name == p) else {
            continue;
        };
        let others: Vec<String> = state
            .zones
            .iter()
            .filter(|o| o.name != z.name)
            .map(|o| format!("{}/24", o.subnet))
            .collect();
        if others.is_empty() {
            continue;
        }
        let set = others.join(", ");
        rules.push_str(&format!(
            "    ip saddr {}/24 ip daddr {{ {set} }} counter drop comment \"partition {}\"\n",
            z.subnet, z.name
        ));
        rules.push_str(&format!(
            "    ip saddr {{ {set} }} ip daddr {}/24 counter drop comment \"partition {}\"\n",
            z.subnet, z.name
        ));
    }
    // Declaring the table first makes the delete valid when it does not exist yet.
    format!(
        "table inet kelson-lab\ndelete table inet kelson-lab\ntable inet kelson-lab {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n{rules}  }}\n}}\n"
    )
}

/// Applies the recorded partition set in the router namespace (atomically: one `nft -f`).
pub fn apply_partitions(state: &LabState, dir: &Path) -> anyhow::Result<()> {
    let file = dir.join("partition.nft");
    std::fs::write(&file, partition_rules(state))
        .with_context(|| format!("writing {}", file.display()))?;
    let f = file.to_string_lossy();
    cmd::run("ip", &["netns", "exec", &state.router_ns, "nft", "-f", &f])?;
    Ok(())
}

/// True when a named network namespace exists.
pub fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Removes every network object of the lab (best effort; missing objects are fine).
pub fn destroy(state: &LabState) {
    for m in &state.machines {
        if netns_exists(&m.netns) {
            cmd::best_effort("ip", &["netns", "del", &m.netns]);
        }
    }
    // Deleting a namespace deletes its veths and so their peers (the host's leg with its routes).
    for ns in [&state.router_ns, &state.fabric_ns] {
        if netns_exists(ns) {
            cmd::best_effort("ip", &["netns", "del", ns]);
        }
    }
    if Path::new("/sys/class/net").join(&state.host_veth).exists() {
        cmd::best_effort("ip", &["link", "del", &state.host_veth]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(partitioned: &[&str]) -> LabState {
        let zone = |n: &str, o: u8| ZoneState {
            name: n.into(),
            subnet: Ipv4Addr::new(10, 9, o, 0),
            bridge: format!("br{o}"),
        };
        LabState {
            id: "000001".into(),
            name: "t".into(),
            fabric_ns: "f".into(),
            router_ns: "r".into(),
            host_veth: "h".into(),
            host_addr: Ipv4Addr::new(100, 64, 0, 5),
            router_addr: Ipv4Addr::new(100, 64, 0, 6),
            host_routes: vec![],
            zones: vec![zone("a", 1), zone("b", 2), zone("c", 3)],
            machines: vec![],
            base: "/b".into(),
            vip: None,
            qemu: None,
            vm_image: None,
            ansible: None,
            partitioned: partitioned.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn partition_drops_both_directions_between_zones_only() {
        let r = partition_rules(&lab(&["a"]));
        assert!(
            r.contains("ip saddr 10.9.1.0/24 ip daddr { 10.9.2.0/24, 10.9.3.0/24 } counter drop"),
            "{r}"
        );
        assert!(
            r.contains("ip saddr { 10.9.2.0/24, 10.9.3.0/24 } ip daddr 10.9.1.0/24 counter drop"),
            "{r}"
        );
        // Healed: the table is still replaced (emptied), so heal is idempotent.
        let healed = partition_rules(&lab(&[]));
        assert!(healed.contains("delete table inet kelson-lab"), "{healed}");
        assert!(!healed.contains("drop"), "{healed}");
    }

    #[test]
    fn transit_is_a_30_in_shared_space() {
        let (h, r) = transit("00a1b2");
        assert_eq!(u32::from(r), u32::from(h) + 1);
        assert_eq!(u32::from(h) % 4, 1);
        assert_eq!(h.octets()[0], 100);
        assert!((64..128).contains(&h.octets()[1]));
        assert_ne!(transit("00a1b2"), transit("00a1b3"));
    }
}
