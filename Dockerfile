# syntax=docker/dockerfile:1
# Multi-stage build: dependencies are compiled in their own cached layer, the runtime image is
# slim, runs as a non-root user and keeps its data in a volume. `.ci/run` lints this file with
# hadolint and runs the same `cargo build` command, so the build step is exercised by CI.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# 1. Dependencies only (cached until Cargo.toml/Cargo.lock change).
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/Cargo.toml
RUN mkdir -p src actors/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs actors/src/lib.rs \
 && cargo build --release --locked --bin our-memories \
 && rm -rf src actors/src
# 2. The project itself (the command `.ci/run` also runs).
COPY . .
RUN touch src/main.rs src/lib.rs actors/src/lib.rs \
 && cargo build --release --locked --bin our-memories

FROM debian:bookworm-slim
# ca-certificates: TLS to MongoDB Atlas and S3. No curl: the binary is its own health probe.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data our-memories \
 && mkdir -p /data && chown 10001 /data
COPY --from=build /src/target/release/our-memories /usr/local/bin/our-memories
USER 10001
# MALLOC_MMAP_THRESHOLD_: glibc hands buffers over 128 KiB (S3 upload parts) back to the OS
# at once instead of keeping them per thread; measured in docs/benchmarks.md.
ENV NODE_ENV=production PORT=3000 DATA_DIR=/data MALLOC_MMAP_THRESHOLD_=131072
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["/usr/local/bin/our-memories", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/our-memories"]
