//! `wasi:http/incoming-handler`: sleeps the milliseconds given as `?ms=N` (default 1000),
//! then answers 200: for request deadlines and concurrency caps.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Slow;

impl Guest for Slow {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let ms: u64 = path.split_once("ms=").and_then(|(_, s)| s.split('&').next()?.parse().ok()).unwrap_or(1000);
        wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().unwrap();
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().unwrap();
        stream.blocking_write_and_flush(format!("slept {ms} ms\n").as_bytes()).unwrap();
        drop(stream);
        OutgoingBody::finish(body, None).unwrap();
    }
}

wasip2::http::proxy::export!(Slow);
