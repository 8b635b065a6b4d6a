//! LoadBalancer address pools and the allocator over them.
//!
//! A pool is a list of inclusive address intervals (from a CIDR and/or `first-last` ranges),
//! kept as `u128` so IPv4 and IPv6 share one code path. For an IPv4 CIDR shorter than /31 the
//! network and broadcast addresses are left out: some routers drop traffic to them, which is
//! MetalLB's "buggy IPs" problem, and on a LAN they are never what an operator means.
//!
//! The allocator is pure bookkeeping (address → owning service key); the service controller
//! rebuilds it from the Services' `status.loadBalancer.ingress` whenever it becomes leader, so
//! the authoritative record lives in the API, not in this process. Allocation takes the lowest
//! free address so results are predictable for operators and tests.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::config::PoolConfig;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("pool {pool:?}: invalid CIDR {value:?}: {reason}")]
    Cidr {
        pool: String,
        value: String,
        reason: String,
    },
    #[error("pool {pool:?}: invalid range {value:?} (expected first-last of one address family, first <= last)")]
    Range { pool: String, value: String },
    #[error("pool {0:?} has no addresses (set cidr or ranges)")]
    Empty(String),
}

/// Why an address could not be given to a service. The messages end up in Events.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("requested IP {ip} is already in use by service {owner}")]
    InUse { ip: IpAddr, owner: String },
    #[error("requested IP {0} is not in any configured address pool")]
    OutsidePools(IpAddr),
    #[error("requested IP {ip} is not in address pool {pool:?}")]
    OutsidePool { ip: IpAddr, pool: String },
    #[error("no address pool named {0:?}")]
    UnknownPool(String),
    #[error("no available {family} addresses in pool(s) {pools}")]
    Exhausted { family: &'static str, pools: String },
    #[error("{0:?} is not an IP address")]
    BadAddress(String),
}

fn to_u128(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u32::from(a) as u128, false),
        IpAddr::V6(a) => (u128::from(a), true),
    }
}

fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

/// One configured pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub zone: Option<String>,
    /// Inclusive intervals: (first, last, is_ipv6).
    blocks: Vec<(u128, u128, bool)>,
}

impl Pool {
    pub fn from_config(c: &PoolConfig) -> Result<Pool, PoolError> {
        let mut blocks = Vec::new();
        if let Some(cidr) = &c.cidr {
            let net: IpNetwork = cidr.trim().parse().map_err(|e| PoolError::Cidr {
                pool: c.name.clone(),
                value: cidr.clone(),
                reason: format!("{e}"),
            })?;
            if net.ip() != net.network() {
                return Err(PoolError::Cidr {
                    pool: c.name.clone(),
                    value: cidr.clone(),
                    reason: format!(
                        "host bits set (did you mean {}/{}?)",
                        net.network(),
                        net.prefix()
                    ),
                });
            }
            let (first, v6) = to_u128(net.network());
            let bits = if v6 { 128 } else { 32 };
            let host_bits = bits - u32::from(net.prefix());
            let last = if host_bits >= 128 {
                u128::MAX
            } else {
                first | ((1u128 << host_bits) - 1)
            };
            let (first, last) = if !v6 && host_bits >= 2 {
                (first + 1, last - 1)
            } else {
                (first, last)
            };
            blocks.push((first, last, v6));
        }
        for r in &c.ranges {
            let bad = || PoolError::Range {
                pool: c.name.clone(),
                value: r.clone(),
            };
            let (a, b) = r.split_once('-').ok_or_else(bad)?;
            let a: IpAddr = a.trim().parse().map_err(|_| bad())?;
            let b: IpAddr = b.trim().parse().map_err(|_| bad())?;
            let ((a, av6), (b, bv6)) = (to_u128(a), to_u128(b));
            if av6 != bv6 || a > b {
                return Err(bad());
            }
            blocks.push((a, b, av6));
        }
        if blocks.is_empty() {
            return Err(PoolError::Empty(c.name.clone()));
        }
        Ok(Pool {
            name: c.name.clone(),
            zone: c.zone.clone(),
            blocks,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v, v6) = to_u128(ip);
        self.blocks
            .iter()
            .any(|&(a, b, f)| f == v6 && a <= v && v <= b)
    }

    pub fn overlaps(&self, other: &Pool) -> bool {
        self.blocks.iter().any(|&(a, b, f)| {
            other
                .blocks
                .iter()
                .any(|&(c, d, g)| f == g && a <= d && c <= b)
        })
    }

    /// Number of addresses (saturating: a /64 does not fit anything useful anyway).
    pub fn size(&self) -> u64 {
        self.blocks
            .iter()
            .map(|&(a, b, _)| u64::try_from(b - a).unwrap_or(u64::MAX).saturating_add(1))
            .fold(0u64, |s, n| s.saturating_add(n))
    }

    pub fn has_family(&self, v6: bool) -> bool {
        self.blocks.iter().any(|&(_, _, f)| f == v6)
    }

    /// The lowest address of family `v6` for which `taken` is false, scanning at most `limit`
    /// addresses so a huge IPv6 pool that is somehow full cannot stall the controller.
    fn first_free(&self, v6: bool, taken: impl Fn(IpAddr) -> bool, limit: u64) -> Option<IpAddr> {
        let mut scanned = 0u64;
        for &(a, b, f) in &self.blocks {
            if f != v6 {
                continue;
            }
            let mut v = a;
            loop {
                let ip = from_u128(v, v6);
                if !taken(ip) {
                    return Some(ip);
                }
                scanned += 1;
                if v == b || scanned >= limit {
                    break;
                }
                v += 1;
            }
            if scanned >= limit {
                return None;
            }
        }
        None
    }
}

/// Address → owner bookkeeping over a fixed set of pools.
#[derive(Debug, Clone, Default)]
pub struct Allocator {
    pools: Vec<Pool>,
    owners: BTreeMap<IpAddr, String>,
}

impl Allocator {
    pub fn new(pools: Vec<Pool>) -> Allocator {
        Allocator {
            pools,
            owners: BTreeMap::new(),
        }
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    pub fn clear(&mut self) {
        self.owners.clear();
    }

    pub fn pool_of(&self, ip: IpAddr) -> Option<&Pool> {
        self.pools.iter().find(|p| p.contains(ip))
    }

    pub fn owner(&self, ip: IpAddr) -> Option<&str> {
        self.owners.get(&ip).map(String::as_str)
    }

    pub fn owned_by(&self, owner: &str) -> Vec<IpAddr> {
        self.owners
            .iter()
            .filter(|(_, o)| o.as_str() == owner)
            .map(|(ip, _)| *ip)
            .collect()
    }

    pub fn all(&self) -> &BTreeMap<IpAddr, String> {
        &self.owners
    }

    /// Gives `ip` to `owner` if it lies in `pool` (or any pool) and is free or already theirs.
    pub fn assign(
        &mut self,
        owner: &str,
        ip: IpAddr,
        pool: Option<&str>,
    ) -> Result<(), AllocError> {
        match pool {
            Some(name) => {
                let p = self
                    .pools
                    .iter()
                    .find(|p| p.name == name)
                    .ok_or_else(|| AllocError::UnknownPool(name.to_string()))?;
                if !p.contains(ip) {
                    return Err(AllocError::OutsidePool {
                        ip,
                        pool: name.to_string(),
                    });
                }
            }
            None => {
                if self.pool_of(ip).is_none() {
                    return Err(AllocError::OutsidePools(ip));
                }
            }
        }
        match self.owners.get(&ip) {
            Some(o) if o != owner => Err(AllocError::InUse {
                ip,
                owner: o.clone(),
            }),
            _ => {
                self.owners.insert(ip, owner.to_string());
                Ok(())
            }
        }
    }

    /// Allocates the lowest free address of the family from `pool`, or from the first pool (in
    /// configuration order) that has one.
    pub fn allocate(
        &mut self,
        owner: &str,
        pool: Option<&str>,
        v6: bool,
    ) -> Result<IpAddr, AllocError> {
        let candidates: Vec<&Pool> = match pool {
            Some(name) => vec![self
                .pools
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| AllocError::UnknownPool(name.to_string()))?],
            None => self.pools.iter().filter(|p| p.has_family(v6)).collect(),
        };
        let found = candidates
            .iter()
            .find_map(|p| p.first_free(v6, |ip| self.owners.contains_key(&ip), 1 << 20));
        match found {
            Some(ip) => {
                self.owners.insert(ip, owner.to_string());
                Ok(ip)
            }
            None => Err(AllocError::Exhausted {
                family: if v6 { "IPv6" } else { "IPv4" },
                pools: candidates
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            }),
        }
    }

    /// Frees everything `owner` holds; returns what was freed.
    pub fn release(&mut self, owner: &str) -> Vec<IpAddr> {
        let ips = self.owned_by(owner);
        for ip in &ips {
            self.owners.remove(ip);
        }
        ips
    }

    /// (pool name, addresses in use, pool size) per pool.
    pub fn usage(&self) -> Vec<(String, u64, u64)> {
        self.pools
            .iter()
            .map(|p| {
                let used = self.owners.keys().filter(|ip| p.contains(**ip)).count() as u64;
                (p.name.clone(), used, p.size())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, cidr: Option<&str>, ranges: &[&str]) -> Pool {
        Pool::from_config(&PoolConfig {
            name: name.into(),
            cidr: cidr.map(Into::into),
            ranges: ranges.iter().map(|s| s.to_string()).collect(),
            zone: None,
        })
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_skips_network_and_broadcast() {
        let p = pool("a", Some("10.0.0.0/30"), &[]);
        assert_eq!(p.size(), 2);
        assert!(!p.contains(ip("10.0.0.0")));
        assert!(p.contains(ip("10.0.0.1")) && p.contains(ip("10.0.0.2")));
        assert!(!p.contains(ip("10.0.0.3")));
        assert_eq!(pool("b", Some("10.0.0.8/32"), &[]).size(), 1);
        assert_eq!(pool("c", Some("fd00::/120"), &[]).size(), 256);
    }

    #[test]
    fn bad_pools() {
        let mk = |cidr: Option<&str>, ranges: &[&str]| {
            Pool::from_config(&PoolConfig {
                name: "x".into(),
                cidr: cidr.map(Into::into),
                ranges: ranges.iter().map(|s| s.to_string()).collect(),
                zone: None,
            })
        };
        assert!(matches!(
            mk(Some("10.0.0.1/24"), &[]),
            Err(PoolError::Cidr { .. })
        ));
        assert!(matches!(
            mk(Some("nonsense"), &[]),
            Err(PoolError::Cidr { .. })
        ));
        assert!(matches!(
            mk(None, &["10.0.0.9-10.0.0.1"]),
            Err(PoolError::Range { .. })
        ));
        assert!(matches!(
            mk(None, &["10.0.0.1-fd00::1"]),
            Err(PoolError::Range { .. })
        ));
        assert!(matches!(mk(None, &[]), Err(PoolError::Empty(_))));
    }

    #[test]
    fn allocate_assign_release_and_exhaust() {
        let mut a = Allocator::new(vec![
            pool("first", None, &["10.1.0.10-10.1.0.11"]),
            pool("second", Some("10.2.0.0/30"), &[]),
            pool("six", Some("fd00::/126"), &[]),
        ]);
        assert_eq!(a.allocate("ns/a", None, false).unwrap(), ip("10.1.0.10"));
        assert_eq!(a.allocate("ns/b", None, false).unwrap(), ip("10.1.0.11"));
        // First pool full: the next one in configuration order.
        assert_eq!(a.allocate("ns/c", None, false).unwrap(), ip("10.2.0.1"));
        assert_eq!(a.allocate("ns/d", Some("six"), true).unwrap(), ip("fd00::"));
        assert_eq!(
            a.assign("ns/e", ip("10.1.0.10"), None),
            Err(AllocError::InUse {
                ip: ip("10.1.0.10"),
                owner: "ns/a".into()
            })
        );
        assert_eq!(
            a.assign("ns/e", ip("192.168.1.1"), None),
            Err(AllocError::OutsidePools(ip("192.168.1.1")))
        );
        assert!(matches!(
            a.assign("ns/e", ip("10.2.0.2"), Some("first")),
            Err(AllocError::OutsidePool { .. })
        ));
        assert!(matches!(
            a.allocate("ns/e", Some("nope"), false),
            Err(AllocError::UnknownPool(_))
        ));
        a.assign("ns/e", ip("10.2.0.2"), Some("second")).unwrap();
        // Idempotent for the same owner.
        a.assign("ns/e", ip("10.2.0.2"), None).unwrap();
        let err = a.allocate("ns/f", None, false).unwrap_err();
        assert!(err.to_string().contains("no available IPv4"), "{err}");
        assert_eq!(a.release("ns/a"), vec![ip("10.1.0.10")]);
        assert_eq!(a.allocate("ns/f", None, false).unwrap(), ip("10.1.0.10"));
        let usage = a.usage();
        assert_eq!(usage[0], ("first".into(), 2, 2));
        assert_eq!(usage[1], ("second".into(), 2, 2));
        assert_eq!(usage[2], ("six".into(), 1, 4));
    }
}
