#!/usr/bin/env bash
# The whole test suite: lint, unit tests, the daemon's e2e tests (real overlay
# mounts, needs root), the README's commands on a fresh Debian 12 (a chroot),
# containerd's own snapshotter conformance suite, and a real containerd running
# containers on rustlayer. Installs what it needs.
#
#   hack/test.sh            everything
#   hack/test.sh quick      lint + unit + e2e, no containerd
#   hack/test.sh lint       dependencies, fmt, clippy, cargo deny
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
mode=${1:-all}
case $mode in
  all | quick | lint) ;;
  *)
    echo "usage: hack/test.sh [quick|lint]" >&2
    exit 2
    ;;
esac
start=$(date +%s)
# shellcheck source=hack/lib/machine.sh
source hack/lib/machine.sh
cargo_on_path test.sh

step() { printf '\n=== %s (%ss)\n' "$*" "$(($(date +%s) - start))"; }

step "dependencies"
hack/deps.sh

export CARGO_TERM_COLOR=never
# Root runs the privileged tiers for real: a skip there would hide a failure.
if [[ $(id -u) -eq 0 ]]; then export RUSTLAYER_REQUIRE_PRIVILEGED=1; fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo deny (licenses, bans, sources)"
command -v cargo-deny >/dev/null || cargo install --locked --quiet cargo-deny@0.20.2
cargo fetch --locked --quiet
cargo deny --offline check licenses bans sources

if [[ $mode == lint ]]; then
  step "done (lint)"
  exit 0
fi

step "cargo build"
cargo build --workspace --all-targets --locked
export RUSTLAYER_BIN="$repo/target/debug/rustlayer"

step "cargo test (unit, gRPC contract, real mounts)"
cargo test --workspace --locked

if [[ $mode == quick ]]; then
  step "done (quick)"
  exit 0
fi

step "fresh machine: the README's commands in a clean Debian 12 chroot"
hack/fresh-machine.sh

step "containerd snapshotter conformance suite"
hack/conformance.sh

step "real containerd: import and run an image on rustlayer"
hack/e2e-containerd.sh

step "CRI: containerd's CRI plugin on rustlayer, driven as the kubelet drives it"
hack/cri-e2e.sh

step "image: build the OCI archive (base layer cached in .cache/image)"
hack/build-image.sh

step "image: the daemon run from the image as the DaemonSet runs it, serving containerd"
hack/image-e2e.sh

step "metrics: promtool, a real Prometheus scraping the daemon, every dashboard query and alert"
hack/metrics-e2e.sh

step "Helm chart: lint, render, Kubernetes schemas, containerd config patcher"
hack/chart-test.sh

step "kind: the chart on a real cluster (skips without docker, kind, helm, kubectl)"
hack/kind-e2e.sh

step "VM runner self-test: dm-thin pool, thin devices and snapshots in a VM"
hack/vm/selftest.sh

step "devmapper in a VM: backend tests, conformance suite, containerd on a thin pool"
hack/vm-test.sh

step "all tests passed in $(($(date +%s) - start))s"
