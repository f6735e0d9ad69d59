#!/usr/bin/env bash
# Runs a demo xks-proxy on https://localhost:8443 against a SoftHSM2 token in ./.demo/.
#
# On a fresh Debian machine with the Rust toolchain this installs softhsm2/openssl/curl if
# missing, builds the proxy, creates the token, demo keys, a self-signed TLS certificate and a
# SigV4 credential, prints a ready-to-paste `curl --aws-sigv4` command, then serves in the
# foreground (Ctrl-C stops it). Re-running reuses what exists.
#
# Environment: XKS_DEMO_DIR (default ./.demo), XKS_DEMO_LISTEN (default 127.0.0.1:8443),
# XKS_DEMO_ADMIN_LISTEN (metrics and probes, default 127.0.0.1:9443), XKS_PROXY_BIN (use this
# binary instead of building one).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=${XKS_DEMO_DIR:-$root/.demo}
listen=${XKS_DEMO_LISTEN:-127.0.0.1:8443}
admin_listen=${XKS_DEMO_ADMIN_LISTEN:-127.0.0.1:9443}
port=${listen##*:}
token_label=xks-demo
prefix=/demo
module=/usr/lib/softhsm/libsofthsm2.so

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

install_packages() {
    local missing=()
    command -v softhsm2-util >/dev/null && [ -e "$module" ] || missing+=(softhsm2)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v curl >/dev/null || missing+=(curl)
    [ ${#missing[@]} -eq 0 ] && return
    say "installing ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

build() {
    if [ -n "${XKS_PROXY_BIN:-}" ]; then
        bin=$XKS_PROXY_BIN
        return
    fi
    say "building xks-proxy (release)"
    cargo build --release --locked --bin xks-proxy --manifest-path "$root/Cargo.toml" >&2
    bin=$root/target/release/xks-proxy
}

make_token() {
    mkdir -p "$demo/tokens" "$demo/tls"
    chmod 700 "$demo"
    export SOFTHSM2_CONF=$demo/softhsm2.conf
    cat >"$SOFTHSM2_CONF" <<CONF
directories.tokendir = $demo/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
    [ -f "$demo/user-pin" ] || { printf '%s' "demo-$(openssl rand -hex 8)" >"$demo/user-pin"; chmod 600 "$demo/user-pin"; }
    if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label: *$token_label *$"; then
        say "creating SoftHSM2 token '$token_label' in $demo/tokens"
        softhsm2-util --init-token --free --label "$token_label" \
            --so-pin "$(openssl rand -hex 8)" --pin "$(cat "$demo/user-pin")" >/dev/null
    fi
}

make_certificate() {
    # A demo CA and a localhost certificate it signed, as a real deployment has (a public CA):
    # clients that follow RFC 5280 strictly (rustls, so the local KMS front) refuse a
    # self-signed CA certificate used as a server's own. Earlier demos made only cert.pem.
    [ -f "$demo/tls/ca.pem" ] && [ -f "$demo/tls/cert.pem" ] && return
    say "creating a demo CA and a TLS certificate for localhost"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
        -subj "/CN=xks-proxy demo CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$demo/tls/ca-key.pem" -out "$demo/tls/ca.pem" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -keyout "$demo/tls/key.pem" -out "$demo/tls/cert.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        >"$demo/tls/cert.ext"
    openssl x509 -req -in "$demo/tls/cert.csr" -CA "$demo/tls/ca.pem" \
        -CAkey "$demo/tls/ca-key.pem" -CAcreateserial -days 365 -extfile "$demo/tls/cert.ext" \
        -out "$demo/tls/cert.pem" 2>/dev/null
    rm -f "$demo/tls/cert.csr" "$demo/tls/cert.ext" "$demo/tls/ca.srl"
    chmod 600 "$demo/tls/key.pem" "$demo/tls/ca-key.pem"
}

make_credential() {
    [ -f "$demo/kms-console.json" ] && return
    say "creating a SigV4 credential for $prefix"
    "$bin" credentials new --prefix "$prefix" --output console-json >"$demo/kms-console.json"
    chmod 600 "$demo/kms-console.json"
}

json_field() { sed -E "s/.*\"$1\":\"([^\"]*)\".*/\1/" "$demo/kms-console.json"; }

write_config() {
    access_key_id=$(json_field AccessKeyId)
    secret=$(json_field RawSecretAccessKey)
    cat >"$demo/xks-proxy.toml" <<TOML
# Demo configuration written by softhsm/demo.sh; see config/xks-proxy.example.toml.
[server]
listen = "$listen"
[server.tls]
certificate_chain = "$demo/tls/cert.pem"
private_key = "$demo/tls/key.pem"
[hsm]
module = "$module"
token_label = "$token_label"
user_pin_file = "$demo/user-pin"
[logging]
format = "text"
[admin]
listen = "$admin_listen"
[[key_stores]]
name = "demo"
path_prefix = "$prefix"
[[key_stores.credentials]]
access_key_id = "$access_key_id"
secret = "$secret"
TOML
    chmod 600 "$demo/xks-proxy.toml"
}

make_keys() {
    local existing
    existing=$("$bin" keys list --config "$demo/xks-proxy.toml")
    while read -r label usage; do
        # `keys list` rows: MEMBER KEY VERSION LABEL ...; the key exists if it has version 1.
        awk -v key="$label" '$2 == key && $3 == "1" { found = 1 } END { exit !found }' \
            <<<"$existing" && continue
        "$bin" keys create --config "$demo/xks-proxy.toml" --label "$label" --usage "$usage" >&2
    done <<KEYS
demo-key-1 encrypt,decrypt
demo-encrypt-only encrypt
demo-decrypt-only decrypt
demo-no-usage
KEYS
}

print_usage() {
    local url="https://localhost:$port$prefix/kms/xks/v1"
    local meta='"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","kmsKeyArn":"arn:aws:kms:us-east-1:123456789012:key/demo","kmsOperation":"Encrypt","kmsRequestId":"demo-request-1"}'
    cat <<USAGE

xks-proxy demo: $url (token '$token_label', keys demo-key-1, demo-encrypt-only,
demo-decrypt-only, demo-no-usage). KMS console file: $demo/kms-console.json

Encrypt "Hello World!" (paste into another terminal):

curl --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$access_key_id:$secret" \\
  --cacert "$demo/tls/ca.pem" -H "Content-Type: application/json" \\
  --data '{$meta,"plaintext":"SGVsbG8gV29ybGQh","encryptionAlgorithm":"AES_GCM"}' \\
  $url/keys/demo-key-1/encrypt

Health:

curl --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$access_key_id:$secret" \\
  --cacert "$demo/tls/ca.pem" -H "Content-Type: application/json" \\
  --data '{"requestMetadata":{"kmsRequestId":"demo-2","kmsOperation":"KmsHealthCheck"}}' \\
  $url/health

USAGE
}

install_packages
build
make_token
make_certificate
make_credential
write_config
make_keys
print_usage
say "serving on $listen (Ctrl-C to stop)"
exec "$bin" serve --config "$demo/xks-proxy.toml"
