#!/usr/bin/env bash
# Self-test of hack/vm-run.sh. Boots the VM with two disks and runs
# selftest-guest.sh in it (dm thin-pool, snapshots, ext4, xfs, loop devices,
# overlayfs), then checks from the host what only the host can see: the
# shared directory, that guest writes to the repo stay in the guest, exit
# status and stdout/stderr passing, and the panic and timeout paths.
# Ends with "vm-selftest: N passed, N failed" and exits non-zero on a failure.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
vmrun=$repo/hack/vm-run.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/vm-selftest.XXXXXX")
trap 'rm -rf "$work" "$repo/.vm-selftest-probe"' EXIT
mkdir "$work/share"
passed=0 failed=0

check() {
	local name=$1
	shift
	if "$@"; then
		echo "ok   - host: $name"
		passed=$((passed + 1))
	else
		echo "FAIL - host: $name"
		failed=$((failed + 1))
	fi
}

now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1f", e - s }'; }

t0=$(now)
cache_state=warm
[[ -f .cache/vm/initramfs.cpio.gz ]] || cache_state=cold

# The main run. --verbose adds the guest's console and boot timing to stderr,
# kept in a log that is shown only when something goes wrong.
rc=0
"$vmrun" --verbose --disk data:1G --disk meta:64M --share "$work/share" \
	-- bash hack/vm/selftest-guest.sh "$work/share" 2>"$work/main.log" || rc=$?
boot=$(sed -n 's/.*boot to command: \([0-9.]*\)s.*/\1/p' "$work/main.log")
main_time=$(since "$t0")
check "guest checks ran and passed (exit $rc)" test "$rc" -eq 0
((rc == 0)) || cat "$work/main.log"
if read -r p f <"$work/share/guest-counts" 2>/dev/null; then
	passed=$((passed + p)) failed=$((failed + f))
else
	check "guest reported its counts" false
fi
check "shared directory carries files back" \
	test "$(cat "$work/share/from-guest" 2>/dev/null)" = "written in the guest"
case $repo/ in
/tmp/* | /var/tmp/* | /run/* | /var/lib/*)
	# Such a checkout is shared read-write into the guest (tmpfs would hide it).
	check "a checkout under a tmpfs path is shared, so guest writes come back" \
		test -e "$repo/.vm-selftest-probe"
	rm -f "$repo/.vm-selftest-probe"
	;;
*)
	check "guest writes to the repo stay in the guest" test ! -e "$repo/.vm-selftest-probe"
	;;
esac

# Exit status, and stdout and stderr kept apart.
rc=0
"$vmrun" -- sh -c 'echo to-stdout; echo to-stderr >&2; exit 7' >"$work/out" 2>"$work/err" || rc=$?
check "exit status comes back (got $rc)" test "$rc" -eq 7
check "stdout comes back alone" test "$(cat "$work/out")" = to-stdout
stderr_ok() {
	grep -q '^to-stderr$' "$work/err" &&
		grep -q 'FAILED: guest command exited with status 7' "$work/err"
}
check "stderr comes back, with a failure marker" stderr_ok

# A kernel panic ends the run with 125 and says so.
rc=0
"$vmrun" -- sh -c 'echo c >/proc/sysrq-trigger; sleep 60' >/dev/null 2>"$work/panic" || rc=$?
check "kernel panic is reported (got $rc)" test "$rc" -eq 125
check "kernel panic message" grep -q 'FAILED: guest kernel panic' "$work/panic"

# A guest that runs too long is killed: 124. 3 s is shorter than the boot.
rc=0
"$vmrun" --timeout 3 -- sleep 600 >/dev/null 2>"$work/timeout" || rc=$?
check "timeout kills the guest (got $rc)" test "$rc" -eq 124
check "timeout message" grep -q 'TIMEOUT' "$work/timeout"

echo "vm-selftest timings: cache $cache_state, boot to command ${boot:-?}s," \
	"main run ${main_time}s, whole selftest $(since "$t0")s"
echo "vm-selftest: $passed passed, $failed failed"
((failed == 0))
