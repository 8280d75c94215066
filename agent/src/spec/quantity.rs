//! Kubernetes resource quantities (`128Mi`, `1G`, `1e6`, `500m`) as bytes.

/// Parses a quantity into whole bytes (rounded up); `None` if it is not one.
pub fn parse_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number.parse().ok()?;
    if value < 0.0 || !value.is_finite() {
        return None;
    }
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some((value * factor).ceil() as u64)
}

/// Parses a CPU quantity (`500m`, `2`, `0.5`) into millicores, rounded up.
pub fn parse_millicores(q: &str) -> Option<u64> {
    let q = q.trim();
    let (number, factor) = match q.strip_suffix('m') {
        Some(n) => (n, 1.0),
        None => (q, 1000.0),
    };
    let value: f64 = number.parse().ok()?;
    (value >= 0.0 && value.is_finite()).then(|| (value * factor).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn quantities() {
        assert_eq!(parse_bytes("128Mi"), Some(128 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1.5Ki"), Some(1536));
        assert_eq!(parse_bytes("1e3"), Some(1000));
        assert_eq!(parse_bytes("65536"), Some(65536));
        assert_eq!(parse_bytes("1500m"), Some(2));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_bytes("12Q"), None);
    }
}
