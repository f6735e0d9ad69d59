#!/usr/bin/env bash
# Static checks of the deployment files and operator docs; CI runs it from tests/run.sh.
#
#   1. systemd: `systemd-analyze verify` on the unit (ExecStart pointed at a built binary),
#      every Exec*= program exists, `systemd-analyze security` exposure stays <= 2.0, and
#      the sysusers.d file creates the unit's User=.
#   2. Kubernetes: every document in deploy/kubernetes/*.yaml validated strictly (unknown
#      fields are errors) with kubernetes-validate against Kubernetes 1.30 and the newest
#      bundled schema; custom resources (the ServiceMonitor) against models generated from
#      the Prometheus Operator CRD, equally strictly; then cross-file consistency (selectors,
#      port names, referenced ConfigMaps/Secrets, probes, the config's keys).
#   3. Grafana: the dashboard JSON parses and queries only metrics src/metrics.rs exports.
#   4. Docs: the README configuration reference lists exactly the keys of
#      config/xks-proxy.example.toml (commented-out alternatives included), and the README
#      Metrics table exactly the metrics of src/metrics.rs.
#
# Offline except for the first run, which creates a virtualenv with kubernetes-validate and
# the Prometheus Operator models from PyPI (XKS_CHECK_VENV, default
# ~/.cache/xks-proxy/check-venv). Idempotent; a few seconds once the virtualenv exists.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() {
    printf 'deploy/check.sh: FAILED: %s\n' "$*" >&2
    exit 1
}
step() { printf '==> %s\n' "$*"; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- 1. systemd ---------------------------------------------------------------------------
step "systemd unit"
unit=deploy/systemd/xks-proxy.service
command -v systemd-analyze >/dev/null ||
    fail "systemd-analyze not found (Debian: apt-get install systemd)"
# verify insists that ExecStart's program exists; use the built binary, else a stand-in.
bin=
for candidate in target/release/xks-proxy target/debug/xks-proxy; do
    if [ -x "$candidate" ]; then
        bin=$(pwd)/$candidate
        break
    fi
done
if [ -z "$bin" ]; then
    bin=$tmp/xks-proxy
    printf '#!/bin/sh\nexit 0\n' >"$bin"
    chmod 755 "$bin"
    echo "    note: no built xks-proxy in target/; verifying against a stand-in executable"
fi
# The file name matters (it is the unit name); keep it.
sed "s#/usr/local/bin/xks-proxy#$bin#g" "$unit" >"$tmp/xks-proxy.service"
# verify exits 0 on unknown keys and unparsable values (it only warns), so any message about
# our unit is a failure. Messages about other units on this host are shown, not fatal.
verify_out=$(systemd-analyze verify "$tmp/xks-proxy.service" 2>&1 | sed "s#$tmp/xks-proxy.service#$unit#g") ||
    fail "systemd-analyze verify $unit:"$'\n'"$verify_out"
ours=$(grep -F 'xks-proxy' <<<"$verify_out" || true)
[ -z "$ours" ] || fail "systemd-analyze verify $unit:"$'\n'"$ours"
others=$(grep -vF 'xks-proxy' <<<"$verify_out" || true)
[ -z "$others" ] || printf '    note (other units on this host):\n%s\n' "$others"
# verify checks only the ExecStart programs; check ExecStartPre/ExecReload/... too.
while IFS= read -r program; do
    [ -x "$program" ] || fail "$unit: $program (in an Exec*= line) is not an executable here"
done < <(sed -nE 's/^Exec[A-Za-z]*=[-@:+!]*([^ ]+).*/\1/p' "$tmp/xks-proxy.service")
# Hardening must not regress: exposure 0.0 (best) .. 10.0, threshold in tenths.
systemd-analyze security --offline=yes --threshold=20 "$tmp/xks-proxy.service" \
    >"$tmp/security.txt" 2>&1 ||
    fail "$unit: systemd-analyze security exposure above 2.0:"$'\n'"$(tail -n 3 "$tmp/security.txt")"
exposure=$(grep -oE 'exposure level for [^:]+: [0-9.]+' "$tmp/security.txt" | grep -oE '[0-9.]+$')
user=$(sed -nE 's/^User=(.+)/\1/p' "$unit")
mkdir -p "$tmp/root/etc"
sysusers_out=$(systemd-sysusers --dry-run --root="$tmp/root" "$(pwd)/deploy/systemd/xks-proxy.sysusers" 2>&1) ||
    fail "deploy/systemd/xks-proxy.sysusers:"$'\n'"$sysusers_out"
grep -q "Creating user '$user'" <<<"$sysusers_out" ||
    fail "deploy/systemd/xks-proxy.sysusers does not create the unit's User=$user"
echo "    ok: systemd-analyze verify clean, exposure $exposure, user $user from sysusers.d"

# --- Python tools for 2-4 -----------------------------------------------------------------
venv=${XKS_CHECK_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/xks-proxy/check-venv}
py=$venv/bin/python
requirements=(
    "kubernetes-validate==1.37.0"
    "cloudcoil.models.prometheus_operator==0.80.1.0"
    'tomli; python_version < "3.11"'
)
if ! "$py" -c 'import kubernetes_validate, yaml, pydantic, cloudcoil.models.prometheus_operator' \
    2>/dev/null; then
    step "creating $venv (kubernetes-validate, Prometheus Operator models)"
    command -v python3 >/dev/null || fail "python3 not found"
    python3 -m venv "$venv" ||
        fail "cannot create a virtualenv in $venv (Debian: apt-get install python3-venv)"
    "$py" -m pip install --quiet --disable-pip-version-check "${requirements[@]}" ||
        fail "pip install ${requirements[*]} failed (PyPI unreachable?)"
fi

# Run all three and report every problem before failing.
failed=()
step "Kubernetes manifests"
"$py" deploy/check.py kubernetes || failed+=("Kubernetes manifests")
step "Grafana dashboard"
"$py" deploy/check.py grafana || failed+=("Grafana dashboard")
step "README operator docs"
"$py" deploy/check.py docs || failed+=("README configuration reference / metrics table")
if [ ${#failed[@]} -gt 0 ]; then
    summary=$(printf '%s, ' "${failed[@]}")
    fail "${summary%, } (details above)"
fi
echo "deploy/check.sh: all checks passed"
