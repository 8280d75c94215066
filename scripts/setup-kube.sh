#!/usr/bin/env bash
# Builds a real Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) and a kubelet from Debian's `kubernetes` source package, once
# per machine, into a cache outside the clone. The cluster tests run wasmlet against it
# as a node; the CRI test runs the kubelet with wasmlet as its container runtime.
#
#   scripts/setup-kube.sh          build if the cache lacks it, print the bin dir
#
# Why from source: Debian 12 ships no kube-apiserver binary package, and nothing outside
# Debian's, PyPI's, npm's and crates.io's registries can be fetched here. The source
# package (1.20.5+really1.20.2) builds with Debian's Go 1.19 in about 5 minutes on two
# cores, and in seconds when the cache is warm. etcd is Debian's `etcd-server` 3.4.
#
# Override the cache with WASMLET_KUBE_CACHE (default /var/cache/wasmlet/kubernetes).
set -euo pipefail

cache=${WASMLET_KUBE_CACHE:-/var/cache/wasmlet/kubernetes}
bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)
stamp="$cache/bin/.built-v2"

have_all() {
    [ -f "$stamp" ] || return 1
    for b in "${bins[@]}"; do [ -x "$cache/bin/$b" ] || return 1; done
}

if have_all && command -v etcd >/dev/null 2>&1; then
    echo "$cache/bin"
    exit 0
fi

sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

# etcd 3.4 for the API server's storage; Go 1.19 and the reflect2 fix for the build.
need=()
for p in etcd-server golang-go golang-github-modern-go-reflect2-dev dpkg-dev rsync; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done

# deb-src for bookworm main, added beside (never instead of) the normal sources.
src_list=/etc/apt/sources.list.d/wasmlet-deb-src.sources
if [ ! -f "$src_list" ]; then
    echo "setup-kube: enabling deb-src in $src_list" >&2
    $sudo tee "$src_list" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    $sudo apt-get update -qq
elif ((${#need[@]})); then
    $sudo apt-get update -qq
fi
if ((${#need[@]})); then
    echo "setup-kube: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The stock etcd service is not used; the tests start their own on a loopback port.
if systemctl is-active --quiet etcd 2>/dev/null; then $sudo systemctl disable --now etcd >/dev/null 2>&1 || true; fi

have_all && { echo "$cache/bin"; exit 0; }

echo "setup-kube: building kube-apiserver, controller-manager, scheduler, kubectl and kubelet from Debian's kubernetes source (about 8 minutes, once per machine)" >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get build-dep -y -qq kubernetes >/dev/null

$sudo mkdir -p "$cache"
[ -z "$sudo" ] || $sudo chown "$(id -u):$(id -g)" "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get source -qq kubernetes >/dev/null 2>&1)
src=$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -1)
[ -n "$src" ] || { echo "setup-kube: apt-get source kubernetes produced no tree" >&2; exit 1; }

# The vendored modern-go/reflect2 1.0.1 crashes under Go >= 1.18 whenever a map is
# encoded (kubectl's YAML, the API server's YAML answers); Debian's 1.0.2 does not.
fixed=/usr/share/gocode/src/github.com/modern-go/reflect2
vendored="$src/vendor/github.com/modern-go/reflect2"
[ -d "$fixed" ] || { echo "setup-kube: $fixed missing (golang-github-modern-go-reflect2-dev)" >&2; exit 1; }
rm -rf "$vendored"
mkdir -p "$vendored"
cp -a "$fixed"/. "$vendored"/

(
    cd "$src"
    export CGO_ENABLED=0 GOFLAGS=
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubectl cmd/kubelet" >"$work/build.log" 2>&1 \
        || { tail -40 "$work/build.log" >&2; exit 1; }
)
out=$(find "$src/_output" -type d -path '*/bin' | head -1)
mkdir -p "$cache/bin.new"
for b in "${bins[@]}"; do cp "$out/$b" "$cache/bin.new/$b"; done
"$cache/bin.new/kube-apiserver" --version >"$cache/bin.new/VERSION"
touch "$cache/bin.new/.built-v2"
rm -rf "$cache/bin"
mv "$cache/bin.new" "$cache/bin"
echo "$cache/bin"
