#!/usr/bin/env bash
# Runs a command as root inside a throwaway QEMU guest running Debian's stock
# kernel, for tests that need kernel features the host kernel lacks (dm-thin).
#
#   hack/vm-run.sh [options] -- COMMAND [ARGS...]
#
#   --disk NAME:SIZE  attach a new sparse raw disk (SIZE as for truncate: 1G,
#                     64M); repeatable. The guest command gets
#                     RUSTLAYER_VM_DISKS="/dev/vda /dev/vdb ..." in --disk order
#                     and RUSTLAYER_VM_DISK_<NAME>=/dev/vdX for each.
#   --share DIR       share host DIR read-write at the same path; repeatable
#   --env NAME[=VAL]  pass one more environment variable; repeatable
#   --module NAME     load one more kernel module at boot; repeatable
#   --mem MiB         guest memory (default 4096)
#   --cpus N          guest CPUs (default: host CPUs)
#   --timeout SEC     kill the guest after SEC seconds (default 1800)
#   --verbose         print boot timing and the guest's kernel log
#
# The guest's / is the host's / over 9p, read-only, under a RAM overlay, so
# every host binary and file is there and nothing the guest writes reaches the
# host except through --share. /tmp, /var/tmp, /run and /var/lib are separate
# tmpfs mounts. The command runs in the current directory with PATH, HOME,
# RUST_*, RUSTLAYER_*, CARGO_*, RUSTUP_* and a few locale variables passed
# through, plus RUSTLAYER_IN_VM=1. Its stdin is /dev/null; its stdout and
# stderr come back separately; its exit status is the script's. 124 means the timeout hit, 125 that the
# guest died (kernel panic, init failure) before reporting a status.
#
# The guest runs under TCG emulation, not KVM, on purpose: the machines this
# runs on are VMs themselves, and nested KVM there is slower than TCG.
#
# The kernel is Debian's linux-image-*-amd64, downloaded with apt-get and
# cached in <repo>/.cache/vm with a small initramfs built here from the host's
# busybox-static. Both are rebuilt only when the package version or the init
# script changes.
set -euo pipefail

# Host Debian packages needed. The guest runs the host's userland, so whatever
# the guest command uses (dmsetup, mkfs.*) must be installed on the host.
VM_PACKAGES=(
	qemu-system-x86         # the emulator
	busybox-static          # the initramfs userland (must be static)
	cpio                    # to pack the initramfs
	dmsetup                 # device-mapper control in the guest
	thin-provisioning-tools # thin_check and friends, for dm-thin pools
	e2fsprogs xfsprogs      # mkfs for thin devices
	util-linux              # losetup, mount, flock
)

# Modules loaded at boot, in this order after their dependencies: virtio
# transport and devices, the 9p root, then what the tests use. Soft
# dependencies are not followed, so crc32c_generic comes early: libcrc32c
# (needed by dm-persistent-data and xfs) fails to load without it.
# Anything else, xfs included, the kernel loads on demand (mount -t xfs does)
# from the full module tree. xfs is not preloaded because its initialisation
# alone takes ~2 s under TCG; add --module xfs when a test must see it in
# /proc/filesystems before mounting one.
VM_MODULES=(
	virtio_pci virtio_blk virtio_console virtio-rng 9pnet_virtio 9p overlay
	crc32c_generic dm-mod dm-bufio dm-bio-prison dm-persistent-data dm-thin-pool
	loop ext4
)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vmdir=$repo/hack/vm
cache=${RUSTLAYER_VM_CACHE:-$repo/.cache/vm}

fwd_pids=()

say() { echo "vm-run: $*" >&2; }
die() {
	say "$*"
	exit 125
}

usage() {
	sed -n '2,/^set -euo/{/^#/!d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
	exit 2
}

# Single-quotes a string for sh, so values survive any characters.
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

ensure_packages() {
	local missing=() p
	for p in "${VM_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	[[ $(id -u) -eq 0 ]] || die "missing packages (need root to install): ${missing[*]}"
	say "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Writes the uncompressed ELF kernel inside bzImage $1 to $2. QEMU boots that
# directly through its PVH entry point, skipping the firmware and the
# decompressor, which under TCG take about 5 s together.
extract_vmlinux() {
	local magic off
	for magic in '\xfd7zXZ\x00:xz -dc' '\x28\xb5\x2f\xfd:zstd -qdc' '\x1f\x8b\x08:gzip -dc'; do
		# shellcheck disable=SC2013 # offsets are numbers
		for off in $(LC_ALL=C grep -obUaP "${magic%%:*}" "$1" | cut -d: -f1); do
			# Trailing bytes after the stream make the tool complain; the
			# ELF header check below is what decides.
			tail -c +$((off + 1)) "$1" | ${magic#*:} >"$2" 2>/dev/null || true
			[[ $(head -c 4 "$2" | od -An -c | tr -d ' ') == '177ELF' ]] && return 0
		done
	done
	rm -f "$2"
	return 1
}

# Sets kdir to a directory holding vmlinuz (and vmlinux when it could be
# extracted), lib/modules/<kver>/ with a modules.dep, and a "package" file
# naming the Debian package it came from.
prepare_kernel() {
	kdir=$cache/kernel
	local have="" want
	[[ -f $kdir/package ]] && have=$(<"$kdir/package")
	want=$(kernel_package)
	if [[ -z $want ]]; then
		# No apt lists (apt-get update never ran): a cached kernel will do.
		[[ -n $have ]] && return 0
		apt-get update -qq
		want=$(kernel_package)
		[[ -n $want ]] || die "apt knows no linux-image-amd64"
	fi
	[[ $have == "$want" ]] && return 0
	if ! download_kernel "$want"; then
		# The lists may name a version the archive has since replaced.
		apt-get update -qq
		want=$(kernel_package)
		[[ $have == "$want" ]] && return 0
		if ! download_kernel "$want"; then
			[[ -n $have ]] || die "cannot download the kernel package $want"
			say "cannot download $want; using the cached $have"
			return 0
		fi
	fi
	unpack_kernel "$want"
}

# Prints "PACKAGE VERSION" of the kernel linux-image-amd64 currently points to,
# or nothing when apt does not know.
kernel_package() {
	local pkg ver
	pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
	[[ -n $pkg ]] || return 0
	ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | awk '$1 == "Version:" { print $2; exit }')
	[[ -n $ver ]] && echo "$pkg $ver"
	return 0
}

# Downloads the kernel package "$1" ("PACKAGE VERSION") into $cache/kernel.new.
download_kernel() {
	local tmp=$cache/kernel.new
	say "fetching kernel $1"
	rm -rf "$tmp"
	mkdir -p "$tmp/deb"
	(cd "$tmp/deb" && apt-get download -q -o APT::Sandbox::User=root "${1% *}=${1#* }" >/dev/null)
}

# Unpacks the package download_kernel fetched and makes it $kdir.
unpack_kernel() {
	local tmp=$cache/kernel.new kver
	dpkg-deb -x "$tmp"/deb/*.deb "$tmp/x"
	kver=$(basename "$(echo "$tmp"/x/lib/modules/*)")
	mkdir -p "$tmp/lib/modules"
	mv "$tmp/x/boot/vmlinuz-$kver" "$tmp/vmlinuz"
	extract_vmlinux "$tmp/vmlinuz" "$tmp/vmlinux" || say "no ELF kernel in vmlinuz; booting the slow way"
	mv "$tmp/x/lib/modules/$kver" "$tmp/lib/modules/"
	# Drivers for hardware a virtio guest never has: half the modules, most of
	# the size, and of the depmod time.
	(cd "$tmp/lib/modules/$kver/kernel" && rm -rf sound drivers/{gpu,media,net/wireless,net/ethernet,infiniband,staging,iio,hid,input,usb,bluetooth,comedi,isdn,mtd,video,hwmon,thunderbolt,mmc})
	# busybox-static rather than kmod: the initramfs userland is busybox anyway.
	busybox depmod -b "$tmp" "$kver"
	rm -rf "$tmp/deb" "$tmp/x"
	echo "$1" >"$tmp/package"
	rm -rf "$kdir"
	mv "$tmp" "$kdir"
}

# Prints the paths (relative to module directory $1) of the modules named
# after it, each after everything it depends on; built-in ones are skipped.
# modules.dep lists a module's whole dependency closure but not in a
# dependable order, so this walks it depth-first.
resolve_modules() {
	local dir=$1
	shift
	local -A path=() seen=()
	local line file m
	while IFS= read -r line; do
		file=${line%%:*}
		m=${file##*/}
		m=${m%%.ko*}
		path[${m//-/_}]=$line
	done <"$dir/modules.dep"
	while IFS= read -r file; do
		m=${file##*/}
		m=${m%%.ko*}
		seen[${m//-/_}]=1
	done <"$dir/modules.builtin"
	visit() {
		local key=${1//-/_} rest d
		[[ -n ${seen[$key]:-} ]] && return 0
		seen[$key]=1
		[[ -n ${path[$key]:-} ]] || die "kernel module $1 not found"
		rest=${path[$key]#*:}
		for d in $rest; do
			d=${d##*/}
			visit "${d%%.ko*}"
		done
		echo "${path[$key]%%:*}"
	}
	for m in "$@"; do visit "$m"; done
}

# Sets initrd to a cpio archive with busybox, init.sh and the boot modules,
# rebuilt when any of its inputs change.
prepare_initramfs() {
	initrd=$cache/initramfs.cpio.gz
	local kver stamp
	kver=$(basename "$(echo "$kdir"/lib/modules/*)")
	stamp=$( {
		cat "$kdir/package" "$vmdir/init.sh"
		echo "${VM_MODULES[*]}"
		sha256sum /bin/busybox
	} | sha256sum | cut -d' ' -f1)
	[[ -f $initrd && "$(cat "$initrd.stamp" 2>/dev/null)" == "$stamp" ]] && return 0

	ldd /bin/busybox >/dev/null 2>&1 && die "/bin/busybox is dynamic; install busybox-static"
	say "building initramfs"
	local root=$cache/initramfs.root m name
	rm -rf "$root"
	mkdir -p "$root"/{bin,dev,proc,sys,etc,lib/modules}
	cp /bin/busybox "$root/bin/"
	install -m 0755 "$vmdir/init.sh" "$root/init"
	: >"$root/etc/modules.load"
	local mods
	mods=$(resolve_modules "$kdir/lib/modules/$kver" "${VM_MODULES[@]}")
	for m in $mods; do
		name=${m##*/}
		# busybox insmod cannot read compressed modules; Debian 12 ships them
		# plain, but later kernels compress them.
		case $name in
		*.ko.xz) xz -dc "$kdir/lib/modules/$kver/$m" >"$root/lib/modules/${name%.xz}" ;;
		*.ko.zst) zstd -qdc "$kdir/lib/modules/$kver/$m" >"$root/lib/modules/${name%.zst}" ;;
		*.ko.gz) gzip -dc "$kdir/lib/modules/$kver/$m" >"$root/lib/modules/${name%.gz}" ;;
		*) cp "$kdir/lib/modules/$kver/$m" "$root/lib/modules/" ;;
		esac
		name=${name%.ko*}.ko
		echo "$name" >>"$root/etc/modules.load"
	done
	(cd "$root" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet) | gzip -6 >"$initrd.tmp"
	mv "$initrd.tmp" "$initrd"
	echo "$stamp" >"$initrd.stamp"
	rm -rf "$root"
}

# Writes the per-run files the guest init reads from the run share.
write_config() {
	local names="" d
	for d in "${disk_names[@]}"; do names+="$d "; done
	{
		echo "VM_DISKS=$(sq "$names")"
		echo "VM_MODULES_DIR=$(sq "$(echo "$kdir"/lib/modules/*)")"
	} >"$run/config"
	: >"$run/shares"
	local i
	for i in "${!shares[@]}"; do echo "share$i ${shares[$i]}" >>"$run/shares"; done

	# The command script runs under the host's bash as the guest's root.
	{
		echo "# generated by vm-run.sh"
		local name
		for name in $(compgen -e); do
			case $name in
			PATH | HOME | USER | LANG | LC_* | TZ | TERM | CI | RUST_* | RUSTLAYER_* | CARGO_* | RUSTUP_*)
				echo "export $name=$(sq "${!name}")"
				;;
			esac
		done
		for d in "${extra_env[@]}"; do
			if [[ $d == *=* ]]; then
				echo "export ${d%%=*}=$(sq "${d#*=}")"
			elif [[ -n ${!d+x} ]]; then
				echo "export $d=$(sq "${!d}")"
			fi
		done
		echo ". /run/vm-init/disks.env"
		echo "export RUSTLAYER_IN_VM=1"
		# A directory under the guest's own tmpfs mounts (/tmp...) is not there.
		echo "cd -- $(sq "$PWD") 2>/dev/null ||"
		echo "	{ echo 'vm-run: the working directory is not in the guest (use --share); running in /' >&2; cd /; }"
		printf 'exec'
		for d in "${cmd[@]}"; do printf ' %s' "$(sq "$d")"; done
		echo
	} >"$run/cmd.sh"
}

cleanup() {
	local p
	for p in ${qemu_pid:-} "${fwd_pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	[[ -n ${run:-} ]] && rm -rf "$run"
}

main() {
	disk_names=() disk_sizes=() shares=() extra_env=() cmd=()
	local mem=4096 cpus timeout=1800 verbose=0
	cpus=$(nproc)
	while (($#)); do
		case $1 in
		--disk)
			# The name becomes the disk's serial, which virtio caps at 20 bytes.
			[[ ${2:-} =~ ^([A-Za-z0-9_-]{1,20}):([0-9]+[KMGT]?)$ ]] || die "--disk wants NAME:SIZE, got '${2:-}'"
			[[ " ${disk_names[*]} " != *" ${BASH_REMATCH[1]} "* ]] || die "--disk ${BASH_REMATCH[1]} given twice"
			disk_names+=("${BASH_REMATCH[1]}") disk_sizes+=("${BASH_REMATCH[2]}")
			shift 2
			;;
		--share)
			[[ -d ${2:-} ]] || die "--share: no directory '${2:-}'"
			shares+=("$(cd "$2" && pwd)")
			shift 2
			;;
		--env) extra_env+=("$2") && shift 2 ;;
		--module) VM_MODULES+=("$2") && shift 2 ;;
		--mem) mem=$2 && shift 2 ;;
		--cpus) cpus=$2 && shift 2 ;;
		--timeout) timeout=$2 && shift 2 ;;
		--verbose) verbose=1 && shift ;;
		--) shift && cmd=("$@") && break ;;
		-h | --help) usage ;;
		*) say "unknown option $1" && usage ;;
		esac
	done
	((${#cmd[@]})) || usage
	# A checkout under a directory the guest replaces with tmpfs (CI clones into
	# /tmp) would vanish in the guest: share it so the command finds its files.
	case $PWD/ in
	/tmp/* | /var/tmp/* | /run/* | /var/lib/*)
		[[ " ${shares[*]} " == *" $PWD "* ]] || shares+=("$PWD")
		;;
	esac

	ensure_packages
	trap cleanup EXIT
	run=$(mktemp -d "${RUSTLAYER_VM_TMPDIR:-/var/tmp}/vm-run.XXXXXX")
	mkdir -p "$cache"
	# One builder at a time. The initramfs is copied while holding the lock:
	# a concurrent run with other --module flags may rebuild it right after.
	{
		flock 9
		prepare_kernel
		prepare_initramfs
		cp "$initrd" "$run/initramfs.cpio.gz"
	} 9>"$cache/.lock"
	write_config

	local kernel=$kdir/vmlinuz
	[[ -f $kdir/vmlinux ]] && kernel=$kdir/vmlinux
	local append="console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off random.trust_cpu=on 8250.nr_uarts=1 i8042.noaux i8042.nokbd i8042.nopnp"
	((verbose)) && append+=" vmtrace=1"

	# shellcheck disable=SC2054 # the commas are qemu's
	local args=(
		-nodefaults -no-user-config -display none -no-reboot
		-machine q35 -accel tcg -cpu max -smp "$cpus" -m "$mem"
		-kernel "$kernel" -initrd "$run/initramfs.cpio.gz"
		-append "$append"
		-serial "file:$run/console.log"
		-device virtio-rng-pci
		-fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"
		-device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
		-fsdev "local,id=vmrun,path=$run,security_model=none"
		-device virtio-9p-pci,fsdev=vmrun,mount_tag=vmrun
		# The command's stdout and stderr, as raw virtio ports (no tty layer,
		# no kernel messages mixed in), forwarded by cat below.
		-device virtio-serial-pci
		-chardev "file,id=stdout,path=$run/stdout.fifo"
		-device virtserialport,chardev=stdout,name=stdout
		-chardev "file,id=stderr,path=$run/stderr.fifo"
		-device virtserialport,chardev=stderr,name=stderr
	)
	local i
	for i in "${!shares[@]}"; do
		args+=(-fsdev "local,id=share$i,path=${shares[$i]},security_model=none"
			-device "virtio-9p-pci,fsdev=share$i,mount_tag=share$i")
	done
	for i in "${!disk_names[@]}"; do
		truncate -s "${disk_sizes[$i]}" "$run/disk$i.img"
		# cache=unsafe: the disks die with the VM, so flushes are pointless.
		args+=(-drive "file=$run/disk$i.img,format=raw,if=none,id=disk$i,cache=unsafe"
			-device "virtio-blk-pci,drive=disk$i,serial=${disk_names[$i]}")
	done

	mkfifo "$run/stdout.fifo" "$run/stderr.fifo"
	cat "$run/stdout.fifo" &
	fwd_pids=($!)
	cat "$run/stderr.fifo" >&2 &
	fwd_pids+=($!)

	local start qrc=0
	start=$(date +%s.%N)
	# --foreground keeps qemu in our process group, so ^C reaches it too.
	timeout --foreground -k 10 "$timeout" qemu-system-x86_64 "${args[@]}" </dev/null >&2 &
	qemu_pid=$!
	wait "$qemu_pid" || qrc=$?
	qemu_pid=
	# Let cat drain the fifos. If qemu never opened them, opening one here
	# read-write (never blocks) gives a cat still waiting in open() its EOF.
	: <>"$run/stdout.fifo"
	: <>"$run/stderr.fifo"
	wait "${fwd_pids[@]}" || true
	fwd_pids=()
	local end
	end=$(date +%s.%N)

	if ((verbose)); then
		say "--- guest console ---"
		cat "$run/console.log" >&2
		say "--- end of guest console ---"
		if [[ -f $run/started ]]; then
			say "$(awk -v s="$start" -v e="$end" -v t="$(stat -c %.9Y "$run/started")" -v up="$(cut -d' ' -f1 "$run/started")" \
				'BEGIN { printf "boot to command: %.2fs (guest kernel %.2fs), whole run: %.2fs", t - s, up, e - s }')"
		fi
	fi

	local status
	status=$(cat "$run/status" 2>/dev/null || true)
	if [[ $status =~ ^[0-9]+$ ]]; then
		((status == 0)) || say "FAILED: guest command exited with status $status"
		return "$status"
	fi
	if ((qrc == 124)); then
		say "FAILED: TIMEOUT: guest killed after ${timeout}s"
		return 124
	fi
	if grep -q "Kernel panic" "$run/console.log" 2>/dev/null; then
		say "FAILED: guest kernel panic"
	else
		say "FAILED: guest stopped without reporting a status (qemu exit $qrc)"
	fi
	if ((!verbose)); then
		say "--- last lines of the guest console ---"
		tail -n 40 "$run/console.log" >&2 || true
	fi
	return 125
}

main "$@"
