//! `IntOrString` fields that count pods either as a number or as a percentage of a total
//! (`maxSurge: 25%`, `maxUnavailable: 1`), resolved as Kubernetes'
//! `GetScaledValueFromIntOrPercent` does, without overflow for any input.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The percentage of `"25%"` (25); `None` when the text is not `<integer>%`.
pub fn percentage(text: &str) -> Option<i64> {
    let digits = text.strip_suffix('%')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More digits than an i64 holds is still a (silly) percentage: saturate.
    Some(digits.parse().unwrap_or(i64::MAX))
}

/// `value` as a count of pods out of `total`: an integer as is, a percentage of `total`
/// rounded up or down; clamped to `0..=i32::MAX`. `None` when a string is not a percentage.
pub fn scaled(value: &IntOrString, total: i32, round_up: bool) -> Option<i32> {
    let count = match value {
        IntOrString::Int(n) => i128::from(*n),
        IntOrString::String(text) => {
            let product = i128::from(percentage(text)?) * i128::from(total.max(0));
            let (quotient, remainder) = (product / 100, product % 100);
            if round_up && remainder > 0 {
                quotient + 1
            } else {
                quotient
            }
        }
    };
    Some(count.clamp(0, i128::from(i32::MAX)) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: IntOrString, total: i32, round_up: bool, expected: Option<i32>) {
        assert_eq!(
            scaled(&value, total, round_up),
            expected,
            "{value:?} of {total}"
        );
    }

    #[test]
    fn counts_and_percentages() {
        use IntOrString::{Int, String as Text};
        check(Int(3), 10, true, Some(3));
        check(Int(-3), 10, true, Some(0));
        check(Text("25%".into()), 10, true, Some(3));
        check(Text("25%".into()), 10, false, Some(2));
        check(Text("100%".into()), i32::MAX, true, Some(i32::MAX));
        check(
            Text("99999999999999999999999%".into()),
            i32::MAX,
            true,
            Some(i32::MAX),
        );
        check(Text("0%".into()), 7, true, Some(0));
        check(Text("25".into()), 10, true, None);
        check(Text("%".into()), 10, true, None);
        check(Text("-5%".into()), 10, true, None);
    }
}
