#!/usr/bin/env bash
# Size limits under a real containerd: containers on rustlayer whose root is on a
# filesystem with project quotas, one hitting its limit while others write on.
# This machine's kernel has no project quotas, so hack/vm/quota-guest.sh runs this
# inside the VM booting Debian's kernel, once on xfs and once on ext4.
#
# A private containerd (2.1.9 by default: what our users run) with rustlayer as
# its proxy snapshotter; the daemon's root and containerd's on the quota root; the
# daemon with `enforce_size = true`, so a max-size it could not enforce would be
# refused rather than ignored. Checks that:
#   - a container given containerd.io/snapshot/max-size = 8 MiB (`ctr run
#     --snapshotter-label`) writes 4 MiB, then a 16 MiB write fails inside it with
#     the filesystem's own quota error (xfs: "No space left on device", ext4: "Disk
#     quota exceeded"), and its layer holds at most 8 MiB;
#   - while that container still runs with its layer full, a container without a
#     label and one with a 64 MiB label each write 16 MiB;
#   - containerd's Usage of the full layer, answered from the quota counters,
#     is between 4 and 8 MiB, and `rustlayer usage` shows the limit, the fraction
#     used and that the figure was counted, not walked;
#   - the label is kept on the snapshot (containerd's Stat);
#   - after the containers and the image are removed and containerd's GC ran,
#     the daemon holds no snapshot.
#
#   RUSTLAYER_QUOTA_ROOT=/mnt/prjquota hack/size-limits-e2e.sh
#   CONTAINERD_VERSION=1.7.24 ...   another containerd release
#
# Needs root, and RUSTLAYER_QUOTA_ROOT: a directory on xfs mounted prjquota or on
# ext4 with the quota and project features mounted prjquota. Prints "ok - ..." or
# "not ok - ..." per check and ends with "size-limits-e2e (containerd VERSION): N
# passed, N failed"; exits 1 on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/lib/e2e.sh
source hack/lib/e2e.sh
me=size-limits-e2e
: "${CONTAINERD_VERSION:=2.1.9}"

containerd_tier "containerd, runc, overlay mounts and project quotas need it"
require_commands "install the Debian packages:
  apt-get install -y --no-install-recommends runc busybox-static python3 util-linux" \
  containerd ctr containerd-shim-runc-v2 runc python3 mount umount timeout awk /bin/busybox

quota_root=${RUSTLAYER_QUOTA_ROOT:?set RUSTLAYER_QUOTA_ROOT to a directory on a filesystem mounted prjquota}
fs=$(stat -f -c %T "$quota_root")
case $fs in
  xfs) quota_error="No space left on device" ;; # xfs's own errno for project quotas
  ext2/ext3) quota_error="Disk quota exceeded" ;; # stat -f names ext4 so
  *)
    echo "$me: $quota_root is on $fs; project quotas need xfs or ext4" >&2
    exit 1
    ;;
esac
[[ $fs == ext2/ext3 ]] && fs=ext4
REPORT_TAG+=" [$fs]"

bin=$(rustlayer_bin)
ns=rustlayer-size-limits
image=docker.io/library/rustlayer-e2e:latest
max_size_label=containerd.io/snapshot/max-size
mib=1048576

# Socket paths must stay under 108 bytes: the scratch directory is short.
tmp=$(mktemp -d "$quota_root/sl.XXXXXX")
sock=$tmp/containerd.sock
rl_sock=$tmp/rl.sock
daemon_pid='' containerd_pid=''

ctr_() { timeout 300 ctr -a "$sock" -n "$ns" "$@"; }
snaps() { ctr_ snapshots --snapshotter rustlayer "$@"; }
daemon_usage_json() { timeout 30 "$bin" usage --address "$rl_sock" -o json; }

teardown() { containerd_tier_teardown limited unlabelled roomy; }
report_traps teardown

echo "$me: containerd $CONTAINERD_VERSION, rustlayer $bin, root on $fs ($quota_root), working in $tmp"

# ---------------------------------------------------------------- setup
printf '[overlay]\nenforce_size = true\n' >"$tmp/rustlayer.toml"
"$bin" serve --config "$tmp/rustlayer.toml" --root "$tmp/rustlayer" --address "$rl_sock" >"$tmp/rustlayer.log" 2>&1 &
daemon_pid=$!
if wait_until 60 "$daemon_pid" daemon_usage_json; then
  ok "rustlayer answers on its socket, root on $fs"
else
  not_ok "rustlayer did not come up on $rl_sock within 60 s"
  abort
fi
if grep -q 'project quotas: on' "$tmp/rustlayer.log"; then
  ok "the daemon found project quotas on its root (start-up log)"
else
  not_ok "the daemon did not log project quotas as on" "$(grep -i 'project quotas' "$tmp/rustlayer.log")"
  abort
fi

containerd_up "$CONTAINERD_GC_AT_ONCE"
wait_until 60 "$containerd_pid" proxy_answers ctr_ || true
expect_clean_containerd_config

if err=$(python3 e2e/containerd/make_image.py --output "$tmp/image.tar" --name "$image" 2>&1 >/dev/null) &&
  err=$(ctr_ images import --snapshotter rustlayer "$tmp/image.tar" 2>&1); then
  ok "image imported into rustlayer ($(containerd_import_path))"
else
  not_ok "building or importing the e2e image failed" "$err"
  abort
fi

# ---------------------------------------------------------------- the limited container
# It keeps running with its layer full while the others write.
if out=$(ctr_ run -d --snapshotter rustlayer --snapshotter-label "$max_size_label=$((8 * mib))" \
  --runc-root "$tmp/runc" "$image" limited /bin/busybox sleep 3600 2>&1); then
  ok "ctr run -d --snapshotter-label $max_size_label=8MiB limited"
else
  not_ok "ctr run with an 8 MiB max-size label failed" "$out"
  abort
fi

# exec_in CONTAINER ID SCRIPT: runs a shell script in the running CONTAINER,
# printing its output; its status is the script's.
exec_in() { ctr_ tasks exec --exec-id "$2" "$1" /bin/busybox sh -c "$3" 2>&1; }

if out=$(exec_in limited first 'dd if=/dev/zero of=/first bs=1M count=4 conv=fsync 2>&1'); then
  ok "limited: a 4 MiB write fits under its 8 MiB limit"
else
  not_ok "limited: a 4 MiB write failed under an 8 MiB limit" "$out"
fi

rc=0
out=$(exec_in limited fill 'dd if=/dev/zero of=/fill bs=1M count=16 conv=fsync 2>&1') || rc=$?
if ((rc != 0)) && [[ $out == *"$quota_error"* ]]; then
  ok "limited: a 16 MiB write fails in the container with \"$quota_error\""
else
  not_ok "limited: a 16 MiB write past the limit should fail with \"$quota_error\" (status $rc)" "$out"
fi
written=$(exec_in limited size 'stat -c %s /fill') || written=''
if [[ $written =~ ^[0-9]+$ ]] && ((written < 8 * mib)); then
  ok "limited: the refused file stopped at $((written / 1024)) KiB, within the limit"
else
  not_ok "limited: the refused file's size" "$written"
fi

# ---------------------------------------------------------------- the others
# run_writer ID [LABEL]: a container that writes 16 MiB and prints the file's size.
run_writer() {
  local id=$1 flags=()
  [[ -n ${2:-} ]] && flags=(--snapshotter-label "$2")
  ctr_ run --snapshotter rustlayer "${flags[@]}" --runc-root "$tmp/runc" "$image" "$id" \
    /bin/busybox sh -c 'dd if=/dev/zero of=/fill bs=1M count=16 conv=fsync 2>&1 && stat -c %s /fill' 2>&1
}
for writer in "unlabelled:" "roomy:$max_size_label=$((64 * mib))"; do
  id=${writer%%:*} label=${writer#*:}
  out=$(run_writer "$id" "$label") || true
  if [[ $(tail -n1 <<<"$out") == "$((16 * mib))" ]]; then
    ok "$id: writes 16 MiB while limited's layer is full${label:+ ($label)}"
  else
    not_ok "$id: a 16 MiB write failed beside the full container" "$out"
  fi
done

# ---------------------------------------------------------------- what containerd and the daemon say
usage=$(stdout_of ctr_ snapshots --snapshotter rustlayer usage -b limited | awk 'NR == 2 { print $2 }') || usage=''
if [[ $usage =~ ^[0-9]+$ ]] && ((usage > 4 * mib && usage <= 8 * mib)); then
  ok "containerd's Usage of limited's layer: $((usage / 1024)) KiB (between 4 and 8 MiB)"
else
  not_ok "containerd's Usage of limited's layer" "$usage"
fi
if info=$(stdout_of snaps info limited) && grep -q "\"$max_size_label\": \"$((8 * mib))\"" <<<"$info"; then
  ok "the max-size label is kept on limited's snapshot"
else
  not_ok "limited's snapshot should carry its max-size label" "$info"
fi
rows=$(daemon_usage_json 2>>"$tmp/ctr-stderr.log") || rows=''
got=$(python3 -c '
import json, sys
for r in json.loads(sys.argv[1] or "[]"):
    if r["name"].endswith("/limited"):
        print(r.get("method"), r.get("limit_bytes"), "%.2f" % (r.get("used_fraction") or 0))' "$rows" 2>&1)
read -r method limit fraction <<<"$got"
if [[ $method == counted && $limit == "$((8 * mib))" ]] &&
  awk -v f="$fraction" 'BEGIN { exit !(f > 0.5 && f <= 1.0) }'; then
  ok "rustlayer usage: limited is counted, limit 8 MiB, $fraction used"
else
  not_ok "rustlayer usage of limited (method limit fraction)" "$got"
fi

# ---------------------------------------------------------------- removal
containerd_remove_containers "$sock" "$ns" limited unlabelled roomy || true
ctr_ images rm --sync "$image" >/dev/null 2>&1 || true
containerd_collect_garbage ctr_ || true
left() { [[ $(daemon_usage_json | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))') == 0 ]]; }
if wait_until 60 "$daemon_pid" left; then
  ok "after the containers and the image are removed, the daemon holds no snapshot"
else
  not_ok "snapshots left in the daemon" "$(daemon_usage_json)"
fi

