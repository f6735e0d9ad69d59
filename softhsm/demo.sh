#!/usr/bin/env bash
# Runs a demo xks-proxy on https://localhost:8443 against a SoftHSM2 token in ./.demo/.
#
# On a fresh Debian machine with the Rust toolchain this installs softhsm2/openssl/curl if
# missing, builds the proxy, creates the token, demo keys, a self-signed TLS certificate and a
# SigV4 credential, prints a ready-to-paste `curl --aws-sigv4` command, then serves in the
# foreground (Ctrl-C stops it). Re-running reuses what exists.
#
# With `--with-kms-front` (or XKS_DEMO_KMS_FRONT=1) it also builds and starts the local KMS
# front (`xks-kms-local`, softhsm/kms-local) on http://127.0.0.1:8444, trusting the demo CA and
# keeping its stores and keys in $demo/kms-state.json, and prints a ready-to-paste boto3 snippet
# that creates a custom key store and an XKS key through it and encrypts with them. The front
# stops when the proxy stops.
#
# Environment: XKS_DEMO_DIR (default ./.demo), XKS_DEMO_LISTEN (default 127.0.0.1:8443),
# XKS_DEMO_ADMIN_LISTEN (metrics and probes, default 127.0.0.1:9443), XKS_PROXY_BIN (use this
# binary instead of building one), XKS_DEMO_KMS_FRONT=1, XKS_DEMO_KMS_LISTEN (default
# 127.0.0.1:8444), XKS_KMS_LOCAL_BIN (use this front binary instead of building one),
# XKS_DEMO_PYTHON (the python the snippet names, default python3; it needs boto3).
set -euo pipefail

with_front=${XKS_DEMO_KMS_FRONT:-0}
for arg in "$@"; do
    case $arg in
        --with-kms-front) with_front=1 ;;
        *) echo "usage: $0 [--with-kms-front]" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=${XKS_DEMO_DIR:-$root/.demo}
listen=${XKS_DEMO_LISTEN:-127.0.0.1:8443}
admin_listen=${XKS_DEMO_ADMIN_LISTEN:-127.0.0.1:9443}
port=${listen##*:}
kms_listen=${XKS_DEMO_KMS_LISTEN:-127.0.0.1:8444}
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

build_front() {
    if [ -n "${XKS_KMS_LOCAL_BIN:-}" ]; then
        front_bin=$XKS_KMS_LOCAL_BIN
        return
    fi
    say "building xks-kms-local (release)"
    cargo build --release --locked -p xks-kms-local --manifest-path "$root/Cargo.toml" >&2
    front_bin=$root/target/release/xks-kms-local
}

# Starts the front in the background and waits (10 s at most) for its startup line. Until the
# proxy takes over this process, an EXIT trap stops the front; afterwards a watcher does: it
# holds the read end of a pipe whose only writer is this process (so the proxy, after `exec`),
# and stops the front when that end closes, however the proxy ended.
start_front() {
    say "starting xks-kms-local on $kms_listen"
    "$front_bin" --listen "$kms_listen" --ca-bundle "$demo/tls/ca.pem" \
        --state "$demo/kms-state.json" >"$demo/kms-local.log" 2>&1 &
    front_pid=$!
    trap 'kill "$front_pid" 2>/dev/null || true' EXIT
    local tries=0
    until grep -q "listening on" "$demo/kms-local.log"; do
        if ! kill -0 "$front_pid" 2>/dev/null || [ $((tries += 1)) -gt 100 ]; then
            cat "$demo/kms-local.log" >&2
            echo "xks-kms-local did not start on $kms_listen" >&2
            exit 1
        fi
        sleep 0.1
    done
    exec {front_watch}> >(cat >/dev/null; kill "$front_pid" 2>/dev/null)
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
    [ "$with_front" = 1 ] || return 0
    cat <<USAGE
Local KMS front: http://$kms_listen (state $demo/kms-state.json, log $demo/kms-local.log).
Create a custom key store and an XKS key through it, then encrypt (boto3; re-running reuses
both; paste into another terminal):

${XKS_DEMO_PYTHON:-python3} - <<'EOF'
import boto3, json
kms = boto3.client("kms", endpoint_url="http://$kms_listen", region_name="us-east-1",
                   aws_access_key_id="demo", aws_secret_access_key="demo")
console = json.load(open("$demo/kms-console.json"))
stores = [s for s in kms.describe_custom_key_stores()["CustomKeyStores"] if s["CustomKeyStoreName"] == "demo"]
if stores:
    store = stores[0]["CustomKeyStoreId"]
else:
    store = kms.create_custom_key_store(CustomKeyStoreName="demo",
        CustomKeyStoreType="EXTERNAL_KEY_STORE", XksProxyUriEndpoint="https://localhost:$port",
        XksProxyUriPath=console["XksProxyUriPath"], XksProxyConnectivity="PUBLIC_ENDPOINT",
        XksProxyAuthenticationCredential=console["XksProxyAuthenticationCredential"])["CustomKeyStoreId"]
if not stores or stores[0]["ConnectionState"] != "CONNECTED":
    kms.connect_custom_key_store(CustomKeyStoreId=store)
keys = [k["KeyId"] for k in kms.list_keys()["Keys"] if kms.describe_key(KeyId=k["KeyId"])
        ["KeyMetadata"].get("XksKeyConfiguration", {}).get("Id") == "demo-key-1"]
key = keys[0] if keys else kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store,
    XksKeyId="demo-key-1", Description="demo")["KeyMetadata"]["KeyId"]
blob = kms.encrypt(KeyId=key, Plaintext=b"Hello World!", EncryptionContext={"app": "demo"})["CiphertextBlob"]
print(key, kms.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "demo"})["Plaintext"].decode())
EOF

USAGE
}

install_packages
build
if [ "$with_front" = 1 ]; then build_front; fi
make_token
make_certificate
make_credential
write_config
make_keys
if [ "$with_front" = 1 ]; then start_front; fi
print_usage
say "serving on $listen (Ctrl-C to stop)"
exec "$bin" serve --config "$demo/xks-proxy.toml"
