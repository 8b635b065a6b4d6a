//! `GET /containerLogs/<ns>/<pod>/<container>`: container logs from the CRI log files.
//!
//! The runtime writes each container's output to `<pod log dir>/<container>/<restart>.log`
//! in the CRI format — `<RFC 3339 nano timestamp> <stdout|stderr> <F|P> <content>`, where `P`
//! marks a line the runtime split (no newline after it). The container's status tells its
//! file (`log_path`), so the current container and, for `?previous`, the one before it (by
//! creation time, same pod UID) are found through the runtime, as upstream does.
//!
//! Options as upstream's PodLogOptions: `timestamps` (prefix each line with its timestamp),
//! `tailLines`, `sinceSeconds`/`sinceTime`, `limitBytes`, `follow`. Following polls the file
//! (every 100 ms; no inotify, so it works on any file system) and ends once the container is no
//! longer running and the file has stopped growing, or when the client goes away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use k8s_cri::v1 as cri;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::{query_bool, query_get, query_pairs, status_error, Body, ServerState};
use crate::pod::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};

const POLL: Duration = Duration::from_millis(100);
const RUNNING_CHECK: Duration = Duration::from_secs(1);

/// Parsed PodLogOptions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<OffsetDateTime>,
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// From the query; `Err` is a message for a 400.
    pub fn parse(q: Option<&str>, now: OffsetDateTime) -> Result<Self, String> {
        let p = query_pairs(q);
        let int = |k: &str| -> Result<Option<i64>, String> {
            query_get(&p, k)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("invalid value {v:?} for {k}: must be an integer"))
                })
                .transpose()
        };
        let tail = int("tailLines")?;
        if tail.is_some_and(|t| t < 0) {
            return Err("tailLines: Invalid value: must be greater than or equal to 0".into());
        }
        let since_s = int("sinceSeconds")?;
        if since_s.is_some_and(|s| s < 1) {
            return Err("sinceSeconds: Invalid value: must be greater than 0".into());
        }
        let limit = int("limitBytes")?;
        if limit.is_some_and(|l| l < 1) {
            return Err("limitBytes: Invalid value: must be greater than 0".into());
        }
        let since_time = query_get(&p, "sinceTime")
            .map(|v| {
                OffsetDateTime::parse(v, &Rfc3339)
                    .map_err(|_| format!("invalid value {v:?} for sinceTime: must be RFC 3339"))
            })
            .transpose()?;
        if since_s.is_some() && since_time.is_some() {
            return Err("at most one of sinceTime or sinceSeconds may be specified".into());
        }
        Ok(LogOptions {
            follow: query_bool(&p, "follow"),
            previous: query_bool(&p, "previous"),
            timestamps: query_bool(&p, "timestamps"),
            tail_lines: tail.map(|t| t as usize),
            since: since_time.or(since_s.map(|s| now - time::Duration::seconds(s))),
            limit_bytes: limit.map(|l| l as u64),
        })
    }
}

/// One CRI log line: (timestamp text, whether the line is complete, content).
pub fn parse_line(line: &[u8]) -> Option<(&str, bool, &[u8])> {
    let mut it = line.splitn(4, |b| *b == b' ');
    let ts = std::str::from_utf8(it.next()?).ok()?;
    let _stream = it.next()?;
    let tag = it.next()?;
    let content = it.next().unwrap_or_default();
    Some((ts, tag != b"P", content))
}

/// Turns CRI lines into what `kubectl logs` prints.
#[derive(Debug)]
pub struct Formatter {
    opts: LogOptions,
    at_line_start: bool,
    written: u64,
}

impl Formatter {
    pub fn new(opts: LogOptions) -> Self {
        Formatter {
            opts,
            at_line_start: true,
            written: 0,
        }
    }

    /// Whether `limitBytes` has been reached.
    pub fn done(&self) -> bool {
        self.opts.limit_bytes.is_some_and(|l| self.written >= l)
    }

    /// Appends the output for one CRI line (without its trailing newline) to `out`.
    pub fn push(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if self.done() {
            return;
        }
        let start = out.len();
        match parse_line(line) {
            Some((ts, full, content)) => {
                if let Some(since) = self.opts.since {
                    if OffsetDateTime::parse(ts, &Rfc3339).is_ok_and(|t| t < since) {
                        return;
                    }
                }
                if self.opts.timestamps && self.at_line_start {
                    out.extend_from_slice(ts.as_bytes());
                    out.push(b' ');
                }
                out.extend_from_slice(content);
                if full {
                    out.push(b'\n');
                }
                self.at_line_start = full;
            }
            None => {
                // Not CRI-formatted: pass it through rather than lose it.
                out.extend_from_slice(line);
                out.push(b'\n');
                self.at_line_start = true;
            }
        }
        let added = (out.len() - start) as u64;
        if let Some(limit) = self.opts.limit_bytes {
            let room = limit.saturating_sub(self.written);
            if added > room {
                out.truncate(start + room as usize);
            }
        }
        self.written += (out.len() - start) as u64;
    }
}

/// Complete lines of `data` (each without its '\n') and how many bytes they span.
fn complete_lines(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let end = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let lines = data[..end]
        .split(|b| *b == b'\n')
        .take(data[..end].iter().filter(|b| **b == b'\n').count())
        .collect();
    (lines, end)
}

/// The output for a whole file's contents with `tailLines` applied; returns the bytes consumed.
pub fn render_initial(
    data: &[u8],
    f: &mut Formatter,
    tail: Option<usize>,
    out: &mut Vec<u8>,
) -> usize {
    let (lines, end) = complete_lines(data);
    let skip = tail.map_or(0, |t| lines.len().saturating_sub(t));
    for l in &lines[skip..] {
        f.push(l, out);
    }
    end
}

async fn find_container(
    state: &ServerState,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<cri::Container, Response<Body>> {
    let labels = HashMap::from([
        (LABEL_POD_NAMESPACE.to_string(), ns.to_string()),
        (LABEL_POD_NAME.to_string(), pod.to_string()),
        (LABEL_CONTAINER_NAME.to_string(), container.to_string()),
    ]);
    let mut all = state
        .shared
        .cri
        .list_containers(None, labels)
        .await
        .map_err(|e| {
            status_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })?;
    all.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    // A pod recreated under the same name: only the newest pod's containers count.
    if let Some(uid) = all
        .first()
        .and_then(|c| c.labels.get(LABEL_POD_UID))
        .cloned()
    {
        all.retain(|c| c.labels.get(LABEL_POD_UID) == Some(&uid));
    }
    let pick = if previous { all.get(1) } else { all.first() };
    pick.cloned().ok_or_else(|| {
        let msg = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
        };
        status_error(StatusCode::BAD_REQUEST, "BadRequest", msg)
    })
}

async fn is_running(state: &ServerState, id: &str) -> bool {
    state
        .shared
        .cri
        .container_status(id)
        .await
        .is_ok_and(|s| s.state == cri::ContainerState::ContainerRunning as i32)
}

pub async fn serve(
    state: &Arc<ServerState>,
    ns: &str,
    pod: &str,
    container: &str,
    query: Option<&str>,
) -> Response<Body> {
    let opts = match LogOptions::parse(query, OffsetDateTime::now_utc()) {
        Ok(o) => o,
        Err(m) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", m),
    };
    let c = match find_container(state, ns, pod, container, opts.previous).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let path = match state.shared.cri.container_status(&c.id).await {
        Ok(s) => s.log_path,
        Err(e) => {
            return status_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        }
    };
    let data = match tokio::fs::read(&path).await {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return status_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("reading {path}: {e}"),
            )
        }
    };
    let follow = opts.follow && !opts.previous;
    let tail = opts.tail_lines;
    let mut f = Formatter::new(opts);
    let mut out = Vec::new();
    let offset = render_initial(&data, &mut f, tail, &mut out);
    let body = if !follow || f.done() {
        super::full(out)
    } else {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
        let state = state.clone();
        let id = c.id.clone();
        tokio::spawn(async move {
            if !out.is_empty() && tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
                return;
            }
            follow_file(&state, &id, &path, offset as u64, f, tx).await;
        });
        StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

async fn follow_file(
    state: &ServerState,
    id: &str,
    path: &str,
    mut offset: u64,
    mut f: Formatter,
    tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
) {
    let mut last_check = Instant::now();
    let mut pending = Vec::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => return,
        }
        let mut grew = false;
        if let Ok(mut file) = tokio::fs::File::open(path).await {
            if file.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                let mut buf = Vec::new();
                if file.read_to_end(&mut buf).await.is_ok() && !buf.is_empty() {
                    grew = true;
                    offset += buf.len() as u64;
                    pending.extend_from_slice(&buf);
                }
            }
        }
        if grew {
            let (lines, end) = complete_lines(&pending);
            let mut out = Vec::new();
            for l in lines {
                f.push(l, &mut out);
            }
            pending.drain(..end);
            if !out.is_empty() && tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
                return;
            }
            if f.done() {
                return;
            }
            continue;
        }
        if last_check.elapsed() >= RUNNING_CHECK {
            last_check = Instant::now();
            if !is_running(state, id).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &[u8] = b"2024-01-01T00:00:01.000000001Z stdout F one\n\
2024-01-01T00:00:02.000000001Z stderr F two\n\
2024-01-01T00:00:03.000000001Z stdout P thr\n\
2024-01-01T00:00:03.000000002Z stdout F ee\n\
2024-01-01T00:00:04.000000001Z stdout F par";

    fn render(q: &str) -> String {
        let now = OffsetDateTime::parse("2024-01-01T00:00:05Z", &Rfc3339).unwrap();
        let o = LogOptions::parse(Some(q), now).unwrap();
        let tail = o.tail_lines;
        let mut f = Formatter::new(o);
        let mut out = Vec::new();
        render_initial(LOG, &mut f, tail, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn cri_lines_render_like_kubectl_logs() {
        assert_eq!(render(""), "one\ntwo\nthree\n");
        assert_eq!(render("tailLines=2"), "three\n");
        assert_eq!(render("tailLines=1"), "ee\n");
        assert_eq!(
            render("timestamps=true&tailLines=2"),
            "2024-01-01T00:00:03.000000001Z three\n"
        );
        assert_eq!(render("sinceSeconds=3"), "two\nthree\n");
        assert_eq!(render("limitBytes=6"), "one\ntw");
    }

    #[test]
    fn bad_options_are_rejected() {
        let now = OffsetDateTime::now_utc();
        assert!(LogOptions::parse(Some("tailLines=-1"), now).is_err());
        assert!(LogOptions::parse(Some("tailLines=x"), now).is_err());
        assert!(LogOptions::parse(Some("sinceSeconds=0"), now).is_err());
        assert!(LogOptions::parse(Some("limitBytes=0"), now).is_err());
        let o = LogOptions::parse(Some("follow=true&previous=1"), now).unwrap();
        assert!(o.follow && o.previous);
    }
}
