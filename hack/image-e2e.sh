#!/usr/bin/env bash
# The rustlayer image, run the way the Helm chart's DaemonSet runs it, on a
# private containerd that then uses it as its proxy snapshotter:
#
#   - the archive from hack/build-image.sh imports, under the name its index gives;
#   - the daemon runs FROM THE IMAGE (its own ENTRYPOINT and CMD, `rustlayer
#     serve`), privileged, on the host network, on containerd's overlayfs
#     snapshotter (never on itself), with the DaemonSet's mounts: the root dir
#     at the same path with rshared propagation, the socket dir, /dev, and the
#     configuration file at /etc/rustlayer/config.toml;
#   - /healthz and /readyz answer, `rustlayer check` passes inside the container,
#     and a mount made under the root inside the container shows on the host
#     (the chart's Bidirectional propagation, which devmapper's mounts need);
#   - the same containerd imports and runs the e2e image (e2e/containerd/make_image.py)
#     with --snapshotter rustlayer; the container's output is right; its layers
#     and its active snapshot are in the daemon (`rustlayer ls -o json` inside
#     the daemon's container, and from the host over the shared socket);
#   - removing the workload and its image empties the daemon, and the daemon
#     exits 0 on SIGTERM.
#
#   hack/image-e2e.sh                      .cache/image/rustlayer.oci.tar (built if missing)
#   IMAGE_ARCHIVE=path hack/image-e2e.sh
#   CONTAINERD_VERSION=2.1.9 hack/image-e2e.sh   that containerd release (1.6.20,
#                                          the machine's, by default; 1.7.24 and
#                                          2.1.9 from hack/containerd-fetch.sh)
#
# Debian packages: containerd, runc, busybox-static, python3, util-linux, curl.
# Needs root. Everything lives in one temporary directory and is stopped,
# unmounted and removed on exit. Prints "ok - [containerd VERSION] ..." / "not ok
# - ..." per check and "image-e2e (containerd VERSION): N passed, N failed";
# exits 1 on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/lib/e2e.sh
source hack/lib/e2e.sh
me="image-e2e"

containerd_tier "containerd, runc and mounts need it"
require_commands "hack/deps.sh installs them" \
  containerd ctr containerd-shim-runc-v2 runc python3 mount umount timeout curl

archive=${IMAGE_ARCHIVE:-$repo/.cache/image/rustlayer.oci.tar}
if [[ ! -f $archive ]]; then
  [[ -z ${IMAGE_ARCHIVE:-} ]] || { echo "$me: no archive at $archive" >&2; exit 1; }
  hack/build-image.sh
fi
image=$(tar -xOf "$archive" index.json | python3 -c '
import json, sys
print(json.load(sys.stdin)["manifests"][0]["annotations"]["io.containerd.image.name"])')
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
# The name hack/build-image.sh gives it (IMAGE, as there, overrides it).
want_name=${IMAGE:-ghcr.io/rustlayer/rustlayer:$version}
ns=rustlayer-image-e2e
workload=docker.io/library/rustlayer-e2e:latest
daemon=rustlayer-daemon

# ---------------------------------------------------------------- helpers
tmp=$(mktemp -d /tmp/rustlayer-image-e2e.XXXXXX)
sock=$tmp/containerd.sock
# The DaemonSet's hostPath directories; the same paths inside the container.
rl_root=$tmp/var/lib/rustlayer
rl_sockdir=$tmp/run/rustlayer
rl_sock=$rl_sockdir/rustlayer.sock
containerd_pid='' daemon_ctr_pid=''
metrics_port=$((20000 + RANDOM % 20000))

ctr_() { timeout 120 ctr -a "$sock" -n "$ns" "$@"; }
in_daemon() { # in_daemon EXEC-ID CMD...: a process in the daemon's container
  local id=$1
  shift
  ctr_ task exec --exec-id "$id" "$daemon" "$@"
}

# The daemon's snapshots as "NAME KIND" lines, sorted, from `rustlayer ls -o json`.
ls_table() {
  python3 -c '
import json, sys
for s in json.load(sys.stdin):
    print(s["name"], s["kind"].lower())' | sort
}
# ctr asking the daemon directly: ctr >= 1.7 warns on stderr that its socket has
# no Introspection service, so only stdout is parsed (stdout_of).
# TODO: once the daemon serves containerd's Introspection service, check that
# ctr >= 1.7 writes nothing on stderr when asking it.
host_ls() { stdout_of timeout 30 ctr -a "$rl_sock" -n "$ns" snapshots --snapshotter rustlayer ls; }
daemon_ls_json() { stdout_of in_daemon "ls-$RANDOM" rustlayer ls -o json; }
daemon_count() { daemon_ls_json | ls_table | grep -c . || true; }

teardown() {
  if ((failed)); then tail_logs 40 "$tmp/daemon.log" "$tmp/containerd.log" "$tmp/ctr-stderr.log"; fi
  if [[ -n $containerd_pid ]] && kill -0 "$containerd_pid" 2>/dev/null; then
    containerd_remove_containers "$sock" "$ns" w2 "$daemon"
  fi
  [[ -n $daemon_ctr_pid ]] && kill -KILL "$daemon_ctr_pid" 2>/dev/null
  stop_pid "$containerd_pid" containerd
  remove_scratch "$ns"
}
report_traps teardown

echo "$me: containerd $CONTAINERD_VERSION ($(command -v containerd)), image $image from $archive, working in $tmp"

# ---------------------------------------------------------------- containerd
start_containerd() {
  # One containerd, as on a node: the DaemonSet's pod on overlayfs, workloads on
  # rustlayer through the proxy plugin.
  containerd_up "$CONTAINERD_GC_AT_ONCE"
  ok "private containerd up (pid $containerd_pid)"
  expect_clean_containerd_config
}

# ---------------------------------------------------------------- the image
import_image() {
  local out
  if out=$(ctr_ images import "$archive" 2>&1); then
    ok "ctr images import $(basename "$archive") (overlayfs, $(containerd_import_path))"
  else
    not_ok "ctr images import $archive" "$out"
    abort
  fi
  expect_eq "the image is named $want_name" "$want_name" "$(stdout_of ctr_ images ls -q)"
  # The runtime carries what the binary and the devmapper backend call at run time.
  # shellcheck disable=SC2016 # expanded by the container's shell
  out=$(stdout_of ctr_ run --rm --runc-root "$tmp/runc" "$image" probe sh -c '
    for c in rustlayer mount umount mkfs.ext4 mkfs.xfs dmsetup; do command -v $c >/dev/null || echo "no $c"; done
    ldd /usr/local/bin/rustlayer 2>&1 | grep -i "not found"
    rustlayer --version 2>&1') || true
  expect_eq "the image has the binary, mount, mkfs.ext4, mkfs.xfs and every shared library" \
    "rustlayer $version" "$out"
}

start_daemon() {
  mkdir -p "$rl_root" "$rl_sockdir" "$tmp/etc-rustlayer"
  chmod 0700 "$rl_root"
  # A shared mount point of its own, as a node's /var/lib is: rshared inside the
  # container then propagates mounts both ways.
  mount --bind "$rl_root" "$rl_root"
  mount --make-rshared "$rl_root"
  # What the chart's ConfigMap holds.
  cat >"$tmp/etc-rustlayer/config.toml" <<EOF
root = "$rl_root"
address = "$rl_sock"
backend = "overlay"
metrics_address = "127.0.0.1:$metrics_port"
EOF
  # No arguments: the image's ENTRYPOINT and CMD, `rustlayer serve`, reading the
  # mounted /etc/rustlayer/config.toml. Attached, so ctr's exit status is the
  # daemon's. A shared rootfs is what the kubelet asks for when a mount is
  # Bidirectional; without it runc makes every mount a slave of the host's.
  ctr_ run --privileged --net-host --rootfs-propagation rshared --runc-root "$tmp/runc" \
    --mount "type=bind,src=$rl_root,dst=$rl_root,options=rbind:rshared" \
    --mount "type=bind,src=$rl_sockdir,dst=$rl_sockdir,options=rbind:rw" \
    --mount "type=bind,src=/dev,dst=/dev,options=rbind:rw" \
    --mount "type=bind,src=$tmp/etc-rustlayer,dst=/etc/rustlayer,options=rbind:ro" \
    "$image" "$daemon" </dev/null >"$tmp/daemon.log" 2>&1 &
  daemon_ctr_pid=$!
  if wait_until 60 "$daemon_ctr_pid" host_ls; then
    ok "the daemon in the image serves $rl_sock (the host sees the socket)"
  else
    not_ok "the daemon in the image did not serve $rl_sock within 60 s"
    abort
  fi
  if wait_until 30 - curl -fsS "http://127.0.0.1:$metrics_port/readyz" &&
    curl -fsS "http://127.0.0.1:$metrics_port/healthz" >/dev/null 2>&1; then
    ok "/readyz and /healthz answer on the host network (the chart's probes)"
  else
    not_ok "/readyz or /healthz do not answer on 127.0.0.1:$metrics_port"
  fi
  local out
  if out=$(in_daemon check rustlayer check 2>&1); then
    ok "rustlayer check passes inside the daemon's container"
  else
    not_ok "rustlayer check fails inside the daemon's container" "$out"
  fi
}

check_propagation() {
  local probe=$rl_root/propagation-probe out
  mkdir "$probe"
  if ! out=$(in_daemon mnt mount -t tmpfs rustlayer-probe "$probe" 2>&1); then
    not_ok "mount a tmpfs under the root inside the container" "$out"
    rmdir "$probe"
    return 0
  fi
  if wait_until 10 - grep -q " $probe " /proc/self/mountinfo; then
    ok "a mount made under the root inside the container shows on the host (rshared)"
  else
    not_ok "a mount made under the root inside the container does not show on the host"
  fi
  in_daemon umnt umount "$probe" >/dev/null 2>&1 || umount "$probe" 2>/dev/null || true
  if wait_until 10 - eval "! grep -q ' $probe ' /proc/self/mountinfo"; then
    ok "its unmount propagates too"
  else
    not_ok "the probe mount stays on the host after the container unmounted it"
    umount "$probe" 2>/dev/null || true
  fi
  rmdir "$probe"
}

# ---------------------------------------------------------------- a workload
check_workload() {
  local out want got
  if ! python3 "$repo/e2e/containerd/make_image.py" --output "$tmp/workload.tar" \
    --name "$workload" >"$tmp/workload.json" 2>"$tmp/make_image.err"; then
    not_ok "e2e/containerd/make_image.py" "$(cat "$tmp/make_image.err")"
    return 0
  fi
  mapfile -t chain < <(python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["chain_ids"]))' <"$tmp/workload.json")
  # containerd dialled the proxy socket at its own start, before the daemon
  # existed (as on a node where the DaemonSet starts after containerd).
  if wait_until 60 - proxy_answers ctr_; then
    ok "containerd reaches the daemon through its proxy plugin"
  else
    not_ok "containerd cannot reach the daemon through its proxy plugin within 60 s"
    return 0
  fi
  if out=$(ctr_ images import --snapshotter rustlayer "$tmp/workload.tar" 2>&1); then
    ok "ctr images import --snapshotter rustlayer (the e2e image, 3 layers, $(containerd_import_path))"
  else
    not_ok "ctr images import --snapshotter rustlayer" "$out"
    return 0
  fi
  out=$(stdout_of ctr_ run --rm --snapshotter rustlayer --runc-root "$tmp/runc" "$workload" w1 \
    sh -c 'cat /etc/motd; echo hello >/written; cat /written; ls /data; test -e /etc/doomed || echo gone') || true
  expect_eq "a container on rustlayer sees its merged root and writes to it" \
    "$(printf 'new\nhello\nfresh\ngone')" "$out"

  if ! out=$(ctr_ run -d --snapshotter rustlayer --runc-root "$tmp/runc" "$workload" w2 sleep 600 2>&1); then
    not_ok "start a long-running container w2 on rustlayer" "$out"
    return 0
  fi
  # The daemon's keys are containerd's "<ns>/<n>/<name>"; compare the names.
  want=$(printf '%s committed\n' "${chain[@]}"; echo "w2 active")
  want=$(sort <<<"$want")
  got=$(daemon_ls_json | ls_table | awk '{ n = split($1, k, "/"); print k[n], $2 }' | sort) || true
  expect_eq "rustlayer ls -o json in the daemon's container: the 3 layers committed, w2 active" "$want" "$got"
  got=$(host_ls | awk 'NR > 1 && NF { n = split($1, k, "/"); print k[n], tolower($NF) }' | sort) || true
  expect_eq "the host, over the shared socket, sees the same snapshots" "$want" "$got"

  ctr_ task kill -s SIGKILL w2 >/dev/null 2>&1 || true
  # shellcheck disable=SC2016 # expanded by eval, on each try
  wait_until 30 - eval '[[ $(stdout_of ctr_ task ls | awk "\$1 == \"w2\" { print \$3 }") != RUNNING ]]' || true
  ctr_ task delete w2 >/dev/null 2>&1 || true
  if out=$(ctr_ containers rm w2 2>&1) && out=$(ctr_ images rm --sync "$workload" 2>&1); then
    ok "w2 and the e2e image removed from containerd"
  else
    not_ok "remove w2 and the e2e image" "$out"
    return 0
  fi
  # containerd's GC, scheduled by the deletions, removes them from the daemon.
  # shellcheck disable=SC2016 # expanded by eval, on each try
  if wait_until 60 "$daemon_ctr_pid" eval '[[ $(daemon_count) == 0 ]]'; then
    ok "containerd's GC emptied the daemon"
  else
    not_ok "the daemon still holds snapshots 60 s after the image was removed" "$(daemon_ls_json 2>&1)"
  fi
}

check_shutdown() {
  # Attached to the daemon's container, ctr exits with the daemon's status.
  expect_clean_exit "the daemon" "$daemon_ctr_pid" "$tmp/daemon.log" ctr_ task kill -s SIGTERM "$daemon"
  # One that ignored SIGTERM is the teardown's to kill.
  kill -0 "$daemon_ctr_pid" 2>/dev/null || daemon_ctr_pid=''
  ctr_ task delete "$daemon" >/dev/null 2>&1 || true
  ctr_ containers rm "$daemon" >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- main
start_containerd
import_image
start_daemon
check_propagation
check_workload
check_shutdown
