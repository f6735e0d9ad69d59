# xks-proxy container image.
#
#   docker build -t xks-proxy .
#   # production: mount the config, TLS files, PIN/secrets and the vendor PKCS#11 module
#   docker run -v /etc/xks-proxy:/etc/xks-proxy:ro -v /opt/vendor/lib:/opt/hsm:ro -p 443:8443 xks-proxy
#   # demo against SoftHSM2 (token, keys, certificate and credential made at start):
#   docker run --rm -p 8443:8443 -e XKS_DEMO_LISTEN=0.0.0.0:8443 \
#       --entrypoint /usr/local/share/xks-proxy/demo.sh xks-proxy
#
# No secrets are baked in; the runtime image runs as an unprivileged user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin xks-proxy

FROM debian:bookworm-slim
# softhsm2 only serves the demo; production images mount or derive with the vendor module.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl openssl softhsm2 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/xks-proxy --create-home xks
COPY --from=build /src/target/release/xks-proxy /usr/local/bin/xks-proxy
COPY softhsm/demo.sh /usr/local/share/xks-proxy/demo.sh
COPY config/xks-proxy.example.toml /usr/local/share/xks-proxy/xks-proxy.example.toml
ENV XKS_PROXY_BIN=/usr/local/bin/xks-proxy \
    XKS_DEMO_DIR=/var/lib/xks-proxy/demo
USER xks
EXPOSE 8443
HEALTHCHECK --interval=30s --timeout=3s CMD curl -fsk https://localhost:8443/ping || exit 1
ENTRYPOINT ["/usr/local/bin/xks-proxy"]
CMD ["serve", "--config", "/etc/xks-proxy/xks-proxy.toml"]
