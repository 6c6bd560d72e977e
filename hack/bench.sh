#!/usr/bin/env bash
# Benchmarks rustlayer side by side with containerd's built-in snapshotters. One
# private containerd (its own root, state and socket in a temporary directory, CRI
# off) serves its built-in overlayfs and native snapshotters and a private rustlayer
# daemon (release build, own root) as the proxy plugin "rustlayer". Each row
# measures every snapshotter the same way, interleaved round by round (the order
# reversed every other round), and reports medians and rustlayer / built-in:
#
#   0  the disk: what an fdatasync and a directory fsync cost here
#   1  snapshot cycle through containerd's snapshots API: Prepare, Commit, Prepare
#      child, Mounts, Remove, Remove; p50/p99 vs overlayfs and native (and rustlayer
#      straight on its socket, to show what containerd's hop costs; and the proxy
#      floor, a second proxy plugin "floor" that keeps snapshots in memory and does
#      no I/O, to show what the proxy path alone costs through containerd)
#   2  image unpack: `ctr images import` of a debootstrap'd Debian split into five
#      layers (128 MB), cold (content and snapshots deleted between rounds) and
#      with the content already present (snapshots deleted), vs overlayfs
#   3  container start: `ctr run --rm IMAGE id /bin/true`, vs overlayfs
#   4  Usage of a committed layer with 100k small files
#   5  a 500-layer chain: Prepare on top, and mounting it
#   6  10k snapshots: List, and resident memory at idle
#   7  devmapper backend vs containerd's devmapper snapshotter, in a VM booting
#      Debian's kernel (hack/vm-run.sh): cycle, image import, container start;
#      BENCH_DEVMAPPER=0 skips it
#   8  on a root with project quotas (xfs prjquota), in a VM again: Usage of an
#      active 100k-file layer, and the CPU of one CRI stats pass (Walk, Usage of
#      each) over 50 active container layers, through containerd 2.1.9, vs its
#      overlayfs; BENCH_QUOTA=0 skips it
#   +  where rustlayer's time goes: strace -T -y of the daemon and of containerd
#      during snapshot cycles: every sync, by the file it syncs
#
# Rows 0-7 run on containerd 1.6.20 (Debian 12's; CONTAINERD_VERSION picks
# another). Rows 1-3 then run again on containerd 2.1.9 (BENCH_ALSO_CONTAINERD,
# a list; empty skips it), fetched by hack/containerd-fetch.sh: a second private
# containerd with its own rustlayer daemon and proxy floor, against its own
# built-in overlayfs, the rows named "(containerd 2.1.9)".
#
#   sudo hack/bench.sh            full run (~16 min on 2 vCPUs, 9 of them row 7, once cached)
#   sudo hack/bench.sh --quick    2 rounds, small sizes (~8 min)
#
# It prints figures and never judges them: the exit status is non-zero only when
# something breaks (a daemon does not start, an import fails), never for a time.
# The tables go to stdout and to .cache/bench/results.md; every figure, as JSON
# lines, to .cache/bench/results.jsonl.
#
# Builds `cargo build --release --locked -p rustlayer -p rustlayer-bench` into
# $CARGO_TARGET_DIR (default target/), unless RUSTLAYER_BIN and RUSTLAYER_BENCH_BIN
# name binaries to use. The image's root filesystem is debootstrap'd once from
# the Debian archive this machine's apt uses (or DEBIAN_MIRROR) and cached
# with the image under .cache/bench/. BENCH_DIR picks the scratch directory
# (default: a new one under /var/tmp, so on disk like /var/lib, not tmpfs);
# BENCH_KEEP=1 keeps it. Both snapshotters' roots go under it, on its filesystem;
# BENCH_FS=fresh puts them on a new ext4 made in a sparse image file there
# (BENCH_FS_SIZE, default 16G) and loop-mounted instead.
#
# Debian packages (installed if missing, after hack/deps.sh):
#   containerd   containerd, ctr, containerd-shim-runc-v2 (1.6.x in bookworm; other
#                releases from hack/containerd-fetch.sh)
#   runc         the container runtime
#   debootstrap  the image's root filesystem
#   python3      the OCI image builder, the strace summary (standard library only)
#   strace       the syscall profile
#   util-linux   mount, umount, findmnt
#   e2fsprogs    mkfs.ext4, for BENCH_FS=fresh
set -euo pipefail
export LC_ALL=C # decimal points in $EPOCHREALTIME and awk
cd "$(dirname "$0")/.."
repo=$(pwd)
# shellcheck source=hack/lib/containerd.sh
source hack/lib/containerd.sh
# shellcheck source=hack/bench/lib.sh
source hack/bench/lib.sh
# shellcheck source=hack/lib/machine.sh
source hack/lib/machine.sh
# shellcheck source=hack/lib/process.sh
source hack/lib/process.sh
me=bench

mode=full
for arg in "$@"; do
  case $arg in
    --quick) mode=quick ;;
    --full) mode=full ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "$me: unknown argument $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

if [[ $(id -u) -ne 0 ]]; then
  echo "$me: must run as root (containerd, runc, debootstrap and overlay mounts need it)" >&2
  exit 1
fi

# ---------------------------------------------------------------- sizes
if [[ $mode == quick ]]; then
  rounds=2          # rows 1, 3, 4, 5, 6
  cycle_iterations=40
  import_rounds=1   # row 2, each variant
  runs_per_round=2  # row 3
  usage_files=10000
  usage_calls=100
  chain_layers=200
  many_count=1000
  profile_cycles=30
  dm_rounds=1 dm_cycles=10 dm_import_rounds=1 dm_runs=1 # row 7, in an emulated VM
  quota_rounds=1 quota_files=20000 quota_containers=10 quota_files_each=500 # row 8, too
else
  rounds=5
  cycle_iterations=300
  import_rounds=4
  runs_per_round=4
  usage_files=100000
  usage_calls=500
  chain_layers=500
  many_count=10000
  profile_cycles=100
  dm_rounds=3 dm_cycles=30 dm_import_rounds=2 dm_runs=2
  quota_rounds=3 quota_files=100000 quota_containers=50 quota_files_each=2000
fi

# ---------------------------------------------------------------- packages
say "dependencies"
if [[ -x hack/deps.sh ]]; then
  hack/deps.sh
fi
apt_install_missing containerd runc debootstrap python3 strace util-linux e2fsprogs
containerd_use || die "no containerd ${CONTAINERD_VERSION:-$CONTAINERD_DEFAULT_VERSION}"
# Each release's binaries, fetched now: a missing one fails before any row runs.
read -ra also_versions <<<"${BENCH_ALSO_CONTAINERD-2.1.9}"
declare -A also_dirs=()
for v in "${also_versions[@]}"; do
  also_dirs[$v]=$(hack/containerd-fetch.sh "$v") || die "cannot fetch containerd $v"
done
for cmd in containerd ctr containerd-shim-runc-v2 runc debootstrap python3 strace mount umount mkfs.ext4; do
  command -v "$cmd" >/dev/null || die "$cmd not found after installing packages"
done

# ---------------------------------------------------------------- build
if [[ -n ${RUSTLAYER_BIN-} && -n ${RUSTLAYER_BENCH_BIN-} ]]; then
  bin=$RUSTLAYER_BIN bench=$RUSTLAYER_BENCH_BIN
else
  say "cargo build --release"
  cargo_on_path "$me" || die "or set RUSTLAYER_BIN and RUSTLAYER_BENCH_BIN"
  cargo build --release --locked -p rustlayer -p rustlayer-bench
  target_dir=${CARGO_TARGET_DIR:-$repo/target}
  bin=$target_dir/release/rustlayer bench=$target_dir/release/rustlayer-bench
fi
[[ -x $bin ]] || die "no rustlayer binary at $bin"
[[ -x $bench ]] || die "no rustlayer-bench binary at $bench"
bin=$(realpath "$bin") bench=$(realpath "$bench")

# ---------------------------------------------------------------- image
cache=$repo/.cache/bench
mkdir -p "$cache"
rootfs=$cache/rootfs-bookworm-minbase
if [[ ! -e $rootfs.complete ]]; then
  mirror=$(debian_mirror bookworm) || die "no Debian archive to debootstrap from"
  say "debootstrap --variant=minbase bookworm from $mirror (once; cached in $rootfs)"
  rm -rf "$rootfs" "$rootfs.tmp"
  debootstrap --variant=minbase bookworm "$rootfs.tmp" "$mirror" \
    >"$cache/debootstrap.log" 2>&1 || {
    tail -n 20 "$cache/debootstrap.log" >&2
    die "debootstrap failed; the whole log is $cache/debootstrap.log"
  }
  mv "$rootfs.tmp" "$rootfs"
  touch "$rootfs.complete"
fi
image=docker.io/library/rustlayer-bench-debian:bookworm
archive=$cache/debian-bookworm.oci.tar
builder=hack/bench/make_rootfs_image.py
image_key=$(
  {
    sha256sum "$builder"
    stat -c %Y "$rootfs.complete"
    echo "$image"
  } | sha256sum | cut -d' ' -f1
)
if [[ ! -f $archive || $(cat "$archive.key" 2>/dev/null) != "$image_key" ]]; then
  say "packing the root filesystem into a multi-layer OCI archive (once)"
  python3 "$builder" --rootfs "$rootfs" --output "$archive" --name "$image" >"$archive.json"
  echo "$image_key" >"$archive.key"
fi
layers=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"])' <"$archive.json")
image_mb=$(python3 -c 'import json,sys; j=json.load(sys.stdin); print("%d MB in %d layers (%d MB gzip)" % (j["uncompressed_bytes"]/1e6, j["layers"], j["compressed_bytes"]/1e6))' <"$archive.json")
echo "$me: image $image: $image_mb"

# ---------------------------------------------------------------- daemons
tmp=${BENCH_DIR:-$(mktemp -d /var/tmp/rustlayer-bench.XXXXXX)}
mkdir -p "$tmp"
tmp=$(realpath "$tmp")
# Both snapshotters' roots share one filesystem: the scratch directory's own, or
# with BENCH_FS=fresh a new ext4 in a loop-mounted image file, so that neither
# inherits an aged filesystem's layout (on a long-used filesystem, file creation
# speed can differ from one directory to the next by more than the snapshotters
# differ). A loop device makes every fsync much dearer than on the disk below.
roots=$tmp/fs
results=$tmp/results.jsonl
: >"$results"
# The stack the rows talk to (start_stack); every process started, for cleanup.
sock='' rl_sock='' floor_sock='' rl_root='' rl_pid='' floor_pid='' cd_pid='' strace_pids=()
containerd_pids=() daemon_pids=()
namespaces=(bench bench-import bench-unpack bench-run bench-gc)

# A daemon with thousands of snapshots may take its time to stop (stop_pid).
STOP_PID_GRACE=20

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  set +e
  for pid in "${strace_pids[@]}"; do kill -INT "$pid" 2>/dev/null; done
  if ((rc != 0)); then
    tail_logs 30 "$tmp"/rustlayer.log "$tmp"/containerd.log "$tmp"/*/rustlayer.log "$tmp"/*/containerd.log
  fi
  for pid in "${containerd_pids[@]}"; do stop_pid "$pid" containerd; done
  for pid in "${daemon_pids[@]}"; do stop_pid "$pid" "rustlayer or the proxy floor"; done
  local released=yes
  release_leftovers "${namespaces[@]}" || released=''
  if [[ -n ${BENCH_KEEP-} ]]; then
    echo "$me: kept $tmp"
  elif [[ -z $released ]]; then
    echo "$me: mounts left under $tmp; not removing it" >&2
    rc=1
  else
    rm -rf "$tmp"
  fi
  echo "$me: $mode run finished in $((SECONDS - started))s (status $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

case ${BENCH_FS:-host} in
  host | fresh) ;;
  *) die "BENCH_FS must be host or fresh, not ${BENCH_FS}" ;;
esac
mkdir -p "$roots"
if [[ ${BENCH_FS:-host} == fresh ]]; then
  say "a fresh ext4 (${BENCH_FS_SIZE:-16G} sparse image) for the roots"
  truncate -s "${BENCH_FS_SIZE:-16G}" "$tmp/fs.img"
  mkfs.ext4 -q -F "$tmp/fs.img"
  mount -o loop "$tmp/fs.img" "$roots"
fi
fs_desc=$(findmnt -n -T "$roots" -o FSTYPE,SOURCE | tr -s ' ')
if [[ ${BENCH_FS:-host} == fresh ]]; then fs_desc="a fresh $fs_desc"; fi

# start_stack DIR ROOTS: a rustlayer daemon, the proxy floor, and a containerd (the
# one first on PATH) using both as proxy plugins; sockets, state and logs in DIR,
# the snapshotters' roots under ROOTS. Each containerd has a daemon of its own:
# its garbage collector removes whatever the daemon holds that it did not make.
# Sets sock, rl_sock, floor_sock, rl_root, rl_pid, floor_pid and cd_pid.
start_stack() {
  local dir=$1 root=$2 plugins complaints
  sock=$dir/containerd.sock rl_sock=$dir/rl.sock floor_sock=$dir/floor.sock rl_root=$root/rl
  mkdir -p "$dir/containerd" "$root/containerd"
  : >"$dir/rustlayer.toml" # defaults, whatever /etc/rustlayer holds
  env -u RUST_LOG "$bin" serve --config "$dir/rustlayer.toml" --root "$rl_root" --address "$rl_sock" \
    >"$dir/rustlayer.log" 2>&1 &
  rl_pid=$!
  daemon_pids+=("$rl_pid")
  wait_for_socket 30 "$rl_pid" rustlayer "$rl_sock" || exit 1

  # The proxy floor: containerd's snapshots API from memory, no I/O.
  "$bench" proxy-floor --socket "$floor_sock" >"$dir/floor.log" 2>&1 &
  floor_pid=$!
  daemon_pids+=("$floor_pid")
  wait_for_socket 30 "$floor_pid" "the proxy floor" "$floor_sock" || exit 1

  containerd_config "$root/containerd/root" "$dir/containerd/state" "$sock" "$rl_sock" \
    "[proxy_plugins.floor]
  type = \"snapshot\"
  address = \"$floor_sock\"" >"$dir/containerd.toml"
  containerd_start "$dir/containerd.toml" "$dir/containerd.log" "$sock" 30 || true
  cd_pid=$containerd_pid
  containerd_pids+=("$cd_pid")
  kill -0 "$cd_pid" 2>/dev/null || die "containerd exited during start"
  plugins=$(containerd_has_snapshotters "$sock" rustlayer overlayfs native floor) ||
    die "containerd lacks a working snapshotter (rustlayer, overlayfs, native, floor):"$'\n'"$plugins"
  complaints=$(containerd_config_check "$dir/containerd.log" "$sock")
  [[ -z $complaints ]] || echo "$me: containerd $CONTAINERD_VERSION complained about its config:"$'\n'"$complaints" >&2
  echo "$me: containerd $CONTAINERD_VERSION pid $cd_pid, rustlayer pid $rl_pid, in $dir"
}

mkdir -p "$tmp/mnt" "$tmp/runc"
say "starting rustlayer and containerd $CONTAINERD_VERSION in $tmp"
start_stack "$tmp" "$roots"

# ---------------------------------------------------------------- helpers
# Let deferred work finish before the next timed step: containerd's GC, rustlayer's
# trash reaper, the page cache's dirty data.
settle() {
  gc_now
  # shellcheck disable=SC2016 # expanded by eval, on each try
  wait_until 60 - eval '[[ -z $(ls -A "$rl_root/trash" 2>/dev/null) ]]' || true
  sync
  sleep 1
}
# ---------------------------------------------------------------- row 0
say "row 0: the disk under the roots ($fs_desc)"
"$bench" fsync-probe --dir "$roots" --count 200 --results "$results"
settle

# ---------------------------------------------------------------- rows 1-3
# rows_1_to_3 SUFFIX SNAPSHOTTER-ARGS...: rows 1 to 3 on the stack started last,
# SUFFIX after each row's name; row 1 on the targets SNAPSHOTTER-ARGS name.
rows_1_to_3() {
  local suffix=$1
  shift
  say "row 1$suffix: snapshot cycle, $rounds rounds x $cycle_iterations cycles"
  cycle_rounds "1 snapshot cycle$suffix" "$rounds" "$cycle_iterations" 10 "$@"
  settle

  say "row 2$suffix: image import, $import_rounds rounds cold and $import_rounds with the content present"
  # Cold first: no other namespace may hold the image's content yet, or containerd
  # would take the blobs as already there.
  interleaved_imports import_cold "2 image import$suffix" "$import_rounds" rustlayer overlayfs
  ctrn bench-unpack images import --no-unpack "$archive" >/dev/null
  interleaved_imports import_warm "2 image import$suffix" "$import_rounds" rustlayer overlayfs

  say "row 3$suffix: container start, $rounds rounds x $runs_per_round runs"
  container_starts "3 container start$suffix" overlayfs "$rounds" "$runs_per_round"
  settle
}
import_warm() { # import_warm ROW SNAPSHOTTER ROUND
  local row=$1 s=$2 r=$3 n
  timed_import "$row" bench-unpack "ctr images import, content present (unpack only)" "$s" "$r"
  "$bench" wipe --containerd "$sock" --namespace bench-unpack --snapshotter "$s" >/dev/null
  n=$(count_snapshots bench-unpack "$s")
  ((n == 0)) || die "after wiping, $n snapshots of $s are left"
  settle
}

rows_1_to_3 "" --snapshotter rustlayer --snapshotter overlayfs --snapshotter native --snapshotter floor \
  --rustlayer "$rl_sock"

# The same rows on each other containerd release, one after the other: a stack
# of its own (its ctr first on PATH: 2.x's imports through the transfer service),
# stopped once its rows are done. Row 1 without native and without the daemon
# straight on its socket: the same daemon, whatever containerd is in front.
main_stack=("$sock" "$rl_sock" "$floor_sock" "$rl_root" "$rl_pid" "$floor_pid" "$cd_pid")
main_path=$PATH main_version=$CONTAINERD_VERSION
for v in "${also_versions[@]}"; do
  PATH=${also_dirs[$v]}:$main_path CONTAINERD_VERSION=$v
  say "starting rustlayer and containerd $v in $tmp/containerd-$v"
  start_stack "$tmp/containerd-$v" "$roots/containerd-$v"
  rows_1_to_3 " (containerd $v)" --snapshotter rustlayer --snapshotter overlayfs --snapshotter floor
  # Its containers ran with --rm: nothing of it is left running or mounted.
  stop_pid "$cd_pid" "containerd $v" || true
  stop_pid "$rl_pid" "rustlayer of containerd $v" || true
  stop_pid "$floor_pid" "the proxy floor of containerd $v" || true
done
PATH=$main_path CONTAINERD_VERSION=$main_version
sock=${main_stack[0]} rl_sock=${main_stack[1]} floor_sock=${main_stack[2]} rl_root=${main_stack[3]}
rl_pid=${main_stack[4]} floor_pid=${main_stack[5]} cd_pid=${main_stack[6]}

# ---------------------------------------------------------------- row 4
say "row 4: Usage of a committed layer with $usage_files files"
"$bench" usage --containerd "$sock" --namespace bench \
  --snapshotter rustlayer --snapshotter overlayfs --snapshotter native --rustlayer "$rl_sock" \
  --files "$usage_files" --calls "$usage_calls" --rounds "$rounds" --workdir "$tmp/mnt" --results "$results"
settle

# ---------------------------------------------------------------- row 5
say "row 5: a $chain_layers-layer chain"
"$bench" chain --containerd "$sock" --namespace bench --snapshotter rustlayer --snapshotter overlayfs \
  --layers "$chain_layers" --rounds "$rounds" --workdir "$tmp/mnt" --results "$results"
settle

# ---------------------------------------------------------------- profile
say "where the time goes: strace -T -y during $profile_cycles cycles"
trace() { # trace OUT PID -- COMMAND...: COMMAND runs while PID is traced
  local out=$1 pid=$2 spid
  shift 3
  strace -f -T -y -o "$out" -p "$pid" 2>"$out.err" &
  spid=$!
  strace_pids+=("$spid")
  wait_until 5 - grep -q attached "$out.err" || true
  sleep 0.5
  "$@" >/dev/null 2>&1 || die "traced command failed: $*"
  kill -INT "$spid"
  wait "$spid" || true
  strace_pids=()
}
one_cycle_run() { # one_cycle_run TARGET-ARGS...
  "$bench" cycle --namespace bench --iterations "$profile_cycles" --warmup 0 "$@"
}
trace "$tmp/strace-rl-direct.txt" "$rl_pid" -- one_cycle_run --rustlayer "$rl_sock"
trace "$tmp/strace-rl-via.txt" "$rl_pid" -- one_cycle_run --containerd "$sock" --snapshotter rustlayer
trace "$tmp/strace-cd-rl.txt" "$cd_pid" -- one_cycle_run --containerd "$sock" --snapshotter rustlayer
trace "$tmp/strace-cd-ovl.txt" "$cd_pid" -- one_cycle_run --containerd "$sock" --snapshotter overlayfs
profile=$(python3 hack/bench/strace_summary.py --cycles "$profile_cycles" --strip "$roots" \
  "rustlayer daemon (direct cycles)=$tmp/strace-rl-direct.txt" \
  "rustlayer daemon (cycles via containerd)=$tmp/strace-rl-via.txt" \
  "containerd (rustlayer cycles)=$tmp/strace-cd-rl.txt" \
  "containerd (overlayfs cycles)=$tmp/strace-cd-ovl.txt")
echo "$profile"
settle

# ---------------------------------------------------------------- row 6
say "row 6: $many_count snapshots each on rustlayer and overlayfs"
"$bench" many --containerd "$sock" --namespace bench --snapshotter rustlayer --snapshotter overlayfs \
  --rustlayer "$rl_sock" --count "$many_count" --concurrency 8 --rounds "$rounds" \
  --rustlayer-pid "$rl_pid" --containerd-pid "$cd_pid" --results "$results"

# ---------------------------------------------------------------- row 7
# This kernel may lack dm-thin: the row runs in a VM booting Debian's kernel
# (hack/vm-run.sh, emulated, so its absolute times are slow; the ratio is the point).
if [[ ${BENCH_DEVMAPPER:-1} == 1 ]]; then
  say "row 7: devmapper vs containerd's devmapper, in a VM: $dm_rounds rounds"
  mkdir -p "$tmp/vm"
  : >"$tmp/vm/results.jsonl"
  hack/vm-run.sh --timeout 5400 --mem 6144 \
    --disk rldata:8G --disk rlmeta:256M --disk cddata:8G --disk cdmeta:256M --share "$tmp/vm" \
    -- hack/bench/devmapper-guest.sh "$tmp/vm/results.jsonl" "$bin" "$bench" "$archive" "$image" \
    "$layers" "$dm_rounds" "$dm_cycles" "$dm_import_rounds" "$dm_runs" ||
    die "row 7 (devmapper in a VM) failed"
  cat "$tmp/vm/results.jsonl" >>"$results"
else
  "$bench" record --results "$results" --row "7 devmapper" --metric "all devmapper rows" \
    --target rustlayer --note "skipped: BENCH_DEVMAPPER=0" --main
fi

# ---------------------------------------------------------------- row 8
# Project quotas, like dm-thin, may be missing from this kernel: a VM again.
if [[ ${BENCH_QUOTA:-1} == 1 ]]; then
  say "row 8: Usage on a project-quota root vs overlayfs, in a VM: $quota_rounds rounds"
  mkdir -p "$tmp/vm-quota"
  : >"$tmp/vm-quota/results.jsonl"
  hack/containerd-fetch.sh 2.1.9 >/dev/null || die "cannot fetch containerd 2.1.9 for row 8"
  hack/vm-run.sh --timeout 5400 --mem 4096 --disk quota:16G --share "$tmp/vm-quota" \
    -- hack/bench/quota-guest.sh "$tmp/vm-quota/results.jsonl" "$bin" "$bench" "$quota_rounds" \
    "$quota_files" "$quota_containers" "$quota_files_each" ||
    die "row 8 (project quotas in a VM) failed"
  cat "$tmp/vm-quota/results.jsonl" >>"$results"
else
  "$bench" record --results "$results" --row "8 Usage on a project-quota root (VM)" --metric "all rows" \
    --target rustlayer --note "skipped: BENCH_QUOTA=0" --main
fi

# ---------------------------------------------------------------- report
say "report"
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
rev=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)
invocation="hack/bench.sh"
if [[ $mode == quick ]]; then invocation+=" --quick"; fi
built="rustlayer $rev"
if [[ -n ${RUSTLAYER_BIN-} ]]; then built="rustlayer binary $bin (tree at $rev)"; fi
"$bench" report --results "$results" --output "$cache/results.md" \
  --context "$(date -u +%Y-%m-%dT%H:%MZ), \`$invocation\`, $built" \
  --context "$(nproc) × $cpu, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r), roots on $fs_desc" \
  --context "$(containerd --version | awk '{ print $1, $3 }')${also_versions[*]:+ (rows 1-3 also on containerd ${also_versions[*]})}, $(runc --version | head -n1)" \
  --context "image: debootstrap'd Debian bookworm minbase, $image_mb" \
  --context "rounds: $rounds (row 2: $import_rounds per variant); row 1: $cycle_iterations cycles per round; row 3: $runs_per_round runs per round; row 4: $usage_files files, $usage_calls calls per round; row 5: $chain_layers layers; row 6: $many_count snapshots; row 7 (VM): $dm_rounds rounds of $dm_cycles cycles, $dm_import_rounds imports, $dm_runs runs; row 8 (VM, containerd 2.1.9): $quota_rounds rounds, one layer of $quota_files files, $quota_containers layers of $quota_files_each files"
{
  echo
  echo "## Where the time goes: strace -f -T -y, per snapshot cycle"
  echo
  echo "$profile_cycles cycles of row 1 with the daemon (or containerd) under strace, which slows"
  echo "every syscall: the counts are exact, the times inflated. Through containerd, a Remove"
  echo "only deletes containerd's record; the snapshotter's own Remove comes later, from"
  echo "containerd's garbage collector, and may fall outside the traced window."
  echo
  echo "$profile"
} >>"$cache/results.md"
cp "$results" "$cache/results.jsonl"
echo "$me: tables in $cache/results.md, figures in $cache/results.jsonl"
