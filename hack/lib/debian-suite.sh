# shellcheck shell=bash
# Sourced by scripts that need packages from a Debian suite other than the
# host's (say sid's Go sources on Debian 12), without touching the host's apt or
# dpkg state: a private sources list, package lists, cache and an empty dpkg
# status under one directory, and `dpkg -x` (files only, no maintainer scripts)
# into another. Debian's archive is DEBIAN_MIRROR (default deb.debian.org),
# checked against the host's archive keyring.
#
#   debian_suite_init STATE SUITE      private apt state for SUITE in STATE
#   debian_suite_refresh [MAX_AGE_S]   fetch the suite's package lists if older
#                                      than MAX_AGE_S seconds (default: always)
#   debian_suite_closure PKG...        PKG and what it depends on, one a line
#   debian_suite_versions PKG...       "PKG VERSION" lines, the suite's candidates
#   debian_suite_unpack DEST PKG...    download PKG and dpkg -x each into DEST

debian_suite_apt=()
debian_suite_state=

debian_suite_init() {
  local state suite=$2
  state=$(realpath -m "$1")
  debian_suite_state=$state
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc/preferences.d"
  printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" "$suite" >"$state/etc/sources.list"
  # An empty status and no preferences: candidates come from the suite alone,
  # whatever the host has installed or pinned. The host's hooks (cache cleaners,
  # catalog refreshes) are the host's business, not run for this state.
  [[ -f $state/etc/status ]] || : >"$state/etc/status"
  cat >"$state/etc/apt.conf" <<EOF
Dir::Etc::sourcelist "$state/etc/sources.list";
Dir::Etc::sourceparts "-";
Dir::Etc::preferences "/dev/null";
Dir::Etc::preferencesparts "$state/etc/preferences.d";
Dir::State::Lists "$state/lists";
Dir::State::status "$state/etc/status";
Dir::Cache "$state/cache";
Dir::Cache::pkgcache "pkgcache.bin";
Dir::Cache::srcpkgcache "srcpkgcache.bin";
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
EOF
  debian_suite_apt=(-c "$state/etc/apt.conf")
}

debian_suite_refresh() {
  local max_age=${1:-0} stamp=$debian_suite_state/lists.stamp
  if ((max_age > 0)) && [[ -f $stamp ]] &&
    (($(date +%s) - $(stat -c %Y "$stamp") < max_age)); then
    return 0
  fi
  apt-get "${debian_suite_apt[@]}" -qq update
  touch "$stamp"
}

debian_suite_closure() {
  apt-cache "${debian_suite_apt[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances "$@" |
    awk '/^[^ <]/ { print $1 }' | sort -u
}

debian_suite_versions() {
  local -A version=()
  local p v
  while read -r p v; do
    version[${p%:}]=$v
  done < <(apt-cache "${debian_suite_apt[@]}" policy "$@" 2>/dev/null |
    awk '/^[^ ]/ { p = $1 } $1 == "Candidate:" { print p, $2 }')
  for p in "$@"; do
    v=${version[$p]:-}
    if [[ -z $v || $v == "(none)" ]]; then
      echo "debian_suite_versions: $p is not in the suite" >&2
      return 1
    fi
  done
  for p in "$@"; do
    printf '%s %s\n' "$p" "${version[$p]}"
  done
}

debian_suite_unpack() {
  local dest=$1 debs deb
  shift
  debs=$(mktemp -d)
  if ! (cd "$debs" && apt-get "${debian_suite_apt[@]}" -qq download "$@"); then
    rm -rf "$debs"
    return 1
  fi
  mkdir -p "$dest"
  for deb in "$debs"/*.deb; do
    dpkg -x "$deb" "$dest"
  done
  rm -rf "$debs"
}
