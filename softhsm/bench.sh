#!/usr/bin/env bash
# Benchmarks against the demo token (run ./softhsm/demo.sh once first; it may be stopped).
#
#   softhsm/bench.sh latency [LATENCY=2ms] [SECONDS=10]
#       The token behind the fault-injecting module with LATENCY added to every PKCS#11 call
#       (a network HSM); encrypt at concurrency 64 with 4, 16 and 64 HSM sessions: throughput
#       should scale with sessions, not be capped by cores.
#   softhsm/bench.sh soak [SECONDS=180]
#       Mixed encrypt/decrypt/health load for SECONDS; prints the proxy's RSS every 10 s and
#       the error count (expected: 0 errors, flat RSS).
#
# Loopback only: the proxy listens on 127.0.0.1:8543 (admin 127.0.0.1:9543).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=${XKS_DEMO_DIR:-$root/.demo}
mode=${1:-latency}
[ -f "$demo/xks-proxy.toml" ] || { echo "run ./softhsm/demo.sh once first" >&2; exit 1; }

cargo build --release --locked --manifest-path "$root/Cargo.toml" --bin xks-proxy --example xks_load >&2
cargo build --release --locked --manifest-path "$root/Cargo.toml" -p xks-fault-pkcs11 >&2
bin=$root/target/release/xks-proxy
load=$root/target/release/examples/xks_load
fault=$root/target/release/libxks_fault_pkcs11.so
url=https://localhost:8543/demo/kms/xks/v1/keys/demo-key-1/encrypt
load_args=(--url "$url" --cacert "$demo/tls/cert.pem" --console-json "$demo/kms-console.json")
export SOFTHSM2_CONF=$demo/softhsm2.conf
proxy_pid=
trap '[ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null; wait 2>/dev/null || true' EXIT

# start_proxy MODULE SESSIONS: the demo configuration on other ports, quiet logs.
start_proxy() {
    sed -e 's|^listen = .*|listen = "127.0.0.1:8543"|' \
        -e "s|^module = .*|module = \"$1\"\\nsessions = $2\\nqueue_depth = 4096|" \
        -e 's|^format = .*|format = "text"\nlevel = "warn"\n[admin]\nlisten = "127.0.0.1:9543"|' \
        "$demo/xks-proxy.toml" >"$demo/bench.toml"
    "$bin" serve --config "$demo/bench.toml" >"$demo/bench.log" 2>&1 &
    proxy_pid=$!
    for _ in $(seq 100); do
        curl -sf --cacert "$demo/tls/cert.pem" https://localhost:8543/ping >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "proxy did not start; see $demo/bench.log" >&2
    exit 1
}

stop_proxy() {
    kill "$proxy_pid"
    wait "$proxy_pid" 2>/dev/null || true
    proxy_pid=
}

case $mode in
latency)
    latency=${2:-2ms}
    seconds=${3:-10}
    echo "latency * $latency" >"$demo/bench-faults"
    export XKS_FAULT_CONTROL=$demo/bench-faults XKS_FAULT_REAL_MODULE=/usr/lib/softhsm/libsofthsm2.so
    for sessions in 4 16 64; do
        start_proxy "$fault" "$sessions"
        echo "== $latency per PKCS#11 call, $sessions sessions, encrypt at concurrency 64"
        "$load" "${load_args[@]}" --concurrency 64 --duration "$seconds" | grep -E 'requests|errors|throughput|latency'
        stop_proxy
    done
    ;;
soak)
    seconds=${2:-180}
    start_proxy /usr/lib/softhsm/libsofthsm2.so 8
    "$load" "${load_args[@]}" --concurrency 8 --duration "$seconds" >"$demo/soak-encrypt.txt" &
    "$load" "${load_args[@]}" --concurrency 8 --duration "$seconds" --operation decrypt >"$demo/soak-decrypt.txt" &
    "$load" "${load_args[@]}" --concurrency 2 --duration "$seconds" --operation health >"$demo/soak-health.txt" &
    for t in $(seq 0 10 "$seconds"); do
        echo "t=${t}s rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status")"
        sleep 10
    done
    wait %2 %3 %4 2>/dev/null || true
    for op in encrypt decrypt health; do
        echo "== $op"; grep -E 'requests|errors|throughput' "$demo/soak-$op.txt"
    done
    stop_proxy
    ;;
*)
    echo "usage: $0 latency [LATENCY] [SECONDS] | soak [SECONDS]" >&2
    exit 2
    ;;
esac
