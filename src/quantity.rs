//! Resource quantities as people write them: memory like `64Mi`, `512m` or
//! `1g`, cpus like `0.5` or `500m`.
//!
//! Memory units are binary, whether written the Kubernetes way (`Ki`, `Mi`,
//! `Gi`, `Ti`) or the `docker run` way (`k`, `m`, `g`, `t`, any case, with an
//! optional `b`): `64Mi`, `64m` and `64MB` are all 64 × 2^20 bytes. CPU is
//! counted in millicpus internally, so `0.5`, `.5` and `500m` are all 500.

use std::fmt;

use crate::limits::quote;

/// Why a quantity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuantityError(String);

/// Parses a memory or disk size to bytes.
///
/// # Errors
/// If the text is not a non-negative number followed by a known unit, or the
/// result does not fit in 63 bits.
pub fn parse_bytes(text: &str) -> Result<i64, QuantityError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(QuantityError(format!(
            "{} is not a size (for example 64Mi, 512m, 1g or 1048576)",
            quote(text)
        )));
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "ki" | "kb" | "kib" => 10,
        "m" | "mi" | "mb" | "mib" => 20,
        "g" | "gi" | "gb" | "gib" => 30,
        "t" | "ti" | "tb" | "tib" => 40,
        _ => {
            return Err(QuantityError(format!(
                "{} has an unknown unit {} (use Ki, Mi, Gi or Ti)",
                quote(text),
                quote(unit)
            )));
        }
    };
    let value: f64 = number.parse().map_err(|_| {
        QuantityError(format!(
            "{} is not a size (for example 64Mi, 512m, 1g or 1048576)",
            quote(text)
        ))
    })?;
    let bytes = (value * (1u64 << shift) as f64).round();
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return Err(QuantityError(format!("{} is too large", quote(text))));
    }
    #[allow(clippy::cast_possible_truncation)]
    Ok(bytes as i64)
}

/// Parses a cpu amount to millicpus: `0.5` or `500m`.
///
/// # Errors
/// If the text is not a positive number of cores or of millicpus (`m`), or it
/// is finer than one millicpu.
pub fn parse_milli_cpus(text: &str) -> Result<i64, QuantityError> {
    let t = text.trim();
    let bad = || {
        QuantityError(format!(
            "{} is not a cpu amount (for example 0.5, 2 or 250m)",
            quote(text)
        ))
    };
    let millis = if let Some(m) = t.strip_suffix('m') {
        m.parse::<i64>().map_err(|_| bad())?
    } else {
        let cores: f64 = t.parse().map_err(|_| bad())?;
        if !cores.is_finite() || cores < 0.0 {
            return Err(bad());
        }
        let millis = cores * 1000.0;
        if (millis - millis.round()).abs() > 1e-6 {
            return Err(QuantityError(format!(
                "{} is finer than one millicpu (0.001)",
                quote(text)
            )));
        }
        if millis >= i64::MAX as f64 {
            return Err(QuantityError(format!("{} is too large", quote(text))));
        }
        #[allow(clippy::cast_possible_truncation)]
        let m = millis.round() as i64;
        m
    };
    if millis < 0 {
        return Err(bad());
    }
    Ok(millis)
}

/// Bytes written with the largest binary unit that keeps at most one decimal:
/// `64Mi`, `1.5Gi`, `512`.
pub fn format_bytes(bytes: i64) -> String {
    const UNITS: [(&str, i64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes.abs() >= size {
            let tenths = (bytes * 10 + size / 2) / size;
            return if tenths % 10 == 0 {
                format!("{}{unit}", tenths / 10)
            } else {
                format!("{}.{}{unit}", tenths / 10, tenths % 10)
            };
        }
    }
    bytes.to_string()
}

/// Millicpus written as cores: `0.5`, `2`, `0.25`.
pub fn format_milli_cpus(millis: i64) -> String {
    MilliCpus(millis).to_string()
}

struct MilliCpus(i64);

impl fmt::Display for MilliCpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 1000;
        let frac = self.0 % 1000;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{:03}", frac.abs());
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        let cases = [
            ("64Mi", 64 << 20),
            ("64m", 64 << 20),
            ("64MB", 64 << 20),
            ("1g", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("512Ki", 512 << 10),
            ("2Ti", 2 << 40),
            ("1048576", 1 << 20),
            ("100b", 100),
        ];
        for (text, want) in cases {
            assert_eq!(parse_bytes(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_memory_sizes() {
        for text in ["", "Mi", "64Xi", "-5Mi", "6.4.1Mi", "99999999Ti"] {
            assert!(parse_bytes(text).is_err(), "{text} should be refused");
        }
        let err = parse_bytes("64Qi").unwrap_err().to_string();
        assert!(err.contains("unknown unit"), "{err}");
    }

    #[test]
    fn cpu_amounts() {
        let cases = [
            ("0.5", 500),
            (".5", 500),
            ("2", 2000),
            ("250m", 250),
            ("0.001", 1),
            ("0", 0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_milli_cpus(text), Ok(want), "{text}");
        }
        for text in ["", "-1", "0.0005", "abc", "1.5m", "inf"] {
            assert!(parse_milli_cpus(text).is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(64 << 20), "64Mi");
        assert_eq!(format_bytes(3 << 29), "1.5Gi");
        assert_eq!(format_bytes(512), "512");
        assert_eq!(format_milli_cpus(500), "0.5");
        assert_eq!(format_milli_cpus(2000), "2");
        assert_eq!(format_milli_cpus(1250), "1.25");
    }
}
