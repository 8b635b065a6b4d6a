//! Resource quantities and a pod's effective requests, computed once per pod.
//!
//! Quantities are parsed exactly (decimal mantissa × SI/binary suffix or exponent) into
//! milli-units and rounded up, as apimachinery's `MilliValue`/`Value` do, so "100m" CPU and
//! "1Gi" memory compare without floating point error. A pod's request follows upstream
//! (`resourcehelper.PodRequests`): the sum over regular containers, raised to the largest init
//! container (init containers run one at a time), plus `spec.overhead`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Upstream's defaults for containers without requests, used only for scoring
/// (`schedutil.DefaultMilliCPURequest` / `DefaultMemoryRequest`), so best-effort pods still spread.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// A bag of resources: the well-known ones as fields, everything else (extended resources,
/// hugepages) by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// For allocatable: how many pods fit; for requests: unused (each pod counts one).
    pub pods: i64,
    pub scalar: BTreeMap<String, i64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid quantity {0:?}")]
pub struct QuantityError(pub String);

/// Parses a Kubernetes quantity into milli-units, rounding up.
pub fn parse_milli(q: &str) -> Result<i64, QuantityError> {
    let err = || QuantityError(q.to_string());
    let s = q.trim();
    if s.is_empty() {
        return Err(err());
    }
    let (neg, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(err());
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    // value = mantissa * 10^exp10 * 2^exp2
    let digits = format!("{int_part}{frac_part}");
    let mut mantissa: i128 = 0;
    for d in digits.bytes() {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add((d - b'0') as i128))
            .ok_or_else(err)?;
    }
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        s if s.starts_with(['e', 'E']) => {
            exp10 += s[1..].parse::<i32>().map_err(|_| err())?;
        }
        _ => return Err(err()),
    }
    // Milli-units.
    exp10 += 3;
    let mut v = mantissa.checked_shl(exp2).ok_or_else(err)?;
    if exp2 > 0 && (v >> exp2) != mantissa {
        return Err(err());
    }
    if exp10 >= 0 {
        for _ in 0..exp10 {
            v = v.checked_mul(10).ok_or_else(err)?;
        }
    } else {
        let mut div: i128 = 1;
        for _ in 0..(-exp10).min(38) {
            div *= 10;
        }
        v = (v + div - 1) / div; // round up, as upstream does
    }
    let v = if neg { -v } else { v };
    i64::try_from(v).map_err(|_| err())
}

/// The value in whole units, rounded up (memory, storage, counts).
pub fn parse_value(q: &str) -> Result<i64, QuantityError> {
    let m = parse_milli(q)?;
    Ok(if m >= 0 { (m + 999) / 1000 } else { m / 1000 })
}

impl Resources {
    /// Adds one named quantity (bad quantities are ignored: the API server validated them, and
    /// a scheduler must not crash on one bad object).
    pub fn add_named(&mut self, name: &str, q: &Quantity) {
        let v = match name {
            "cpu" => parse_milli(&q.0),
            _ => parse_value(&q.0),
        };
        let Ok(v) = v else {
            tracing::debug!(resource = name, quantity = %q.0, "ignoring unparsable quantity");
            return;
        };
        match name {
            "cpu" => self.milli_cpu += v,
            "memory" => self.memory += v,
            "ephemeral-storage" => self.ephemeral_storage += v,
            "pods" => self.pods += v,
            _ => *self.scalar.entry(name.to_string()).or_default() += v,
        }
    }

    pub fn from_map(m: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        for (k, q) in m.into_iter().flatten() {
            r.add_named(k, q);
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Component-wise maximum (for init containers).
    pub fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    pub fn scalar(&self, name: &str) -> i64 {
        self.scalar.get(name).copied().unwrap_or(0)
    }
}

fn container_requests(c: &Container) -> Resources {
    let res = c.resources.as_ref();
    // An unset request defaults to the limit (API defaulting does this; repeat it in case the
    // server did not).
    let mut r = Resources::from_map(res.and_then(|r| r.requests.as_ref()));
    if let Some(limits) = res.and_then(|r| r.limits.as_ref()) {
        let req = res.and_then(|r| r.requests.as_ref());
        for (k, q) in limits {
            if req.is_none_or(|m| !m.contains_key(k)) {
                r.add_named(k, q);
            }
        }
    }
    r
}

/// A pod's effective requests and the non-zero variant used for scoring.
pub fn pod_requests(pod: &Pod) -> (Resources, Resources) {
    let Some(spec) = pod.spec.as_ref() else {
        return Default::default();
    };
    let mut sum = Resources::default();
    let mut non_zero = Resources::default();
    for c in &spec.containers {
        let r = container_requests(c);
        let mut nz = r.clone();
        if nz.milli_cpu == 0 {
            nz.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
        }
        if nz.memory == 0 {
            nz.memory = DEFAULT_MEMORY_REQUEST;
        }
        sum.add(&r);
        non_zero.add(&nz);
    }
    // Restartable init containers (sidecars) keep running, so they add; classic init
    // containers run alone before the app, so the pod needs the max of each and the sum.
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            init_max.max_with(&sidecars);
        } else {
            let mut with_sidecars = r.clone();
            with_sidecars.add(&sidecars);
            init_max.max_with(&with_sidecars);
        }
    }
    sum.add(&sidecars);
    non_zero.add(&sidecars);
    sum.max_with(&init_max);
    non_zero.max_with(&init_max);
    if let Some(oh) = spec.overhead.as_ref() {
        let o = Resources::from_map(Some(oh));
        sum.add(&o);
        non_zero.add(&o);
    }
    (sum, non_zero)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_parse_exactly() {
        assert_eq!(parse_milli("100m").unwrap(), 100);
        assert_eq!(parse_milli("1").unwrap(), 1000);
        assert_eq!(parse_milli("1.5").unwrap(), 1500);
        assert_eq!(parse_milli("0.1").unwrap(), 100);
        assert_eq!(parse_milli("1u").unwrap(), 1); // rounds up
        assert_eq!(parse_value("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_value("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_value("128974848").unwrap(), 128974848);
        assert_eq!(parse_value("129e6").unwrap(), 129_000_000);
        assert_eq!(parse_value("1.5Mi").unwrap(), 1572864);
        assert!(parse_milli("abc").is_err());
        assert!(parse_milli("1Xi").is_err());
        assert!(parse_milli("").is_err());
        assert!(parse_milli("99999999999999999999999E").is_err());
    }

    #[test]
    fn pod_requests_take_max_of_init_and_sum_of_containers_plus_overhead() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [
                    {"name": "i1", "resources": {"requests": {"cpu": "2", "memory": "100Mi"}}},
                    {"name": "i2", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}
                ],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "300m", "memory": "200Mi", "example.com/gpu": "1"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "400m"}}}
                ],
                "overhead": {"cpu": "100m"}
            }
        }))
        .unwrap();
        let (r, nz) = pod_requests(&pod);
        // cpu: max(2000, 300+400) + 100 overhead
        assert_eq!(r.milli_cpu, 2100);
        // memory: max(1Gi, 200Mi) (b has none)
        assert_eq!(r.memory, 1 << 30);
        assert_eq!(r.scalar("example.com/gpu"), 1);
        // Non-zero: b gets the 200Mi default for scoring; still below the init max.
        assert_eq!(nz.memory, 1 << 30);
        assert_eq!(nz.milli_cpu, 2100);
    }
}
