//! The userspace proxy: the fallback where nftables is unusable (or `mode = "userspace"`).
//!
//! As upstream's old userspace mode, but in tokio: every ClusterIP (and externalIP /
//! LoadBalancer IP) is added to a dummy interface (`kelson-proxy0`; `lo` where the kernel has
//! no dummy driver) so the node accepts
//! packets for it, and one listener per `ip:port/proto` (plus `node-ip:nodePort`) forwards
//! each TCP connection, or each UDP client "session", to an endpoint chosen round robin over
//! the usable endpoints (with a per-client pin for sessionAffinity ClientIP). A connect
//! failure tries the next endpoint, so a just-died backend costs a retry, not an error.
//!
//! A service port without usable endpoints has no listener: its address is still local, so a
//! TCP client gets a RST (connection refused) at once, as with the nftables reject.
//!
//! Limits (inherent to proxying in user space, as upstream documented): the endpoint sees the
//! node as the client (externalTrafficPolicy Local cannot preserve the source address), and
//! throughput costs two socket copies per byte.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::model::{Protocol, State};

/// Errors of the userspace mode.
#[derive(Debug, thiserror::Error)]
pub enum UserspaceError {
    #[error("`ip {args}` failed: {msg}")]
    Ip { args: String, msg: String },
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const UDP_IDLE: Duration = Duration::from_secs(60);

/// Backends of one listener, swapped in place when endpoints change.
#[derive(Debug, Default)]
struct Backends {
    eps: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
    affinity: Mutex<Option<Duration>>,
    pinned: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
}

impl Backends {
    /// The endpoint for a new connection from `client`; `attempt` > 0 skips further on.
    fn pick(&self, client: IpAddr, attempt: usize) -> Option<SocketAddr> {
        let eps = self.eps.lock();
        if eps.is_empty() {
            return None;
        }
        let timeout = *self.affinity.lock();
        if let (Some(t), 0) = (timeout, attempt) {
            let mut pinned = self.pinned.lock();
            if let Some((ep, at)) = pinned.get(&client).copied() {
                if at.elapsed() < t && eps.contains(&ep) {
                    pinned.insert(client, (ep, Instant::now()));
                    return Some(ep);
                }
            }
        }
        let ep = eps[self.next.fetch_add(1, Ordering::Relaxed) % eps.len()];
        if timeout.is_some() {
            self.pinned.lock().insert(client, (ep, Instant::now()));
        }
        Some(ep)
    }
}

struct Listener {
    backends: Arc<Backends>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One desired listener.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    addr: SocketAddr,
    protocol: Protocol,
}

/// The userspace proxier.
pub struct Userspace {
    iface: String,
    nodeport_cidrs: Vec<String>,
    listeners: HashMap<Key, Listener>,
    /// Addresses we put on the dummy interface.
    addrs: BTreeSet<IpAddr>,
}

impl std::fmt::Debug for Userspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Userspace")
            .field("iface", &self.iface)
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

async fn ip(args: &[&str]) -> Result<String, UserspaceError> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| UserspaceError::Ip {
            args: args.join(" "),
            msg: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(UserspaceError::Ip {
            args: args.join(" "),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Local addresses from `ip -j addr` (for NodePorts restricted to CIDRs).
async fn local_addresses() -> Result<Vec<IpAddr>, UserspaceError> {
    let text = ip(&["-j", "addr", "show"]).await?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| UserspaceError::Ip {
        args: "-j addr show".into(),
        msg: e.to_string(),
    })?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .collect())
}

/// Whether `ip` is inside `cidr` (`addr/len`).
pub fn cidr_contains(cidr: &str, ip: &IpAddr) -> bool {
    let Ok((net, len)) = crate::config::check_cidr(cidr) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(*a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(*a) & mask
        }
        _ => false,
    }
}

impl Userspace {
    /// Creates the dummy interface (if missing) and brings it up. Kernels without the dummy
    /// driver get the addresses on `lo` instead (equally local; removed one by one on exit).
    pub async fn new(iface: &str, nodeport_cidrs: &[String]) -> Result<Userspace, UserspaceError> {
        let mut iface = iface.to_string();
        match ip(&["link", "add", &iface, "type", "dummy"]).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("File exists") => {}
            Err(e) if e.to_string().contains("Unknown device type") => {
                tracing::warn!("no dummy interface driver in this kernel; ClusterIPs go on lo");
                iface = "lo".into();
            }
            Err(e) => return Err(e),
        }
        ip(&["link", "set", &iface, "up"]).await?;
        if iface != "lo" {
            // Start from a clean interface: addresses of a previous run are re-added on sync.
            ip(&["addr", "flush", "dev", &iface]).await?;
        }
        Ok(Userspace {
            iface,
            nodeport_cidrs: nodeport_cidrs.to_vec(),
            listeners: HashMap::new(),
            addrs: BTreeSet::new(),
        })
    }

    /// Number of listeners (the userspace mode's "rules").
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// Makes listeners and interface addresses match `state`.
    pub async fn sync(&mut self, state: &State) -> Result<(), UserspaceError> {
        let mut want_addrs = BTreeSet::new();
        let mut want: BTreeMap<Key, (Vec<SocketAddr>, Option<Duration>)> = BTreeMap::new();
        let node_ips = if self.nodeport_cidrs.is_empty() {
            None
        } else {
            Some(
                local_addresses()
                    .await?
                    .into_iter()
                    .filter(|a| self.nodeport_cidrs.iter().any(|c| cidr_contains(c, a)))
                    .collect::<Vec<_>>(),
            )
        };
        for (spn, info) in state {
            let affinity = info.affinity_timeout.map(|t| Duration::from_secs(t.into()));
            let to_addrs = |eps: Vec<&crate::model::Endpoint>| -> Vec<SocketAddr> {
                eps.iter().map(|e| SocketAddr::new(e.ip, e.port)).collect()
            };
            let internal = to_addrs(info.internal_endpoints());
            let external = to_addrs(info.external_endpoints());
            for ip in &info.cluster_ips {
                want_addrs.insert(*ip);
                if !internal.is_empty() {
                    want.insert(
                        Key {
                            addr: SocketAddr::new(*ip, info.port),
                            protocol: spn.protocol,
                        },
                        (internal.clone(), affinity),
                    );
                }
            }
            for ip in info.external_ips.iter().chain(&info.load_balancer_ips) {
                want_addrs.insert(*ip);
                if !external.is_empty() {
                    want.insert(
                        Key {
                            addr: SocketAddr::new(*ip, info.port),
                            protocol: spn.protocol,
                        },
                        (external.clone(), affinity),
                    );
                }
            }
            if let (Some(np), false) = (info.node_port, external.is_empty()) {
                let ips: Vec<IpAddr> = match &node_ips {
                    Some(v) => v.clone(),
                    None if info.cluster_ips.iter().any(|i| i.is_ipv6()) => {
                        vec![Ipv6Addr::UNSPECIFIED.into()]
                    }
                    None => vec![Ipv4Addr::UNSPECIFIED.into()],
                };
                for ip in ips {
                    want.insert(
                        Key {
                            addr: SocketAddr::new(ip, np),
                            protocol: spn.protocol,
                        },
                        (external.clone(), affinity),
                    );
                }
            }
        }
        // Addresses first: a listener can only bind a local address.
        for a in want_addrs.difference(&self.addrs.clone()) {
            let cidr = format!("{a}/{}", if a.is_ipv4() { 32 } else { 128 });
            let mut args = vec!["addr", "add", cidr.as_str(), "dev", self.iface.as_str()];
            if a.is_ipv6() {
                args.push("nodad");
            }
            match ip(&args).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("File exists") => {}
                Err(e) => return Err(e),
            }
            self.addrs.insert(*a);
        }
        self.listeners.retain(|k, _| want.contains_key(k));
        for (key, (eps, affinity)) in want {
            if let Some(l) = self.listeners.get(&key) {
                *l.backends.eps.lock() = eps;
                *l.backends.affinity.lock() = affinity;
                continue;
            }
            let backends = Arc::new(Backends {
                eps: Mutex::new(eps),
                affinity: Mutex::new(affinity),
                ..Default::default()
            });
            let task = match key.protocol {
                Protocol::Tcp => match TcpListener::bind(key.addr).await {
                    Ok(l) => tokio::spawn(serve_tcp(l, backends.clone())),
                    Err(e) => {
                        tracing::warn!(addr = %key.addr, error = %e, "cannot listen");
                        continue;
                    }
                },
                Protocol::Udp => match UdpSocket::bind(key.addr).await {
                    Ok(s) => tokio::spawn(serve_udp(Arc::new(s), backends.clone())),
                    Err(e) => {
                        tracing::warn!(addr = %key.addr, error = %e, "cannot listen");
                        continue;
                    }
                },
                Protocol::Sctp => {
                    tracing::debug!(addr = %key.addr, "SCTP is not proxied in userspace mode");
                    continue;
                }
            };
            tracing::debug!(addr = %key.addr, proto = ?key.protocol, "listening");
            self.listeners.insert(key, Listener { backends, task });
        }
        for a in self
            .addrs
            .difference(&want_addrs)
            .copied()
            .collect::<Vec<_>>()
        {
            let cidr = format!("{a}/{}", if a.is_ipv4() { 32 } else { 128 });
            let _ = ip(&["addr", "del", &cidr, "dev", &self.iface]).await;
            self.addrs.remove(&a);
        }
        Ok(())
    }

    /// Stops every listener and removes our addresses (and the dummy interface).
    pub async fn shutdown(mut self) {
        self.listeners.clear();
        if self.iface == "lo" {
            for a in std::mem::take(&mut self.addrs) {
                let cidr = format!("{a}/{}", if a.is_ipv4() { 32 } else { 128 });
                let _ = ip(&["addr", "del", &cidr, "dev", "lo"]).await;
            }
        } else {
            let _ = ip(&["link", "del", &self.iface]).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, backends: Arc<Backends>) {
    loop {
        let (mut down, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let b = backends.clone();
        tokio::spawn(async move {
            let tries = b.eps.lock().len().max(1);
            for attempt in 0..tries {
                let Some(ep) = b.pick(peer.ip(), attempt) else {
                    return;
                };
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ep)).await {
                    Ok(Ok(mut up)) => {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        return;
                    }
                    Ok(Err(e)) => tracing::debug!(%ep, error = %e, "endpoint refused; next"),
                    Err(_) => tracing::debug!(%ep, "endpoint connect timed out; next"),
                }
            }
        });
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, backends: Arc<Backends>) {
    let sessions: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Default::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let existing = sessions.lock().get(&client).cloned();
        let up = match existing {
            Some(u) => u,
            None => {
                let Some(ep) = backends.pick(client.ip(), 0) else {
                    continue;
                };
                let local: SocketAddr = if ep.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let Ok(u) = UdpSocket::bind(local).await else {
                    continue;
                };
                if u.connect(ep).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                sessions.lock().insert(client, u.clone());
                let (down, up2, sessions2) = (sock.clone(), u.clone(), sessions.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, up2.recv(&mut buf)).await {
                        let _ = down.send_to(&buf[..n], client).await;
                    }
                    sessions2.lock().remove(&client);
                });
                u
            }
        };
        let _ = up.send(&buf[..n]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert!(cidr_contains("10.0.0.0/8", &"10.1.2.3".parse().unwrap()));
        assert!(!cidr_contains("10.0.0.0/8", &"11.1.2.3".parse().unwrap()));
        assert!(cidr_contains("0.0.0.0/0", &"11.1.2.3".parse().unwrap()));
        assert!(cidr_contains("fd00::/8", &"fd12::1".parse().unwrap()));
        assert!(!cidr_contains("fd00::/8", &"10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn round_robin_and_affinity() {
        let b = Backends::default();
        let a1: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let a2: SocketAddr = "10.0.0.2:80".parse().unwrap();
        *b.eps.lock() = vec![a1, a2];
        let c: IpAddr = "192.0.2.1".parse().unwrap();
        let picks: Vec<_> = (0..4).map(|_| b.pick(c, 0).unwrap()).collect();
        assert_eq!(picks, vec![a1, a2, a1, a2]);
        *b.affinity.lock() = Some(Duration::from_secs(60));
        let first = b.pick(c, 0).unwrap();
        assert!((0..5).all(|_| b.pick(c, 0) == Some(first)));
        // A retry after a failed connect moves on even with affinity.
        assert_ne!(b.pick(c, 1), None);
    }
}
