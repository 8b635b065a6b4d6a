//! Holding and announcing addresses on one L2 interface: the speaker's hands.
//!
//! The announcing node *adds* the address (IPv4 /32, IPv6 /128 `nodad`) to its interface
//! rather than only answering ARP for it: then the kernel answers ARP/NDP by itself and
//! accepts the traffic, so a server (or kelson-proxy's LoadBalancer rules) on the node receives
//! it without further plumbing. Adding and removing uses iproute2 (`ip addr replace/del`),
//! present on every node, instead of a netlink crate (rtnetlink would pull a second async
//! netlink stack in for two idempotent calls).
//!
//! After taking an address over, the speaker sends gratuitous ARP (an ARP request and an ARP
//! reply with sender = target = the address, to broadcast) for IPv4, and an unsolicited
//! Neighbor Advertisement with the Override flag to all-nodes (ff02::1) for IPv6: neighbours
//! that cached the previous holder's MAC switch at once instead of after their cache expires.
//! Frames go out of a raw AF_PACKET socket through `pnet_datalink`, chosen over raw libc/nix
//! because it wraps `sockaddr_ll` binding safely (the workspace denies `unsafe`), and over full
//! `pnet` because the two fixed frame layouts are simpler to write (and test) than to pull the
//! packet-builder macros in for.
//!
//! All of it runs on one dedicated OS thread. With `netns` set the thread first enters that
//! network namespace (`setns`, per thread), so the interface, the `ip` children it spawns and
//! its packet sockets all live there while the rest of the daemon (its API connection) stays in
//! the original namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::mpsc;

use nix::sched::CloneFlags;
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("entering network namespace {name}: {source}")]
    Netns {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {0:?} not found")]
    NoInterface(String),
    #[error("interface {0:?} has no MAC address")]
    NoMac(String),
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("running ip: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("raw socket on {iface}: {source}")]
    Socket {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the announcer thread is gone")]
    Gone,
}

type Reply<T> = oneshot::Sender<Result<T, AnnounceError>>;

enum Cmd {
    Add(IpAddr, Reply<()>),
    Del(IpAddr, Reply<()>),
    Announce(IpAddr, Reply<()>),
}

/// Handle to the announcer thread; dropping every handle ends the thread.
#[derive(Clone)]
pub struct Announcer {
    tx: mpsc::Sender<Cmd>,
    iface: String,
    mac: [u8; 6],
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("iface", &self.iface)
            .field("mac", &format_mac(&self.mac))
            .finish()
    }
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Announcer {
    /// Starts the thread (entering `netns` if given) and checks that `iface` exists there.
    pub fn start(netns: Option<&str>, iface: &str) -> Result<Announcer, AnnounceError> {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<[u8; 6], AnnounceError>>();
        let netns = netns.map(str::to_string);
        let iface_t = iface.to_string();
        std::thread::Builder::new()
            .name("announcer".into())
            .spawn(move || {
                if let Some(name) = &netns {
                    let entered = File::open(format!("/run/netns/{name}"))
                        .and_then(|f| {
                            nix::sched::setns(f, CloneFlags::CLONE_NEWNET)
                                .map_err(std::io::Error::from)
                        })
                        .map_err(|source| AnnounceError::Netns {
                            name: name.clone(),
                            source,
                        });
                    if let Err(e) = entered {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                let mac = match find_interface(&iface_t) {
                    Ok(i) => match i.mac {
                        Some(m) => m.octets(),
                        None => {
                            let _ = ready_tx.send(Err(AnnounceError::NoMac(iface_t)));
                            return;
                        }
                    },
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(mac));
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Cmd::Add(ip, r) => {
                            let _ = r.send(ip_addr("replace", ip, &iface_t));
                        }
                        Cmd::Del(ip, r) => {
                            let _ = r.send(ip_addr("del", ip, &iface_t));
                        }
                        Cmd::Announce(ip, r) => {
                            let _ = r.send(send_announcement(&iface_t, mac, ip));
                        }
                    }
                }
            })
            .map_err(AnnounceError::Spawn)?;
        let mac = ready_rx.recv().map_err(|_| AnnounceError::Gone)??;
        Ok(Announcer {
            tx,
            iface: iface.to_string(),
            mac,
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn interface(&self) -> &str {
        &self.iface
    }

    async fn call(&self, f: impl FnOnce(Reply<()>) -> Cmd) -> Result<(), AnnounceError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).map_err(|_| AnnounceError::Gone)?;
        rx.await.map_err(|_| AnnounceError::Gone)?
    }

    /// Adds the address to the interface (idempotent).
    pub async fn add(&self, ip: IpAddr) -> Result<(), AnnounceError> {
        self.call(|r| Cmd::Add(ip, r)).await
    }

    /// Removes the address (idempotent: absent is fine).
    pub async fn del(&self, ip: IpAddr) -> Result<(), AnnounceError> {
        self.call(|r| Cmd::Del(ip, r)).await
    }

    /// Sends gratuitous ARP (IPv4) or an unsolicited NA (IPv6) for the address.
    pub async fn announce(&self, ip: IpAddr) -> Result<(), AnnounceError> {
        self.call(|r| Cmd::Announce(ip, r)).await
    }
}

fn find_interface(name: &str) -> Result<pnet_datalink::NetworkInterface, AnnounceError> {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| AnnounceError::NoInterface(name.to_string()))
}

fn ip_addr(op: &str, ip: IpAddr, iface: &str) -> Result<(), AnnounceError> {
    let prefix = match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    };
    let mut args = vec![op.to_string(), prefix, "dev".into(), iface.to_string()];
    if ip.is_ipv6() && op != "del" {
        // No duplicate address detection: the address is expected to move between nodes, and
        // DAD would keep it "tentative" (unusable) for a second after every move.
        args.push("nodad".into());
    }
    let out = Command::new("ip")
        .arg("addr")
        .args(&args)
        .output()
        .map_err(AnnounceError::Spawn)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    // Deleting an address that is not there is the desired end state.
    // (iproute2 says "Cannot assign requested address" or "ipv4/ipv6: Address not found".)
    let lower = stderr.to_ascii_lowercase();
    if op == "del"
        && (lower.contains("cannot assign requested address")
            || lower.contains("address not found"))
    {
        return Ok(());
    }
    Err(AnnounceError::Ip {
        args: format!("addr {}", args.join(" ")),
        stderr,
    })
}

fn send_announcement(iface: &str, mac: [u8; 6], ip: IpAddr) -> Result<(), AnnounceError> {
    let ni = find_interface(iface)?;
    let sock_err = |source| AnnounceError::Socket {
        iface: iface.to_string(),
        source,
    };
    let cfg = pnet_datalink::Config {
        read_timeout: Some(std::time::Duration::from_millis(1)),
        ..Default::default()
    };
    let mut tx = match pnet_datalink::channel(&ni, cfg).map_err(sock_err)? {
        pnet_datalink::Channel::Ethernet(tx, _rx) => tx,
        _ => return Err(sock_err(std::io::Error::other("not an Ethernet channel"))),
    };
    let frames = match ip {
        IpAddr::V4(v4) => vec![garp_frame(mac, v4, 1), garp_frame(mac, v4, 2)],
        IpAddr::V6(v6) => vec![unsolicited_na_frame(mac, v6)],
    };
    for f in frames {
        tx.send_to(&f, None)
            .unwrap_or_else(|| Err(std::io::Error::other("send_to returned nothing")))
            .map_err(sock_err)?;
    }
    Ok(())
}

/// A gratuitous ARP frame: `op` 1 = request (target MAC zero), 2 = reply (target MAC
/// broadcast); sender and target protocol address are both `ip`, sent to broadcast.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr, op: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(if op == 1 { &[0; 6] } else { &[0xff; 6] });
    f.extend_from_slice(&ip.octets());
    f
}

/// An unsolicited Neighbor Advertisement (RFC 4861 §7.2.6): Override set, Solicited clear,
/// target = `ip` with its link-layer address option, from `ip` to all-nodes, hop limit 255.
pub fn unsolicited_na_frame(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let dst: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]); // type NA, code 0, checksum placeholder
    icmp.extend_from_slice(&0x2000_0000u32.to_be_bytes()); // flags: Override
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]); // option: target link-layer address, 8 octets
    icmp.extend_from_slice(&mac);
    let csum = icmpv6_checksum(&ip, &dst, &icmp);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class / flow label
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]); // next header ICMPv6, hop limit 255 (NDP requires it)
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The Internet checksum over the IPv6 pseudo-header and the ICMPv6 message.
fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u32::from(w);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

    #[test]
    fn garp_layout() {
        let f = garp_frame(MAC, Ipv4Addr::new(10, 0, 0, 5), 1);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &MAC);
        assert_eq!(&f[28..32], &[10, 0, 0, 5]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 0, 0, 5]);
        let r = garp_frame(MAC, Ipv4Addr::new(10, 0, 0, 5), 2);
        assert_eq!(&r[20..22], &[0, 2]);
        assert_eq!(&r[32..38], &[0xff; 6]);
    }

    #[test]
    fn na_layout_and_checksum() {
        let ip: Ipv6Addr = "fd00::5".parse().unwrap();
        let f = unsolicited_na_frame(MAC, ip);
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[20], 58);
        assert_eq!(f[21], 255);
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0x20, "Override only");
        assert_eq!(&icmp[8..24], &ip.octets());
        assert_eq!(&icmp[26..32], &MAC);
        // A correct checksum makes the sum over pseudo-header + message come out as zero.
        let dst: Ipv6Addr = "ff02::1".parse().unwrap();
        let mut zeroed = icmp.to_vec();
        let got = u16::from_be_bytes([icmp[2], icmp[3]]);
        zeroed[2] = 0;
        zeroed[3] = 0;
        assert_eq!(icmpv6_checksum(&ip, &dst, &zeroed), got);
        assert_eq!(icmpv6_checksum(&ip, &dst, icmp), 0);
    }

    #[test]
    fn mac_format() {
        assert_eq!(format_mac(&MAC), "02:00:00:00:00:0a");
    }
}
