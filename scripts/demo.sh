#!/usr/bin/env bash
# Run log_capturer on a real workload: `bash scripts/demo.sh [SECONDS]` (default 20).
#
# Engine: LOGCAP_DOCKER_SOCK, else DOCKER_HOST (unix://...), else /var/run/docker.sock, if one
# answers `docker version`; otherwise the private engine of scripts/docker-engine.sh is started
# and stopped again on exit.
# Workload: three containers (--network none), removed on exit:
#   logcap-demo-1  a numbered line on stdout every 100 ms
#   logcap-demo-2  stdout and stderr alternately, every 100 ms
#   logcap-demo-3  a TTY container (-t) printing a numbered line every 200 ms
# (on an engine that is not ours they need local/busybox:latest or busybox:latest to be there;
# without either, the capturer just reads whatever that engine runs).
# Then: cargo build --release, and target/release/log_capturer --config configs/demo.yaml
# --docker-socket SOCK for SECONDS
# seconds (ended by SIGINT), its stdout saved to demo-output/capture.jsonl, its stderr to
# demo-output/capturer.log, and a count of lines per container printed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ENGINE=scripts/docker-engine.sh
DURATION="${1:-20}"
[[ "$DURATION" =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
OUT=demo-output
DEMO_NAMES=(logcap-demo-1 logcap-demo-2 logcap-demo-3)

phase() { printf '\n==== %s ====\n' "$*"; }

docker_cli() {
    if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; else command -v docker || true; fi
}

# answers SOCKET_PATH: true if a Docker engine answers there.
answers() {
    local cli
    cli="$(docker_cli)"
    [[ -n "$cli" && -S "$1" ]] && timeout 10 "$cli" -H "unix://$1" version >/dev/null 2>&1
}

SOCK=""
STARTED_ENGINE=0
DOCKER=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ ${#DOCKER[@]} -gt 0 ]] && [[ -n "$SOCK" ]] && answers "$SOCK"; then
        phase "removing demo containers"
        "${DOCKER[@]}" rm -f "${DEMO_NAMES[@]}" >/dev/null 2>&1 || true
    fi
    if [[ $STARTED_ENGINE == 1 ]]; then
        phase "stopping private Docker engine"
        bash "$ENGINE" stop || rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

phase "building log_capturer (release)"
cargo build --release
BIN=target/release/log_capturer
[[ -x "$BIN" ]] || { echo "demo.sh: $BIN was not built" >&2; exit 1; }

phase "finding a Docker engine"
candidates=()
[[ -n "${LOGCAP_DOCKER_SOCK:-}" ]] && candidates+=("$LOGCAP_DOCKER_SOCK")
[[ "${DOCKER_HOST:-}" == unix://* ]] && candidates+=("${DOCKER_HOST#unix://}")
candidates+=(/var/run/docker.sock)
for c in "${candidates[@]}"; do
    if answers "$c"; then SOCK="$c"; break; fi
done
if [[ -z "$SOCK" ]] && bash "$ENGINE" status >/dev/null 2>&1; then
    # The private engine is already up (tests, an earlier demo): use it, and leave it up.
    SOCK="$(bash "$ENGINE" env | sed -n 's/^export LOGCAP_DOCKER_SOCK=//p')"
fi
if [[ -n "$SOCK" ]]; then
    echo "using the engine answering on $SOCK"
else
    echo "no engine answers (${candidates[*]}); starting the private one"
    STARTED_ENGINE=1
    SOCK="$(bash "$ENGINE" start | tail -n 1)"
fi
DOCKER=("$(docker_cli)" -H "unix://$SOCK")
"${DOCKER[@]}" version --format 'engine: Docker {{.Server.Version}}, API {{.Server.APIVersion}}'

phase "starting demo containers"
IMAGE=""
for i in local/busybox:latest busybox:latest; do
    if "${DOCKER[@]}" image inspect "$i" >/dev/null 2>&1; then IMAGE="$i"; break; fi
done
# shellcheck disable=SC2016  # the $ expressions are for the container's shell
if [[ -z "$IMAGE" ]]; then
    echo "no busybox image on this engine: no demo workload, capturing what already runs"
else
    "${DOCKER[@]}" rm -f "${DEMO_NAMES[@]}" >/dev/null 2>&1 || true
    run() { "${DOCKER[@]}" run -d --network none --name "$@" >/dev/null && echo "started $1"; }
    run logcap-demo-1 "$IMAGE" sh -c \
        'i=0; while :; do i=$((i+1)); echo "demo-1 stdout line $i"; sleep 0.1; done'
    run logcap-demo-2 "$IMAGE" sh -c \
        'i=0; while :; do i=$((i+1)); if [ $((i % 2)) = 1 ]; then echo "demo-2 stdout line $i"; else echo "demo-2 stderr line $i" >&2; fi; sleep 0.1; done'
    run logcap-demo-3 -t "$IMAGE" sh -c \
        'i=0; while :; do i=$((i+1)); echo "demo-3 tty line $i"; sleep 0.2; done'
fi

phase "running log_capturer --config configs/demo.yaml --docker-socket $SOCK for ${DURATION}s"
mkdir -p "$OUT"
set +e
timeout --signal=INT --kill-after=10 "$DURATION" \
    "$BIN" --config configs/demo.yaml --docker-socket "$SOCK" 2> >(tee "$OUT/capturer.log" >&2) |
    tee "$OUT/capture.jsonl"
statuses=("${PIPESTATUS[@]}")
set -e
rc=${statuses[0]}
case $rc in
    0 | 124 | 130) echo "log_capturer ended (exit $rc): ok" ;;
    *)
        echo "demo.sh: log_capturer failed with exit $rc (stderr in $OUT/capturer.log)" >&2
        exit "$rc"
        ;;
esac

phase "summary of $OUT/capture.jsonl"
if command -v python3 >/dev/null 2>&1; then
    python3 - "$OUT/capture.jsonl" <<'PY'
import collections, json, sys

def name_of(obj):
    return (obj.get("labels") or {}).get("container_name") or obj.get("source_id") or "?"

per = collections.Counter()
streams = collections.defaultdict(collections.Counter)
bad = total = 0
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for line in f:
        if not line.strip():
            continue
        total += 1
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(obj, dict):
            bad += 1
            continue
        n = name_of(obj)
        per[n] += 1
        streams[n][str((obj.get("labels") or {}).get("stream", "?"))] += 1
print(f"{total} lines, {bad} not JSON objects")
for n, c in sorted(per.items()):
    detail = ", ".join(f"{s}={k}" for s, k in sorted(streams[n].items()))
    print(f"  {n:40} {c:8}   ({detail})")
PY
else
    echo "$(wc -l <"$OUT/capture.jsonl") lines"
    for n in "${DEMO_NAMES[@]}"; do
        echo "  $n: $(grep -c "$n" "$OUT/capture.jsonl" || true)"
    done
fi
