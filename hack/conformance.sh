#!/usr/bin/env bash
# Runs containerd's own snapshotter conformance suite against the real rustlayer
# daemon over gRPC, a fresh daemon per case. CONFORMANCE_SUITE picks the suite:
#   1.6 (default)  snapshots/testsuite from Debian 12's
#                  golang-github-containerd-containerd-dev, built with Debian 12's
#                  Go; the Go side is e2e/conformance
#   2.x            core/snapshots/testsuite from sid's package of the same name
#                  (containerd 2.x), built with sid's Go, both unpacked into
#                  .cache/conformance-2.x/sid (no install, the host's apt and dpkg
#                  state untouched); the Go side is e2e/conformance/v2
# Both start and stop their daemons with e2e/conformance/daemon.
# Needs root: the suite mounts overlayfs.
#
#   hack/conformance.sh                          target/debug/rustlayer, overlay
#   CONFORMANCE_SUITE=2.x hack/conformance.sh    containerd 2.x's suite
#   RUSTLAYER_BIN=path RUSTLAYER_BACKEND=name hack/conformance.sh
#   hack/conformance.sh -test.run 'TestConformance/Walk'   extra test flags
#   RUSTLAYER_CONFIG_TOML='...' hack/conformance.sh   each daemon's config file
#   CONFORMANCE_BUILD_ONLY=1 hack/conformance.sh       build the test binary, stop
#
# The test binary is cached in .cache/conformance (2.x: .cache/conformance-2.x)
# and rebuilt when the harness, the Go toolchain or the Debian packages' versions
# change; sid's tree is fetched again when sid's versions move. Each case's
# daemon log is kept in the cache's logs/, the whole output in last-run.log.
# Ends with "conformance: N passed, N failed, N skipped" (2.x: "conformance-2.x:
# ..."); fails if a case failed, none ran, or a case skipped that the suite does
# not always skip (1.6: Rename; 2.x: none).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
me=conformance
# shellcheck source=hack/lib/machine.sh
source hack/lib/machine.sh

require_root "the suite mounts overlayfs"
bin=$(rustlayer_bin)

case ${CONFORMANCE_SUITE:=1.6} in
  1.6)
    # Debian 12's own packages, installed by hack/deps.sh.
    label=conformance
    cache=$repo/.cache/conformance
    pkg=github.com/rustlayer/rustlayer/e2e/conformance
    harness=(e2e/conformance/*.go)
    # 1.6's suite skips Rename always (it fails on some kernels' overlayfs).
    allowed_skips=(Rename)
    containerd_src=/usr/share/gocode/src/github.com/containerd/containerd
    missing=()
    command -v go >/dev/null || missing+=(golang-go)
    [[ -d $containerd_src/snapshots/testsuite ]] || missing+=(golang-github-containerd-containerd-dev)
    if ((${#missing[@]})); then
      echo "conformance: missing prerequisites; install the Debian packages:" >&2
      echo "  apt-get install -y --no-install-recommends ${missing[*]}" >&2
      exit 1
    fi
    gopath_packages=/usr/share/gocode
    packages_key=$(dpkg-query -W -f='${Package} ${Version}\n' 'golang-*' 2>/dev/null || true)
    ;;
  2.x)
    # sid's packages, unpacked into the cache: the Go toolchain they need and the
    # Go sources the suite and harness import, nothing else (the containerd
    # package's whole dependency closure is ~490 packages).
    label=conformance-2.x
    cache=$repo/.cache/conformance-2.x
    pkg=github.com/rustlayer/rustlayer/e2e/conformance/v2
    harness=(e2e/conformance/v2/*.go)
    # 2.x's suite skips nothing on Linux.
    allowed_skips=()
    # shellcheck source=hack/lib/debian-suite.sh
    source hack/lib/debian-suite.sh
    sid_go_sources=(
      golang-github-containerd-containerd-dev golang-github-containerd-containerd-api-dev
      golang-github-containerd-continuity-dev golang-github-containerd-errdefs-dev
      golang-github-containerd-log-dev golang-github-containerd-ttrpc-dev
      golang-github-containerd-typeurl-dev golang-github-davecgh-go-spew-dev
      golang-github-gogo-protobuf-dev golang-github-golang-protobuf-1-5-dev
      golang-github-google-go-cmp-dev golang-github-moby-sys-dev
      golang-github-opencontainers-go-digest-dev golang-github-opencontainers-image-spec-dev
      golang-github-pmezard-go-difflib-dev golang-github-sirupsen-logrus-dev
      golang-github-stretchr-testify-dev golang-golang-x-net-dev golang-golang-x-sync-dev
      golang-golang-x-sys-dev golang-golang-x-text-dev golang-google-genproto-dev
      golang-google-grpc-dev golang-google-protobuf-dev golang-gopkg-yaml.v3-dev
    )
    sid_versions() {
      local toolchain
      mapfile -t toolchain < <(debian_suite_closure golang-go)
      debian_suite_versions "${toolchain[@]}" "${sid_go_sources[@]}"
    }
    tree=$cache/sid
    debian_suite_init "$cache/apt" sid
    # Day-old lists do while the tree they name is unpacked; a download needs
    # fresh ones, as sid drops superseded versions from the archive within hours.
    debian_suite_refresh 86400
    packages_key=$(sid_versions)
    if [[ ! -d $tree || $(cat "$tree.versions" 2>/dev/null) != "$packages_key" ]]; then
      debian_suite_refresh 600
      packages_key=$(sid_versions)
      echo "$label: unpacking sid's Go toolchain and sources into $tree"
      fetch_start=$(date +%s)
      rm -rf "$tree" "$tree.tmp" "$tree.versions"
      mapfile -t sid_packages < <(cut -d' ' -f1 <<<"$packages_key")
      debian_suite_unpack "$tree.tmp" "${sid_packages[@]}"
      mv "$tree.tmp" "$tree"
      echo "$packages_key" >"$tree.versions"
      echo "$label: unpacked in $(($(date +%s) - fetch_start))s"
    fi
    gobin=("$tree"/usr/lib/go-*/bin)
    if [[ ${#gobin[@]} -ne 1 || ! -x ${gobin[0]}/go ]]; then
      echo "$label: no single Go toolchain in $tree/usr/lib (${gobin[*]})" >&2
      exit 1
    fi
    # Go binaries are static: sid's toolchain runs here as it is. It must not
    # fetch another.
    export PATH=${gobin[0]}:$PATH GOTOOLCHAIN=local
    gopath_packages=$tree/usr/share/gocode
    ;;
  *)
    echo "conformance: CONFORMANCE_SUITE=$CONFORMANCE_SUITE: expected 1.6 or 2.x" >&2
    exit 2
    ;;
esac
harness+=(e2e/conformance/daemon/*.go)

testbin=$cache/conformance.test
# GOPATH mode against Debian's packaged Go sources: offline, no go.mod, and the
# exact containerd version the distribution ships.
export GOPATH=$cache/gopath:$gopath_packages GO111MODULE=off GOFLAGS='' \
  CGO_ENABLED=0 GOCACHE=$cache/go-build

# Rebuild when the harness, the Go toolchain or any Debian Go package changes.
key=$(
  for f in "${harness[@]}"; do printf '%s\n' "$f"; cat "$f"; done
  go version
  echo "$packages_key"
)
key=$(sha256sum <<<"$key" | cut -d' ' -f1)
# In hack/vm-run.sh's guest, /var/lib is empty, so dpkg knows no package there
# and the key cannot match: the guest runs the binary the host built for it just
# before (hack/vm-test.sh builds it) instead of rebuilding it under emulation.
if [[ -n ${RUSTLAYER_IN_VM:-} && -x $testbin ]]; then
  echo "$label: in a VM: using the test binary the host built ($testbin)"
elif [[ ! -x $testbin || $(cat "$testbin.key" 2>/dev/null) != "$key" ]]; then
  echo "$label: building the test binary ($(go version))"
  build_start=$(date +%s)
  # The harness's import path, in the GOPATH that comes before Debian's.
  src=$cache/gopath/src/github.com/rustlayer/rustlayer/e2e/conformance
  mkdir -p "$(dirname "$src")"
  ln -sfn "$repo/e2e/conformance" "$src"
  unformatted=$(gofmt -l e2e/conformance)
  if [[ -n $unformatted ]]; then
    echo "$label: not gofmt-clean: $unformatted" >&2
    exit 1
  fi
  go vet "$pkg" github.com/rustlayer/rustlayer/e2e/conformance/daemon
  go test -c -o "$testbin.tmp" "$pkg"
  mv "$testbin.tmp" "$testbin"
  echo "$key" >"$testbin.key"
  echo "$label: built in $(($(date +%s) - build_start))s"
fi

if [[ ${CONFORMANCE_BUILD_ONLY:-} == 1 ]]; then
  exit 0
fi

logs=${CONFORMANCE_LOGS:-$cache/logs}
out=${CONFORMANCE_OUT:-$cache/last-run.log}
rm -rf "$logs"
mkdir -p "$logs"
echo "$label: $bin${RUSTLAYER_BACKEND:+ --backend $RUSTLAYER_BACKEND}"
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
bad_skips=$(grep -E '^    --- SKIP: TestConformance/[^ ]+ \(' "$out" || true)
if ((${#allowed_skips[@]})); then
  allowed=$(IFS='|' && echo "${allowed_skips[*]}")
  bad_skips=$(grep -vE "^    --- SKIP: TestConformance/($allowed) \(" <<<"$bad_skips" || true)
fi

echo
echo "$label: ran in $(($(date +%s) - run_start))s; daemon logs in $logs"
if ((failed)); then
  echo "$label: failed cases:"
  grep -E '^    --- FAIL: TestConformance/' "$out" | sed 's/^ *--- FAIL: /  /'
fi
echo "$label: $passed passed, $failed failed, $skipped skipped"

status=0
if ((failed)); then
  status=1
fi
if ((passed + failed + skipped == 0)); then
  echo "$label: no test case ran" >&2
  status=1
fi
if [[ -n $bad_skips ]]; then
  echo "$label: only the cases the suite always skips (${allowed_skips[*]:-none}) may skip; these skipped:" >&2
  # shellcheck disable=SC2001 # per line: the anchor is at each line start
  sed 's/^ *--- SKIP: /  /' <<<"$bad_skips" >&2
  status=1
fi
if ((rc != 0 && status == 0)); then
  echo "$label: the test binary exited with status $rc (see $out)" >&2
  status=1
fi
exit "$status"
