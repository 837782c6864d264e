//! Kubernetes resource quantities (`500m`, `2`, `128Mi`, `1G`) as numbers: CPU in millicores,
//! everything else in base units (bytes, counts).

/// Parses a quantity into base units (`128Mi` -> 134217728, `1.5` -> 1).
pub fn parse(text: &str) -> Option<u64> {
    parse_scaled(text, 1.0)
}

/// Parses a CPU quantity into millicores (`500m` -> 500, `2` -> 2000).
pub fn parse_millis(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_suffix('m') {
        Some(millis) => millis
            .parse::<f64>()
            .ok()
            .filter(|v| *v >= 0.0)
            .map(|v| v.round() as u64),
        None => parse_scaled(text, 1000.0),
    }
}

fn parse_scaled(text: &str, scale: f64) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    Some((number * factor * scale).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse("128Mi"), Some(128 << 20));
        assert_eq!(parse("1G"), Some(1_000_000_000));
        assert_eq!(parse("1.5Ki"), Some(1536));
        assert_eq!(parse("12"), Some(12));
        assert_eq!(parse("lots"), None);
        assert_eq!(parse("5Xi"), None);
        assert_eq!(parse_millis("500m"), Some(500));
        assert_eq!(parse_millis("2"), Some(2000));
        assert_eq!(parse_millis("0.25"), Some(250));
        assert_eq!(parse_millis("x"), None);
    }
}
