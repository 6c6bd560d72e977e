#!/usr/bin/env python3
"""Summarises `strace -f -T -y -o FILE -p PID` traces taken while a known number of
snapshot cycles ran, as two markdown tables:

  1. every fsync/fdatasync per cycle, by the file or directory synced (-y names
     it), with its mean time: which durability step costs what;
  2. per cycle, the calls and time of the syscalls that change the filesystem or
     wait for the disk.

    strace_summary.py --cycles N [--strip DIR] LABEL=FILE [LABEL=FILE ...]

Paths are shown relative to --strip, with per-snapshot names (numbers, staging
names) folded into "*". -T times are wall-clock time inside each call, inflated by
strace itself; the counts are exact. Standard library only.
"""
import argparse
import collections
import re

SYNCS = {"fsync", "fdatasync", "sync_file_range", "syncfs", "sync"}
FS_CALLS = SYNCS | {
    "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat",
    "symlink", "symlinkat", "mount", "umount2", "openat", "pwrite64", "write", "writev",
    "fchown", "fchownat", "lchown", "chmod", "fchmodat", "getdents64",
}

# 1234  name(args) = ret <0.000123>         a whole call
# 1234  name(args <unfinished ...>           its start, when another thread interleaves
# 1234  <... name resumed>) = ret <0.5>      its end
CALL = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\w+)\((.*)$")
RESUMED = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+<\.\.\. (\w+) resumed>(.*)$")
ELAPSED = re.compile(r"<([\d.]+)>\s*$")
FIRST_FD_PATH = re.compile(r"^\d+<([^>]*)>")


def fold(path, strip):
    if strip and path.startswith(strip.rstrip("/") + "/"):
        path = path[len(strip.rstrip("/")) + 1:]
    path = re.sub(r"new-[0-9a-f]+-\d+", "new-*", path)
    path = re.sub(r"/\d+(?=/|$)", "/*", path)
    return path


def parse(path, strip):
    by_call = collections.defaultdict(lambda: [0, 0.0])
    by_file = collections.defaultdict(lambda: [0, 0.0])
    pending = {}  # pid -> (name, args) of an unfinished call
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = RESUMED.match(line)
            if m:
                pid, name, _ = m.groups()
                args = pending.pop(pid, (name, ""))[1]
            else:
                m = CALL.match(line)
                if not m:
                    continue
                pid, name, args = m.groups()
                if args.endswith("<unfinished ...>"):
                    pending[pid] = (name, args)
                    continue
            t = ELAPSED.search(line)
            secs = float(t.group(1)) if t else 0.0
            by_call[name][0] += 1
            by_call[name][1] += secs
            if name in SYNCS:
                fd = FIRST_FD_PATH.match(args)
                target = fold(fd.group(1), strip) if fd else "?"
                by_file[(name, target)][0] += 1
                by_file[(name, target)][1] += secs
    return by_call, by_file


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, required=True, help="cycles run while tracing")
    ap.add_argument("--strip", default="", help="directory to show paths relative to")
    ap.add_argument("traces", nargs="+", metavar="LABEL=FILE")
    args = ap.parse_args()
    n = args.cycles
    parsed = []
    for spec in args.traces:
        label, _, path = spec.partition("=")
        parsed.append((label, *parse(path, args.strip)))

    print("Syncs per cycle, by what was synced:")
    print()
    print("| traced process (cycles) | call | file or directory | per cycle | mean time | time per cycle |")
    print("|---|---|---|---|---|---|")
    for label, _, by_file in parsed:
        total_calls, total_secs = 0, 0.0
        for (name, target), (calls, secs) in sorted(by_file.items(), key=lambda kv: -kv[1][1]):
            total_calls += calls
            total_secs += secs
            if calls / n < 0.05:
                continue
            print(f"| {label} | {name} | `{target}` | {calls / n:.1f} | "
                  f"{secs / calls * 1e3:.2f} ms | {secs / n * 1e3:.2f} ms |")
        print(f"| {label} | **all** | | **{total_calls / n:.1f}** | | **{total_secs / n * 1e3:.2f} ms** |")

    print()
    print("Filesystem syscalls per cycle:")
    print()
    print("| traced process (cycles) | syscall | per cycle | mean time | time per cycle |")
    print("|---|---|---|---|---|")
    for label, by_call, _ in parsed:
        rows = [(name, c, s) for name, (c, s) in by_call.items() if name in FS_CALLS and c / n >= 0.05]
        for name, calls, secs in sorted(rows, key=lambda r: -r[2]):
            print(f"| {label} | {name} | {calls / n:.1f} | {secs / calls * 1e6:.0f} µs | {secs / n * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
