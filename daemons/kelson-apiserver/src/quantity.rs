//! Canonical form of resource quantities, as upstream's `resource.Quantity.String()` prints
//! them (k8s.io/apimachinery `pkg/api/resource/quantity.go`, `CanonicalizeBytes`): the
//! printers show `1Gi` for a volume whose spec says `1024Mi`.
//!
//! Hand-written: k8s-openapi's `Quantity` is only the string, and the quantity crates on
//! crates.io parse to floats (losing upstream's exact rules). A quantity here is an exact
//! decimal `mantissa × 10^exponent` in `i128` with the format its suffix chose (binary `Ki`..
//! `Ei`, decimal SI `n`..`E`, or an `e<n>` exponent), which covers every value the API
//! accepts; anything that does not parse (or would overflow) is printed as written.
//!
//! The rules, as upstream's:
//! - parsing rounds up (away from zero) to nano units;
//! - zero prints `0`;
//! - binary quantities under 1024 in magnitude, or not whole, print as decimal SI;
//! - binary quantities print the largest power-of-1024 suffix that divides them exactly
//!   (`1536Mi` stays, `1024Mi` → `1Gi`, `1.5Ki` → `1536`);
//! - decimal quantities drop trailing zeros into an exponent that is a multiple of 3 and
//!   print its suffix (`1000` → `1k`, `0.5` → `500m`, `1000e0` → `1e3`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    BinarySi,
    DecimalSi,
    DecimalExponent,
}

/// `mantissa × 10^exponent` with the format of its suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quantity {
    mantissa: i128,
    exponent: i32,
    format: Format,
}

/// The smallest exponent a quantity keeps (nano units).
const MIN_EXPONENT: i32 = -9;

fn pow10(e: u32) -> Option<i128> {
    10i128.checked_pow(e)
}

fn parse(s: &str) -> Option<Quantity> {
    let (neg, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (num, suffix) = rest.split_at(num_len);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let digits = format!("{int}{frac}");
    // Leading zeros carry no value; i128 holds 38 digits.
    let digits = digits.trim_start_matches('0');
    if digits.len() > 38 {
        return None;
    }
    let mut mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let mut exponent = -i32::try_from(frac.len()).ok()?;
    let format = match suffix {
        "" => Format::DecimalSi,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            let power = match suffix {
                "Ki" => 10,
                "Mi" => 20,
                "Gi" => 30,
                "Ti" => 40,
                "Pi" => 50,
                _ => 60,
            };
            mantissa = mantissa.checked_mul(1i128 << power)?;
            Format::BinarySi
        }
        "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => {
            exponent += match suffix {
                "n" => -9,
                "u" => -6,
                "m" => -3,
                "k" => 3,
                "M" => 6,
                "G" => 9,
                "T" => 12,
                "P" => 15,
                _ => 18,
            };
            Format::DecimalSi
        }
        e if e.starts_with(['e', 'E']) && e.len() > 1 => {
            let n: i32 = e[1..].parse().ok()?;
            if n.abs() > 1000 {
                return None;
            }
            exponent += n;
            Format::DecimalExponent
        }
        _ => return None,
    };
    // Round up (away from zero) to nano units, as upstream's parser does.
    if exponent < MIN_EXPONENT {
        let div = pow10(u32::try_from(MIN_EXPONENT - exponent).ok()?)?;
        let (q, r) = (mantissa / div, mantissa % div);
        mantissa = if r != 0 { q + 1 } else { q };
        exponent = MIN_EXPONENT;
    }
    if neg {
        mantissa = -mantissa;
    }
    Some(Quantity {
        mantissa,
        exponent,
        format,
    })
}

/// Divides out every factor `base` of `v` (not of zero); returns the rest and the count.
fn remove_factors(mut v: i128, base: i128) -> (i128, i32) {
    let mut n = 0;
    while v != 0 && v % base == 0 {
        v /= base;
        n += 1;
    }
    (v, n)
}

impl Quantity {
    /// The value as a whole number, if it is one (and fits).
    fn whole(&self) -> Option<i128> {
        if self.exponent >= 0 {
            self.mantissa
                .checked_mul(pow10(u32::try_from(self.exponent).ok()?)?)
        } else {
            let div = pow10(u32::try_from(-self.exponent).ok()?)?;
            (self.mantissa % div == 0).then(|| self.mantissa / div)
        }
    }

    fn canonical(&self) -> Option<String> {
        if self.mantissa == 0 {
            return Some("0".into());
        }
        let mut format = self.format;
        if format == Format::BinarySi {
            // Upstream: |q| < 1024 prints decimal "to avoid rounding and confusion", and a
            // value that is not whole would lose precision in binary.
            match self.whole() {
                Some(w) if w.abs() >= 1024 => {
                    let (n, k) = remove_factors(w, 1024);
                    let suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
                    return Some(format!("{n}{}", suffixes.get(usize::try_from(k).ok()?)?));
                }
                _ => format = Format::DecimalSi,
            }
        }
        let (mut n, times) = remove_factors(self.mantissa, 10);
        let mut e = self.exponent + times;
        match e % 3 {
            1 | -2 => {
                n = n.checked_mul(10)?;
                e -= 1;
            }
            2 | -1 => {
                n = n.checked_mul(100)?;
                e -= 2;
            }
            _ => {}
        }
        let si = match e {
            -9 => Some("n"),
            -6 => Some("u"),
            -3 => Some("m"),
            0 => Some(""),
            3 => Some("k"),
            6 => Some("M"),
            9 => Some("G"),
            12 => Some("T"),
            15 => Some("P"),
            18 => Some("E"),
            _ => None,
        };
        Some(match (format, si) {
            (Format::DecimalSi, Some(s)) => format!("{n}{s}"),
            (_, _) if e == 0 => n.to_string(),
            _ => format!("{n}e{e}"),
        })
    }
}

/// `s` as upstream's `Quantity.String()` prints it; unparsable input comes back unchanged.
pub fn canonical(s: &str) -> String {
    parse(s)
        .and_then(|q| q.canonical())
        .unwrap_or_else(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn canonical_forms_are_upstreams() {
        // Pairs from upstream's quantity_test.go (TestQuantityParse / TestQuantityString).
        for (input, want) in [
            ("1024Mi", "1Gi"),
            ("1Gi", "1Gi"),
            ("5Gi", "5Gi"),
            ("1536Mi", "1536Mi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("1Ki", "1Ki"),
            ("1.5Ki", "1536"),
            ("1000Mi", "1000Mi"),
            ("1023", "1023"),
            ("100Ki", "100Ki"),
            ("0.5Ki", "512"),
            ("1048576Ki", "1Gi"),
            ("1Ei", "1Ei"),
            ("-1Gi", "-1Gi"),
            ("0", "0"),
            ("0Gi", "0"),
            ("0.0", "0"),
            ("1000", "1k"),
            ("1000000", "1M"),
            ("1500m", "1500m"),
            ("1.5", "1500m"),
            ("0.5", "500m"),
            ("0.1", "100m"),
            ("100m", "100m"),
            ("10G", "10G"),
            ("1000M", "1G"),
            ("12e6", "12e6"),
            ("1e3", "1e3"),
            ("1000e0", "1e3"),
            ("1E3", "1e3"),
            ("1e-3", "1e-3"),
            ("100u", "100u"),
            ("0.1n", "1n"),
            ("1.0000000001", "1000000001n"),
            ("-0.1n", "-1n"),
            ("+5Mi", "5Mi"),
            ("001", "1"),
            (".5", "500m"),
        ] {
            assert_eq!(canonical(input), want, "{input}");
        }
    }

    #[test]
    fn what_does_not_parse_prints_as_written() {
        for s in ["", "abc", "1.2.3", "1Qi", "1e", "--1", "1 Gi", "."] {
            assert_eq!(canonical(s), s);
        }
    }
}
