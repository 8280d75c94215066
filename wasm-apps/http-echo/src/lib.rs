//! `wasi:http/incoming-handler`: returns the request body, and each request header as an
//! `x-echo-<name>` response header. `?status=N` sets the status code.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Echo;

impl Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
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
        let response = OutgoingResponse::new(Fields::from_list(&echoed).unwrap());
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
}

wasip2::http::proxy::export!(Echo);
