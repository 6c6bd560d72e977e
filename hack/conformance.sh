#!/usr/bin/env bash
# Runs containerd's own snapshotter conformance suite (snapshots/testsuite, from
# Debian's golang-github-containerd-containerd-dev) against the real rustlayer
# daemon over gRPC, a fresh daemon per case. The Go side is e2e/conformance.
# Needs root: the suite mounts overlayfs.
#
#   hack/conformance.sh                          target/debug/rustlayer, overlay
#   RUSTLAYER_BIN=path RUSTLAYER_BACKEND=name hack/conformance.sh
#   hack/conformance.sh -test.run 'TestConformance/Walk'   extra test flags
#   RUSTLAYER_CONFIG_TOML='...' hack/conformance.sh   each daemon's config file
#   CONFORMANCE_BUILD_ONLY=1 hack/conformance.sh       build the test binary, stop
#
# The test binary is cached in .cache/conformance and rebuilt when the Go
# sources or Debian's Go packages change. Each case's daemon log is kept in
# .cache/conformance/logs, the whole output in .cache/conformance/last-run.log.
# Ends with "conformance: N passed, N failed, N skipped"; fails if a case
# failed, none ran, or a case other than Rename (which the suite itself always
# skips) skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if [[ $(id -u) -ne 0 ]]; then
  echo "conformance: must run as root (the suite mounts overlayfs)" >&2
  exit 1
fi

bin=${RUSTLAYER_BIN:-$repo/target/debug/rustlayer}
if [[ ! -f $bin || ! -x $bin ]]; then
  echo "conformance: no rustlayer binary at $bin (run cargo build, or set RUSTLAYER_BIN)" >&2
  exit 1
fi
bin=$(realpath "$bin")

containerd_src=/usr/share/gocode/src/github.com/containerd/containerd
missing=()
command -v go >/dev/null || missing+=(golang-go)
[[ -d $containerd_src/snapshots/testsuite ]] || missing+=(golang-github-containerd-containerd-dev)
if ((${#missing[@]})); then
  echo "conformance: missing prerequisites; install the Debian packages:" >&2
  echo "  apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

cache=$repo/.cache/conformance
pkg=github.com/rustlayer/rustlayer/e2e/conformance
testbin=$cache/conformance.test
# GOPATH mode against Debian's /usr/share/gocode: offline, no go.mod, and the
# exact containerd version the distribution ships.
export GOPATH=$cache/gopath:/usr/share/gocode GO111MODULE=off GOFLAGS='' \
  CGO_ENABLED=0 GOCACHE=$cache/go-build

# Rebuild when the harness, the Go toolchain or any Debian Go package changes.
key=$(
  for f in e2e/conformance/*.go; do printf '%s\n' "$f"; cat "$f"; done
  go version
  dpkg-query -W -f='${Package} ${Version}\n' 'golang-*' 2>/dev/null || true
)
key=$(sha256sum <<<"$key" | cut -d' ' -f1)
if [[ ! -x $testbin || $(cat "$testbin.key" 2>/dev/null) != "$key" ]]; then
  echo "conformance: building the test binary"
  build_start=$(date +%s)
  mkdir -p "$cache/gopath/src/$(dirname "$pkg")"
  ln -sfn "$repo/e2e/conformance" "$cache/gopath/src/$pkg"
  unformatted=$(gofmt -l e2e/conformance)
  if [[ -n $unformatted ]]; then
    echo "conformance: not gofmt-clean: $unformatted" >&2
    exit 1
  fi
  go vet "$pkg"
  go test -c -o "$testbin.tmp" "$pkg"
  mv "$testbin.tmp" "$testbin"
  echo "$key" >"$testbin.key"
  echo "conformance: built in $(($(date +%s) - build_start))s"
fi

if [[ ${CONFORMANCE_BUILD_ONLY:-} == 1 ]]; then
  exit 0
fi

logs=${CONFORMANCE_LOGS:-$cache/logs}
out=${CONFORMANCE_OUT:-$cache/last-run.log}
rm -rf "$logs"
mkdir -p "$logs"
echo "conformance: $bin${RUSTLAYER_BACKEND:+ --backend $RUSTLAYER_BACKEND}"
run_start=$(date +%s)
set +e
RUSTLAYER_BIN=$bin RUSTLAYER_CONFORMANCE_LOGS=$logs \
  "$testbin" -test.v -test.root -test.timeout "${CONFORMANCE_TIMEOUT:-30m}" "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e

# Subtest result lines sit exactly one level (four spaces) in; daemon logs
# printed by failing cases are indented deeper and cannot be mistaken for them.
count() { grep -cE "^    --- $1: TestConformance/[^ ]+ \(" "$out" || true; }
passed=$(count PASS)
failed=$(count FAIL)
skipped=$(count SKIP)
bad_skips=$(grep -E '^    --- SKIP: TestConformance/[^ ]+ \(' "$out" |
  grep -vE '^    --- SKIP: TestConformance/Rename \(' || true)

echo
echo "conformance: ran in $(($(date +%s) - run_start))s; daemon logs in $logs"
if ((failed)); then
  echo "conformance: failed cases:"
  grep -E '^    --- FAIL: TestConformance/' "$out" | sed 's/^ *--- FAIL: /  /'
fi
echo "conformance: $passed passed, $failed failed, $skipped skipped"

status=0
if ((failed)); then
  status=1
fi
if ((passed + failed + skipped == 0)); then
  echo "conformance: no test case ran" >&2
  status=1
fi
if [[ -n $bad_skips ]]; then
  echo "conformance: only Rename may skip; these skipped too:" >&2
  # shellcheck disable=SC2001 # per line: the anchor is at each line start
  sed 's/^ *--- SKIP: /  /' <<<"$bad_skips" >&2
  status=1
fi
if ((rc != 0 && status == 0)); then
  echo "conformance: the test binary exited with status $rc (see $out)" >&2
  status=1
fi
exit "$status"
