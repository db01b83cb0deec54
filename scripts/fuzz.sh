#!/usr/bin/env bash
# Long runs of the fuzz harnesses in tests/fuzz.rs (proptest; cargo-fuzz needs nightly):
# FUZZ_CASES cases per target (default 100000), release build. A failure prints the minimal
# input found; the test command runs the same harnesses with 200 cases each.
#
#   bash scripts/fuzz.sh [CASES] [FILTER]     e.g. bash scripts/fuzz.sh 1000000 log_stream
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CASES="${1:-${FUZZ_CASES:-100000}}"
FILTER="${2:-}"
start=$(date +%s)
FUZZ_CASES="$CASES" cargo test --release --test fuzz -- ${FILTER:+"$FILTER"} --test-threads 2
echo "fuzz: $CASES cases per target in $(( $(date +%s) - start )) s, no panic"
