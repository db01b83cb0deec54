#!/usr/bin/env bash
# Run every test of log_capturer: `bash scripts/test.sh [extra cargo test args]`
#
# 1. starts the private Docker engine (scripts/docker-engine.sh; installs docker.io and
#    busybox-static with apt-get the first time), exports LOGCAP_DOCKER_SOCK and DOCKER_HOST;
# 2. runs `cargo test --all-targets --no-fail-fast` (lib, bins, tests/, and the benches run once
#    in test mode): a failing target does not keep the others from running. Extra arguments go
#    to cargo test, e.g. `bash scripts/test.sh -- --nocapture`;
# 3. stops the engine on exit, whatever happened (set LOGCAP_KEEP_ENGINE=1 to leave it running);
# 4. ends with one line per test target (from cargo's `Running ...` / `test result:` pairs; a
#    target that printed no result, e.g. one that crashed, shows as NO RESULT) and a last line
#    in cargo's own form, `test result: ok. N passed; 0 failed; ...` or `test result: FAILED. ...`.
# Exits with cargo's status (or non-zero if the engine could not start or stop, or a target
# printed no result).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ENGINE=scripts/docker-engine.sh

phase() { printf '\n==== %s ====\n' "$*"; }

OUT=""

# One line per target, then the totals in cargo's form; non-zero when anything failed or a
# target printed no result.
summarize() {
    [[ -n "$OUT" && -s "$OUT" ]] || return 0
    phase "summary per test target"
    grep -h '^config golden tests:' "$OUT" || true
    awk '
        function flush() {
            if (target != "") { printf "  %-10s %s\n", "NO RESULT", target; missing++ }
        }
        /^ *Running / {
            flush()
            line = $0; sub(/^ *Running (unittests )?/, "", line); sub(/ \(.*$/, "", line)
            target = line; next
        }
        /^test result: / && target != "" {
            verdict = ($3 == "ok.") ? "ok" : "FAILED"
            if (verdict != "ok") failed_targets++
            r = $0; sub(/^test result: (ok|FAILED)\. /, "", r)
            printf "  %-10s %-34s %s\n", verdict, target, r
            n = split(r, parts, "; ")
            for (i = 1; i <= n; i++) {
                split(parts[i], kv, " ")
                sums[kv[2]] += kv[1]
            }
            targets++; target = ""
        }
        END {
            flush()
            bad = failed_targets + missing
            printf "test result: %s. %d passed; %d failed; %d ignored; %d measured; %d filtered out; %d targets, %d failed, %d without result\n",
                (bad ? "FAILED" : "ok"), sums["passed"], sums["failed"], sums["ignored"],
                sums["measured"], sums["filtered"], targets + missing, failed_targets, missing
            exit(bad ? 1 : 0)
        }' "$OUT"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ "${LOGCAP_KEEP_ENGINE:-0}" == 1 ]]; then
        phase "leaving Docker engine running (LOGCAP_KEEP_ENGINE=1)"
    else
        phase "stopping Docker engine"
        if ! bash "$ENGINE" stop; then
            echo "test.sh: stopping the Docker engine failed" >&2
            [[ $rc != 0 ]] || rc=1
        fi
    fi
    phase "test.sh done: exit $rc before the summary"
    if ! summarize && [[ $rc == 0 ]]; then rc=1; fi
    [[ -z "$OUT" ]] || rm -f "$OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

phase "starting private Docker engine"
t0=$SECONDS
SOCK="$(bash "$ENGINE" start | tail -n 1)"
[[ -S "$SOCK" ]] || { echo "test.sh: engine start gave no socket ('$SOCK')" >&2; exit 1; }
export LOGCAP_DOCKER_SOCK="$SOCK"
export DOCKER_HOST="unix://$SOCK"
echo "LOGCAP_DOCKER_SOCK=$LOGCAP_DOCKER_SOCK (engine ready after $((SECONDS - t0))s)"

phase "toolchain"
cargo --version
rustc --version

phase "cargo test --all-targets --no-fail-fast $*"
OUT="$(mktemp /tmp/logcap-test-output.XXXXXX)"
set +e
cargo test --all-targets --no-fail-fast "$@" 2>&1 | tee "$OUT"
rc=${PIPESTATUS[0]}
set -e
exit "$rc"
