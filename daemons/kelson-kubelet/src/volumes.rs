//! Volume contents written like upstream's atomic writer, and projected service account tokens.
//!
//! configMap, secret, downwardAPI and projected volumes are directories whose files a running
//! container may read at any moment while the kubelet updates them. Upstream's `AtomicWriter`
//! layout is kept because programs (and `kubectl exec … ls -la`) expect it:
//!
//! ```text
//! <dir>/..2026_11_21_10_05_47.123456789/<files>   the current payload, a fresh dir per change
//! <dir>/..data -> ..2026_11_21_10_05_47.123456789 swapped with rename(2): atomic
//! <dir>/<name> -> ..data/<name>                   one symlink per top-level entry
//! ```
//!
//! A payload equal to what `..data` already holds is not rewritten, so the per-sync refresh
//! costs reads only.
//!
//! Service account tokens come from the TokenRequest API
//! (`POST /api/v1/namespaces/<ns>/serviceaccounts/<sa>/token`) bound to the pod (so they die
//! with it) and are cached per pod/account/audience/lifetime in a [`TokenCache`] shared by all
//! pod workers. A token is re-requested once 80 % of its lifetime has passed (or after 24 h),
//! upstream's rule, and the new one lands through the same atomic swap.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;

/// Files of a volume: relative path → (content, mode).
pub type Payload = BTreeMap<String, (Vec<u8>, u32)>;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

fn check_path(rel: &str) -> std::io::Result<()> {
    if rel.is_empty()
        || rel.starts_with('/')
        || rel.starts_with("..")
        || rel.split('/').any(|c| c == ".." || c.is_empty())
    {
        return Err(invalid(format!("invalid path {rel:?}")));
    }
    Ok(())
}

/// Whether `..data` already holds exactly `payload`.
fn unchanged(dir: &Path, payload: &Payload) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let data = dir.join(DATA);
    if !data.is_dir() {
        return false;
    }
    let mut count = 0usize;
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            return false;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                count += 1;
            }
        }
    }
    count == payload.len()
        && payload.iter().all(|(rel, (content, mode))| {
            let p = data.join(rel);
            std::fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o7777 == *mode)
                && std::fs::read(&p).is_ok_and(|c| &c == content)
        })
}

/// Writes `payload` into `dir` with the `..data` swap; returns whether anything changed.
pub fn write_atomic(dir: &Path, payload: &Payload) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    for rel in payload.keys() {
        check_path(rel)?;
    }
    std::fs::create_dir_all(dir)?;
    if unchanged(dir, payload) {
        return Ok(false);
    }
    let old_target = std::fs::read_link(dir.join(DATA)).ok();
    let now = k8s_openapi::jiff::Timestamp::now();
    let ts = format!(
        "..{}.{:09}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond()
    );
    let ts_dir = dir.join(&ts);
    std::fs::create_dir_all(&ts_dir)?;
    for (rel, (content, mode)) in payload {
        let p = ts_dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, content)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    // User-visible entries: one symlink per top-level name into ..data.
    let tops: std::collections::BTreeSet<&str> = payload
        .keys()
        .map(|k| k.split('/').next().unwrap_or(k))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            continue;
        }
        if link.exists() {
            // A plain file from an older non-atomic layout.
            let _ = std::fs::remove_file(&link).or_else(|_| std::fs::remove_dir_all(&link));
        }
        std::os::unix::fs::symlink(format!("{DATA}/{top}"), &link)?;
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") || tops.contains(name.as_str()) {
            continue;
        }
        let _ = std::fs::remove_file(e.path()).or_else(|_| std::fs::remove_dir_all(e.path()));
    }
    if let Some(old) = old_target {
        if old != Path::new(&ts) {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    }
    Ok(true)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    pod_uid: String,
    account: String,
    audience: String,
    expiration: i64,
}

#[derive(Debug, Clone)]
struct Token {
    token: String,
    issued: SystemTime,
    expires: SystemTime,
}

impl Token {
    /// Upstream's requiresRefresh: past 80 % of the lifetime, or older than 24 h.
    fn needs_refresh(&self, now: SystemTime) -> bool {
        let life = self
            .expires
            .duration_since(self.issued)
            .unwrap_or(Duration::ZERO);
        let age = now.duration_since(self.issued).unwrap_or(Duration::ZERO);
        age >= life.mul_f64(0.8) || age >= Duration::from_secs(24 * 3600)
    }
}

/// Bound service account tokens per pod, refreshed at 80 % of their lifetime.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<TokenKey, Token>>,
}

impl TokenCache {
    /// A valid token for `pod` as `account`, requesting a new one when needed. The error is
    /// the message upstream puts after `MountVolume.SetUp failed for volume …:`.
    pub async fn get(
        &self,
        client: &kube::Client,
        pod: &Pod,
        account: &str,
        audience: Option<&str>,
        expiration_seconds: i64,
    ) -> Result<String, String> {
        let key = TokenKey {
            pod_uid: crate::pod::uid(pod),
            account: account.to_string(),
            audience: audience.unwrap_or("").to_string(),
            expiration: expiration_seconds,
        };
        let now = SystemTime::now();
        if let Some(t) = self.tokens.lock().get(&key) {
            if !t.needs_refresh(now) {
                return Ok(t.token.clone());
            }
        }
        let ns = crate::pod::namespace(pod);
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
                expiration_seconds: Some(expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let resp = api
            .create_token_request(account, &PostParams::default(), &req)
            .await
            .map_err(|e| format!("failed to fetch token: {e}"))?;
        let status = resp
            .status
            .ok_or_else(|| "failed to fetch token: the response has no status".to_string())?;
        let expires = SystemTime::UNIX_EPOCH
            + Duration::from_secs(status.expiration_timestamp.0.as_second().max(0) as u64);
        // Guard against a server clock far off ours: treat the lifetime as requested.
        let expires = if expires <= now {
            now + Duration::from_secs(expiration_seconds.max(1) as u64)
        } else {
            expires
        };
        let t = Token {
            token: status.token.clone(),
            issued: now,
            expires,
        };
        tracing::debug!(pod = %crate::pod::name(pod), %account, "service account token issued");
        self.tokens.lock().insert(key, t);
        Ok(status.token)
    }

    /// Drops a deleted pod's tokens.
    pub fn forget_pod(&self, pod_uid: &str) {
        self.tokens.lock().retain(|k, _| k.pod_uid != pod_uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn payload(items: &[(&str, &str, u32)]) -> Payload {
        items
            .iter()
            .map(|(k, v, m)| (k.to_string(), (v.as_bytes().to_vec(), *m)))
            .collect()
    }

    #[test]
    fn atomic_writer_swaps_data_and_links_top_level_names() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vol");
        let p1 = payload(&[("token", "t1", 0o600), ("ns/name", "default", 0o644)]);
        assert!(write_atomic(&dir, &p1).unwrap());
        assert!(!write_atomic(&dir, &p1).unwrap(), "same payload rewritten");
        assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "t1");
        assert_eq!(
            std::fs::read_to_string(dir.join("ns/name")).unwrap(),
            "default"
        );
        assert!(std::fs::symlink_metadata(dir.join("token"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::metadata(dir.join("token"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        let p2 = payload(&[("token", "t2", 0o600)]);
        assert!(write_atomic(&dir, &p2).unwrap());
        let second = std::fs::read_link(dir.join("..data")).unwrap();
        assert_ne!(first, second);
        assert!(!dir.join(&first).exists(), "old payload dir left");
        assert!(!dir.join("ns").exists(), "stale entry left");
        assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "t2");
        assert!(write_atomic(&dir, &payload(&[("../x", "", 0o644)])).is_err());
    }

    #[test]
    fn tokens_refresh_at_eighty_percent() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = Token {
            token: "x".into(),
            issued,
            expires: issued + Duration::from_secs(3600),
        };
        assert!(!t.needs_refresh(issued + Duration::from_secs(2879)));
        assert!(t.needs_refresh(issued + Duration::from_secs(2880)));
    }
}
