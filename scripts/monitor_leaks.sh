#!/usr/bin/env bash
# Leak check for a running log_capturer, the successor of the Go team's
# scripts/monitor_goroutine_leak.sh.
#
#   scripts/monitor_leaks.sh MINUTES INTERVAL_SECONDS [URL] [PID]
#
# Samples URL/debug/goroutines (default URL http://localhost:8401) every INTERVAL_SECONDS for
# MINUTES: live threads ("goroutines"), io ops in flight, live streams, open file descriptors
# and resident memory. With PID (or LOGCAP_PID), fds and RSS are read from /proc/PID instead
# of the JSON. Prints one row per sample, then the growth per minute of each (least-squares
# slope over all samples) and a verdict:
#
#   threads         > 10/min warning, > 30/min critical (the Go tracker's thresholds)
#   ops in flight   growing (> 0.5/min) while streams are not (<= 0.1/min): leak
#   fds             > 1/min: leak suspected
#   RSS             > 1 MiB/min: growth to watch
#
# Exit status: 0 no leak, 1 leak suspected, 2 bad arguments or the API unreachable.
# Needs bash and python3 (no curl or jq).
set -euo pipefail

usage() {
    echo "usage: $0 MINUTES INTERVAL_SECONDS [URL] [PID]" >&2
    exit 2
}

[[ $# -ge 2 && $# -le 4 ]] || usage
MINUTES=$1
INTERVAL=$2
URL=${3:-http://localhost:8401}
PID=${4:-${LOGCAP_PID:-}}
[[ $MINUTES =~ ^[0-9]+([.][0-9]+)?$ ]] || usage
[[ $INTERVAL =~ ^[0-9]+([.][0-9]+)?$ ]] || usage
if [[ -n $PID && ! -d /proc/$PID ]]; then
    echo "no process $PID" >&2
    exit 2
fi

exec python3 - "$MINUTES" "$INTERVAL" "${URL%/}" "$PID" <<'PY'
import json
import os
import sys
import time
import urllib.request

minutes, interval, url, pid = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
if interval <= 0:
    sys.exit("INTERVAL_SECONDS must be above 0")
samples_wanted = max(2, int(minutes * 60 / interval) + 1)


def fetch():
    with urllib.request.urlopen(url + "/debug/goroutines", timeout=10) as r:
        return json.load(r)


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def sample():
    d = fetch()
    io = d.get("io") or {}
    mem = d.get("memory") or {}
    fds = proc_fds(pid) if pid else d.get("file_descriptors", 0)
    rss = proc_rss(pid) if pid else mem.get("rss_bytes", mem.get("alloc", 0))
    return {
        "threads": d.get("goroutines", 0),
        "ops": io.get("ops_in_flight", 0),
        "streams": io.get("streams_active", 0),
        "fds": fds,
        "rss_mb": rss / (1024 * 1024),
        "engine": io.get("engine", "?"),
    }


def slope(ts, ys):
    """Least-squares growth per minute."""
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var * 60.0


try:
    first = sample()
except Exception as e:  # noqa: BLE001 - any failure to reach the API ends the check
    print(f"cannot read {url}/debug/goroutines: {e}", file=sys.stderr)
    sys.exit(2)

print("=== log_capturer leak check ===")
print(f"url {url}  engine {first['engine']}  {minutes:g} min, every {interval:g} s "
      f"({samples_wanted} samples){'  pid ' + pid if pid else ''}")
print(f"{'#':>4} {'time':8} {'elapsed':>8} {'threads':>8} {'ops':>6} {'streams':>8} "
      f"{'fds':>6} {'rss_mb':>9}")

start = time.monotonic()
rows = []
for i in range(samples_wanted):
    if i:
        time.sleep(max(0.0, start + i * interval - time.monotonic()))
    try:
        s = first if i == 0 else sample()
    except Exception as e:  # noqa: BLE001
        print(f"sample {i + 1}: {e}", file=sys.stderr)
        continue
    s["t"] = time.monotonic() - start
    rows.append(s)
    print(f"{i + 1:>4} {time.strftime('%H:%M:%S')} {s['t']:>7.0f}s {s['threads']:>8} "
          f"{s['ops']:>6} {s['streams']:>8} {s['fds']:>6} {s['rss_mb']:>9.1f}", flush=True)

if len(rows) < 2:
    print("too few samples", file=sys.stderr)
    sys.exit(2)

ts = [r["t"] for r in rows]
rate = {k: slope(ts, [r[k] for r in rows]) for k in ("threads", "ops", "streams", "fds", "rss_mb")}
growth = {k: rows[-1][k] - rows[0][k] for k in rate}

print()
print("=== growth ===")
print(f"{'':10} {'first':>10} {'last':>10} {'total':>10} {'per min':>10}")
for k, label in (("threads", "threads"), ("ops", "ops"), ("streams", "streams"),
                 ("fds", "fds"), ("rss_mb", "rss_mb")):
    print(f"{label:10} {rows[0][k]:>10.1f} {rows[-1][k]:>10.1f} {growth[k]:>+10.1f} "
          f"{rate[k]:>+10.2f}")

problems, notes = [], []
if rate["threads"] > 30:
    problems.append(f"threads growing {rate['threads']:.1f}/min (critical: > 30/min)")
elif rate["threads"] > 10:
    problems.append(f"threads growing {rate['threads']:.1f}/min (warning: > 10/min)")
if rate["ops"] > 0.5 and rate["streams"] <= 0.1:
    problems.append(f"io ops in flight growing {rate['ops']:.2f}/min while streams are not "
                    f"({rate['streams']:+.2f}/min): reads are being abandoned")
if rate["fds"] > 1:
    problems.append(f"file descriptors growing {rate['fds']:.2f}/min")
if rate["rss_mb"] > 1:
    notes.append(f"RSS growing {rate['rss_mb']:.2f} MiB/min: watch it over a longer run")

print()
print("=== verdict ===")
for n in notes:
    print(f"note: {n}")
if problems:
    for p in problems:
        print(f"LEAK SUSPECTED: {p}")
    sys.exit(1)
print("NO LEAK DETECTED: threads, io ops in flight and file descriptors are flat")
PY
