#!/usr/bin/env bash
# Benchmarks against the demo token (run ./softhsm/demo.sh once first; it may be stopped). Every
# mode is one command that prints its figures and, where the issue sets one, the target verdict.
#
#   softhsm/bench.sh c1 [SECONDS=10]
#       c=1 on one keep-alive connection alternating GET /ping and Encrypt (--compare-ping):
#       p50/p99 of both and the ratio; target Encrypt p50 <= 1.6 x ping p50.
#   softhsm/bench.sh h2 [SECONDS=10] [ROUNDS=3]
#       Encrypt at c=32 over HTTP/1.1 and HTTP/2, alternated ROUNDS times: req/s of each run,
#       the means and their ratio; target h2/h1 >= 0.9.
#   softhsm/bench.sh openloop [RATE=1800] [SECONDS=60]
#       Open loop (fixed rate, latency from each request's intended send time) at RATE for
#       SECONDS; target p99 <= 2 ms, p99.9 <= 5 ms, 0 errors. Then a search (doubling, then
#       bisecting; at most 10 runs of XKS_BENCH_SEARCH_SECONDS=10 s) for the highest rate with
#       p99 <= 10 ms and 0 errors.
#   softhsm/bench.sh latency [LATENCY=2ms] [SECONDS=10]
#       The token behind the fault-injecting module with LATENCY added to every PKCS#11 call
#       (a network HSM). Encrypt at c=1 (target p50 <= 2 x LATENCY + 0.5 ms: 4.5 ms at 2 ms);
#       with N = 4, 16, 64 sessions, encrypt at c=N (target >= 0.85 x N / (2 x LATENCY) req/s,
#       two calls per Encrypt) and at c=64 (throughput scales with sessions, not cores).
#   softhsm/bench.sh cpu [SECONDS=10]
#       Proxy CPU time (utime + stime from /proc) per request, encrypt and decrypt at c=16,
#       against SoftHSM2's own CPU per operation (cargo bench --bench pkcs11_raw) measured in
#       the same run; target ratio <= 2.5. XKS_BENCH_BASELINE=BINARY adds an older build.
#   softhsm/bench.sh instructions [REQUESTS=2000]
#       User-space instructions per request under valgrind's callgrind (encrypt and decrypt at
#       c=4, counted after 300 warm-up requests). Unlike CPU time it does not move with the
#       machine's noise, so it is the figure for a before/after of a small change; it leaves
#       out the kernel (syscalls, context switches), and valgrind has no SHA extensions, so
#       SigV4's SHA-256 weighs more than on the CPU. XKS_BENCH_BASELINE=BINARY adds an older
#       build. Needs valgrind.
#   softhsm/bench.sh soak [SECONDS=180]
#       Mixed encrypt/decrypt/health load for SECONDS; prints the proxy's RSS every 10 s and
#       the error count (expected: 0 errors, flat RSS).
#
# Every run is mTLS + SigV4, as KMS calls: a client certificate for cks.kms.us-east-1.amazonaws.com
# signed by the demo CA is made once in $demo/tls/, and the bench configuration requires it.
# Audit logging stays on (JSON, level "warn,xks_proxy::audit=info"); the proxy's stdout goes
# to $demo/bench.log (stderr: $demo/bench.err) and each run prints its audit line count.
#
# Loopback only: the proxy listens on 127.0.0.1:$XKS_BENCH_PORT (default 8543; admin on
# XKS_BENCH_ADMIN_PORT, default XKS_BENCH_PORT + 1000). A busy port is retried for 60 s.
# XKS_BENCH_SKIP_BUILD=1 uses the release binaries as they are (in $CARGO_TARGET_DIR or target/);
# XKS_BENCH_BIN=PATH runs another proxy binary (e.g. an older build, for a before/after table).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=${XKS_DEMO_DIR:-$root/.demo}
mode=${1:-latency}
port=${XKS_BENCH_PORT:-8543}
admin_port=${XKS_BENCH_ADMIN_PORT:-$((port + 1000))}
client_name=cks.kms.us-east-1.amazonaws.com
softhsm=/usr/lib/softhsm/libsofthsm2.so
[ -f "$demo/xks-proxy.toml" ] || { echo "run ./softhsm/demo.sh once first" >&2; exit 1; }

if [ "${XKS_BENCH_SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release --locked --manifest-path "$root/Cargo.toml" --bin xks-proxy --example xks_load >&2
    cargo build --release --locked --manifest-path "$root/Cargo.toml" -p xks-fault-pkcs11 >&2
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
bin=${XKS_BENCH_BIN:-$target_dir/release/xks-proxy}
load=$target_dir/release/examples/xks_load
fault=$target_dir/release/libxks_fault_pkcs11.so
url=https://localhost:$port/demo/kms/xks/v1/keys/demo-key-1/encrypt
tls=$demo/tls
load_args=(--url "$url" --cacert "$tls/ca.pem" --console-json "$demo/kms-console.json"
    --cert "$tls/bench-client.pem" --key "$tls/bench-client-key.pem")
export SOFTHSM2_CONF=$demo/softhsm2.conf
proxy_pid=
# What the proxy runs under (mode instructions: valgrind).
proxy_prefix=()
trap '[ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null; wait 2>/dev/null || true' EXIT

# make_client_cert: the mTLS client certificate KMS would present, signed by the demo CA.
make_client_cert() {
    [ -f "$tls/bench-client.pem" ] && [ -f "$tls/bench-client-key.pem" ] && return
    echo "creating the mTLS client certificate $tls/bench-client.pem (CN $client_name)" >&2
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$client_name" \
        -keyout "$tls/bench-client-key.pem" -out "$tls/bench-client.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=clientAuth" "subjectAltName=DNS:$client_name" >"$tls/bench-client.ext"
    openssl x509 -req -in "$tls/bench-client.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca-key.pem" \
        -CAcreateserial -days 365 -extfile "$tls/bench-client.ext" \
        -out "$tls/bench-client.pem" 2>/dev/null
    rm -f "$tls/bench-client.csr" "$tls/bench-client.ext" "$tls/ca.srl"
    chmod 600 "$tls/bench-client-key.pem"
}

# write_config MODULE SESSIONS: the demo configuration on the bench ports with mTLS required,
# the given PKCS#11 module and sessions, and JSON logs that keep the audit lines.
write_config() {
    awk -v port="$port" -v admin="$admin_port" -v module="$1" -v sessions="$2" \
        -v ca="$tls/ca.pem" -v name="$client_name" '
        function leave() {
            if (sec == "server.tls") {
                print "[server.tls.client_auth]"
                print "ca_bundle = \"" ca "\""
                print "allowed_subject_names = [\"" name "\"]"
            }
        }
        /^\[/ {
            leave(); sec = $0; gsub(/^\[+|\]+$/, "", sec); print; seen[sec] = 1
            if (sec == "hsm") { print "sessions = " sessions; print "queue_depth = 4096" }
            if (sec == "logging") { print "format = \"json\""; print "level = \"warn,xks_proxy::audit=info\"" }
            next
        }
        sec == "server" && /^listen *=/ { print "listen = \"127.0.0.1:" port "\""; next }
        sec == "admin" && /^listen *=/ { print "listen = \"127.0.0.1:" admin "\""; next }
        sec == "hsm" && /^module *=/ { print "module = \"" module "\""; next }
        sec == "hsm" && /^(sessions|queue_depth) *=/ { next }
        sec == "logging" && /^(format|level) *=/ { next }
        sec == "server.tls.client_auth" { next }
        { print }
        END {
            leave()
            if (!seen["logging"]) { print "[logging]"; print "format = \"json\""; print "level = \"warn,xks_proxy::audit=info\"" }
            if (!seen["admin"]) { print "[admin]"; print "listen = \"127.0.0.1:" admin "\"" }
        }' "$demo/xks-proxy.toml" >"$demo/bench.toml"
    chmod 600 "$demo/bench.toml"
    "$bin" check-config --config "$demo/bench.toml" >"$demo/bench-check.txt" 2>&1 ||
        { cat "$demo/bench-check.txt" >&2; echo "bench config rejected" >&2; exit 1; }
}

# port_busy PORT: something listens on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_proxy MODULE SESSIONS: the bench configuration, waiting (60 s at most) for free ports.
start_proxy() {
    write_config "$1" "$2"
    local tries
    for tries in $(seq 60); do
        port_busy "$port" || port_busy "$admin_port" || break
        [ "$tries" = 1 ] && echo "port $port or $admin_port busy; waiting up to 60 s (or set XKS_BENCH_PORT)" >&2
        [ "$tries" = 60 ] && { echo "ports still busy" >&2; exit 1; }
        sleep 1
    done
    "${proxy_prefix[@]}" "$bin" serve --config "$demo/bench.toml" >"$demo/bench.log" 2>"$demo/bench.err" &
    proxy_pid=$!
    # Up to 60 s: under valgrind the start takes seconds. A proxy that exits ends the wait.
    for _ in $(seq 600); do
        curl -sf --cacert "$tls/ca.pem" --cert "$tls/bench-client.pem" \
            --key "$tls/bench-client-key.pem" "https://localhost:$port/ping" >/dev/null 2>&1 && return
        kill -0 "$proxy_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "proxy did not start; see $demo/bench.err" >&2
    exit 1
}

# stop_proxy: stops the proxy and prints how many audit lines it wrote.
stop_proxy() {
    kill "$proxy_pid"
    wait "$proxy_pid" 2>/dev/null || true
    proxy_pid=
    echo "   (audit: $(grep -c '"target":"xks_proxy::audit"' "$demo/bench.log" || true) lines in $demo/bench.log)"
}

# run_load NAME ARGS...: one xks_load run, its output kept in $demo/bench-NAME.txt.
run_load() {
    local name=$1
    shift
    "$load" "${load_args[@]}" "$@" >"$demo/bench-$name.txt" || { cat "$demo/bench-$name.txt" >&2; exit 1; }
}

# fig NAME LINE KEY: the number after KEY on the LINE line of run NAME (latency in ms).
fig() { awk -v line="$2" -v key="$3" '$0 ~ line { for (i = 1; i < NF; i++) if ($i == key) { print $(i + 1); exit } }' "$demo/bench-$1.txt"; }
# rps NAME: the first number on the throughput line (achieved req/s).
rps() { awk '/throughput/ { for (i = 2; i <= NF; i++) if ($i ~ /^[0-9.]+$/) { print $i; exit } }' "$demo/bench-$1.txt"; }
# errors NAME: the sum of the error counts on the requests line.
errors() { awk '/^  requests/ { for (i = 2; i <= NF; i++) if ($i ~ /^errors/) n += $(i - 1) } END { print n + 0 }' "$demo/bench-$1.txt"; }
# late NAME: open-loop requests sent more than 1 ms late.
late() { awk '/schedule/ { for (i = 2; i <= NF; i++) if ($i == "sent") { print $(i - 1); exit } }' "$demo/bench-$1.txt"; }
# verdict COND TEXT: "PASS TEXT" when the awk condition COND holds, else "FAIL TEXT".
verdict() { if awk "BEGIN { exit !($1) }"; then echo "   PASS  $2"; else echo "   FAIL  $2"; fi; }
# calc EXPR: awk arithmetic, two decimals.
calc() { awk "BEGIN { printf \"%.2f\", ($1) }"; }

# summary NAME: requests/s, errors and latency of run NAME on one line.
summary() {
    printf '   %-28s %9s req/s  errors %s  p50 %s  p99 %s  p99.9 %s  max %s ms\n' "$1" "$(rps "$1")" \
        "$(errors "$1")" "$(fig "$1" 'latency ms' p50)" "$(fig "$1" 'latency ms' p99)" \
        "$(fig "$1" 'latency ms' p99.9)" "$(fig "$1" 'latency ms' max)"
}

# mode_c1 SECONDS: item 3, Encrypt against GET /ping on one keep-alive connection.
mode_c1() {
    local seconds=${1:-10}
    start_proxy "$softhsm" 4
    echo "== c=1, GET /ping and Encrypt alternating on one keep-alive connection, ${seconds} s"
    run_load c1 --compare-ping --duration "$seconds"
    stop_proxy
    grep -E '^  (ping|encrypt) ' "$demo/bench-c1.txt"
    local ratio
    ratio=$(awk '/^  ratio/ { print $NF }' "$demo/bench-c1.txt")
    echo "   errors $(errors c1), ratio encrypt p50 / ping p50 = $ratio"
    verdict "$ratio <= 1.6 && $(errors c1) == 0" "Encrypt p50 <= 1.6 x ping p50 (ratio $ratio), 0 errors"
}

# mode_h2 SECONDS ROUNDS: item 4, HTTP/2 against HTTP/1.1 encrypt throughput at c=32.
mode_h2() {
    local seconds=${1:-10} rounds=${2:-3} round h1=0 h2=0 bad=0
    [ "$rounds" -ge 1 ] && [ "$rounds" -le 10 ] || { echo "ROUNDS: 1 to 10" >&2; exit 2; }
    start_proxy "$softhsm" 4
    echo "== Encrypt at c=32, HTTP/1.1 and HTTP/2 alternated $rounds times, ${seconds} s each"
    for round in $(seq "$rounds"); do
        run_load "h1-$round" --concurrency 32 --duration "$seconds"
        summary "h1-$round"
        run_load "h2-$round" --concurrency 32 --duration "$seconds" --http2
        summary "h2-$round"
        h1=$(calc "$h1 + $(rps "h1-$round")")
        h2=$(calc "$h2 + $(rps "h2-$round")")
        bad=$((bad + $(errors "h1-$round") + $(errors "h2-$round")))
    done
    stop_proxy
    h1=$(calc "$h1 / $rounds")
    h2=$(calc "$h2 / $rounds")
    local ratio
    ratio=$(calc "$h1 > 0 ? $h2 / $h1 : 0")
    echo "   mean HTTP/1.1 $h1 req/s, HTTP/2 $h2 req/s, ratio h2/h1 $ratio, errors $bad"
    verdict "$ratio >= 0.9 && $bad == 0" "HTTP/2 >= 0.9 x HTTP/1.1 throughput at c=32 (ratio $ratio), 0 errors"
}

# openloop_run NAME RATE SECONDS: one open-loop run on 64 connections; prints its summary.
openloop_run() {
    run_load "$1" --rate "$2" --duration "$3" --concurrency 64
    summary "$1"
    echo "   $(grep -o '[0-9]* scheduled, [0-9]* sent late.*worst send delay [0-9.]* ms' "$demo/bench-$1.txt")"
}

# mode_openloop RATE SECONDS: item 5, the fixed rate, then the highest rate with p99 <= 10 ms.
mode_openloop() {
    local rate=${1:-1800} seconds=${2:-60} search=${XKS_BENCH_SEARCH_SECONDS:-10}
    [[ $rate =~ ^[1-9][0-9]{0,6}$ ]] || { echo "RATE: a whole number of requests per second" >&2; exit 2; }
    start_proxy "$softhsm" 4
    echo "== open loop at $rate req/s for ${seconds} s (latency from intended send time)"
    openloop_run "open-$rate" "$rate" "$seconds"
    local p99 p999 bad
    p99=$(fig "open-$rate" 'latency ms' p99)
    p999=$(fig "open-$rate" 'latency ms' p99.9)
    bad=$(errors "open-$rate")
    verdict "$p99 <= 2 && $p999 <= 5 && $bad == 0" \
        "at $rate req/s: p99 $p99 <= 2 ms, p99.9 $p999 <= 5 ms, errors $bad == 0"

    echo "== search: highest rate with p99 <= 10 ms and 0 errors (${search} s runs, at most 10)"
    # lo: the highest rate that passed (0: none yet); hi: the lowest that failed (0: none yet).
    # The fixed-rate run counts as the first point; then doubling until a failure, then
    # bisecting until hi <= 1.05 x lo.
    local lo=0 hi=0 r runs=0 name
    if awk "BEGIN { exit !($p99 <= 10 && $bad == 0) }"; then lo=$rate r=$((rate * 2)); else hi=$rate r=$((rate / 2)); fi
    while [ "$runs" -lt 10 ]; do
        runs=$((runs + 1))
        name=search-$runs
        openloop_run "$name" "$r" "$search"
        if awk "BEGIN { exit !($(fig "$name" 'latency ms' p99) <= 10 && $(errors "$name") == 0) }"; then
            lo=$r
        else
            hi=$r
        fi
        if [ "$hi" = 0 ]; then
            r=$((r * 2))
        elif [ "$lo" = 0 ]; then
            [ "$r" -le 1 ] && break
            r=$((r / 2))
        else
            awk "BEGIN { exit !($hi <= 1.05 * $lo) }" && break
            r=$(((lo + hi) / 2))
        fi
    done
    stop_proxy
    if [ "$lo" = 0 ]; then
        echo "   highest rate with p99 <= 10 ms and 0 errors: below $hi req/s (no run passed)"
    elif [ "$hi" = 0 ]; then
        echo "   highest rate with p99 <= 10 ms and 0 errors: at least $lo req/s (no run failed)"
    else
        echo "   highest rate with p99 <= 10 ms and 0 errors: $lo req/s ($hi req/s failed; $runs runs)"
    fi
}

# mode_latency LATENCY SECONDS: item 2 and the session scaling, behind the fault module.
mode_latency() {
    local latency=${1:-2ms} seconds=${2:-10} sessions ms
    ms=$(awk -v l="$latency" 'BEGIN { if (l ~ /^[0-9.]+ms$/) print l + 0 }')
    echo "latency * $latency" >"$demo/bench-faults"
    export XKS_FAULT_CONTROL=$demo/bench-faults XKS_FAULT_REAL_MODULE=$softhsm
    for sessions in 4 16 64; do
        start_proxy "$fault" "$sessions"
        if [ "$sessions" = 4 ]; then
            echo "== $latency per PKCS#11 call, 4 sessions, encrypt at c=1"
            run_load lat-c1 --concurrency 1 --duration "$seconds"
            summary lat-c1
            [ -n "$ms" ] && verdict "$(fig lat-c1 'latency ms' p50) <= 2 * $ms + 0.5 && $(errors lat-c1) == 0" \
                "c=1 p50 $(fig lat-c1 'latency ms' p50) ms <= $(calc "2 * $ms + 0.5") ms, 0 errors"
        fi
        echo "== $latency per PKCS#11 call, $sessions sessions, encrypt at c=$sessions$([ "$sessions" = 64 ] || echo " and c=64")"
        run_load "lat-$sessions-c$sessions" --concurrency "$sessions" --duration "$seconds"
        summary "lat-$sessions-c$sessions"
        [ -n "$ms" ] && verdict "$(rps "lat-$sessions-c$sessions") >= 0.85 * $sessions * 1000 / (2 * $ms) && $(errors "lat-$sessions-c$sessions") == 0" \
            "c=$sessions: $(rps "lat-$sessions-c$sessions") req/s >= 0.85 x $sessions / $(calc "2 * $ms") ms = $(calc "0.85 * $sessions * 1000 / (2 * $ms)") req/s, 0 errors"
        if [ "$sessions" != 64 ]; then
            run_load "lat-$sessions-c64" --concurrency 64 --duration "$seconds"
            summary "lat-$sessions-c64"
        fi
        stop_proxy
    done
}

# proxy_cpu_ticks PID: utime + stime of PID in clock ticks (fields 14 and 15 of
# /proc/PID/stat, counted after the parenthesised command name, which may hold spaces).
proxy_cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    awk '{ print $12 + $13 }' <<<"${stat##*) }"
}

# cpu_raw NAME: SoftHSM2's own cost, no proxy (`cargo bench --bench pkcs11_raw`, one thread, a
# token of its own); sets raw_encrypt and raw_decrypt to CPU us per operation under a key stored
# on the token, as the proxy's keys are.
cpu_raw() {
    env -u SOFTHSM2_CONF cargo bench --locked --manifest-path "$root/Cargo.toml" --bench pkcs11_raw 2>/dev/null |
        grep '^RAW' >"$demo/bench-$1.txt"
    sed 's/^/   /' "$demo/bench-$1.txt"
    raw_encrypt=$(awk -F'cpu_us_per_op=' '/^RAW token-key encrypt/ { print $2 }' "$demo/bench-$1.txt")
    raw_decrypt=$(awk -F'cpu_us_per_op=' '/^RAW token-key decrypt/ { print $2 }' "$demo/bench-$1.txt")
}

# cpu_proxy BINARY LABEL SECONDS: proxy CPU per request for encrypt and decrypt at c=16 with
# BINARY; sets cpu_encrypt and cpu_decrypt (us per request).
cpu_proxy() {
    local saved_bin=$bin op before after requests hz
    hz=$(getconf CLK_TCK)
    bin=$1
    start_proxy "$softhsm" 4
    for op in encrypt decrypt; do
        before=$(proxy_cpu_ticks "$proxy_pid")
        run_load "cpu-$2-$op" --concurrency 16 --duration "$3" --warmup 0 --operation "$op"
        after=$(proxy_cpu_ticks "$proxy_pid")
        requests=$(awk '/^  requests/ { print $2 }' "$demo/bench-cpu-$2-$op.txt")
        summary "cpu-$2-$op"
        printf -v "cpu_$op" '%s' "$(calc "($after - $before) * 1e6 / $hz / ($requests > 0 ? $requests : 1)")"
        echo "   $2 $op: proxy CPU $(eval echo "\$cpu_$op") us per request ($((after - before)) ticks at $hz/s, $requests requests)"
    done
    stop_proxy
    bin=$saved_bin
}

# mode_cpu SECONDS: item 1, proxy CPU per request against SoftHSM2's own cost, measured in
# one run. XKS_BENCH_BASELINE=/path/to/older/xks-proxy measures that binary too, in the same
# run, for a before/after ratio.
mode_cpu() {
    local seconds=${1:-10} raw_encrypt raw_decrypt cpu_encrypt cpu_decrypt
    echo "== SoftHSM2 alone (cargo bench --bench pkcs11_raw)"
    cpu_raw raw
    if [ -n "${XKS_BENCH_BASELINE:-}" ]; then
        echo "== baseline $XKS_BENCH_BASELINE: encrypt and decrypt at c=16, ${seconds} s each"
        cpu_proxy "$XKS_BENCH_BASELINE" baseline "$seconds"
        local base_encrypt=$cpu_encrypt base_decrypt=$cpu_decrypt
    fi
    echo "== $bin: encrypt and decrypt at c=16, ${seconds} s each"
    cpu_proxy "$bin" proxy "$seconds"
    local op raw cpu ratio
    for op in encrypt decrypt; do
        raw=$(eval echo "\$raw_$op")
        cpu=$(eval echo "\$cpu_$op")
        ratio=$(calc "$cpu / $raw")
        if [ -n "${XKS_BENCH_BASELINE:-}" ]; then
            echo "   $op: baseline $(eval echo "\$base_$op") us, now $cpu us per request (now/baseline $(calc "$cpu / $(eval echo "\$base_$op")"))"
        fi
        verdict "$ratio <= 2.5" "$op: proxy $cpu us per request <= 2.5 x SoftHSM2's $raw us (ratio $ratio)"
    done
}

# mode_soak SECONDS: mixed load, RSS every 10 s, error counts.
mode_soak() {
    local seconds=${1:-180} t pids=()
    start_proxy "$softhsm" 8
    "$load" "${load_args[@]}" --concurrency 8 --duration "$seconds" >"$demo/bench-soak-encrypt.txt" & pids+=($!)
    "$load" "${load_args[@]}" --concurrency 8 --duration "$seconds" --operation decrypt >"$demo/bench-soak-decrypt.txt" & pids+=($!)
    "$load" "${load_args[@]}" --concurrency 2 --duration "$seconds" --operation health >"$demo/bench-soak-health.txt" & pids+=($!)
    for t in $(seq 0 10 "$seconds"); do
        echo "t=${t}s rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status")"
        sleep 10
    done
    wait "${pids[@]}" 2>/dev/null || true
    for op in encrypt decrypt health; do
        summary "soak-$op"
    done
    stop_proxy
}

# mode_instructions REQUESTS: instructions per request of $bin (and XKS_BENCH_BASELINE).
mode_instructions() {
    local requests=${1:-2000} build op counts ir pid
    command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install -y valgrind)" >&2; exit 1; }
    local builds=("$bin")
    [ -n "${XKS_BENCH_BASELINE:-}" ] && builds=("$XKS_BENCH_BASELINE" "$bin")
    local main_bin=$bin
    echo "== user-space instructions per request (callgrind), c=4, after 300 warm-up requests"
    for build in "${builds[@]}"; do
        bin=$build
        for op in encrypt decrypt; do
            proxy_prefix=(valgrind --tool=callgrind "--callgrind-out-file=$demo/callgrind.%p")
            start_proxy "$softhsm" 4
            proxy_prefix=()
            # Valgrind translates code on first use: the first requests may miss the HSM
            # deadline (DependencyTimeoutException); warm up until a run goes through.
            for _ in $(seq 10); do
                "$load" "${load_args[@]}" --concurrency 4 --duration 600 --warmup 0 --requests 300 \
                    --operation "$op" >"$demo/bench-ir-warm-$op.txt" 2>&1 && break
                sleep 1
            done
            callgrind_control -z "$proxy_pid" >/dev/null 2>&1
            run_load "ir-$op" --concurrency 4 --duration 600 --warmup 0 --requests "$requests" --operation "$op"
            callgrind_control -d "$proxy_pid" >/dev/null 2>&1
            pid=$proxy_pid
            counts=$demo/callgrind.$pid.1
            for _ in $(seq 100); do grep -qE '^(summary|totals):' "$counts" 2>/dev/null && break; sleep 0.1; done
            stop_proxy >/dev/null
            ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$counts" 2>/dev/null)
            [ -n "$ir" ] || { echo "no callgrind counts in $counts" >&2; exit 1; }
            rm -f "$demo/callgrind.$pid" "$demo/callgrind.$pid".*
            echo "   $build $op: $((ir / requests)) instructions per request ($requests requests, $(errors "ir-$op") errors)"
        done
    done
    bin=$main_bin
}

make_client_cert
case $mode in
c1 | h2 | openloop | latency | cpu | soak | instructions)
    [ $# -gt 0 ] && shift
    "mode_$mode" "$@"
    ;;
*)
    echo "usage: $0 c1 [SECONDS] | h2 [SECONDS] [ROUNDS] | openloop [RATE] [SECONDS]" \
        "| latency [LATENCY] [SECONDS] | cpu [SECONDS] | soak [SECONDS] | instructions [REQUESTS]" >&2
    exit 2
    ;;
esac
