#!/usr/bin/env bash
# Runs inside the VM started by hack/vm-test.sh, on Debian's kernel with dm-thin:
#   1. the devmapper backend's Rust tests (real thin pools on loop devices, mounts);
#   2. crash torture: the daemon SIGKILLed 50 times at random instants under
#      concurrent clients, on a self-managed pool, checked after every restart;
#   3. containerd's snapshotter conformance suite against `rustlayer serve
#      --backend devmapper`, a fresh daemon with its own loop-backed pool per case;
#   4. a real containerd with the proxy plugin importing and running the e2e image
#      on rustlayer, with the daemon on an existing thin pool made on virtio disks.
#
#   devmapper-guest.sh OUT_DIR THIN_POOL_TEST_BINARY CRASH_TORTURE_TEST_BINARY
# Logs go to OUT_DIR (shared with the host). Exits non-zero if any part failed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
out=$1
thin_tests=$2
torture_tests=$3
export DM_DISABLE_UDEV=1
start=$(date +%s)
failed=()
section() { printf '\n=== %s (%ss)\n' "$*" "$(($(date +%s) - start))"; }

section "devmapper backend: Rust tests on real thin pools"
# The kernel loads xfs on the first mount that names it. Two tests mounting
# their first xfs filesystems at the same moment raced that load, and one mount
# failed with ENODEV; one xfs mount here, alone, loads it before they start.
xfs_warmup=$(mktemp -d)
truncate -s 320M "$xfs_warmup/image"
mkdir "$xfs_warmup/mnt"
if ! { mkfs.xfs -q "$xfs_warmup/image" && mount -o loop "$xfs_warmup/image" "$xfs_warmup/mnt" &&
  umount "$xfs_warmup/mnt"; }; then
  failed+=("loading xfs")
fi
rm -rf "$xfs_warmup"
# Each needs root and device-mapper, so is ignored unless asked for; asked for,
# a missing prerequisite fails it.
"$thin_tests" --include-ignored --test-threads=2 2>&1 | tee "$out/thin-pool-tests.log"
((PIPESTATUS[0] == 0)) || failed+=("rust tests")

section "crash torture on devmapper: SIGKILL at random instants"
"$torture_tests" --exact sigkill_at_random_instants_loses_nothing_acknowledged_on_devmapper \
  --include-ignored --nocapture 2>&1 | tee "$out/crash-torture.log"
((PIPESTATUS[0] == 0)) || failed+=("crash torture")

section "containerd conformance suite, --backend devmapper"
# A small base keeps each case's mkfs quick; the pool files are sparse.
RUSTLAYER_BACKEND=devmapper \
  RUSTLAYER_CONFIG_TOML=$'[devmapper]\npool_data_size = "512MiB"\npool_metadata_size = "64MiB"\nbase_image_size = "128MiB"\n' \
  CONFORMANCE_LOGS=$out/conformance-logs CONFORMANCE_OUT=$out/conformance.log \
  hack/conformance.sh || failed+=(conformance)

section "real containerd on an existing thin pool (virtio disks)"
data=$RUSTLAYER_VM_DISK_POOLDATA
meta=$RUSTLAYER_VM_DISK_POOLMETA
pool=rustlayer-e2e-pool
# A pool as an operator would make it: fresh metadata (zeroed superblock), 64 KiB
# blocks, errors instead of hangs when full.
dd if=/dev/zero of="$meta" bs=4096 count=1 conv=notrunc status=none
if dmsetup create "$pool" --table "0 $(blockdev --getsz "$data") thin-pool $meta $data 128 1024 1 error_if_no_space"; then
  config=/tmp/rustlayer-devmapper.toml
  cat >"$config" <<CONF
backend = "devmapper"

[devmapper]
pool_name = "$pool"
base_image_size = "512MiB"
CONF
  RUSTLAYER_E2E_CONFIG=$config hack/e2e-containerd.sh 2>&1 | tee "$out/containerd-e2e.log"
  ((PIPESTATUS[0] == 0)) || failed+=("containerd e2e")
else
  failed+=("thin pool on virtio disks")
fi

section "done"
if ((${#failed[@]})); then
  echo "devmapper-guest: FAILED: ${failed[*]}"
  exit 1
fi
echo "devmapper-guest: all passed"
