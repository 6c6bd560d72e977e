# shellcheck shell=bash
# Sourced by the scripts that run a private containerd (own root, state and
# socket, never the node's) with rustlayer as its proxy snapshotter.
#
#   containerd_config ROOT STATE SOCKET RUSTLAYER_SOCKET [EXTRA_TOML]
#
# prints a version 2 config: the CRI plugin off (the scripts drive containerd
# directly), the snapshotters that cannot work here off, debug and metrics
# listeners off, and the proxy plugin "rustlayer" on RUSTLAYER_SOCKET. EXTRA_TOML
# is appended as it is; a devmapper snapshotter configured there stays enabled.
containerd_config() {
  local root=$1 state=$2 sock=$3 rl_sock=$4 extra=${5:-} devmapper
  devmapper='  "io.containerd.snapshotter.v1.devmapper",'
  [[ $extra == *'plugins."io.containerd.snapshotter.v1.devmapper"'* ]] && devmapper=''
  cat <<EOF
version = 2
root = "$root"
state = "$state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
$devmapper
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$state/opt"

[proxy_plugins.rustlayer]
  type = "snapshot"
  address = "$rl_sock"
EOF
  if [[ -n $extra ]]; then
    printf '\n%s\n' "$extra"
  fi
}

# Every deletion schedules a garbage collection at once, so a test waiting for
# the daemon to see containerd's Remove calls does not wait for a timer; and a
# slow collection (under emulation) delays the next by twice its length, not
# fifty times (pause_threshold, at most 0.5).
# shellcheck disable=SC2034 # used by the scripts that source this file
CONTAINERD_GC_AT_ONCE='[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
  pause_threshold = 0.5'

# proxy_answers CTR...: one Prepare and Remove on rustlayer through containerd,
# with CTR the script's ctr command for its containerd and namespace. containerd
# dials the proxy socket once and, after the daemon was away (started after
# containerd, or restarted), retries with a growing backoff, failing calls fast
# meanwhile: scripts wait on this before going through containerd again. (Listing
# would not do: containerd answers it from its own metadata.)
proxy_answers() {
  "$@" snapshots --snapshotter rustlayer prepare rustlayer-proxy-ready "" >/dev/null 2>&1 &&
    "$@" snapshots --snapshotter rustlayer rm rustlayer-proxy-ready >/dev/null 2>&1
}
