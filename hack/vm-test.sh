#!/usr/bin/env bash
# The devmapper tier. This machine's kernel may lack device-mapper, so the tests
# run in a VM booting Debian's kernel (hack/vm-run.sh): the backend's Rust tests,
# containerd's conformance suite against `--backend devmapper`, and a real
# containerd on an existing thin pool made on virtio disks (hack/vm/devmapper-guest.sh);
# then, in a second guest, the overlay backend's size limits and counted usage on
# roots with project quotas, xfs and ext4: the Rust tests, both conformance suites
# with a limit on every snapshot, containerd 2.1.9 running containers that hit
# their limits (hack/size-limits-e2e.sh), and crash torture with limits on xfs
# (hack/vm/quota-guest.sh).
# Everything is built here first; the guest runs the host's binaries.
#
#   hack/vm-test.sh
# Logs of the last run: .cache/vm-test/. Exits non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
start=$(date +%s)

cargo build --locked -p rustlayer
# test_binary PACKAGE TEST: builds one integration test and prints its executable.
test_binary() {
  cargo test --locked -p "$1" --test "$2" --no-run --message-format=json |
    python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
        print(m["executable"])' "$2"
}
thin_tests=$(test_binary rustlayer-devmapper thin_pool)
torture_tests=$(test_binary rustlayer-e2e crash_torture)
size_limit_tests=$(test_binary rustlayer-e2e size_limits)
for t in "$thin_tests" "$torture_tests" "$size_limit_tests"; do
  [[ -x $t ]] || { echo "vm-test: a test binary is missing: '$t'" >&2; exit 1; }
done
CONFORMANCE_BUILD_ONLY=1 hack/conformance.sh
CONFORMANCE_SUITE=2.x CONFORMANCE_BUILD_ONLY=1 hack/conformance.sh
# The quota guest's containerd (the guest has no network; this fills the cache).
hack/containerd-fetch.sh 2.1.9 >/dev/null
export RUSTLAYER_BIN=${RUSTLAYER_BIN:-$repo/target/debug/rustlayer}

out=$repo/.cache/vm-test
rm -rf "$out"
mkdir -p "$out"
rc=0
hack/vm-run.sh --timeout "${VM_TEST_TIMEOUT:-2400}" --mem 6144 \
  --disk pooldata:4G --disk poolmeta:128M --share "$out" \
  -- hack/vm/devmapper-guest.sh "$out" "$thin_tests" "$torture_tests" || rc=$?
hack/vm-run.sh --timeout "${VM_TEST_TIMEOUT:-2400}" --mem 4096 \
  --disk quotaxfs:4G --disk quotaext4:4G --share "$out" --env RUSTLAYER_USAGE_FILES --env RUSTLAYER_TORTURE_KILLS \
  -- hack/vm/quota-guest.sh "$out" "$size_limit_tests" "$torture_tests" || rc=$?
echo "vm-test: $( ((rc == 0)) && echo passed || echo "FAILED (status $rc)") in $(($(date +%s) - start))s; logs in $out"
exit "$rc"
