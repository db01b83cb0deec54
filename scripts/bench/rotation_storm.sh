#!/usr/bin/env bash
# Rotation storm: N silent streams (the synthetic dockerd sends the response head, then
# nothing), container_monitor.stream_rotation_interval 1s, for STORM_SECONDS (default 120).
# Every second: ops in flight and live streams (the capturer's GET /debug/goroutines), open fds
# and RSS (/proc/PID), the server's count of open connections. At the end: the cancel-to-reaped
# histogram of the daemon (GET /metrics, bucket bounds 10 µs .. 10 s), and the verdicts: no
# growth over the second half (median of the last 10 samples vs the 10 at mid-run), p99 < 1 ms,
# RSS < 64 MiB. Exact per-stream percentiles: `cargo bench --bench rotation_cancel`.
#
#   bash scripts/bench/rotation_storm.sh                 # io_uring, 1000 streams, 120 s
#   STORM_ENGINE=epoll STORM_STREAMS=1000 STORM_SECONDS=60 bash scripts/bench/rotation_storm.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N="${STORM_STREAMS:-1000}"
SECS="${STORM_SECONDS:-120}"
ENGINE="${STORM_ENGINE:-uring}"
PORT="${STORM_API_PORT:-18401}"
MPORT="${STORM_METRICS_PORT:-18001}"
ulimit -n 16384

need_tools
build
machine
start_server silent --containers "$N"
write_config "$WORK/cfg.yaml" '  stream_rotation_interval: "1s"
  stream_idle_timeout: "0"' "$PORT"
sed -i "s|^metrics: {enabled: false}|metrics: {enabled: true, host: 127.0.0.1, port: $MPORT, path: /metrics}|" "$WORK/cfg.yaml"
"$BIN" --config "$WORK/cfg.yaml" --io-engine "$ENGINE" >"$WORK/out" 2>"$WORK/err" &
PID=$!
SAMPLES="$WORK/samples"
echo "t ops_in_flight streams fds server_open rss_kib rotations" >"$SAMPLES"
api() { curl -s --max-time 2 "http://127.0.0.1:$PORT/debug/goroutines" || true; }
t0=$(cpu_ticks "$PID")
start=$(date +%s.%N)
for t in $(seq 1 "$SECS"); do
    sleep 1
    kill -0 "$PID" 2>/dev/null || { log "capturer died: $(tail -5 "$WORK/err")"; exit 1; }
    read -r ops streams rot < <(api | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin); io = d.get("io", d)
    print(io.get("ops_in_flight", "NA"), io.get("streams_active", "NA"), io.get("rotations_total", "NA"))
except Exception:
    print("NA NA NA")')
    echo "$t $ops $streams $(fds "$PID") $(server_stat open) $(rss_kib "$PID") $rot" >>"$SAMPLES"
done
t1=$(cpu_ticks "$PID")
# Sampling takes time too: a "second" of the loop is more than one, so rates use the clock.
elapsed=$(python3 -c "print($(date +%s.%N) - $start)")
curl -s --max-time 5 "http://127.0.0.1:$MPORT/metrics" | grep -E 'stream_cancel_seconds|stream_cancellations_total' >"$WORK/metrics" || true
kill -TERM "$PID"
wait "$PID" || true
sleep 1
after_open="$(server_stat open)"

python3 - "$SAMPLES" "$WORK/metrics" "$N" "$SECS" "$ENGINE" "$((t1 - t0))" "$CLK_TCK" "$after_open" "$elapsed" <<'PY'
import sys, statistics as st
samples, metrics, n, secs, engine = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cpu = int(sys.argv[6]) / int(sys.argv[7]); after_open = sys.argv[8]; elapsed = float(sys.argv[9])
rows = [l.split() for l in open(samples)][1:]
cols = ["ops_in_flight", "streams", "fds", "server_open", "rss_kib", "rotations"]
print(f"\nrotation storm: {n} silent streams, rotated every 1 s, {secs} s, engine {engine}")
print("t  " + " ".join(f"{c:>13}" for c in cols))
for r in rows:
    if int(r[0]) % 5 == 0 or int(r[0]) <= 3:
        print(f"{r[0]:>2} " + " ".join(f"{x:>13}" for x in r[1:]))
v = lambda ok: "PASS" if ok else "MISS"
warm = 10
growth_ok = True
for i, c in enumerate(cols[:5], start=1):
    vals = [float(r[i]) for r in rows if r[i] != "NA"]
    if len(vals) < warm + 20:
        print(f"{c}: not sampled"); continue
    # A leak grows with every rotation, so it shows over the second half of the run; the
    # allocator's one-time steps (seen: +0.35 MiB at the first container-list reconcile,
    # +1.5 MiB once near t=45..60 s, then flat for the remaining 2 minutes of a 180 s run) do
    # not. The verdict compares the median of 10 samples at the midpoint with the last 10;
    # the warm-up figure is printed too.
    mid = len(vals) // 2
    first, half, last = (st.median(vals[warm:warm + 10]), st.median(vals[mid - 5:mid + 5]),
                         st.median(vals[-10:]))
    # RSS may move by allocator noise: allow 2%; counts must not grow at all beyond the
    # spread a rotation in progress gives (median of 10 samples each side).
    slack = half * 0.02 if c == "rss_kib" else 0
    ok = last <= half + slack
    growth_ok &= ok
    print(f"{c:14} after warm-up {first:10.0f}  mid-run {half:10.0f}  last 10 s {last:10.0f}  "
          f"min {min(vals[warm:]):.0f} max {max(vals[warm:]):.0f}  {'flat' if ok else 'GROWS'}")
rots = [r[6] for r in rows if r[6] != "NA"]
if rots:
    print(f"rotations done: {rots[-1]} ({float(rots[-1]) / elapsed:.0f}/s over {elapsed:.0f} s of sampling); "
          f"capturer CPU {cpu:.1f} s ({100*cpu/elapsed:.0f}%)")
print(f"server connections open 1 s after the capturer's exit: {after_open}")
# Histogram: cumulative buckets.
buckets, count = [], 0
for line in open(metrics):
    if line.startswith("#"): continue
    if "_bucket{" in line:
        le = line.split('le="')[1].split('"')[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    elif "stream_cancel_seconds_count" in line:
        count = float(line.split()[-1])
    elif "stream_cancel_seconds_sum" in line:
        total = float(line.split()[-1])
if buckets and count:
    def pct(p):
        for le, c in buckets:
            if c >= p * count: return le
    fmt = lambda s: "inf" if s == float("inf") else (f"{s*1e6:.0f} µs" if s < 1e-3 else f"{s*1e3:g} ms")
    p50, p99 = pct(0.5), pct(0.99)
    print(f"cancel-to-reaped (daemon histogram, {count:.0f} cancels, mean {total/count*1e6:.0f} µs): "
          f"p50 <= {fmt(p50)}, p99 <= {fmt(p99)}  "
          + " ".join(f"<={fmt(le)}:{c:.0f}" for le, c in buckets if c < count or le != float('inf'))[:400])
    print(f"verdict: p99 cancel-to-reaped < 1 ms: p99 <= {fmt(p99)} -> {v(p99 <= 1e-3)}")
else:
    print("cancel-to-reaped: no histogram in /metrics (epoll closes without cancels)")
print(f"verdict: no growth in any sampled figure -> {v(growth_ok)}")
rss = [float(r[5]) for r in rows]
print(f"verdict: RSS with {n} streams < 64 MiB: max {max(rss)/1024:.1f} MiB -> {v(max(rss) < 64 * 1024)}")
PY
