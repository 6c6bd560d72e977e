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
# shellcheck source=hack/lib/e2e.sh
source hack/lib/e2e.sh
me="metrics-e2e"

containerd_tier "containerd and overlay mounts need it"
REPORT_SKIPS=1
require_commands "install the Debian packages:
  apt-get install -y --no-install-recommends prometheus containerd runc python3" \
  prometheus promtool containerd ctr containerd-shim-runc-v2 runc python3
bin=$(rustlayer_bin)

rules=$repo/charts/rustlayer/rules/rustlayer-alerts.yaml
rules_test=$repo/charts/rustlayer/rules/rustlayer-alerts.test.yaml
dashboard=$repo/charts/rustlayer/dashboards/rustlayer.json
check=$repo/e2e/metrics/promcheck.py
ns="metrics-e2e"
job=rustlayer

# record LINE: a check line that a checker printed, reported as this script's.
record() {
  case $1 in
    "ok - "*) ok "${1#ok - }" ;;
    "not ok - "*) not_ok "${1#not ok - }" ;;
    "skip - "*) skip "${1#skip - }" ;;
  esac
}
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
sock=$tmp/containerd.sock
rl_sock=$tmp/rl.sock

teardown() {
  if ((failed)); then
    tail_logs 40 "$tmp/rustlayer.log" "$tmp/containerd.log" "$tmp/ctr-stderr.log" "$tmp/prometheus.log"
  fi
  if [[ -n $containerd_pid ]] && kill -0 "$containerd_pid" 2>/dev/null; then
    containerd_remove_containers "$sock" "$ns" c1
  fi
  stop_pid "$containerd_pid" containerd
  stop_pid "$prom_pid" prometheus
  stop_pid "$daemon_pid" rustlayer
  remove_scratch "$ns"
}
report_traps teardown

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
"$bin" serve --root "$tmp/rl" --address "$rl_sock" \
  --metrics-address "127.0.0.1:$metrics_port" >"$tmp/rustlayer.log" 2>&1 &
daemon_pid=$!
if out=$(python3 "$check" wait-http "$metrics/readyz" --timeout 30 --pid "$daemon_pid" 2>&1); then
  ok "daemon ready: GET /readyz is 200"
else
  not_ok "daemon not ready: $out"
  abort
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
  abort
fi
# Prometheus starts scraping a few seconds after it is ready; the workload must
# come after its first scrape, or no rate would show it.
checks python3 "$check" wait-data --prom "$prom" --job "$job" --after "$prom_start" \
  --what "before the workload" --timeout 60
((failed == 0)) || abort

# ---------------------------------------------------------------- containerd
containerd_up "" # no extra config
ctr_() { timeout 120 ctr -a "$sock" -n "$ns" "$@"; }
if plugins=$(containerd_has_snapshotters "$sock" rustlayer); then
  ok "containerd up with the rustlayer proxy snapshotter"
else
  not_ok "containerd did not come up with the rustlayer snapshotter:"$'\n'"$plugins"
  abort
fi
expect_clean_containerd_config

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
  abort
fi
if out=$(ctr_ images import --snapshotter rustlayer "$archive" 2>&1); then
  ok "ctr images import --snapshotter rustlayer ($(containerd_import_path))"
else
  not_ok "ctr images import --snapshotter rustlayer:"$'\n'"$out"
  abort
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
if out=$("$bin" usage --address "$rl_sock" metrics-e2e-no-such-key 2>&1); then
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
