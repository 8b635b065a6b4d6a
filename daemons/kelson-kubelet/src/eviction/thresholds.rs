//! Eviction thresholds as upstream's kubelet spells them.
//!
//! `--eviction-hard=memory.available<100Mi,nodefs.available<10%` and `--eviction-soft` list
//! `signal<quantity` or `signal<percent` pairs; `--eviction-soft-grace-period` and
//! `--eviction-minimum-reclaim` list `signal=value` pairs. The same strings are the TOML keys
//! (one form for both, so a flag replaces the file's value as a whole, as upstream's flag does).
//!
//! Defaults follow upstream (Linux): when `eviction-hard` is not given at all the hard
//! thresholds are memory.available<100Mi, nodefs.available<10%, nodefs.inodesFree<5% and
//! imagefs.available<15%; when it is given, only what it lists applies (upstream stopped
//! merging the defaults into a partial list). A soft threshold without a grace period is an
//! error, as upstream.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::resources::parse_value;

/// Upstream's default `--eviction-hard` (Linux).
pub const DEFAULT_EVICTION_HARD: &str =
    "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%";

/// An eviction signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    MemoryAvailable,
    NodeFsAvailable,
    NodeFsInodesFree,
    ImageFsAvailable,
    ImageFsInodesFree,
    PidAvailable,
}

/// Which node condition a signal drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PressureKind {
    Memory,
    Disk,
    Pid,
}

impl Signal {
    pub const ALL: [Signal; 6] = [
        Signal::MemoryAvailable,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
        Signal::PidAvailable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    pub fn parse(s: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|x| x.name() == s)
    }

    /// The resource named in eviction messages (upstream's signalToResource).
    pub fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => "ephemeral-storage",
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => "inodes",
            Signal::PidAvailable => "pids",
        }
    }

    pub fn pressure(self) -> PressureKind {
        match self {
            Signal::MemoryAvailable => PressureKind::Memory,
            Signal::PidAvailable => PressureKind::Pid,
            _ => PressureKind::Disk,
        }
    }

    /// Whether the value is bytes (printed as a quantity with a binary suffix).
    pub fn is_bytes(self) -> bool {
        matches!(
            self,
            Signal::MemoryAvailable | Signal::NodeFsAvailable | Signal::ImageFsAvailable
        )
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A threshold or reclaim amount: an absolute quantity or a percentage of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// Bytes, inodes or PIDs.
    Quantity(i128),
    /// Percent of the signal's capacity (0–100).
    Percent(f64),
}

impl Amount {
    fn parse(s: &str) -> Option<Amount> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().ok()?;
            return (0.0..=100.0).contains(&v).then_some(Amount::Percent(v));
        }
        parse_value(s).filter(|v| *v >= 0).map(Amount::Quantity)
    }

    /// The absolute value against `capacity`.
    pub fn resolve(self, capacity: i128) -> i128 {
        match self {
            Amount::Quantity(q) => q,
            Amount::Percent(p) => ((capacity as f64) * p / 100.0).round() as i128,
        }
    }
}

/// One configured threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub value: Amount,
    /// Zero for hard thresholds; how long a soft one must hold before it acts.
    pub grace: Duration,
    pub hard: bool,
    /// How much above the threshold the signal must get before the pressure counts as
    /// relieved (`--eviction-minimum-reclaim`).
    pub min_reclaim: Option<Amount>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ThresholdError {
    #[error("{flag}: {item:?} is not signal<quantity (e.g. memory.available<100Mi or nodefs.available<10%)")]
    Syntax { flag: &'static str, item: String },
    #[error("{flag}: unknown eviction signal {signal:?} (one of memory.available, nodefs.available, nodefs.inodesFree, imagefs.available, imagefs.inodesFree, pid.available)")]
    Signal { flag: &'static str, signal: String },
    #[error("{flag}: signal {signal} is listed twice")]
    Duplicate { flag: &'static str, signal: Signal },
    #[error(
        "eviction-soft-grace-period: {0:?} is not signal=duration (e.g. memory.available=1m30s)"
    )]
    Grace(String),
    #[error("eviction-soft: threshold {0} has no grace period in eviction-soft-grace-period")]
    MissingGrace(Signal),
    #[error(
        "eviction-minimum-reclaim: {0:?} is not signal=quantity (e.g. nodefs.available=500Mi)"
    )]
    Reclaim(String),
}

fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|i| !i.is_empty())
}

fn signal(flag: &'static str, s: &str) -> Result<Signal, ThresholdError> {
    Signal::parse(s.trim()).ok_or_else(|| ThresholdError::Signal {
        flag,
        signal: s.trim().into(),
    })
}

/// Parses `signal<amount,...`.
pub fn parse_list(flag: &'static str, s: &str) -> Result<BTreeMap<Signal, Amount>, ThresholdError> {
    let mut out = BTreeMap::new();
    for item in items(s) {
        let syntax = || ThresholdError::Syntax {
            flag,
            item: item.into(),
        };
        let (sig, val) = item.split_once('<').ok_or_else(syntax)?;
        let sig = signal(flag, sig)?;
        let val = Amount::parse(val).ok_or_else(syntax)?;
        if out.insert(sig, val).is_some() {
            return Err(ThresholdError::Duplicate { flag, signal: sig });
        }
    }
    Ok(out)
}

/// Parses a Go-style duration (`1m30s`, `90s`, `1h`, `500ms`) or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|n| *n > 0)?;
        let v: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(v * secs);
    }
    Some(total)
}

/// Parses `signal=value,...` with `value` checked by `parse`.
fn parse_pairs<T>(
    s: &str,
    flag: &'static str,
    parse: impl Fn(&str) -> Option<T>,
    err: impl Fn(String) -> ThresholdError,
) -> Result<BTreeMap<Signal, T>, ThresholdError> {
    let mut out = BTreeMap::new();
    for item in items(s) {
        let (sig, val) = item.split_once('=').ok_or_else(|| err(item.into()))?;
        let sig = signal(flag, sig)?;
        let v = parse(val).ok_or_else(|| err(item.into()))?;
        if out.insert(sig, v).is_some() {
            return Err(ThresholdError::Duplicate { flag, signal: sig });
        }
    }
    Ok(out)
}

/// All thresholds from the four upstream settings (`hard` None = upstream's defaults).
pub fn parse_thresholds(
    hard: Option<&str>,
    soft: Option<&str>,
    soft_grace: Option<&str>,
    min_reclaim: Option<&str>,
) -> Result<Vec<Threshold>, ThresholdError> {
    let hard = parse_list("eviction-hard", hard.unwrap_or(DEFAULT_EVICTION_HARD))?;
    let soft = parse_list("eviction-soft", soft.unwrap_or(""))?;
    let grace = parse_pairs(
        soft_grace.unwrap_or(""),
        "eviction-soft-grace-period",
        parse_duration,
        ThresholdError::Grace,
    )?;
    let reclaim = parse_pairs(
        min_reclaim.unwrap_or(""),
        "eviction-minimum-reclaim",
        Amount::parse,
        ThresholdError::Reclaim,
    )?;
    let mut out = Vec::new();
    for (signal, value) in hard {
        out.push(Threshold {
            signal,
            value,
            grace: Duration::ZERO,
            hard: true,
            min_reclaim: reclaim.get(&signal).copied(),
        });
    }
    for (signal, value) in soft {
        let grace = *grace
            .get(&signal)
            .ok_or(ThresholdError::MissingGrace(signal))?;
        out.push(Threshold {
            signal,
            value,
            grace,
            hard: false,
            min_reclaim: reclaim.get(&signal).copied(),
        });
    }
    Ok(out)
}

/// Formats a signal value like upstream's messages (`100Mi` for bytes, plain for counts).
pub fn format_value(signal: Signal, v: i128) -> String {
    if !signal.is_bytes() {
        return v.to_string();
    }
    format_bytes(v)
}

/// Bytes as a Kubernetes quantity with the largest exact binary suffix (`1536Ki`, `100Mi`).
pub fn format_bytes(v: i128) -> String {
    if v == 0 {
        return "0".into();
    }
    for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        let unit = 1i128 << shift;
        if v % unit == 0 {
            return format!("{}{suffix}", v / unit);
        }
    }
    // Not a whole number of KiB: round to Ki like cAdvisor-based messages do.
    format!("{}Ki", (v + 1023) / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_upstreams() {
        let t = parse_thresholds(None, None, None, None).unwrap();
        let by: BTreeMap<Signal, Amount> = t.iter().map(|t| (t.signal, t.value)).collect();
        assert_eq!(by[&Signal::MemoryAvailable], Amount::Quantity(100 << 20));
        assert_eq!(by[&Signal::NodeFsAvailable], Amount::Percent(10.0));
        assert_eq!(by[&Signal::NodeFsInodesFree], Amount::Percent(5.0));
        assert_eq!(by[&Signal::ImageFsAvailable], Amount::Percent(15.0));
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|t| t.hard && t.grace.is_zero()));
    }

    #[test]
    fn lists_parse_and_bad_input_names_the_problem() {
        let t = parse_thresholds(
            Some("memory.available<1Gi"),
            Some("nodefs.available<20%"),
            Some("nodefs.available=1m30s"),
            Some("memory.available=500Mi"),
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].min_reclaim, Some(Amount::Quantity(500 << 20)));
        assert!(!t[1].hard);
        assert_eq!(t[1].grace, Duration::from_secs(90));
        // A given list replaces the defaults.
        assert_eq!(
            parse_thresholds(Some(""), None, None, None).unwrap(),
            vec![]
        );
        assert!(matches!(
            parse_thresholds(Some("memory.available>1Gi"), None, None, None),
            Err(ThresholdError::Syntax { .. })
        ));
        assert!(matches!(
            parse_thresholds(Some("memory.free<1Gi"), None, None, None),
            Err(ThresholdError::Signal { .. })
        ));
        assert!(matches!(
            parse_thresholds(Some("nodefs.available<120%"), None, None, None),
            Err(ThresholdError::Syntax { .. })
        ));
        assert_eq!(
            parse_thresholds(None, Some("memory.available<1Gi"), None, None),
            Err(ThresholdError::MissingGrace(Signal::MemoryAvailable))
        );
        assert!(matches!(
            parse_thresholds(
                Some("memory.available<1Gi,memory.available<2Gi"),
                None,
                None,
                None
            ),
            Err(ThresholdError::Duplicate { .. })
        ));
    }

    #[test]
    fn durations_and_amounts() {
        assert_eq!(parse_duration("5m0s"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("42"), Some(Duration::from_secs(42)));
        assert_eq!(parse_duration("1x"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(Amount::Percent(10.0).resolve(1000), 100);
        assert_eq!(Amount::Quantity(7).resolve(1000), 7);
        assert_eq!(format_bytes(100 << 20), "100Mi");
        assert_eq!(format_bytes(1536 << 10), "1536Ki");
        assert_eq!(format_value(Signal::PidAvailable, 1000), "1000");
    }
}
