#!/usr/bin/env bash
# TLS crypto providers compared in one interleaved run (README "Crypto provider"): two proxy
# binaries built with different providers serve the demo token in turn (A, B, A, B, ...), and
# each turn measures
#   * full TLS handshakes per second against /ping (`openssl s_time -new`, TLS 1.3 and 1.2),
#   * signed Encrypt at concurrency 16 over keep-alive connections (examples/xks_load),
#   * the proxy's CPU time (utime + stime from /proc/PID/stat) per handshake and per request.
#
#   softhsm/bench-provider.sh LABEL_A BIN_A LABEL_B BIN_B [ROUNDS=3] [SECONDS=10]
#
# Run ./softhsm/demo.sh once first (it may be stopped) and build the load tool
# (`cargo build --release --example xks_load`). Loopback only: the proxy listens on
# 127.0.0.1:8643 (admin 127.0.0.1:9643). Prints one tab-separated line per turn.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=${XKS_DEMO_DIR:-$root/.demo}
[ $# -ge 4 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
labels=("$1" "$3")
bins=("$2" "$4")
rounds=${5:-3}
seconds=${6:-10}
[ -f "$demo/xks-proxy.toml" ] || { echo "run ./softhsm/demo.sh once first" >&2; exit 1; }
load=${CARGO_TARGET_DIR:-$root/target}/release/examples/xks_load
[ -x "$load" ] || { echo "build the load tool first: cargo build --release --example xks_load" >&2; exit 1; }
port=8643
url=https://localhost:$port/demo/kms/xks/v1/keys/demo-key-1/encrypt
export SOFTHSM2_CONF=$demo/softhsm2.conf
ticks=$(getconf CLK_TCK)
proxy_pid=
trap '[ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null; wait 2>/dev/null || true' EXIT

# The demo configuration on other ports, quiet logs.
export XKS__SERVER__LISTEN=127.0.0.1:$port XKS__ADMIN__LISTEN=127.0.0.1:9643 XKS__LOGGING__LEVEL=warn

start_proxy() {
    "$1" serve --config "$demo/xks-proxy.toml" >"$demo/bench-provider.log" 2>&1 &
    proxy_pid=$!
    for _ in $(seq 100); do
        curl -sf --cacert "$demo/tls/cert.pem" "https://localhost:$port/ping" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "proxy did not start; see $demo/bench-provider.log" >&2
    exit 1
}

stop_proxy() {
    kill "$proxy_pid"
    wait "$proxy_pid" 2>/dev/null || true
    proxy_pid=
}

# The proxy's CPU time so far, in clock ticks (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$proxy_pid/stat"
}

# handshakes VERSION_FLAG: full handshakes in $seconds, and the proxy's CPU µs per handshake.
handshakes() {
    local before after out n
    before=$(cpu_ticks)
    out=$(openssl s_time -connect "127.0.0.1:$port" -new -time "$seconds" "$1" \
        -CAfile "$demo/tls/cert.pem" -www /ping 2>/dev/null)
    after=$(cpu_ticks)
    n=$(sed -n 's/^\([0-9]*\) connections in [0-9.]* real seconds.*/\1/p' <<<"$out" | head -1)
    printf '%s\t%s' "$(awk -v n="$n" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }')" \
        "$(awk -v t=$((after - before)) -v k="$ticks" -v n="$n" 'BEGIN { printf "%.0f", t / k * 1e6 / n }')"
}

# encrypt: signed Encrypt at c=16 for $seconds; req/s, p99 ms and CPU µs per request.
encrypt() {
    local before after out n rate p99
    before=$(cpu_ticks)
    out=$("$load" --url "$url" --cacert "$demo/tls/cert.pem" \
        --console-json "$demo/kms-console.json" --concurrency 16 --duration "$seconds")
    after=$(cpu_ticks)
    rate=$(sed -n 's/^  throughput  \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
    # The CPU window holds the warm-up requests too.
    n=$(sed -n 's/^  requests    \([0-9]*\) measured: .*; \([0-9]*\) warm-up.*/\1 \2/p' <<<"$out" |
        awk '{ print $1 + $2 }')
    p99=$(grep -o 'p99 [0-9.]*' <<<"$out" | head -1 | awk '{ print $2 }')
    printf '%.0f\t%s\t%s' "$rate" "${p99:-?}" \
        "$(awk -v t=$((after - before)) -v k="$ticks" -v n="$n" 'BEGIN { printf "%.0f", t / k * 1e6 / n }')"
}

printf 'provider\ths13/s\tcpu_us/hs13\ths12/s\tcpu_us/hs12\tenc/s\tp99_ms\tcpu_us/enc\n'
for round in $(seq "$rounds"); do
    for i in 0 1; do
        start_proxy "${bins[$i]}"
        printf '%s\t%s\t%s\t%s\n' "${labels[$i]}" "$(handshakes -tls1_3)" "$(handshakes -tls1_2)" \
            "$(encrypt)"
        stop_proxy
    done
    echo "# round $round done" >&2
done
