#!/usr/bin/env python3
"""Checks for hack/metrics-e2e.sh: the daemon's exported metric families, and the
Grafana dashboard's panel queries and the alert rules evaluated by a real
Prometheus. Standard library only.

Every check prints one line: "ok - ...", "not ok - ..." or "skip - ... (reason)".
The exit status is 1 if any line was "not ok", 2 on a usage error.

    promcheck.py free-port
    promcheck.py wait-http URL [--timeout S] [--pid PID]
    promcheck.py families --metrics-url URL
    promcheck.py wait-data --prom URL --job JOB --after UNIXTIME [--requests] [--timeout S]
    promcheck.py dashboard --prom URL --dashboard FILE
    promcheck.py rules --prom URL --rules FILE [--root DIR]
"""
import argparse
import json
import math
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# The metrics the daemon documents, with their types. Thin-pool ones come from the
# devmapper backend only.
METRICS = {
    "rustlayer_build_info": "gauge",
    "rustlayer_grpc_requests_total": "counter",
    "rustlayer_grpc_request_duration_seconds": "histogram",
    "rustlayer_snapshots": "gauge",
    "rustlayer_committed_layers_bytes": "gauge",
    "rustlayer_committed_layers_inodes": "gauge",
    "rustlayer_root_filesystem_size_bytes": "gauge",
    "rustlayer_root_filesystem_free_bytes": "gauge",
    "rustlayer_root_filesystem_available_bytes": "gauge",
    "rustlayer_root_filesystem_inodes": "gauge",
    "rustlayer_root_filesystem_inodes_free": "gauge",
    "rustlayer_collector_last_success_timestamp_seconds": "gauge",
    "rustlayer_project_quotas": "gauge",
    "rustlayer_limited_snapshots": "gauge",
    "rustlayer_snapshots_near_limit": "gauge",
    "rustlayer_thin_pool_data_used_bytes": "gauge",
    "rustlayer_thin_pool_data_size_bytes": "gauge",
    "rustlayer_thin_pool_metadata_used_bytes": "gauge",
    "rustlayer_thin_pool_metadata_size_bytes": "gauge",
    "rustlayer_thin_devices": "gauge",
}
DEVMAPPER_ONLY = {m for m in METRICS if m.startswith("rustlayer_thin_")}
LABELS = {
    "rustlayer_build_info": {"version", "backend"},
    "rustlayer_grpc_requests_total": {"method", "code"},
    "rustlayer_grpc_request_duration_seconds": {"method"},
    "rustlayer_snapshots": {"kind"},
}
for _m in DEVMAPPER_ONLY:
    LABELS[_m] = {"pool"}
METHODS = {"Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "Usage", "List",
           "Cleanup"}
CODES = {"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
         "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
         "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
         "Unauthenticated"}
KINDS = {"active", "view", "committed"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Values for Grafana's built-in variables when a panel query is run by hand.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000",
            "__range": "1h", "__range_s": "3600", "__range_ms": "3600000"}

results = {"ok": 0, "not ok": 0, "skip": 0}


def report(status, text):
    results[status] += 1
    print(f"{status} - {text}", flush=True)


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode("utf-8", "replace")


def api(prom, path, **params):
    """GET a Prometheus API path; returns its "data" or raises RuntimeError."""
    url = prom.rstrip("/") + path
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    try:
        _, body = http_get(url)
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        try:
            err = json.loads(body)
            raise RuntimeError(f"{err.get('errorType')}: {err.get('error')}") from None
        except ValueError:
            raise RuntimeError(f"HTTP {e.code}: {body[:200]}") from None
    doc = json.loads(body)
    if doc.get("status") != "success":
        raise RuntimeError(f"{doc.get('errorType')}: {doc.get('error')}")
    return doc["data"]


def query(prom, expr, at=None):
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    return api(prom, "/api/v1/query", **params)


def samples(data):
    """(labels, value) pairs of an instant query result."""
    kind, result = data["resultType"], data["result"]
    if kind == "scalar":
        return [({}, float(result[1]))]
    if kind == "vector":
        return [(r["metric"], float(r["value"][1])) for r in result]
    if kind == "matrix":
        return [(r["metric"], float(v[1])) for r in result for v in r["values"]]
    return [({}, result[1])]


def strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def metric_names(expr):
    """Metric names an expression selects: rustlayer_* identifiers and `up`."""
    bare = strip_strings(expr)
    names = set(re.findall(r"(?<![\w:])(rustlayer_[A-Za-z0-9_:]+)", bare))
    if re.search(r"(?<![\w:.$])up\s*(\{|\[|\)|$|\s*(==|!=|>|<|\*|/|\+|-|and\b|or\b|unless\b))",
                 bare):
        names.add("up")
    return names


def family_of(name):
    if name in METRICS or name == "up":
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)] if name.endswith(suffix) else None
        if base and METRICS.get(base) == "histogram":
            return base
    return None


# ---------------------------------------------------------------- free-port / wait-http

def cmd_free_port(_args):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
    return 0


def alive(pid):
    if not pid:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def cmd_wait_http(args):
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive(args.pid):
            print(f"wait-http: process {args.pid} exited while waiting for {args.url}",
                  file=sys.stderr)
            return 1
        try:
            status, _ = http_get(args.url, timeout=2)
            if status == 200:
                return 0
            last = f"HTTP {status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.1)
    print(f"wait-http: {args.url} not 200 within {args.timeout}s (last: {last})", file=sys.stderr)
    return 1


# ---------------------------------------------------------------- families

def parse_exposition(text):
    """{family: {"type": t, "samples": [(name, labels)]}} from the text format."""
    families = {}
    sample_re = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$')
    label_re = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            families.setdefault(name, {"type": None, "samples": []})["type"] = kind.strip()
            continue
        if not line or line.startswith("#"):
            continue
        m = sample_re.match(line)
        if not m:
            continue
        name, labels = m.group(1), dict(label_re.findall(m.group(3) or ""))
        fam = name
        if name not in families:
            for suffix in HISTOGRAM_SUFFIXES + ("_total",):
                if name.endswith(suffix) and name[: -len(suffix)] in families:
                    fam = name[: -len(suffix)]
                    break
        families.setdefault(fam, {"type": None, "samples": []})["samples"].append((name, labels))
    return families


def cmd_families(args):
    try:
        _, text = http_get(args.metrics_url)
    except Exception as e:  # noqa: BLE001 - any failure is a failed check
        report("not ok", f"GET {args.metrics_url}: {e}")
        return 1
    fams = parse_exposition(text)
    backend = None
    for _, labels in fams.get("rustlayer_build_info", {}).get("samples", []):
        backend = labels.get("backend")
    for name, kind in METRICS.items():
        fam = fams.get(name)
        if name in DEVMAPPER_ONLY and backend != "devmapper":
            if fam:
                report("not ok", f"metric {name}: exported by the {backend} backend, "
                       "documented as devmapper-only")
            else:
                report("skip", f"metric {name}: not exported by the {backend} backend "
                       "(devmapper-only)")
            continue
        if not fam or not fam["samples"]:
            report("not ok", f"metric {name}: not exported")
            continue
        problems = []
        if fam["type"] != kind:
            problems.append(f"type {fam['type']}, documented {kind}")
        want = LABELS.get(name, set())
        for sname, labels in fam["samples"]:
            have = set(labels) - {"le"} if kind == "histogram" else set(labels)
            if have != want:
                problems.append(f"{sname} has labels {sorted(have)}, documented {sorted(want)}")
                break
        values = {k: {labels.get(k) for _, labels in fam["samples"]} for k in want}
        if "method" in values and not values["method"] <= METHODS:
            problems.append(f"unknown methods {sorted(values['method'] - METHODS)}")
        if "code" in values and not values["code"] <= CODES:
            problems.append(f"unknown codes {sorted(values['code'] - CODES)}")
        if name == "rustlayer_snapshots" and values.get("kind") != KINDS:
            problems.append(f"kinds {sorted(values['kind'])}, documented {sorted(KINDS)}")
        if kind == "histogram":
            got = {s for s, _ in fam["samples"]}
            missing = {name + s for s in HISTOGRAM_SUFFIXES} - got
            if missing:
                problems.append(f"missing {sorted(missing)}")
        if problems:
            report("not ok", f"metric {name}: " + "; ".join(problems))
        else:
            extra = ""
            if "method" in values:
                extra = f", methods seen: {','.join(sorted(values['method']))}"
            if "code" in values:
                extra += f", codes seen: {','.join(sorted(values['code']))}"
            report("ok", f"metric {name}: {kind} with labels {sorted(want) or 'none'}{extra}")
    unknown = sorted(f for f in fams if f.startswith("rustlayer_") and f not in METRICS)
    if unknown:
        report("not ok", f"undocumented rustlayer metrics exported: {', '.join(unknown)}")
    else:
        report("ok", "no undocumented rustlayer_* metric exported")
    return 1 if results["not ok"] else 0


# ---------------------------------------------------------------- wait-data

def cmd_wait_data(args):
    """Waits until the job's target is up, request counters have samples, and a
    scrape newer than --after is stored (so rates cover the workload)."""
    deadline = time.monotonic() + args.timeout
    checks = [
        (f'up{{job="{args.job}"}} == 1', "target up"),
        (f'timestamp(rustlayer_build_info{{job="{args.job}"}}) > {args.after + 1:.3f}',
         f"a scrape {args.what} stored"),
    ]
    if args.requests:
        checks.insert(1, (f'rustlayer_grpc_requests_total{{job="{args.job}"}}',
                          "request counters stored"))
    pending = list(checks)
    last = ""
    while time.monotonic() < deadline and pending:
        expr, what = pending[0]
        try:
            if query(args.prom, expr)["result"]:
                pending.pop(0)
                continue
            last = f"{what}: no result yet"
        except (RuntimeError, OSError, urllib.error.URLError) as e:
            last = f"{what}: {e}"
        time.sleep(0.25)
    if pending:
        report("not ok", f"Prometheus data within {args.timeout}s ({last})")
        return 1
    report("ok", "Prometheus scraped the daemon: " + ", ".join(w for _, w in checks))
    return 0


# ---------------------------------------------------------------- dashboard

def substitute(expr, values):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        return values.get(name, m.group(0))
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)


def all_targets(panels):
    for p in panels:
        yield p
        yield from all_targets(p.get("panels", []))


def cmd_dashboard(args):
    with open(args.dashboard) as f:
        dash = json.load(f)
    variables = dash.get("templating", {}).get("list", [])
    var_by_name = {v["name"]: v for v in variables}

    # Structure.
    problems = []
    if dash.get("schemaVersion", 0) < 36:
        problems.append(f"schemaVersion {dash.get('schemaVersion')} < 36")
    ds = var_by_name.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no Prometheus datasource variable named datasource")
    if "node" not in var_by_name:
        problems.append("no node variable")
    panels = [p for p in all_targets(dash.get("panels", [])) if p.get("type") != "row"]
    for p in panels:
        uid = (p.get("datasource") or {}).get("uid")
        if uid != "${datasource}":
            problems.append(f"panel {p.get('title')!r} datasource uid {uid!r}")
        devmapper_only = "devmapper-only" in (p.get("description") or "")
        for t in p.get("targets", []):
            for n in metric_names(t.get("expr", "")):
                fam = family_of(n)
                if fam is None:
                    problems.append(f"panel {p.get('title')!r} uses undocumented metric {n}")
                elif fam in DEVMAPPER_ONLY and not devmapper_only:
                    problems.append(f"panel {p.get('title')!r} uses {n} but is not marked "
                                    "devmapper-only")
        if not p.get("targets"):
            problems.append(f"panel {p.get('title')!r} has no query")
    if problems:
        report("not ok", "dashboard structure: " + "; ".join(problems))
    else:
        report("ok", f"dashboard structure: schemaVersion {dash['schemaVersion']}, "
               f"{len(panels)} panels, ${{datasource}} on all, variables "
               f"{', '.join(v['name'] for v in variables)}, documented metrics only")

    # Variables: "All" (their allValue) and one concrete selection each, the latter
    # taken from the variable's own label_values() query run against Prometheus.
    every, concrete = dict(BUILTINS), dict(BUILTINS)
    for v in variables:
        name, kind = v["name"], v.get("type")
        if kind == "datasource":
            every[name] = concrete[name] = "prometheus"
            continue
        if kind == "constant":
            every[name] = concrete[name] = v.get("query", "")
            continue
        if kind != "query":
            cur = (v.get("current") or {}).get("value", "")
            every[name] = concrete[name] = cur if isinstance(cur, str) else "|".join(cur)
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q)
        if not m:
            report("not ok", f"dashboard variable ${name}: cannot run query {q!r}")
            return 1
        selector, label = substitute(m.group(1), concrete), m.group(2)
        try:
            vals = api(args.prom, f"/api/v1/label/{label}/values", **{"match[]": selector})
        except (RuntimeError, OSError, urllib.error.URLError) as e:
            report("not ok", f"dashboard variable ${name}: {q} -> {e}")
            return 1
        if not vals:
            report("not ok", f"dashboard variable ${name}: {q} lists no value")
            return 1
        report("ok", f"dashboard variable ${name}: {q} lists {', '.join(vals)}")
        every[name] = v.get("allValue") or ".*"
        # As Grafana interpolates a regex variable: escaped, with the backslashes
        # doubled for the PromQL string literal.
        concrete[name] = re.escape(vals[0]).replace("\\", "\\\\")

    for p in panels:
        title = p.get("title")
        devmapper_only = "devmapper-only" in (p.get("description") or "")
        for t in p.get("targets", []):
            raw = t.get("expr", "")
            label = f"panel {title!r} target {t.get('refId')}"
            failures, counts = [], []
            for which, values in (("all", every), ("one", concrete)):
                expr = substitute(raw, values)
                leftover = [v for v in re.findall(r"\$\{?(\w+)", expr) if not v.isdigit()]
                if leftover:
                    failures.append(f"{which}: unresolved variables {leftover} in {expr}")
                    continue
                try:
                    data = query(args.prom, expr)
                except (RuntimeError, OSError, urllib.error.URLError) as e:
                    failures.append(f"{which}: {e} in {expr}")
                    continue
                got = samples(data)
                real = [v for _, v in got if isinstance(v, float) and not math.isnan(v)]
                counts.append(len(got))
                if devmapper_only:
                    continue
                if not got:
                    failures.append(f"{which}: empty result for {expr}")
                elif not real:
                    failures.append(f"{which}: only NaN for {expr}")
            if failures:
                report("not ok", f"{label}: " + "; ".join(failures))
            elif devmapper_only:
                report("skip", f"{label}: query valid, no data expected with this backend "
                       "(devmapper-only)")
            else:
                report("ok", f"{label}: {counts[0]} series (all), {counts[1]} (one node)")
    return 1 if results["not ok"] else 0


# ---------------------------------------------------------------- rules

EXPECTED_ALERTS = {
    "RustlayerDown": {"critical"},
    "RustlayerRootInodesNearlyExhausted": {"warning", "critical"},
    "RustlayerRootDiskNearlyFull": {"warning", "critical"},
    "RustlayerThinPoolDataNearlyFull": {"warning", "critical"},
    "RustlayerThinPoolMetadataNearlyFull": {"warning", "critical"},
    "RustlayerHighErrorRate": {"warning"},
    "RustlayerSnapshotsNearSizeLimit": {"warning"},
    "RustlayerMetricsStale": {"warning"},
}
ROOT_FS_ALERTS = {"RustlayerRootInodesNearlyExhausted", "RustlayerRootDiskNearlyFull"}


def cmd_rules(args):
    with open(args.rules) as f:
        in_file = len(re.findall(r"^\s*-\s*(?:alert|record)\s*:", f.read(), re.M))
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            groups = api(args.prom, "/api/v1/rules")["groups"]
        except (RuntimeError, OSError, urllib.error.URLError) as e:
            groups, err = [], str(e)
        else:
            err = ""
        rules = [r for g in groups for r in g["rules"]]
        evaluated = rules and all(not r.get("lastEvaluation", "").startswith("0001")
                                  for r in rules)
        if (len(rules) == in_file and evaluated) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    if len(rules) != in_file or not evaluated:
        report("not ok", f"Prometheus loaded {len(rules)} of the {in_file} rules in {args.rules}"
               f"{' and evaluated them' if rules else ''} {err}".rstrip())
        return 1
    report("ok", f"Prometheus loaded and evaluated all {in_file} rules of {args.rules}")

    have = {}
    for r in rules:
        if r.get("type") == "alerting":
            have.setdefault(r["name"], set()).add(r.get("labels", {}).get("severity"))
    missing = [f"{n}[{s}]" for n, sev in EXPECTED_ALERTS.items() for s in sorted(sev - have.get(n, set()))]
    if missing:
        report("not ok", f"alert rules missing: {', '.join(missing)}")
    else:
        report("ok", f"every expected alert is defined ({len(EXPECTED_ALERTS)} names, "
               f"{sum(len(s) for s in EXPECTED_ALERTS.values())} severities)")

    has_data = {}
    for r in rules:
        label = f"rule {r['name']}[{r.get('labels', {}).get('severity', '-')}]"
        problems = []
        if r.get("health") != "ok":
            problems.append(f"health {r.get('health')}: {r.get('lastError')}")
        try:
            result = samples(query(args.prom, r["query"]))
        except (RuntimeError, OSError, urllib.error.URLError) as e:
            problems.append(f"query error: {e}")
            result = None
        if problems:
            report("not ok", f"{label} evaluates: " + "; ".join(problems))
        else:
            report("ok", f"{label} evaluates ({len(result)} series now)")

        names = sorted(metric_names(r["query"]))
        undocumented = [n for n in names if family_of(n) is None]
        if undocumented:
            report("not ok", f"{label} uses undocumented metrics {undocumented}")
            continue
        dm = [n for n in names if family_of(n) in DEVMAPPER_ONLY]
        rest = [n for n in names if n not in dm]
        empty = []
        for n in rest:
            if n not in has_data:
                try:
                    has_data[n] = bool(query(args.prom, f'count({{__name__="{n}"}})')["result"])
                except (RuntimeError, OSError, urllib.error.URLError):
                    has_data[n] = False
            if not has_data[n]:
                empty.append(n)
        if empty:
            report("not ok", f"{label}: no data for {', '.join(empty)}")
        elif dm:
            report("skip", f"{label}: no data expected for {', '.join(dm)} with this backend "
                   "(devmapper-only)")
        else:
            report("ok", f"{label}: data for {', '.join(rest)}")

    # A healthy daemon has no alert pending or firing, except root filesystem
    # alerts on a test machine whose filesystem really is that full.
    try:
        alerts = api(args.prom, "/api/v1/alerts")["alerts"]
    except (RuntimeError, OSError, urllib.error.URLError) as e:
        report("not ok", f"GET /api/v1/alerts: {e}")
        return 1
    really_low = []
    if args.root:
        st = os.statvfs(args.root)
        if st.f_blocks and st.f_bavail / st.f_blocks < 0.10:
            really_low.append("RustlayerRootDiskNearlyFull")
        if st.f_files and st.f_ffree / st.f_files < 0.10:
            really_low.append("RustlayerRootInodesNearlyExhausted")
    active = [f"{a['labels'].get('alertname')}[{a['labels'].get('severity')}] {a['state']}"
              for a in alerts]
    unexpected = [a for a in alerts if a["labels"].get("alertname") not in really_low]
    if unexpected:
        report("not ok", "alerts active for a healthy daemon: " + ", ".join(
            f"{a['labels'].get('alertname')}[{a['labels'].get('severity')}] {a['state']} "
            f"value {a.get('value')}" for a in unexpected))
    elif active:
        report("skip", f"alerts active: {', '.join(active)} (this machine's filesystem under "
               f"{args.root} really is that full)")
    else:
        report("ok", "no alert pending or firing for the healthy daemon")
    return 1 if results["not ok"] else 0


def main():
    ap = argparse.ArgumentParser(description="metrics e2e checks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("free-port")
    p = sub.add_parser("wait-http")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--pid", type=int, default=0)
    p = sub.add_parser("families")
    p.add_argument("--metrics-url", required=True)
    p = sub.add_parser("wait-data")
    p.add_argument("--prom", required=True)
    p.add_argument("--job", required=True)
    p.add_argument("--after", type=float, required=True)
    p.add_argument("--what", default="after --after")
    p.add_argument("--requests", action="store_true", help="also wait for request counters")
    p.add_argument("--timeout", type=float, default=60)
    p = sub.add_parser("dashboard")
    p.add_argument("--prom", required=True)
    p.add_argument("--dashboard", required=True)
    p = sub.add_parser("rules")
    p.add_argument("--prom", required=True)
    p.add_argument("--rules", required=True)
    p.add_argument("--root", default="")
    p.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args()
    fn = {"free-port": cmd_free_port, "wait-http": cmd_wait_http, "families": cmd_families,
          "wait-data": cmd_wait_data, "dashboard": cmd_dashboard, "rules": cmd_rules}[args.cmd]
    try:
        return fn(args)
    except Exception as e:  # noqa: BLE001 - report, never crash silently
        report("not ok", f"{args.cmd}: {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
