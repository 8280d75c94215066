//! `wasi:http/incoming-handler`: answers 200 with a greeting that names the path and
//! how many requests this instance has handled (always 1 when every request gets a
//! fresh instance), and prints one line per request to stdout (the container log).

use std::sync::atomic::{AtomicU32, Ordering};

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Hello;

static HANDLED: AtomicU32 = AtomicU32::new(0);

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let n = HANDLED.fetch_add(1, Ordering::Relaxed) + 1;
        println!("GET {path}");
        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())]).unwrap();
        let response = OutgoingResponse::new(headers);
        let body = response.body().unwrap();
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().unwrap();
        stream.blocking_write_and_flush(format!("hello from a wasm component at {path} (request {n} of this instance)\n").as_bytes()).unwrap();
        drop(stream);
        OutgoingBody::finish(body, None).unwrap();
    }
}

wasip2::http::proxy::export!(Hello);
