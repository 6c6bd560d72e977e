#!/usr/bin/env bash
# Runs inside a VM started by hack/vm-test.sh, on Debian's kernel, which has the
# project quotas this host's kernel lacks: the overlay backend's size limits and
# counted usage (e2e/tests/size_limits.rs) on a root with project quotas, once on
# xfs mounted prjquota and once on ext4 made with the quota and project features
# and mounted prjquota. ext4 keeps its quotas in the vfsv1 format, which the
# kernel loads on demand (quota_v2, quota_tree) through the guest's modprobe.
#
# On xfs it also runs the crash torture with a default size (every active snapshot
# a limited project), checking after each SIGKILL that no limit outlives its
# snapshot; RUSTLAYER_TORTURE_KILLS (default 12 here) sets the number of kills.
#
#   quota-guest.sh OUT_DIR SIZE_LIMITS_TEST_BINARY [CRASH_TORTURE_TEST_BINARY]
# Needs the disks quotaxfs and quotaext4 (hack/vm-run.sh --disk). Logs go to
# OUT_DIR (shared with the host). Exits non-zero if any part failed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
out=$1
size_limit_tests=$2
torture_tests=${3:-}
start=$(date +%s)
failed=()
section() { printf '\n=== %s (%ss)\n' "$*" "$(($(date +%s) - start))"; }

# run_on NAME DEVICE MKFS...: makes the filesystem, mounts it with prjquota and
# runs the tests with their root there.
run_on() {
  local name=$1 device=$2 mnt=/tmp/quota-$1
  shift 2
  section "size limits on $name with project quotas"
  mkdir -p "$mnt"
  if ! "$@" "$device" >"$out/mkfs-$name.log" 2>&1 ||
    ! mount -o prjquota "$device" "$mnt" 2>>"$out/mkfs-$name.log"; then
    cat "$out/mkfs-$name.log"
    failed+=("$name with prjquota")
    return
  fi
  RUSTLAYER_QUOTA_ROOT=$mnt RUSTLAYER_USAGE_FILES=${RUSTLAYER_USAGE_FILES:-20000} \
    "$size_limit_tests" --include-ignored --test-threads=1 --nocapture 2>&1 |
    tee "$out/size-limits-$name.log"
  ((PIPESTATUS[0] == 0)) || failed+=("size limits on $name")
  if [[ $name == xfs && -n $torture_tests ]]; then
    section "crash torture on $name with project quotas: SIGKILL at random instants"
    RUSTLAYER_QUOTA_ROOT=$mnt RUSTLAYER_TORTURE_KILLS=${RUSTLAYER_TORTURE_KILLS:-12} \
      "$torture_tests" --exact sigkill_at_random_instants_leaks_no_project_limit_with_project_quotas \
      --include-ignored --nocapture 2>&1 | tee "$out/crash-torture-$name.log"
    ((PIPESTATUS[0] == 0)) || failed+=("crash torture on $name")
  fi
  umount "$mnt"
}

run_on xfs "$RUSTLAYER_VM_DISK_QUOTAXFS" mkfs.xfs -f -q
run_on ext4 "$RUSTLAYER_VM_DISK_QUOTAEXT4" mkfs.ext4 -q -F -O quota,project -I 256

section "done"
if ((${#failed[@]})); then
  echo "quota-guest: FAILED: ${failed[*]}"
  exit 1
fi
echo "quota-guest: all passed"
