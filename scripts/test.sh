#!/usr/bin/env bash
# Run every test of log_capturer: `bash scripts/test.sh [extra cargo test args]`
#
# 1. starts the private Docker engine (scripts/docker-engine.sh; installs docker.io and
#    busybox-static with apt-get the first time), exports LOGCAP_DOCKER_SOCK and DOCKER_HOST;
# 2. runs `cargo test --all-targets` (lib, bins, tests/, and the benches run once
#    in test mode); extra arguments go to cargo test, e.g. `bash scripts/test.sh -- --nocapture`;
# 3. stops the engine on exit, whatever happened (set LOGCAP_KEEP_ENGINE=1 to leave it running).
# Exits with cargo's status (or non-zero if the engine could not start or stop).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ENGINE=scripts/docker-engine.sh

phase() { printf '\n==== %s ====\n' "$*"; }

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
    phase "test.sh done: exit $rc"
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

phase "cargo test --all-targets $*"
cargo test --all-targets "$@"
