#!/usr/bin/env bash
# Fetches a runc for CRI pods in user namespaces (Debian sid's, >= 1.2) into
# .cache/runc and prints the directory holding it, for a tier to hand to
# containerd. Nothing is installed system-wide: sid's packages are unpacked with
# hack/lib/debian-suite.sh.
#
#   hack/runc-fetch.sh
#
# Why: containerd 2.x's CRI plugin reports a runtime handler as supporting user
# namespaces (RuntimeHandlerFeatures.user_namespaces, which the kubelet reads
# before it runs a pod with hostUsers: false) only when `runc features` lists the
# user namespace and idmapped mounts (mountExtensions.idmap), which runc has from
# 1.2; and it asks the runtime for idmapped bind mounts of the pod's /etc/hosts,
# /etc/hostname and /etc/resolv.conf, which Debian 12's runc 1.1.5 silently
# ignores. Debian's runc >= 1.2 (sid) needs glibc >= 2.38; Debian 12 has 2.36. So
# sid's runc binary is used as Debian built it, with its ELF interpreter and
# library path pointed (patchelf) at sid's own libc and libseccomp unpacked beside
# it: no rebuild, and the host's libc is untouched.
#
# Cached under its Debian version; sid's package lists are read at most once a
# day, and a complete cache is used without reading them (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
me=runc-fetch
packages=(runc libc6 libseccomp2)

cache=$repo/.cache/runc
current=$cache/current
# The last complete fetch, used as it is: the tiers run offline once it is there.
if [[ -L $current && -f $current/.complete ]]; then
  echo "$(realpath "$current")/bin"
  exit 0
fi

if ! command -v patchelf >/dev/null; then
  echo "$me: patchelf is missing (hack/deps.sh installs it)" >&2
  exit 1
fi

# shellcheck source=hack/lib/debian-suite.sh
source hack/lib/debian-suite.sh
debian_suite_init "$repo/.cache/sid-apt" sid
debian_suite_refresh 86400 >&2
debver=$(debian_suite_versions "${packages[0]}" | awk '{ print $2 }')
dest=$cache/${debver//[:~]/_}
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
debian_suite_unpack "$tmp/root" "${packages[@]}" >&2

# The interpreter and library path are absolute: they name where the tree will
# live, so it is checked there.
triplet=$(uname -m)-linux-gnu
libdir=$dest/usr/lib/$triplet
loader=$(cd "$tmp/root/usr/lib/$triplet" && echo ld-linux-*.so.*)
mkdir -p "$tmp/root/bin"
cp "$tmp/root/usr/sbin/runc" "$tmp/root/bin/runc"
patchelf --set-interpreter "$libdir/$loader" --set-rpath "$libdir" "$tmp/root/bin/runc"
rm -rf "$dest"
mv "$tmp/root" "$dest"
if ! got=$("$dest/bin/runc" --version 2>&1) || ! features=$("$dest/bin/runc" features 2>&1); then
  echo "$me: the unpacked runc does not run: $got $features" >&2
  rm -rf "$dest"
  exit 1
fi
if ! python3 -c 'import json, sys
f = json.load(sys.stdin)["linux"]
sys.exit(not ("user" in f["namespaces"] and f.get("mountExtensions", {}).get("idmap", {}).get("enabled")))' <<<"$features"; then
  echo "$me: sid's runc ($got) does not report user namespaces with idmapped mounts" >&2
  rm -rf "$dest"
  exit 1
fi
touch "$dest/.complete"
ln -sfn "$(basename "$dest")" "$current"
echo "$me: sid's runc $debver in $dest" >&2
echo "$dest/bin"
