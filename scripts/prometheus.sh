#!/usr/bin/env bash
# Prometheus and promtool for log_capturer's tests (tests/prometheus.rs) and alert rules
# (deploy/prometheus/).
#
# Usage: bash scripts/prometheus.sh install    # Debian's `prometheus` package, when missing
#        bash scripts/prometheus.sh check      # promtool check + test of deploy/prometheus/
#
# `install` needs root and apt. The package's post-install would start a system Prometheus
# through invoke-rc.d; a policy-rc.d that answers 101 ("action forbidden") is put in place for
# the install when the machine has none, and any Prometheus process that appeared during the
# install is stopped (by pid) afterwards, so nothing is left running. Idempotent.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[prometheus] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# PIDs of running prometheus binaries (by executable path, not by name).
prometheus_pids() {
    local p exe
    for p in /proc/[0-9]*; do
        exe="$(readlink "$p/exe" 2>/dev/null)" || continue
        [[ "$exe" == */bin/prometheus ]] && echo "${p#/proc/}"
    done
    return 0
}

cmd_install() {
    if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
        log "present: $(prometheus --version 2>&1 | head -n 1)"
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "prometheus is missing and installing it needs root: apt-get install prometheus"
    local before made_policy=0 rc=0
    before="$(prometheus_pids)"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    log "installing Debian's prometheus package with apt-get"
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q &&
            apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 prometheus
    } >&2 || rc=$?
    [[ $made_policy == 0 ]] || rm -f /usr/sbin/policy-rc.d
    local p
    for p in $(prometheus_pids); do
        if ! grep -qx "$p" <<<"$before"; then
            log "stopping the Prometheus the package started (pid $p)"
            kill -TERM "$p" 2>/dev/null || true
        fi
    done
    [[ $rc == 0 ]] || die "apt-get install prometheus failed (exit $rc)"
    command -v promtool >/dev/null || die "promtool missing after installing prometheus"
    log "installed: $(prometheus --version 2>&1 | head -n 1)"
}

cmd_check() {
    promtool check rules deploy/prometheus/alerts.yml
    promtool test rules deploy/prometheus/alerts_test.yml
}

case "${1:-}" in
    install) cmd_install ;;
    check) cmd_check ;;
    *)
        echo "usage: $0 install|check" >&2
        exit 2
        ;;
esac
