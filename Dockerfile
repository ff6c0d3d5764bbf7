# syntax=docker/dockerfile:1
# Multi-stage build: dependencies are compiled in their own cached layer, the runtime image is
# slim, runs as a non-root user and keeps its data in a volume.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# 1. Dependencies only (cached until Cargo.toml/Cargo.lock change).
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/Cargo.toml
RUN mkdir -p src actors/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs actors/src/lib.rs \
 && cargo build --release --locked --bin our-memories \
 && rm -rf src actors/src
# 2. The project itself (same command CI and the README use).
COPY . .
RUN touch src/main.rs src/lib.rs actors/src/lib.rs \
 && cargo build --release --locked --bin our-memories

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data our-memories \
 && mkdir -p /data && chown our-memories /data
COPY --from=build /src/target/release/our-memories /usr/local/bin/our-memories
USER our-memories
# MALLOC_MMAP_THRESHOLD_: glibc hands buffers over 128 KiB (S3 upload parts) back to the OS
# at once instead of keeping them per thread; measured in docs/benchmarks.md.
ENV NODE_ENV=production PORT=3000 DATA_DIR=/data MALLOC_MMAP_THRESHOLD_=131072
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1
ENTRYPOINT ["/usr/local/bin/our-memories"]
