#!/usr/bin/env bash
# The whole test suite: lint, unit tests, the daemon's e2e tests (real overlay
# mounts, needs root), the README's commands on a fresh Debian 12 (a chroot),
# containerd's own snapshotter conformance suite, and a real containerd running
# containers on rustlayer. Installs what it needs.
#
#   hack/test.sh            everything
#   hack/test.sh quick      lint + unit + e2e, no containerd
#   hack/test.sh lint       dependencies, fmt, clippy, cargo deny
#
# The tiers that go through containerd (e2e-containerd, cri-e2e, image-e2e,
# metrics-e2e) run once per containerd release of the matrix: Debian 12's 1.6.20,
# and 1.7.24 and 2.1.9 fetched from Debian's archive (hack/containerd-fetch.sh).
# CONTAINERD_MATRIX="2.1.9" hack/test.sh runs them against those releases only.
# Each tier's output is also kept in .cache/test/TIER-VERSION.log.
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

# Tests that need root are ignored by a plain cargo test; here, as root, they run
# and fail if what they need is missing. Those that need device-mapper are the VM
# tier's (hack/vm-test.sh: pkg/devmapper's thin_pool tests and the crash torture
# on devmapper), and so are those that need project quotas (_with_project_quotas);
# the CRI ones, each named kubelet_*, are hack/cri-e2e.sh's, both steps below.
step "cargo test (unit, gRPC contract, real mounts)"
cargo test --workspace --exclude rustlayer-devmapper --locked -- --include-ignored \
  --skip kubelet_ --skip _on_devmapper --skip _with_project_quotas
cargo test -p rustlayer-devmapper --locked

if [[ $mode == quick ]]; then
  step "done (quick)"
  exit 0
fi

step "fresh machine: the README's commands in a clean Debian 12 chroot"
hack/fresh-machine.sh

# The conformance suite talks to the daemon directly, not through containerd:
# once is enough.
step "containerd snapshotter conformance suite"
hack/conformance.sh

step "containerd 2.x's snapshotter conformance suite (sid's Go sources, unpacked into .cache)"
CONFORMANCE_SUITE=2.x hack/conformance.sh

read -ra containerd_matrix <<<"${CONTAINERD_MATRIX:-1.6.20 1.7.24 2.1.9}"
step "containerd releases: ${containerd_matrix[*]}"
for version in "${containerd_matrix[@]}"; do
  echo "containerd $version: $(hack/containerd-fetch.sh "$version")"
done

# Shared by every release's image tier.
step "image: build the OCI archive (base layer cached in .cache/image)"
hack/build-image.sh

logs=$repo/.cache/test
mkdir -p "$logs"
declare -A by_version=() seconds_of=()
matrix_failed=0
# tier VERSION NAME CMD...: runs one tier against containerd VERSION, its output
# shown and kept in $logs; notes its result, counts and time for the summary.
tier() {
  local version=$1 name=$2 t0=$SECONDS rc=0 counts result
  shift 2
  step "containerd $version: $name"
  CONTAINERD_VERSION=$version "$@" 2>&1 | tee "$logs/$name-$version.log" || rc=$?
  # From the tier's closing line: "N passed, N failed[, N skipped]", or cargo's
  # "N passed; N failed; N ignored".
  counts=$(grep -oE '[0-9]+ passed[,;] [0-9]+ failed([,;] [0-9]+ (skipped|ignored))?' \
    "$logs/$name-$version.log" | tail -n 1 | tr ';' ',')
  result="ok"
  if ((rc != 0)); then
    result="FAILED (status $rc)"
    matrix_failed=1
  fi
  by_version[$version]+="${by_version[$version]:+; }$name $result (${counts:-no counts}; $((SECONDS - t0))s)"
  seconds_of[$version]=$((${seconds_of[$version]:-0} + SECONDS - t0))
}
matrix_summary() {
  local version
  for version in "${containerd_matrix[@]}"; do
    echo "containerd $version: ${by_version[$version]:-not run}; ${seconds_of[$version]:-0}s in all"
  done
}
for version in "${containerd_matrix[@]}"; do
  tier "$version" e2e-containerd hack/e2e-containerd.sh
  tier "$version" cri-e2e hack/cri-e2e.sh
  tier "$version" image-e2e hack/image-e2e.sh
  tier "$version" metrics-e2e hack/metrics-e2e.sh
done
step "containerd tiers, per release (logs in $logs)"
matrix_summary
if ((matrix_failed)); then
  echo "a containerd tier failed (above)" >&2
  exit 1
fi

step "user namespaces: idmapped layers and containerd's chowned copy on containerd 2.1.9"
USERNS_BENCH=0 hack/userns-e2e.sh

step "Helm chart: lint, render, Kubernetes schemas, containerd config patcher"
hack/chart-test.sh

step "kind: the chart on a real cluster (skips without docker, kind, helm, kubectl)"
hack/kind-e2e.sh

step "VM runner self-test: dm-thin pool, thin devices and snapshots in a VM"
hack/vm/selftest.sh

step "in a VM: devmapper (backend tests, conformance suite, containerd on a thin pool), project quotas"
hack/vm-test.sh

step "all tests passed in $(($(date +%s) - start))s"
matrix_summary
