# log_capturer image for users (where Docker Hub is reachable):
#   docker build -t log_capturer .
#   docker compose -f deploy/compose.yaml up -d
# Without base images (air-gapped hosts, CI here), scripts/image.sh builds the same layout
# FROM scratch out of a locally built binary; tests/deploy.rs runs that one.
#
# Layout (the Go image's): binary and configs/config.yaml under /app, API on 8401, metrics and
# the plain /health on 8001, positions in the volume /app/data/positions, output under
# /app/logs/output. Mount the Docker socket at /var/run/docker.sock.

FROM rust:1-bookworm AS build
WORKDIR /src
# Cargo.toml names the benches, so cargo wants them present even for a --bin build.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin log_capturer

FROM debian:bookworm-slim
WORKDIR /app
COPY --from=build /src/target/release/log_capturer /app/log_capturer
COPY configs/config.yaml /app/configs/config.yaml
RUN mkdir -p /app/data/positions /app/logs/output
VOLUME ["/app/data/positions"]
EXPOSE 8401 8001
# The binary probes itself: slim images have neither curl nor wget.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/app/log_capturer", "--healthcheck", "http://localhost:8001/health"]
ENTRYPOINT ["/app/log_capturer"]
CMD ["--config", "/app/configs/config.yaml"]
