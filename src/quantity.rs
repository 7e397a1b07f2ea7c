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
    let too_large = || QuantityError(format!("{text:?} is too large"));
    if number.bytes().all(|b| b.is_ascii_digit()) {
        // A whole number is counted exactly: a float would round it past 2^53.
        return number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .and_then(|b| i64::try_from(b).ok())
            .filter(|b| *b < i64::MAX)
            .ok_or_else(too_large);
    }
    let value: f64 = number.parse().map_err(|_| {
        QuantityError(format!(
            "{} is not a size (for example 64Mi, 512m, 1g or 1048576)",
            quote(text)
        ))
    })?;
    let bytes = (value * (1u64 << shift) as f64).round();
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return Err(too_large());
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
    } else if let Some(millis) = exact_milli_cpus(text, t) {
        millis?
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

/// Cores written as plain decimals (`2`, `0.5`, `.25`, `1.500`), counted
/// exactly, where a float would round past 2^53: `None` if `t` is not such a
/// decimal (`1e3` and `+1` are left to the float parser).
fn exact_milli_cpus(text: &str, t: &str) -> Option<Result<i64, QuantityError>> {
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + frac.len() == 0 || !digits(whole) || !digits(frac) {
        return None;
    }
    if frac.len() > 3 && frac[3..].bytes().any(|b| b != b'0') {
        return Some(Err(QuantityError(format!(
            "{text:?} is finer than one millicpu (0.001)"
        ))));
    }
    let frac = frac.get(..3).unwrap_or(frac);
    let thousandths = format!("{frac:0<3}").parse::<i64>().unwrap_or(0);
    let whole = if whole.is_empty() {
        Some(0)
    } else {
        whole.parse::<i64>().ok()
    };
    Some(
        whole
            .and_then(|w| w.checked_mul(1000))
            .and_then(|m| m.checked_add(thousandths))
            .ok_or_else(|| QuantityError(format!("{text:?} is too large"))),
    )
}

/// Bytes written with the largest binary unit that keeps at most one decimal:
/// `64Mi`, `1.5Gi`, `512`.
pub fn format_bytes(bytes: i64) -> String {
    const UNITS: [(&str, u128); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    let sign = if bytes < 0 { "-" } else { "" };
    // Wide enough that no size overflows on the way.
    let magnitude = u128::from(bytes.unsigned_abs());
    for (unit, size) in UNITS {
        if magnitude >= size {
            let tenths = (magnitude * 10 + size / 2) / size;
            return if tenths % 10 == 0 {
                format!("{sign}{}{unit}", tenths / 10)
            } else {
                format!("{sign}{}.{}{unit}", tenths / 10, tenths % 10)
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
        let sign = if self.0 < 0 { "-" } else { "" };
        let whole = self.0.unsigned_abs() / 1000;
        let frac = self.0.unsigned_abs() % 1000;
        if frac == 0 {
            return write!(f, "{sign}{whole}");
        }
        let digits = format!("{frac:03}");
        write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
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
        // Found by the properties below: these overflowed, lost the sign or
        // printed "-1.-5Mi".
        assert_eq!(format_bytes(i64::MAX), "8388608Ti");
        assert_eq!(format_bytes(-(3 << 19)), "-1.5Mi");
        assert_eq!(format_bytes(i64::MIN), "-8388608Ti");
        assert_eq!(format_milli_cpus(-500), "-0.5");
        assert_eq!(format_milli_cpus(i64::MIN), "-9223372036854775.808");
    }

    #[test]
    fn large_amounts_are_exact() {
        // A float would round these (found by the properties below).
        assert_eq!(parse_bytes("9007199254740993"), Ok(9_007_199_254_740_993));
        assert_eq!(parse_bytes("8388607Ti"), Ok(8_388_607 << 40));
        assert!(parse_bytes("8388608Ti").is_err());
        assert_eq!(
            parse_milli_cpus("15500359604977.011"),
            Ok(15_500_359_604_977_011)
        );
        assert_eq!(parse_milli_cpus("9223372036854775.807"), Ok(i64::MAX));
        assert!(parse_milli_cpus("9223372036854775.808").is_err());
        // Other spellings still go through the float parser.
        assert_eq!(parse_milli_cpus("1e3"), Ok(1_000_000));
        assert_eq!(parse_milli_cpus("1.5000"), Ok(1500));
        assert!(parse_milli_cpus("1.0001").is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Each memory unit with its size, in every spelling `parse_bytes` takes.
    const UNITS: [(&[&str], i64); 5] = [
        (&["", "b", "B"], 1),
        (&["k", "Ki", "KB", "kib"], 1 << 10),
        (&["m", "Mi", "MB", "MiB"], 1 << 20),
        (&["g", "Gi", "GB", "gib"], 1 << 30),
        (&["t", "Ti", "TB", "TiB"], 1 << 40),
    ];

    fn unit() -> impl Strategy<Value = (&'static str, i64)> {
        (0..UNITS.len(), any::<prop::sample::Index>()).prop_map(|(u, i)| {
            let (spellings, size) = UNITS[u];
            (*i.get(spellings), size)
        })
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in any::<String>()) {
            let _ = parse_bytes(&text);
            let _ = parse_milli_cpus(&text);
        }

        #[test]
        fn parsing_quantity_like_text_never_panics(
            text in "[ ]?[-+]?[0-9]{0,25}(\\.[0-9]{0,25})?([eE][-+]?[0-9]{1,4})?[a-zA-Z]{0,4}[ ]?",
        ) {
            let _ = parse_bytes(&text);
            let _ = parse_milli_cpus(&text);
        }

        /// A whole number of a unit is exactly that many bytes, in every
        /// spelling of the unit, or "too large" if that does not fit.
        #[test]
        fn whole_numbers_of_a_unit_are_exact(n in 0..i64::MAX, (spelling, size) in unit()) {
            let text = format!("{n}{spelling}");
            match n.checked_mul(size).filter(|b| *b < i64::MAX) {
                Some(bytes) => prop_assert_eq!(parse_bytes(&text), Ok(bytes), "{}", text),
                None => {
                    let err = parse_bytes(&text).expect_err(&text).to_string();
                    prop_assert!(err.contains("too large"), "{}: {}", text, err);
                }
            }
        }

        /// What `format_bytes` prints parses back to the same size, within
        /// the rounding to one decimal of the unit it chose.
        #[test]
        fn formatted_sizes_parse_back(bytes in 0..i64::MAX) {
            let text = format_bytes(bytes);
            let back = parse_bytes(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            let unit = UNITS.iter().rev().map(|(_, s)| *s).find(|s| bytes >= *s).unwrap_or(1);
            prop_assert!(
                (i128::from(back) - i128::from(bytes)).abs() <= i128::from(unit / 20 + 1),
                "{} printed as {} reads back as {}", bytes, text, back
            );
        }

        /// Small sizes and whole units print exactly.
        #[test]
        fn exact_sizes_print_exactly(n in 0..1024i64, (_, size) in unit()) {
            let bytes = n * size;
            prop_assert_eq!(parse_bytes(&format_bytes(bytes)), Ok(bytes));
        }

        /// Printing keeps the order of sizes: a larger size never prints as
        /// a smaller one.
        #[test]
        fn formatting_keeps_order(a in 0..i64::MAX, b in 0..i64::MAX) {
            let (small, large) = (a.min(b), a.max(b));
            let ps = parse_bytes(&format_bytes(small)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let pl = parse_bytes(&format_bytes(large)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(ps <= pl, "{} -> {}, {} -> {}", small, ps, large, pl);
        }

        /// Surrounding blanks and the case of the unit do not matter.
        #[test]
        fn blanks_and_case_do_not_matter(n in 0..1_000_000i64, (spelling, _) in unit()) {
            let text = format!("{n}{spelling}");
            let want = parse_bytes(&text);
            prop_assert_eq!(parse_bytes(&format!("  {text}\t")), want.clone());
            prop_assert_eq!(parse_bytes(&text.to_uppercase()), want.clone());
            prop_assert_eq!(parse_bytes(&text.to_lowercase()), want);
        }

        /// A negative amount (which only a broken or hostile peer reports)
        /// prints as its magnitude with a minus sign, down to the smallest.
        #[test]
        fn negative_amounts_print_with_their_sign(n in i64::MIN..0) {
            let magnitude = n.checked_neg();
            let bytes = format_bytes(n);
            let cpus = format_milli_cpus(n);
            if let Some(m) = magnitude {
                prop_assert_eq!(bytes, format!("-{}", format_bytes(m)));
                prop_assert_eq!(cpus, format!("-{}", format_milli_cpus(m)));
            } else {
                prop_assert!(bytes.starts_with('-') && cpus.starts_with('-'));
            }
        }

        /// A negative size is never accepted.
        #[test]
        fn negative_sizes_are_refused(n in 1..i64::MAX, (spelling, _) in unit()) {
            let text = format!("-{n}{spelling}");
            prop_assert!(parse_bytes(&text).is_err(), "{}", text);
        }

        /// Millicpus print as cores that parse back to exactly the same amount.
        #[test]
        fn formatted_cpus_parse_back(millis in 0..i64::MAX) {
            let text = format_milli_cpus(millis);
            prop_assert_eq!(parse_milli_cpus(&text), Ok(millis), "{}", text);
        }

        /// `Nm` is N millicpus, and N cores are N × 1000 of them.
        #[test]
        fn cpu_spellings_agree(n in 0..(i64::MAX / 1000)) {
            prop_assert_eq!(parse_milli_cpus(&format!("{n}m")), Ok(n));
            prop_assert_eq!(parse_milli_cpus(&format!("{n}")), Ok(n * 1000));
            prop_assert_eq!(parse_milli_cpus(&format!("{n}.000")), Ok(n * 1000));
        }

        /// An amount with a fourth decimal that is not 0 is finer than one
        /// millicpu, and is refused rather than rounded.
        #[test]
        fn cpus_finer_than_a_millicpu_are_refused(cores in 0..1_000_000i64, millis in 0..1000, extra in 1..10) {
            let text = format!("{cores}.{millis:03}{extra}");
            let err = parse_milli_cpus(&text).expect_err(&text).to_string();
            prop_assert!(err.contains("finer"), "{}: {}", text, err);
        }

        /// A negative cpu amount is never accepted.
        #[test]
        fn negative_cpus_are_refused(n in 1..i64::MAX) {
            for text in [format!("-{n}"), format!("-{n}m")] {
                prop_assert!(parse_milli_cpus(&text).is_err(), "{}", text);
            }
        }
    }
}
