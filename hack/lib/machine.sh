# shellcheck shell=bash
# What the hack/ scripts learn about the machine they run on, rather than assume:
# where its Rust toolchain is, which Debian archive its apt uses; and what a
# script needs of it before it starts (root, commands, the daemon binary).

# cargo_on_path ME: makes sure cargo is on PATH. `sudo hack/...` runs with sudo's
# secure_path, which leaves out ~/.cargo/bin where rustup puts cargo, so a root
# user's toolchain is looked for there too. ME names the script in the error.
cargo_on_path() {
  command -v cargo >/dev/null && return 0
  local bin=${CARGO_HOME:-$HOME/.cargo}/bin
  if [[ -x $bin/cargo ]]; then
    export PATH=$bin:$PATH
    return 0
  fi
  echo "$1: no cargo on PATH nor in $bin: install Rust (rustup, the version in Cargo.toml's rust-version or newer) for the user this runs as" >&2
  return 1
}

# debian_mirror SUITE: the archive URI this machine's apt fetches SUITE from (a
# deb line of /etc/apt/sources.list.d/debian.sources, else of
# /etc/apt/sources.list), for debootstrap to use the same. DEBIAN_MIRROR overrides.
debian_mirror() {
  local suite=$1 uri=''
  if [[ -n ${DEBIAN_MIRROR:-} ]]; then
    echo "$DEBIAN_MIRROR"
    return 0
  fi
  if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
    # deb822: one paragraph per source, fields "Types:", "URIs:", "Suites:".
    uri=$(awk -v suite="$suite" '
      BEGIN { RS = ""; FS = "\n" }
      {
        deb = 0; found = 0; uris = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Types:/ && (" " substr($i, 7) " ") ~ /[ \t]deb[ \t]/) deb = 1
          if ($i ~ /^URIs:/) uris = substr($i, 6)
          if ($i ~ /^Suites:/) {
            n = split(substr($i, 8), s, /[ \t]+/)
            for (j = 1; j <= n; j++) if (s[j] == suite) found = 1
          }
        }
        if (deb && found) {
          n = split(uris, u, /[ \t]+/)
          for (j = 1; j <= n; j++) if (u[j] != "") { print u[j]; exit }
        }
      }' /etc/apt/sources.list.d/debian.sources)
  fi
  if [[ -z $uri && -r /etc/apt/sources.list ]]; then
    # One-line format: deb [options] URI SUITE COMPONENT...
    uri=$(awk -v suite="$suite" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' /etc/apt/sources.list)
  fi
  if [[ -z $uri ]]; then
    echo "no deb source for $suite in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list; set DEBIAN_MIRROR" >&2
    return 1
  fi
  echo "${uri%/}"
}

# require_root WHY: exits unless this runs as root; WHY says what needs it.
require_root() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "${me:-$0}: must run as root ($1)" >&2
    exit 1
  fi
}

# require_commands HINT COMMAND...: exits, naming the missing ones and HINT (how
# to get them), unless every COMMAND is there: a name on PATH, or an
# executable's path.
require_commands() {
  local hint=$1 cmd missing=()
  shift
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  ((${#missing[@]} == 0)) && return 0
  echo "${me:-$0}: missing ${missing[*]}${hint:+; $hint}" >&2
  exit 1
}

# rustlayer_bin: the absolute path of the daemon binary a test runs:
# $RUSTLAYER_BIN, else the tree's target/debug/rustlayer (run from the tree's
# top). Exits when there is none.
rustlayer_bin() {
  local bin=${RUSTLAYER_BIN:-$PWD/target/debug/rustlayer}
  if [[ ! -f $bin || ! -x $bin ]]; then
    echo "${me:-$0}: no rustlayer binary at $bin (run cargo build, or set RUSTLAYER_BIN)" >&2
    exit 1
  fi
  realpath "$bin"
}

# apt_install_missing PACKAGE...: installs those of the Debian packages that are
# not installed yet (as root).
apt_install_missing() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "${me:-$0}: installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "${me:-$0}: need root to install packages: ${missing[*]}" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
