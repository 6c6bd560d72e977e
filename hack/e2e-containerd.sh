#!/usr/bin/env bash
# End-to-end test of rustlayer under a real containerd: a private containerd uses
# a private rustlayer daemon as its proxy snapshotter "rustlayer", imports an OCI
# image built offline by e2e/containerd/make_image.py (three gzip layers with a
# whiteout and an opaque directory) and runs containers from it with runc.
#
# Checks that:
#   - containerd takes the config hack/lib/containerd.sh writes for its release
#     without a complaint;
#   - the import unpacks the three layers into rustlayer as a chain of committed
#     snapshots named by the image's ChainIDs (in containerd and in the daemon);
#   - a container sees the merged root exactly (whiteout and opaque dir applied);
#   - a container's writes and deletions land in its own active snapshot (file in
#     the upper dir, overlay whiteout for the deleted file) and no committed
#     layer changes;
#   - removing the container removes its snapshot, in containerd and, after
#     containerd's garbage collection, in the daemon;
#   - a running container survives the daemon's SIGKILL and a SIGTERM restart;
#     containerd reaches the restarted daemon again; the container's snapshot
#     then still answers Stat and Mounts, commits and is removed;
#   - removing the image lets the GC remove every layer, and the daemon exits 0
#     on SIGTERM.
#
#   hack/e2e-containerd.sh                         target/debug/rustlayer
#   RUSTLAYER_BIN=path hack/e2e-containerd.sh
#   RUSTLAYER_E2E_CONFIG=file hack/e2e-containerd.sh  the daemon's config file
#                                                  (backend = "devmapper": the
#                                                  upper-dir checks become checks
#                                                  on the snapshot's thin device)
#   SNAPSHOTTER=overlayfs hack/e2e-containerd.sh   containerd's own snapshotter,
#                                                  no daemon (to test the test)
#   CONTAINERD_VERSION=2.1.9 hack/e2e-containerd.sh  that containerd release
#                                                  (1.6.20, the machine's, by
#                                                  default; 1.7.24, 2.1.9 fetched
#                                                  by hack/containerd-fetch.sh)
#
# Debian packages it relies on (installs none itself):
#   containerd      containerd, ctr, containerd-shim-runc-v2 (1.6.20; other
#                   releases come from hack/containerd-fetch.sh)
#   runc            the container runtime
#   busybox-static  /bin/busybox, the image's userland (must be static)
#   python3         the image builder (standard library only)
#   util-linux      mount, umount
#   coreutils, mawk timeout, stat, mktemp, awk (present on any Debian)
#
# Needs root. Everything lives in one temporary directory and is stopped,
# unmounted and removed on exit, failed or not. Prints "ok - ..." or
# "not ok - ..." per check, the daemon's and containerd's log tails if any
# failed, and ends with "containerd-e2e (containerd VERSION): N passed, N failed";
# exits 1 on failure. Every check line names the containerd release.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/lib/e2e.sh
source hack/lib/e2e.sh
me=containerd-e2e

containerd_tier "containerd, runc and overlay mounts need it"

snapshotter=${SNAPSHOTTER:-rustlayer}
ns=rustlayer-e2e
image=docker.io/library/rustlayer-e2e:latest

require_commands "install the Debian packages:
  apt-get install -y --no-install-recommends containerd runc busybox-static python3 util-linux" \
  containerd ctr containerd-shim-runc-v2 runc python3 mount umount timeout awk /bin/busybox

bin=''
if [[ $snapshotter == rustlayer ]]; then bin=$(rustlayer_bin); fi

# ---------------------------------------------------------------- helpers
tmp=$(mktemp -d /tmp/rustlayer-containerd-e2e.XXXXXX)
sock=$tmp/containerd.sock
rl_sock=$tmp/rustlayer.sock
daemon_pid='' containerd_pid=''

# Every client call is bounded: a hung daemon must fail the test, not stall it.
ctr_() { timeout 120 ctr -a "$sock" -n "$ns" "$@"; }
snaps() { ctr_ snapshots --snapshotter "$snapshotter" "$@"; }
# The daemon speaks the same Snapshots API as containerd, so ctr can ask it
# directly what it holds (keys there are containerd's "ns/N/name"). Every use
# parses its output, so its stderr goes to the log stdout_of keeps: ctr >= 1.7
# asks every socket's Introspection service and warns when it has none.
backend() { timeout 30 ctr -a "$rl_sock" -n "$ns" snapshots --snapshotter rustlayer "$@" 2>>"$tmp/ctr-stderr.log"; }
run_() { # run_ [--rm] ID CMD...: a container from the image, on our runc root
  local flags=() id
  if [[ $1 == --rm ]]; then
    flags=(--rm)
    shift
  fi
  id=$1
  shift
  ctr_ run --snapshotter "$snapshotter" --runc-root "$tmp/runc" "${flags[@]}" "$image" "$id" "$@"
}

# ctr snapshots ls as "KEY KIND PARENT" lines, PARENT "-" for none. ctr 1.6 to
# 2.1 print the same columns (KEY PARENT KIND), and `snapshots mounts` the same
# "mount -t TYPE SOURCE TARGET -o OPTIONS" lines; `ctr run` takes the same flags.
table() { awk 'NR > 1 && NF { print $1, $NF, (NF >= 3 ? $2 : "-") }'; }

# mount_snapshot KEY TARGET: mounts a snapshot the way ctr prints it.
mount_snapshot() {
  local out word1 flag type src target flag2 opts
  mkdir -p "$2"
  out=$(stdout_of snaps mounts "$2" "$1") || return 1
  if [[ $(grep -c . <<<"$out") -ne 1 ]]; then
    echo "expected one mount for $1, got: $out"
    return 1
  fi
  read -r word1 flag type src target flag2 opts <<<"$out"
  if [[ $word1 != mount || $flag != -t || $flag2 != -o || $target != "$2" ]]; then
    echo "unexpected mount line for $1: $out"
    return 1
  fi
  mount -t "$type" "$src" "$target" -o "$opts"
}

teardown() { containerd_tier_teardown c1 c2 c3; }
report_traps teardown

echo "$me: containerd $CONTAINERD_VERSION ($(command -v containerd)), snapshotter $snapshotter${bin:+ ($bin)}, working in $tmp"

# ---------------------------------------------------------------- image
build_image() {
  local err
  if err=$(python3 "$repo/e2e/containerd/make_image.py" --output "$tmp/image.tar" \
    --name "$image" 2>&1 >"$tmp/image.json"); then
    ok "OCI archive built by e2e/containerd/make_image.py ($(($(stat -c %s "$tmp/image.tar") / 1024)) KiB)"
  else
    not_ok "e2e/containerd/make_image.py failed" "$err"
    abort
  fi
  # The ChainIDs: the names containerd gives the committed layer snapshots.
  mapfile -t chain < <(python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["chain_ids"]))' <"$tmp/image.json")
}

# ---------------------------------------------------------------- daemons
start_rustlayer() {
  # Private to this containerd: containerd's GC removes any backend snapshot
  # it has no record of, so a shared daemon would lose other users' data.
  local config=${RUSTLAYER_E2E_CONFIG:-$tmp/rustlayer.toml}
  [[ -n ${RUSTLAYER_E2E_CONFIG:-} ]] || : >"$config"
  # Appended: a restart must not erase what the daemon before it logged.
  "$bin" serve --config "$config" --root "$tmp/rustlayer" --address "$rl_sock" >>"$tmp/rustlayer.log" 2>&1 &
  daemon_pid=$!
  if wait_until 60 "$daemon_pid" backend ls; then
    ok "rustlayer daemon answers on its socket (pid $daemon_pid)"
    # ctr 1.7 and later ask the socket's Introspection service before each
    # command and warn on stderr where there is none.
    local complaint
    complaint=$(timeout 30 ctr -a "$rl_sock" -n "$ns" snapshots --snapshotter rustlayer ls 2>&1 >/dev/null) || true
    expect_eq "ctr $(ctr --version | awk '{ print $3 }') talks to the daemon without a warning" "" "$complaint"
  else
    not_ok "rustlayer daemon did not come up on $rl_sock within 60 s"
    abort
  fi
}

start_containerd() {
  containerd_up "$CONTAINERD_GC_AT_ONCE"
  local plugins
  if plugins=$(containerd_has_snapshotters "$sock" "$snapshotter"); then
    ok "containerd up (pid $containerd_pid) with snapshotter $snapshotter"
  else
    not_ok "containerd has no working snapshotter $snapshotter" "$plugins"
    abort
  fi
  expect_clean_containerd_config
}

# ---------------------------------------------------------------- import
check_import() {
  local out want got
  if out=$(ctr_ images import --snapshotter "$snapshotter" "$tmp/image.tar" 2>&1); then
    ok "ctr images import --snapshotter $snapshotter ($(containerd_import_path))"
  else
    not_ok "ctr images import --snapshotter $snapshotter" "$out"
    abort
  fi
  got=$(stdout_of ctr_ images ls -q) || true
  expect_eq "the image is listed as $image" "$image" "$got"

  # Exactly the three layers, each committed on the one below it.
  want=$(printf '%s\n' "${chain[0]} Committed -" "${chain[1]} Committed ${chain[0]}" \
    "${chain[2]} Committed ${chain[1]}" | sort)
  got=$(stdout_of snaps ls | table | sort) || true
  expect_eq "containerd lists the 3 layers as a chain of committed snapshots" "$want" "$got"

  [[ $snapshotter == rustlayer ]] || return 0
  # The daemon's own names carry a namespace/id prefix; match on the ChainIDs.
  got=$(backend ls | table | awk '{
    n = split($1, k, "/"); p = split($3, q, "/")
    print k[n], $2, ($3 == "-" ? "-" : q[p]) }' | sort) || true
  expect_eq "the daemon holds the 3 layers as a chain of committed snapshots" "$want" "$got"
}

# ---------------------------------------------------------------- merged view
# Prints what the test looks at inside a container, one key=value a line.
# shellcheck disable=SC2016 # expanded by the container's shell
probe='
if test -e /etc/doomed; then echo doomed=present; else echo doomed=absent; fi
echo motd=$(cat /etc/motd 2>&1)
echo etc=$(ls -A /etc)
echo data=$(ls -A /data)
echo fresh=$(cat /data/fresh 2>&1)
echo written=$(cat /written 2>/dev/null || echo absent)
echo wc=$(printf 12345 | wc -c)
'
field() { sed -n "s/^$1=//p" <<<"$2" | head -n 1; } # field KEY TEXT

check_merged_view() {
  local out
  if out=$(stdout_of run_ --rm c1 sh -c "$probe"); then
    ok "ctr run --rm c1: a container on the image runs"
  else
    not_ok "ctr run --rm c1 failed" "$out"
    return 0
  fi
  expect_eq "c1: /etc/doomed is gone (whiteout in layer 2)" absent "$(field doomed "$out")"
  expect_eq "c1: /etc/motd reads new (layer 2 over layer 1)" new "$(field motd "$out")"
  expect_eq "c1: /etc merges layers 1 and 2" "added group motd passwd" "$(field etc "$out")"
  expect_eq "c1: /data holds only fresh (opaque directory in layer 3)" fresh "$(field data "$out")"
  expect_eq "c1: /data/fresh reads fresh" fresh "$(field fresh "$out")"
  expect_eq "c1: busybox applets work (wc counts 5 bytes)" 5 "$(field wc "$out")"
}

# ---------------------------------------------------------------- writes
c2_upper=''
c2_device=''

check_writes() {
  local out mounts lower got
  if out=$(stdout_of run_ c2 sh -c 'echo hello >/written && rm /etc/motd && echo done') &&
    [[ $out == "done" ]]; then
    ok "ctr run c2: wrote /written and deleted /etc/motd"
  else
    not_ok "ctr run c2 (echo hello >/written; rm /etc/motd) failed" "$out"
    return 0
  fi

  got=$(stdout_of snaps ls | table | grep '^c2 ') || true
  expect_eq "c2's snapshot is active on the top layer" "c2 Active ${chain[2]}" "$got"

  mounts=$(stdout_of snaps mounts "$tmp/unused" c2) || true
  if [[ $mounts == "mount -t ext4 "* || $mounts == "mount -t xfs "* ]]; then
    check_writes_on_device "$mounts"
  else
    check_writes_in_upper_dir "$mounts"
  fi

  # The merged view of c2's snapshot, mounted by hand now that c2 has exited.
  if out=$(mount_snapshot c2 "$tmp/mnt/c2" 2>&1); then
    got="written=$(cat "$tmp/mnt/c2/written" 2>&1) motd=$(test -e "$tmp/mnt/c2/etc/motd" && echo present || echo absent)"
    umount "$tmp/mnt/c2"
    expect_eq "c2's snapshot mounted: /written there, /etc/motd gone" "written=hello motd=absent" "$got"
  else
    not_ok "mounting c2's snapshot failed" "$out"
  fi
}

# Overlay: the writes are files in the container's own upper directory.
check_writes_in_upper_dir() {
  local mounts=$1 lower got
  c2_upper=$(grep -o 'upperdir=[^,]*' <<<"$mounts" | cut -d= -f2-) || true
  if [[ $mounts == "mount -t overlay "* && -d $c2_upper ]]; then
    ok "c2's mount is an overlay with upperdir $c2_upper"
  else
    not_ok "c2's mount is not an overlay with an existing upperdir" "$mounts"
    return 0
  fi
  expect_eq "c2's upper dir has /written = hello" hello "$(cat "$c2_upper/written" 2>&1)"
  expect_eq "c2's upper dir has a whiteout for /etc/motd (char device 0/0)" \
    "character special file 0:0" "$(stat -c '%F %t:%T' "$c2_upper/etc/motd" 2>&1)"
  # Nothing else was copied up: the writes went only where they were made.
  got=$(cd "$c2_upper" && find . -mindepth 1 | sort | tr '\n' ' ')
  expect_eq "c2's upper dir holds only its own changes" "./etc ./etc/motd ./written " "$got"
  got=''
  for lower in $(grep -o 'lowerdir=[^,]*' <<<"$mounts" | cut -d= -f2- | tr ':' ' '); do
    [[ -e $lower/written ]] && got+="$lower/written "
  done
  expect_eq "no lower dir of c2's mount has /written" "" "$got"
}

# devmapper: the snapshot is a thin device of its own, written in place; the
# layers it was made from are other devices (check_layers_unchanged).
check_writes_on_device() {
  local mounts=$1 device
  device=$(awk '{ print $4 }' <<<"$mounts")
  if [[ -b $device ]]; then
    ok "c2's mount is a block device of its own ($device)"
  else
    not_ok "c2's mount source is not a block device" "$mounts"
    return 0
  fi
  local name
  name=$(cat "/sys/block/$(basename "$device")/dm/name" 2>&1)
  if [[ $name == rustlayer-* ]]; then
    c2_device=$name
    ok "c2's device is a rustlayer thin device ($name)"
  else
    not_ok "c2's device is not a rustlayer thin device" "$name"
  fi
  local table
  table=$(DM_DISABLE_UDEV=1 dmsetup table "$name" 2>&1)
  if [[ $table == *" thin "* ]]; then
    ok "c2's device is a dm-thin device"
  else
    not_ok "c2's device has no thin table" "$table"
  fi
}

# inspect_layer NAME PARENT WANT: a fresh active snapshot on PARENT shows the
# committed layers as they were unpacked. (prepare, not view: ctr marks a
# prepared snapshot as a GC root, so a collection cannot take it mid-check.)
inspect_layer() {
  local key=e2e-inspect-$1 target=$tmp/mnt/$1 out got
  if ! out=$(snaps prepare "$key" "$2" 2>&1 && mount_snapshot "$key" "$target" 2>&1); then
    not_ok "mounting a snapshot on the $1 layer failed" "$out"
    return 0
  fi
  got="motd=$(cat "$target/etc/motd" 2>&1) doomed=$(test -e "$target/etc/doomed" && echo present || echo absent)"
  # shellcheck disable=SC2012 # names of our own making
  got+=" data=$(ls -A "$target/data" | tr '\n' ' ')written=$(test -e "$target/written" && echo present || echo absent)"
  umount "$target"
  snaps rm "$key" >/dev/null 2>&1 || true
  expect_eq "the committed $1 layer is unchanged" "$3" "$got"
}

check_layers_unchanged() {
  inspect_layer base "${chain[0]}" "motd=old doomed=present data=a b sub written=absent"
  inspect_layer top "${chain[2]}" "motd=new doomed=absent data=fresh written=absent"
  local out
  if out=$(stdout_of run_ --rm c3 sh -c "$probe"); then
    expect_eq "a fresh container c3 sees /etc/motd = new and no /written" \
      "motd=new written=absent" \
      "motd=$(field motd "$out") written=$(field written "$out")"
  else
    not_ok "ctr run --rm c3 failed" "$out"
  fi
}

# ---------------------------------------------------------------- removal
backend_count() { backend ls | table | wc -l; }
backend_has_c2() { backend ls | table | grep -q '/c2 '; }

check_container_removal() {
  local before after out backend_before=''
  # Nothing left for a collection to take but what the removal below frees, and
  # no collection in flight to swallow its deletion (containerd_collect_garbage).
  if ! out=$(containerd_collect_garbage ctr_ 2>&1); then
    not_ok "containerd's garbage collection (ctr leases rm --sync)" "$out"
  fi
  before=$(stdout_of snaps ls | table | wc -l)
  [[ $snapshotter == rustlayer ]] && backend_before=$(backend_count)
  if out=$(ctr_ containers rm c2 2>&1); then
    ok "ctr containers rm c2"
  else
    not_ok "ctr containers rm c2" "$out"
    return 0
  fi
  after=$(stdout_of snaps ls | table)
  if grep -q '^c2 ' <<<"$after"; then
    not_ok "containerd still lists c2's snapshot after the container was removed" "$after"
  else
    expect_eq "containerd dropped c2's snapshot (count $before -> $((before - 1)))" \
      $((before - 1)) "$(grep -c . <<<"$after")"
  fi

  if [[ $snapshotter == rustlayer ]]; then
    # The daemon hears of it when containerd's GC runs (scheduled by the deletion).
    if wait_until 30 "$daemon_pid" eval '! backend_has_c2'; then
      expect_eq "the daemon removed c2's snapshot (count $backend_before -> $((backend_before - 1)))" \
        $((backend_before - 1)) "$(backend_count)"
    else
      not_ok "the daemon still has c2's snapshot 30 s after containerd removed it" "$(backend ls 2>&1)"
    fi
  fi
  if [[ -n $c2_device ]]; then
    # shellcheck disable=SC2016 # expanded by eval, on each try
    if wait_until 30 - eval '! grep -qx "$c2_device" /sys/block/dm-*/dm/name'; then
      ok "c2's thin device $c2_device is deactivated"
    else
      not_ok "c2's thin device $c2_device is still active 30 s later"
    fi
  fi
  if [[ -n $c2_upper ]]; then
    if wait_until 30 - test ! -e "$c2_upper"; then
      ok "c2's upper dir is gone from disk"
    else
      not_ok "c2's upper dir $c2_upper is still on disk 30 s later"
    fi
  fi
}

check_image_removal() {
  local out
  if out=$(ctr_ images rm --sync "$image" 2>&1); then
    ok "ctr images rm --sync $image"
  else
    not_ok "ctr images rm --sync $image" "$out"
    return 0
  fi
  # shellcheck disable=SC2016 # expanded by eval, on each try
  if wait_until 30 - eval '[[ -z $(stdout_of snaps ls | table) ]]'; then
    ok "containerd's GC removed every layer snapshot"
  else
    not_ok "containerd still lists snapshots 30 s after the image was removed" "$(snaps ls 2>&1)"
  fi
  [[ $snapshotter == rustlayer ]] || return 0
  # shellcheck disable=SC2016 # expanded by eval, on each try
  if wait_until 30 "$daemon_pid" eval '[[ $(backend_count) -eq 0 ]]'; then
    ok "the daemon holds no snapshots any more"
  else
    not_ok "the daemon still holds snapshots 30 s after the image was removed" "$(backend ls 2>&1)"
  fi
}

check_shutdown() {
  stop_pid "$containerd_pid" containerd || true
  containerd_pid=''
  [[ $snapshotter == rustlayer ]] || return 0
  expect_clean_exit "rustlayer daemon" "$daemon_pid" "$tmp/rustlayer.log" kill -TERM "$daemon_pid"
  # Gone and waited for: the teardown must not signal a pid the system may reuse.
  kill -0 "$daemon_pid" 2>/dev/null || daemon_pid=''
}

# ---------------------------------------------------------------- restart
task_status() { stdout_of ctr_ task ls | awk -v id="$1" '$1 == id { print $3 }'; }
backend_key() { backend ls | table | awk -v n="/$1" 'substr($1, length($1) - length(n) + 1) == n { print $1 }'; }

# A container keeps running while the daemon dies (SIGKILL, as in a crash) and
# is upgraded (SIGTERM, then a new start); afterwards its snapshot still answers
# Stat and Mounts, and can be committed and removed.
check_restart_under_live_container() {
  [[ $snapshotter == rustlayer ]] || return 0
  local out sig key view=$tmp/live-check
  if ! out=$(ctr_ run -d --snapshotter "$snapshotter" --runc-root "$tmp/runc" "$image" live \
    sh -c 'echo before > /state; exec sleep 600' 2>&1); then
    not_ok "start the long-running container live" "$out"
    return 0
  fi
  # shellcheck disable=SC2016 # expanded by eval, on each try
  if ! wait_until 30 - eval '[[ $(task_status live) == RUNNING ]]'; then
    not_ok "container live is not running" "$(ctr_ task ls 2>&1)"
    return 0
  fi
  for sig in KILL TERM; do
    kill "-$sig" "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
    start_rustlayer
    if wait_until 60 - proxy_answers ctr_; then
      ok "containerd reaches the daemon again after its SIG$sig and restart"
    else
      not_ok "containerd does not reach the daemon within 60 s of its restart after SIG$sig"
    fi
    expect_eq "container live still runs after the daemon's SIG$sig and restart" RUNNING "$(task_status live)"
    if out=$(ctr_ task exec --exec-id "after-$sig" live sh -c "echo after-$sig >> /state" 2>&1); then
      ok "container live writes to its root after the daemon's SIG$sig"
    else
      not_ok "container live cannot write after the daemon's SIG$sig" "$out"
    fi
    key=$(backend_key live)
    if [[ -n $key ]] && out=$(backend info "$key") && grep -q '"Kind": "Active"' <<<"$out"; then
      ok "after SIG$sig the daemon still has live's snapshot as active (Stat)"
    else
      not_ok "after SIG$sig the daemon lost live's snapshot" "$(backend ls 2>&1)"
    fi
    # An overlay (overlay backend) or the snapshot's own block device (devmapper).
    if out=$(backend mounts "$tmp/unused" "$key") &&
      grep -qE 'upperdir=|^mount -t (ext4|xfs) /dev/' <<<"$out"; then
      ok "after SIG$sig live's snapshot answers Mounts ($(awk '{ print $3 }' <<<"$out"))"
    else
      not_ok "after SIG$sig live's snapshot does not answer Mounts" "$out"
    fi
  done
  ctr_ task kill -s KILL live >/dev/null 2>&1 || true
  # shellcheck disable=SC2016 # expanded by eval, on each try
  wait_until 30 - eval '[[ $(task_status live) == STOPPED || -z $(task_status live) ]]' || true
  ctr_ task delete live >/dev/null 2>&1 || true
  if out=$(snaps commit live-committed live 2>&1); then
    ok "live's snapshot commits after the restarts"
  else
    not_ok "live's snapshot does not commit after the restarts" "$out"
    return 0
  fi
  # A prepared snapshot, not a view: ctr labels it a GC root, so containerd's
  # collector (run on every deletion here) leaves it alone while we look.
  if out=$(snaps prepare live-check live-committed 2>&1) && mount_snapshot live-check "$view" >/dev/null 2>&1; then
    expect_eq "the committed layer holds every write, before and after the restarts" \
      "$(printf 'before\nafter-KILL\nafter-TERM')" "$(cat "$view/state" 2>&1)"
    umount "$view" || true
  else
    not_ok "cannot mount a snapshot on live-committed" "$out"
  fi
  ctr_ containers rm live >/dev/null 2>&1 || true
  if ! out=$(snaps rm live-check 2>&1); then
    not_ok "cannot remove live-check" "$out"
  fi
  # The collection live-check's removal scheduled must not swallow the deletion
  # the daemon is then checked for (containerd_collect_garbage).
  if ! out=$(containerd_collect_garbage ctr_ 2>&1); then
    not_ok "containerd's garbage collection (ctr leases rm --sync)" "$out"
  fi
  if out=$(snaps rm live-committed 2>&1); then
    ok "the committed snapshot of live is removed"
  else
    not_ok "cannot remove live-committed" "$out"
  fi
  # shellcheck disable=SC2016 # expanded by eval, on each try
  if wait_until 30 "$daemon_pid" eval '[[ -z $(backend_key live-committed) ]]'; then
    ok "the daemon dropped live-committed"
  else
    not_ok "the daemon still has live-committed" "$(backend ls 2>&1)"
  fi
}

# ---------------------------------------------------------------- main
build_image
[[ $snapshotter == rustlayer ]] && start_rustlayer
start_containerd
check_import
check_merged_view
check_writes
check_layers_unchanged
check_restart_under_live_container
check_container_removal
check_image_removal
check_shutdown
