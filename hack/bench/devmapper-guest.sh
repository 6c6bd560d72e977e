#!/usr/bin/env bash
# Row 7 of hack/bench.sh, run inside the VM of hack/vm-run.sh (Debian's kernel, with
# dm-thin): rustlayer's devmapper backend against containerd's own devmapper
# snapshotter, through one containerd, measured the same way and interleaved. Each
# gets its own thin pool, made identically on its own pair of virtio disks of the
# same sizes, and the same base size and filesystem (ext4, 1 GiB, discard on).
#
#   devmapper-guest.sh RESULTS BIN BENCH ARCHIVE IMAGE LAYERS ROUNDS CYCLES IMPORT_ROUNDS RUNS
#
# RESULTS is the JSON-lines file (in a directory shared with the host) the figures
# are appended to; BIN and BENCH the rustlayer and rustlayer-bench binaries;
# ARCHIVE the OCI archive of IMAGE, LAYERS layers. The disks come from hack/vm-run.sh
# as RUSTLAYER_VM_DISK_{RLDATA,RLMETA,CDDATA,CDMETA}.
set -euo pipefail
export LC_ALL=C
# No udev in the guest: libdevmapper (ours, and containerd's dmsetup) makes the
# device nodes itself.
export DM_DISABLE_UDEV=1
cd "$(dirname "$0")/../.."
# shellcheck source=hack/lib/containerd.sh
source hack/lib/containerd.sh
# shellcheck source=hack/lib/process.sh
source hack/lib/process.sh
# shellcheck source=hack/bench/lib.sh
source hack/bench/lib.sh
results=$1 bin=$2 bench=$3 archive=$4 image=$5 layers=$6 rounds=$7 cycles=$8 import_rounds=$9 runs=${10}
row="7 devmapper"
me="bench-vm"

tmp=/var/lib/rustlayer-bench
mkdir -p "$tmp/containerd" "$tmp/runc"
sock=$tmp/containerd.sock rl_sock=$tmp/rl.sock
rl_pid='' cd_pid=''
cleanup() {
  local rc=$?
  set +e
  [[ -n $cd_pid ]] && kill -TERM "$cd_pid" && wait "$cd_pid"
  [[ -n $rl_pid ]] && kill -TERM "$rl_pid" && wait "$rl_pid"
  exit "$rc"
}
trap cleanup EXIT

# make_pool NAME DATA METADATA: a pool as an operator makes one (zeroed metadata
# superblock, 64 KiB blocks, no zeroing of new blocks, errors instead of hangs).
make_pool() {
  dd if=/dev/zero of="$3" bs=4096 count=1 conv=notrunc status=none
  dmsetup create "$1" --table \
    "0 $(blockdev --getsz "$2") thin-pool $3 $2 128 32768 1 skip_block_zeroing error_if_no_space"
}
say "two thin pools"
make_pool bench-rl-pool "$RUSTLAYER_VM_DISK_RLDATA" "$RUSTLAYER_VM_DISK_RLMETA"
make_pool bench-cd-pool "$RUSTLAYER_VM_DISK_CDDATA" "$RUSTLAYER_VM_DISK_CDMETA"

say "rustlayer (devmapper backend) and containerd (devmapper snapshotter)"
cat >"$tmp/rustlayer.toml" <<EOF
backend = "devmapper"

[devmapper]
pool_name = "bench-rl-pool"
base_image_size = "1GiB"
fs_type = "ext4"
discard_blocks = true
EOF
env -u RUST_LOG "$bin" serve --config "$tmp/rustlayer.toml" --root "$tmp/rl" --address "$rl_sock" \
  >"$tmp/rustlayer.log" 2>&1 &
rl_pid=$!
wait_for_socket 60 "$rl_pid" rustlayer "$rl_sock" || die "$(tail -n 20 "$tmp/rustlayer.log")"

# containerd 1.6's devmapper snapshotter: ext4 is its only filesystem; deletes
# synchronously (async_remove's default), as it ships.
containerd_config "$tmp/containerd/root" "$tmp/containerd/state" "$sock" "$rl_sock" '[plugins."io.containerd.snapshotter.v1.devmapper"]
  root_path = "'"$tmp"'/cd-devmapper"
  pool_name = "bench-cd-pool"
  base_image_size = "1024MB"
  discard_blocks = true' >"$tmp/containerd.toml"
containerd_start "$tmp/containerd.toml" "$tmp/containerd.log" "$sock" 60 || true
cd_pid=$containerd_pid
kill -0 "$cd_pid" 2>/dev/null || die "containerd exited during start: $(tail -n 20 "$tmp/containerd.log")"
plugins=$(containerd_has_snapshotters "$sock" rustlayer devmapper) ||
  die "containerd lacks a working snapshotter (rustlayer, devmapper):"$'\n'"$plugins"$'\n'"$(tail -n 30 "$tmp/containerd.log")"

settle() {
  gc_now
  sync
}

say "snapshot cycle: $rounds rounds x $cycles cycles"
cycle_rounds "$row" "$rounds" "$cycles" 3 --snapshotter rustlayer --snapshotter devmapper
settle

say "image import, cold: $import_rounds rounds"
interleaved_imports import_cold "$row" "$import_rounds" rustlayer devmapper

say "container start: $rounds rounds x $runs runs"
container_starts "$row" devmapper "$rounds" "$runs"
say "done"
