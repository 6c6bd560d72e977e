# shellcheck shell=bash
# What the hack/ scripts learn about the machine they run on, rather than assume:
# where its Rust toolchain is, and which Debian archive its apt uses.

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
