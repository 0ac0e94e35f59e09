# syntax=docker/dockerfile:1
# Palisade image: the operator (`palisade controller`) and the snapshot engine
# that backup Jobs run (`palisade backup ...`, which shells out to pg_dump and
# pg_restore). Build: `make image` (docker build -t palisade:dev .).
#
# PostgreSQL client: major version 15 (Debian bookworm's postgresql-client-15).
# pg_dump can dump servers of its own major version and older, so this image
# backs up PostgreSQL <= 15; for a newer server, bump the client (and the base
# image or add the PGDG apt repository) together with the docs.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Whole workspace (testkit is a member); .dockerignore keeps target/ and .git out.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin palisade \
 && install -D -m 0755 target/release/palisade /out/palisade

FROM debian:bookworm-slim
ARG PG_MAJOR=15
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates tzdata "postgresql-client-${PG_MAJOR}" \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 palisade \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin palisade
# pg_dump / pg_restore of the pinned major, ahead of Debian's pg_wrapper.
ENV PATH="/usr/lib/postgresql/${PG_MAJOR}/bin:${PATH}"
COPY --from=builder /out/palisade /usr/local/bin/palisade
LABEL org.opencontainers.image.title="palisade" \
      org.opencontainers.image.description="Tenant isolation control plane for Kubernetes" \
      org.opencontainers.image.source="https://github.com/palisade-dev/palisade" \
      org.opencontainers.image.licenses="Apache-2.0"
# Numeric, so runAsNonRoot can verify it; the chart runs with a read-only root
# filesystem and an emptyDir on /tmp.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/palisade"]
CMD ["controller"]
