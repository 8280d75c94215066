//! The wasmlet agent: the pod manager and what surrounds it (image service, state
//! store, local API, cluster mode, command line). The runtimes live in the
//! `wasmlet-runtime` crate; this crate decides what they run.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod http;
pub mod image;
pub mod node;
pub mod objects;
pub mod pod;
pub mod spec;
pub mod store;
pub mod time;
pub mod workload;
