#!/usr/bin/env bash
# Containers in user namespaces on rustlayer under a real containerd 2.1.9 (Debian
# sid's, fetched by hack/containerd-fetch.sh), with Debian 12's runc.
#
# One private containerd with two proxy snapshotters, each its own private
# daemon:
#   rustlayer        capabilities = ["remap-ids"], daemon remap_ids = true:
#                    containerd passes the mapping labels and idmaps the layers
#                    rustlayer's mounts name (uidmap=/gidmap=);
#   rustlayer-chown  no capability, daemon remap_ids = false: containerd makes
#                    a chowned copy of the image per mapping, as it does for any
#                    snapshotter that cannot remap.
#
# Checks that:
#   - ctr run --remap-labels --uidmap 0:100000:65536 --gidmap 0:100000:65536
#     runs on rustlayer: inside, id -u is 0 and the image's files are root's; the
#     container's root writes where only the image's root may;
#   - outside, the snapshot's mounts carry uidmap=/gidmap= in containerd's form, the
#     upper directory and what the container's root wrote there are owned by
#     100000, the layers on disk stay root's, and the daemon holds no copy of the
#     image (only its 3 committed layers), also after a second container with
#     another mapping;
#   - on rustlayer-chown the same run works through containerd's chowned copy
#     (one more committed snapshot in its daemon, owned by 100000), with the labels
#     still set and plain mounts (no second mapping);
#   - then, unless USERNS_BENCH=0, container start (ctr run --rm ... true, each
#     run with a mapping of its own, as every pod has) with a larger image
#     (USERNS_BENCH_MIB, default 200 MiB of files) on rustlayer with idmapped
#     layers, on containerd's own overlayfs with idmapped layers, and on the chown
#     path, against rustlayer without a user namespace, printed as a table with
#     the disk space the chowned copy takes.
#
#   hack/userns-e2e.sh                  target/debug/rustlayer
#   RUSTLAYER_BIN=path hack/userns-e2e.sh
#   USERNS_BENCH=0 hack/userns-e2e.sh   the checks only
#   USERNS_BENCH_RUNS=N (default 5) USERNS_BENCH_MIB=N (default 200)
#
# Needs root, containerd 2.1.9 (fetched into .cache on first use), runc,
# busybox-static and python3. Everything lives in one temporary directory and is
# stopped, unmounted and removed on exit. Prints "ok - ..." or "not ok - ..." per
# check and ends with "userns-e2e: N passed, N failed"; exits 1 on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/lib/e2e.sh
source hack/lib/e2e.sh
me=userns-e2e

require_root "containerd, runc and idmapped mounts need it"

bench=${USERNS_BENCH:-1}
bench_runs=${USERNS_BENCH_RUNS:-5}
bench_mib=${USERNS_BENCH_MIB:-200}
ns=rustlayer-userns
image=docker.io/library/rustlayer-e2e:latest
big_image=docker.io/library/rustlayer-userns-bench:latest
map=0:100000:65536
host_root=100000

bin=$(rustlayer_bin)
CONTAINERD_VERSION=2.1.9
containerd_use || exit 1
require_commands "" containerd ctr containerd-shim-runc-v2 runc python3 timeout awk du /bin/busybox

# ---------------------------------------------------------------- helpers
tmp=$(mktemp -d /tmp/rustlayer-userns-e2e.XXXXXX)
# runc, already in the user namespace, reaches the rootfs under containerd's state
# directory, below this one: the container's root (100000, not root) must be able
# to traverse it, as it can /run/containerd (0711) on a node.
chmod 0711 "$tmp"
sock=$tmp/containerd.sock
# The daemons' sockets: containerd_up's proxy plugin "rustlayer", and the
# chowning one's.
rl_sock=$tmp/rustlayer.sock
chown_sock=$tmp/rustlayer-chown.sock
containerd_pid=''
declare -A daemon_pid=()

ctr_() { timeout 300 ctr -a "$sock" -n "$ns" "$@"; }
# What a daemon itself holds, asked on its own socket.
backend() { # backend NAME ARGS...
  local name=$1
  shift
  timeout 30 ctr -a "$tmp/$name.sock" -n "$ns" snapshots --snapshotter rustlayer "$@"
}
committed_in() { backend "$1" ls | awk 'NR > 1 && $NF == "Committed"' | wc -l; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# option NAME MOUNT_LINE: the value of NAME= in a `ctr snapshots mounts` line.
option() { tr ',' '\n' <<<"${2##* -o }" | sed -n "s/^$1=//p"; }

teardown() {
  local name
  if ((failed)); then tail_logs 30 "$tmp/rustlayer.log" "$tmp/rustlayer-chown.log" "$tmp/containerd.log"; fi
  if [[ -n $containerd_pid ]] && kill -0 "$containerd_pid" 2>/dev/null; then
    # shellcheck disable=SC2046 # one id per word
    containerd_remove_containers "$sock" "$ns" $(timeout 10 ctr -a "$sock" -n "$ns" containers ls -q 2>/dev/null)
  fi
  stop_pid "$containerd_pid" containerd
  for name in "${!daemon_pid[@]}"; do stop_pid "${daemon_pid[$name]}" "$name"; done
  remove_scratch "$ns"
}
report_traps teardown

echo "$me: containerd $(containerd --version | awk '{ print $3 }'), $(runc --version | head -n 1), rustlayer $bin, in $tmp"

# ---------------------------------------------------------------- daemons
start_daemon() { # start_daemon NAME REMAP_IDS
  local name=$1
  printf 'remap_ids = %s\n' "$2" >"$tmp/$name.toml"
  "$bin" serve --config "$tmp/$name.toml" --root "$tmp/$name" --address "$tmp/$name.sock" \
    >"$tmp/$name.log" 2>&1 &
  daemon_pid[$name]=$!
  if wait_until 60 "${daemon_pid[$name]}" backend "$name" ls; then
    ok "daemon $name (remap_ids = $2) answers: $(grep -o 'detail=overlayfs mounts on idmapped lower layers[^"]*' "$tmp/$name.log" | head -n 1 || true)"
  else
    not_ok "daemon $name did not come up within 60 s"
    abort
  fi
}

start_containerd() {
  containerd_up "$CONTAINERD_GC_AT_ONCE

[proxy_plugins.rustlayer-chown]
  type = \"snapshot\"
  address = \"$chown_sock\"" remap-ids
  local caps name
  for name in rustlayer rustlayer-chown overlayfs; do
    caps=$(ctr -a "$sock" plugins ls -d "id==$name" 2>/dev/null | awk '/^Capabilities:/ { print $2 }')
    echo "$me: containerd's $name snapshotter declares: ${caps:-nothing}"
  done
  caps=$(ctr -a "$sock" plugins ls -d id==rustlayer 2>/dev/null | awk '/^Capabilities:/ { print $2 }')
  expect_eq "containerd 2.1.9 up; its rustlayer proxy declares remap-ids" remap-ids "$caps"
}

# ---------------------------------------------------------------- checks
# Prints what the test looks at inside a container, one key=value a line.
# shellcheck disable=SC2016 # expanded by the container's shell
probe='
echo uid=$(id -u) gid=$(id -g)
echo map=$(cat /proc/self/uid_map)
echo owners=$(stat -c %u:%g / /etc /etc/motd /bin/busybox)
echo written=$(echo mine >/etc/written && mkdir /made && echo yes)
'
field() { sed -n "s/^.*$1=\([^ ]*\).*$/\1/p" <<<"$2" | head -n 1; }

check_inside() { # check_inside SNAPSHOTTER ID OUT
  expect_eq "$1 $2: id -u and id -g are 0 inside" "0 0" "$(field uid "$3") $(field gid "$3")"
  expect_eq "$1 $2: the image's files are root's inside" "0:0 0:0 0:0 0:0" \
    "$(sed -n 's/^owners=//p' <<<"$3")"
  expect_eq "$1 $2: the container's root writes into /etc and /" yes "$(field written "$3")"
}

check_idmapped() {
  local out line upper lowers
  if out=$(ctr_ images import --local --snapshotter rustlayer "$tmp/image.tar" 2>&1); then
    ok "ctr images import --local --snapshotter rustlayer"
  else
    not_ok "ctr images import --local --snapshotter rustlayer" "$out"
    abort
  fi
  if ! out=$(ctr_ run --snapshotter rustlayer --runc-root "$tmp/runc" --remap-labels \
    --uidmap "$map" --gidmap "$map" "$image" u1 sh -c "$probe" 2>&1); then
    not_ok "ctr run --remap-labels --uidmap $map --gidmap $map on rustlayer" "$out"
    return 0
  fi
  ok "ctr run --remap-labels --uidmap $map --gidmap $map on rustlayer"
  expect_eq "rustlayer u1: the container runs in the user namespace" "0 100000 65536" \
    "$(sed -n 's/^map= *//p' <<<"$out" | tr -s ' ')"
  check_inside rustlayer u1 "$out"

  line=$(ctr_ snapshots --snapshotter rustlayer mounts /mnt u1)
  expect_eq "the mounts carry uidmap= and gidmap= as containerd 2.x reads them" "$map $map" \
    "$(option uidmap "$line") $(option gidmap "$line")"
  upper=$(option upperdir "$line")
  expect_eq "the upper directory is the container root's (host $host_root)" "$host_root:$host_root" \
    "$(stat -c %u:%g "$upper")"
  expect_eq "/etc/written and /made, written by the container's root, are $host_root's in the upper dir" \
    "$host_root:$host_root $host_root:$host_root" "$(stat -c %u:%g "$upper/etc/written" "$upper/made" | tr '\n' ' ' | sed 's/ $//')"
  lowers=$(option lowerdir "$line")
  # shellcheck disable=SC2086 # one path per lower layer
  expect_eq "the image's 3 layers on disk stay root's" "0:0 0:0 0:0" \
    "$(stat -c %u:%g ${lowers//:/ } | tr '\n' ' ' | sed 's/ $//')"
  expect_eq "no copy of the image: the daemon holds its 3 committed layers only" 3 "$(committed_in rustlayer)"

  if out=$(ctr_ run --rm --snapshotter rustlayer --runc-root "$tmp/runc" --remap-labels \
    --uidmap 0:200000:65536 --gidmap 0:200000:65536 "$image" u2 sh -c "$probe" 2>&1); then
    check_inside rustlayer u2 "$out"
  else
    not_ok "a second container with mapping 0:200000:65536 on rustlayer" "$out"
  fi
  expect_eq "still no copy after a second mapping" 3 "$(committed_in rustlayer)"
  ctr_ containers delete u1 >/dev/null
  # shellcheck disable=SC2016 # evaluated by wait_until, each time
  if wait_until 30 - eval '[[ $(backend rustlayer ls | awk "NR > 1 && \$NF == \"Active\"" | wc -l) -eq 0 ]]'; then
    ok "the containers' snapshots are gone from the daemon after containerd's GC"
  else
    not_ok "active snapshots stay in the daemon" "$(backend rustlayer ls)"
  fi
}

check_chown_path() {
  local out line upper copy
  if ! out=$(ctr_ images import --local --snapshotter rustlayer-chown "$tmp/image.tar" 2>&1); then
    not_ok "ctr images import --local --snapshotter rustlayer-chown" "$out"
    return 0
  fi
  if ! out=$(ctr_ run --snapshotter rustlayer-chown --runc-root "$tmp/runc" --remap-labels \
    --uidmap "$map" --gidmap "$map" "$image" c1 sh -c "$probe" 2>&1); then
    not_ok "ctr run --remap-labels on rustlayer-chown (containerd's chown copy)" "$out"
    return 0
  fi
  ok "ctr run --remap-labels on rustlayer-chown (containerd's chown copy)"
  check_inside rustlayer-chown c1 "$out"
  expect_eq "containerd made its chowned copy: 4 committed snapshots in that daemon" 4 \
    "$(committed_in rustlayer-chown)"
  line=$(ctr_ snapshots --snapshotter rustlayer-chown mounts /mnt c1)
  expect_eq "without remap-ids the mounts carry no id maps (no second mapping)" "" \
    "$(option uidmap "$line")$(option gidmap "$line")"
  upper=$(option upperdir "$line")
  copy=$(option lowerdir "$line")
  copy=${copy%%:*}
  expect_eq "the upper dir and the chowned copy are $host_root's" "$host_root:$host_root $host_root:$host_root" \
    "$(stat -c %u:%g "$upper") $(stat -c %u:%g "$copy/etc")"
  ctr_ containers delete c1 >/dev/null
}

# ---------------------------------------------------------------- benchmark
# start_runs SNAPSHOTTER MODE: USERNS_BENCH_RUNS containers, each with a mapping of
# its own, after one not counted (it warms the caches the others find warm); prints
# the start-to-exit times in ms, one a line.
start_runs() {
  local sn=$1 mode=$2 i host flags=() t0
  for ((i = 0; i <= bench_runs; i++)); do
    host=$((host_root + (10 + i) * 65536))
    [[ $sn == rustlayer-chown ]] && host=$((host + 100 * 65536))
    case $mode in
      idmap) flags=(--remap-labels --uidmap "0:$host:65536" --gidmap "0:$host:65536") ;;
      chown) flags=(--uidmap "0:$host:65536" --gidmap "0:$host:65536") ;;
      *) flags=() ;;
    esac
    t0=$(now_ms)
    if ! ctr_ run --rm --snapshotter "$sn" --runc-root "$tmp/runc" "${flags[@]}" \
      "$big_image" "bench-$sn-$mode-$i" true >&2; then
      echo fail
      return 0
    fi
    ((i == 0)) || echo $(($(now_ms) - t0))
  done
}

summary() { sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%d %d %d", v[1], v[int((NR + 1) / 2)], v[NR] }'; }

run_bench() {
  local sn mode times label row copy copy_kib image_kib layers_total min median max
  if ! python3 "$repo/e2e/containerd/make_image.py" --output "$tmp/big.tar" --name "$big_image" \
    --filler-mib "$bench_mib" >"$tmp/big.json"; then
    not_ok "building the $bench_mib MiB benchmark image"
    return 0
  fi
  # Both images' layers, shared ones once: what rustlayer holds without copies.
  layers_total=$(cat "$tmp/image.json" "$tmp/big.json" | python3 -c '
import json, sys
docs = json.JSONDecoder()
text, ids, pos = sys.stdin.read(), set(), 0
while pos < len(text.rstrip()):
    doc, pos = docs.raw_decode(text, pos)
    ids.update(doc["chain_ids"])
    while pos < len(text) and text[pos].isspace():
        pos += 1
print(len(ids))')
  for sn in rustlayer rustlayer-chown overlayfs; do
    ctr_ images import --local --snapshotter "$sn" "$tmp/big.tar" >/dev/null
  done
  echo "$me: container start in a user namespace, $bench_runs runs each (after one to warm up), every run a new mapping,"
  echo "$me: image $((($(stat -c %s "$tmp/big.tar") + 524288) / 1048576)) MiB (ms: min median max)"
  printf '%-44s %8s %8s %8s\n' "snapshotter, path" min median max
  for row in "rustlayer plain" "rustlayer idmap" "overlayfs idmap" "rustlayer-chown chown"; do
    read -r sn mode <<<"$row"
    times=$(start_runs "$sn" "$mode")
    case $sn/$mode in
      rustlayer/plain) label="rustlayer, no user namespace (baseline)" ;;
      rustlayer/idmap) label="rustlayer, idmapped layers (remap-ids)" ;;
      overlayfs/idmap) label="containerd overlayfs, idmapped layers" ;;
      *) label="rustlayer, containerd's chowned copy" ;;
    esac
    if grep -q fail <<<"$times"; then
      not_ok "benchmark: a container on $sn ($mode) failed"
      continue
    fi
    read -r min median max <<<"$(summary <<<"$times")"
    printf '%-44s %8s %8s %8s\n' "$label" "$min" "$median" "$max"
  done
  # What one mapping's copy costs on disk: the copy under a container that stays.
  ctr_ run -d --snapshotter rustlayer-chown --runc-root "$tmp/runc" --uidmap "0:$((host_root + 300 * 65536)):65536" \
    --gidmap "0:$((host_root + 300 * 65536)):65536" "$big_image" bench-copy sleep 60 >/dev/null
  copy=$(ctr_ snapshots --snapshotter rustlayer-chown info bench-copy | sed -n 's/^ *"Parent": "\(.*\)",*$/\1/p')
  copy_kib=$(($(ctr_ snapshots --snapshotter rustlayer-chown usage -b "$copy" | awk 'NR == 2 { print $2 }') / 1024))
  image_kib=$(du -sk "$tmp/rustlayer/snapshots" | awk '{ print $1 }')
  echo "$me: disk: the image on rustlayer takes $((image_kib / 1024)) MiB; each mapping's chowned copy $((copy_kib / 1024)) MiB more"
  expect_eq "benchmark: the idmapped path made no copy of the benchmark image" "$layers_total" \
    "$(committed_in rustlayer)"
  ctr_ tasks kill -s SIGKILL bench-copy >/dev/null 2>&1 || true
  wait_until 30 - eval '! ctr_ tasks ls -q | grep -qx bench-copy' || true
  ctr_ tasks delete bench-copy >/dev/null 2>&1 || true
  ctr_ containers delete bench-copy >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- main
if ! python3 "$repo/e2e/containerd/make_image.py" --output "$tmp/image.tar" --name "$image" >"$tmp/image.json"; then
  not_ok "e2e/containerd/make_image.py failed"
  abort
fi
start_daemon rustlayer true
start_daemon rustlayer-chown false
start_containerd
check_idmapped
check_chown_path
if [[ $bench != 0 ]]; then run_bench; fi
