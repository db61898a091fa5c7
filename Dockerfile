# Ops-Core container image.
#
#   docker build -t opscore .
#   KEY=$(openssl rand -hex 32); echo "$KEY"
#   docker run -p 8000:8000 -e OPSCORE_API_KEY="$KEY" -v opscore-data:/data opscore
#
# Without OPSCORE_API_KEY a key is generated once into /data/api_key.
#
# Without DATABASE_URL the service keeps a SQLite database in /data (a
# volume); set DATABASE_URL=postgres://... to use PostgreSQL instead.
# Migrations are embedded in the binary (sqlx::migrate!), so the runtime
# stage needs nothing but the binary.

# ---------------------------------------------------------------- builder
FROM rust:1-bookworm AS builder
WORKDIR /build

# Compile the dependencies alone first, against placeholder sources, so that
# this (slow) layer is reused until Cargo.toml or Cargo.lock change. Cargo
# reads every target the manifest declares ([[bin]], [[bench]], ...) before it
# builds anything, so each gets a placeholder file at its path (or at the
# default one). The bench placeholders stay: `cargo build` never compiles
# benches, but it parses the manifest again below.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && echo '' > src/lib.rs \
    && awk -F '"' ' \
        function emit() { if (kind != "") print (path != "" ? path : dir[kind] "/" name ".rs") } ; \
        BEGIN { dir["bin"] = "src/bin"; dir["bench"] = "benches"; dir["test"] = "tests"; dir["example"] = "examples" } ; \
        /^\[/ { emit(); kind = ""; name = ""; path = "" } ; \
        /^\[\[(bin|bench|test|example)\]\]/ { kind = $0; gsub(/[][ ]/, "", kind) } ; \
        kind != "" && /^name *=/ { name = $2 } ; \
        kind != "" && /^path *=/ { path = $2 } ; \
        END { emit() }' Cargo.toml \
       | while read -r f; do \
           [ -e "$f" ] || { mkdir -p "$(dirname "$f")" && echo 'fn main() {}' > "$f"; }; \
         done \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. migrations/ must be present at compile time: the
# migrate! macro embeds it. The placeholder crate's build artefacts are
# deleted (and the sources touched) so cargo cannot mistake the placeholder
# binary for an up-to-date build: COPY keeps the context's older mtimes.
COPY src ./src
COPY migrations ./migrations
COPY build.rs ./
# The commit opscore_build_info reports (the context has no .git).
ARG REVISION=unknown
ENV OPSCORE_COMMIT=$REVISION
RUN rm -rf target/release/.fingerprint/opscore-* \
        target/release/deps/opscore-* target/release/deps/libopscore-* \
        target/release/opscore target/release/libopscore.* \
    && find src migrations -type f -exec touch {} + \
    && cargo build --release --locked \
    && ./target/release/opscore --version

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# ca-certificates: outbound HTTPS (rustls, to AgentKit). Nothing else: TLS
# is rustls, so no OpenSSL, and the HEALTHCHECK is the binary's own.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# OCI labels (https://github.com/opencontainers/image-spec/blob/main/annotations.md).
# VERSION and REVISION are build arguments:
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="Ops-Core" \
      org.opencontainers.image.description="The control plane for fleets of AI agents" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, unprivileged uid/gid so volume ownership is predictable.
# /data holds the SQLite database and the generated API key, owner-only.
RUN groupadd --system --gid 10001 opscore \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data \
        --no-create-home --shell /usr/sbin/nologin opscore \
    && mkdir -p /data \
    && chown opscore:opscore /data \
    && chmod 0700 /data

COPY --from=builder /build/target/release/opscore /usr/local/bin/opscore
# Workflow definitions loaded at startup (contract 1.6). Mount another
# directory over it, or set OPSCORE_WORKFLOWS_DIR, to load your own.
COPY workflows /etc/opscore/workflows

# Listen on every interface inside the container (the binary's own default,
# 127.0.0.1, is unreachable from outside it) and keep data in the volume.
ENV OPSCORE_BIND=0.0.0.0:8000 \
    OPSCORE_DATA_DIR=/data \
    OPSCORE_WORKFLOWS_DIR=/etc/opscore/workflows

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000

# Liveness only (no database access): `opscore healthcheck` probes /health
# on the port of OPSCORE_BIND, so it follows a changed port by itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["opscore", "healthcheck"]

# SIGTERM (docker stop) starts a graceful shutdown: see
# OPSCORE_SHUTDOWN_GRACE_SECS. The binary runs as PID 1 and handles it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["opscore"]
CMD ["serve"]
