//! End-to-end tests of the `wasmlet` binary: the real daemon over its socket, a real
//! `docker-registry`, wasmtime running the programs in `wasm-apps/`, sled on temp dirs.

#[path = "../../registry-client/tests/all/common.rs"]
#[allow(dead_code)]
mod common;

mod cluster;
mod control_plane;
mod crash;
mod cri;
mod cri_client;
mod docs;
mod hardened;
mod harness;
mod http;
mod images;
mod kubelet;
mod limits;
mod linux;
mod pods;
mod run;
mod semantics;
mod workloads;
