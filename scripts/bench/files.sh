#!/usr/bin/env bash
# File monitoring (issue 13): what tailing costs the capturer.
#
# 1. A FILE_MB (default 1024) MB log file read from its start: CPU-s per GB of the capturer
#    (`--once`, file monitor on, blackhole sink), against `cat FILE > /dev/null` (the floor:
#    reading alone) and `tail -c +1 -F FILE > /dev/null` (a tailer that does not split lines),
#    in the same run, page cache warm for all three.
# 1b. The same file through processing: a no-op step, and `multiline` (a group per line, or
#    groups of 128 lines), against processing off.
# 2. FILES (default 100) files x RATE (default 1000) lines/s each for SECONDS (default 20): the
#    capturer following them (inotify), CPU per line and RSS at the end.
#
# Usage: bash scripts/bench/files.sh   (env FILE_MB, FILES, RATE, SECONDS_RUN, LOGCAP_BIN)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FILE_MB="${FILE_MB:-1024}"
FILES="${FILES:-100}"
RATE="${RATE:-1000}"
SECONDS_RUN="${SECONDS_RUN:-20}"

need_tools
if [[ -z "${LOGCAP_BIN:-}" ]]; then
    log "building (release): log_capturer"
    (cd "$ROOT" && cargo build --release -q --bin log_capturer)
fi
machine

# config FILE PIPELINE [PORT]: file monitor on, Docker off, blackhole sink.
files_config() {
    local file="$1" pipeline="$2" port="${3:-}"
    local server="server: {enabled: false}"
    [[ -n "$port" ]] && server="server: {enabled: true, host: 127.0.0.1, port: $port}"
    cat >"$file" <<YAML
app: {log_level: info, log_format: text}
$server
metrics: {enabled: false}
container_monitor: {enabled: false}
file_monitor_service: {enabled: true, pipeline_file: "$pipeline"}
dispatcher: {queue_size: 50000, batch_size: 1000, batch_timeout: 200ms}
sinks:
  local_file: {enabled: false}
  loki: {enabled: false}
  blackhole: {enabled: true}
positions:
  directory: "$WORK/positions-$(basename "$file")"
YAML
}

# ---------------------------------------------------------------------------------------------
# 1. One big file from its start.
BIG="$WORK/big.log"
log "writing a ${FILE_MB} MB log file"
python3 - "$BIG" "$FILE_MB" <<'PY'
import sys
path, mb = sys.argv[1], int(sys.argv[2])
target = mb * 1024 * 1024
with open(path, "w") as f:
    i, size, chunk = 0, 0, []
    while size < target:
        for _ in range(10000):
            i += 1
            line = f"2026-11-30T03:00:00.{i % 1000000:06d}Z INFO request id={i} path=/api/v1/items/{i % 977} status=200 bytes={i % 65536} took={i % 250}ms\n"
            chunk.append(line)
            size += len(line)
        f.write("".join(chunk))
        chunk.clear()
PY
BIG_BYTES="$(stat -c %s "$BIG")"
BIG_LINES="$(wc -l <"$BIG")"
GB="$(python3 -c "print($BIG_BYTES / 2**30)")"
cat "$BIG" >/dev/null # page cache warm for everyone

# timed OUT CMD...: GNU time's "user sys wall maxrss_kib" of CMD in OUT (its last line).
timed() {
    local out="$1"
    shift
    /usr/bin/time -o "$out" -f "%U %S %e %M" "$@"
}
timed "$WORK/cat.time" cat "$BIG" >/dev/null
read -r c_u c_s c_e _ <"$WORK/cat.time"
CAT_CPU="$(python3 -c "print($c_u + $c_s)")"

tail -c +1 -F "$BIG" >/dev/null 2>&1 &
TAIL_PID=$!
start="$(date +%s.%N)"
while (( $(awk '/^rchar/ {print $2}' "/proc/$TAIL_PID/io") < BIG_BYTES )); do sleep 0.05; done
TAIL_CPU="$(python3 -c "print($(cpu_ticks "$TAIL_PID") / $CLK_TCK)")"
TAIL_WALL="$(python3 -c "import time; print(round(time.time() - $start, 2))")"
kill "$TAIL_PID"; wait "$TAIL_PID" 2>/dev/null || true

printf 'files:\n- path: %s\n  enabled: true\n' "$BIG" >"$WORK/big-pipeline.yml"
files_config "$WORK/big.yaml" "$WORK/big-pipeline.yml"
if ! timed "$WORK/lc.time" "$BIN" --config "$WORK/big.yaml" --once 2>"$WORK/big.log.err"; then
    log "the capturer failed:"; tail -5 "$WORK/big.log.err" >&2; exit 1
fi
read -r l_u l_s l_e l_m < <(tail -1 "$WORK/lc.time")
LC_CPU="$(python3 -c "print($l_u + $l_s)")"
read_lines="$(grep -o 'done: [0-9]* lines read' "$WORK/big.log.err" | awk '{print $2}')"
if [[ "$read_lines" != "$BIG_LINES" ]]; then
    log "capturer read ${read_lines:-?} lines of $BIG_LINES"; tail -5 "$WORK/big.log.err" >&2; exit 1
fi

echo
echo "== 1. ${FILE_MB} MB file ($BIG_LINES lines) from its start, page cache warm"
python3 - "$GB" "$CAT_CPU" "$c_e" "$TAIL_CPU" "$TAIL_WALL" "$LC_CPU" "$l_e" "$l_m" "$BIG_LINES" <<'PY'
import sys
gb, cat, cat_wall, tail, tail_wall, lc, lc_wall, lc_rss, lines = map(float, sys.argv[1:])
print(f"  cat > /dev/null        {cat / gb:6.2f} CPU-s/GB  wall {cat_wall:5.2f} s")
print(f"  tail -c +1 -F          {tail / gb:6.2f} CPU-s/GB  wall {tail_wall:5.2f} s")
print(f"  log_capturer --once    {lc / gb:6.2f} CPU-s/GB  wall {lc_wall:5.2f} s  max RSS {lc_rss / 1024:.0f} MiB"
      f"  ({lc / lines * 1e9:.0f} ns CPU per line, lines split, entries built, delivered)")
print(f"  ratio capturer/cat {lc / max(cat, 0.01):.1f}x, capturer/tail {lc / max(tail, 0.01):.1f}x")
verdict = "OK" if lc / gb < 5 else "SLOW"
print(f"  verdict: {verdict} (goal: under 5 CPU-s per GB; the floor is the kernel's copy)")
PY

# ---------------------------------------------------------------------------------------------
# 1b. The same file through processing: a pipeline of one no-op step (the cost of `apply` per
#     line), and `multiline` with every line a first line (a group per line: the grouper's
#     worst case per line) or none (groups of max_lines=128 lines joined), against processing
#     off, each twice, in this run.
ml_pipelines() {
    local name="$1" step="$2"
    cat >"$WORK/ml-$name.yaml" <<YAML
pipelines:
  - name: p
    steps:
      - $step
source_mapping:
  p: ["source_type:file"]
YAML
}
ml_pipelines noop "{name: noop, type: field_remove, config: {fields: [absent]}}"
ml_pipelines every "{name: join, type: multiline, config: {firstline: '^\\d{4}-', max_lines: 128, max_wait: 3s}}"
ml_pipelines none "{name: join, type: multiline, config: {firstline: '^NEVER', max_lines: 128, max_wait: 3s}}"
declare -A ML_CPU
for round in 1 2; do
    for mode in off noop every none; do
        files_config "$WORK/ml-$mode.cfg" "$WORK/big-pipeline.yml"
        if [[ "$mode" != off ]]; then
            printf 'processing: {enabled: true, pipelines_file: "%s"}\n' "$WORK/ml-$mode.yaml" >>"$WORK/ml-$mode.cfg"
        fi
        rm -rf "$WORK/positions-ml-$mode.cfg"
        timed "$WORK/ml.time" "$BIN" --config "$WORK/ml-$mode.cfg" --once 2>"$WORK/ml-$mode.err" ||
            { log "the capturer failed ($mode):"; tail -5 "$WORK/ml-$mode.err" >&2; exit 1; }
        read -r m_u m_s _ _ < <(tail -1 "$WORK/ml.time")
        ML_CPU[$mode]="${ML_CPU[$mode]:-} $(python3 -c "print($m_u + $m_s)")"
        delivered="$(grep -o 'done: [0-9]* lines read, [0-9]* delivered' "$WORK/ml-$mode.err" | awk '{print $5}')"
        want="$BIG_LINES"; [[ "$mode" == none ]] && want="$(( (BIG_LINES + 127) / 128 ))"
        if [[ "$delivered" != "$want" ]]; then
            log "$mode: ${delivered:-?} entries delivered, want $want"; exit 1
        fi
    done
done
echo
echo "== 1b. the same file through processing (CPU-s per GB, two runs each, same run)"
python3 - "$GB" "$BIG_LINES" "${ML_CPU[off]}" "${ML_CPU[noop]}" "${ML_CPU[every]}" "${ML_CPU[none]}" <<'PY'
import sys
gb, lines = float(sys.argv[1]), float(sys.argv[2])
runs = {k: [float(x) for x in v.split()] for k, v in zip(["off", "noop", "every", "none"], sys.argv[3:])}
off = min(runs["off"])
for k, label in [("off", "processing off"), ("noop", "one no-op step"),
                 ("every", "multiline, a group per line"), ("none", "multiline, 128-line groups")]:
    best = min(runs[k])
    print(f"  {label:30s} {' '.join(f'{c / gb:5.2f}' for c in runs[k])} CPU-s/GB"
          f"  {best / lines * 1e9:5.0f} ns/line  {best / off:4.2f}x off")
worst = min(runs["every"]) / gb
print(f"  verdict: {'OK' if worst < 10 else 'SLOW'} (goal: multiline's worst case under 10 CPU-s per GB,"
      " twice the plain read's goal)")
PY

# ---------------------------------------------------------------------------------------------
# 2. Many files written at a steady rate.
MANY="$WORK/many"
mkdir -p "$MANY"
printf 'directories:\n- path: %s\n  patterns: ["*.log"]\n  recursive: false\n  enabled: true\nmonitoring: {max_files: 10000}\n' "$MANY" >"$WORK/many-pipeline.yml"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
files_config "$WORK/many.yaml" "$WORK/many-pipeline.yml" "$PORT"
for i in $(seq 1 "$FILES"); do : >"$MANY/f$i.log"; done
"$BIN" --config "$WORK/many.yaml" 2>"$WORK/many.err" &
LC_PID=$!
for _ in $(seq 1 100); do grep -q "HTTP API listening" "$WORK/many.err" && break; sleep 0.1; done
python3 - "$MANY" "$FILES" "$RATE" "$SECONDS_RUN" <<'PY' &
import os, sys, time
d, n, rate, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fds = [os.open(f"{d}/f{i}.log", os.O_WRONLY | os.O_APPEND) for i in range(1, n + 1)]
tick, seq = 0.01, 0
per_tick = max(1, int(rate * tick))
end = time.time() + secs
nxt = time.time()
while time.time() < end:
    for fd in fds:
        buf = "".join(f"2026-11-30T03:00:00Z INFO line {seq + k} of a steady writer\n" for k in range(per_tick))
        os.write(fd, buf.encode())
    seq += per_tick
    nxt += tick
    time.sleep(max(0, nxt - time.time()))
print(seq * n, file=open(f"{d}/written", "w"))
PY
WRITER_PID=$!
t0="$(cpu_ticks "$LC_PID")"
wait "$WRITER_PID"
WRITTEN="$(cat "$MANY/written")"
for _ in $(seq 1 100); do
    got="$(curl -s "http://127.0.0.1:$PORT/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["files"]["lines_read"])')"
    [[ "$got" -ge "$WRITTEN" ]] && break
    sleep 0.1
done
t1="$(cpu_ticks "$LC_PID")"
RSS="$(rss_kib "$LC_PID")"
kill -TERM "$LC_PID"; wait "$LC_PID" || true
echo
echo "== 2. $FILES files x $RATE lines/s for ${SECONDS_RUN}s (inotify)"
python3 - "$t0" "$t1" "$CLK_TCK" "$WRITTEN" "$got" "$RSS" "$SECONDS_RUN" <<'PY'
import sys
t0, t1, tck, written, got, rss, secs = map(float, sys.argv[1:])
cpu = (t1 - t0) / tck
print(f"  lines written {written:.0f}, read {got:.0f}")
print(f"  capturer CPU {cpu:.2f} s over {secs:.0f} s ({cpu / secs * 100:.1f}% of a core),"
      f" {cpu / max(got, 1) * 1e9:.0f} ns per line; RSS {rss / 1024:.1f} MiB")
ok = got >= written and cpu / secs < 0.5
print(f"  verdict: {'OK' if ok else 'CHECK'} (goal: every line read, under half a core)")
PY
