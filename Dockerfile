# syntax=docker/dockerfile:1
#
# xks-proxy container image: the Rust binary (glibc, which vendor PKCS#11 modules expect) on
# debian-slim, run as an unprivileged user. No configuration, PIN, secret, certificate or vendor PKCS#11 module is baked in.
#
#   docker build -t xks-proxy .
#
# Production: mount the config, TLS files and secrets read-only, and the vendor PKCS#11
# module (or derive an image that adds it, see README "Container image").
#
#   docker run -d --name xks-proxy --read-only --tmpfs /tmp -p 443:8443 \
#       -v /etc/xks-proxy:/etc/xks-proxy:ro -v /opt/vendor/pkcs11:/opt/hsm/lib:ro xks-proxy
#
# Demo against SoftHSM2 (token, keys, certificate and credential created at start, inside
# the container; `docker exec -it xks-demo bash` and paste the curl command it prints):
#
#   docker run --rm --name xks-demo -p 8443:8443 \
#       --entrypoint /usr/local/share/xks-proxy/softhsm/demo.sh xks-proxy
#
# Ports: 8443 the XKS API (map 443 to it), 9443 the admin listener (metrics, probes,
# reload), loopback-only unless XKS__ADMIN__LISTEN says otherwise.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# Cargo features of the binary: empty for the default TLS provider (ring). FIPS crypto
# (README "Building with FIPS crypto"), whose module builds with Debian's cmake and Go:
#   docker build --build-arg CARGO_FEATURES="--no-default-features --features fips" -t xks-proxy:fips .
ARG CARGO_FEATURES=""
# hadolint ignore=DL3008
RUN case "$CARGO_FEATURES" in \
        *fips*) apt-get update \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake golang-go \
            && rm -rf /var/lib/apt/lists/* ;; \
    esac
WORKDIR /src
# Only what the binary is built from (see .dockerignore): changes to docs or deploy files
# do not invalidate this layer.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Workspace members (the test-only fault module and local KMS front): needed to load the
# workspace, not built.
COPY softhsm/fault-pkcs11 ./softhsm/fault-pkcs11
COPY softhsm/kms-local ./softhsm/kms-local
# The release profile keeps line tables for local backtraces; the image drops them (about
# 45 MB -> 9 MB) and keeps symbol names, so panics still name their functions.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
# $CARGO_FEATURES is unquoted on purpose: a list of arguments.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin xks-proxy $CARGO_FEATURES \
    && install -D -m 0755 target/release/xks-proxy /out/xks-proxy

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
LABEL org.opencontainers.image.title="xks-proxy" \
      org.opencontainers.image.description="AWS KMS External Key Store (XKS) proxy: SigV4 + TLS/mTLS in front, PKCS#11 behind" \
      org.opencontainers.image.licenses="Apache-2.0"
# ca-certificates: vendor HSM clients that talk TLS; curl: HEALTHCHECK and the demo's
# printed commands; openssl and softhsm2: the SoftHSM2 demo only (softhsm2 and its crypto
# library add about 2 MB and 6 MB, unused unless hsm.module points at SoftHSM). Debian's stable security updates are
# what we want here, so versions are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates curl openssl softhsm2 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 xks \
    && useradd --system --uid 10001 --gid xks --home-dir /var/lib/xks-proxy --create-home \
        --shell /usr/sbin/nologin xks \
    && install -d -m 0755 /etc/xks-proxy /opt/hsm/lib
COPY --from=build /out/xks-proxy /usr/local/bin/xks-proxy
COPY softhsm/demo.sh /usr/local/share/xks-proxy/softhsm/demo.sh
COPY config/xks-proxy.example.toml /usr/local/share/xks-proxy/xks-proxy.example.toml

# XKS_CONFIG: the default --config. XKS_PROXY_BIN/XKS_DEMO_*: let demo.sh use this binary,
# write under the user's home and listen where `-p 8443:8443` reaches it.
# XKS_HEALTHCHECK_URL: what HEALTHCHECK probes. The default suits TLS without client
# authentication; with mTLS the handshake needs a client certificate, so probe the admin
# listener instead (http://127.0.0.1:9443/healthz); plain HTTP behind a TLS-terminating load
# balancer uses http://127.0.0.1:8443/ping.
ENV XKS_CONFIG=/etc/xks-proxy/xks-proxy.toml \
    XKS_PROXY_BIN=/usr/local/bin/xks-proxy \
    XKS_DEMO_DIR=/var/lib/xks-proxy/demo \
    XKS_DEMO_LISTEN=0.0.0.0:8443 \
    XKS_HEALTHCHECK_URL=https://127.0.0.1:8443/ping

USER 10001:10001
WORKDIR /var/lib/xks-proxy
EXPOSE 8443
# -k: the probe checks that the proxy answers, not the certificate (whose name is the
# public host name, not 127.0.0.1).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS -k --max-time 2 -o /dev/null \"$XKS_HEALTHCHECK_URL\" || exit 1"]
# The proxy is PID 1: it handles SIGTERM (drain, exit 0) and SIGHUP (reload) itself and
# starts no child processes.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/xks-proxy"]
CMD ["serve"]
