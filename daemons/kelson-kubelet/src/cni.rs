//! The node's CNI network config, written where containerd's CRI plugin reads it.
//!
//! One conflist: `bridge` (a Linux bridge per node, the node-side gateway at the CIDR's first
//! address, hairpin on so a pod can reach itself through a Service) with `host-local` IPAM over
//! the node's podCIDR, then `portmap` for hostPort. containerd sets up `lo` itself (go-cni's
//! loopback network), so `loopback` is not chained here. The file is written atomically
//! (temp + rename) because the CRI plugin watches the directory and may read it at any time,
//! and rewritten only when the content changes.

use std::path::{Path, PathBuf};

use serde_json::json;

pub const CONF_FILE: &str = "10-kelson.conflist";
pub const NETWORK_NAME: &str = "kelson";

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("invalid pod CIDR {0:?}")]
    BadCidr(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Settings for the node's CNI config.
#[derive(Debug, Clone)]
pub struct CniSettings {
    pub pod_cidr: String,
    pub bridge: String,
    pub ipam_data_dir: PathBuf,
    pub masquerade: bool,
}

fn valid_cidr(c: &str) -> bool {
    let Some((ip, len)) = c.split_once('/') else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len.parse::<u8>().is_ok_and(|l| (8..=30).contains(&l)),
        Ok(std::net::IpAddr::V6(_)) => len.parse::<u8>().is_ok_and(|l| (64..=126).contains(&l)),
        Err(_) => false,
    }
}

/// The conflist JSON.
pub fn conflist(s: &CniSettings) -> Result<String, CniError> {
    if !valid_cidr(&s.pod_cidr) {
        return Err(CniError::BadCidr(s.pod_cidr.clone()));
    }
    let default_route = if s.pod_cidr.contains(':') {
        "::/0"
    } else {
        "0.0.0.0/0"
    };
    let v = json!({
        "cniVersion": "0.4.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": s.bridge,
                "isGateway": true,
                "ipMasq": s.masquerade,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": s.pod_cidr}]],
                    "routes": [{"dst": default_route}],
                    "dataDir": s.ipam_data_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    });
    Ok(serde_json::to_string_pretty(&v).unwrap_or_default())
}

/// Writes the conflist into `dir` if it differs; returns whether it was (re)written.
pub fn write_conf(dir: &Path, s: &CniSettings) -> Result<bool, CniError> {
    let text = conflist(s)?;
    let path = dir.join(CONF_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let err = |source| CniError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(".{CONF_FILE}.tmp"));
    std::fs::write(&tmp, &text).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_has_bridge_ipam_portmap_and_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = CniSettings {
            pod_cidr: "10.250.3.0/24".into(),
            bridge: "kt0".into(),
            ipam_data_dir: dir.path().join("ipam"),
            masquerade: false,
        };
        assert!(write_conf(dir.path(), &s).unwrap());
        assert!(!write_conf(dir.path(), &s).unwrap());
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONF_FILE)).unwrap())
                .unwrap();
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][0]["bridge"], "kt0");
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.250.3.0/24"
        );
        assert_eq!(v["plugins"][1]["type"], "portmap");
        let bad = CniSettings {
            pod_cidr: "10.0.0.0".into(),
            ..s
        };
        assert!(matches!(conflist(&bad), Err(CniError::BadCidr(_))));
    }
}
