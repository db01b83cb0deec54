#!/usr/bin/env bash
# The HTTP API under load while the daemon captures (issue 12): log_capturer (release) reads
# 50 synthetic containers x 100 lines/s from examples/fake_dockerd, and API_CLIENTS clients
# (default 200) each keep a connection and alternate POST /api/v1/logs (a numbered line) and
# GET /health for API_SECONDS (default 20). Prints per-route p50/p99/max latency and the
# capturer's RSS (examples/api_load.rs); then SIGTERM, and every accepted line is looked up in
# what the local_file sink wrote: the verdict fails when one is missing or repeated.
#
#   bash scripts/bench/api_load.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CLIENTS="${API_CLIENTS:-200}"
SECS="${API_SECONDS:-20}"
# A free port: a fixed one may be another capturer's (the load must never hit that one).
PORT="${API_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

need_tools
log "building (release): log_capturer, examples fake_dockerd + api_load"
(cd "$ROOT" && cargo build --release -q --bin log_capturer --example fake_dockerd --example api_load)
machine
start_server steady --containers 50 --rate 100
cat >"$WORK/cfg.yaml" <<YAML
app: {log_level: info}
server: {enabled: true, host: 127.0.0.1, port: $PORT}
metrics: {enabled: false}
container_monitor:
  socket_path: "unix://$SOCK"
sinks:
  local_file: {enabled: true, directory: "$WORK/out"}
  loki: {enabled: false}
positions:
  directory: "$WORK/positions"
YAML
"$BIN" --config "$WORK/cfg.yaml" 2>"$WORK/capturer.log" &
CAP=$!
# A failed run must not leave the capturer behind.
end() {
    kill -TERM "$CAP" 2>/dev/null || true
    wait "$CAP" 2>/dev/null || true
    cleanup
}
trap end EXIT
for _ in $(seq 1 100); do
    kill -0 "$CAP" 2>/dev/null || break
    grep -q "HTTP API listening on 127.0.0.1:$PORT" "$WORK/capturer.log" && break
    sleep 0.1
done
if ! kill -0 "$CAP" 2>/dev/null || ! grep -q "HTTP API listening on 127.0.0.1:$PORT" "$WORK/capturer.log"; then
    log "the capturer is not serving on port $PORT:"
    tail -5 "$WORK/capturer.log" >&2
    exit 1
fi
"$ROOT/target/release/examples/api_load" --addr "127.0.0.1:$PORT" --clients "$CLIENTS" \
    --seconds "$SECS" --pid "$CAP" | tee "$WORK/load.out"
captured="$(curl -s "http://127.0.0.1:$PORT/stats" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("dispatcher", {}).get("processed", "?"))')"
kill -TERM "$CAP" 2>/dev/null || { log "the capturer had already exited:"; tail -5 "$WORK/capturer.log" >&2; }
wait "$CAP" || { log "capturer exit status $?"; tail -5 "$WORK/capturer.log" >&2; }
accepted="$(awk '/^accepted/ {print $2}' "$WORK/load.out")"
read -r total distinct < <(grep -rhoa 'api-load c[0-9]* n[0-9]*' "$WORK/out" | sort | uniq -c |
    awk '{t += $1; d++} END {print t + 0, d + 0}')
echo "lines delivered by the dispatcher during the run (containers + API): $captured"
echo "API lines accepted: $accepted; in the sink: $total ($distinct distinct)"
if [[ "$total" == "$accepted" && "$distinct" == "$accepted" ]]; then
    echo "verdict: PASS (no accepted line lost or repeated)"
else
    echo "verdict: FAIL (accepted $accepted, written $total, distinct $distinct)"
    exit 1
fi
