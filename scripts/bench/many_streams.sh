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
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N="${MANY_CONTAINERS:-1000}"
R="${MANY_RATE:-20}"
SECS="${MANY_SECONDS:-30}"
WARM="${MANY_WARMUP:-6}"
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
    measure a "$BIN" --config "$WORK/cfg.yaml" --io-engine uring
    measure b "$BIN" --config "$WORK/cfg.yaml" --io-engine epoll
    measure c "$BOL" --socket "$SOCK" --follow
done

python3 - "$RES" "$N" "$R" "$SECS" "$CLK_TCK" <<'PY'
import sys, statistics as st
res, n, r, secs, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rows = {}
for line in open(res):
    v, ticks, lines, sysc, rss, opened = line.split()
    rows.setdefault(v, []).append((int(ticks) / tck, int(lines), int(sysc), int(rss) / 1024, int(opened)))
names = {"a": "(a) log_capturer io_uring", "b": "(b) log_capturer epoll", "c": "(c) bollard + tokio"}
print(f"\nmany streams: {n} containers x {r} lines/s, {secs} s window, median of {len(rows['a'])} runs")
print(f"{'reader':28} {'streams':>7} {'CPU s':>6} {'CPU %':>6} {'lines/s':>8} {'µs CPU/line':>11} {'syscalls/line':>13} {'RSS MiB':>8}")
for v in "abc":
    x = rows[v]
    cpu = st.median(a[0] for a in x); lines = st.median(a[1] for a in x)
    spl = st.median(a[2] / max(a[1], 1) for a in x); rss = st.median(a[3] for a in x)
    print(f"{names[v]:28} {st.median(a[4] for a in x):7.0f} {cpu:6.2f} {100*cpu/secs:6.1f} {lines/secs:8.0f} "
          f"{1e6*cpu/max(lines,1):11.2f} {spl:13.2f} {rss:8.1f}")
def ratio(x, y, k=0):
    return st.median(a[k] / b[k] for a, b in zip(rows[x], rows[y]) if b[k] > 0)
ab, ac = ratio("a", "b"), ratio("a", "c")
print(f"ratios (CPU, median of per-run ratios): a/b {ab:.2f}  a/c {ac:.2f}  b/c {ratio('b','c'):.2f};"
      f" syscalls a/b {ratio('a','b',2):.2f}  a/c {ratio('a','c',2):.2f}")
v = lambda ok: "PASS" if ok else "MISS"
rss_a = st.median(a[3] for a in rows["a"])
print(f"verdict: (a) CPU <= 0.5x (b): {ab:.2f}x -> {v(ab <= 0.5)}")
print(f"verdict: (a) CPU <= 0.5x (c): {ac:.2f}x -> {v(ac <= 0.5)}")
print(f"verdict: RSS with {n} streams < 64 MiB: (a) {rss_a:.1f} MiB -> {v(rss_a < 64)}")
PY
