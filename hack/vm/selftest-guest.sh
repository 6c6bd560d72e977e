#!/usr/bin/env bash
# The guest half of hack/vm/selftest.sh: proves that the VM can do what the
# device-mapper tests need. Run by vm-run.sh with disks named "data" and
# "meta" and the result directory $1 shared read-write. Writes its pass/fail
# counts to $1/guest-counts for the host half to add up.
set -uo pipefail

out=$1
passed=0 failed=0
export DM_DISABLE_UDEV=1 # no udev in the guest: dmsetup makes its own nodes

check() {
	local name=$1 start=$SECONDS
	shift
	# Not "if f" nor "f || ...": errexit is ignored there, and every step of
	# a check must count.
	(
		set -e
		"$@"
	) >/tmp/check.log 2>&1
	# shellcheck disable=SC2181
	if (($? == 0)); then
		echo "ok   - $name ($((SECONDS - start))s)"
		passed=$((passed + 1))
	else
		echo "FAIL - $name ($((SECONDS - start))s)"
		sed 's/^/       /' /tmp/check.log
		failed=$((failed + 1))
	fi
}

# /dev/dm-N of a device-mapper device; names under /dev/mapper may be absent
# without udev.
dmdev() { echo "/dev/$(dmsetup info -c --noheadings -o blkdevname "$1")"; }

in_vm() {
	[[ ${RUSTLAYER_IN_VM:-} == 1 && $(id -u) == 0 ]]
	[[ -b $RUSTLAYER_VM_DISK_DATA && -b $RUSTLAYER_VM_DISK_META ]]
	[[ $RUSTLAYER_VM_DISKS == "$RUSTLAYER_VM_DISK_DATA $RUSTLAYER_VM_DISK_META" ]]
	# 1 GiB data disk, in 512-byte sectors.
	[[ $(blockdev --getsz "$RUSTLAYER_VM_DISK_DATA") == 2097152 ]]
}

filesystems() {
	grep -qw overlay /proc/filesystems
	grep -qw ext4 /proc/filesystems
	grep -qw cgroup2 /proc/mounts
	[[ -c /dev/mapper/control && -c /dev/loop-control ]]
}

# Overlayfs on the scratch tmpfs, as the snapshotter's overlay tests do.
overlay_mount() {
	local d=/tmp/ovl
	mkdir -p $d/lower $d/upper $d/work $d/merged
	echo lower >$d/lower/f
	mount -t overlay overlay -o lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work $d/merged
	echo upper >>$d/merged/f
	[[ $(cat $d/lower/f) == lower && $(cat $d/upper/f) == $'lower\nupper' ]]
	umount $d/merged
}

# Pool "$1" over metadata device $2 and data device $3, 64 KiB blocks.
make_pool() {
	dd if=/dev/zero of="$2" bs=4096 count=1 conv=notrunc status=none
	dmsetup create "$1" --table "0 $(blockdev --getsz "$3") thin-pool $2 $3 128 0"
}

# Thin device $3 with id $2 in pool $1, 1 GiB.
make_thin() {
	dmsetup message "$1" 0 "create_thin $2"
	dmsetup create "$3" --table "0 2097152 thin $(dmdev "$1") $2"
}

thin_pool() {
	make_pool pool "$RUSTLAYER_VM_DISK_META" "$RUSTLAYER_VM_DISK_DATA"
	dmsetup status pool | grep -q thin-pool
}

thin_ext4() {
	make_thin pool 0 thin0
	mkfs.ext4 -q -E nodiscard "$(dmdev thin0)"
	mkdir -p /tmp/thin0
	mount "$(dmdev thin0)" /tmp/thin0
	echo "before snapshot" >/tmp/thin0/file
	sync
}

thin_snapshot() {
	# The origin must be suspended so the snapshot sees flushed data.
	dmsetup suspend thin0
	dmsetup message pool 0 "create_snap 1 0"
	dmsetup resume thin0
	dmsetup create snap1 --table "0 2097152 thin $(dmdev pool) 1"
	echo "after snapshot" >/tmp/thin0/file
	sync
	mkdir -p /tmp/snap1
	mount "$(dmdev snap1)" /tmp/snap1
	[[ $(cat /tmp/snap1/file) == "before snapshot" ]]
	[[ $(cat /tmp/thin0/file) == "after snapshot" ]]
	umount /tmp/snap1 /tmp/thin0
}

# xfs is not preloaded: mounting one must load it on demand.
thin_xfs() {
	make_thin pool 2 thin2
	mkfs.xfs -q -K "$(dmdev thin2)"
	mkdir -p /tmp/thin2
	mount -t xfs "$(dmdev thin2)" /tmp/thin2
	echo xfs >/tmp/thin2/file
	grep -qw xfs /proc/filesystems
	umount /tmp/thin2
}

thin_remove() {
	dmsetup remove snap1
	dmsetup remove thin0
	dmsetup remove thin2
	dmsetup message pool 0 "delete 1"
	dmsetup remove pool
}

loop_pool() {
	truncate -s 512M /tmp/loop-data.img
	truncate -s 16M /tmp/loop-meta.img
	local data meta
	data=$(losetup -f --show /tmp/loop-data.img)
	meta=$(losetup -f --show /tmp/loop-meta.img)
	make_pool lpool "$meta" "$data"
	make_thin lpool 0 lthin
	mkfs.ext4 -q -E nodiscard "$(dmdev lthin)"
	mkdir -p /tmp/lthin
	mount "$(dmdev lthin)" /tmp/lthin
	echo loop >/tmp/lthin/file
	umount /tmp/lthin
	mount "$(dmdev lthin)" /tmp/lthin
	[[ $(cat /tmp/lthin/file) == loop ]]
	umount /tmp/lthin
	dmsetup remove lthin
	dmsetup remove lpool
	losetup -d "$data" "$meta"
}

# Writes under the repo land in the guest's RAM overlay, never on the host;
# the host half checks that this file did not appear.
repo_writable() {
	echo guest >"$PWD/.vm-selftest-probe"
	[[ $(cat "$PWD/.vm-selftest-probe") == guest ]]
}

share_writable() {
	echo "written in the guest" >"$out/from-guest"
}

check "running as root in the VM with both disks" in_vm
check "overlay, ext4, cgroup2, dm and loop control" filesystems
check "overlayfs mount under /tmp" overlay_mount
check "thin-pool on the virtio disks" thin_pool
check "thin device with ext4" thin_ext4
check "thin snapshot keeps the old data" thin_snapshot
check "xfs on a thin device (module loaded on demand)" thin_xfs
check "thin devices and pool removed" thin_remove
check "thin-pool on loop devices" loop_pool
check "repo tree writable in the guest" repo_writable
check "shared directory writable" share_writable

echo "$passed $failed" >"$out/guest-counts"
((failed == 0))
