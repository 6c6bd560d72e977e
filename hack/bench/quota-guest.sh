#!/usr/bin/env bash
# Row 8 of hack/bench.sh, run inside the VM of hack/vm-run.sh (Debian's kernel,
# which has the project quotas this machine's may lack): accounting active layers
# on a root with project quotas, rustlayer (quota counters) against containerd's
# overlayfs (a walk of the layer), through one containerd 2.1.9, both roots on the
# same xfs filesystem mounted prjquota (rustlayer-bench active-usage):
#   - Usage of one active layer of FILES small files;
#   - the CPU containerd (and rustlayer's daemon, for rustlayer) spend on one stats
#     pass as containerd's CRI makes one every 10 s: Walk, then Usage of each of
#     CONTAINERS active layers of FILES_EACH files.
#
#   quota-guest.sh RESULTS BIN BENCH ROUNDS FILES CONTAINERS FILES_EACH
#
# RESULTS is the JSON-lines file (in a directory shared with the host) the figures
# are appended to; BIN and BENCH the rustlayer and rustlayer-bench binaries. The
# disk comes from hack/vm-run.sh as RUSTLAYER_VM_DISK_QUOTA.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/../.."
# shellcheck source=hack/lib/containerd.sh
source hack/lib/containerd.sh
# shellcheck source=hack/lib/process.sh
source hack/lib/process.sh
# shellcheck source=hack/bench/lib.sh
source hack/bench/lib.sh
results=$1 bin=$2 bench=$3 rounds=$4 files=$5 containers=$6 files_each=$7
me="bench-quota-vm"

tmp=/var/lib/rustlayer-quota-bench
mkdir -p "$tmp"
sock=$tmp/containerd.sock rl_sock=$tmp/rl.sock
rl_pid='' containerd_pid=''
cleanup() {
  local rc=$?
  set +e
  stop_pid "$containerd_pid" containerd
  stop_pid "$rl_pid" rustlayer
  unmount_under "$tmp"
  umount "$tmp"
  exit "$rc"
}
trap cleanup EXIT

say "xfs mounted prjquota"
mkfs.xfs -f -q "$RUSTLAYER_VM_DISK_QUOTA"
mount -o prjquota "$RUSTLAYER_VM_DISK_QUOTA" "$tmp"

say "rustlayer and containerd 2.1.9, both roots on it"
CONTAINERD_VERSION=2.1.9
containerd_use || die "no containerd $CONTAINERD_VERSION"
: >"$tmp/rustlayer.toml"
env -u RUST_LOG "$bin" serve --config "$tmp/rustlayer.toml" --root "$tmp/rl" --address "$rl_sock" \
  >"$tmp/rustlayer.log" 2>&1 &
rl_pid=$!
wait_for_socket 60 "$rl_pid" rustlayer "$rl_sock" || die "$(tail -n 20 "$tmp/rustlayer.log")"
# Without quota counters the row would compare two walks.
grep -q 'project quotas: on' "$tmp/rustlayer.log" ||
  die "rustlayer found no project quotas on its root: $(grep -i 'project quotas' "$tmp/rustlayer.log")"
containerd_config "$tmp/containerd/root" "$tmp/containerd/state" "$sock" "$rl_sock" >"$tmp/containerd.toml"
containerd_start "$tmp/containerd.toml" "$tmp/containerd.log" "$sock" 60 ||
  die "containerd did not start: $(tail -n 20 "$tmp/containerd.log")"
plugins=$(containerd_has_snapshotters "$sock" rustlayer overlayfs) ||
  die "containerd lacks a working snapshotter (rustlayer, overlayfs):"$'\n'"$plugins"

say "Usage of a $files-file active layer, and stats passes over $containers layers of $files_each files: $rounds rounds"
mkdir -p "$tmp/mnt"
"$bench" active-usage --containerd "$sock" --namespace bench \
  --snapshotter rustlayer --snapshotter overlayfs \
  --containerd-pid "$containerd_pid" --rustlayer-pid "$rl_pid" \
  --files "$files" --containers "$containers" --files-each "$files_each" --rounds "$rounds" \
  --workdir "$tmp/mnt" --results "$results"
say "done"
