//! Kubernetes resource quantities (`500m`, `2`, `128Mi`, `1G`, `1e3`, `250u`) as exact numbers.
//!
//! A [`Quantity`] holds thousandths of the base unit (millicores for CPU, millibytes for
//! memory) in an `i128`, so every suffix Kubernetes accepts (`n u m k M G T P E`,
//! `Ki Mi Gi Ti Pi Ei`, decimal exponents) is exact; there is no floating point anywhere.
//! Parts finer than a thousandth round up, as Kubernetes' `MilliValue` does. A quantity too
//! large for the representation is an error, never a wrap or a panic.

use std::fmt;

/// Why a text is not a quantity. Each variant names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}")]
    Syntax(String),
    #[error("unknown suffix in quantity {0:?}")]
    UnknownSuffix(String),
    #[error("quantity {0:?} is too large")]
    TooLarge(String),
}

/// An exact quantity, in thousandths of its base unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    millis: i128,
}

/// The most digits a mantissa may have; beyond this no quantity fits in an `i128` anyway.
const MAX_DIGITS: usize = 38;

impl Quantity {
    /// Parses Kubernetes' quantity syntax: a signed decimal number and one suffix.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let syntax = || QuantityError::Syntax(text.to_string());
        let too_large = || QuantityError::TooLarge(text.to_string());
        let trimmed = text.trim();
        let (negative, unsigned) = match trimmed.as_bytes().first() {
            Some(b'-') => (true, &trimmed[1..]),
            Some(b'+') => (false, &trimmed[1..]),
            _ => (false, trimmed),
        };
        let number_end = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(syntax());
        }
        // The mantissa as an integer, and how many of its digits are fractional.
        let fraction = fraction.trim_end_matches('0');
        let fraction_digits = fraction.len();
        // Most quantities have no fraction ("500m", "128Mi"): no need to join the parts.
        let digits: std::borrow::Cow<str> = if fraction.is_empty() {
            whole.into()
        } else {
            format!("{whole}{fraction}").into()
        };
        let significant = digits.trim_start_matches('0');
        if significant.len() > MAX_DIGITS {
            return Err(too_large());
        }
        let mantissa: i128 = if significant.is_empty() {
            0
        } else {
            significant.parse().map_err(|_| syntax())?
        };
        let scale = Scale::of(suffix).ok_or_else(|| {
            if suffix.starts_with(['e', 'E']) && suffix.len() > 1 {
                syntax()
            } else {
                QuantityError::UnknownSuffix(text.to_string())
            }
        })?;
        if mantissa == 0 {
            return Ok(Self::default());
        }
        // millis = mantissa * 10^-fraction_digits * scale * 1000, rounded up.
        let power_of_ten = scale.power_of_ten + 3 - fraction_digits as i64;
        let scaled = mantissa
            .checked_mul(scale.binary_factor)
            .ok_or_else(too_large)?;
        let millis = if power_of_ten >= 0 {
            let factor = u32::try_from(power_of_ten)
                .ok()
                .and_then(|p| 10i128.checked_pow(p))
                .ok_or_else(too_large)?;
            scaled.checked_mul(factor).ok_or_else(too_large)?
        } else {
            match u32::try_from(-power_of_ten)
                .ok()
                .and_then(|p| 10i128.checked_pow(p))
            {
                Some(divisor) => ceil_div(scaled, divisor),
                // Smaller than any divisor we can hold: a positive remainder rounds up to 1.
                None => i128::from(scaled > 0),
            }
        };
        Ok(Self {
            millis: if negative { -millis } else { millis },
        })
    }

    /// Thousandths of the base unit (`500m` -> 500, `2` -> 2000).
    pub fn millis(self) -> i128 {
        self.millis
    }

    /// Whole base units, rounded up (`1500m` -> 2), as Kubernetes' `Value`.
    pub fn value(self) -> i128 {
        ceil_div(self.millis, 1000)
    }

    pub fn is_negative(self) -> bool {
        self.millis < 0
    }
}

impl fmt::Display for Quantity {
    /// Canonical text: whole units when exact, else millis (`2`, `1500m`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis % 1000 == 0 {
            write!(f, "{}", self.millis / 1000)
        } else {
            write!(f, "{}m", self.millis)
        }
    }
}

/// What a suffix multiplies by: `binary_factor * 10^power_of_ten`.
struct Scale {
    binary_factor: i128,
    power_of_ten: i64,
}

impl Scale {
    fn of(suffix: &str) -> Option<Self> {
        let decimal = |power_of_ten| Scale {
            binary_factor: 1,
            power_of_ten,
        };
        let binary = |power: u32| Scale {
            binary_factor: 1i128 << (10 * power),
            power_of_ten: 0,
        };
        Some(match suffix {
            "" => decimal(0),
            "n" => decimal(-9),
            "u" => decimal(-6),
            "m" => decimal(-3),
            "k" => decimal(3),
            "M" => decimal(6),
            "G" => decimal(9),
            "T" => decimal(12),
            "P" => decimal(15),
            "E" => decimal(18),
            "Ki" => binary(1),
            "Mi" => binary(2),
            "Gi" => binary(3),
            "Ti" => binary(4),
            "Pi" => binary(5),
            "Ei" => binary(6),
            exponent => {
                let digits = exponent.strip_prefix(['e', 'E'])?;
                let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
                if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                // Exponents past a few hundred only overflow or vanish: cap before parsing.
                let power: i64 = if unsigned.len() > 6 {
                    if digits.starts_with('-') {
                        -1_000_000
                    } else {
                        1_000_000
                    }
                } else {
                    digits.parse().ok()?
                };
                decimal(power)
            }
        })
    }
}

/// `numerator / divisor` rounded towards positive infinity (divisor > 0).
fn ceil_div(numerator: i128, divisor: i128) -> i128 {
    let quotient = numerator / divisor;
    if numerator % divisor > 0 {
        quotient + 1
    } else {
        quotient
    }
}

/// Parses a non-negative quantity into whole base units, rounded up (`128Mi` -> 134217728,
/// `1.5` -> 2), saturating at `u64::MAX`; `None` when it is not a quantity or negative.
pub fn parse(text: &str) -> Option<u64> {
    saturate(Quantity::parse(text).ok()?.value())
}

/// Parses a non-negative CPU quantity into millicores (`500m` -> 500, `2` -> 2000),
/// saturating at `u64::MAX`.
pub fn parse_millis(text: &str) -> Option<u64> {
    saturate(Quantity::parse(text).ok()?.millis())
}

fn saturate(value: i128) -> Option<u64> {
    (value >= 0).then(|| u64::try_from(value).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(text: &str, millis: Option<i128>) {
        assert_eq!(
            Quantity::parse(text).ok().map(Quantity::millis),
            millis,
            "{text}"
        );
    }

    #[test]
    fn every_suffix_is_exact() {
        check("128Mi", Some(128 << 20).map(|v: i128| v * 1000));
        check("1G", Some(1_000_000_000_000));
        check("1.5Ki", Some(1_536_000));
        check("12", Some(12_000));
        check("500m", Some(500));
        check("0.25", Some(250));
        check("250u", Some(1));
        check("1n", Some(1));
        check("0n", Some(0));
        check("2000n", Some(1));
        check("1500000u", Some(1500));
        check("1E", Some(1_000_000_000_000_000_000_000));
        check("1Ei", Some((1i128 << 60) * 1000));
        check("8Pi", Some((8i128 << 50) * 1000));
        check("3P", Some(3_000_000_000_000_000_000));
        check("1e3", Some(1_000_000));
        check("1E3", Some(1_000_000));
        check("1e-3", Some(1));
        check("2.5e+2", Some(250_000));
        check("-1", Some(-1000));
        check("+1k", Some(1_000_000));
        check(".5", Some(500));
        check("5.", Some(5000));
        check("0.1m", Some(1));
        check("100.000", Some(100_000));
        check(
            "000000000000000000000000000000000000000000012",
            Some(12_000),
        );
        check("0.000", Some(0));
        check("0e400", Some(0));
    }

    #[test]
    fn bad_text_is_an_error_naming_it() {
        for bad in [
            "", "lots", "5Xi", "1.2.3", ".", "--1", "1 Mi", "1e", "1ee3", "Mi", "1K",
        ] {
            let error = Quantity::parse(bad).expect_err(bad);
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
        assert_eq!(
            Quantity::parse("99999999999999999999999999999999999999999"),
            Err(QuantityError::TooLarge(
                "99999999999999999999999999999999999999999".into()
            ))
        );
        assert!(matches!(
            Quantity::parse("1e400"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            Quantity::parse("99999999999999999999Ei"),
            Err(QuantityError::TooLarge(_))
        ));
        check("1e-400", Some(1));
    }

    #[test]
    fn base_units_round_up_and_refuse_what_u64_cannot_hold() {
        assert_eq!(parse("128Mi"), Some(128 << 20));
        assert_eq!(parse("1.5"), Some(2));
        assert_eq!(parse("-1"), None);
        assert_eq!(parse("99999999T"), Some(u64::MAX), "past u64: saturates");
        assert_eq!(parse("99999999E"), Some(u64::MAX));
        assert_eq!(parse_millis("500m"), Some(500));
        assert_eq!(parse_millis("2"), Some(2000));
        assert_eq!(parse_millis("x"), None);
        assert_eq!(Quantity::parse("1500m").unwrap().to_string(), "1500m");
        assert_eq!(Quantity::parse("2k").unwrap().to_string(), "2000");
    }

    proptest! {
        #[test]
        fn any_text_parses_or_errs_without_panicking(text in "\\PC{0,40}") {
            let _ = Quantity::parse(&text);
            let _ = parse(&text);
            let _ = parse_millis(&text);
        }

        #[test]
        fn quantity_shaped_text_never_panics(
            text in "[+-]?[0-9]{0,45}(\\.[0-9]{0,45})?(|n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]{1,8})"
        ) {
            let _ = Quantity::parse(&text);
        }

        #[test]
        fn whole_numbers_are_exact(n in 0u64..u64::MAX / 1000) {
            prop_assert_eq!(parse(&n.to_string()), Some(n));
            prop_assert_eq!(parse_millis(&format!("{n}m")), Some(n));
        }
    }
}
