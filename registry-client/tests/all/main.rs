//! Integration tests for registry-client against real parts: Debian's `docker-registry`
//! (CNCF distribution 2.8) on loopback, `umoci` and `skopeo` as peers, the guest programs
//! in `wasm-apps/`, and a deliberately misbehaving HTTP server for the faults a real
//! registry will not produce on demand.

mod common;
mod evil;
mod layout;
mod registry;
mod unpack;
