#!/usr/bin/env bash
# Build a runnable log_capturer image without pulling any base image.
#
# Usage: bash scripts/image.sh [--binary PATH] [--tag TAG]
#
#   --binary PATH  the log_capturer binary to ship (default: `cargo build --release`, then
#                  target/release/log_capturer)
#   --tag TAG      image name (default log_capturer:local)
#
# The docker CLI talks to $DOCKER_HOST (e.g. unix:///tmp/logcap-docker/docker.sock). The last
# line on stdout is the image tag.
#
# The image is `FROM scratch` plus the binary, the shared libraries it links (from `ldd`: libc,
# libgcc_s, the loader) and configs/config.yaml at /app/configs/. It keeps the Go image's
# defaults: API on 8401, metrics on 8001, HEALTHCHECK on http://localhost:8001/health (the
# binary's own `--healthcheck`, since there is no shell, curl or wget inside), positions in the
# volume /app/data/positions, output under /app/logs/output. Run it with the Docker socket
# mounted: see deploy/compose.yaml. The Dockerfile at the top of the repository builds the same
# layout from Rust and Debian base images where those can be pulled.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BINARY=""
TAG="log_capturer:local"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary) BINARY="$2"; shift 2 ;;
        --tag) TAG="$2"; shift 2 ;;
        *) echo "usage: $0 [--binary PATH] [--tag TAG]" >&2; exit 2 ;;
    esac
done

log() { printf '[image] %s\n' "$*" >&2; }

if [[ -z "$BINARY" ]]; then
    log "cargo build --release"
    cargo build --release --bin log_capturer >&2
    BINARY=target/release/log_capturer
fi
[[ -x "$BINARY" ]] || { log "ERROR: $BINARY is not an executable file"; exit 1; }

DOCKER="$(command -v docker || true)"
[[ -x /usr/bin/docker ]] && DOCKER=/usr/bin/docker
[[ -n "$DOCKER" ]] || { log "ERROR: no docker CLI (install docker.io)"; exit 1; }

CTX="$(mktemp -d "${TMPDIR:-/tmp}/logcap-image.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT
ROOT="$CTX/rootfs"
mkdir -p "$ROOT/app/configs" "$ROOT/app/data/positions" "$ROOT/app/logs/output" "$ROOT/tmp"
chmod 1777 "$ROOT/tmp"
cp "$BINARY" "$ROOT/app/log_capturer"
# Debug info is most of a debug build's size, and the vfs storage driver copies the image for
# every container; symbols stay for backtraces.
if command -v strip >/dev/null; then strip --strip-debug "$ROOT/app/log_capturer"; fi
cp configs/config.yaml "$ROOT/app/configs/config.yaml"

# Every library ldd resolves, at the same path, plus the loader. A static binary has none
# ("not a dynamic executable"), which is fine.
libs="$(ldd "$BINARY" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u || true)"
for lib in $libs; do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
done
log "shipping $BINARY with $(echo "$libs" | grep -c . || true) shared libraries"

cat >"$CTX/Dockerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
WORKDIR /app
EXPOSE 8401 8001
VOLUME ["/app/data/positions"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/app/log_capturer", "--healthcheck", "http://localhost:8001/health"]
ENTRYPOINT ["/app/log_capturer"]
CMD ["--config", "/app/configs/config.yaml"]
EOF

# The classic builder: BuildKit would want to resolve its frontend, and FROM scratch needs
# nothing it offers.
DOCKER_BUILDKIT=0 "$DOCKER" build -q -t "$TAG" "$CTX" >&2
log "built $TAG"
echo "$TAG"
