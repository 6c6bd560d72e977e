#!/usr/bin/env bash
# The README's two commands on a fresh Debian 12, pasted as a new user would: in a
# bookworm chroot that has what installing Rust with rustup takes (debootstrap
# --variant=minbase with build-essential, sudo and ca-certificates), the host's
# Rust toolchain, and nothing else. Checks that:
#   - the README's run command (its first ```sh block, run as written) installs
#     what the build needs, builds the daemon from an empty target dir, and brings
#     up its socket at the default /run/rustlayer/rustlayer.sock, with the default
#     root /var/lib/rustlayer; `rustlayer ls` and `rustlayer check` answer; the
#     daemon stops cleanly on SIGTERM (the command exits 0, the socket is gone);
#   - the README's test command (its second block) gets through its dependency and
#     lint steps there (`hack/test.sh lint`: hack/deps.sh, cargo fmt, clippy,
#     cargo deny); afterwards every package hack/deps.sh names is installed,
#     containerd's conformance harness builds (hack/conformance.sh's Go build),
#     and the chart tests' virtualenv can be made;
#   - the host's /run/rustlayer and /var/lib/rustlayer are untouched.
#
#   hack/fresh-machine.sh
#   FRESH_MACHINE_REBUILD=1 hack/fresh-machine.sh   a new base (newer packages)
#   FRESH_MACHINE_TIMEOUT=SECONDS                   bound on each command (2700)
#
# How the chroot is made:
#   - its base is debootstrap'd once, from the archive this machine's apt uses,
#     and cached as .cache/fresh-machine/base-<key>.tar.gz; each run unpacks a new
#     chroot from it. Downloaded packages are kept in .cache/fresh-machine/debs.
#   - the tree is copied in (git-tracked files and untracked, non-ignored ones).
#   - the rustup home and cargo's bin/ of the user running this are bind-mounted
#     read-only at the same paths; cargo's registry index and crate files are
#     copied, so crates are not downloaded again. The target dir starts empty, so
#     no build-script output from the host can hide a missing library. It is kept
#     in .cache/fresh-machine/ for the next run only while hack/deps.sh, the
#     README's commands, the base and the toolchain stay the same: a clean clone
#     always builds from scratch.
#   - proc, sys (read-only), dev (with its own pts and shm), /run (its own tmpfs)
#     and apt's package cache are mounted in a private mount namespace and
#     unmounted on every exit. There is no init: packages installed there are not
#     allowed to start services (policy-rc.d).
#
# Needs root, debootstrap, git, and a rustup toolchain with cargo-deny (hack/test.sh
# installs it before this runs): the chroot cannot install into the read-only
# cargo bin/. Prints "ok - ..." or "not ok - ..." per check, and ends with
# "fresh-machine: N passed, N failed"; exits 1 on failure. Logs of the commands
# run in the chroot: .cache/fresh-machine/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
me=fresh-machine
# shellcheck source=hack/lib/machine.sh
source hack/lib/machine.sh
# shellcheck source=hack/lib/process.sh
source hack/lib/process.sh
# shellcheck source=hack/lib/report.sh
source hack/lib/report.sh

require_root "debootstrap, chroot and mounts need it"

# A private mount namespace: nothing mounted for the chroot is ever visible on the
# host, and even a killed run cannot leave a mount behind there.
if [[ -z ${FRESH_MACHINE_NAMESPACE:-} ]]; then
  exec env FRESH_MACHINE_NAMESPACE=1 unshare --mount --propagation private "$repo/hack/fresh-machine.sh" "$@"
fi

require_commands "hack/deps.sh installs debootstrap" debootstrap git chroot tar gzip findmnt

cargo_home=$(realpath -m "${CARGO_HOME:-$HOME/.cargo}")
rustup_home=$(realpath -m "${RUSTUP_HOME:-$HOME/.rustup}")
if [[ ! -x $cargo_home/bin/cargo || ! -d $rustup_home/toolchains ]]; then
  echo "$me: needs a rustup toolchain: no cargo in $cargo_home/bin or no toolchains in $rustup_home (set CARGO_HOME, RUSTUP_HOME)" >&2
  exit 1
fi
if [[ ! -x $cargo_home/bin/cargo-deny ]]; then
  echo "$me: no cargo-deny in $cargo_home/bin, which the chroot gets read-only (hack/test.sh installs it)" >&2
  exit 1
fi

readme_block() { # readme_block N: the Nth ```sh block of README.md
  awk -v n="$1" '/^```sh$/ && !on { if (++k == n) { on = 1; next } } on && /^```/ { exit } on' README.md
}
run_cmd=$(readme_block 1)
test_cmd=$(readme_block 2)
if [[ -z $run_cmd || -z $test_cmd ]]; then
  echo "$me: README.md must have its run command and its test command as its first two \`\`\`sh blocks" >&2
  exit 1
fi
# The test command is run up to its lint steps: the rest is the whole suite.
if [[ $test_cmd != *hack/test.sh || $test_cmd == *$'\n'* ]]; then
  echo "$me: README.md's test command is not one line that runs hack/test.sh: $test_cmd" >&2
  exit 1
fi

suite=bookworm
arch=$(dpkg --print-architecture)
# What installing Rust with rustup takes: a C toolchain to link with, and https.
base_packages=(build-essential sudo ca-certificates)
cache=$repo/.cache/fresh-machine
logs=$cache/logs
root=$cache/chroot
tree=/root/rustlayer # the clone, in the chroot
sock=/run/rustlayer/rustlayer.sock
timeout=${FRESH_MACHINE_TIMEOUT:-2700}
mkdir -p "$cache/debs" "$logs"

log_tail() { # log_tail FILE: its first error (cargo's, apt's) and last lines, for a failure's detail
  local first
  first=$(grep -m 1 -E '^(error|E:)' "$1" || true)
  if [[ -n $first ]]; then echo "first error: $first"; fi
  echo "(last 40 lines of $1)"
  tail -n 40 "$1"
}

# ---------------------------------------------------------------- the chroot
chroot_env=(
  HOME=/root USER=root LOGNAME=root SHELL=/bin/bash
  # As rustup's installer sets up a login shell: its bin/ first.
  "PATH=$cargo_home/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  "CARGO_HOME=$cargo_home" "RUSTUP_HOME=$rustup_home"
)
if [[ -n ${RUSTUP_TOOLCHAIN:-} ]]; then chroot_env+=("RUSTUP_TOOLCHAIN=$RUSTUP_TOOLCHAIN"); fi
# in_chroot_for SECONDS CMD...: as the chroot's root, with nothing of this
# environment; the command and all it started get SIGTERM after SECONDS.
in_chroot_for() {
  local limit=$1
  shift
  timeout "$limit" chroot "$root" /usr/bin/env -i "${chroot_env[@]}" "$@" </dev/null
}
in_chroot() { in_chroot_for "$timeout" "$@"; }
in_tree() { # in_tree SCRIPT: a shell script run in the clone, as if pasted there
  in_chroot bash -c "cd $tree || exit 1"$'\n'"$1"
}

chroot_pids() { # processes running in the chroot
  local p
  for p in /proc/[0-9]*; do
    if [[ $(readlink "$p/root" 2>/dev/null) == "$root" ]]; then echo "${p#/proc/}"; fi
  done
}
kill_chroot() { # SIGTERM, up to 10 s, then SIGKILL, for whatever runs in the chroot
  local pids
  pids=$(chroot_pids)
  [[ -n $pids ]] || return 0
  # shellcheck disable=SC2086 # one pid per word
  kill -TERM $pids 2>/dev/null
  # shellcheck disable=SC2016 # expanded by eval, on each try
  wait_until 10 - eval '[[ -z $(chroot_pids) ]]' || true
  pids=$(chroot_pids)
  # shellcheck disable=SC2086 # one pid per word
  if [[ -n $pids ]]; then kill -KILL $pids 2>/dev/null; fi
}
host_state() { # what the host has at the daemon's default paths
  local p
  for p in /run/rustlayer /var/lib/rustlayer; do
    if [[ -e $p ]]; then stat -c '%n %d:%i %Y' "$p"; else echo "$p absent"; fi
  done
}

target_cache='' keep_target=''
teardown() {
  kill_chroot
  unmount_under "$root"
  if [[ -n $(mounts_under "$root") ]]; then
    not_ok "cleanup: mounts left under $root; not removing it" "$(mounts_under "$root")"
  elif [[ -d $root ]]; then
    if [[ -n $keep_target && -d $root$tree/target ]]; then
      rm -rf "$target_cache"
      mv "$root$tree/target" "$target_cache"
    fi
    rm -rf --one-file-system "$root"
  fi
  echo "$me: logs in $logs"
}
report_traps teardown

host_before=$(host_state)
# What a killed run left (its mounts went with its namespace).
if [[ -e $root ]]; then
  unmount_under "$root"
  rm -rf --one-file-system "$root"
fi

# ---------------------------------------------------------------- the base
base_key=$(printf '%s\n' v1 "$suite" "$arch" "${base_packages[@]}" | sha256sum | cut -c1-16)
base=$cache/base-$base_key.tar.gz
if [[ -n ${FRESH_MACHINE_REBUILD:-} ]]; then rm -f "$base"; fi
if [[ ! -s $base ]]; then
  t=$SECONDS
  mirror=$(debian_mirror "$suite")
  staging=$cache/base.tmp
  unmount_under "$staging"
  rm -rf --one-file-system "$staging" "$base.tmp"
  echo "$me: debootstrap --variant=minbase $suite with ${base_packages[*]} from $mirror (cached as $base)"
  if ! debootstrap --variant=minbase --arch="$arch" --cache-dir="$cache/debs" \
    --include="$(IFS=,; echo "${base_packages[*]}")" "$suite" "$staging" "$mirror" >"$logs/debootstrap.log" 2>&1; then
    not_ok "debootstrap $suite from $mirror failed" "$(log_tail "$logs/debootstrap.log")"
    unmount_under "$staging"
    abort
  fi
  unmount_under "$staging"
  tar -C "$staging" --numeric-owner -I 'gzip -1' -cf "$base.tmp" .
  rm -rf --one-file-system "$staging"
  rm -f "$cache"/base-*.tar.gz
  mv "$base.tmp" "$base"
  ok "base: debootstrap --variant=minbase $suite with ${base_packages[*]} from $mirror, $(($(stat -c %s "$base") / 1024 / 1024)) MiB ($((SECONDS - t))s)"
fi

t=$SECONDS
mkdir -p "$root"
tar -C "$root" -xzf "$base"
# The machine's own settings, as an installed Debian has them.
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$(hostname)" >"$root/etc/hosts"
if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
  # The same archive, suites and updates as the host's apt.
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
  rm -f "$root/etc/apt/sources.list"
fi
# Certificate authorities the machine's administrator added (a site's TLS proxy in
# front of crates.io, say): a machine on this network trusts them as this one does.
site_cas=(/usr/local/share/ca-certificates/*.crt)
if [[ -e ${site_cas[0]} ]]; then
  cp "${site_cas[@]}" "$root/usr/local/share/ca-certificates/"
  chroot "$root" /usr/sbin/update-ca-certificates >/dev/null
fi
printf '#!/bin/sh\n# no init here: packages must not start services\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
mkdir -m 1777 "$root/run/lock"
mount --bind "$cache/debs" "$root/var/cache/apt/archives"
mkdir -p "$root$rustup_home" "$root$cargo_home/bin" "$root$cargo_home/registry"
mount --bind -o ro "$rustup_home" "$root$rustup_home"
mount --bind -o ro "$cargo_home/bin" "$root$cargo_home/bin"
for d in index cache; do
  if [[ -d $cargo_home/registry/$d ]]; then cp -a "$cargo_home/registry/$d" "$root$cargo_home/registry/"; fi
done
if touch "$root$rustup_home/.fresh-machine" 2>/dev/null || touch "$root$cargo_home/bin/.fresh-machine" 2>/dev/null; then
  rm -f "$root$rustup_home/.fresh-machine" "$root$cargo_home/bin/.fresh-machine"
  not_ok "the toolchain is not read-only in the chroot"
  abort
fi

mkdir -p "$root$tree"
git ls-files -z --cached --others --exclude-standard --deduplicate |
  while IFS= read -r -d '' f; do
    case $f in target/* | .cache/*) continue ;; esac
    if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi
  done |
  tar --null -T - -cf - | tar -C "$root$tree" -xf -

# A target dir from an earlier run of this same machine, or none.
target_key=$(
  {
    cat hack/deps.sh
    printf '%s\n' "$run_cmd" "$test_cmd" "$(basename "$base") $(stat -c '%s %Y' "$base")"
    "$cargo_home/bin/rustc" -vV
  } | sha256sum | cut -c1-16
)
target_cache=$cache/target-$target_key
build_kind=cold
if [[ -d $target_cache ]]; then
  mv "$target_cache" "$root$tree/target"
  build_kind=warm
fi
for d in "$cache"/target-*; do
  if [[ -d $d ]]; then rm -rf "$d"; fi
done
ok "chroot: $suite from the cached base, the toolchain read-only at $rustup_home and $cargo_home/bin, $(find "$root$tree" -type f -not -path "$root$tree/target/*" | wc -l) files of the tree, $build_kind target dir ($((SECONDS - t))s)"

# ---------------------------------------------------------------- the run command
t=$SECONDS
echo "$me: the README's run command, in $tree: $run_cmd"
in_tree "$run_cmd" >"$logs/readme-run.log" 2>&1 &
run_pid=$!
answers() { [[ -S $root$sock ]] && in_chroot_for 30 "$tree/target/release/rustlayer" ls; }
ready=''
if wait_until "$timeout" "$run_pid" answers; then ready=1; fi
run_ok=''
if [[ -n $ready ]]; then
  ok "README's run command: built the daemon and its socket $sock answers 'rustlayer ls' ($((SECONDS - t))s, $build_kind)"
  if out=$(in_chroot_for 60 "$tree/target/release/rustlayer" check 2>&1); then
    ok "rustlayer check passes in the chroot ($(($(wc -l <<<"$out") - 1)) checks)"
  else
    not_ok "rustlayer check fails in the chroot" "$out"
  fi
  if [[ -f $root/var/lib/rustlayer/metadata.db ]]; then
    ok "the daemon keeps its metadata under the default root /var/lib/rustlayer"
  else
    not_ok "no metadata under the default root /var/lib/rustlayer" "$(ls -la "$root/var/lib/rustlayer" 2>&1)"
  fi
  daemon_pids=()
  for p in $(chroot_pids); do
    if [[ $(cat "/proc/$p/comm" 2>/dev/null) == rustlayer ]]; then daemon_pids+=("$p"); fi
  done
  if ((${#daemon_pids[@]} != 1)); then
    not_ok "expected one rustlayer process in the chroot, found ${#daemon_pids[@]}"
  else
    kill -TERM "${daemon_pids[0]}"
    if ! wait_until 30 - eval "! kill -0 $run_pid"; then
      not_ok "the daemon (pid ${daemon_pids[0]}) did not stop within 30 s of SIGTERM" "$(log_tail "$logs/readme-run.log")"
    else
      rc=0
      wait "$run_pid" || rc=$?
      if ((rc == 0)) && [[ ! -e $root$sock ]]; then
        ok "SIGTERM: the daemon shut down cleanly (the run command exited 0, the socket is gone)"
        run_ok=1
      else
        not_ok "after SIGTERM the run command exited $rc$([[ -e $root$sock ]] && echo ", the socket is still there")" \
          "$(log_tail "$logs/readme-run.log")"
      fi
    fi
  fi
elif kill -0 "$run_pid" 2>/dev/null; then
  not_ok "README's run command: no answer on $sock within ${timeout}s" "$(log_tail "$logs/readme-run.log")"
  kill_chroot
else
  rc=0
  wait "$run_pid" || rc=$?
  not_ok "README's run command exited $rc before its socket answered ($((SECONDS - t))s, $build_kind)" \
    "$(log_tail "$logs/readme-run.log")"
fi

# ---------------------------------------------------------------- the test command
t=$SECONDS
echo "$me: the README's test command, up to its lint steps, in $tree: $test_cmd lint"
lint_ok=''
if in_tree "$test_cmd lint" >"$logs/test-lint.log" 2>&1; then
  ok "README's test command, dependency and lint steps ($test_cmd lint: hack/deps.sh, fmt, clippy, cargo deny) pass ($((SECONDS - t))s)"
  lint_ok=1
else
  not_ok "README's test command, dependency and lint steps ($test_cmd lint) fail ($((SECONDS - t))s)" \
    "$(log_tail "$logs/test-lint.log")"
fi
kill_chroot

mapfile -t packages < <(hack/deps.sh --list)
# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
installed=$(in_chroot dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null || true)
not_installed=()
for p in "${packages[@]}"; do
  grep -qx "$p install ok installed" <<<"$installed" || not_installed+=("$p")
done
if ((${#packages[@]} == 0)); then
  not_ok "hack/deps.sh --list named no packages"
elif ((${#not_installed[@]})); then
  not_ok "packages hack/deps.sh names are not installed in the chroot: ${not_installed[*]}"
else
  ok "all ${#packages[@]} packages hack/deps.sh names are installed"
fi

t=$SECONDS
# Build only: the binary is never run, any executable will do.
if in_tree "CONFORMANCE_BUILD_ONLY=1 RUSTLAYER_BIN=/bin/true hack/conformance.sh" >"$logs/conformance-build.log" 2>&1; then
  ok "containerd's conformance harness builds offline from Debian's Go packages ($((SECONDS - t))s)"
else
  not_ok "containerd's conformance harness does not build" "$(log_tail "$logs/conformance-build.log")"
fi

if out=$(in_chroot python3 -m venv /tmp/chart-test-venv 2>&1); then
  ok "python3 -m venv makes the chart tests' virtualenv"
else
  not_ok "python3 -m venv fails: the chart tests cannot make their virtualenv" "$out"
fi

host_after=$(host_state)
if [[ $host_after == "$host_before" ]]; then
  ok "the host's /run/rustlayer and /var/lib/rustlayer are untouched"
else
  not_ok "the host's daemon paths changed" "before: $host_before"$'\n'"after:  $host_after"
fi

# Build-script output is only reused by a run on this same machine.
if [[ -n $run_ok && -n $lint_ok ]]; then keep_target=1; fi
