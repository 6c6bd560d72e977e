#!/usr/bin/env bash
# Runs inside a VM started by hack/vm-test.sh, on Debian's kernel, which has the
# project quotas this host's kernel lacks: the overlay backend's size limits and
# counted usage (e2e/tests/size_limits.rs) on a root with project quotas, once on
# xfs mounted prjquota and once on ext4 made with the quota and project features
# and mounted prjquota. ext4 keeps its quotas in the vfsv1 format, which the
# kernel loads on demand (quota_v2, quota_tree) through the guest's modprobe.
#
# On each it then runs containerd's snapshotter conformance suites (2.x's on
# both, 1.6's on xfs) with every daemon's root on that filesystem and a default size with
# enforce_size on, so every active snapshot of every case is a limited project (a
# daemon that found no project quotas would refuse to start); and a real
# containerd 2.1.9 running containers on rustlayer there, one hitting its size
# limit while others write on (hack/size-limits-e2e.sh).
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
  RUSTLAYER_QUOTA_ROOT=$mnt RUSTLAYER_USAGE_FILES=${RUSTLAYER_USAGE_FILES:-100000} \
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
  # 2.x's suite (what our users' containerd runs) on both filesystems; 1.6's,
  # an older cut of the same cases, on xfs only, to keep the tier's time down.
  local suite suites=(2.x)
  [[ $name == xfs ]] && suites=(1.6 2.x)
  for suite in "${suites[@]}"; do
    section "containerd $suite conformance suite on $name with project quotas, a default size on every snapshot"
    mkdir -p "$mnt/conformance"
    # The suite makes each case's root under TMPDIR, so every daemon's root
    # is on this filesystem.
    TMPDIR=$mnt/conformance CONFORMANCE_SUITE=$suite \
      RUSTLAYER_CONFIG_TOML=$'[overlay]\ndefault_size = "256MiB"\nenforce_size = true\n' \
      CONFORMANCE_LOGS=$out/conformance-$suite-$name-logs CONFORMANCE_OUT=$out/conformance-$suite-$name.log \
      hack/conformance.sh 2>&1 | tail -n 8
    ((PIPESTATUS[0] == 0)) || failed+=("conformance $suite on $name")
  done
  section "containerd running containers with size limits on $name"
  RUSTLAYER_QUOTA_ROOT=$mnt CONTAINERD_VERSION=2.1.9 hack/size-limits-e2e.sh 2>&1 |
    tee "$out/size-limits-e2e-$name.log"
  ((PIPESTATUS[0] == 0)) || failed+=("containerd size limits on $name")
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
