#!/bin/sh
# Adds rustlayer to a node's containerd configuration, or takes it out again.
#
#   patch-containerd.sh [add]    the proxy plugin, and a runtime handler whose
#                                snapshotter is rustlayer (containerd 1.7 and later)
#   patch-containerd.sh remove   drop what "add" wrote, leaving the file as before
#
# What "add" writes depends on the config version and containerd's release:
#   1.6 (version 2)  the proxy plugin only: 1.6 has one snapshotter for all of CRI
#   1.7 (version 2)  the proxy plugin with exports.root, and the runtime handler
#                    with its own snapshotter
#   2.x (version 3)  the same (exports.root is then the filesystem CRI accounts
#                    the handler's containers to), plus the handler in the images
#                    plugin's runtime_platforms (so pulls for it unpack into
#                    rustlayer), and rustlayer in the transfer service's
#                    unpack_config, which 2.x pulls go through: an explicit list
#                    replaces containerd's built-in one, so a file without one gets
#                    that overlayfs entry written out too
#   2.2 and later    with the overlay backend, the "rebase" capability (containerd
#                    then sends Commit a parent and unpacks layers in parallel);
#                    devmapper cannot rebase, and 2.1 never sends one
#   2.0 and later    the "remap-ids" capability (containerd then hands pods in user
#                    namespaces to rustlayer with their id mapping and idmaps the
#                    layers it mounts, instead of chowning a copy of the image), but
#                    only where the daemon's start-up probe, run on this node
#                    (IDMAP_CHECK), found that overlay lower layers can be idmapped;
#                    the daemon's config (DAEMON_CONFIG_OUT) then says
#                    remap_ids = true, and false everywhere else
#
# Everything it writes sits between a BEGIN and an END marker comment, so "add"
# can be run again (nothing changes, containerd is not restarted) and "remove"
# restores the file byte for byte. The markers carry PLUGIN_NAME: several daemons
# (one per RuntimeClass, each with its own PLUGIN_NAME, RUNTIME_HANDLER, socket
# and root) each have their own block, which stands alone (the built-in overlayfs
# unpack entry is written into every block that needs it), so removing one in any
# order leaves the others working. A runtime handler another block already
# defines is refused. Patchers of one file take turns: each holds a lock on the
# file's directory (flock, util-linux) from reading the file to restarting
# containerd. Tables someone already wrote by hand are left
# alone and not written twice. containerd's default snapshotter is never changed:
# pods, this DaemonSet's own included, must start without rustlayer; workloads
# opt in through the RuntimeClass.
#
# Environment (defaults in brackets):
#   CONFIG               the file to edit [/etc/containerd/config.toml]
#   HOST_CONFIG          the same file as the host sees it, for CHECK_CMD [$CONFIG]
#   PLUGIN_NAME          proxy plugin and snapshotter name [rustlayer]
#   SNAPSHOTTER_ADDRESS  the daemon's socket [/run/rustlayer/rustlayer.sock]
#   SNAPSHOTTER_ROOT     the daemon's root, exported for CRI's image-fs stats [/var/lib/rustlayer]
#   SNAPSHOTTER_BACKEND  the daemon's backend, overlay or devmapper [overlay]
#   RUNTIME_HANDLER      the CRI runtime handler the RuntimeClass names [rustlayer]
#   PLATFORM             the node's image platform, for containerd 2.x's tables
#                        [from uname -m: linux/amd64, linux/arm64, ...]
#   CONTAINERD_VERSION   e.g. 1.7.22; empty asks the host's containerd
#   SYSTEMD_CGROUP       true, false or auto: as the config's other runtimes [auto]
#   IDMAP_CHECK          a file holding `rustlayer check --output json` on this node,
#                        run with remap_ids = true: "remap-ids" is declared only if
#                        its "idmapped layers" check passed [empty: never declared]
#   DAEMON_CONFIG        the daemon's config file [empty: none written]
#   DAEMON_CONFIG_OUT    where to write DAEMON_CONFIG with remap_ids set to whether
#                        containerd declares remap-ids (false after "remove")
#   HOST_EXEC            runs a command in the host's namespaces [nsenter -t 1 -m -u -i -n -p --]
#   CHECK_CMD            shell code that must accept the new file, at host path "$1",
#                        before it replaces the old one [$HOST_EXEC containerd --config "$1" config dump]
#   RESTART_CMD          shell code run only when the file changed
#                        [$HOST_EXEC systemctl restart containerd]
#   LOCK_TIMEOUT         seconds to wait for another patcher of the same file [300]
set -eu

mode=${1:-add}
CONFIG=${CONFIG:-/etc/containerd/config.toml}
HOST_CONFIG=${HOST_CONFIG:-$CONFIG}
PLUGIN_NAME=${PLUGIN_NAME:-rustlayer}
SNAPSHOTTER_ADDRESS=${SNAPSHOTTER_ADDRESS:-/run/rustlayer/rustlayer.sock}
SNAPSHOTTER_ROOT=${SNAPSHOTTER_ROOT:-/var/lib/rustlayer}
SNAPSHOTTER_BACKEND=${SNAPSHOTTER_BACKEND:-overlay}
RUNTIME_HANDLER=${RUNTIME_HANDLER:-rustlayer}
PLATFORM=${PLATFORM:-}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-}
SYSTEMD_CGROUP=${SYSTEMD_CGROUP:-auto}
IDMAP_CHECK=${IDMAP_CHECK:-}
DAEMON_CONFIG=${DAEMON_CONFIG:-}
DAEMON_CONFIG_OUT=${DAEMON_CONFIG_OUT:-}
# Set but empty runs commands directly, for use on the host itself.
HOST_EXEC=${HOST_EXEC-nsenter -t 1 -m -u -i -n -p --}
if [ -z "${CHECK_CMD:-}" ]; then
  # shellcheck disable=SC2016 # "$1" is expanded by the sh -c that runs it
  CHECK_CMD="$HOST_EXEC"' containerd --config "$1" config dump >/dev/null'
fi
RESTART_CMD=${RESTART_CMD:-$HOST_EXEC systemctl restart containerd}
LOCK_TIMEOUT=${LOCK_TIMEOUT:-300}

begin="# BEGIN $PLUGIN_NAME snapshotter: written by patch-containerd.sh, taken out by 'patch-containerd.sh remove'"
begin_noeol="$begin (the file had no final newline)"
end="# END $PLUGIN_NAME snapshotter"
backup=$CONFIG.$PLUGIN_NAME-backup
new=$CONFIG.$PLUGIN_NAME-new

say() { printf 'patch-containerd: %s\n' "$*"; }
die() { printf 'patch-containerd: %s\n' "$*" >&2; exit 1; }

case $mode in
  add | remove) ;;
  *) die "usage: patch-containerd.sh [add|remove]" ;;
esac
case $PLUGIN_NAME$RUNTIME_HANDLER in
  *[!A-Za-z0-9_-]*) die "PLUGIN_NAME and RUNTIME_HANDLER must be bare TOML keys" ;;
esac
case $SNAPSHOTTER_ADDRESS$SNAPSHOTTER_ROOT$PLATFORM in
  *[\"\\]*) die "SNAPSHOTTER_ADDRESS, SNAPSHOTTER_ROOT and PLATFORM must not contain quotes or backslashes" ;;
esac
case $SNAPSHOTTER_BACKEND in
  overlay | devmapper) ;;
  *) die "SNAPSHOTTER_BACKEND must be overlay or devmapper, not '$SNAPSHOTTER_BACKEND'" ;;
esac

# Other releases' patchers (other PLUGIN_NAMEs) edit the same file, maybe at the
# same moment: one at a time, or one's edit would be lost. The lock is on the
# directory because the file itself is replaced, and a lock on the old inode
# would not exclude a patcher that opened the new one. Fd 9 is closed for the
# commands run under it, so nothing they leave running holds it.
command -v flock >/dev/null || die "needs flock (util-linux) to take turns with other patchers"
exec 9<"$(dirname "$CONFIG")"
flock -w "$LOCK_TIMEOUT" 9 ||
  die "another patch-containerd.sh held $(dirname "$CONFIG") for ${LOCK_TIMEOUT}s; $CONFIG left unchanged"

# Without a file containerd runs on built-in defaults; writing one here would
# silently replace all of them with ours.
[ -f "$CONFIG" ] || die "no containerd config at $CONFIG; create it (containerd config default > $CONFIG) first"

has_block() { grep -qxF "$begin" "$CONFIG" || grep -qxF "$begin_noeol" "$CONFIG"; }

# The file without our block (as it was before "add"), on stdout.
strip_block() {
  if ! has_block; then
    cat "$CONFIG"
    return
  fi
  awk -v begin="$begin" -v begin_noeol="$begin_noeol" -v end="$end" '
    $0 == begin || $0 == begin_noeol { inside = 1; if ($0 == begin_noeol) noeol = n; next }
    inside && $0 == end { inside = 0; next }
    inside { next }
    { out[++n] = $0 }
    END {
      if (inside) { print "unterminated block: no \"" end "\" line" > "/dev/stderr"; exit 1 }
      for (i = 1; i <= n; i++) printf "%s%s", out[i], (i == n && noeol == n && n > 0 ? "" : "\n")
    }' "$CONFIG"
}

# Replaces the config with $new if containerd accepts it, keeping mode and owner.
# Prints whether anything changed; restarts containerd if so.
install_new() {
  if cmp -s "$new" "$CONFIG"; then
    rm -f "$new"
    say "$CONFIG already up to date; containerd not restarted"
    return
  fi
  if ! sh -c "$CHECK_CMD" check "$HOST_CONFIG.$PLUGIN_NAME-new" 9<&-; then
    rm -f "$new"
    die "containerd rejects the patched config; $CONFIG left unchanged"
  fi
  mv -f "$new" "$CONFIG"
  say "$CONFIG changed; restarting containerd"
  sh -c "$RESTART_CMD" 9<&-
}

# write_daemon_config true|false: the daemon's config with remap_ids as given,
# which must match what containerd declares: with remap-ids containerd expects
# the daemon's mounts to carry the mapping, without it a copy it chowned.
write_daemon_config() {
  [ -n "$DAEMON_CONFIG_OUT" ] || return 0
  [ -f "$DAEMON_CONFIG" ] || die "DAEMON_CONFIG_OUT is set but DAEMON_CONFIG ('$DAEMON_CONFIG') is no file"
  {
    printf '# remap_ids: written by patch-containerd.sh, true exactly when containerd declares remap-ids\n'
    printf 'remap_ids = %s\n\n' "$1"
    grep -v '^[[:space:]]*remap_ids[[:space:]]*=' "$DAEMON_CONFIG" || true
  } >"$DAEMON_CONFIG_OUT.tmp"
  mv -f "$DAEMON_CONFIG_OUT.tmp" "$DAEMON_CONFIG_OUT"
  say "the daemon's config says remap_ids = $1"
}

# Whether the "idmapped layers" check in IDMAP_CHECK (rustlayer check's JSON, an
# array of {"check", "ok", "detail"} objects) passed.
idmap_probe_passed() {
  [ -n "$IDMAP_CHECK" ] && [ -s "$IDMAP_CHECK" ] || return 1
  awk 'BEGIN { RS = "}" }
    /"check"[ \t\n]*:[ \t\n]*"idmapped layers"/ { found = 1; if ($0 ~ /"ok"[ \t\n]*:[ \t\n]*true/) ok = 1 }
    END { exit !(found && ok) }' "$IDMAP_CHECK"
}

# A fresh file with the config's mode and owner, for the new content.
start_new() {
  cp -p "$CONFIG" "$new"
  : >"$new"
}

trap 'rm -f "$new" "$new.orig"' EXIT

if [ "$mode" = remove ]; then
  if ! has_block; then
    say "no $PLUGIN_NAME block in $CONFIG; nothing to remove"
    exit 0
  fi
  write_daemon_config false
  start_new
  strip_block >>"$new"
  install_new
  exit 0
fi

# --- add -------------------------------------------------------------------

start_new
strip_block >"$new.orig"
orig=$new.orig

# Config version 1 (no "version" line) names plugins differently and is gone in
# containerd 2.0; version 2 is containerd 1.x's, 3 is 2.x's.
config_version=$(awk '
  /^[ \t]*\[/ { exit }
  /^[ \t]*version[ \t]*=/ { sub(/^[^=]*=[ \t]*/, ""); sub(/[ \t]*(#.*)?$/, ""); print; exit }' "$orig")
case $config_version in
  2) cri_runtimes='plugins."io.containerd.grpc.v1.cri".containerd.runtimes' ;;
  3) cri_runtimes='plugins."io.containerd.cri.v1.runtime".containerd.runtimes' ;;
  '') die "$CONFIG has no 'version = 2' or 'version = 3' line; version 1 configs are not supported" ;;
  *) die "$CONFIG has config version '$config_version'; only 2 and 3 are supported" ;;
esac

if [ -z "$CONTAINERD_VERSION" ]; then
  # "containerd github.com/containerd/containerd v1.7.22 <commit>", or Debian's "1.6.20~ds1".
  CONTAINERD_VERSION=$(sh -c "$HOST_EXEC containerd --version" 9<&- | awk '{ print $3 }')
  [ -n "$CONTAINERD_VERSION" ] || die "cannot run containerd --version on the host; set CONTAINERD_VERSION"
fi
major_minor=$(printf '%s\n' "$CONTAINERD_VERSION" | sed -n 's/^v\{0,1\}\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p')
[ -n "$major_minor" ] || die "cannot read a containerd version from '$CONTAINERD_VERSION'"
# shellcheck disable=SC2086 # splits "1 7" into two fields on purpose
set -- $major_minor
# A runtime's own snapshotter, and "exports" on proxy plugins, came in 1.7.
per_runtime=no
if [ "$1" -ge 2 ] || { [ "$1" -eq 1 ] && [ "$2" -ge 7 ]; }; then per_runtime=yes; fi
if [ "$config_version" = 3 ] && [ "$1" -lt 2 ]; then
  die "config version 3 needs containerd 2.x, but containerd is $CONTAINERD_VERSION"
fi
# containerd 2.2 sends Commit the parent to rebase onto, if the snapshotter
# declares it can: the overlay backend can, devmapper's thin snapshots cannot.
rebase=no
if [ "$SNAPSHOTTER_BACKEND" = overlay ] && { [ "$1" -ge 3 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 2 ]; }; }; then
  rebase=yes
fi

# containerd 2.0 idmaps the lower layers a snapshotter's mounts name when it
# declares remap-ids; whether this kernel can is the daemon's own probe's answer.
remap=no
if [ "$1" -lt 2 ]; then
  say "containerd $CONTAINERD_VERSION cannot idmap a proxy's layers (2.0+): remap-ids not declared" >&2
elif idmap_probe_passed; then
  remap=yes
elif [ -n "$IDMAP_CHECK" ] && [ -s "$IDMAP_CHECK" ]; then
  say "rustlayer check found that overlay lower layers cannot be idmapped on this node (or the backend cannot): remap-ids not declared" >&2
else
  say "no rustlayer check result (IDMAP_CHECK): remap-ids not declared" >&2
fi

if [ "$config_version" = 3 ] && [ -z "$PLATFORM" ]; then
  # The node's own platform, as containerd names it by default; the init
  # container runs on the node's kernel.
  case $(uname -m) in
    x86_64) PLATFORM=linux/amd64 ;;
    aarch64 | arm64) PLATFORM=linux/arm64 ;;
    armv7l) PLATFORM=linux/arm/v7 ;;
    armv6l) PLATFORM=linux/arm/v6 ;;
    i686 | i386) PLATFORM=linux/386 ;;
    ppc64le) PLATFORM=linux/ppc64le ;;
    s390x) PLATFORM=linux/s390x ;;
    riscv64) PLATFORM=linux/riscv64 ;;
    *) die "no containerd platform known for machine '$(uname -m)'; set PLATFORM" ;;
  esac
fi

# Another patcher's block: its BEGIN line, whose third field is its PLUGIN_NAME.
other_begin='^# BEGIN [A-Za-z0-9_-]+ snapshotter: written by patch-containerd[.]sh'

# Who wrote the table header for $1 (dotted) in the file: nothing if nobody,
# "hand" outside every block, or the PLUGIN_NAME of another patcher's block
# (this one's is stripped from $orig). Quotes and spaces do not matter:
# [plugins."a.b".c], [plugins.'a.b'.c] and [ plugins.a.b.c ] all name it.
written_by() {
  awk -v want="$1" -v other_begin="$other_begin" '
    function bare(s) { sub(/#.*/, "", s); gsub(/[ \t"\047]/, "", s); return s }
    BEGIN { want = "[" bare(want) "]" }
    $0 ~ other_begin { block = $3; next }
    block != "" && $0 == "# END " block " snapshotter" { block = ""; next }
    /^[ \t]*\[/ && bare($0) == want { print (block == "" ? "hand" : block); exit }' "$orig"
}

defined() { [ -n "$(written_by "$1")" ]; }

# The entries of containerd 2.x's transfer service unpack_config outside other
# patchers' blocks, as "none", "some" (none for $PLUGIN_NAME) or "ours", and
# "inline" for a key = [...] form that a [[...]] table cannot be added to. Other
# blocks' entries do not count: this block must not lean on the overlayfs entry
# one of them wrote, which goes when that block is removed.
transfer=plugins.io.containerd.transfer.v1.local
unpack_entries() {
  awk -v table="$transfer" -v name="$PLUGIN_NAME" -v other_begin="$other_begin" '
    function bare(s) { sub(/#.*/, "", s); gsub(/[ \t"\047]/, "", s); return s }
    $0 ~ other_begin { block = $3; next }
    block != "" && $0 == "# END " block " snapshotter" { block = ""; entry = in_table = 0; next }
    block != "" { next }
    /^[ \t]*\[/ {
      header = bare($0)
      entry = header == "[[" table ".unpack_config]]"
      entries += entry
      in_table = header == "[" table "]"
      next
    }
    in_table && /^[ \t]*unpack_config[ \t]*=/ { inline = 1 }
    entry && /^[ \t]*snapshotter[ \t]*=/ {
      value = $0
      sub(/^[^=]*=/, "", value)
      if (bare(value) == name) ours = 1
    }
    END { print (inline ? "inline" : ours ? "ours" : entries ? "some" : "none") }' "$orig"
}

systemd_cgroup=$SYSTEMD_CGROUP
if [ "$systemd_cgroup" = auto ]; then
  # Pods of the new handler must use the cgroup driver the kubelet uses, which
  # the config's runc runtime already states.
  if grep -Eq '^[[:space:]]*SystemdCgroup[[:space:]]*=[[:space:]]*true' "$orig"; then
    systemd_cgroup=true
  else
    systemd_cgroup=false
  fi
fi

unpack=none
if [ "$config_version" = 3 ]; then
  unpack=$(unpack_entries)
  [ "$unpack" != inline ] || die "$CONFIG sets unpack_config of [$transfer] inline; add an entry for $PLUGIN_NAME there by hand"
fi

# A runtime handler another release's block defines would be kept here as if
# written by hand, and its RuntimeClass would silently get that release's
# snapshotter.
for table in "$cri_runtimes.$RUNTIME_HANDLER" "plugins.\"io.containerd.cri.v1.images\".runtime_platforms.$RUNTIME_HANDLER"; do
  owner=$(written_by "$table")
  case $owner in
    '' | hand) ;;
    *) die "runtime handler $RUNTIME_HANDLER is already written by the $owner patcher's block in $CONFIG; give this one its own RUNTIME_HANDLER" ;;
  esac
done

# One entry of the transfer service's unpack_config.
unpack_entry() {
  printf '\n[[plugins."io.containerd.transfer.v1.local".unpack_config]]\n'
  printf '  platform = "%s"\n' "$PLATFORM"
  printf '  snapshotter = "%s"\n' "$1"
  printf '  differ = "walking"\n'
}

block=$(
  if defined "proxy_plugins.$PLUGIN_NAME"; then
    say "proxy_plugins.$PLUGIN_NAME is already in $CONFIG outside the block; keeping it" >&2
  else
    printf '[proxy_plugins.%s]\n' "$PLUGIN_NAME"
    printf '  type = "snapshot"\n'
    printf '  address = "%s"\n' "$SNAPSHOTTER_ADDRESS"
    if [ "$per_runtime" = yes ]; then
      printf '  exports = { root = "%s" }\n' "$SNAPSHOTTER_ROOT"
    fi
    capabilities=''
    [ "$rebase" = no ] || capabilities='"rebase"'
    [ "$remap" = no ] || capabilities="${capabilities:+$capabilities, }\"remap-ids\""
    if [ -n "$capabilities" ]; then
      printf '  capabilities = [%s]\n' "$capabilities"
    fi
  fi
  if [ "$per_runtime" = no ]; then
    say "containerd $CONTAINERD_VERSION has no per-runtime snapshotter (1.7+): runtime handler $RUNTIME_HANDLER not added, so pods of its RuntimeClass will not start" >&2
  elif defined "$cri_runtimes.$RUNTIME_HANDLER"; then
    say "runtime handler $RUNTIME_HANDLER is already in $CONFIG outside the block; keeping it" >&2
  else
    printf '\n[%s.%s]\n' "$cri_runtimes" "$RUNTIME_HANDLER"
    printf '  runtime_type = "io.containerd.runc.v2"\n'
    printf '  snapshotter = "%s"\n' "$PLUGIN_NAME"
    printf '  [%s.%s.options]\n' "$cri_runtimes" "$RUNTIME_HANDLER"
    printf '    SystemdCgroup = %s\n' "$systemd_cgroup"
  fi
  if [ "$config_version" = 3 ]; then
    platforms='plugins."io.containerd.cri.v1.images".runtime_platforms'
    if defined "$platforms.$RUNTIME_HANDLER"; then
      say "runtime_platforms.$RUNTIME_HANDLER is already in $CONFIG outside the block; keeping it" >&2
    else
      printf '\n[%s.%s]\n' "$platforms" "$RUNTIME_HANDLER"
      printf '  platform = "%s"\n' "$PLATFORM"
      printf '  snapshotter = "%s"\n' "$PLUGIN_NAME"
    fi
    case $unpack in
      ours) say "the transfer service already unpacks into $PLUGIN_NAME in $CONFIG; keeping that" >&2 ;;
      some) unpack_entry "$PLUGIN_NAME" ;;
      none)
        # containerd's built-in entry, which any explicit list replaces.
        unpack_entry overlayfs
        unpack_entry "$PLUGIN_NAME"
        ;;
    esac
  fi
)

if [ -z "$block" ]; then
  cat "$orig" >>"$new"
else
  cat "$orig" >>"$new"
  if [ -s "$orig" ] && [ -n "$(tail -c 1 "$orig")" ]; then
    printf '\n%s\n' "$begin_noeol" >>"$new"
  else
    printf '%s\n' "$begin" >>"$new"
  fi
  printf '%s\n%s\n' "$block" "$end" >>"$new"
fi

# Whether the block declares remap-ids (a proxy table kept from outside it does not).
case $block in
  *'"remap-ids"'*) write_daemon_config true ;;
  *) write_daemon_config false ;;
esac

# The backup is the file as it was before rustlayer was first added to it.
if ! cmp -s "$new" "$CONFIG" && ! has_block; then
  cp -p "$CONFIG" "$backup"
  say "saved $CONFIG as $backup"
fi
install_new
