//! ClusterIP and NodePort allocation, shared by every API server through the store.
//!
//! Each allocated IP or port is a marker object (`<root>/kelson/serviceips/<ip>`,
//! `<root>/kelson/nodeports/<port>`) written with kelson-apistorage's create (a create-if-absent
//! transaction), so two API servers racing for the same value cannot both win; the marker
//! (`{"owner": "<ns>/<name>"}`) names the owning service for diagnosis. Free values are found by random probing (bounded), then a bounded linear scan —
//! cheap while the range is sparse, still correct when it is nearly full.

use std::net::Ipv4Addr;

use rand::Rng;

use kelson_apimachinery::{ApiError, StatusCause};
use kelson_apistorage::{Preconditions, Storage, StorageError};

/// An IPv4 CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: u32,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid CIDR {0:?} (want a.b.c.d/n, IPv4)")]
pub struct CidrError(String);

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_string());
        let (ip, len) = s.trim().split_once('/').ok_or_else(err)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
        let prefix: u8 = len.parse().map_err(|_| err())?;
        if !(1..=30).contains(&prefix) {
            return Err(err());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Cidr {
            base: u32::from(ip) & mask,
            prefix,
        })
    }
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == self.base
    }
    /// The n-th address of the block.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + n)
    }
}

/// Allocates service IPs and node ports.
#[derive(Debug, Clone)]
pub struct Allocator {
    pub cidr: Cidr,
    pub ports: (u16, u16),
    root: String,
}

const RANDOM_TRIES: usize = 32;
const SCAN_LIMIT: u32 = 70_000;

impl Allocator {
    pub fn new(cidr: Cidr, ports: (u16, u16), root: &str) -> Self {
        Allocator {
            cidr,
            ports,
            root: root.trim_end_matches('/').to_string(),
        }
    }

    fn ip_key(&self, ip: Ipv4Addr) -> String {
        format!("{}/kelson/serviceips/{ip}", self.root)
    }
    fn port_key(&self, port: u16) -> String {
        format!("{}/kelson/nodeports/{port}", self.root)
    }

    /// The address of the `kubernetes` service: the first usable one.
    pub fn kubernetes_ip(&self) -> Ipv4Addr {
        self.cidr.nth(1)
    }

    /// Claims `want` (validated against the range) or a free address.
    pub async fn allocate_ip(
        &self,
        store: &Storage,
        want: Option<&str>,
        owner: &str,
    ) -> Result<String, ApiError> {
        let internal = |e: StorageError| ApiError::internal(e.to_string());
        if let Some(w) = want {
            let ip: Ipv4Addr = w
                .parse()
                .map_err(|_| invalid_ip(w, "must be a valid IP address"))?;
            if !self.cidr.contains(ip)
                || ip == self.cidr.nth(0)
                || ip == self.cidr.nth(self.cidr.size() - 1)
            {
                return Err(invalid_ip(
                    w,
                    "provided IP is not in the valid range. The range of valid IPs is ",
                )
                .with_range(self));
            }
            if !claim(store, &self.ip_key(ip), owner)
                .await
                .map_err(internal)?
            {
                return Err(invalid_ip(w, "provided IP is already allocated"));
            }
            return Ok(ip.to_string());
        }
        // Usable: 2 .. size-2 (network, the kubernetes service's .1 and broadcast excluded).
        let size = self.cidr.size();
        let usable = size.saturating_sub(3).max(1);
        for _ in 0..RANDOM_TRIES {
            let n = 2 + rand::thread_rng().gen_range(0..usable);
            let ip = self.cidr.nth(n);
            if claim(store, &self.ip_key(ip), owner)
                .await
                .map_err(internal)?
            {
                return Ok(ip.to_string());
            }
        }
        for n in (2..size.saturating_sub(1)).take(SCAN_LIMIT as usize) {
            let ip = self.cidr.nth(n);
            if claim(store, &self.ip_key(ip), owner)
                .await
                .map_err(internal)?
            {
                return Ok(ip.to_string());
            }
        }
        Err(ApiError::internal(
            "failed to allocate a serviceIP: range is full",
        ))
    }

    /// Claims a specific address without validation (the `kubernetes` service at startup).
    pub async fn claim_ip(
        &self,
        store: &Storage,
        ip: Ipv4Addr,
        owner: &str,
    ) -> Result<bool, ApiError> {
        claim(store, &self.ip_key(ip), owner)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    pub async fn release_ip(&self, store: &Storage, ip: &str) {
        if let Ok(ip) = ip.parse::<Ipv4Addr>() {
            if let Err(e) = release(store, &self.ip_key(ip)).await {
                tracing::warn!(%ip, error = %e, "releasing service IP");
            }
        }
    }

    /// Claims `want` (validated against the range) or a free port; `field` names the port in
    /// errors (`spec.ports[0].nodePort`).
    pub async fn allocate_port(
        &self,
        store: &Storage,
        want: Option<i64>,
        owner: &str,
        field: &str,
    ) -> Result<u16, ApiError> {
        let internal = |e: StorageError| ApiError::internal(e.to_string());
        let (lo, hi) = self.ports;
        if let Some(w) = want {
            if w < lo as i64 || w > hi as i64 {
                return Err(ApiError::invalid("", "Service", owner, vec![StatusCause::invalid(field, format!("Invalid value: {w}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"))]));
            }
            let p = w as u16;
            if !claim(store, &self.port_key(p), owner)
                .await
                .map_err(internal)?
            {
                return Err(ApiError::invalid(
                    "",
                    "Service",
                    owner,
                    vec![StatusCause::invalid(
                        field,
                        format!("Invalid value: {w}: provided port is already allocated"),
                    )],
                ));
            }
            return Ok(p);
        }
        for _ in 0..RANDOM_TRIES {
            let p = rand::thread_rng().gen_range(lo..=hi);
            if claim(store, &self.port_key(p), owner)
                .await
                .map_err(internal)?
            {
                return Ok(p);
            }
        }
        for p in lo..=hi {
            if claim(store, &self.port_key(p), owner)
                .await
                .map_err(internal)?
            {
                return Ok(p);
            }
        }
        Err(ApiError::internal(
            "failed to allocate a nodePort: range is full",
        ))
    }

    pub async fn release_port(&self, store: &Storage, port: u16) {
        if let Err(e) = release(store, &self.port_key(port)).await {
            tracing::warn!(port, error = %e, "releasing node port");
        }
    }
}

/// Creates the marker `key` for `owner`; false if another owner holds it. The marker also
/// names its value (the key's last segment), which `crate::alloc_repair` matches against the
/// stored Services.
async fn claim(store: &Storage, key: &str, owner: &str) -> Result<bool, StorageError> {
    let value = key.rsplit('/').next().unwrap_or_default();
    match store
        .create(
            key,
            serde_json::json!({ "owner": owner, "value": value }),
            false,
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(StorageError::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes a marker; an absent one is already released.
async fn release(store: &Storage, key: &str) -> Result<(), StorageError> {
    match store
        .delete(key, &Preconditions::default(), false, |_| {
            Ok::<_, ApiError>(())
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(kelson_apistorage::UpdateError::Storage(e)) => Err(e),
        Err(kelson_apistorage::UpdateError::Rejected(e)) => Err(StorageError::Internal(e.message)),
    }
}

fn invalid_ip(w: &str, msg: &str) -> ApiError {
    ApiError::invalid(
        "",
        "Service",
        "",
        vec![StatusCause::invalid(
            "spec.clusterIPs",
            format!("Invalid value: {w:?}: {msg}"),
        )],
    )
}

trait WithRange {
    fn with_range(self, a: &Allocator) -> Self;
}
impl WithRange for ApiError {
    fn with_range(mut self, a: &Allocator) -> Self {
        let range = format!("{}/{}", Ipv4Addr::from(a.cidr.base), a.cidr.prefix);
        self.message.push_str(&range);
        if let Some(d) = self.details.as_mut() {
            for c in d.causes.iter_mut() {
                c.message.push_str(&range);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_membership() {
        let c = Cidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(c.size(), 1 << 20);
        assert!(c.contains("10.100.1.2".parse().unwrap()));
        assert!(!c.contains("10.112.0.1".parse().unwrap()));
        assert_eq!(c.nth(1).to_string(), "10.96.0.1");
        assert_eq!(
            Cidr::parse("10.96.3.4/24").unwrap().nth(0).to_string(),
            "10.96.3.0"
        );
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0.0/0", "::1/64"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
