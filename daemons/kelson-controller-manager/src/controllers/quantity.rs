//! Kubernetes resource quantities (`500m`, `128Mi`, `1.5G`, `2e3`) as exact integers of
//! milli-units, for summing requests and limits in the resourcequota controller.
//!
//! Hand-written rather than a crate: k8s-openapi's `Quantity` is only the string, and the
//! quantity crates on crates.io are thin and unmaintained. Milli-units as `i128` cover every
//! value the API accepts for cpu, memory and storage exactly (upstream's `inf.Dec` is overkill
//! for sums of requests); formatting picks the canonical suffix upstream would print for
//! whole numbers (`Mi`/`Gi` for binary-divisible values, plain numbers or `m` otherwise).

/// Parses a quantity into milli-units (`"1"` → 1000, `"250m"` → 250, `"1Ki"` → 1_024_000).
pub fn parse_milli(s: &str) -> Option<i128> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (mul_num, mul_den): (i128, i128) = match suffix {
        "" => (1000, 1),
        "m" => (1, 1),
        "k" => (1000 * 1000, 1),
        "M" => (1000 * 1_000_000, 1),
        "G" => (1000 * 1_000_000_000, 1),
        "T" => (1000 * 1_000_000_000_000, 1),
        "P" => (1000 * 1_000_000_000_000_000, 1),
        "E" => (1000 * 1_000_000_000_000_000_000, 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        "Pi" => (1000 << 50, 1),
        "Ei" => (1000 << 60, 1),
        "n" => (1, 1_000_000),
        "u" => (1, 1000),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().ok()?;
            if !(-3..=18).contains(&exp) {
                return None;
            }
            if exp >= 0 {
                (1000 * 10i128.pow(exp as u32), 1)
            } else {
                (1000, 10i128.pow((-exp) as u32))
            }
        }
        _ => return None,
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let neg = int.starts_with('-');
    let int = int.trim_start_matches(['+', '-']);
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = format!("{int}{frac}");
    let n: i128 = digits.parse().ok()?;
    let scale = 10i128.checked_pow(frac.len() as u32)?;
    // Round up like upstream's ScaledValue when converting to milli-units.
    let num = n.checked_mul(mul_num)?;
    let den = scale * mul_den;
    let v = (num + den - 1) / den;
    Some(if neg { -v } else { v })
}

/// Formats milli-units canonically: binary suffixes when `binary` and exact, `m` for
/// fractions, plain integers otherwise.
pub fn format_milli(v: i128, binary: bool) -> String {
    if v % 1000 != 0 {
        return format!("{v}m");
    }
    let n = v / 1000;
    if binary && n != 0 {
        for (shift, suf) in [
            (60, "Ei"),
            (50, "Pi"),
            (40, "Ti"),
            (30, "Gi"),
            (20, "Mi"),
            (10, "Ki"),
        ] {
            if n % (1i128 << shift) == 0 {
                return format!("{}{suf}", n >> shift);
            }
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("250m"), Some(250));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("128Mi"), Some(128 * 1000 * 1024 * 1024));
        assert_eq!(parse_milli("1k"), Some(1_000_000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("x"), None);
        assert_eq!(parse_milli("1Q"), None);
        assert_eq!(format_milli(1500, false), "1500m");
        assert_eq!(format_milli(2000, false), "2");
        assert_eq!(format_milli(parse_milli("192Mi").unwrap(), true), "192Mi");
        assert_eq!(format_milli(0, true), "0");
    }
}
