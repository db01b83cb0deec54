#!/usr/bin/env bash
# Bulk read: C containers x L lines (~120 B, timestamps) from the synthetic dockerd, read to the
# end (follow=0) by (a) log_capturer --once on io_uring, (b) the same on epoll, (c) bollard+tokio,
# (d) a raw socket copy (the floor). CPU = user+sys of the reader process (GNU time), per GB of
# log response bytes on the wire. Prints the median of BENCH_RUNS runs (default 3), the ratios of
# the same run, and the verdicts of issue 5 section 3.
#
#   bash scripts/bench/bulk.sh                  # 4 x 500 000 lines
#   BULK_CONTAINERS=4 BULK_LINES=100000 bash scripts/bench/bulk.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
C="${BULK_CONTAINERS:-4}"
L="${BULK_LINES:-500000}"

need_tools
build
machine
start_server bulk --containers "$C" --lines "$L"
WIRE=$((BODY_LEN * C))
log "server: $C containers x $L lines, $WIRE bytes of log responses per read"
write_config "$WORK/cfg.yaml"
RES="$WORK/results"
: >"$RES"

measure() { # VARIANT CMD...
    local v="$1"
    shift
    rm -rf "$WORK/positions"
    /usr/bin/time -f "%U %S %e %M" -o "$WORK/time" "$@" >"$WORK/out" 2>"$WORK/err" || {
        log "$v failed: $(tail -3 "$WORK/err")"
        exit 1
    }
    local got=""
    case "$v" in
        a | b) got="$(sed -n 's/.*done: \([0-9]*\) lines read, \([0-9]*\) delivered.*/\2/p' "$WORK/err")" ;;
        c) got="$(sed -n 's/.*lines=\([0-9]*\).*/\1/p' "$WORK/out")" ;;
        d) got="$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' "$WORK/out")" ;;
    esac
    echo "$v $(cat "$WORK/time") $got" >>"$RES"
}

for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS (load:$(cut -d' ' -f1-3 /proc/loadavg))"
    measure a "$BIN" --config "$WORK/cfg.yaml" --once --io-engine uring
    measure b "$BIN" --config "$WORK/cfg.yaml" --once --io-engine epoll
    measure c "$BOL" --socket "$SOCK"
    measure d "$RAW" --socket "$SOCK"
done

python3 - "$RES" "$WIRE" "$C" "$L" <<'PY'
import sys, statistics as st
res, wire, c, l = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = {}
for line in open(res):
    v, u, s, e, m, got = line.split()
    rows.setdefault(v, []).append((float(u) + float(s), float(e), int(m), int(got)))
gb = wire / 1e9
names = {"a": "(a) log_capturer io_uring", "b": "(b) log_capturer epoll",
         "c": "(c) bollard + tokio", "d": "(d) raw socket copy (floor)"}
expect = {"a": c * l, "b": c * l, "c": c * l, "d": wire}
med = {}
print(f"\nbulk: {c} containers x {l} lines, {wire/1e6:.1f} MB on the wire per read, "
      f"median of {len(rows['a'])} runs")
print(f"{'reader':32} {'CPU s':>7} {'CPU s/GB':>9} {'wall s':>7} {'MB/s':>7} {'maxRSS MiB':>10}  check")
for v in "abcd":
    r = rows[v]
    cpu = st.median(x[0] for x in r); wall = st.median(x[1] for x in r)
    rss = st.median(x[2] for x in r) / 1024
    # (d) counts the 4 response heads too.
    ok = all(x[3] == expect[v] if v != "d" else expect[v] <= x[3] < expect[v] + 1024 * c for x in r)
    med[v] = (cpu, wall)
    print(f"{names[v]:32} {cpu:7.2f} {cpu/gb:9.2f} {wall:7.2f} {wire/1e6/wall:7.0f} {rss:10.1f}  "
          f"{'all ' + str(expect[v]) + (' lines' if v != 'd' else ' bytes') if ok else 'MISMATCH ' + str([x[3] for x in r])}")
# Ratios per run (same run), then their median.
def ratio(x, y, k=0):
    return st.median(a[k] / b[k] for a, b in zip(rows[x], rows[y]) if b[k] > 0)
ac, ad, bc, ab = ratio("a", "c"), ratio("a", "d"), ratio("b", "c"), ratio("a", "b")
print(f"ratios (CPU, median of per-run ratios): a/c {ac:.2f}  a/d {ad:.2f}  b/c {bc:.2f}  a/b {ab:.2f}"
      f"   wall a/c {ratio('a','c',1):.2f}  a/d {ratio('a','d',1):.2f}")
v = lambda ok: "PASS" if ok else "MISS"
print(f"verdict: (a) CPU/GB <= 0.5x (c): {ac:.2f}x -> {v(ac <= 0.5)}")
print(f"verdict: (a) CPU/GB <= 1.5x floor (d): {ad:.2f}x -> {v(ad <= 1.5)}")
PY
