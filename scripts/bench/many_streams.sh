#!/usr/bin/env bash
# Many streams: 1000 containers x 20 lines/s (steady mode: one frame per chunk per write, as
# dockerd), followed by (a) log_capturer io_uring, (b) log_capturer epoll, (c) bollard+tokio.
# After a warm-up (start, list, 1000 inspects, 1000 opens), over a window of MANY_SECONDS:
# reader CPU (utime+stime from /proc/PID/stat), syscalls (perf stat -e raw_syscalls:sys_enter
# -p PID, every thread, not intrusive), lines the server sent in the window, RSS at the end.
# Stream rotation is off (0) here so that (a)/(b) and (c) do the same work; the rotation storm
# measures rotation. Median of BENCH_RUNS runs (default 3); about 5.5 minutes with defaults.
#
#   bash scripts/bench/many_streams.sh
#   MANY_CONTAINERS=1000 MANY_RATE=20 MANY_SECONDS=30 MANY_WARMUP=6 bash scripts/bench/many_streams.sh
#   LOGCAP_BIN_BEFORE=/path/old/log_capturer MANY_READERS=ac bash scripts/bench/many_streams.sh
# LOGCAP_BIN_BEFORE adds (p): that binary on io_uring, in the same runs (before/after ratio);
# MANY_READERS picks among a, b, c (default abc).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N="${MANY_CONTAINERS:-1000}"
R="${MANY_RATE:-20}"
SECS="${MANY_SECONDS:-30}"
WARM="${MANY_WARMUP:-6}"
READERS="${MANY_READERS:-abc}"
ulimit -n 16384

need_tools
build
machine
start_server steady --containers "$N" --rate "$R"
write_config "$WORK/cfg.yaml" '  stream_rotation_interval: "0"'
RES="$WORK/results"
: >"$RES"

measure() { # VARIANT CMD...
    local v="$1"
    shift
    rm -rf "$WORK/positions"
    "$@" >"$WORK/out" 2>"$WORK/err" &
    local pid=$!
    sleep "$WARM"
    local open l0 t0 l1 t1 rss sys
    open="$(server_stat open)"
    l0="$(server_stat log_lines)"
    t0="$(cpu_ticks "$pid")"
    perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$WORK/perf" -- sleep "$SECS" 2>/dev/null
    t1="$(cpu_ticks "$pid")"
    l1="$(server_stat log_lines)"
    rss="$(rss_kib "$pid")"
    sys="$(awk -F, '/raw_syscalls/ {print $1}' "$WORK/perf")"
    kill -TERM "$pid"
    wait "$pid" || true
    echo "$v $((t1 - t0)) $((l1 - l0)) ${sys:-0} $rss $open" >>"$RES"
}

for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS (load:$(cut -d' ' -f1-3 /proc/loadavg))"
    if [[ -n "${LOGCAP_BIN_BEFORE:-}" ]]; then
        measure p "$LOGCAP_BIN_BEFORE" --config "$WORK/cfg.yaml" --io-engine uring
    fi
    [[ $READERS == *a* ]] && measure a "$BIN" --config "$WORK/cfg.yaml" --io-engine uring
    [[ $READERS == *b* ]] && measure b "$BIN" --config "$WORK/cfg.yaml" --io-engine epoll
    [[ $READERS == *c* ]] && measure c "$BOL" --socket "$SOCK" --follow
done

python3 - "$RES" "$N" "$R" "$SECS" "$CLK_TCK" <<'PY'
import sys, statistics as st
res, n, r, secs, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rows = {}
for line in open(res):
    v, ticks, lines, sysc, rss, opened = line.split()
    rows.setdefault(v, []).append((int(ticks) / tck, int(lines), int(sysc), int(rss) / 1024, int(opened)))
names = {"p": "(p) before: LOGCAP_BIN_BEFORE", "a": "(a) log_capturer io_uring", "b": "(b) log_capturer epoll", "c": "(c) bollard + tokio"}
print(f"\nmany streams: {n} containers x {r} lines/s, {secs} s window, median of {len(next(iter(rows.values())))} runs")
print(f"{'reader':28} {'streams':>7} {'CPU s':>6} {'CPU %':>6} {'lines/s':>8} {'µs CPU/line':>11} {'syscalls/line':>13} {'RSS MiB':>8}")
for v in "pabc":
    if v not in rows:
        continue
    x = rows[v]
    cpu = st.median(a[0] for a in x); lines = st.median(a[1] for a in x)
    spl = st.median(a[2] / max(a[1], 1) for a in x); rss = st.median(a[3] for a in x)
    print(f"{names[v]:28} {st.median(a[4] for a in x):7.0f} {cpu:6.2f} {100*cpu/secs:6.1f} {lines/secs:8.0f} "
          f"{1e6*cpu/max(lines,1):11.2f} {spl:13.2f} {rss:8.1f}")
def ratio(x, y, k=0):
    # CPU per line, so that a reader that fell behind is not credited for reading less.
    if k == 0:
        return st.median((a[0] / max(a[1], 1)) / (b[0] / max(b[1], 1)) for a, b in zip(rows[x], rows[y]) if b[0] > 0)
    return st.median(a[k] / b[k] for a, b in zip(rows[x], rows[y]) if b[k] > 0)
v = lambda ok: "PASS" if ok else "MISS"
pairs = [(x, y) for x, y in (("a", "b"), ("a", "c"), ("b", "c"), ("a", "p"), ("p", "c")) if x in rows and y in rows]
print("ratios (CPU per line, median of per-run ratios): " + "  ".join(f"{x}/{y} {ratio(x, y):.2f}" for x, y in pairs))
if "a" in rows:
    rss_a = st.median(a[3] for a in rows["a"])
    if "b" in rows:
        print(f"verdict: (a) CPU <= 0.5x (b): {ratio('a', 'b'):.2f}x -> {v(ratio('a', 'b') <= 0.5)}")
    if "c" in rows:
        print(f"verdict: (a) CPU <= 0.5x (c): {ratio('a', 'c'):.2f}x -> {v(ratio('a', 'c') <= 0.5)}")
    print(f"verdict: RSS with {n} streams < 32 MiB: (a) {rss_a:.1f} MiB -> {v(rss_a < 32)}")
PY
