//! `wasi:http/incoming-handler`: traps on every request, before answering.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Trap;

impl Guest for Trap {
    fn handle(_request: IncomingRequest, _out: ResponseOutparam) {
        eprintln!("about to trap");
        std::process::abort();
    }
}

wasip2::http::proxy::export!(Trap);
