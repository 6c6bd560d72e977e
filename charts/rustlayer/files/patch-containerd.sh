#!/bin/sh
# Adds rustlayer to a node's containerd configuration, or takes it out again.
#
#   patch-containerd.sh [add]    the proxy plugin, and a runtime handler whose
#                                snapshotter is rustlayer (containerd 1.7 and later)
#   patch-containerd.sh remove   drop what "add" wrote, leaving the file as before
#
# Everything it writes sits between a BEGIN and an END marker comment, so "add"
# can be run again (nothing changes, containerd is not restarted) and "remove"
# restores the file byte for byte. Tables someone already wrote by hand are left
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
#   RUNTIME_HANDLER      the CRI runtime handler the RuntimeClass names [rustlayer]
#   CONTAINERD_VERSION   e.g. 1.7.22; empty asks the host's containerd
#   SYSTEMD_CGROUP       true, false or auto: as the config's other runtimes [auto]
#   HOST_EXEC            runs a command in the host's namespaces [nsenter -t 1 -m -u -i -n -p --]
#   CHECK_CMD            shell code that must accept the new file, at host path "$1",
#                        before it replaces the old one [$HOST_EXEC containerd --config "$1" config dump]
#   RESTART_CMD          shell code run only when the file changed
#                        [$HOST_EXEC systemctl restart containerd]
set -eu

mode=${1:-add}
CONFIG=${CONFIG:-/etc/containerd/config.toml}
HOST_CONFIG=${HOST_CONFIG:-$CONFIG}
PLUGIN_NAME=${PLUGIN_NAME:-rustlayer}
SNAPSHOTTER_ADDRESS=${SNAPSHOTTER_ADDRESS:-/run/rustlayer/rustlayer.sock}
SNAPSHOTTER_ROOT=${SNAPSHOTTER_ROOT:-/var/lib/rustlayer}
RUNTIME_HANDLER=${RUNTIME_HANDLER:-rustlayer}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-}
SYSTEMD_CGROUP=${SYSTEMD_CGROUP:-auto}
# Set but empty runs commands directly, for use on the host itself.
HOST_EXEC=${HOST_EXEC-nsenter -t 1 -m -u -i -n -p --}
if [ -z "${CHECK_CMD:-}" ]; then
  # shellcheck disable=SC2016 # "$1" is expanded by the sh -c that runs it
  CHECK_CMD="$HOST_EXEC"' containerd --config "$1" config dump >/dev/null'
fi
RESTART_CMD=${RESTART_CMD:-$HOST_EXEC systemctl restart containerd}

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
case $SNAPSHOTTER_ADDRESS$SNAPSHOTTER_ROOT in
  *[\"\\]*) die "SNAPSHOTTER_ADDRESS and SNAPSHOTTER_ROOT must not contain quotes or backslashes" ;;
esac
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
  if ! sh -c "$CHECK_CMD" check "$HOST_CONFIG.$PLUGIN_NAME-new"; then
    rm -f "$new"
    die "containerd rejects the patched config; $CONFIG left unchanged"
  fi
  mv -f "$new" "$CONFIG"
  say "$CONFIG changed; restarting containerd"
  sh -c "$RESTART_CMD"
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
  CONTAINERD_VERSION=$(sh -c "$HOST_EXEC containerd --version" | awk '{ print $3 }')
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

# Whether a table header for $1 (dotted, quoting allowed) is already in the file.
defined() {
  pattern=$(printf '%s\n' "$1" | sed 's|[].[*^$\\]|\\&|g; s|"|"\\{0,1\\}|g')
  grep -q "^[[:space:]]*\[[[:space:]]*${pattern}[[:space:]]*\]" "$orig"
}
# Also quoted forms: [proxy_plugins."rustlayer"].
defined_key() { defined "$1.$2" || defined "$1.\"$2\""; }

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

block=$(
  if defined_key proxy_plugins "$PLUGIN_NAME"; then
    say "proxy_plugins.$PLUGIN_NAME is already in $CONFIG outside the block; keeping it" >&2
  else
    printf '[proxy_plugins.%s]\n' "$PLUGIN_NAME"
    printf '  type = "snapshot"\n'
    printf '  address = "%s"\n' "$SNAPSHOTTER_ADDRESS"
    if [ "$per_runtime" = yes ]; then
      printf '  exports = { root = "%s" }\n' "$SNAPSHOTTER_ROOT"
    fi
  fi
  if [ "$per_runtime" = no ]; then
    say "containerd $CONTAINERD_VERSION has no per-runtime snapshotter (1.7+): runtime handler $RUNTIME_HANDLER not added, so pods of its RuntimeClass will not start" >&2
  elif defined_key "$cri_runtimes" "$RUNTIME_HANDLER"; then
    say "runtime handler $RUNTIME_HANDLER is already in $CONFIG outside the block; keeping it" >&2
  else
    printf '\n[%s.%s]\n' "$cri_runtimes" "$RUNTIME_HANDLER"
    printf '  runtime_type = "io.containerd.runc.v2"\n'
    printf '  snapshotter = "%s"\n' "$PLUGIN_NAME"
    printf '  [%s.%s.options]\n' "$cri_runtimes" "$RUNTIME_HANDLER"
    printf '    SystemdCgroup = %s\n' "$systemd_cgroup"
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

# The backup is the file as it was before rustlayer was first added to it.
if ! cmp -s "$new" "$CONFIG" && ! has_block; then
  cp -p "$CONFIG" "$backup"
  say "saved $CONFIG as $backup"
fi
install_new
