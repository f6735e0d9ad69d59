#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, unit and integration tests against a real
# SoftHSM2 token and a real Prometheus server, the AWS SDK suites, and the deployment files'
# checks, then the API and TLS suites against the `fips` build (aws-lc-rs's
# FIPS module). Installs softhsm2, opensc (pkcs11-tool), curl, prometheus, systemd-analyze,
# cmake and Go (the FIPS module's build) when they are missing, and the SDKs (pip, npm) into
# target/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null || missing+=(softhsm2)
command -v pkcs11-tool >/dev/null || missing+=(opensc)
command -v curl >/dev/null || missing+=(curl)
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v systemd-analyze >/dev/null || missing+=(systemd)
# aws-lc-fips-sys builds AWS-LC's FIPS module with CMake and Go (README "Building with FIPS
# crypto").
command -v cmake >/dev/null || missing+=(cmake)
command -v go >/dev/null || missing+=(golang-go)
# The SDK suites: a Python venv (ensurepip) and npm.
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

export XKS_REQUIRE_PROMETHEUS=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# The fault-injecting PKCS#11 module the fault tests load (a cdylib: no CARGO_BIN_EXE_ for it),
# and the local KMS front the SDK suite drives (another package's binary: none either).
cargo build -p xks-fault-pkcs11 -p xks-kms-local --locked --quiet
# The SDK suites' toolchains (tests/kms_local.rs, tests/kms_local_sdks.rs), each installed into
# target/ only when missing: a venv with boto3 and the AWS Encryption SDK, and
# @aws-sdk/client-kms from npm. From a clean clone this takes about 25 s (measured 23.5 s).
target=${CARGO_TARGET_DIR:-$PWD/target}
venv=$target/sdk-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import boto3, aws_encryption_sdk' 2>/dev/null ||
    "$venv/bin/pip" install --quiet --disable-pip-version-check boto3 aws-encryption-sdk
export XKS_PYTHON=$venv/bin/python
sdk_js=$target/sdk-js
if [ ! -f "$sdk_js/node_modules/@aws-sdk/client-kms/package.json" ]; then
    mkdir -p "$sdk_js"
    npm install --prefix "$sdk_js" --no-audit --no-fund --silent @aws-sdk/client-kms
fi
export XKS_NODE_MODULES=$sdk_js/node_modules
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
    cargo test --workspace --doc --locked
else
    cargo test --workspace --locked --no-fail-fast
fi
if [ -x deploy/check.sh ]; then
    ./deploy/check.sh
fi
# The `fips` build (aws-lc-rs; the default above is ring, src/tls/provider.rs): the TLS unit
# tests (which check `ServerConfig::fips()`), the API conformance and TLS front suites, with
# warnings as errors. Its own target dir keeps the main build's artefacts (README "Building
# with FIPS crypto"). No clippy here: `cargo clippy` built the FIPS module (minutes of C) a
# second time, and the fips-only lines are few.
fips=(-p xks-proxy --locked --no-default-features --features fips)
export CARGO_TARGET_DIR=$target/fips RUSTFLAGS="${RUSTFLAGS:-} -D warnings"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run "${fips[@]}" --no-fail-fast --lib --test api --test tls_front
else
    cargo test "${fips[@]}" --no-fail-fast --lib --test api --test tls_front
fi
