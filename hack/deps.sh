#!/usr/bin/env bash
# Installs what the test suite needs on a Debian 12 machine, skipping what is there.
# Rust comes from the machine's toolchain; everything else is Debian packages.
set -euo pipefail

packages=(
  containerd runc                                   # real containerd e2e
  golang-go golang-github-containerd-containerd-dev # containerd's conformance suite
  busybox-static                                    # the e2e test image's userland
  debootstrap                                       # the image's base layer (hack/build-image.sh)
  python3                                           # OCI image builder
  python3-venv shellcheck                           # Helm chart tests (hack/chart-test.sh)
  util-linux kmod                                   # mount(8) for long overlay chains
  prometheus curl                                   # a real Prometheus scraping the exporter
  qemu-system-x86 cpio dmsetup thin-provisioning-tools e2fsprogs xfsprogs # the VM tier
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "need root to install packages: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's containerd package starts a system containerd; the tests run private
# ones and never touch it.
