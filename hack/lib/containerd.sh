# shellcheck shell=bash
# Sourced by the scripts that run a private containerd (own root, state and
# socket, never the node's) with rustlayer as its proxy snapshotter.
#
#   containerd_use
#
# puts containerd $CONTAINERD_VERSION (default 1.6.20, the machine's own) first
# on PATH: containerd, ctr and the containerd-shim-runc-v2 of the same release
# (containerd starts the shim it finds on PATH), from hack/containerd-fetch.sh
# unless the containerd on PATH already is that release. Exports
# CONTAINERD_VERSION and PATH.
#
#   containerd_config ROOT STATE SOCKET RUSTLAYER_SOCKET [EXTRA_TOML [CAPABILITIES]]
#
# prints a config for the containerd on PATH: version 2 for 1.6 and 1.7, version
# 3 for 2.x. The CRI plugin off (the scripts drive containerd directly), the
# plugins that cannot work here or would reach outside the private directories
# off, debug and metrics listeners off, and the proxy plugin "rustlayer" on
# RUSTLAYER_SOCKET, declaring the snapshotter CAPABILITIES (words like
# remap-ids; none by default). EXTRA_TOML is appended as it is; a devmapper
# snapshotter configured there stays enabled.
#
#   containerd_start CONFIG LOG SOCKET SECONDS
#
# starts the containerd on PATH with CONFIG, its output in LOG, as
# $containerd_pid, and waits up to SECONDS for it to answer on SOCKET; fails if it
# exits or does not answer in time. containerd_up does the same for a test
# script's one private containerd, and reports.
#
#   containerd_config_check LOG SOCKET
#
# prints what the containerd logging to LOG and serving SOCKET had to say about
# its configuration: a key it ignored, a deprecated setting, a plugin it failed
# to load. Empty for a clean start.
#
# Some functions use hack/lib/process.sh's (wait_until), those that report
# checks hack/lib/report.sh's: the script sources those files too.

# The release the tiers run against unless CONTAINERD_VERSION names another:
# Debian 12's own package.
CONTAINERD_DEFAULT_VERSION=1.6.20

containerd_use() {
  local version=${CONTAINERD_VERSION:-$CONTAINERD_DEFAULT_VERSION} dir='' got
  # The release already first on PATH, with its ctr and shim beside it, is used
  # as it is. hack/vm-run.sh's guest needs that: it runs the host's /usr/bin, but
  # its /var/lib is empty, so dpkg, which hack/containerd-fetch.sh asks about the
  # machine's own release, knows no package there.
  if command -v containerd >/dev/null; then
    dir=$(dirname "$(command -v containerd)")
    if [[ $(containerd_release) != "$version" || ! -x $dir/containerd-shim-runc-v2 ||
      $("$dir/ctr" --version 2>/dev/null | awk '{ print $3 }' | sed -E 's/^v//; s/[~+-].*$//') != "$version" ]]; then
      dir=''
    fi
  fi
  if [[ -z $dir ]]; then
    dir=$(hack/containerd-fetch.sh "$version") || return 1
  fi
  PATH=$dir:$PATH
  got=$(containerd_release)
  if [[ $got != "$version" ]]; then
    echo "containerd_use: the containerd first on PATH ($(command -v containerd)) is '$got', not $version" >&2
    return 1
  fi
  export CONTAINERD_VERSION=$version PATH
}

# containerd_release: the upstream release of the containerd on PATH, e.g. 1.7.24
# (Debian's builds say "1.7.24~ds1", "2.1.9+unknown").
containerd_release() {
  containerd --version | awk '{ print $3 }' | sed -E 's/^v//; s/[~+-].*$//'
}

containerd_config() {
  local root=$1 state=$2 sock=$3 rl_sock=$4 extra=${5:-} capabilities=${6:-} release devmapper=1 disabled
  release=$(containerd_release)
  [[ $extra == *'plugins."io.containerd.snapshotter.v1.devmapper"'* ]] && devmapper=''
  # Only ids the release has: containerd ignores an unknown one silently, so a
  # wrong name would leave its plugin running.
  case $release in
    1.6.*) disabled=(io.containerd.grpc.v1.cri io.containerd.snapshotter.v1.aufs
      io.containerd.snapshotter.v1.btrfs io.containerd.snapshotter.v1.zfs) ;;
    1.7.*) disabled=(io.containerd.grpc.v1.cri io.containerd.snapshotter.v1.aufs
      io.containerd.snapshotter.v1.btrfs io.containerd.snapshotter.v1.zfs
      io.containerd.snapshotter.v1.blockfile) ;;
    # 2.x splits CRI into three plugins, and its pod sandboxes are plugins of
    # their own, which without CRI load before the transfer service they need and
    # fail. NRI is on by default there and would listen on the node's
    # /var/run/nri/nri.sock. erofs, new in 2.x, is a snapshotter the tiers do not
    # use, like btrfs; its differ loads only where mkfs.erofs is installed, and
    # would then be a second differ for the transfer service to choose from.
    2.*) disabled=(io.containerd.grpc.v1.cri io.containerd.cri.v1.images
      io.containerd.cri.v1.runtime io.containerd.podsandbox.controller.v1.podsandbox
      io.containerd.grpc.v1.sandbox-controllers io.containerd.nri.v1.nri
      io.containerd.snapshotter.v1.btrfs
      io.containerd.snapshotter.v1.blockfile io.containerd.snapshotter.v1.erofs
      io.containerd.differ.v1.erofs) ;;
    *)
      echo "containerd_config: no config known for containerd '$release'" >&2
      return 1
      ;;
  esac
  [[ -n $devmapper ]] && disabled+=(io.containerd.snapshotter.v1.devmapper)

  if [[ $release == 1.* ]]; then echo "version = 2"; else echo "version = 3"; fi
  cat <<EOF
root = "$root"
state = "$state"
disabled_plugins = [
$(printf '  "%s",\n' "${disabled[@]}")
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
  if [[ -n $capabilities ]]; then
    # shellcheck disable=SC2086 # one capability per word
    printf '  capabilities = [%s]\n' "$(printf '"%s", ' $capabilities | sed 's/, $//')"
  fi
  if [[ $release == 2.* ]]; then
    # 2.x's ctr imports through the transfer service, which unpacks only into
    # the snapshotters listed here (the default list, replaced by any list
    # given, holds overlayfs alone): `ctr images import --snapshotter rustlayer`
    # fails with "no unpack platforms defined" without its entry. The platform
    # must parse; with check_platform_supported off it matches every platform.
    local platform s snapshotters=(overlayfs rustlayer)
    [[ -z $devmapper ]] && snapshotters+=(devmapper)
    case $(uname -m) in
      x86_64) platform=linux/amd64 ;;
      aarch64) platform=linux/arm64 ;;
      *) platform=linux/$(uname -m) ;;
    esac
    for s in "${snapshotters[@]}"; do
      printf '\n[[plugins."io.containerd.transfer.v1.local".unpack_config]]\n'
      printf '  platform = "%s"\n  snapshotter = "%s"\n' "$platform" "$s"
    done
  fi
  if [[ -n $extra ]]; then
    printf '\n%s\n' "$extra"
  fi
}

containerd_start() {
  local config=$1 log=$2 sock=$3 seconds=$4
  containerd --config "$config" >"$log" 2>&1 &
  containerd_pid=$!
  wait_until "$seconds" "$containerd_pid" ctr -a "$sock" version
}

# containerd_up [EXTRA_TOML [CAPABILITIES]]: a test script's private containerd
# (report.sh's checks): its config (containerd_config) in $tmp/containerd.toml,
# root and state under $tmp/containerd, serving $sock, the proxy plugin
# "rustlayer" on $rl_sock; started (containerd_start, log $tmp/containerd.log).
# A failed check, and abort, when it does not answer within 60 s.
# shellcheck disable=SC2154 # $tmp, $sock and $rl_sock are the script's
containerd_up() {
  mkdir -p "$tmp/containerd"
  containerd_config "$tmp/containerd/root" "$tmp/containerd/state" "$sock" "$rl_sock" "$@" \
    >"$tmp/containerd.toml"
  if ! containerd_start "$tmp/containerd.toml" "$tmp/containerd.log" "$sock" 60; then
    not_ok "containerd did not answer on $sock within 60 s"
    abort
  fi
}

# containerd_tier_teardown CONTAINER...: the teardown of a test script with a
# private containerd (containerd_up) and daemon ($daemon_pid, empty for none):
# after a failed check the logs' last lines; while containerd answers, the
# containers CONTAINER... and $image removed; containerd and the daemon stopped;
# the scratch removed (remove_scratch $ns).
# shellcheck disable=SC2154 # $tmp, $sock, $ns, $image and the pids are the script's
containerd_tier_teardown() {
  if ((failed)); then tail_logs 40 "$tmp/rustlayer.log" "$tmp/containerd.log" "$tmp/ctr-stderr.log"; fi
  if [[ -n $containerd_pid ]] && kill -0 "$containerd_pid" 2>/dev/null; then
    containerd_remove_containers "$sock" "$ns" "$@"
    timeout 60 ctr -a "$sock" -n "$ns" images rm --sync "$image" >/dev/null 2>&1
  fi
  stop_pid "$containerd_pid" containerd
  stop_pid "$daemon_pid" rustlayer
  remove_scratch "$ns"
}

# expect_clean_containerd_config: the check that the private containerd of
# containerd_up took its config without a complaint (containerd_config_check).
# shellcheck disable=SC2154 # $tmp and $sock are the script's
expect_clean_containerd_config() {
  expect_eq "containerd took its config without a complaint (its log; from 1.7 on, ctr deprecations list)" \
    "" "$(containerd_config_check "$tmp/containerd.log" "$sock")"
}

# containerd_has_snapshotters SOCKET NAME...: whether the containerd on SOCKET
# lists each snapshotter NAME as loaded ("ok"); prints its plugin list when one
# is not, for the failure's detail.
containerd_has_snapshotters() {
  local sock=$1 plugins name
  shift
  plugins=$(ctr -a "$sock" plugins ls 2>&1) || true
  for name in "$@"; do
    if ! grep -qE "^io\.containerd\.snapshotter\.v1 +$name .* ok *\$" <<<"$plugins"; then
      echo "$plugins"
      return 1
    fi
  done
}

# containerd_remove_containers SOCKET NS ID...: kills and deletes the containers
# ID and their tasks, whatever state they are in. For a teardown: each call is
# bounded (a hung daemon must not hold it up), and nothing fails.
containerd_remove_containers() {
  local sock=$1 ns=$2 id
  shift 2
  for id in "$@"; do
    timeout 10 ctr -a "$sock" -n "$ns" tasks kill -s SIGKILL "$id" >/dev/null 2>&1
    timeout 10 ctr -a "$sock" -n "$ns" tasks delete -f "$id" >/dev/null 2>&1
    timeout 10 ctr -a "$sock" -n "$ns" containers delete "$id" >/dev/null 2>&1
  done
  return 0
}

# containerd_import_path: who unpacks what `ctr images import` brings, for the
# containerd on PATH. ctr 1.x unpacks itself, through containerd's snapshots and
# diff APIs (1.7's ctr has the transfer service too, but --local is its default);
# 2.x's ctr hands the archive to containerd's transfer service, which unpacks
# into the snapshotters of its unpack_config (containerd_config).
containerd_import_path() {
  if [[ $(containerd_release) == 1.* ]]; then
    echo "unpacked by ctr"
  else
    echo "unpacked by containerd's transfer service"
  fi
}

# What a clean start never logs, up to containerd's "successfully booted": a
# key it ignored (2.x names it; 1.x ignores unknown keys silently), a deprecated
# setting, a config it migrated, a plugin it failed to load, anything at warning
# level or above. Plugins' own names ("loading plugin ...deprecations") are not
# complaints.
containerd_config_complaints() {
  awk '/containerd successfully booted/ { exit }
    /msg="?loading plugin/ { next }
    /level=(warning|error|fatal)/ || tolower($0) ~ /deprecat|migrat|unknown key|failed to load/' "$1"
}

# containerd_config_check LOG SOCKET: the complaints (above) and, from 1.7 on,
# what containerd's Introspection service lists as deprecated in this setup
# (`ctr deprecations list`, empty when nothing is). Empty for a clean start.
containerd_config_check() {
  containerd_config_complaints "$1"
  if [[ $(containerd_release) != 1.6.* ]]; then
    ctr -a "$2" deprecations list 2>&1
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

# containerd_collect_garbage CTR...: a full garbage collection by the containerd
# CTR (the script's ctr command for it) talks to, waited for: a lease deleted
# with --sync. containerd's scheduler ignores a deletion stamped before the end
# of the collection in flight, taking it as covered; but a collection releases
# its lock on the metadata before it removes what it marked from the
# snapshotters, and a deletion in that window waits for another trigger (the
# next deletion, or 100 mutations). A check that waits for containerd's
# collector to remove something from the daemon collects first, so the deletion
# it then makes schedules a collection of its own.
containerd_collect_garbage() {
  "$@" leases create --id rustlayer-collect-now >/dev/null &&
    "$@" leases rm --sync rustlayer-collect-now >/dev/null
}

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

# stdout_of CMD...: CMD's stdout alone, for a script to parse; its stderr is
# appended to $tmp/ctr-stderr.log (for the logs a failed run shows) and follows
# on stdout when CMD fails, as the failure's detail. ctr >= 1.7 writes warnings
# on stderr that are not output: that the socket it talks to has no
# Introspection service (the daemon's), or what containerd lists as deprecated.
# shellcheck disable=SC2154 # $tmp is set by the script that sources this file
stdout_of() {
  local rc=0
  "$@" 2>"$tmp/last-stderr" || rc=$?
  cat "$tmp/last-stderr" >>"$tmp/ctr-stderr.log"
  ((rc == 0)) || cat "$tmp/last-stderr"
  return "$rc"
}

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
  unmount_under "$tmp"
  [[ -z $(mounts_under "$tmp") ]]
}

# remove_scratch NS...: release_leftovers NS..., then $tmp removed; a failed
# check instead (report.sh) while a mount stays under it.
remove_scratch() {
  if release_leftovers "$@"; then
    rm -rf "$tmp"
  else
    not_ok "cleanup: mounts left under $tmp; not removing it" "$(mounts_under "$tmp")"
  fi
}

# containerd_tier WHY: the start of a test tier that runs against one containerd
# release: root (WHY says what needs it), that release first on PATH
# (containerd_use), and every check line and the closing lines naming it
# (report.sh's REPORT_TAG and REPORT_LABEL).
# shellcheck disable=SC2034,SC2154 # REPORT_* are read by report.sh, $me is the script's
containerd_tier() {
  require_root "$1"
  containerd_use || exit 1
  REPORT_LABEL="$me (containerd $CONTAINERD_VERSION)" REPORT_TAG="[containerd $CONTAINERD_VERSION]"
}
