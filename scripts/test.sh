#!/usr/bin/env bash
# Run every test of log_capturer: `bash scripts/test.sh [extra cargo test args]`
#
# 1. starts the private Docker engine (scripts/docker-engine.sh; installs docker.io and
#    busybox-static with apt-get the first time), exports LOGCAP_DOCKER_SOCK and DOCKER_HOST;
# 2. runs `cargo test --all-targets --all-features --no-fail-fast` (lib, bins, tests/, and the benches run once
#    in test mode): a failing target does not keep the others from running. Extra arguments go
#    to cargo test, e.g. `bash scripts/test.sh -- --nocapture`;
# 3. stops the engine on exit, whatever happened (set LOGCAP_KEEP_ENGINE=1 to leave it running);
# 4. ends with one line per test target (from cargo's `Running ...` / `test result:` pairs; a
#    target without a libtest summary, the criterion benches, is judged by cargo's list of
#    failed targets) and a last line in cargo's own form, `test result: ok. N passed; 0 failed;
#    ...` or `test result: FAILED. ...`.
# Exits with cargo's status (or non-zero if the engine could not start or stop, or the
# summary found a failed target).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ENGINE=scripts/docker-engine.sh

phase() { printf '\n==== %s ====\n' "$*"; }

OUT=""

# One line per target, then the totals in cargo's form. A target that printed no libtest
# summary (the criterion benches, harness = false) is judged by cargo's own list of failed
# targets. $1: cargo's exit status. Non-zero when anything failed.
summarize() {
    [[ -n "$OUT" && -s "$OUT" ]] || return 0
    phase "summary per test target"
    grep -h '^config golden tests:' "$OUT" || true
    awk -v cargo_rc="${1:-0}" '
        # cargo names a failed target by its flag: `--test x`, `--bench x`, `--lib`, `--bin x`.
        function target_of(flag,    parts) {
            split(flag, parts, " ")
            if (parts[1] == "--lib") return "src/lib.rs"
            if (parts[1] == "--test") return "tests/" parts[2] ".rs"
            if (parts[1] == "--bench") return "benches/" parts[2] ".rs"
            if (parts[1] == "--example") return "examples/" parts[2] ".rs"
            if (parts[1] == "--bin") return parts[2] == "log_capturer" ? "src/main.rs" : "src/bin/" parts[2] ".rs"
            return flag
        }
        function mark(line,    flag) {
            flag = line; sub(/^[^`]*`/, "", flag); sub(/`.*$/, "", flag)
            failed_by_cargo[target_of(flag)] = 1
        }
        /^ *Running / {
            t = $0; sub(/^ *Running (unittests )?/, "", t); sub(/ \(.*$/, "", t)
            order[++n] = t; current = t; next
        }
        /^test result: / && current != "" {
            r = $0; sub(/^test result: (ok|FAILED)\. /, "", r)
            result[current] = r; verdict[current] = ($3 == "ok.") ? "ok" : "FAILED"
            k = split(r, parts, "; ")
            for (i = 1; i <= k; i++) { split(parts[i], kv, " "); sums[kv[2]] += kv[1] }
            current = ""; next
        }
        /^error: test failed, to rerun pass `/ { mark($0); next }
        /^error: [0-9]+ targets failed:/ { in_list = 1; next }
        in_list && /^ +`--/ { mark($0); next }
        { in_list = 0 }
        END {
            for (i = 1; i <= n; i++) {
                t = order[i]
                if (t in result) {
                    v = verdict[t]; detail = result[t]
                    if (t in failed_by_cargo) v = "FAILED"
                } else if (t in failed_by_cargo) {
                    v = "FAILED"; detail = "no libtest summary; cargo reports it failed"
                } else {
                    v = "ok"; detail = "ran without a libtest summary (harness = false)"; plain++
                }
                if (v != "ok") bad++
                printf "  %-7s %-34s %s\n", v, t, detail
            }
            failed = (bad > 0 || cargo_rc != 0)
            printf "test result: %s. %d passed; %d failed; %d ignored; %d measured; %d filtered out; %d targets, %d failed (cargo exit %d)\n",
                (failed ? "FAILED" : "ok"), sums["passed"], sums["failed"], sums["ignored"],
                sums["measured"], sums["filtered"], n, bad, cargo_rc
            exit(failed ? 1 : 0)
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
    # No CARGO_RC with an output file: cargo was interrupted, not finished.
    if ! summarize "${CARGO_RC:-130}" && [[ $rc == 0 ]]; then rc=1; fi
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

# Debian's prometheus and promtool, installed when missing, for tests/prometheus.rs.
phase "prometheus"
bash scripts/prometheus.sh install

phase "toolchain"
cargo --version
rustc --version

phase "cargo test --all-targets --all-features --no-fail-fast $*"
OUT="$(mktemp /tmp/logcap-test-output.XXXXXX)"
set +e
cargo test --all-targets --all-features --no-fail-fast "$@" 2>&1 | tee "$OUT"
CARGO_RC=${PIPESTATUS[0]}
set -e
exit "$CARGO_RC"
