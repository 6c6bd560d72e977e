#!/usr/bin/env bash
# Installs the Debian packages a workflow needs on Debian 12, skipping what is
# there. Rust itself comes from the machine's toolchain (rust-version in
# Cargo.toml); everything else is Debian packages.
#
#   hack/deps.sh build   what `cargo build` needs: the devmapper backend's
#                        bindings are generated against libdevmapper's headers
#                        (found with pkg-config) by bindgen (libclang)
#   hack/deps.sh         the build's packages and everything hack/test.sh runs
#   hack/deps.sh --list [build]   prints those package names, installs nothing
#
# hack/fresh-machine.sh checks, in a clean Debian 12, that these are enough.
set -euo pipefail
cd "$(dirname "$0")/.."
me=deps
# shellcheck source=hack/lib/machine.sh
source hack/lib/machine.sh

build=(
  pkg-config libdevmapper-dev libclang-dev # devicemapper-sys: pkg-config + bindgen
  ca-certificates                          # cargo fetches crates over https
)
test=(
  containerd runc                                   # real containerd e2e (Debian 12's 1.6)
  golang-go golang-github-containerd-containerd-dev # containerd's conformance suite
  busybox-static                                    # the e2e test image's userland
  debootstrap                                       # image base layer, fresh-machine tier
  python3                                           # OCI image builder
  python3-venv shellcheck                           # Helm chart tests (hack/chart-test.sh)
  util-linux kmod                                   # mount(8) for long overlay chains
  prometheus curl                                   # a real Prometheus scraping the exporter
  qemu-system-x86 cpio dmsetup thin-provisioning-tools e2fsprogs xfsprogs # the VM tier
  docker-registry skopeo                            # a local registry for CRI pulls
  patchelf iproute2                                 # CRI pods in user namespaces: sid's runc, the pod network
)

list=''
if [[ ${1-} == --list ]]; then
  list=1
  shift
fi
case ${1:-all} in
  build) packages=("${build[@]}") ;;
  all) packages=("${build[@]}" "${test[@]}") ;;
  *)
    echo "usage: hack/deps.sh [--list] [build]" >&2
    exit 2
    ;;
esac
if [[ -n $list ]]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi

apt_install_missing "${packages[@]}"
# Debian's containerd package starts a system containerd, and docker-registry a
# registry on :5000; the tests run private ones and never touch either.
