#!/usr/bin/env bash
# The Go capturer's leak, replayed: `bash scripts/soak.sh [MINUTES] [ROTATION]` (default 5, 1s).
#
# 8 containers printing a line on stdout and one on stderr every 100 ms, the capturer rotating
# every stream every ROTATION (the Go version leaked a goroutine per rotation: +32/min with 8
# containers at 30 s). scripts/monitor_leaks.sh samples threads, io ops in flight, streams, fds
# and RSS for MINUTES and prints its verdict; then the capturer is stopped and every file it
# wrote is checked against `docker logs`: each line exactly once, in order, per stream.
# Uses the private engine of scripts/docker-engine.sh (started, and stopped again, if needed).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
MINUTES="${1:-5}"
ROTATION="${2:-1s}"
ENGINE=scripts/docker-engine.sh
WORK="$(mktemp -d /tmp/logcap-soak.XXXXXX)"
PORT="${LOGCAP_SOAK_PORT:-18409}"
NAMES=(soak-1 soak-2 soak-3 soak-4 soak-5 soak-6 soak-7 soak-8)
STARTED_ENGINE=0
PID=""

phase() { printf '\n==== %s ====\n' "$*"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n "$PID" ]] && kill -TERM "$PID" 2>/dev/null || true
    [[ -n "${SOCK:-}" ]] && docker -H "unix://$SOCK" rm -f "${NAMES[@]}" >/dev/null 2>&1 || true
    [[ $STARTED_ENGINE == 1 ]] && bash "$ENGINE" stop || true
    echo "soak.sh: files kept in $WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

phase "building log_capturer (release)"
cargo build --release
BIN=target/release/log_capturer

phase "Docker engine and 8 containers"
if ! bash "$ENGINE" status >/dev/null 2>&1; then
    STARTED_ENGINE=1
fi
SOCK="$(bash "$ENGINE" start | tail -n 1)"
for n in "${NAMES[@]}"; do
    docker -H "unix://$SOCK" rm -f "$n" >/dev/null 2>&1 || true
    # shellcheck disable=SC2016  # the $ expressions are for the container's shell
    docker -H "unix://$SOCK" run -d --name "$n" --network none local/busybox:latest sh -c \
        'i=0; while true; do i=$((i+1)); echo "out $i"; echo "err $i" >&2; usleep 100000; done' \
        >/dev/null
done

cat >"$WORK/config.yaml" <<EOF
app: { log_level: info }
server: { enabled: true, host: 127.0.0.1, port: $PORT }
metrics: { enabled: false }
container_monitor:
  socket_path: "unix://$SOCK"
  include_names: ["soak-"]
  stream_rotation_interval: "$ROTATION"
dispatcher: { queue_size: 20000, batch_size: 500, batch_timeout: "200ms" }
positions: { directory: "$WORK/positions", flush_interval: "1s" }
sinks:
  local_file: { enabled: true, directory: "$WORK/out", filename_pattern: "{nomedocontainer}.log", output_format: json }
  loki: { enabled: false }
EOF

phase "capturer running, rotation every $ROTATION, sampled for $MINUTES min"
"$BIN" --config "$WORK/config.yaml" 2>"$WORK/capturer.log" &
PID=$!
for _ in $(seq 50); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health')" \
        2>/dev/null && break
    sleep 0.2
done
verdict=0
bash scripts/monitor_leaks.sh "$MINUTES" 15 "http://127.0.0.1:$PORT" "$PID" || verdict=$?

phase "stopping the capturer"
kill -TERM "$PID"
wait "$PID"
PID=""
tail -n 1 "$WORK/capturer.log"

phase "every line exactly once, in order, against docker logs"
python3 - "$SOCK" "$WORK/out" "${NAMES[@]}" <<'PY'
import collections, json, subprocess, sys
sock, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
total, bad = 0, 0
for name in names:
    got = collections.defaultdict(list)
    with open(f"{out}/{name}.log") as f:
        for line in f:
            entry = json.loads(line)
            got[entry["labels"]["stream"]].append(entry["message"])
    logs = subprocess.run(["docker", "-H", f"unix://{sock}", "logs", name],
                          capture_output=True, text=True, check=True)
    want = {"stdout": logs.stdout.splitlines(), "stderr": logs.stderr.splitlines()}
    for stream in ("stdout", "stderr"):
        lines = got[stream]
        total += len(lines)
        if want[stream][: len(lines)] != lines:
            bad += 1
            print(f"{name} {stream}: {len(lines)} lines are not the start of docker logs")
print(f"{total} lines in {len(names)} containers: "
      + ("exactly once and in order" if bad == 0 else f"{bad} streams differ"))
sys.exit(1 if bad else 0)
PY
exit "$verdict"
