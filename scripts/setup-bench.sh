#!/usr/bin/env bash
# What `just bench` needs beyond the tests: the peer binaries measured in the same run,
# and the load generator.
# wasmtime-cli 48 is built from crates.io into /opt/wasmtime-peer, outside the project
# (no Debian package has it); a release build takes 15–20 minutes on 2 cores, once.
# `serve` needs `component-model-async` to compile in 48.0.8.
set -euo pipefail
if [ ! -x /opt/wasmtime-peer/bin/wasmtime ]; then
    echo "setup-bench: building wasmtime-cli 48.0.8 into /opt/wasmtime-peer (once, ~20 min)" >&2
    cargo install wasmtime-cli@48.0.8 --locked --root /opt/wasmtime-peer --no-default-features \
        --features run,serve,cranelift,parallel-compilation,pooling-allocator,component-model,component-model-async,cache
fi
# wrk (Debian) drives the HTTP component benchmark
if ! command -v wrk >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
