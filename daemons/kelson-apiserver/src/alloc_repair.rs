//! Repair of ClusterIP and NodePort allocations, as upstream's `ipallocator/controller` and
//! `portallocator/controller` repair loops do.
//!
//! Why: allocation claims a marker in the store (`crate::alloc`) before the Service is
//! written, and releases it if the write fails. A server that dies between the two (SIGKILL,
//! OOM, power loss — routine with several API servers) leaves a marker no Service owns, and
//! the value would stay allocated forever. Every API server therefore runs this loop:
//! - it lists the markers first, then the Services (both linearizable reads), so a Service
//!   created in between is never mistaken for a missing marker's owner;
//! - a marker no Service uses is a *suspect*; it is released only after it was seen unused, at
//!   the same resourceVersion, in [`LEAK_PASSES`] consecutive passes (upstream: 3), so a
//!   create still in flight on another server (marker claimed, Service not yet written) is
//!   never robbed; the delete is conditional on that resourceVersion, so a marker released and
//!   claimed again meanwhile survives;
//! - a Service whose value has no marker (a store restored from backup, a marker removed by
//!   hand) gets its marker back; if someone else holds it, the duplicate is logged.
//!
//! Several servers running the loop at once is safe: every write is a create-if-absent or a
//! conditional delete, and an already released marker counts as released.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kelson_apimachinery::ApiError;
use kelson_apistorage::{ListOptions, Preconditions, StorageError, UpdateError};
use serde_json::{json, Value};

use crate::server::Api;

/// Consecutive passes a marker must be seen unused before it is released.
pub const LEAK_PASSES: u32 = 3;

/// Upstream's repair interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(180);

/// Parses a Go-style duration of one unit (`500ms`, `10s`, `3m`, `1h`), the form
/// `--service-allocation-repair-interval` takes.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: missing a unit (ms, s, m, h)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: not a duration"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(d)
}

/// Starts the loop: a pass every `interval`, the first one after one interval.
pub fn start(api: Arc<Api>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut repair = Repair::default();
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = repair.pass(&api).await {
                tracing::warn!(error = %e, "allocation repair pass failed; retrying next interval");
            }
        }
    })
}

/// One kind of allocation (IPs or ports) as the repair sees it.
struct Pool {
    /// Marker key prefix (`<root>/kelson/serviceips/`).
    prefix: String,
    kind: &'static str,
}

/// Suspected leaks: marker key → (resourceVersion seen, consecutive unused passes).
#[derive(Debug, Default)]
pub struct Repair {
    suspects: HashMap<String, (String, u32)>,
}

impl Repair {
    /// One pass over both pools; returns how many markers it released.
    pub async fn pass(&mut self, api: &Arc<Api>) -> Result<usize, ApiError> {
        let root = api.root.trim_end_matches('/');
        let pools = [
            Pool {
                prefix: format!("{root}/kelson/serviceips/"),
                kind: "ClusterIP",
            },
            Pool {
                prefix: format!("{root}/kelson/nodeports/"),
                kind: "NodePort",
            },
        ];
        // Markers first, then Services (see the module doc).
        let mut markers = Vec::new();
        for pool in &pools {
            markers.push(list_markers(api, &pool.prefix).await?);
        }
        let (ips, ports) = in_use(api).await?;
        let mut released = 0;
        let mut seen = HashSet::new();
        for ((pool, markers), used) in pools.iter().zip(markers).zip([&ips, &ports]) {
            for (value, rv) in &markers {
                let key = format!("{}{value}", pool.prefix);
                if used.contains_key(value) {
                    continue;
                }
                seen.insert(key.clone());
                let count = match self.suspects.get(&key) {
                    Some((old_rv, n)) if old_rv == rv => n + 1,
                    _ => 1,
                };
                if count < LEAK_PASSES {
                    self.suspects.insert(key, (rv.clone(), count));
                    continue;
                }
                if release(api, &key, rv).await {
                    tracing::warn!(kind = pool.kind, %value, "released an allocation no Service holds (leaked by a failed or interrupted create)");
                    released += 1;
                }
            }
            let have: HashSet<&String> = markers.iter().map(|(v, _)| v).collect();
            for (value, owner) in used.iter().filter(|(v, _)| !have.contains(v)) {
                let key = format!("{}{value}", pool.prefix);
                match api
                    .store
                    .create(&key, json!({"owner": owner, "value": value}), false)
                    .await
                {
                    Ok(_) => {
                        tracing::warn!(kind = pool.kind, %value, %owner, "recorded an allocation that had no marker")
                    }
                    Err(StorageError::AlreadyExists { .. }) => {
                        // Claimed after our marker list: by this owner (a create in flight) or,
                        // if it is another, a duplicate the next pass will name.
                        tracing::debug!(kind = pool.kind, %value, "marker appeared meanwhile");
                    }
                    Err(e) => {
                        tracing::warn!(kind = pool.kind, %value, error = %e, "recording an allocation")
                    }
                }
            }
        }
        // Suspects that are gone or in use again start over.
        self.suspects.retain(|k, _| seen.contains(k));
        Ok(released)
    }
}

/// (value, resourceVersion) of every marker under `prefix`. The value is the marker's
/// `value` field (written by `crate::alloc` since the repair exists); a marker without one
/// (written by an older server) cannot be matched and is left alone.
async fn list_markers(api: &Api, prefix: &str) -> Result<Vec<(String, String)>, ApiError> {
    let res = api
        .store
        .list(prefix, &ListOptions::default(), None)
        .await
        .map_err(|e| ApiError::internal(format!("listing allocations: {e}")))?;
    Ok(res
        .items
        .iter()
        .filter_map(|m| {
            let value = match &m["value"] {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            let rv = m["metadata"]["resourceVersion"].as_str()?.to_string();
            Some((value, rv))
        })
        .collect())
}

/// Values held by stored Services: (IP → owner, port → owner); owners are `ns/name`.
async fn in_use(api: &Api) -> Result<(HashMap<String, String>, HashMap<String, String>), ApiError> {
    let info = crate::registry::lookup("", "v1", "services").expect("services are registered");
    let res = api
        .store
        .list(
            &crate::handlers::key(api, info, None, ""),
            &ListOptions::default(),
            None,
        )
        .await
        .map_err(|e| ApiError::internal(format!("listing services: {e}")))?;
    let (mut ips, mut ports) = (HashMap::new(), HashMap::new());
    for svc in &res.items {
        let owner = format!(
            "{}/{}",
            svc["metadata"]["namespace"].as_str().unwrap_or_default(),
            svc["metadata"]["name"].as_str().unwrap_or_default()
        );
        let spec = &svc["spec"];
        let listed = spec["clusterIPs"].as_array().into_iter().flatten();
        for ip in listed.chain(std::iter::once(&spec["clusterIP"])) {
            if let Some(ip) = ip.as_str().filter(|i| !i.is_empty() && *i != "None") {
                ips.insert(ip.to_string(), owner.clone());
            }
        }
        for p in spec["ports"].as_array().into_iter().flatten() {
            if let Some(n) = p["nodePort"].as_i64() {
                ports.insert(n.to_string(), owner.clone());
            }
        }
    }
    Ok((ips, ports))
}

/// Deletes the marker if it still is at `rv`; true if this call removed it.
async fn release(api: &Api, key: &str, rv: &str) -> bool {
    let pre = Preconditions {
        resource_version: Some(rv.to_string()),
        ..Default::default()
    };
    match api
        .store
        .delete(key, &pre, false, |_| Ok::<_, ApiError>(()))
        .await
    {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(UpdateError::Storage(e)) => {
            // A conflict: released and claimed again since we looked; it is someone's now.
            tracing::debug!(%key, error = %e, "leaked allocation changed meanwhile; kept");
            false
        }
        Err(UpdateError::Rejected(e)) => {
            tracing::warn!(%key, error = %e.message, "releasing a leaked allocation");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_like_go_durations_of_one_unit() {
        assert_eq!(parse_interval("3m").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_interval("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "5", "s", "0s", "1d", "-1s", "1.5s"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }
}
