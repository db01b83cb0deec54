#!/usr/bin/env bash
# What reopening a log stream costs dockerd (issue 11), on the real dockerd
# (scripts/docker-engine.sh: dockerd 20.10, json-file). One container writes a 256 MB json-file
# (REOPEN_LINES, default 1,500,000 lines of 100 bytes) and then stays quiet. For BEFORE (the
# plain `since` reopen and rotation on time, LOGCAP_REOPEN_WINDOW=off) and AFTER (tail windows,
# only hung streams rotated), in the same run, log_capturer with stream_rotation_interval 5s,
# blackhole sink:
#   - quiet window: a capturer starting "now" (new_containers_from: now), after a 5 s warm-up,
#     for REOPEN_WINDOW_SECONDS (default 30): dockerd's CPU and the capturer's CPU
#     (utime+stime from /proc/PID/stat);
#   - catch-up: a capturer reading the whole log from its first line: the time until every
#     line is delivered (dispatcher.processed), or the lines delivered at REOPEN_CATCHUP_LIMIT
#     (default 90 s).
# Verdicts against the targets: dockerd CPU <= 0.5 s and capturer CPU <= 0.5 s over the window,
# the backlog read in full.
#
#   LOGCAP_DOCKER_DIR=/tmp/lcd-x bash scripts/bench/reopen_cost.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LINES="${REOPEN_LINES:-1500000}"
WINDOW="${REOPEN_WINDOW_SECONDS:-30}"
LIMIT="${REOPEN_CATCHUP_LIMIT:-90}"
PORT="${REOPEN_API_PORT:-18403}"
NAME="logcap-bench-reopen-$$"
ENGINE_SH="$ROOT/scripts/docker-engine.sh"

need_tools
log "building (release): log_capturer"
(cd "$ROOT" && cargo build --release -q --bin log_capturer)
machine
was_up=0
bash "$ENGINE_SH" status >/dev/null 2>&1 && was_up=1
DSOCK="$(bash "$ENGINE_SH" start | tail -n1)"
DPID="$(tr -dc '0-9' <"${LOGCAP_DOCKER_DIR:-/tmp/logcap-docker}/docker.pid")"
dk() { docker -H "unix://$DSOCK" "$@"; }
CAP_PID=""
end() {
    [[ -n "$CAP_PID" ]] && kill "$CAP_PID" 2>/dev/null || true
    dk rm -f "$NAME" >/dev/null 2>&1 || true
    [[ $was_up == 1 ]] || bash "$ENGINE_SH" stop >/dev/null 2>&1 || true
    cleanup
}
trap end EXIT
SOCK="$DSOCK"

# The log: LINES lines of 100 bytes (a 94-character message and the number), then quiet.
MSG="$(printf 'reopen-cost-%082d' 0)"
t0=$(date +%s.%N)
dk run -d --network none --name "$NAME" local/busybox:latest \
    sh -c "yes $MSG | head -n $LINES; echo last-line; exec sleep 100000" >/dev/null
want=$((LINES + 1))
LOGFILE="$(dk inspect -f '{{.LogPath}}' "$NAME")"
while [[ "$(dk logs --tail 1 "$NAME" 2>/dev/null)" != "last-line" ]]; do sleep 0.5; done
t1=$(date +%s.%N)
size_mb=$(( $(stat -c %s "$LOGFILE") / 1048576 ))
log "log written: $want lines, ${size_mb} MB in $(python3 -c "print(f'{$t1-$t0:.1f}')") s"

processed() {
    curl -s --max-time 2 "http://127.0.0.1:$PORT/stats" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["dispatcher"]["processed"])' 2>/dev/null || echo 0
}
capture_stat() {
    curl -s --max-time 2 "http://127.0.0.1:$PORT/stats" |
        python3 -c "import json,sys; print(json.load(sys.stdin)['capture'].get('$1', 'NA'))" 2>/dev/null || echo NA
}
wait_api() {
    local i
    for i in $(seq 1 100); do
        curl -s --max-time 1 "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "the capturer's API did not come up: $(tail -n 5 "$WORK/err")"
    exit 1
}
# start_capturer MODE FROM: MODE on|off (LOGCAP_REOPEN_WINDOW), FROM created|now.
start_capturer() {
    rm -rf "$WORK/positions"
    write_config "$WORK/cfg.yaml" "  include_names: [\"$NAME\"]
  new_containers_from: \"$2\"
  stream_rotation_interval: \"5s\"" "$PORT"
    LOGCAP_REOPEN_WINDOW="$1" "$BIN" --config "$WORK/cfg.yaml" >"$WORK/out" 2>"$WORK/err" &
    CAP_PID=$!
    wait_api
}
stop_capturer() {
    kill -TERM "$CAP_PID" 2>/dev/null || true
    wait "$CAP_PID" 2>/dev/null || true
    CAP_PID=""
}

# dockerd keeps decoding for a `since` request whose client is gone (it only notices when it
# has a line to send): wait until it is idle (under 5% of a core over a second, 120 s at most)
# so that one phase's scans are not billed to the next.
wait_dockerd_idle() {
    local i a b
    for i in $(seq 1 120); do
        a=$(cpu_ticks "$DPID"); sleep 1; b=$(cpu_ticks "$DPID")
        (( (b - a) * 100 < 5 * CLK_TCK )) && { log "dockerd idle after ${i} s"; return 0; }
    done
    log "dockerd still busy after 120 s: the next figures include its earlier work"
}

declare -A R
# After first: the "before" catch-up leaves dockerd decoding for clients that are gone.
for mode in on off; do
    label=$([[ $mode == off ]] && echo before || echo after)
    wait_dockerd_idle
    log "$label: quiet window (${WINDOW} s, rotation 5 s)"
    start_capturer "$mode" now
    sleep 5
    c0=$(cpu_ticks "$CAP_PID"); d0=$(cpu_ticks "$DPID"); s0=$(date +%s.%N)
    sleep "$WINDOW"
    c1=$(cpu_ticks "$CAP_PID"); d1=$(cpu_ticks "$DPID"); s1=$(date +%s.%N)
    R[$label.rot]=$(capture_stat rotations)
    R[$label.probes]=$(capture_stat stream_probes)
    stop_capturer
    R[$label.cap]=$(python3 -c "print(f'{($c1-$c0)/$CLK_TCK:.2f}')")
    R[$label.dockerd]=$(python3 -c "print(f'{($d1-$d0)/$CLK_TCK:.2f}')")
    R[$label.wall]=$(python3 -c "print(f'{$s1-$s0:.1f}')")

    wait_dockerd_idle
    log "$label: catch-up from the first line (limit ${LIMIT} s)"
    start_capturer "$mode" created
    s0=$(date +%s.%N); d0=$(cpu_ticks "$DPID")
    got=0
    while :; do
        got=$(processed)
        el=$(python3 -c "print($(date +%s.%N)-$s0)")
        if (( got >= want )) || python3 -c "import sys; sys.exit(0 if $el >= $LIMIT else 1)"; then break; fi
        sleep 0.5
    done
    d1=$(cpu_ticks "$DPID")
    R[$label.catch_lines]=$got
    R[$label.catch_secs]=$(python3 -c "print(f'{$el:.1f}')")
    R[$label.catch_dockerd]=$(python3 -c "print(f'{($d1-$d0)/$CLK_TCK:.1f}')")
    R[$label.catch_rot]=$(capture_stat rotations)
    R[$label.catch_opened]=$(capture_stat streams_opened)
    stop_capturer
done

verdict() { python3 -c "import sys; sys.exit(0 if $1 else 1)" && echo PASS || echo FAIL; }
echo
echo "reopen cost: ${want} lines, ${size_mb} MB json-file, stream_rotation_interval 5s"
printf '%-7s %-34s %-34s %s\n' "" "quiet window: dockerd CPU / capturer CPU" "catch-up: lines / time / dockerd CPU" "rotations (window; catch-up), probes, streams opened"
for label in before after; do
    printf '%-7s %-34s %-34s %s\n' "$label" \
        "${R[$label.dockerd]} s / ${R[$label.cap]} s over ${R[$label.wall]} s" \
        "${R[$label.catch_lines]} / ${R[$label.catch_secs]} s / ${R[$label.catch_dockerd]} s" \
        "${R[$label.rot]}; ${R[$label.catch_rot]}, ${R[$label.probes]}, ${R[$label.catch_opened]}"
done
echo "same-run ratios (after/before): dockerd CPU $(python3 -c "b=${R[before.dockerd]}; a=${R[after.dockerd]}; print(f'{a/b:.3f}' if b else 'n/a')"), capturer CPU $(python3 -c "b=${R[before.cap]}; a=${R[after.cap]}; print(f'{a/b:.3f}' if b else 'n/a')")"
echo "verdict dockerd CPU <= 0.5 s over the window (after): $(verdict "${R[after.dockerd]} <= 0.5")"
echo "verdict capturer CPU <= 0.5 s over the window (after): $(verdict "${R[after.cap]} <= 0.5")"
echo "verdict backlog read in full under 5 s rotation (after): $(verdict "${R[after.catch_lines]} >= $want")"
echo "(before: backlog $(verdict "${R[before.catch_lines]} >= $want"), dockerd CPU $(verdict "${R[before.dockerd]} <= 0.5"))"
