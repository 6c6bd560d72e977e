#!/bin/busybox sh
# Guest init for hack/vm-run.sh, run by busybox sh.
#
# Stage 1 runs as /init from the initramfs: it loads the kernel modules, builds
# the guest's root (the host's / over 9p, read-only, under a tmpfs overlay), and
# switch_roots into it. Stage 2 then runs as PID 1 from /run/vm-init inside the
# new root: it runs the command, hands its exit status back to the host through
# the per-run share, and powers off.
#
# The host passes everything per run through the 9p share tagged "vmrun":
#   config   sourced here (shell variables, see vm-run.sh write_config)
#   cmd.sh   the command, with its environment and working directory
#   started  written by stage 2 just before the command runs (boot timing)
#   status   written by stage 2 with the command's exit status
# No status file means the guest never got that far; the host then shows the
# kernel console log.

bb=/bin/busybox
msize=512000 # the largest the 6.1 virtio transport accepts

# vm-run.sh --verbose puts vmtrace=1 on the kernel command line, which the
# kernel hands to init as an environment variable.
trace() {
	[ -n "${vmtrace:-}" ] || return 0
	read -r up _ </proc/uptime
	echo "vm-init: $up $*" >&2
}

fail() {
	echo "vm-init: $*" >&2
	$bb sync
	$bb poweroff -f
	# poweroff -f does not return; if it somehow does, don't let PID 1 exit.
	while :; do $bb sleep 3600; done
}

stage1() {
	export PATH=/bin
	$bb --install -s /bin
	mount -t proc proc /proc
	mount -t sysfs sysfs /sys
	mount -t devtmpfs devtmpfs /dev
	trace "loading modules"

	# The module list was put in load order (dependencies first) by the host.
	while read -r m; do
		trace "insmod $m"
		insmod "/lib/modules/$m" || fail "insmod $m failed"
	done </etc/modules.load

	trace "mounting"
	mkdir -p /vmrun /lower /upper /newroot
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=$msize vmrun /vmrun ||
		fail "cannot mount the run share"
	# shellcheck disable=SC1091 # written per run by vm-run.sh
	. /vmrun/config

	# The host's / is a read-only 9p export. cache=loose is safe because the
	# host does not change what the guest reads while it runs (build outputs
	# are finished before the VM starts) and makes exec and stat much faster.
	mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=$msize,cache=loose hostroot /lower ||
		fail "cannot mount the host root"
	# A tmpfs overlay makes the whole tree writable in RAM, so a test that
	# writes next to its inputs (target/, .cache/) still works, and the host
	# never sees it.
	mount -t tmpfs -o mode=0755 upper /upper
	mkdir -p /upper/data /upper/work
	if ! mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot; then
		echo "vm-init: overlay root failed, using the read-only root" >&2
		mount --bind /lower /newroot
	fi

	r=/newroot
	# Scratch filesystems of their own, not overlay: tests mount overlayfs and
	# loop files under these, and overlayfs cannot be the upper of another.
	mount -t tmpfs -o mode=1777 tmpfs $r/tmp
	mount -t tmpfs -o mode=1777 tmpfs $r/var/tmp
	mount -t tmpfs -o mode=0755 tmpfs $r/run
	mount -t tmpfs -o mode=0755 tmpfs $r/var/lib
	mount -t proc proc $r/proc
	mount -t sysfs sysfs $r/sys
	mount -t cgroup2 cgroup2 $r/sys/fs/cgroup
	mount -t devtmpfs devtmpfs $r/dev
	mkdir -p $r/dev/pts $r/dev/shm $r/dev/virtio-ports
	mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts $r/dev/pts
	mount -t tmpfs -o mode=1777 tmpfs $r/dev/shm
	# What udev or systemd would otherwise create.
	ln -sf /proc/self/fd $r/dev/fd
	ln -sf /proc/self/fd/0 $r/dev/stdin
	ln -sf /proc/self/fd/1 $r/dev/stdout
	ln -sf /proc/self/fd/2 $r/dev/stderr
	for p in /sys/class/virtio-ports/*; do
		[ -e "$p/name" ] && ln -sf "/dev/${p##*/}" "$r/dev/virtio-ports/$(cat "$p/name")"
	done

	# Shares are "tag path" lines; mounted after the tmpfs so one may live
	# under /tmp. cache=mmap: no caching, so the host sees writes at once.
	while read -r tag path; do
		[ -n "$tag" ] || continue
		mkdir -p "$r$path"
		mount -t 9p -o trans=virtio,version=9p2000.L,msize=$msize,cache=mmap "$tag" "$r$path" ||
			fail "cannot mount share $path"
	done </vmrun/shares

	# Disks are told apart by the serial the host gave them, not by order.
	: >/disks.env
	disks=
	for name in $VM_DISKS; do
		dev=
		for b in /sys/block/vd*; do
			[ "$(cat "$b/serial" 2>/dev/null)" = "$name" ] && dev=/dev/${b##*/}
		done
		[ -n "$dev" ] || fail "disk $name not found"
		disks="$disks${disks:+ }$dev"
		var=$(echo "$name" | tr 'a-z-' 'A-Z_')
		echo "export RUSTLAYER_VM_DISK_$var=$dev" >>/disks.env
	done
	echo "export RUSTLAYER_VM_DISKS='$disks'" >>/disks.env

	# Stage 2 needs its busybox after the initramfs is gone.
	mkdir -p $r/run/vm $r/run/vm-init
	cp /bin/busybox /init /disks.env $r/run/vm-init/
	ln -s busybox $r/run/vm-init/modprobe
	mount --move /vmrun $r/run/vm

	# The kernel's full module tree (from the host's cache) lets the kernel
	# autoload anything the preloaded list missed, via busybox modprobe.
	if [ -n "$VM_MODULES_DIR" ] && [ -d "$r$VM_MODULES_DIR" ]; then
		kver=$(uname -r)
		mkdir -p "$r/lib/modules/$kver" 2>/dev/null &&
			mount --bind "$r$VM_MODULES_DIR" "$r/lib/modules/$kver" &&
			echo /run/vm-init/modprobe >/proc/sys/kernel/modprobe
	fi

	hostname rustlayer-vm
	ip link set lo up

	trace "switching root"
	umount /proc /sys /dev 2>/dev/null
	# shellcheck disable=SC2093 # the fail below runs only if exec fails
	exec switch_root /newroot /run/vm-init/busybox sh /run/vm-init/init stage2
	fail "switch_root failed"
}

stage2() {
	bb=/run/vm-init/busybox
	cd /
	$bb cat /proc/uptime >/run/vm/started
	/bin/bash /run/vm/cmd.sh </dev/null >/dev/virtio-ports/stdout 2>/dev/virtio-ports/stderr
	echo $? >/run/vm/status
	$bb sync
	$bb poweroff -f
	while :; do $bb sleep 3600; done
}

case "${1:-stage1}" in
stage2) stage2 ;;
*) stage1 ;;
esac
