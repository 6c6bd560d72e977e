# shellcheck shell=bash
# Sourced by the test scripts that print one line per check, "ok - NAME" or
# "not ok - NAME" (its detail indented below it), and close with
# "LABEL: N passed, N failed", the line hack/test.sh reads.
#
#   REPORT_LABEL    what the closing lines start with (default: $me)
#   REPORT_TAG      put before every check's name, e.g. "[containerd 2.1.9]"
#   REPORT_SKIPS=1  the script also reports "skip - NAME" lines (skip), and the
#                   closing line counts them: "N passed, N failed, N skipped"
#
#   report_traps TEARDOWN
#
# makes the script end through report_exit, however it ends (the last line, exit,
# set -e, a signal): a stop that no check reported (set -e, a signal) is a failed
# check naming the command and line; then TEARDOWN, the script's own function
# (stop what it started, remove its scratch; it may still report checks), and the
# closing lines. The script exits 1 when a check failed, else 0.

passed=0 failed=0 skipped=0
# Set by abort: the stop that follows was reported already.
aborting=''

ok() { # ok NAME
  passed=$((passed + 1))
  echo "ok - ${REPORT_TAG:+$REPORT_TAG }$1"
}
not_ok() { # not_ok NAME [DETAIL]: the detail indented under it
  failed=$((failed + 1))
  echo "not ok - ${REPORT_TAG:+$REPORT_TAG }$1"
  # shellcheck disable=SC2001 # indents every line
  if [[ -n ${2-} ]]; then sed 's/^/    /' <<<"$2"; fi
}
skip() { # skip NAME: a check that cannot run here, with the reason in NAME
  skipped=$((skipped + 1))
  echo "skip - ${REPORT_TAG:+$REPORT_TAG }$1"
}
# abort: stop here after a failed check that later ones depend on.
abort() {
  aborting=1
  exit 1
}
expect_eq() { # expect_eq NAME WANT GOT
  if [[ $2 == "$3" ]]; then
    ok "$1"
  else
    not_ok "$1" "want: $2"$'\n'"got:  $3"
  fi
}

report_traps() {
  report_teardown=$1
  report_started=$SECONDS
  report_err_cmd='' report_err_line=''
  trap report_exit EXIT
  trap 'report_err_cmd="(a signal)" report_err_line=-; exit 130' INT TERM
  # Which command set -e stopped on, for the report (-E: in functions too).
  set -E
  trap 'report_err_cmd=$BASH_COMMAND report_err_line=$LINENO' ERR
}

report_exit() {
  local rc=$? label=${REPORT_LABEL:-$me}
  trap - EXIT INT TERM ERR
  set +e
  if ((rc != 0)) && [[ -z $aborting ]]; then
    not_ok "the script stopped early: '$report_err_cmd' (line $report_err_line) exited $rc"
  fi
  "$report_teardown"
  echo "$label: finished in $((SECONDS - report_started))s"
  echo "$label: $passed passed, $failed failed${REPORT_SKIPS:+, $skipped skipped}"
  if ((failed)); then exit 1; fi
  exit 0
}

# expect_clean_exit NAME PID LOG CMD...: the check that NAME, running as PID (a
# child of this shell), is still there, and that CMD (which sends it SIGTERM)
# makes it exit 0 within 30 s; LOG's last lines are a failure's detail. Uses
# hack/lib/process.sh's wait_until.
expect_clean_exit() {
  local name=$1 pid=$2 log=$3 rc=0
  shift 3
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || rc=$?
    not_ok "$name died before the end of the test (status $rc)"
    return 0
  fi
  "$@" >/dev/null 2>&1 || true
  if ! wait_until 30 - eval "! kill -0 $pid"; then
    not_ok "$name ignored SIGTERM for 30 s" "$(tail -n 5 "$log")"
    return 0
  fi
  wait "$pid" 2>/dev/null || rc=$?
  if ((rc == 0)); then
    ok "$name exited 0 on SIGTERM"
  else
    not_ok "$name exited with status $rc on SIGTERM" "$(tail -n 5 "$log")"
  fi
}
