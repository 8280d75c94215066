//! The agent's one clock and its time formats: Unix milliseconds inside; RFC 3339 with
//! seconds (as the API server writes times) and Kubernetes' `Time` outside.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Unix milliseconds now (the runtimes' clock, so container times compare with ours).
pub use wasmlet_runtime::now_ms;

/// `2026-11-22T03:13:00Z`.
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An RFC 3339 time (any precision or offset) → Unix ms.
pub fn parse_rfc3339(ts: &str) -> Option<u64> {
    chrono::DateTime::parse_from_rfc3339(ts).ok().and_then(|t| u64::try_from(t.timestamp_millis()).ok())
}

/// Unix ms → a Kubernetes `Time`.
pub fn to_k8s(ms: u64) -> Time {
    Time(jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or_default())
}

/// A Kubernetes `Time` → Unix ms (0 before the epoch).
pub fn from_k8s(t: &Time) -> u64 {
    u64::try_from(t.0.as_millisecond()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_invert() {
        let ms = 1_795_000_000_000u64;
        assert_eq!(super::parse_rfc3339(&super::rfc3339(ms)), Some(ms));
        assert_eq!(super::from_k8s(&super::to_k8s(ms)), ms);
        let nano = wasmlet_runtime::log::rfc3339_nano(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
        assert_eq!(super::parse_rfc3339(&nano), Some(ms));
        // the API server's precision: whole seconds
        assert_eq!(serde_json::to_value(super::to_k8s(ms + 123)).unwrap(), "2026-11-18T11:06:40Z");
    }
}
