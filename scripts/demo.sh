#!/usr/bin/env bash
# The demo: a throw-away docker-registry on loopback, the example Wasm apps pushed to it
# with `wasmlet push`, the agent running the pods in examples/, a kill -9 it survives,
# and `wasmlet run -f` stopped with Ctrl-C. Everything lives in a temp dir, removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/wasmlet-demo.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work" /tmp/wasmlet-demo-data
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

step "building wasmlet"
cargo build --quiet -p wasmlet
export PATH="$PWD/target/debug:$PATH" WASMLET_STATE_DIR="$work/state"

step "starting a local registry (Debian's docker-registry) on loopback"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
reg=127.0.0.1:$port
printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' "$work/registry" "$reg" > "$work/registry.yml"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://$reg/v2/" >/dev/null && break; sleep 0.1; done
echo "registry at http://$reg"

step "pushing the example apps as CNCF Wasm artifacts"
for app in hello exit hog cat sleep; do
    show wasmlet push "wasm-apps/target/wasm32-wasip1/release/$app.wasm" "$reg/demo/$app:v1"
done
show wasmlet push wasm-apps/target/wasm32-wasip2/release/hello.wasm "$reg/demo/hello:p2"

step "starting the agent: wasmlet serve"
wasmlet serve 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 100); do wasmlet get pods >/dev/null 2>&1 && break; sleep 0.1; done

step "applying the pods in examples/ (pointed at this registry)"
mkdir -p "$work/examples" /tmp/wasmlet-demo-data
echo "hello from a hostPath volume" > /tmp/wasmlet-demo-data/message.txt
for f in hello hello-component crashloop memory-limit volume; do
    sed "s/127.0.0.1:5000/$reg/" "examples/$f.yaml" > "$work/examples/$f.yaml"
    show wasmlet apply -f "$work/examples/$f.yaml"
done
for _ in $(seq 100); do wasmlet get pods hello 2>/dev/null | grep -q Completed && break; sleep 0.1; done
sleep 1
show wasmlet get pods
show wasmlet logs hello
show wasmlet logs hello-component
show wasmlet logs reader
show wasmlet get pods memory-hog -o wide
step "a pod in CrashLoopBackOff"
show wasmlet describe pod crashloop

step "kill -9 the agent, start it again: every pod is still there, restart counts kept"
kill -9 "${pids[-1]}"
wait "${pids[-1]}" 2>/dev/null || true
wasmlet serve 2>>"$work/serve.log" &
pids[-1]=$!
for _ in $(seq 100); do wasmlet get pods >/dev/null 2>&1 && break; sleep 0.1; done
show wasmlet get pods
show wasmlet images

step "a bad manifest is refused, naming the field"
printf 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\nspec:\n  containers:\n  - name: app\n' > "$work/broken.yaml"
show wasmlet apply -f "$work/broken.yaml" || true

step "wasmlet run -f: like podman kube play; Ctrl-C after 3 s cleans up"
sed "s/127.0.0.1:5000/$reg/" examples/sleeper.yaml > "$work/examples/sleeper.yaml"
show timeout -s INT 3 wasmlet run -f "$work/examples/sleeper.yaml" || true
