#!/usr/bin/env bash
# Builds the rustlayer image without a container engine: the same image the
# Dockerfile describes (Debian bookworm, minimal, with mount, e2fsprogs,
# xfsprogs and libdevmapper; the release binary at /usr/local/bin/rustlayer;
# ENTRYPOINT ["rustlayer"], CMD ["serve"]), written as an OCI archive that
# `ctr images import` and `kind load image-archive` take:
#
#   .cache/image/rustlayer.oci.tar     named ghcr.io/rustlayer/rustlayer:<version>
#
# The base layer (debootstrap --variant=minbase, slimmed, from the Debian archive
# this machine's apt uses, or DEBIAN_MIRROR) is
# built once and kept under .cache/image/base/; delete that directory, or set
# REBUILD_BASE=1, to take newer Debian packages. Needs root the first time
# (debootstrap runs the packages' scripts in a chroot).
#
#   hack/build-image.sh
#   IMAGE=registry.example/rustlayer:dev hack/build-image.sh
#   RUSTLAYER_BIN=path hack/build-image.sh       skip the cargo build
#
# Debian packages it relies on: debootstrap, python3, binutils (strip), git (for
# the revision label), and, to build the binary, those of `hack/deps.sh build`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
me=build-image
start=$SECONDS
# shellcheck source=hack/lib/machine.sh
source hack/lib/machine.sh

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[[ -n $version ]] || { echo "$me: no version in Cargo.toml" >&2; exit 1; }
image=${IMAGE:-ghcr.io/rustlayer/rustlayer:$version}
out=$repo/.cache/image
suite=bookworm
# What the runtime needs beyond minbase: mount(8) for long overlay chains, mkfs
# for thin devices, libdevmapper for the devmapper backend the binary links.
packages=(mount e2fsprogs xfsprogs libdevmapper1.02.1)
case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) echo "$me: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac

# Everything that shapes the base layer; a change makes a new cache entry.
recipe="v1 $suite $arch ${packages[*]} $(sha256sum hack/image/build_image.py | cut -c1-16)"
key=$(sha256sum <<<"$recipe" | cut -c1-16)
base=$out/base/$key
mkdir -p "$out/base" "$out/debs"

slim() { # slim ROOTFS: what a runtime image has no use for, as bookworm-slim drops it
  local r=${1:?}
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
    "$r"/var/cache/ldconfig/aux-cache "$r"/var/log/* "$r"/tmp/* "$r"/var/tmp/* \
    "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* \
    "$r"/usr/share/locale/* "$r"/usr/share/lintian "${r:?}"/dev/* "${r:?}"/run/*
  # The runtime provides these per container; stale copies would leak the build host.
  : >"$r/etc/hostname"
  rm -f "$r/etc/resolv.conf" "$r/etc/hosts"
  : >"$r/etc/machine-id"
}

unmount_under() { # debootstrap mounts proc and sys in the chroot; a failure may leave them
  local m
  # shellcheck disable=SC2013 # mount points of our own making, no spaces
  for m in $(awk -v p="$1/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

if [[ -n ${REBUILD_BASE:-} ]]; then rm -f "$base.tar.gz" "$base.json"; fi
if [[ -s $base.tar.gz && -s $base.json ]]; then
  echo "$me: base layer from cache ($base.tar.gz)"
else
  if [[ $(id -u) -ne 0 ]]; then
    echo "$me: building the base layer needs root (debootstrap); none cached at $base.tar.gz" >&2
    exit 1
  fi
  command -v debootstrap >/dev/null || { echo "$me: install debootstrap" >&2; exit 1; }
  mirror=$(debian_mirror "$suite")
  rootfs=$out/base/rootfs.$$
  trap 'unmount_under "$rootfs"; rm -rf "$rootfs"' EXIT
  echo "$me: debootstrap --variant=minbase $suite with ${packages[*]} (once; cached)"
  if ! debootstrap --variant=minbase --arch="$arch" --cache-dir="$out/debs" \
    --include="$(IFS=,; echo "${packages[*]}")" "$suite" "$rootfs" "$mirror" >"$out/base/debootstrap.log" 2>&1; then
    tail -n 20 "$out/base/debootstrap.log" >&2
    echo "$me: debootstrap failed (log: $out/base/debootstrap.log)" >&2
    exit 1
  fi
  unmount_under "$rootfs"
  slim "$rootfs"
  python3 hack/image/build_image.py layer --rootfs "$rootfs" --output "$base.tar.gz.tmp" \
    | python3 -c 'import json, sys; d = json.load(sys.stdin); d["packages"] = sys.argv[1:]; print(json.dumps(d, sort_keys=True))' \
      "${packages[@]}" >"$base.json.tmp"
  mv "$base.tar.gz.tmp" "$base.tar.gz"
  mv "$base.json.tmp" "$base.json"
  rm -rf "$rootfs"
  trap - EXIT
  echo "$me: base layer $(($(stat -c %s "$base.tar.gz") / 1024 / 1024)) MiB in $((SECONDS - start))s"
fi

bin=${RUSTLAYER_BIN:-}
if [[ -z $bin ]]; then
  cargo_on_path "$me"
  cargo build --release --locked -p rustlayer
  bin=$repo/target/release/rustlayer
fi
# As the Dockerfile does: the release profile's line tables would be four
# fifths of the binary.
cp "$bin" "$out/rustlayer.stripped"
strip --strip-debug "$out/rustlayer.stripped"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
python3 hack/image/build_image.py image --base "$base.tar.gz" --base-json "$base.json" \
  --binary "$out/rustlayer.stripped" --name "$image" --version "$version" --revision "$revision" --arch "$arch" \
  --output "$out/rustlayer.oci.tar" >"$out/rustlayer.oci.json"
rm -f "$out/rustlayer.stripped"
echo "$me: $image -> $out/rustlayer.oci.tar ($(($(stat -c %s "$out/rustlayer.oci.tar") / 1024 / 1024)) MiB) in $((SECONDS - start))s"
