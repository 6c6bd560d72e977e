# shellcheck shell=bash
# Sourced by the scripts that start servers of their own (daemons, containerd,
# Prometheus) and wait on them: polling a condition with a deadline, never a
# fixed sleep; and that stop what they started and unmount what they mounted.

# wait_until SECONDS PID CMD...: runs CMD (quietly) every 0.1 s until it
# succeeds. Fails after SECONDS, or at once when process PID has died; PID "-"
# watches no process.
wait_until() {
  local deadline=$((SECONDS + $1)) pid=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [[ $pid != - ]] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# wait_for_socket SECONDS PID NAME SOCKET: until the server NAME, started as PID,
# has made its unix socket SOCKET. On failure says on stderr why (it exited, or
# the time ran out) and returns 1.
wait_for_socket() {
  local seconds=$1 pid=$2 name=$3 socket=$4
  wait_until "$seconds" "$pid" test -S "$socket" && return 0
  if kill -0 "$pid" 2>/dev/null; then
    echo "${me:-$0}: $name (pid $pid) did not create $socket within $seconds s" >&2
  else
    echo "${me:-$0}: $name (pid $pid) exited during start" >&2
  fi
  return 1
}

# stop_pid PID NAME: SIGTERM, then SIGKILL if it is still there after
# STOP_PID_GRACE seconds (default 15); returns its exit status (a child of this
# shell's), 0 when PID is empty or already gone. NAME is for the message.
stop_pid() {
  local pid=$1 grace=${STOP_PID_GRACE:-15} rc=0
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_until "$grace" - eval "! kill -0 $pid"; then
    echo "${me:-$0}: $2 (pid $pid) ignored SIGTERM for $grace s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  return "$rc"
}

# mounts_under DIR: the mount points below DIR, deepest first, one a line.
mounts_under() {
  awk -v p="$1/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# unmount_under DIR: unmounts everything below DIR, deepest first (lazily what
# is busy).
unmount_under() {
  local m
  for m in $(mounts_under "$1"); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

# tail_logs LINES FILE...: the last LINES lines of each FILE that is not empty,
# for a failed run's output. containerd's start-up chatter ("loading plugin")
# would fill the tail, so it is left out. Names are shown below $tmp, the
# script's scratch directory, when they are there.
tail_logs() {
  local lines=$1 f
  shift
  for f in "$@"; do
    [[ -s $f ]] || continue
    echo "---- last $lines lines of ${f#"${tmp:-}/"}"
    grep -v 'msg="\{0,1\}loading plugin' "$f" | tail -n "$lines"
  done
  echo "----"
}
