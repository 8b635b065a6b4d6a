//! The audit log: upstream's audit.k8s.io/v1 `Event`s as JSON lines, chosen by a `Policy`.
//!
//! The policy (`--audit-policy-file`, YAML or JSON) is a list of rules; the first rule that
//! matches a request (users, userGroups, verbs, resources by group/resource/name, namespaces,
//! nonResourceURLs with a trailing `*` wildcard) gives its level: `None` (not logged),
//! `Metadata` (who did what to which object, and the answer's code), `Request` (plus the
//! request body) or `RequestResponse` (plus the response body). No rule matching means
//! `None`, as upstream. Without a policy file every request is logged at `Metadata` (upstream
//! refuses to audit without one; a default keeps `--audit-log-path` alone useful).
//!
//! Each request produces a `RequestReceived` event before it is handled and a
//! `ResponseComplete` event after (`ResponseStarted` for watches, whose response is a stream
//! that outlives the handler), unless the stage is in `omitStages`.
//!
//! Writing is off the request path: events go into a bounded channel (10 000 events) that one
//! blocking thread drains into the file. When the channel is full the event is dropped and
//! counted (`dropped()`, with a rate-limited warning) rather than slowing or failing the
//! request: a stuck disk must not take the API down. The writer rotates the file when it
//! would exceed `--audit-log-maxsize` MB (renaming it to `<name>-<timestamp><ext>`, as
//! upstream's lumberjack) and keeps at most `--audit-log-maxbackup` old files, none older than
//! `--audit-log-maxage` days (by the backup's modification time, which is when it was rotated
//! out; checked at start and after each rotation, as lumberjack does).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Attributes, User};

/// How much of a request is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupResources {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    pub level: Level,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub user_groups: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resources: Vec<GroupResources>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
    #[serde(default)]
    pub omit_stages: Option<Vec<String>>,
}

/// audit.k8s.io/v1 `Policy`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    #[serde(default)]
    pub omit_stages: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    #[error("opening the audit log {0}: {1}")]
    Open(PathBuf, #[source] std::io::Error),
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, AuditError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuditError::Read(path.into(), e))?;
        let p: Policy = serde_yaml::from_str(&text)
            .map_err(|e| AuditError::Parse(path.into(), e.to_string()))?;
        if p.kind != "Policy" || !p.api_version.starts_with("audit.k8s.io/") {
            return Err(AuditError::Parse(
                path.into(),
                format!(
                    "want kind Policy of audit.k8s.io/v1, got {:?} {:?}",
                    p.api_version, p.kind
                ),
            ));
        }
        Ok(p)
    }

    /// Everything at `Metadata`.
    pub fn metadata_for_all() -> Policy {
        Policy {
            api_version: "audit.k8s.io/v1".into(),
            kind: "Policy".into(),
            rules: vec![PolicyRule {
                level: Level::Metadata,
                users: vec![],
                user_groups: vec![],
                verbs: vec![],
                resources: vec![],
                namespaces: vec![],
                non_resource_urls: vec![],
                omit_stages: None,
            }],
            omit_stages: vec![],
        }
    }

    /// The level and omitted stages for a request.
    pub fn evaluate(&self, user: &User, attrs: &Attributes) -> (Level, Vec<String>) {
        for r in &self.rules {
            if r.matches(user, attrs) {
                let mut omit = self.omit_stages.clone();
                omit.extend(r.omit_stages.clone().unwrap_or_default());
                return (r.level, omit);
            }
        }
        (Level::None, Vec::new())
    }
}

impl PolicyRule {
    fn matches(&self, user: &User, a: &Attributes) -> bool {
        if !self.users.is_empty() && !self.users.contains(&user.name) {
            return false;
        }
        if !self.user_groups.is_empty() && !user.groups.iter().any(|g| self.user_groups.contains(g))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&a.verb) {
            return false;
        }
        if a.resource_request {
            // A rule about non-resource URLs only does not match resource requests.
            if !self.non_resource_urls.is_empty()
                && self.resources.is_empty()
                && self.namespaces.is_empty()
            {
                return false;
            }
            if !self.namespaces.is_empty() && !self.namespaces.contains(&a.namespace) {
                return false;
            }
            if self.resources.is_empty() {
                return true;
            }
            let res = if a.subresource.is_empty() {
                a.resource.clone()
            } else {
                format!("{}/{}", a.resource, a.subresource)
            };
            self.resources.iter().any(|gr| {
                let group_ok = gr.group.as_deref().is_none_or(|g| g == a.group || g == "*");
                let res_ok = gr.resources.is_empty()
                    || gr.resources.iter().any(|r| {
                        r == &res
                            || r == "*"
                            || (r == &format!("{}/*", a.resource) && !a.subresource.is_empty())
                            || (r.starts_with("*/") && r[2..] == a.subresource)
                    });
                let name_ok = gr.resource_names.is_empty() || gr.resource_names.contains(&a.name);
                group_ok && res_ok && name_ok
            })
        } else {
            if !self.resources.is_empty() || !self.namespaces.is_empty() {
                return false;
            }
            self.non_resource_urls.is_empty()
                || self
                    .non_resource_urls
                    .iter()
                    .any(|u| match u.strip_suffix('*') {
                        Some(prefix) => a.path.starts_with(prefix),
                        None => &a.path == u,
                    })
        }
    }
}

/// What one request contributes to its events.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub audit_id: String,
    pub request_uri: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub received: String,
    pub user: Option<User>,
    pub attrs: Option<Attributes>,
    pub api_version: String,
    pub request_object: Option<Value>,
    pub level: Option<Level>,
    pub omit: Vec<String>,
}

/// The client's address, put into each request's extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl RequestInfo {
    /// What is known when a request arrives (the `Audit-ID` header is kept, as upstream).
    pub fn start<B>(req: &http::Request<B>) -> RequestInfo {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        RequestInfo {
            audit_id: header("audit-id")
                .filter(|s| !s.is_empty() && s.len() <= 64)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            request_uri: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            source_ip: req
                .extensions()
                .get::<PeerAddr>()
                .map(|p| p.0.ip().to_string()),
            user_agent: header("user-agent"),
            received: now_micro(),
            ..Default::default()
        }
    }

    /// The request is authenticated and its attributes known: decide the level and record
    /// the `RequestReceived` stage.
    pub fn received(
        &mut self,
        auditor: &Auditor,
        user: &User,
        attrs: &Attributes,
        api_version: &str,
    ) {
        let (level, omit) = auditor.level(user, attrs);
        self.user = Some(user.clone());
        self.attrs = Some(attrs.clone());
        self.api_version = api_version.to_string();
        self.level = Some(level);
        self.omit = omit;
        auditor.emit(self, level, &self.omit, "RequestReceived", None);
    }

    /// Keeps the request body when the level asks for it; a create names its object only in
    /// the body, so its name goes into `objectRef` (as upstream's `LogRequestObject`).
    pub fn request_body(&mut self, content_type: Option<&str>, body: &[u8]) {
        let level = self.level.unwrap_or(Level::None);
        let create = self.attrs.as_ref().is_some_and(|a| a.verb == "create");
        if level == Level::None || body.is_empty() || (level < Level::Request && !create) {
            return;
        }
        // JSON, YAML or protobuf, as the handlers decode it.
        let obj = crate::http::decode_object(content_type, body).ok();
        if let (Some(a), Some(o)) = (self.attrs.as_mut(), obj.as_ref()) {
            if a.name.is_empty() {
                a.name = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            }
        }
        if level >= Level::Request {
            self.request_object = obj;
        }
    }

    fn event(&self, level: Level, stage: &str) -> Value {
        let mut ev = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level.as_str(),
            "auditID": self.audit_id,
            "stage": stage,
            "requestURI": self.request_uri,
            "verb": self.attrs.as_ref().map(|a| a.verb.clone()).unwrap_or_default(),
            "user": self.user.as_ref().map(|u| json!({"username": u.name, "groups": u.groups})).unwrap_or(json!({})),
            "sourceIPs": self.source_ip.iter().collect::<Vec<_>>(),
            "requestReceivedTimestamp": self.received,
            "stageTimestamp": now_micro(),
        });
        if let Some(ua) = &self.user_agent {
            ev["userAgent"] = json!(ua);
        }
        if let Some(a) = self.attrs.as_ref().filter(|a| a.resource_request) {
            let mut r = json!({"resource": a.resource, "apiVersion": self.api_version});
            let mut set = |k: &str, v: &str| {
                if !v.is_empty() {
                    r[k] = json!(v);
                }
            };
            set("namespace", &a.namespace);
            set("name", &a.name);
            set("apiGroup", &a.group);
            set("subresource", &a.subresource);
            ev["objectRef"] = r;
        }
        if level >= Level::Request {
            if let Some(o) = &self.request_object {
                ev["requestObject"] = o.clone();
            }
        }
        ev
    }
}

/// Records the final stage of a request and hands the response on (a buffered body is read
/// for `RequestResponse`; streams are not).
pub async fn finish(
    auditor: &Auditor,
    info: &RequestInfo,
    resp: http::Response<crate::http::Body>,
) -> http::Response<crate::http::Body> {
    let Some(level) = info.level.filter(|l| *l > Level::None && auditor.enabled()) else {
        return resp;
    };
    let code = resp.status().as_u16();
    let watch = info.attrs.as_ref().is_some_and(|a| a.verb == "watch");
    let stage = if watch {
        "ResponseStarted"
    } else {
        "ResponseComplete"
    };
    let is_status = code >= 300;
    use http_body_util::BodyExt;
    use hyper::body::Body as _;
    let buffered = !watch
        && resp
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n <= 3 << 20);
    if buffered && (level == Level::RequestResponse || is_status) {
        let (parts, body) = resp.into_parts();
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => bytes::Bytes::new(),
        };
        let v: Option<Value> = serde_json::from_slice(&bytes).ok();
        auditor.emit(info, level, &info.omit, stage, Some((code, v.as_ref())));
        return http::Response::from_parts(parts, crate::http::full(bytes));
    }
    auditor.emit(info, level, &info.omit, stage, Some((code, None)));
    resp
}

fn now_micro() -> String {
    let t = time::OffsetDateTime::now_utc();
    t.format(&time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    ))
    .unwrap_or_default()
}

/// The audit backend of one API server (disabled when no log path is configured).
pub struct Auditor {
    policy: Policy,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("enabled", &self.tx.is_some())
            .finish()
    }
}

impl Default for Auditor {
    fn default() -> Self {
        Auditor {
            policy: Policy::metadata_for_all(),
            tx: None,
            dropped: Default::default(),
        }
    }
}

/// Events buffered between the requests and the writer thread.
pub const QUEUE: usize = 10_000;

impl Auditor {
    /// Opens (appends to) `path` and starts the writer thread; backups are kept regardless
    /// of age (see [`Auditor::with_rotation`]).
    pub fn new(
        path: &Path,
        policy: Policy,
        max_mb: u64,
        max_backups: u32,
    ) -> Result<Auditor, AuditError> {
        Auditor::with_rotation(path, policy, max_mb, max_backups, 0)
    }

    /// Like [`Auditor::new`], and backups older than `max_age_days` are removed (0: no limit).
    pub fn with_rotation(
        path: &Path,
        policy: Policy,
        max_mb: u64,
        max_backups: u32,
        max_age_days: u32,
    ) -> Result<Auditor, AuditError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let mut w = Writer::open(
            path,
            max_mb.saturating_mul(1024 * 1024),
            max_backups,
            std::time::Duration::from_secs(u64::from(max_age_days) * 86400),
        )?;
        // Backups that aged out while the server was down.
        if let Err(e) = w.prune() {
            tracing::warn!(error = %e, path = %path.display(), "pruning old audit logs");
        }
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    if let Err(e) = w.write(&line) {
                        tracing::error!(error = %e, path = %w.path.display(), "writing the audit log");
                    }
                }
            })
            .map_err(|e| AuditError::Open(path.into(), e))?;
        Ok(Auditor {
            policy,
            tx: Some(tx),
            dropped: Default::default(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Events dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The level for a request (`None` when auditing is off).
    pub fn level(&self, user: &User, attrs: &Attributes) -> (Level, Vec<String>) {
        if !self.enabled() {
            return (Level::None, Vec::new());
        }
        self.policy.evaluate(user, attrs)
    }

    /// Records the stage `stage` of a request, with the response (`code`, body) for the
    /// final stages.
    pub fn emit(
        &self,
        info: &RequestInfo,
        level: Level,
        omit: &[String],
        stage: &str,
        response: Option<(u16, Option<&Value>)>,
    ) {
        let Some(tx) = &self.tx else { return };
        if level == Level::None || omit.iter().any(|s| s == stage) {
            return;
        }
        let mut ev = info.event(level, stage);
        if let Some((code, body)) = response {
            let mut status = json!({"metadata": {}, "code": code});
            if let Some(b) = body.filter(|b| b["kind"] == "Status") {
                for k in ["status", "message", "reason", "details"] {
                    if !b[k].is_null() {
                        status[k] = b[k].clone();
                    }
                }
            }
            ev["responseStatus"] = status;
            if level == Level::RequestResponse {
                if let Some(b) = body {
                    ev["responseObject"] = b.clone();
                }
            }
        }
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        if tx.try_send(line).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "audit log writer is behind: dropping events"
                );
            }
        }
    }
}

fn open(path: &Path) -> Result<std::fs::File, AuditError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| AuditError::Open(path.into(), e))?;
    }
    // 0600 like upstream's log files: audit events name users and objects (CIS baseline test).
    std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().create(true).append(true),
        0o600,
    )
    .open(path)
    .map_err(|e| AuditError::Open(path.into(), e))
}

struct Writer {
    file: std::fs::File,
    size: u64,
    path: PathBuf,
    max_bytes: u64,
    max_backups: u32,
    /// Backups older than this are removed; zero keeps them regardless of age.
    max_age: std::time::Duration,
}

impl Writer {
    /// Appends to `path` (created 0600 if absent), counting what it already holds.
    fn open(
        path: &Path,
        max_bytes: u64,
        max_backups: u32,
        max_age: std::time::Duration,
    ) -> Result<Writer, AuditError> {
        let file = open(path)?;
        Ok(Writer {
            size: file.metadata().map(|m| m.len()).unwrap_or(0),
            file,
            path: path.to_path_buf(),
            max_bytes,
            max_backups,
            max_age,
        })
    }

    /// The directory, stem and extension backups are named from (`<dir>/<stem>-<ts><ext>`).
    fn backup_parts(&self) -> (&Path, String, String) {
        let stem = self
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("audit")
            .to_string();
        let ext = self
            .path
            .extension()
            .and_then(|s| s.to_str())
            .map(|e| format!(".{e}"))
            .unwrap_or_default();
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        (dir, stem, ext)
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.max_bytes > 0 && self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// `audit.log` → `audit-<UTC timestamp>.log`, then prune the oldest backups.
    fn rotate(&mut self) -> std::io::Result<()> {
        let (dir, stem, ext) = self.backup_parts();
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]-[minute]-[second].[subsecond digits:6]"
            ))
            .unwrap_or_default();
        let backup = dir.join(format!("{stem}-{ts}{ext}"));
        std::fs::rename(&self.path, &backup)?;
        self.file = open(&self.path).map_err(std::io::Error::other)?;
        self.size = 0;
        self.prune()
    }

    /// Removes backups beyond `max_backups` (oldest first) and older than `max_age`.
    fn prune(&self) -> std::io::Result<()> {
        if self.max_backups == 0 && self.max_age.is_zero() {
            return Ok(());
        }
        let (dir, stem, ext) = self.backup_parts();
        let prefix = format!("{stem}-");
        let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&ext))
            })
            .collect();
        // The timestamps sort chronologically.
        backups.sort();
        let excess = if self.max_backups > 0 {
            backups.len().saturating_sub(self.max_backups as usize)
        } else {
            0
        };
        for (i, old) in backups.iter().enumerate() {
            let expired = !self.max_age.is_zero()
                && std::fs::metadata(old)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > self.max_age);
            if i < excess || expired {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn res(verb: &str, group: &str, resource: &str, ns: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: ns.into(),
            resource_request: true,
            ..Default::default()
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let p: Policy = serde_yaml::from_str(
            r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: ["system:kube-proxy"]
- level: None
  nonResourceURLs: ["/healthz*", "/version"]
- level: RequestResponse
  resources: [{group: "", resources: ["configmaps"]}]
  namespaces: ["kube-system"]
- level: Metadata
  resources: [{group: "", resources: ["secrets", "pods/log"]}]
- level: Request
  verbs: ["create", "update"]
  userGroups: ["system:authenticated"]
"#,
        )
        .unwrap();
        let bob = user("bob", &["system:authenticated"]);
        assert_eq!(
            p.evaluate(
                &user("system:kube-proxy", &[]),
                &res("get", "", "pods", "a")
            )
            .0,
            Level::None
        );
        assert_eq!(
            p.evaluate(&bob, &res("get", "", "configmaps", "kube-system"))
                .0,
            Level::RequestResponse
        );
        assert_eq!(
            p.evaluate(&bob, &res("get", "", "secrets", "x")).0,
            Level::Metadata
        );
        let mut log = res("get", "", "pods", "x");
        log.subresource = "log".into();
        assert_eq!(p.evaluate(&bob, &log).0, Level::Metadata);
        let (l, omit) = p.evaluate(&bob, &res("create", "apps", "deployments", "x"));
        assert_eq!(
            (l, omit),
            (Level::Request, vec!["RequestReceived".to_string()])
        );
        assert_eq!(
            p.evaluate(&bob, &res("get", "apps", "deployments", "x")).0,
            Level::None
        );
        let health = Attributes {
            verb: "get".into(),
            path: "/healthz/etcd".into(),
            ..Default::default()
        };
        assert_eq!(p.evaluate(&bob, &health).0, Level::None);
    }

    /// A writer of `<tempdir>/audit.log` that rotates past 100 bytes.
    fn writer(max_backups: u32, max_age_days: u64) -> (tempfile::TempDir, PathBuf, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let w = Writer::open(
            &path,
            100,
            max_backups,
            std::time::Duration::from_secs(max_age_days * 86400),
        )
        .unwrap();
        (dir, path, w)
    }

    /// Writes `n` 61-byte lines numbered from 0, apart in time so backup names differ.
    fn write_lines(w: &mut Writer, n: usize) {
        for i in 0..n {
            w.write(format!("{:060}\n", i).as_bytes()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// The names of the files in `dir` starting with `prefix`.
    fn files(dir: &Path, prefix: &str) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    #[test]
    fn writer_rotates_and_prunes() {
        let (dir, path, mut w) = writer(2, 0);
        write_lines(&mut w, 10);
        let names = files(dir.path(), "");
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .ends_with("000000009\n"));
    }

    #[test]
    fn writer_prunes_backups_older_than_max_age() {
        let (dir, _path, mut w) = writer(0, 30);
        let old = dir.path().join("audit-2020-01-01T00-00-00.000000.log");
        let recent = dir.path().join("audit-2020-01-02T00-00-00.000000.log");
        let other = dir.path().join("other-2020-01-01.log");
        for f in [&old, &recent, &other] {
            std::fs::write(f, "x\n").unwrap();
        }
        // `old` was rotated out 40 days ago, `recent` 2 days ago.
        let ago =
            |days: u64| std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86400);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(ago(40))
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(&recent)
            .unwrap()
            .set_modified(ago(2))
            .unwrap();
        w.prune().unwrap();
        assert!(!old.exists(), "a 40-day-old backup must go with maxage 30");
        assert!(recent.exists() && other.exists());
        // Rotations prune too: with maxbackup 1 only the newest backup stays.
        w.max_backups = 1;
        write_lines(&mut w, 4);
        assert!(!recent.exists());
        assert_eq!(files(dir.path(), "audit-").len(), 1);
    }

    #[test]
    fn events_carry_levels() {
        let info = RequestInfo {
            audit_id: "id".into(),
            request_uri: "/api/v1/namespaces/a/configmaps".into(),
            user: Some(user("bob", &["g"])),
            attrs: Some(res("create", "", "configmaps", "a")),
            api_version: "v1".into(),
            request_object: Some(json!({"kind": "ConfigMap"})),
            ..Default::default()
        };
        let ev = info.event(Level::Metadata, "ResponseComplete");
        assert_eq!(
            ev["objectRef"],
            json!({"resource": "configmaps", "namespace": "a", "apiVersion": "v1"})
        );
        assert!(ev.get("requestObject").is_none());
        assert_eq!(
            info.event(Level::Request, "x")["requestObject"]["kind"],
            "ConfigMap"
        );
    }
}
