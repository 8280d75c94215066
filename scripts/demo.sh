#!/usr/bin/env bash
# The demo: a throw-away docker-registry on loopback, the example Wasm apps pushed to it
# with `wasmlet push`, the agent running the pods in examples/, a kill -9 it survives,
# and `wasmlet run -f` stopped with Ctrl-C. Everything lives in a temp dir, removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/wasmlet-demo.XXXXXX)
pids=()
cleanup() {
    # Linux containers outlive the agent by design: delete the pods first (and the
    # Deployments and Jobs that would make them again)
    wasmlet delete deployment sleepers >/dev/null 2>&1 || true
    wasmlet delete job shards >/dev/null 2>&1 || true
    for p in $(wasmlet get pods -o json 2>/dev/null | python3 -c 'import json,sys; print(" ".join(p["metadata"]["name"] for p in json.load(sys.stdin)["items"]))' 2>/dev/null); do
        wasmlet delete pod "$p" --grace-period 0 >/dev/null 2>&1 || true
    done
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
for app in http_hello http_echo http_slow http_trap; do
    show wasmlet push "wasm-apps/target/wasm32-wasip2/release/$app.wasm" "$reg/demo/$app:p2"
done

step "building a busybox Linux image with umoci (from Debian's busybox-static) and pushing it"
umoci init --layout "$work/oci" >/dev/null
umoci new --image "$work/oci:latest" >/dev/null
umoci unpack --image "$work/oci:latest" "$work/bundle" >/dev/null
mkdir -p "$work/bundle/rootfs/bin" "$work/bundle/rootfs/etc" "$work/bundle/rootfs/tmp"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
for a in sh httpd cat echo sleep ls wget ps hostname ip; do ln -s busybox "$work/bundle/rootfs/bin/$a"; done
umoci repack --image "$work/oci:latest" "$work/bundle" >/dev/null
umoci config --image "$work/oci:latest" --os linux --architecture amd64 --config.entrypoint /bin/sh >/dev/null
show wasmlet push --layout "$work/oci:latest" "$reg/demo/busybox:latest"

step "starting the agent: wasmlet serve"
# Debian bookworm's runc 1.1.5 lacks recent CVE fixes; wasmlet refuses it unless told
wasmlet serve --allow-vulnerable-runtime 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 100); do wasmlet get pods >/dev/null 2>&1 && break; sleep 0.1; done

step "applying the pods in examples/ (pointed at this registry)"
mkdir -p "$work/examples" /tmp/wasmlet-demo-data
echo "hello from a hostPath volume" > /tmp/wasmlet-demo-data/message.txt
for f in hello hello-component crashloop memory-limit volume mixed config workloads http-hello http-echo http-trap; do
    sed "s/127.0.0.1:5000/$reg/" "examples/$f.yaml" > "$work/examples/$f.yaml"
    show wasmlet apply -f "$work/examples/$f.yaml"
done
for _ in $(seq 100); do wasmlet get pods hello 2>/dev/null | grep -q Completed && break; sleep 0.1; done
sleep 1
show wasmlet get pods
show wasmlet logs hello
show wasmlet logs hello-component
show wasmlet logs reader
step "ConfigMaps, Secrets, the downward API and an init container"
for _ in $(seq 100); do wasmlet get pods configured 2>/dev/null | grep -q Completed && break; sleep 0.1; done
show wasmlet get pods configured
show wasmlet logs configured -c app
show wasmlet get events
show wasmlet get pods memory-hog -o wide
step "a Deployment and an Indexed Job (examples/workloads.yaml)"
for _ in $(seq 100); do wasmlet get deployments 2>/dev/null | grep -q ' 3/3 ' && wasmlet get jobs 2>/dev/null | grep -q Complete && break; sleep 0.1; done
show wasmlet get deployments
show wasmlet get jobs
show wasmlet get pods -l app=sleepers
sed -i 's/value: "1"/value: "2"/' "$work/examples/workloads.yaml"
show wasmlet apply -f "$work/examples/workloads.yaml"
for _ in $(seq 200); do wasmlet get deployments sleepers -o json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; s=d["status"]; sys.exit(0 if s.get("updatedReplicas")==3 and s.get("availableReplicas")==3 and d["metadata"]["generation"]==s.get("observedGeneration") and s.get("replicas")==3 else 1)' && break; sleep 0.1; done
show wasmlet get deployments
step "a mixed pod: a Wasm module wrote the page, a Linux container (runc) serves it"
for _ in $(seq 100); do wasmlet get pods web 2>/dev/null | grep -q Running && break; sleep 0.1; done
show wasmlet get pods web -o wide
for _ in $(seq 50); do curl -sf http://127.0.0.1:18080/ >/dev/null && break; sleep 0.1; done
show curl -s http://127.0.0.1:18080/
show wasmlet exec web -c httpd -- sh -c 'hostname; ls /www; ip -4 addr show eth0 | grep inet'

step "Wasm HTTP components (wasi:http), served by wasmlet: a fresh instance per request"
for _ in $(seq 100); do curl -sf http://127.0.0.1:18081/ >/dev/null && break; sleep 0.1; done
show curl -s http://127.0.0.1:18081/hello
show curl -s -d 'ping from curl' http://127.0.0.1:18082/
echo
echo "# the pod grants outbound HTTP to the registry only (wasmlet.dev/allow-outbound):"
show curl -s "http://127.0.0.1:18082/?fetch=http://$reg/v2/"
echo
show curl -s "http://127.0.0.1:18082/?fetch=http://127.0.0.1:9/"
show curl -s -o /dev/null -w 'http-trap answered %{http_code}\n' http://127.0.0.1:18084/
show wasmlet logs http-trap

step "a pod in CrashLoopBackOff"
show wasmlet describe pod crashloop

step "kill -9 the agent, start it again: every pod is still there, restart counts kept"
kill -9 "${pids[-1]}"
wait "${pids[-1]}" 2>/dev/null || true
wasmlet serve --allow-vulnerable-runtime 2>>"$work/serve.log" &
pids[-1]=$!
for _ in $(seq 100); do wasmlet get pods >/dev/null 2>&1 && break; sleep 0.1; done
show wasmlet get pods
step "the Linux container kept running through the kill (restarts 0) and still serves"
show curl -s http://127.0.0.1:18080/
show wasmlet images

step "a bad manifest is refused, naming the field"
printf 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\nspec:\n  containers:\n  - name: app\n' > "$work/broken.yaml"
show wasmlet apply -f "$work/broken.yaml" || true

step "wasmlet run -f: like podman kube play; Ctrl-C after 3 s cleans up"
sed "s/127.0.0.1:5000/$reg/" examples/sleeper.yaml > "$work/examples/sleeper.yaml"
show timeout -s INT 3 wasmlet run -f "$work/examples/sleeper.yaml" || true
