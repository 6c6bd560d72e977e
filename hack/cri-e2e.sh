#!/usr/bin/env bash
# Kubernetes' path onto rustlayer, with this script as the kubelet: a private
# containerd whose CRI plugin uses the proxy snapshotter "rustlayer" runs a
# host-network pod over CRI (e2e/tests/cri.rs): sandbox and container roots are
# rustlayer snapshots, the container's log reads right, and the snapshots leave
# the daemon once the pod is removed.
#
#   hack/cri-e2e.sh                      target/debug/rustlayer
#   RUSTLAYER_BIN=path hack/cri-e2e.sh
#
# Needs root and Debian's containerd, runc, python3 and busybox-static; as root
# a missing tool fails the test rather than skipping it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -eq 0 ]]; then export RUSTLAYER_REQUIRE_PRIVILEGED=1; fi
exec cargo test --locked -p rustlayer-e2e --test cri -- --ignored --nocapture
