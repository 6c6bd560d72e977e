#!/usr/bin/env bash
# Fetches what CRI pods in user namespaces need beyond Debian 12 into .cache and
# prints where it is, for a tier to hand to containerd. Nothing is installed
# system-wide: Debian sid's packages are unpacked with hack/lib/debian-suite.sh.
#
#   hack/runc-fetch.sh        the directory holding sid's runc (>= 1.2)
#   hack/runc-fetch.sh cni    the directory holding sid's CNI plugins
#
# runc: containerd 2.x's CRI plugin reports a runtime handler as supporting user
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
# cni: a pod in a user namespace cannot share the node's network namespace (its
# network namespace is made inside the user namespace), so CRI calls CNI. sid's
# plugins (>= 1.2) have `dummy`, which makes the pod's interface inside the pod's
# namespace alone, with nothing on the host's side; they need glibc 2.34 and run
# on Debian 12 as they are.
#
# Each is cached under its Debian version; sid's package lists are read at most
# once a day, and a complete cache is used without reading them (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
me=runc-fetch
what=${1:-runc}

case $what in
  runc) packages=(runc libc6 libseccomp2) ;;
  cni) packages=(containernetworking-plugins) ;;
  *)
    echo "usage: hack/runc-fetch.sh [runc|cni]" >&2
    exit 2
    ;;
esac

cache=$repo/.cache/$what
current=$cache/current
# The last complete fetch, used as it is: the tiers run offline once it is there.
if [[ -L $current && -f $current/.complete ]]; then
  if [[ $what == runc ]]; then echo "$(realpath "$current")/bin"; else echo "$(realpath "$current")/usr/lib/cni"; fi
  exit 0
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

case $what in
  runc)
    if ! command -v patchelf >/dev/null; then
      echo "$me: patchelf is missing (hack/deps.sh installs it)" >&2
      exit 1
    fi
    triplet=$(uname -m)-linux-gnu
    libdir=$dest/usr/lib/$triplet
    loader=$(cd "$tmp/root/usr/lib/$triplet" && echo ld-linux-*.so.*)
    mkdir -p "$tmp/root/bin"
    cp "$tmp/root/usr/sbin/runc" "$tmp/root/bin/runc"
    patchelf --set-interpreter "$libdir/$loader" --set-rpath "$libdir" "$tmp/root/bin/runc"
    # What it must be able to do, checked where it will live.
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
      exit 1
    fi
    ;;
  cni)
    rm -rf "$dest"
    mv "$tmp/root" "$dest"
    for plugin in dummy static loopback; do
      if [[ ! -x $dest/usr/lib/cni/$plugin ]]; then
        echo "$me: sid's containernetworking-plugins $debver has no $plugin" >&2
        exit 1
      fi
    done
    ;;
esac
touch "$dest/.complete"
ln -sfn "$(basename "$dest")" "$current"
echo "$me: $what from sid's ${packages[0]} $debver in $dest" >&2
if [[ $what == runc ]]; then echo "$dest/bin"; else echo "$dest/usr/lib/cni"; fi
