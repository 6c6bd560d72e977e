#!/usr/bin/env bash
# Kubernetes' path onto rustlayer, with this script as the kubelet: a private
# containerd whose CRI plugin has a runtime handler "rustlayer" on the proxy
# snapshotter of that name pulls the test's images from a local registry and runs
# a host-network pod over CRI (e2e/tests/cri.rs): pulls for the handler land in
# rustlayer and nowhere else, sandbox and container roots are rustlayer
# snapshots with no second unpack, the container's log reads right, and the
# snapshots leave the daemon once the pod is removed. The test writes the config
# each containerd release needs (version 2 for 1.6 and 1.7, version 3 for 2.x).
#
# On 2.x also (e2e/tests/cri/): a pod in a user namespace on the handler, with
# the proxy declaring remap-ids and the daemon remap_ids = true (idmapped
# layers, no copy of the image), and image volumes (KEP-4639, 2.1 on) with and
# without a user namespace. They need a runc >= 1.2, which hack/runc-fetch.sh
# unpacks from Debian sid into .cache/runc; on 1.x the script says they do not
# apply and runs the pod test alone.
#
#   hack/cri-e2e.sh                                       containerd 1.6.20
#   CONTAINERD_VERSION=2.1.9 hack/cri-e2e.sh              one release
#   CONTAINERD_VERSION="1.6.20 1.7.24 2.1.9" hack/cri-e2e.sh   each in turn
#   RUSTLAYER_BIN=path hack/cri-e2e.sh                    target/debug/rustlayer
#
# hack/containerd-fetch.sh provides each release (1.6.20 is Debian 12's own);
# its directory goes first on PATH, so containerd, ctr and the runc shim are that
# release's, with Debian 12's runc (the user-namespace handler names sid's).
# Needs root, python3, busybox-static, docker-registry and skopeo (and patchelf,
# iproute2 and util-linux on 2.x); a missing tool fails the test rather than
# skipping it. Prints how long each release took.
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a versions <<<"${CONTAINERD_VERSION:-1.6.20}"
if [[ ${#versions[@]} -eq 0 ]]; then
  echo "cri-e2e: CONTAINERD_VERSION names no release" >&2
  exit 2
fi

# Built once, before any clock starts.
cargo test --locked -p rustlayer-e2e --test cri --no-run

times=()
for version in "${versions[@]}"; do
  bin=$(hack/containerd-fetch.sh "$version")
  echo "cri-e2e: containerd $version from $bin"
  # The 2.x tests by name, so that none passes on 1.x by not running there.
  selection=(--exact kubelet_runs_a_pod_on_rustlayer)
  runc_dir=''
  if [[ $version == 2.* ]]; then
    selection=()
    runc_dir=$(hack/runc-fetch.sh)
    echo "cri-e2e: user namespaces with $("$runc_dir/runc" --version | head -n 1) from $runc_dir"
  else
    echo "cri-e2e: containerd $version: pods in user namespaces and image volumes do not apply (containerd >= 2.0 and 2.1); not run"
  fi
  start=$SECONDS
  # One test at a time: each runs its own containerd, and the pods' cgroups
  # share one parent.
  PATH="$bin:$PATH" CONTAINERD_VERSION=$version CRI_E2E_RUNC=$runc_dir \
    cargo test --locked -p rustlayer-e2e --test cri -- --ignored --nocapture --test-threads=1 "${selection[@]}"
  times+=("containerd $version: $((SECONDS - start)) s")
done
for line in "${times[@]}"; do echo "cri-e2e: $line"; done
