# The verbs people type. On a fresh machine, run them through ./dev (it installs first).
set shell := ["bash", "-euo", "pipefail", "-c"]

# list the recipes
default:
    @just --list

# install apt packages, rustup targets and tools the recipes need
setup:
    scripts/setup.sh

# build the guest programs in wasm-apps/ for wasip1 (modules) and wasip2 (components)
wasm-apps:
    cd wasm-apps && cargo build --quiet --release --target wasm32-wasip1
    cd wasm-apps && cargo build --quiet --release --target wasm32-wasip2

# build the workspace
build:
    cargo build --workspace

# a real Kubernetes control plane (v1.20, from Debian's kubernetes source package) for
# the cluster tests: built once per machine into /var/cache/wasmlet/kubernetes
kube:
    scripts/setup-kube.sh >/dev/null

# every test: unit, integration against real docker-registry/skopeo/umoci, end-to-end
# (cluster mode against the real control plane)
test: wasm-apps kube
    cargo nextest run --workspace --no-fail-fast
    cargo test --workspace --doc --quiet

# formatting and clippy, warnings are errors
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --quiet -- -D warnings

# benchmarks with their peers measured in the same run (BIG_MB, RUNS tune the pull bench;
# START_PODS, DENSITY the agent bench; SECS, HTTP_PODS the HTTP bench; CRI_PODS the CRI
# bench; CLUSTER_PODS,
# CREATE_RATE the stand-in cluster bench; REAL_PODS, REAL_RATE, REAL_CUT the real control
# plane's);
# builds the wasmtime-cli peer once
bench: wasm-apps kube
    scripts/setup-bench.sh
    cargo bench -p registry-client --bench pull
    cargo bench -p wasmlet --bench agent
    cargo bench -p wasmlet --bench linux
    cargo bench -p wasmlet --bench http
    cargo bench -p wasmlet --bench cri
    cargo bench -p wasmlet --bench cluster
    cargo bench -p wasmlet --bench cluster_real

# a local registry, the example apps pushed and pulled back by wasmlet
demo: wasm-apps
    scripts/demo.sh

# the kill -9 churn test in its long mode (not run by CI): CYCLES cycles, 1,000 by default
churn CYCLES="1000": wasm-apps
    CRASH_CYCLES={{CYCLES}} cargo nextest run -p wasmlet --test e2e kill_9_during_churn --no-capture

# cargo-fuzz targets in fuzz/, SECS seconds each, CPU time and findings (not in CI): just fuzz 600 layer_tar
fuzz SECS="60" *TARGETS="":
    scripts/fuzz.sh {{SECS}} {{TARGETS}}
