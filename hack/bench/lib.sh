# shellcheck shell=bash
# Sourced by hack/bench.sh and hack/bench/devmapper-guest.sh: the steps both time
# the same way. Each script sets $sock (containerd's socket), $bench (the
# rustlayer-bench binary), $results (the JSON-lines file), $archive, $image and
# $layers (the test image), $tmp (scratch) and $me (its name, for die), and defines
# settle (let deferred work finish), and import_warm where it passes that to
# interleaved_imports.
# shellcheck disable=SC2154 # the globals above belong to the sourcing script

# die MESSAGE: MESSAGE on stderr after the script's name ($me); exit 1.
die() {
  echo "$me: $*" >&2
  exit 1
}
# say STEP: a heading for the next step, with the seconds since this file was
# sourced.
started=$SECONDS
say() { printf '\n=== %s (%ss)\n' "$*" "$((SECONDS - started))"; }

ctrn() { # ctrn NAMESPACE ARGS...
  local ns=$1
  shift
  timeout 1800 ctr -a "$sock" -n "$ns" "$@"
}
record() { # record ROW METRIC TARGET UNIT VALUE ROUND [--main]
  "$bench" record --results "$results" --row "$1" --metric "$2" --target "$3" --unit "$4" \
    --value "$5" --round "$6" "${@:7}"
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
count_snapshots() { # count_snapshots NAMESPACE SNAPSHOTTER
  ctrn "$1" snapshots --snapshotter "$2" ls | awk 'NR > 1 && NF' | wc -l
}
count_content() { ctrn "$1" content ls -q | awk 'NF' | wc -l; }
# A full garbage collection now, waited for: delete a throwaway lease synchronously.
gc_now() {
  ctrn bench-gc leases create --id gc-now >/dev/null
  ctrn bench-gc leases delete --sync gc-now >/dev/null
}
# Snapshotters in the order of a round: reversed every other round.
ordered() { # ordered ROUND NAME...
  local round=$1 i
  shift
  if ((round % 2)); then
    local -a reversed=()
    for ((i = $#; i > 0; i--)); do reversed+=("${!i}"); done
    echo "${reversed[@]}"
  else
    echo "$@"
  fi
}

# timed_import ROW NAMESPACE METRIC SNAPSHOTTER ROUND: times one `ctr images
# import` and checks it made one snapshot per layer.
timed_import() {
  local row=$1 ns=$2 metric=$3 s=$4 r=$5 t0 t1 n
  t0=$EPOCHREALTIME
  ctrn "$ns" images import --snapshotter "$s" "$archive" >/dev/null ||
    die "ctr images import --snapshotter $s failed"
  t1=$EPOCHREALTIME
  n=$(count_snapshots "$ns" "$s")
  ((n == layers)) || die "import on $s: $n snapshots, expected $layers"
  record "$row" "$metric" "$s" s "$(elapsed "$t0" "$t1")" "$r" --main
}

# cycle_rounds ROW ROUNDS ITERATIONS WARMUP TARGET-ARGS...: ROUNDS rounds of
# ITERATIONS snapshot cycles (after WARMUP) on each target TARGET-ARGS name.
cycle_rounds() {
  local row=$1 rounds=$2 iterations=$3 warmup=$4 r
  shift 4
  for ((r = 0; r < rounds; r++)); do
    "$bench" cycle --containerd "$sock" --namespace bench "$@" --row "$row" \
      --iterations "$iterations" --warmup "$warmup" --round "$r" --results "$results"
  done
}

# interleaved_imports IMPORT ROW ROUNDS SNAPSHOTTER...: ROUNDS rounds of IMPORT
# (import_cold or import_warm) ROW SNAPSHOTTER ROUND on each SNAPSHOTTER, in the
# round's order.
interleaved_imports() {
  local import=$1 row=$2 rounds=$3 r s
  shift 3
  for ((r = 0; r < rounds; r++)); do
    for s in $(ordered "$r" "$@"); do "$import" "$row" "$s" "$r"; done
  done
}

# import_cold ROW SNAPSHOTTER ROUND: an import with nothing present, then the
# image, its content and its snapshots deleted again (checked).
import_cold() {
  local row=$1 s=$2 r=$3 n
  timed_import "$row" bench-import "ctr images import, cold (content + unpack)" "$s" "$r"
  ctrn bench-import images rm --sync "$image" >/dev/null
  n=$(count_snapshots bench-import "$s")
  ((n == 0)) || die "after removing the image, $n snapshots of $s are left"
  n=$(count_content bench-import)
  ((n == 0)) || die "after removing the image, $n content blobs are left"
  settle
}

# container_starts ROW BUILTIN ROUNDS RUNS: `ctr run --rm IMAGE /bin/true` on
# rustlayer and BUILTIN, RUNS a round each, interleaved.
container_starts() {
  local row=$1 builtin=$2 rounds=$3 runs=$4 s r k n=0 t0 t1
  for s in "$builtin" rustlayer; do
    ctrn bench-run images import --snapshotter "$s" "$archive" >/dev/null ||
      die "ctr images import --snapshotter $s failed"
    run_once "$s" "warmup-$s" || die "ctr run on $s failed"
  done
  for ((r = 0; r < rounds; r++)); do
    for s in $(ordered "$r" rustlayer "$builtin"); do
      for ((k = 0; k < runs; k++)); do
        n=$((n + 1))
        t0=$EPOCHREALTIME
        run_once "$s" "run-$s-$n" || die "ctr run --snapshotter $s failed"
        t1=$EPOCHREALTIME
        record "$row" "ctr run --rm IMAGE /bin/true" "$s" s "$(elapsed "$t0" "$t1")" "$n" --main
      done
    done
  done
}
run_once() { # run_once SNAPSHOTTER ID
  ctrn bench-run run --rm --snapshotter "$1" --runc-root "$tmp/runc" "$image" "$2" /bin/true </dev/null
}
