# Shared by scripts/bench/*.sh: build, the synthetic server, capturer configs, figures.
# shellcheck shell=bash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# CARGO_TARGET_DIR (honoured by the scripts' cargo builds too) moves the release binaries.
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="${LOGCAP_BIN:-$TARGET/release/log_capturer}"
SRV="$TARGET/release/examples/fake_dockerd"
RAW="$TARGET/release/examples/bench_rawcopy"
BOL="$ROOT/benches/bollard_baseline/target/release/bollard_baseline"
RUNS="${BENCH_RUNS:-3}"
WORK="$(mktemp -d /tmp/logcap-bench.XXXXXX)"
SOCK="$WORK/d.sock"
SRV_PID=""

log() { printf '[bench] %s\n' "$*" >&2; }

cleanup() {
    if [[ -n "$SRV_PID" ]]; then kill "$SRV_PID" 2>/dev/null || true; wait "$SRV_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

need_tools() {
    command -v python3 >/dev/null || { log "python3 is needed"; exit 1; }
    if [[ ! -x /usr/bin/time ]]; then
        log "installing time (GNU time) with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q time >&2
    fi
}

build() {
    log "building (release): log_capturer, examples fake_dockerd + bench_rawcopy, bollard_baseline"
    (cd "$ROOT" && cargo build --release -q --bin log_capturer --example fake_dockerd --example bench_rawcopy)
    (cd "$ROOT" && cargo build --release -q --manifest-path benches/bollard_baseline/Cargo.toml)
}

machine() {
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r); load now:$(cut -d' ' -f1-3 /proc/loadavg)"
}

# start_server MODE ARGS...: the synthetic dockerd on $SOCK; sets SRV_PID and BODY_LEN.
start_server() {
    local mode="$1"
    shift
    rm -f "$SOCK"
    "$SRV" --socket "$SOCK" --mode "$mode" "$@" >"$WORK/srv.out" 2>"$WORK/srv.err" &
    SRV_PID=$!
    local i
    for i in $(seq 1 600); do
        if grep -q '^ready' "$WORK/srv.out" 2>/dev/null; then break; fi
        sleep 0.1
    done
    grep -q '^ready' "$WORK/srv.out" || { log "server did not start: $(cat "$WORK/srv.err")"; exit 1; }
    BODY_LEN="$(awk '/^ready/ {print $2}' "$WORK/srv.out")"
}

stop_server() {
    kill "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
}

# server_stat FIELD: a field of the server's GET /_bench/stats.
server_stat() {
    curl -s --max-time 5 --unix-socket "$SOCK" http://fake/_bench/stats | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"
}

# write_config FILE [EXTRA_CONTAINER_MONITOR_YAML] [SERVER_PORT]: only sinks.blackhole on.
write_config() {
    local file="$1" extra="${2:-}" port="${3:-}"
    local server="server: {enabled: false}"
    [[ -n "$port" ]] && server="server: {enabled: true, host: 127.0.0.1, port: $port}"
    cat >"$file" <<YAML
app: {log_level: info}
$server
metrics: {enabled: false}
container_monitor:
  socket_path: "unix://$SOCK"
$extra
sinks:
  local_file: {enabled: false}
  loki: {enabled: false}
  stdout: {enabled: false}
  blackhole: {enabled: true}
positions:
  directory: "$WORK/positions"
YAML
}

# cpu_ticks PID: utime+stime of a process (all threads), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
CLK_TCK="$(getconf CLK_TCK)"
