#!/usr/bin/env bash
# Private Docker engine for log_capturer's tests and demo.
#
# Usage: bash scripts/docker-engine.sh start|stop|status|env
#
#   start   Install Debian's docker.io and busybox-static if missing, start a private dockerd
#           (socket $DIR/docker.sock), import the image local/busybox:latest if absent, and
#           check that a container runs. Idempotent: an engine already running from $DIR is
#           reused. Progress goes to stderr; the socket path is the LAST line on stdout, so
#           `SOCK=$(bash scripts/docker-engine.sh start)` works.
#   stop    Remove every container on this engine, stop dockerd and the containerd (and shims)
#           it spawned, unmount what is left under $DIR, and remove $DIR (only what start put
#           there: data, exec, socket, pid file, log). Touches no other process. Idempotent.
#   status  Exit 0 if the engine in $DIR answers, 1 otherwise.
#   env     Print `export LOGCAP_DOCKER_SOCK=...` and `export DOCKER_HOST=...` for `eval`.
#
# DIR is ${LOGCAP_DOCKER_DIR:-/tmp/logcap-docker}. Keep it short: a unix socket path is at most
# 108 bytes, and containerd puts its own sockets under $DIR/exec/containerd/.
#
# Findings on these machines (Debian 12, kernel 6.x in a Firecracker VM, root, PID 1 is not an
# init system, so no systemd and no service manager):
# - Debian bookworm's docker.io is 20.10.24 (dockerd + docker CLI 20.10, containerd 1.6, runc).
#   It reports API 1.41. A Docker CLI 28 may already sit at /usr/local/bin/docker; it negotiates
#   down to 1.41 and works too, but this script prefers Debian's /usr/bin/docker.
# - cgroups are v1 ("hybrid": v1 controllers plus cgroup2 at /sys/fs/cgroup/unified). dockerd
#   uses its default cgroupfs driver there and starts fine (warnings only: no blkio weight).
# - No network to a registry, and we want no iptables/bridge fiddling: --iptables=false
#   --ip-masq=false --bridge=none. With --bridge=none there is no default "bridge" network, so
#   containers must be run with `--network none`.
# - vfs storage: no overlayfs on the data root needed; images are tiny (busybox) so its copy cost
#   does not matter.
# - The machine ships /usr/sbin/policy-rc.d (exit 101), so installing docker.io does not start a
#   system dockerd on /var/run/docker.sock. Where it is missing we put one there for the duration
#   of the install.
# - dockerd launches its own containerd (pid file $DIR/exec/containerd/containerd.pid) and one
#   containerd-shim-runc-v2 per running container; all of them carry $DIR in their command
#   line, which is how `stop` finds leftovers without touching any other process.
# - If dockerd dies hard (kill -9), its containerd exits but the shims and the container
#   processes keep running, reparented to PID 1. Killing a shim does not kill its container's
#   process either. So dockerd runs with --cgroup-parent=/$CGROUP and `stop` kills whatever is
#   left in /sys/fs/cgroup/*/$CGROUP/ and removes those cgroup directories.
# - PID 1 here (/process_api) reaps orphans late: a stopped dockerd/shim may show as <defunct>
#   for a while after `stop`. Zombies hold no resources; liveness checks here ignore them.
# - Cold `start` (apt-get update + install of 10 packages, 67 MB, first dockerd start, image
#   import) took 20 s on this machine; a warm one 1 to 4 s, or 0.5 s when already running.
set -euo pipefail

DIR="${LOGCAP_DOCKER_DIR:-/tmp/logcap-docker}"
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/docker.pid"
LOG="$DIR/dockerd.log"
IMAGE="local/busybox:latest"
# Containers of this engine go under their own cgroup parent (/sys/fs/cgroup/<ctrl>/$CGROUP/<id>)
# instead of dockerd's default /docker, so `stop` can find and kill container processes that
# outlived a crashed dockerd/shim without touching any other engine's containers.
case "$(basename "$DIR")" in
    logcap*) CGROUP="$(basename "$DIR")" ;;
    *) CGROUP="logcap-$(basename "$DIR")" ;;
esac
CGROUP="${LOGCAP_DOCKER_CGROUP:-$CGROUP}"
START_TIMEOUT="${LOGCAP_DOCKER_START_TIMEOUT:-60}"
STOP_TIMEOUT="${LOGCAP_DOCKER_STOP_TIMEOUT:-30}"

log() { printf '[docker-engine] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The docker CLI to use: Debian's (20.10) first, any other on PATH otherwise.
docker_cli() {
    if [[ -x /usr/bin/docker ]]; then
        echo /usr/bin/docker
    else
        command -v docker || true
    fi
}

dk() {
    local cli
    cli="$(docker_cli)"
    [[ -n "$cli" ]] || die "no docker CLI found"
    "$cli" -H "unix://$SOCK" "$@"
}

# True when the engine in $DIR answers on its socket.
answering() {
    [[ -S "$SOCK" ]] && [[ -n "$(docker_cli)" ]] && timeout 10 "$(docker_cli)" -H "unix://$SOCK" version >/dev/null 2>&1
}

# Alive and not a zombie. PID 1 here is not a real init and may reap orphans late, so a killed
# dockerd can linger as <defunct>, which kill -0 would still report as alive.
pid_alive() {
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z ]]
}

dockerd_pid() {
    if [[ -f "$PIDFILE" ]]; then tr -dc '0-9' <"$PIDFILE" 2>/dev/null || true; fi
}

# PIDs of processes (other than this script) whose command line mentions $DIR: our dockerd, its
# containerd and containerd-shim-runc-v2 processes. Scans /proc; never matches by program name.
pids_under_dir() {
    local p cmd prog
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline")" || continue
        prog="${cmd%% *}"
        prog="${prog##*/}"
        case "$prog" in
            dockerd | containerd | containerd-shim*) ;;
            *) continue ;;
        esac
        case "$cmd " in
            *"$DIR/"* | *"$DIR "*) pid_alive "$p" && echo "$p" ;;
        esac
    done
}

# PIDs in this engine's container cgroups (any v1 controller or the v2 hierarchy).
container_pids() {
    local d
    for d in /sys/fs/cgroup/*/"$CGROUP" /sys/fs/cgroup/"$CGROUP"; do
        [[ -d $d ]] || continue
        find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true
    done | sort -un
}

# Kill container processes left in our cgroups (after a dockerd/shim crash) and remove the
# then-empty cgroup directories.
cleanup_cgroups() {
    local left deadline=$((SECONDS + 5))
    left="$(container_pids)"
    while [[ -n "$left" ]] && ((SECONDS < deadline)); do
        log "killing leftover container processes: $(echo "$left" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        sleep 0.2
        left="$(container_pids)"
    done
    local d
    for d in /sys/fs/cgroup/*/"$CGROUP" /sys/fs/cgroup/"$CGROUP"; do
        [[ -d $d ]] || continue
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

# ---------------------------------------------------------------------------------------------
install_packages() {
    local need=()
    command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
    [[ -x /usr/bin/docker ]] || command -v docker >/dev/null 2>&1 || need+=(docker.io)
    if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
        need+=(busybox-static)
    fi
    [[ ${#need[@]} -gt 0 ]] || return 0
    # de-duplicate
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    log "installing ${need[*]} with apt-get (this takes a minute or two the first time)"
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        # Keep the package's postinst from starting a system-wide dockerd.
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q &&
            apt-get install -y -q --no-install-recommends \
                -o DPkg::Lock::Timeout=300 "${need[@]}"
    } >&2 || rc=$?
    if [[ $made_policy == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
    [[ $rc == 0 ]] || die "apt-get install ${need[*]} failed (exit $rc)"
}

wait_for_engine() {
    local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if answering; then return 0; fi
        if ! pid_alive "$pid"; then
            log "dockerd (pid $pid) exited during startup"
            return 1
        fi
        sleep 0.5
    done
    log "dockerd did not answer within ${START_TIMEOUT}s"
    return 1
}

start_daemon() {
    local pid
    pid="$(dockerd_pid)"
    if pid_alive "$pid" && answering; then
        log "dockerd already running (pid $pid, socket $SOCK)"
        return 0
    fi
    if pid_alive "$pid"; then
        # Alive but not answering: maybe still starting up.
        log "dockerd pid $pid exists but does not answer yet; waiting"
        if wait_for_engine "$pid"; then return 0; fi
        log "restarting it"
    fi
    # Leftovers of an earlier run (crashed dockerd, orphaned containerd): clear them first.
    stop_engine quiet

    mkdir -p "$DIR"
    chmod 711 "$DIR"
    log "starting dockerd (data root $DIR/data, log $LOG)"
    # setsid: own session, so signals for the caller's process group (Ctrl-C, timeout) don't
    # reach it; all stdio redirected so `$(...)` around this script does not wait for dockerd.
    setsid dockerd \
        --host "unix://$SOCK" \
        --data-root "$DIR/data" \
        --exec-root "$DIR/exec" \
        --pidfile "$PIDFILE" \
        --iptables=false \
        --ip-masq=false \
        --bridge=none \
        --storage-driver=vfs \
        --cgroup-parent="/$CGROUP" \
        </dev/null >>"$LOG" 2>&1 &
    pid=$!
    if ! wait_for_engine "$pid"; then
        log "last lines of $LOG:"
        tail -n 40 "$LOG" >&2 || true
        stop_engine quiet || true
        die "could not start dockerd"
    fi
    log "dockerd is up: pid $pid, $(dk version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}' 2>/dev/null)"
}

import_image() {
    if dk image inspect "$IMAGE" >/dev/null 2>&1; then
        log "image $IMAGE present"
        return 0
    fi
    local bb=/bin/busybox
    [[ -x $bb ]] || die "$bb missing (package busybox-static)"
    # The image has no libc: the busybox copied in must be static.
    if ldd "$bb" >/dev/null 2>&1; then
        die "$bb is dynamically linked; install busybox-static (it replaces busybox)"
    fi
    local root="$DIR/image-root"
    rm -rf "$root"
    mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/tmp" "$root/proc" "$root/sys" "$root/dev"
    chmod 1777 "$root/tmp"
    cp "$bb" "$root/bin/busybox"
    local applet n=0
    while read -r applet; do
        [[ -n $applet && $applet != busybox ]] || continue
        ln -sf busybox "$root/bin/$applet"
        n=$((n + 1))
    done < <("$bb" --list)
    log "importing $IMAGE (static busybox + $n applet links)"
    tar -C "$root" -c . | dk import -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
    rm -rf "$root"
}

verify() {
    local out
    out="$(dk run --rm --network none "$IMAGE" echo ok 2>&1)" || die "test container failed: $out"
    [[ "$out" == ok ]] || die "test container printed '$out', expected 'ok'"
    log "test container ran: $IMAGE echo ok -> $out"
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "must run as root (dockerd needs it)"
    # The longest socket path we create: containerd's ttrpc socket (a unix path is <= 107 bytes).
    local longest="$DIR/exec/containerd/containerd.sock.ttrpc"
    ((${#longest} <= 107)) || die "LOGCAP_DOCKER_DIR '$DIR' is too long for unix socket paths; use a shorter one"
    local t0=$SECONDS
    install_packages
    start_daemon
    import_image
    verify
    log "engine ready in $((SECONDS - t0))s; socket:"
    echo "$SOCK"
}

# stop_engine [quiet]
stop_engine() {
    local quiet="${1:-}"
    local pid
    pid="$(dockerd_pid)"

    if answering; then
        local ids
        ids="$(dk ps -aq 2>/dev/null || true)"
        if [[ -n "$ids" ]]; then
            log "removing containers: $(echo "$ids" | tr '\n' ' ')"
            # shellcheck disable=SC2086  # word-split the id list
            dk rm -f $ids >/dev/null 2>&1 || log "warning: docker rm -f failed for some containers"
        fi
    fi

    if pid_alive "$pid"; then
        log "stopping dockerd (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + STOP_TIMEOUT))
        while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
        if pid_alive "$pid"; then
            log "dockerd did not stop in ${STOP_TIMEOUT}s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi

    # containerd and shims dockerd spawned normally exit with it; give them a moment, then
    # terminate whatever is left that belongs to $DIR.
    local left deadline=$((SECONDS + 10))
    left="$(pids_under_dir)"
    while [[ -n "$left" ]] && ((SECONDS < deadline)); do
        sleep 0.2
        left="$(pids_under_dir)"
    done
    if [[ -n "$left" ]]; then
        log "terminating leftover processes: $(echo "$left" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        kill -TERM $left 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while [[ -n "$(pids_under_dir)" ]] && ((SECONDS < deadline)); do sleep 0.2; done
        left="$(pids_under_dir)"
        if [[ -n "$left" ]]; then
            # shellcheck disable=SC2086
            kill -KILL $left 2>/dev/null || true
        fi
    fi

    cleanup_cgroups

    # Unmount what is left under $DIR, deepest first (vfs layers, shm, netns, runc rootfs).
    local m mounts
    mounts="$(awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)"
    if [[ -n "$mounts" ]]; then
        while read -r m; do
            m="$(printf '%b' "$m")" # /proc/mounts escapes spaces as \040
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: cannot unmount $m"
        done <<<"$mounts"
    fi
    rm -f "$PIDFILE" "$SOCK"

    if [[ -z "$quiet" ]]; then
        if [[ -n "$(pids_under_dir)$(container_pids)" ]]; then
            die "processes of $DIR still running: $(pids_under_dir | tr '\n' ' ') $(container_pids | tr '\n' ' ')"
        fi
        remove_dir
        log "engine in $DIR stopped"
    fi
}

# Removes what start made in $DIR, then $DIR itself if that leaves it empty: only our own
# names, never a blanket rm -rf of $DIR (it may be set to a folder that holds other things),
# and nothing while a mount is still left under it (rm would reach through it).
remove_dir() {
    [[ -d "$DIR" ]] || return 0
    if awk -v d="$DIR/" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
        log "warning: mounts left under $DIR; not removing it"
        return 0
    fi
    rm -rf "${DIR:?}/data" "${DIR:?}/exec" "${DIR:?}/image-root"
    rm -f "$LOG" "$PIDFILE" "$SOCK"
    rmdir "$DIR" 2>/dev/null || log "$DIR kept: it holds files this script did not make"
}

cmd_env() {
    echo "export LOGCAP_DOCKER_SOCK=$SOCK"
    echo "export DOCKER_HOST=unix://$SOCK"
}

cmd_status() {
    if answering; then
        log "engine in $DIR answers on $SOCK (dockerd pid $(dockerd_pid))"
        return 0
    fi
    log "engine in $DIR is not running"
    return 1
}

case "${1:-}" in
    start) cmd_start ;;
    stop) stop_engine ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *)
        echo "usage: $0 start|stop|status|env   (DIR=${DIR}, set LOGCAP_DOCKER_DIR to change)" >&2
        exit 2
        ;;
esac
