#!/usr/bin/env bash
# Installs what building, testing and the demo need. Idempotent and quick when all is there.
set -euo pipefail

# Real parts the tests and demo use, all from Debian:
#   docker-registry  CNCF distribution 2.8, the registry the tests pull from and push to
#   skopeo, umoci    peers for cross-checks and the pull benchmark; umoci builds test images
#   busybox-static   the busybox test image's content
#   apache2-utils    htpasswd (bcrypt) for the registry with basic auth
#   python3-grpcio   a real gRPC health server for the gRPC probe tests
#   protobuf-compiler  protoc, which the CRI API crate (k8s-cri) runs at build time
# runc, conmon, the CNI plugins, iptables (portmap) and iproute2 run Linux containers
apt_packages=(docker-registry skopeo umoci busybox-static apache2-utils curl python3-grpcio protobuf-compiler
    runc conmon containernetworking-plugins iptables iproute2)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

installed_targets=$(rustup target list --installed)
for t in wasm32-wasip1 wasm32-wasip2; do
    grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done

if ! command -v just >/dev/null 2>&1; then
    scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    if [ ! -x "$scripts_dir/just" ]; then
        echo "setup: installing just (PyPI rust-just, a prebuilt binary)" >&2
        python3 -m pip install --quiet --root-user-action=ignore rust-just || cargo install --locked just
    fi
fi
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
