#!/usr/bin/env bash
# Every reader benchmark group, one after the other (about 15 minutes on 2 cores).
set -euo pipefail
D="$(dirname "${BASH_SOURCE[0]}")"
for g in bulk many_streams rotation_storm e2e_dockerd; do
    echo "=== $g"
    bash "$D/$g.sh"
done
