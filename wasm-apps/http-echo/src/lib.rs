//! `wasi:http/incoming-handler`: returns the request body, and each request header as an
//! `x-echo-<name>` response header. `?status=N` sets the status code. `?fetch=URL`
//! (plain `http://host:port/path`) makes an outgoing GET instead and returns its status
//! and body, or the error code the host gave (`HttpRequestDenied` when not granted).

use wasip2::http::outgoing_handler;
use wasip2::http::types::{OutgoingRequest, Scheme};

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Echo;

impl Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if let Some((_, url)) = path.split_once("fetch=") {
            let (status, text) = fetch(url);
            return respond(out, status, Fields::new(), text.as_bytes());
        }
        let status = path.split_once("status=").and_then(|(_, s)| s.split('&').next()?.parse().ok()).unwrap_or(200);
        let echoed: Vec<(String, Vec<u8>)> =
            request.headers().entries().into_iter().map(|(k, v)| (format!("x-echo-{k}"), v)).collect();
        let mut body = Vec::new();
        if let Ok(incoming) = request.consume() {
            let stream = incoming.stream().unwrap();
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(_) => break,
                }
            }
            drop(stream);
            IncomingBody::finish(incoming);
        }
        respond(out, status, Fields::from_list(&echoed).unwrap(), &body);
    }
}

fn respond(out: ResponseOutparam, status: u16, headers: Fields, body: &[u8]) {
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).unwrap();
    let out_body = response.body().unwrap();
    ResponseOutparam::set(out, Ok(response));
    let stream = out_body.write().unwrap();
    for chunk in body.chunks(4096) {
        stream.blocking_write_and_flush(chunk).unwrap();
    }
    drop(stream);
    OutgoingBody::finish(out_body, None).unwrap();
}

/// GET `http://authority/path`: (200, "status N\nBODY") or (502, the error).
fn fetch(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).unwrap();
    request.set_authority(Some(authority)).unwrap();
    request.set_path_with_query(Some(&path)).unwrap();
    let future = match outgoing_handler::handle(request, None) {
        Ok(f) => f,
        Err(e) => return (502, format!("outgoing request failed: {e:?}\n")),
    };
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => {
            let status = response.status();
            let mut text = format!("status {status}\n");
            if let Ok(body) = response.consume() {
                let stream = body.stream().unwrap();
                while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                    text.push_str(&String::from_utf8_lossy(&chunk));
                }
            }
            (200, text)
        }
        Some(Ok(Err(e))) => (502, format!("outgoing request failed: {e:?}\n")),
        other => (502, format!("outgoing request failed: {other:?}\n")),
    }
}

wasip2::http::proxy::export!(Echo);
