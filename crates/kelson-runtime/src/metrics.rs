//! Prometheus metrics on a separate local listener (`GET /metrics`).
//!
//! Metrics use `prometheus-client`. A daemon registers its metrics in one [`SharedRegistry`]
//! — the process-wide one from [`registry`], or its own — and [`serve`] exposes it with axum on
//! its own address (`--metrics-addr`), away from the daemon's API port so scraping never
//! competes with, or needs the credentials of, the real API.
//!
//! The body is `prometheus-client`'s text encoding (OpenMetrics-style, which Prometheus's
//! 0.0.4 text parser also reads). The content type follows the scraper's `Accept` header:
//! `application/openmetrics-text; version=1.0.0` when asked for, otherwise
//! `text/plain; version=0.0.4`.
//!
//! [`ProcessCollector`] adds the standard `process_*` metrics, read from `/proc/self` at scrape
//! time (resident memory, CPU seconds, open fds, start time) — cheap, and nothing to update.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::task::JoinHandle;

use crate::RuntimeError;

/// A registry shared between the code that registers metrics and the HTTP handler.
pub type SharedRegistry = Arc<Mutex<Registry>>;

/// Content type for the Prometheus text format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type for OpenMetrics text 1.0.0.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The process-wide registry, created on first use with the `process_*` metrics in it.
pub fn registry() -> SharedRegistry {
    static GLOBAL: OnceLock<SharedRegistry> = OnceLock::new();
    GLOBAL.get_or_init(new_registry).clone()
}

/// A fresh registry with the `process_*` metrics registered.
pub fn new_registry() -> SharedRegistry {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(ProcessCollector));
    Arc::new(Mutex::new(reg))
}

/// Serves the process-wide registry on `addr` when `--metrics-addr` was given (after `register`
/// added the component's collectors); returns the bound address.
pub async fn serve_optional(
    addr: Option<SocketAddr>,
    register: impl FnOnce(&mut Registry),
) -> Result<Option<SocketAddr>, RuntimeError> {
    let Some(addr) = addr else { return Ok(None) };
    let reg = registry();
    register(&mut reg.lock());
    let (bound, _task) = serve(addr, reg).await?;
    tracing::info!(%bound, "serving /metrics");
    Ok(Some(bound))
}

/// Encode the registry in the text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Serve `GET /metrics` on `addr`. Returns the bound address (useful with port 0) and the
/// server task; abort the task to stop serving.
pub async fn serve(
    addr: SocketAddr,
    registry: SharedRegistry,
) -> Result<(SocketAddr, JoinHandle<()>), RuntimeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::MetricsBind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| RuntimeError::MetricsBind { addr, source })?;
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(registry);
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "metrics server stopped");
        }
    });
    tracing::info!(addr = %local, "serving metrics");
    Ok((local, task))
}

async fn metrics_handler(State(registry): State<SharedRegistry>, headers: HeaderMap) -> Response {
    let body = {
        let reg = registry.lock();
        encode(&reg)
    };
    let Ok(body) = body else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response();
    };
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let ct = if wants_openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        TEXT_CONTENT_TYPE
    };
    ([(header::CONTENT_TYPE, ct)], body).into_response()
}

/// Standard process metrics read from `/proc/self` on each scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

/// Linux reports /proc times in USER_HZ, which the kernel ABI fixes at 100.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says about us.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
}

impl ProcessStats {
    /// Read the current process's stats; fields that cannot be read are `None`.
    pub fn read() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kb = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .map(|n| n * 1024)
        };
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the parenthesised command name, which may itself contain spaces.
        let after: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // `after[0]` is field 3 (state); utime=14, stime=15, starttime=22.
        let field = |n: usize| after.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let cpu_seconds = match (field(14), field(15)) {
            (Some(u), Some(s)) => Some((u + s) as f64 / USER_HZ),
            _ => None,
        };
        let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let start_time_seconds = match (btime, field(22)) {
            (Some(b), Some(ticks)) => Some(b as f64 + ticks as f64 / USER_HZ),
            _ => None,
        };
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        ProcessStats {
            resident_bytes: kb("VmRSS:"),
            virtual_bytes: kb("VmSize:"),
            cpu_seconds,
            start_time_seconds,
            open_fds,
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = ProcessStats::read();
        let gauges: [(&str, &str, Option<Unit>, Option<f64>); 4] = [
            (
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(Unit::Bytes),
                s.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes.",
                Some(Unit::Bytes),
                s.virtual_bytes.map(|v| v as f64),
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(Unit::Seconds),
                s.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                s.open_fds.map(|v| v as f64),
            ),
        ];
        for (name, help, unit, value) in gauges.iter() {
            if let Some(v) = value {
                let g = ConstGauge::new(*v);
                g.encode(encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)?;
            }
        }
        if let Some(cpu) = s.cpu_seconds {
            let c = ConstCounter::new(cpu);
            c.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc() {
        let s = ProcessStats::read();
        assert!(s.resident_bytes.unwrap() > 0);
        assert!(s.open_fds.unwrap() >= 3);
        let start = s.start_time_seconds.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Started within the last hour, not in the future (allowing USER_HZ rounding).
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "start={start} now={now}"
        );
    }

    #[test]
    fn process_metrics_encode() {
        let reg = new_registry();
        let text = encode(&reg.lock()).unwrap();
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_start_time_seconds "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }
}
