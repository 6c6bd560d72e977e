#!/usr/bin/env bash
# Fetches one containerd release from Debian's archive into .cache/containerd and
# prints the directory holding its binaries (containerd, ctr,
# containerd-shim-runc-v2), for a tier to put first on PATH. Nothing is installed
# system-wide: a private sources list, package lists and cache, then dpkg -x.
#
#   hack/containerd-fetch.sh 1.7.24     Debian trixie's containerd 1.7.24
#   hack/containerd-fetch.sh 2.1.9      Debian sid's containerd 2.1.9
#   hack/containerd-fetch.sh 1.6.20     the machine's own (Debian 12's package)
#
# The upstream version must match exactly: a suite that moved on to another
# release fails here, loudly, rather than testing something else. Both builds link
# only libc and run with Debian 12's runc.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

version=${1:?usage: hack/containerd-fetch.sh VERSION (1.6.20, 1.7.24 or 2.1.9)}
me=containerd-fetch

# Which suite carries which release, and the machine's own.
case $version in
  1.6.*) suite=bookworm ;;
  1.7.*) suite=trixie ;;
  2.*) suite=sid ;;
  *)
    echo "$me: no Debian suite known for containerd $version" >&2
    exit 2
    ;;
esac

# upstream_of "1.7.24~ds1-6+deb13u1" -> 1.7.24
upstream_of() { sed -E 's/^[0-9]+://; s/[~+-].*$//' <<<"$1"; }

if [[ $suite == bookworm ]]; then
  have=$(dpkg-query -W -f='${Version}' containerd 2>/dev/null || true)
  if [[ $(upstream_of "$have") != "$version" ]]; then
    echo "$me: containerd $version is Debian 12's package; installed: '${have:-none}' (run hack/deps.sh)" >&2
    exit 1
  fi
  echo /usr/bin
  exit 0
fi

cache=$repo/.cache/containerd
dest=$cache/$version
if [[ -x $dest/usr/bin/containerd && -f $dest/.complete ]]; then
  echo "$dest/usr/bin"
  exit 0
fi

apt_dir=$cache/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[[ -n $uri ]] || uri=$(awk '$1 == "deb" && $2 !~ /^\[/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
if [[ -z $uri ]]; then
  echo "$me: cannot read the Debian archive URI from /etc/apt/sources.list.d/debian.sources" >&2
  exit 1
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
printf 'deb [signed-by=%s] %s trixie main\ndeb [signed-by=%s] %s sid main\n' \
  "$keyring" "$uri" "$keyring" "$uri" >"$apt_dir/sources.list"
apt_opts=(
  -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
  -o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root
)

# The lists are refreshed at most once a day: a clean clone fetches them once.
stamp=$apt_dir/lists/.updated
if [[ ! -f $stamp || -n $(find "$stamp" -mmin +1440) ]]; then
  echo "$me: reading trixie's and sid's package lists" >&2
  apt-get "${apt_opts[@]}" -qq update >&2
  touch "$stamp"
fi

# The exact Debian version of this upstream release in its suite.
candidates=$(apt-cache "${apt_opts[@]}" madison containerd | awk -F'|' -v s="$suite/" 'index($3, s) { gsub(/ /, "", $2); print $2 }')
debver=
for v in $candidates; do
  [[ $(upstream_of "$v") == "$version" ]] && debver=$v
done
if [[ -z $debver ]]; then
  echo "$me: Debian $suite has no containerd $version; it has: ${candidates:-nothing}" >&2
  exit 1
fi

work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${apt_opts[@]}" -qq download "containerd=$debver" >&2)
deb=$(echo "$work"/containerd_*.deb)
dpkg-deb -x "$deb" "$work/root"
for b in containerd ctr containerd-shim-runc-v2; do
  if [[ ! -x $work/root/usr/bin/$b ]]; then
    echo "$me: $deb has no usr/bin/$b" >&2
    exit 1
  fi
done
got=$("$work/root/usr/bin/containerd" --version)
if [[ $got != *"$version"* ]]; then
  echo "$me: the unpacked containerd says '$got', not $version" >&2
  exit 1
fi
echo "$debver" >"$work/root/DEBIAN-VERSION"
touch "$work/root/.complete"
rm -rf "$dest"
mv "$work/root" "$dest"
echo "$me: containerd $debver from $suite in $dest" >&2
echo "$dest/usr/bin"
