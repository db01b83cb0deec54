#!/usr/bin/env bash
# dockerd's own log rotation (--log-opt max-size=1m --log-opt max-file=3), real dockerd 20.10
# (scripts/docker-engine.sh): log_capturer (file sink) and `docker logs -f -t` follow the same
# container in the same run, and each one's output is checked against the numbered lines the
# container printed:
#   - paced: 100,000 lines at about 15,000 lines/s (100 lines, then usleep 5000);
#   - burst: 300,000 lines at once (`seq`), far faster than dockerd's follow reader.
# Per run and reader: lines lost (deleted by dockerd before a reader got them, or skipped by
# its follow reader), lines duplicated, the capturer's count of replayed lines dropped and of
# lines dockerd's follow reader skipped that a reopened stream recovered.
# Verdicts: the capturer never delivers a line twice; it loses no more than docker logs -f.
#
#   bash scripts/bench/docker_rotation.sh            # ROT_RUNS=2 runs of each writer
#   LOGCAP_BIN=target/debug/log_capturer bash scripts/bench/docker_rotation.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROT_RUNS="${ROT_RUNS:-2}"
ENGINE_SH="$ROOT/scripts/docker-engine.sh"
PORT="${ROT_API_PORT:-18403}"

if [[ -z "${LOGCAP_BIN:-}" ]]; then
    log "building (release): log_capturer"
    (cd "$ROOT" && cargo build --release -q --bin log_capturer)
fi
machine
was_up=0
bash "$ENGINE_SH" status >/dev/null 2>&1 && was_up=1
DSOCK="$(bash "$ENGINE_SH" start | tail -n1)"
dk() { docker -H "unix://$DSOCK" "$@"; }
PREFIX="logcap-bench-rot-$$-"
CAP_PID=""
FOLLOW_PID=""
end() {
    [[ -n "$CAP_PID" ]] && kill "$CAP_PID" 2>/dev/null && wait "$CAP_PID" 2>/dev/null
    [[ -n "$FOLLOW_PID" ]] && kill "$FOLLOW_PID" 2>/dev/null && wait "$FOLLOW_PID" 2>/dev/null
    dk ps -aq --filter "name=$PREFIX" | xargs -r docker -H "unix://$DSOCK" rm -f >/dev/null 2>&1
    [[ $was_up == 1 ]] || bash "$ENGINE_SH" stop || true
    cleanup
}
trap end EXIT

stats() {
    curl -s --max-time 2 "http://127.0.0.1:$PORT/stats" || echo '{}'
}
stat_field() { # SECTION KEY
    stats | python3 -c "import json,sys; print(json.load(sys.stdin).get('$1',{}).get('$2',0))" 2>/dev/null || echo 0
}

# run_one KIND N SCRIPT: one container, the capturer and docker logs -f; one result line.
run_one() {
    local kind="$1" n="$2" script="$3" name="${PREFIX}${1}-$RANDOM"
    rm -rf "$WORK/out" "$WORK/positions"
    cat >"$WORK/cfg.yaml" <<YAML
app: {log_level: info}
server: {enabled: true, host: 127.0.0.1, port: $PORT}
metrics: {enabled: false}
container_monitor:
  socket_path: "unix://$DSOCK"
  include_names: ["$name"]
  new_containers_from: "created"
dispatcher: {queue_size: 50000, batch_size: 1000, batch_timeout: "200ms"}
sinks:
  local_file: {enabled: true, directory: "$WORK/out", filename_pattern: "out.log", output_format: "json"}
  loki: {enabled: false}
positions:
  directory: "$WORK/positions"
  flush_interval: "1s"
YAML
    "$BIN" --config "$WORK/cfg.yaml" >"$WORK/cap.out" 2>"$WORK/cap.err" &
    CAP_PID=$!
    local i
    for i in $(seq 1 100); do curl -s --max-time 1 "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
    dk create --name "$name" --network none --log-opt max-size=1m --log-opt max-file=3 \
        local/busybox:latest sh -c "sleep 2; $script" >/dev/null
    dk start "$name" >/dev/null
    dk logs -f -t "$name" >"$WORK/docker.txt" 2>/dev/null &
    FOLLOW_PID=$!
    for i in $(seq 1 600); do
        [[ "$(dk inspect -f '{{.State.Status}}' "$name")" == exited ]] && break
        sleep 0.2
    done
    # Settled: everything read is delivered and the output has not grown for 3 s.
    local last=-1 same=0 now
    for i in $(seq 1 600); do
        now=$(wc -l <"$WORK/out/out.log" 2>/dev/null || echo 0)
        if [[ "$now" == "$last" && "$(stat_field capture lines_read)" == "$(stat_field dispatcher processed)" ]]; then
            same=$((same + 1))
            [[ $same -ge 15 ]] && break
        else
            same=0
        fi
        last=$now
        sleep 0.2
    done
    local replayed recovered
    replayed=$(stat_field capture lines_replayed)
    recovered=$(stat_field capture lines_recovered)
    kill -TERM "$CAP_PID"
    wait "$CAP_PID" || true
    CAP_PID=""
    wait "$FOLLOW_PID" || true
    FOLLOW_PID=""
    dk rm -f "$name" >/dev/null
    python3 - "$kind" "$n" "$replayed" "$recovered" "$WORK/out/out.log" "$WORK/docker.txt" <<'PY'
import json, sys
kind, n, replayed, recovered, ours, theirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
def tally(msgs):
    seen = {}
    for m in msgs:
        seen[m] = seen.get(m, 0) + 1
    want = {str(i) for i in range(1, n + 1)}
    return n - len(want & seen.keys()), sum(c - 1 for c in seen.values())
try:
    ours_msgs = [json.loads(l)["message"] for l in open(ours)]
except FileNotFoundError:
    ours_msgs = []
theirs_msgs = [l.rstrip("\n").split(" ", 1)[-1] for l in open(theirs)]
lost, dup = tally(ours_msgs)
dlost, ddup = tally(theirs_msgs)
print(f"{kind} {n} {lost} {dup} {replayed} {recovered} {dlost} {ddup}")
PY
}

RES="$WORK/results"
: >"$RES"
for run in $(seq 1 "$ROT_RUNS"); do
    log "run $run/$ROT_RUNS: paced (load:$(cut -d' ' -f1-3 /proc/loadavg))"
    run_one paced 100000 'b=0; while [ $b -lt 1000 ]; do seq $((b*100+1)) $((b*100+100)); usleep 5000; b=$((b+1)); done' >>"$RES"
    log "run $run/$ROT_RUNS: burst (load:$(cut -d' ' -f1-3 /proc/loadavg))"
    run_one burst 300000 'seq 1 300000' >>"$RES"
done

python3 - "$RES" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("\ndockerd's own rotation (max-size=1m, max-file=3), capturer and docker logs -f -t in the same run")
print(f"{'writer':<8}{'lines':>9}{'capturer lost':>15}{'dup':>6}{'replays dropped':>17}{'recovered':>11}{'docker logs lost':>18}{'dup':>8}")
ok_dup = ok_lost = True
for kind, n, lost, dup, rep, rec, dlost, ddup in rows:
    print(f"{kind:<8}{int(n):>9,}{int(lost):>15,}{int(dup):>6,}{int(rep):>17,}{int(rec):>11,}{int(dlost):>18,}{int(ddup):>8,}")
    ok_dup &= int(dup) == 0
    ok_lost &= int(lost) <= int(dlost)
print(f"verdict: no line delivered twice: {'PASS' if ok_dup else 'FAIL'}; "
      f"loses no more than docker logs -f: {'PASS' if ok_lost else 'FAIL'}")
PY
