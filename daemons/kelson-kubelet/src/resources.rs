//! Resource quantities and what they become: CRI Linux resources, QoS class, node allocatable.
//!
//! Quantities are parsed to integer milli-units (cpu) or bytes (everything else) with the
//! upstream suffixes (`m`, `k M G T P E`, `Ki Mi Gi Ti Pi Ei`, decimal exponents `e3`), so no
//! float rounding surprises. CPU shares/quota follow the kubelet's cgroupfs conversions
//! (shares = milli × 1024 / 1000, minimum 2; quota = milli × period / 1000, period 100 ms,
//! minimum 1 ms).

use std::collections::BTreeMap;

use k8s_cri::v1::LinuxContainerResources;
use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

pub const CPU_PERIOD_US: i64 = 100_000;
const MIN_SHARES: i64 = 2;
const MIN_QUOTA_US: i64 = 1_000;

/// Parses a quantity to its value × 1000 (milli-units), rounding up like upstream's MilliValue.
pub fn parse_milli(q: &str) -> Option<i128> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let (mult_num, mult_den): (i128, i128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().ok()?;
            (10i128.checked_pow(exp)?, 1)
        }
        _ => return None,
    };
    let neg = num.starts_with('-');
    let num = num.trim_start_matches(['+', '-']);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let int: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_den = 10i128.checked_pow(frac.len() as u32)?;
    let frac_num: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    // value*1000 = (int + frac_num/frac_den) * mult_num / mult_den * 1000, rounded up.
    let numer = (int.checked_mul(frac_den)? + frac_num)
        .checked_mul(mult_num)?
        .checked_mul(1000)?;
    let denom = frac_den.checked_mul(mult_den)?;
    let v = (numer + denom - 1) / denom;
    Some(if neg { -v } else { v })
}

/// Parses to whole units, rounding up (bytes for memory).
pub fn parse_value(q: &str) -> Option<i128> {
    parse_milli(q).map(|m| (m + 999).div_euclid(1000))
}

fn get<'a>(m: &'a Option<BTreeMap<String, Quantity>>, k: &str) -> Option<&'a str> {
    m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.as_str())
}

/// CRI Linux resources for a container's requests/limits.
pub fn linux_resources(r: Option<&ResourceRequirements>) -> LinuxContainerResources {
    let empty = ResourceRequirements::default();
    let r = r.unwrap_or(&empty);
    let cpu_req = get(&r.requests, "cpu").and_then(parse_milli);
    let cpu_lim = get(&r.limits, "cpu").and_then(parse_milli);
    // Upstream: a request defaults to the limit when only a limit is given.
    let req = cpu_req.or(cpu_lim).unwrap_or(0) as i64;
    let shares = if req == 0 {
        MIN_SHARES
    } else {
        (req * 1024 / 1000).max(MIN_SHARES)
    };
    let mut out = LinuxContainerResources {
        cpu_shares: shares,
        ..Default::default()
    };
    if let Some(l) = cpu_lim {
        out.cpu_period = CPU_PERIOD_US;
        out.cpu_quota = ((l as i64) * CPU_PERIOD_US / 1000).max(MIN_QUOTA_US);
    }
    if let Some(m) = get(&r.limits, "memory").and_then(parse_value) {
        out.memory_limit_in_bytes = m as i64;
    }
    out
}

/// The pod's QoS class by upstream's rules (Guaranteed / Burstable / BestEffort).
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.clone().unwrap_or_default();
        for res in ["cpu", "memory"] {
            let req = get(&r.requests, res).or(get(&r.limits, res));
            let lim = get(&r.limits, res);
            if req.is_some_and(|q| parse_milli(q).unwrap_or(0) != 0) {
                any = true;
            }
            match (req.and_then(parse_milli), lim.and_then(parse_milli)) {
                (Some(a), Some(b)) if a == b && b != 0 => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    #[test]
    fn quantities_parse_with_upstream_suffixes() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_value("128Mi"), Some(128 << 20));
        assert_eq!(parse_value("1G"), Some(1_000_000_000));
        assert_eq!(parse_value("1e3"), Some(1000));
        assert_eq!(parse_value("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_milli("abc"), None);
        assert_eq!(parse_milli("1Zi"), None);
        assert_eq!(parse_milli(""), None);
        assert_eq!(parse_milli("9999999999999999999999999999E"), None);
    }

    #[test]
    fn resources_become_cgroup_values() {
        let r = ResourceRequirements {
            limits: Some([("cpu".to_string(), q("500m")), ("memory".into(), q("64Mi"))].into()),
            requests: Some([("cpu".to_string(), q("250m"))].into()),
            ..Default::default()
        };
        let l = linux_resources(Some(&r));
        assert_eq!(l.cpu_shares, 256);
        assert_eq!(l.cpu_quota, 50_000);
        assert_eq!(l.cpu_period, 100_000);
        assert_eq!(l.memory_limit_in_bytes, 64 << 20);
        let none = linux_resources(None);
        assert_eq!(none.cpu_shares, 2);
        assert_eq!(none.cpu_quota, 0);
    }

    #[test]
    fn qos_classes() {
        let mut spec = PodSpec {
            containers: vec![Container {
                name: "a".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(qos_class(&spec), "BestEffort");
        spec.containers[0].resources = Some(ResourceRequirements {
            limits: Some([("cpu".to_string(), q("1")), ("memory".into(), q("1Gi"))].into()),
            ..Default::default()
        });
        assert_eq!(qos_class(&spec), "Guaranteed");
        spec.containers[0].resources = Some(ResourceRequirements {
            requests: Some([("cpu".to_string(), q("100m"))].into()),
            ..Default::default()
        });
        assert_eq!(qos_class(&spec), "Burstable");
    }
}
