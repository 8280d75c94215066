#!/usr/bin/env bash
# The demo: a throw-away docker-registry on loopback, the example Wasm apps and a busybox
# image pushed to it with `wasmlet push`, then pulled back with `wasmlet pull` and listed.
# Everything lives in a temp dir and is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/wasmlet-demo.XXXXXX)
registry_pid=""
cleanup() {
    [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "building wasmlet"
cargo build --quiet -p wasmlet
wasmlet() { target/debug/wasmlet --state-dir "$work/state" "$@"; }

step "starting a local registry (Debian's docker-registry) on loopback"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
reg=127.0.0.1:$port
echo "registry at http://$reg"

step "pushing the hello app as a wasip1 module and a wasip2 component (CNCF Wasm artifacts)"
wasmlet push wasm-apps/target/wasm32-wasip1/release/hello.wasm "$reg/demo/hello:wasip1"
wasmlet push wasm-apps/target/wasm32-wasip2/release/hello.wasm "$reg/demo/hello:wasip2"

step "building a busybox image with umoci and pushing it from its OCI layout"
(
    cd "$work"
    umoci init --layout busybox >/dev/null
    umoci new --image busybox:latest
    umoci unpack --image busybox:latest bundle >/dev/null
    mkdir -p bundle/rootfs/bin
    cp /bin/busybox bundle/rootfs/bin/busybox
    for applet in sh echo ls cat sleep; do ln -s busybox "bundle/rootfs/bin/$applet"; done
    umoci repack --image busybox:latest bundle
    umoci config --image busybox:latest --os linux --architecture amd64 \
        --config.entrypoint /bin/sh --config.cmd=-c --config.cmd='echo hello from busybox'
)
wasmlet push --layout "$work/busybox:latest" "$reg/demo/busybox:latest"

step "pulling everything back (each blob verified; busybox's layer unpacked safely)"
wasmlet pull "$reg/demo/hello:wasip1"
wasmlet pull "$reg/demo/hello:wasip2"
wasmlet pull "$reg/demo/busybox:latest"

step "wasmlet images"
wasmlet images

step "a pull the registry cannot serve fails clearly"
wasmlet pull -q "$reg/demo/nothing:here" || true

cat <<'TXT'

That is the image path of wasmlet: registry-client pulls, verifies and unpacks, and
tells Wasm artifacts from Linux images. Running pods from these images comes with the
agent core (see README, "Status").
TXT
