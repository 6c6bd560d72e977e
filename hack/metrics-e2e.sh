#!/usr/bin/env bash
# End-to-end check of rustlayer's Prometheus metrics, its Grafana dashboard and its
# alert rules, against real programs:
#
#   1. promtool check/test of charts/rustlayer/rules/;
#   2. the daemon with --metrics-address; its /metrics linted by promtool and
#      checked against the documented families (names, types, labels);
#   3. a private containerd using the daemon as proxy snapshotter imports a tiny
#      image and runs a container from it, so the metrics see real traffic;
#   4. a private Prometheus scrapes the daemon every second with the rules loaded;
#      every dashboard panel query and every alert expression is evaluated through
#      its HTTP API and must return data (devmapper-only ones are skipped).
#
#   sudo hack/metrics-e2e.sh                      target/debug/rustlayer
#   sudo RUSTLAYER_BIN=path hack/metrics-e2e.sh
#   sudo CONTAINERD_VERSION=2.1.9 hack/metrics-e2e.sh   that containerd release
#                           (1.6.20, the machine's, by default; 1.7.24 and 2.1.9
#                           from hack/containerd-fetch.sh)
#
# Needs root (containerd, overlay mounts) and the Debian packages prometheus,
# containerd, runc, python3 (and busybox-static unless e2e/containerd/make_image.py
# builds the image). Installs nothing. Everything runs in one temporary directory
# on loopback ports it picks, and is stopped, unmounted and removed on exit.
# Prints one line per check ("ok - [containerd VERSION] ...", "not ok - ...",
# "skip - ... (reason)") and ends with "metrics-e2e (containerd VERSION): N
# passed, N failed, N skipped"; exits 1 on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
# shellcheck source=hack/lib/containerd.sh
source hack/lib/containerd.sh

if [[ $(id -u) -ne 0 ]]; then
  echo "metrics-e2e: must run as root (containerd and overlay mounts need it)" >&2
  exit 1
fi
containerd_use || exit 1

missing=() packages=()
need() { # need COMMAND DEBIAN-PACKAGE
  if ! command -v "$1" >/dev/null; then
    missing+=("$1")
    [[ " ${packages[*]} " == *" $2 "* ]] || packages+=("$2")
  fi
}
need prometheus prometheus
need promtool prometheus
need containerd containerd
need ctr containerd
need containerd-shim-runc-v2 containerd
need runc runc
need python3 python3
if ((${#missing[@]})); then
  echo "metrics-e2e: missing ${missing[*]}; install the Debian packages:" >&2
  echo "  apt-get install -y --no-install-recommends ${packages[*]}" >&2
  exit 1
fi

bin=${RUSTLAYER_BIN:-$repo/target/debug/rustlayer}
if [[ ! -f $bin || ! -x $bin ]]; then
  echo "metrics-e2e: no rustlayer binary at $bin (run cargo build, or set RUSTLAYER_BIN)" >&2
  exit 1
fi
bin=$(realpath "$bin")

rules=$repo/charts/rustlayer/rules/rustlayer-alerts.yaml
rules_test=$repo/charts/rustlayer/rules/rustlayer-alerts.test.yaml
dashboard=$repo/charts/rustlayer/dashboards/rustlayer.json
check=$repo/e2e/metrics/promcheck.py
ns="metrics-e2e"
job=rustlayer

passed=0 failed=0 skipped=0
record() { # record LINE: echo a check line, naming the containerd release, and count it
  local line=$1 tag="[containerd $CONTAINERD_VERSION]"
  case $line in
    "ok - "*) passed=$((passed + 1)) line="ok - $tag ${line#ok - }" ;;
    "not ok - "*) failed=$((failed + 1)) line="not ok - $tag ${line#not ok - }" ;;
    "skip - "*) skipped=$((skipped + 1)) line="skip - $tag ${line#skip - }" ;;
  esac
  echo "$line"
}
ok() { record "ok - $*"; }
not_ok() { record "not ok - $*"; }
# checks CMD...: runs a command printing check lines, counts them; a non-zero exit
# without any "not ok" line is a failure too.
checks() {
  local out rc=0 line before=$failed
  out=$("$@" 2>&1) || rc=$?
  while IFS= read -r line; do
    case $line in
      "ok - "* | "not ok - "* | "skip - "*) record "$line" ;;
      *) [[ -n $line ]] && echo "  $line" ;;
    esac
  done <<<"$out"
  if ((rc != 0 && failed == before)); then
    not_ok "$* exited with status $rc"
  fi
  return 0
}

tmp=$(mktemp -d /tmp/rustlayer-metrics-e2e.XXXXXX)
daemon_pid='' containerd_pid='' prom_pid=''
ctr_sock=$tmp/containerd.sock

stop_pid() { # stop_pid PID NAME: TERM, wait up to 10 s, then KILL
  local pid=$1 i
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "metrics-e2e: $2 (pid $pid) ignored SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

tail_logs() {
  local f
  for f in rustlayer.log containerd.log ctr-stderr.log prometheus.log; do
    [[ -s $tmp/$f ]] || continue
    echo "---- last 40 lines of $f"
    tail -n 40 "$tmp/$f"
  done
  echo "----"
}

cleanup() {
  local rc=$? pid cmd mounts m
  trap - EXIT INT TERM
  set +e
  if ((rc != 0 && failed == 0)); then
    not_ok "the script stopped early (status $rc)"
  fi
  ((failed)) && tail_logs
  if [[ -n $containerd_pid ]] && kill -0 "$containerd_pid" 2>/dev/null; then
    timeout 20 ctr -a "$ctr_sock" -n "$ns" tasks kill -s SIGKILL c1 >/dev/null 2>&1
    timeout 20 ctr -a "$ctr_sock" -n "$ns" tasks delete -f c1 >/dev/null 2>&1
    timeout 20 ctr -a "$ctr_sock" -n "$ns" containers delete c1 >/dev/null 2>&1
  fi
  stop_pid "$containerd_pid" containerd
  # The namespace's cgroup (v1: one per hierarchy), once its containers are gone.
  for m in /sys/fs/cgroup/"$ns" /sys/fs/cgroup/*/"$ns"; do
    [[ -d $m ]] && find "$m" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  # Shims outlive containerd; ours name our socket on their command line.
  # shellcheck disable=SC2013 # pids, one word each
  for pid in $(grep -lsF -- "$tmp/" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    [[ $pid == "$$" ]] && continue
    cmd=$({ tr '\0' ' ' </proc/"$pid"/cmdline; } 2>/dev/null) || continue
    if [[ $cmd == *containerd-shim* ]]; then
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  stop_pid "$prom_pid" prometheus
  stop_pid "$daemon_pid" rustlayer
  # Anything still mounted under the temporary directory, deepest first.
  mounts=$(awk -v p="$tmp/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  for m in $mounts; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  if awk -v p="$tmp/" 'index($5, p) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    not_ok "cleanup: mounts left under $tmp; not removing it"
  else
    rm -rf "$tmp"
  fi
  echo "metrics-e2e (containerd $CONTAINERD_VERSION): $passed passed, $failed failed, $skipped skipped"
  if ((failed)); then exit 1; fi
  exit 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
echo "metrics-e2e: containerd $CONTAINERD_VERSION ($(command -v containerd)), $bin, working in $tmp"

# ---------------------------------------------------------------- rule files
if out=$(promtool check rules "$rules" 2>&1); then
  ok "promtool check rules: $(grep -o 'SUCCESS.*' <<<"$out")"
else
  not_ok "promtool check rules $rules:"$'\n'"$out"
fi
if out=$(cd "$(dirname "$rules_test")" && promtool test rules "$(basename "$rules_test")" 2>&1); then
  ok "promtool test rules $(basename "$rules_test")"
else
  not_ok "promtool test rules $(basename "$rules_test"):"$'\n'"$out"
fi

# ---------------------------------------------------------------- daemon
metrics_port=$(python3 "$check" free-port)
metrics=http://127.0.0.1:$metrics_port
"$bin" serve --root "$tmp/rl" --address "$tmp/rl.sock" \
  --metrics-address "127.0.0.1:$metrics_port" >"$tmp/rustlayer.log" 2>&1 &
daemon_pid=$!
if out=$(python3 "$check" wait-http "$metrics/readyz" --timeout 30 --pid "$daemon_pid" 2>&1); then
  ok "daemon ready: GET /readyz is 200"
else
  not_ok "daemon not ready: $out"
  exit 1
fi
if out=$(python3 "$check" wait-http "$metrics/healthz" --timeout 5 --pid "$daemon_pid" 2>&1); then
  ok "GET /healthz is 200"
else
  not_ok "GET /healthz: $out"
fi

lint_metrics() { # lint_metrics WHEN
  local out rc=0
  out=$(python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
    "$metrics/metrics" >"$tmp/metrics-$1.txt" 2>&1 && promtool check metrics <"$tmp/metrics-$1.txt" 2>&1) || rc=$?
  if ((rc == 0)) && [[ -z $out ]]; then
    ok "promtool check metrics ($1): no findings in $(grep -vc '^#' "$tmp/metrics-$1.txt") samples"
  else
    not_ok "promtool check metrics ($1), status $rc:"$'\n'"$out"
  fi
}
lint_metrics "at start"

# ---------------------------------------------------------------- Prometheus
prom_port=$(python3 "$check" free-port)
prom=http://127.0.0.1:$prom_port
mkdir -p "$tmp/prometheus"
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $rules
scrape_configs:
  - job_name: $job
    static_configs:
      - targets: ["127.0.0.1:$metrics_port"]
EOF
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/prometheus" \
  --web.listen-address="127.0.0.1:$prom_port" >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!
prom_start=$(date +%s.%N)
if out=$(python3 "$check" wait-http "$prom/-/ready" --timeout 60 --pid "$prom_pid" 2>&1); then
  ok "prometheus ready on $prom (scraping $job every 1s)"
else
  not_ok "prometheus not ready: $out"
  exit 1
fi
# Prometheus starts scraping a few seconds after it is ready; the workload must
# come after its first scrape, or no rate would show it.
checks python3 "$check" wait-data --prom "$prom" --job "$job" --after "$prom_start" \
  --what "before the workload" --timeout 60
((failed == 0)) || exit 1

# ---------------------------------------------------------------- containerd
mkdir -p "$tmp/containerd"
containerd_config "$tmp/containerd/root" "$tmp/containerd/state" "$ctr_sock" "$tmp/rl.sock" \
  >"$tmp/containerd.toml"
containerd --config "$tmp/containerd.toml" >"$tmp/containerd.log" 2>&1 &
containerd_pid=$!
ctr_() { timeout 120 ctr -a "$ctr_sock" -n "$ns" "$@"; }
for ((i = 0; i < 300; i++)); do
  kill -0 "$containerd_pid" 2>/dev/null || break
  ctr -a "$ctr_sock" version >/dev/null 2>&1 && break
  sleep 0.1
done
plugins=$(stdout_of ctr -a "$ctr_sock" plugins ls) || true
if grep -qE '^io\.containerd\.snapshotter\.v1 +rustlayer .* ok' <<<"$plugins"; then
  ok "containerd up with the rustlayer proxy snapshotter"
else
  not_ok "containerd did not come up with the rustlayer snapshotter:"$'\n'"$plugins"
  exit 1
fi
complaints=$(containerd_config_check "$tmp/containerd.log" "$ctr_sock")
if [[ -z $complaints ]]; then
  ok "containerd took its config without a complaint (its log; from 1.7 on, ctr deprecations list)"
else
  not_ok "containerd complained about its config:"$'\n'"$complaints"
fi

# ---------------------------------------------------------------- workload
image_name=docker.io/library/rustlayer-metrics-e2e:latest
archive=$tmp/image.tar
if [[ -f $repo/e2e/containerd/make_image.py ]]; then
  builder="e2e/containerd/make_image.py"
  build=(python3 "$repo/e2e/containerd/make_image.py" --output "$archive" --name "$image_name")
else
  builder="e2e/metrics/make_busybox_oci.py"
  build=(python3 "$repo/e2e/metrics/make_busybox_oci.py" --output "$archive" --name "$image_name")
fi
if out=$("${build[@]}" 2>&1); then
  ok "OCI archive built by $builder"
else
  not_ok "$builder failed:"$'\n'"$out"
  exit 1
fi
if out=$(ctr_ images import --snapshotter rustlayer "$archive" 2>&1); then
  ok "ctr images import --snapshotter rustlayer ($(containerd_import_path))"
else
  not_ok "ctr images import --snapshotter rustlayer:"$'\n'"$out"
  exit 1
fi
if out=$(stdout_of ctr_ run --rm --snapshotter rustlayer --runc-root "$tmp/runc" "$image_name" c1 \
  sh -c 'echo hi') && [[ $out == hi ]]; then
  ok "ctr run --rm --snapshotter rustlayer ... sh -c 'echo hi' printed hi"
else
  not_ok "ctr run --snapshotter rustlayer: expected 'hi', got:"$'\n'"$out"
fi
# A few more snapshot operations, so more methods have traffic: List, Usage, Stat,
# Update, View, Mounts, Remove.
snap() { ctr_ snapshots --snapshotter rustlayer "$@"; }
snapshot_ops() {
  local chain
  snap ls && snap usage &&
    chain=$(snap ls | awk 'NR > 1 && $NF == "Committed" { print $1; exit }') &&
    if [[ -z $chain ]]; then
      echo "no committed snapshot listed"
      return 1
    fi &&
    snap info "$chain" &&
    snap label "$chain" metrics-e2e=1 &&
    snap view metrics-e2e-view "$chain" &&
    snap mounts "$tmp/unused" metrics-e2e-view &&
    snap rm metrics-e2e-view
}
# containerd collects a snapshot no lease or container holds, like the view above,
# at its next collection; the container's removal scheduled one for whenever the
# collector's pause budget allows, which can fall between the view's View and its
# Remove. Collect now and wait for it: the next collection then waits for another
# deletion.
if ! out=$(containerd_collect_garbage ctr_ 2>&1); then
  not_ok "containerd's garbage collection (ctr leases rm --sync):"$'\n'"$out"
elif out=$(snapshot_ops 2>&1); then
  ok "ctr snapshots ls/usage/info/label/view/mounts/rm through rustlayer"
else
  not_ok "ctr snapshots operations:"$'\n'"$out"
fi
# containerd's metadata layer answers most misses itself, so a non-OK code rarely
# reaches the daemon from it; ask the daemon directly for a key it does not have.
if out=$("$bin" usage --address "$tmp/rl.sock" metrics-e2e-no-such-key 2>&1); then
  not_ok "rustlayer usage of a missing key succeeded:"$'\n'"$out"
elif [[ $out == *"does not exist"* ]]; then
  ok "rustlayer usage of a missing key: NotFound"
else
  not_ok "rustlayer usage of a missing key:"$'\n'"$out"
fi
workload_end=$(date +%s.%N)

# ---------------------------------------------------------------- live checks
checks python3 "$check" wait-data --prom "$prom" --job "$job" --after "$workload_end" \
  --what "after the workload" --requests --timeout 60
lint_metrics "after the workload"
checks python3 "$check" families --metrics-url "$metrics/metrics"
checks python3 "$check" dashboard --prom "$prom" --dashboard "$dashboard"
checks python3 "$check" rules --prom "$prom" --rules "$rules" --root "$tmp/rl"

echo "metrics-e2e (containerd $CONTAINERD_VERSION): checks ran in $(($(date +%s) - start))s"
