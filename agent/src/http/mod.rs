//! The HTTP plumbing the local API and the kubelet API share: the body type, errors
//! mapped to statuses in one place, JSON responses, query strings, and the handlers
//! both serve the same way (logs, and exec's framed relay).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Response, StatusCode};
use serde_json::json;

pub mod exec;
pub mod logs;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// An error with the HTTP status it maps to.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
}

impl From<crate::pod::Error> for ApiError {
    fn from(e: crate::pod::Error) -> Self {
        let status = match e {
            crate::pod::Error::NotFound(_) => StatusCode::NOT_FOUND,
            crate::pod::Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            crate::pod::Error::Store(
                crate::store::Error::Full { .. }
                | crate::store::Error::Stopped { .. }
                | crate::store::Error::Wedged { .. },
            ) => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// The one place runtime errors become HTTP statuses.
impl From<wasmlet_runtime::Error> for ApiError {
    fn from(e: wasmlet_runtime::Error) -> Self {
        use wasmlet_runtime::Error as E;
        let status = match &e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::NotRunning(_) => StatusCode::CONFLICT,
            E::Unsupported { .. } | E::InvalidConfig { .. } => StatusCode::BAD_REQUEST,
            E::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::pod::ExecError> for ApiError {
    fn from(e: crate::pod::ExecError) -> Self {
        match e {
            crate::pod::ExecError::Target(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            crate::pod::ExecError::Runtime(e) => e.into(),
        }
    }
}

impl From<crate::image::Error> for ApiError {
    fn from(e: crate::image::Error) -> Self {
        ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())
    }
}

/// A pod that is not there, in the API server's words.
pub fn not_found(ns: &str, name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("pods \"{name}\" not found in namespace \"{ns}\""))
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(value).expect("json")))
        .expect("valid response")
}

pub fn error_response(e: ApiError) -> Response<Body> {
    json_response(e.status, &json!({"error": e.message}))
}

/// An mpsc receiver as a `Stream`.
pub fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

pub fn get<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Percent-decoding (and `+` as space) for query values.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex_value(b[i + 1]), hex_value(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-encoding for query values.
pub fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trip() {
        let v = "127.0.0.1:5000/apps/hello:v1 x&y=z%";
        let q = parse_query(&format!("image={}&follow=true", escape(v)));
        assert_eq!(get(&q, "image"), Some(v));
        assert_eq!(get(&q, "follow"), Some("true"));
    }
}
