#!/usr/bin/env bash
# Processing pipelines (issue 14): the capturer's CPU per line with the Go team's pipelines
# (tests/fixtures/go_pipelines.yaml; the synthetic containers are unmapped, so every line goes
# through its `default` pipeline: a level regex, msg = {{message}}, two labels) against
# processing off, alternating in the same run, on two workloads of the synthetic dockerd:
#   bulk: C containers x L lines read to the end (--once), CPU from GNU time;
#   many streams: N containers x R lines/s followed, CPU over a window after a warm-up.
# Prints per-line CPU, the median of per-run on/off ratios, and the verdict (target: processing
# adds at most 30 % to the CPU per line).
#
# LOGCAP_BIN_BEFORE=/path/to/an/older/log_capturer adds a third variant, that binary with the
# pipelines, run back to back with the other two: the before/after of a change to processing.
#
#   bash scripts/bench/processing.sh
#   LOGCAP_BIN_BEFORE=/tmp/before/release/log_capturer bash scripts/bench/processing.sh
#   BULK_LINES=200000 MANY_CONTAINERS=500 MANY_SECONDS=15 BENCH_RUNS=3 bash scripts/bench/processing.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
C="${BULK_CONTAINERS:-4}"
L="${BULK_LINES:-500000}"
N="${MANY_CONTAINERS:-1000}"
R="${MANY_RATE:-20}"
SECS="${MANY_SECONDS:-20}"
WARM="${MANY_WARMUP:-6}"
PIPELINES="${PIPELINES_FILE:-$ROOT/tests/fixtures/go_pipelines.yaml}"
ulimit -n 16384

need_tools
log "building (release): log_capturer, example fake_dockerd"
(cd "$ROOT" && cargo build --release -q --bin log_capturer --example fake_dockerd)
BEFORE="${LOGCAP_BIN_BEFORE:-}"
VARIANTS="off on"
[ -n "$BEFORE" ] && VARIANTS="off on before"
# The binary of a variant: `before` is the older one, with the pipelines.
bin_of() { if [ "$1" = before ]; then echo "$BEFORE"; else echo "$BIN"; fi; }
cfg_of() { if [ "$1" = before ]; then echo on; else echo "$1"; fi; }
machine
RES="$WORK/results"
: >"$RES"

# configs: off.yaml (processing off) and on.yaml (the pipelines), same otherwise.
configs() {
    write_config "$WORK/off.yaml" "${1:-}"
    cp "$WORK/off.yaml" "$WORK/on.yaml"
    printf 'processing:\n  enabled: true\n  pipelines_file: "%s"\n' "$PIPELINES" >>"$WORK/on.yaml"
}

bulk() { # VARIANT
    rm -rf "$WORK/positions"
    /usr/bin/time -f "%U %S" -o "$WORK/time" "$(bin_of "$1")" --config "$WORK/$(cfg_of "$1").yaml" --once >"$WORK/out" 2>"$WORK/err" || {
        log "bulk $1 failed: $(tail -3 "$WORK/err")"
        exit 1
    }
    local lines
    lines="$(sed -n 's/.*done: \([0-9]*\) lines read, \([0-9]*\) delivered.*/\2/p' "$WORK/err")"
    echo "bulk $1 $(awk '{print $1 + $2}' "$WORK/time") $lines" >>"$RES"
}

many() { # VARIANT
    rm -rf "$WORK/positions"
    "$(bin_of "$1")" --config "$WORK/$(cfg_of "$1").yaml" >"$WORK/out" 2>"$WORK/err" &
    local pid=$!
    sleep "$WARM"
    local l0 t0 l1 t1
    l0="$(server_stat log_lines)"
    t0="$(cpu_ticks "$pid")"
    sleep "$SECS"
    t1="$(cpu_ticks "$pid")"
    l1="$(server_stat log_lines)"
    kill -TERM "$pid"
    wait "$pid" || true
    echo "many $1 $(python3 -c "print(($t1 - $t0) / $CLK_TCK)") $((l1 - l0))" >>"$RES"
}

start_server bulk --containers "$C" --lines "$L"
configs
for run in $(seq 1 "$RUNS"); do
    log "bulk run $run/$RUNS (load:$(cut -d' ' -f1-3 /proc/loadavg))"
    for v in $VARIANTS; do bulk "$v"; done
done
stop_server

start_server steady --containers "$N" --rate "$R"
configs '  stream_rotation_interval: "0"'
for run in $(seq 1 "$RUNS"); do
    log "many-streams run $run/$RUNS (load:$(cut -d' ' -f1-3 /proc/loadavg))"
    for v in $VARIANTS; do many "$v"; done
done

python3 - "$RES" "$C" "$L" "$N" "$R" "$SECS" <<'PY'
import sys, statistics as st
res, c, l, n, r, secs = sys.argv[1], *map(int, sys.argv[2:])
rows = {}
for line in open(res):
    w, v, cpu, lines = line.split()
    rows.setdefault((w, v), []).append((float(cpu), int(lines)))
titles = {"bulk": f"bulk: {c} containers x {l} lines, read to the end (--once)",
          "many": f"many streams: {n} containers x {r} lines/s, {secs} s window"}
worst = 0.0
for w in ("bulk", "many"):
    off, on, before = rows[(w, "off")], rows[(w, "on")], rows.get((w, "before"))
    print(f"\n{titles[w]}, median of {len(off)} runs")
    print(f"{'processing':18} {'CPU s':>7} {'lines':>9} {'µs CPU/line':>12}")
    shown = [("off", off), ("on (Go file)", on)] + ([("on, before binary", before)] if before else [])
    for name, x in shown:
        cpu = st.median(a[0] for a in x); lines = st.median(a[1] for a in x)
        print(f"{name:18} {cpu:7.2f} {lines:9.0f} {1e6 * cpu / max(lines, 1):12.3f}")
    # Per-line CPU, on over off, per run (they ran back to back), then the median.
    def ratios(xs):
        return [(b[0] / max(b[1], 1)) / (a[0] / max(a[1], 1)) for a, b in zip(off, xs) if a[0] > 0]
    def ratio_of(xs):
        return st.median(ratios(xs))
    ratio = ratio_of(on)
    worst = max(worst, ratio)
    print(f"ratio on/off (CPU per line, median of per-run ratios): {ratio:.2f}"
          f"  -> processing adds {100 * (ratio - 1):.0f} %"
          f" (runs: {' '.join(f'{r:.2f}' for r in ratios(on))})")
    if before:
        rb = ratio_of(before)
        print(f"before binary, on/off: {rb:.2f} -> adds {100 * (rb - 1):.0f} %")
print(f"\nverdict: processing adds <= 30 % CPU per line on both workloads: worst {100 * (worst - 1):.0f} % -> "
      f"{'PASS' if worst <= 1.30 else 'MISS'}")
PY
