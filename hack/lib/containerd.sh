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

# mounted_under_tmp: the mount points under $tmp (the script's scratch directory),
# one a line.
# shellcheck disable=SC2154 # $tmp is set by the script that sources this file
mounted_under_tmp() { awk -v p="$tmp/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo; }

# release_leftovers NS...: once the private containerd has stopped, what its
# containers leave: shims (they outlive containerd; ours name $tmp on their command
# line), the namespaces' cgroups (v1: one per hierarchy) and the mounts under $tmp,
# deepest first. Fails while a mount stays, so $tmp is not removed under it.
release_leftovers() {
  local pid cmd m ns
  # shellcheck disable=SC2013 # pids, one word each
  for pid in $(grep -lsF -- "$tmp/" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    [[ $pid == "$$" ]] && continue
    cmd=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || continue
    [[ $cmd == *containerd-shim* ]] && kill -KILL "$pid" 2>/dev/null
  done
  for ns in "$@"; do
    for m in /sys/fs/cgroup/"$ns" /sys/fs/cgroup/*/"$ns"; do
      [[ -d $m ]] && find "$m" -depth -type d -exec rmdir {} + 2>/dev/null
    done
  done
  for m in $(mounted_under_tmp | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  [[ -z $(mounted_under_tmp) ]]
}
