//! The pod annotations wasmlet reads: limits and grants of Wasm HTTP components. They
//! are validated at `apply`, so a bad value names its annotation.

use std::collections::BTreeMap;

use super::FieldError;
use wasmlet_runtime::HttpOptions;

/// A request's deadline: `250ms`, `5s` or `2m` (default 30s).
pub const REQUEST_TIMEOUT: &str = "wasmlet.dev/http-request-timeout";
/// Requests a container handles at once; more get 503 (default 256).
pub const MAX_CONCURRENCY: &str = "wasmlet.dev/http-max-concurrency";
/// Comma-separated `host:port` pairs the guest may send HTTP requests to (`*` for any
/// host or any port). Nothing by default.
pub const ALLOW_OUTBOUND: &str = "wasmlet.dev/allow-outbound";

fn field(key: &str) -> String {
    format!("metadata.annotations[{key}]")
}

/// `250ms`, `5s`, `2m`, or a bare number of seconds, in milliseconds.
pub(crate) fn duration_ms(v: &str) -> Option<u64> {
    let v = v.trim();
    let (n, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        _ => None,
    }
}

/// The HTTP options a pod's annotations ask for.
pub fn http_options(annotations: Option<&BTreeMap<String, String>>) -> Result<HttpOptions, FieldError> {
    let mut o = HttpOptions::default();
    let Some(a) = annotations else { return Ok(o) };
    if let Some(v) = a.get(REQUEST_TIMEOUT) {
        o.request_timeout_ms = duration_ms(v).filter(|ms| *ms > 0).ok_or_else(|| {
            FieldError::new(field(REQUEST_TIMEOUT), format!("Invalid value: {v:?}: a duration such as 250ms, 5s or 2m"))
        })?;
    }
    if let Some(v) = a.get(MAX_CONCURRENCY) {
        o.max_concurrency = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            FieldError::new(field(MAX_CONCURRENCY), format!("Invalid value: {v:?}: a positive number"))
        })?;
    }
    if let Some(v) = a.get(ALLOW_OUTBOUND) {
        for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let ok = entry
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && (p == "*" || p.parse::<u16>().is_ok_and(|n| n > 0)));
            if !ok {
                return Err(FieldError::new(
                    field(ALLOW_OUTBOUND),
                    format!("Invalid value: {entry:?}: host:port, where either may be *"),
                ));
            }
            o.allow_outbound.push(entry.to_string());
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(k: &str, v: &str) -> Result<HttpOptions, FieldError> {
        http_options(Some(&BTreeMap::from([(k.to_string(), v.to_string())])))
    }

    #[test]
    fn annotations_parse_or_name_themselves() {
        assert_eq!(http_options(None).unwrap(), HttpOptions::default());
        assert_eq!(with(REQUEST_TIMEOUT, "250ms").unwrap().request_timeout_ms, 250);
        assert_eq!(with(REQUEST_TIMEOUT, "2m").unwrap().request_timeout_ms, 120_000);
        assert_eq!(with(REQUEST_TIMEOUT, "7").unwrap().request_timeout_ms, 7000);
        assert_eq!(with(MAX_CONCURRENCY, "4").unwrap().max_concurrency, 4);
        assert_eq!(with(ALLOW_OUTBOUND, "a.com:443, *:8080").unwrap().allow_outbound, ["a.com:443", "*:8080"]);
        let e = with(REQUEST_TIMEOUT, "soon").unwrap_err().to_string();
        assert!(e.starts_with("metadata.annotations[wasmlet.dev/http-request-timeout]: Invalid value"), "{e}");
        assert!(with(MAX_CONCURRENCY, "0").is_err());
        assert!(with(ALLOW_OUTBOUND, "a.com").is_err());
    }
}
