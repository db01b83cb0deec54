#!/usr/bin/env bash
# End to end with the real dockerd (scripts/docker-engine.sh: dockerd 20.10, json-file): one
# container printing ~100-byte lines as fast as it can (`yes <100 chars>`), followed by
# log_capturer (io_uring, blackhole sink) for E2E_SECONDS (default 20). Each run has a fresh
# container, started with the capturer: a long-running one grows its json file by ~4 MB/s, and
# dockerd then spends the run seeking through it (`since`), which made later runs read a
# tenth of the first (13 700 vs 88 000 lines/s) whichever capturer was measured.
# Over the window after a 3 s warm-up: the capturer's CPU and dockerd's CPU (utime+stime from
# /proc/PID/stat), lines/s delivered. Median of BENCH_RUNS runs (default 3). The engine is left
# running if it was already up, else stopped at the end.
#
#   bash scripts/bench/e2e_dockerd.sh
#   LOGCAP_BIN_BEFORE=/path/old/log_capturer E2E_ROTATION=2s bash scripts/bench/e2e_dockerd.sh
# LOGCAP_BIN_BEFORE: each run also measures that binary, on a fresh container of its own,
# right before (before/after ratios from the same runs). E2E_ROTATION (default 0, off): the
# stream rotation interval, so that streams are reopened with `since` while the container
# writes (a paced reader is starved by dockerd there: see `crate::sources::docker::reader::LIVE_WITHIN`).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SECS="${E2E_SECONDS:-20}"
NAME="logcap-bench-yes-$$"
ENGINE_SH="$ROOT/scripts/docker-engine.sh"

need_tools
build
machine
was_up=0
bash "$ENGINE_SH" status 2>/dev/null && was_up=1
DSOCK="$(bash "$ENGINE_SH" start | tail -n1)"
DPID="$(tr -dc '0-9' <"${LOGCAP_DOCKER_DIR:-/tmp/logcap-docker}/docker.pid")"
dk() { docker -H "unix://$DSOCK" "$@"; }
end() {
    dk rm -f "$NAME" >/dev/null 2>&1 || true
    [[ $was_up == 1 ]] || bash "$ENGINE_SH" stop || true
    cleanup
}
trap end EXIT
MSG="$(printf 'bench-e2e-%090d' 0)"
SOCK="$DSOCK"
write_config "$WORK/cfg.yaml" "  include_names: [\"$NAME\"]
  new_containers_from: \"created\"
  stream_rotation_interval: \"${E2E_ROTATION:-0}\"" "${E2E_API_PORT:-18402}"
RES="$WORK/results"
: >"$RES"
# Lines delivered so far (the capturer's GET /stats, dispatcher.processed).
processed() {
    curl -s --max-time 2 "http://127.0.0.1:${E2E_API_PORT:-18402}/stats" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["dispatcher"]["processed"])' 2>/dev/null || echo 0
}
one() { # VARIANT BIN
    rm -rf "$WORK/positions"
    dk rm -f "$NAME" >/dev/null 2>&1 || true
    dk run -d --network none --name "$NAME" local/busybox:latest yes "$MSG" >/dev/null
    "$2" --config "$WORK/cfg.yaml" --io-engine uring >"$WORK/out" 2>"$WORK/err" &
    pid=$!
    sleep 3
    c0=$(cpu_ticks "$pid"); d0=$(cpu_ticks "$DPID")
    l0=$(processed)
    s0=$(date +%s.%N)
    sleep "$SECS"
    c1=$(cpu_ticks "$pid"); d1=$(cpu_ticks "$DPID")
    l1=$(processed)
    s1=$(date +%s.%N)
    kill -TERM "$pid"
    wait "$pid" || true
    echo "$1 $((c1 - c0)) $((d1 - d0)) $l1 $l0 $s0 $s1" >>"$RES"
}
for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS (load:$(cut -d' ' -f1-3 /proc/loadavg))"
    [[ -n "${LOGCAP_BIN_BEFORE:-}" ]] && one before "$LOGCAP_BIN_BEFORE"
    one after "$BIN"
done

python3 - "$RES" "$CLK_TCK" "$SECS" "${E2E_ROTATION:-0}" <<'PY'
import sys, statistics as st
tck, secs, rot = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runs = {}
for l in open(sys.argv[1]):
    v, *r = l.split()
    runs.setdefault(v, []).append(list(map(float, r)))
print(f"\nend to end, real dockerd: 1 container `yes <100 B>`, {secs} s window, rotation {rot}, median of {len(runs['after'])} runs")
ratios = {}
for v in ("before", "after"):
    rows = runs.get(v)
    if not rows:
        continue
    cap = st.median(r[0] / tck for r in rows); dd = st.median(r[1] / tck for r in rows)
    # Lines delivered in the window (the API's count at both ends).
    lps = st.median((r[2] - r[3]) / (r[5] - r[4]) for r in rows)
    ratios[v] = ratio = st.median(r[0] / r[1] for r in rows if r[1] > 0)
    print(f"{v:6}: dockerd CPU {dd:.2f} s ({100*dd/secs:.0f}%), log_capturer CPU {cap:.2f} s ({100*cap/secs:.0f}%), "
          f"{lps:,.0f} lines/s ({lps*130/1e6:.1f} MB/s of text), capturer/dockerd CPU {ratio:.3f}")
    print(f"        log_capturer: {1e6*cap/max(lps*secs,1):.2f} µs CPU per line; dockerd: {1e6*dd/max(lps*secs,1):.2f} µs per line")
v = "PASS" if ratios["after"] <= 0.15 else "MISS"
print(f"verdict: capturer/dockerd CPU <= 0.15: {ratios['after']:.3f} -> {v}")
PY
