//! Go-style duration flags (`500ms`, `15s`, `1m30s`, `2h`), as upstream components take them
//! (`--leader-elect-lease-duration=15s`), and the leader-election timing rules every
//! leader-elected Kelson daemon shares. One parser for all daemons so a value accepted by one
//! is accepted by all.

use std::time::Duration;

/// A duration string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?} (expected e.g. 500ms, 15s, 1m30s)")]
pub struct InvalidDuration(pub String);

/// Parses a Go duration (`time.ParseDuration`): a sequence of decimal numbers with units `ns`,
/// `us`/`µs`, `ms`, `s`, `m`, `h`; a bare number is an error except `0`, as in Go.
pub fn parse_duration(s: &str) -> Result<Duration, InvalidDuration> {
    let err = || InvalidDuration(s.to_string());
    let t = s.trim();
    if t.is_empty() {
        return Err(err());
    }
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let n: f64 = rest[..n_end].parse().map_err(|_| err())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[u_end..];
        total += Duration::try_from_secs_f64(n * unit).map_err(|_| err())?;
    }
    Ok(total)
}

/// Leader-election timings from the three upstream flags, checked as upstream checks them:
/// the renew deadline below the lease duration, a positive retry period.
pub fn leader_timings(
    lease: &str,
    renew: &str,
    retry: &str,
) -> Result<(Duration, Duration, Duration), String> {
    let p = |name: &str, v: &str| parse_duration(v).map_err(|e| format!("{name}: {e}"));
    let lease = p("leader-elect-lease-duration", lease)?;
    let renew = p("leader-elect-renew-deadline", renew)?;
    let retry = p("leader-elect-retry-period", retry)?;
    if renew >= lease {
        return Err(
            "leader-elect-renew-deadline must be less than leader-elect-lease-duration".into(),
        );
    }
    if retry.is_zero() {
        return Err("leader-elect-retry-period must be positive".into());
    }
    Ok((lease, renew, retry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "s", "10x", "-1s", "1m-", "abc", "30"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn leader_rules() {
        assert!(leader_timings("15s", "10s", "2s").is_ok());
        assert!(leader_timings("10s", "10s", "2s")
            .unwrap_err()
            .contains("renew-deadline"));
        assert!(leader_timings("15s", "10s", "0s")
            .unwrap_err()
            .contains("retry-period"));
        assert!(leader_timings("x", "10s", "1s")
            .unwrap_err()
            .contains("lease-duration"));
    }
}
