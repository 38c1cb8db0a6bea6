#!/usr/bin/env bash
# envoy/check.sh — check every deployment file in envoy/ with the real tools.
#
#   envoy/setup.sh --test && envoy/check.sh
#
# Checks (each prints "ok"/"FAIL" with the tool's output on failure; the last line is "N passed, N failed"
# and the exit status is 1 if any failed):
#   - the filter .wasm is built (cargo build --release --target wasm32-wasip1 -p llm-metrics-filter), or
#     taken from $LLM_FILTER_WASM when set; likewise the native module (cargo build --release -p
#     llm-metrics-filter --features dynamic-module), or the one in $LLM_FILTER_MODULE_DIR
#   - envoy --mode validate: envoy/envoy.yaml as shipped (loads the .wasm and runs its configuration), a
#     render.sh variant with other ports and a non-default filter configuration, and the bootstrap
#     fragments of the Istio and Envoy Gateway manifests; a filter configuration with an unknown field
#     is rejected; the same for envoy/envoy-dynamic-module.yaml with the native module
#   - the metrics listener of a running Envoy serves GET /stats/prometheus and nothing else
#   - promtool check config / check rules / test rules; amtool check-config and its routing by severity
#   - shellcheck on every shell script (envoy/*.sh, tests/run.sh, .ci/run)
#   - Istio manifests against Istio's CRD schemas (validate-istio.mjs), and every target against the
#     filter's metric names and labels (check-contract.mjs)
#   - the Grafana dashboard is valid JSON and each of its queries parses in a real Prometheus
# Run from anywhere; it works in the repository root and writes only to a temporary directory.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
ENVOY="$ROOT/.venv/bin/envoy"
WASM_DEFAULT="target/wasm32-wasip1/release/llm_metrics_filter.wasm"
WASM="${LLM_FILTER_WASM:-$WASM_DEFAULT}"
# The native build: the directory holding libllm_metrics_filter.so (Envoy's module search path).
MODULE_DIR="${LLM_FILTER_MODULE_DIR:-target/release}"

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT

passed=0
failed=0
# check NAME CMD...: run CMD, output captured; show it only on failure.
check() {
    local name="$1"; shift
    local log="$TMP/check.log"
    if "$@" >"$log" 2>&1; then
        printf 'ok   %s\n' "$name"
        passed=$((passed + 1))
    else
        printf 'FAIL %s\n' "$name"
        tail -n 25 "$log" | sed 's/^/     | /'
        failed=$((failed + 1))
    fi
}
# fails NAME CMD...: the check passes when CMD fails.
fails() { local name="$1"; shift; check "$name" bash -c '! "$@"' _ "$@"; }

need() { # need TOOL HOW: a tool the checks use
    command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] || { echo "missing $1: $2"; return 1; }
}
tools_present() {
    local ok=0
    need "$ENVOY" "run envoy/setup.sh" || ok=1
    need promtool "run envoy/setup.sh --test" || ok=1
    need prometheus "run envoy/setup.sh --test" || ok=1
    need amtool "run envoy/setup.sh --test" || ok=1
    need node "run envoy/setup.sh --test" || ok=1
    need shellcheck "run envoy/setup.sh --test" || ok=1
    [ -f .cache/npm/node_modules/@kubernetes-models/istio/package.json ] ||
        { echo "missing @kubernetes-models/istio: run envoy/setup.sh --test"; ok=1; }
    return $ok
}
check "tools installed (envoy, prometheus, promtool, amtool, node packages)" tools_present

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- the filter module -----------------------------------------------------------------------------------
build_wasm() {
    if [ -n "${LLM_FILTER_WASM:-}" ]; then
        [ -s "$WASM" ] || { echo "LLM_FILTER_WASM=$WASM is not a file"; return 1; }
    else
        cargo build --release --target wasm32-wasip1 -p llm-metrics-filter
    fi
}
check "filter module $WASM" build_wasm
build_module() {
    if [ -n "${LLM_FILTER_MODULE_DIR:-}" ]; then
        [ -s "$MODULE_DIR/libllm_metrics_filter.so" ] || { echo "no libllm_metrics_filter.so in LLM_FILTER_MODULE_DIR=$MODULE_DIR"; return 1; }
    else
        cargo build --release -p llm-metrics-filter --features dynamic-module
    fi
}
check "native filter module $MODULE_DIR/libllm_metrics_filter.so" build_module

# --- Envoy configurations ----------------------------------------------------------------------------------
validate() { "$ENVOY" --mode validate -l warning -c "$1"; }
render() { WASM_FILE="$WASM" envoy/render.sh; }
if [ -z "${LLM_FILTER_WASM:-}" ]; then
    check "envoy --mode validate envoy/envoy.yaml" validate envoy/envoy.yaml
else
    render >"$TMP/shipped.yaml" && check "envoy --mode validate envoy/envoy.yaml (wasm $WASM)" validate "$TMP/shipped.yaml"
fi
GATEWAY_PORT=20000 ADMIN_PORT=20001 METRICS_PORT=20002 UPSTREAM_HOST=127.0.0.2 UPSTREAM_PORT=18000 \
    FILTER_CONFIG='{"models":["qwen3-tiny","Qwen/Qwen3-1.7B"],"max_models":8}' render >"$TMP/rendered.yaml"
check "envoy --mode validate render.sh variant (ports, upstream, filter config)" validate "$TMP/rendered.yaml"
FILTER_CONFIG='{"no_such_field":1}' render >"$TMP/badconfig.yaml"
fails "envoy rejects a filter configuration with an unknown field" validate "$TMP/badconfig.yaml"

validate_dm() { ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$MODULE_DIR" validate "$1"; }
check "envoy --mode validate envoy/envoy-dynamic-module.yaml (native module)" validate_dm envoy/envoy-dynamic-module.yaml
GATEWAY_PORT=20000 ADMIN_PORT=20001 METRICS_PORT=20002 UPSTREAM_PORT=18000 \
    FILTER_CONFIG='{"models":["qwen3-tiny"],"max_models":8}' envoy/render.sh dynamic-module >"$TMP/dm-rendered.yaml"
check "envoy --mode validate render.sh dynamic-module variant" validate_dm "$TMP/dm-rendered.yaml"
FILTER_CONFIG='{"no_such_field":1}' envoy/render.sh dynamic-module >"$TMP/dm-badconfig.yaml"
fails "envoy rejects a native filter configuration with an unknown field" validate_dm "$TMP/dm-badconfig.yaml"

check "contract: every target agrees with the filter's metric names and labels" \
    node envoy/check-contract.mjs --bootstrap-dir "$TMP/bootstrap"
check "envoy --mode validate Envoy Gateway bootstrap merge (envoy-gateway/envoyproxy.yaml)" \
    validate "$TMP/bootstrap/envoy-gateway-bootstrap.yaml"
check "envoy --mode validate Envoy Gateway bootstrap merge (envoy-gateway/dynamic-module.yaml)" \
    validate "$TMP/bootstrap/envoy-gateway-dynamic-module-bootstrap.yaml"
check "envoy --mode validate Istio bootstrap patch (istio/envoyfilter-histogram-buckets.yaml)" \
    validate "$TMP/bootstrap/istio-envoyfilter-bootstrap.yaml"

# The metrics listener must answer GET /stats/prometheus and 404 everything else of the admin API.
metrics_listener_read_only() {
    local gw admin metrics up code
    gw="$(free_port)"; admin="$(free_port)"; metrics="$(free_port)"; up="$(free_port)"
    GATEWAY_PORT="$gw" ADMIN_PORT="$admin" METRICS_PORT="$metrics" UPSTREAM_PORT="$up" render >"$TMP/run.yaml" || return 1
    "$ENVOY" -c "$TMP/run.yaml" --use-dynamic-base-id -l warning >"$TMP/envoy-run.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$metrics/stats/prometheus" && break
        kill -0 "$pid" 2>/dev/null || { cat "$TMP/envoy-run.log"; return 1; }
        sleep 0.1
    done
    local rc=0 path method want
    while read -r method path want; do
        code="$(curl -s -o /dev/null -w '%{http_code}' -X "$method" "http://127.0.0.1:$metrics$path")"
        echo "$method $path -> $code (want $want)"
        [ "$code" = "$want" ] || rc=1
    done <<'EOF'
GET /stats/prometheus 200
GET /stats/prometheus?usedonly 200
GET /stats 404
GET /config_dump 404
GET /clusters 404
POST /stats/prometheus 404
POST /quitquitquit 404
POST /logging?level=trace 404
POST /reset_counters 404
EOF
    # Read the whole page first: `curl | grep -q` fails under pipefail when grep exits before curl is
    # done writing (curl then dies of SIGPIPE).
    local page
    page="$(curl -fs "http://127.0.0.1:$metrics/stats/prometheus")"
    grep -q '^# TYPE envoy_server_uptime gauge' <<<"$page" ||
        { echo "no envoy_server_uptime in /stats/prometheus"; rc=1; }
    kill -0 "$pid" 2>/dev/null || { echo "envoy exited"; rc=1; }
    return $rc
}
check "envoy metrics listener serves only GET /stats/prometheus" metrics_listener_read_only

# --- Prometheus and Alertmanager --------------------------------------------------------------------------
check "promtool check config envoy/prometheus/prometheus.yml" promtool check config envoy/prometheus/prometheus.yml
METRICS_PORT=20002 UPSTREAM_PORT=18000 ALERTMANAGER_PORT=20093 SCRAPE_INTERVAL=1s \
    envoy/render.sh prometheus >"$TMP/prometheus-rendered.yml"
check "promtool check config render.sh prometheus variant" promtool check config "$TMP/prometheus-rendered.yml"
check "promtool check rules envoy/prometheus/alerts.yml" promtool check rules envoy/prometheus/alerts.yml
check "promtool test rules envoy/prometheus/alerts_test.yml" promtool test rules envoy/prometheus/alerts_test.yml
check "amtool check-config envoy/alertmanager/alertmanager.yml" amtool check-config envoy/alertmanager/alertmanager.yml
route() { amtool config routes test --config.file=envoy/alertmanager/alertmanager.yml --verify.receivers="$1" "${@:2}"; }
check "alertmanager routes severity=critical to llm-oncall-pager" route llm-oncall-pager severity=critical alertname=LLMGatewayErrorRateHigh model=m
check "alertmanager routes severity=warning to llm-team" route llm-team severity=warning alertname=LLMEngineKVCacheNearlyFull model_name=m

check "shellcheck on every script (envoy/*.sh, tests/run.sh, .ci/run)" shellcheck envoy/*.sh tests/run.sh .ci/run

# --- Istio ----------------------------------------------------------------------------------------------------
check "Istio manifests valid against Istio's CRD schemas" node envoy/validate-istio.mjs envoy/istio/*.yaml

# --- Grafana ----------------------------------------------------------------------------------------------------
check "grafana/llm-gateway.json is valid JSON" python3 -m json.tool envoy/grafana/llm-gateway.json
dashboard_queries_parse() {
    python3 envoy/grafana/queries.py --format json >"$TMP/queries.json" || return 1
    local port
    port="$(free_port)"
    printf 'global:\n  scrape_interval: 1m\n' >"$TMP/prom.yml"
    prometheus --config.file="$TMP/prom.yml" --web.listen-address="127.0.0.1:$port" \
        --storage.tsdb.path="$TMP/tsdb" >"$TMP/prom.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$port/-/ready" && break
        kill -0 "$pid" 2>/dev/null || { cat "$TMP/prom.log"; return 1; }
        sleep 0.1
    done
    PROM="http://127.0.0.1:$port" python3 - "$TMP/queries.json" <<'EOF'
import json, os, sys, urllib.error, urllib.parse, urllib.request
bad = 0
queries = json.load(open(sys.argv[1]))
for q in queries:
    url = os.environ["PROM"] + "/api/v1/query?" + urllib.parse.urlencode({"query": q["expr"]})
    try:
        status = json.load(urllib.request.urlopen(url, timeout=10))["status"]
        error = ""
    except urllib.error.HTTPError as e:
        body = json.load(e)
        status, error = body.get("status"), body.get("error")
    if status != "success":
        bad += 1
        print(f"{q['panel']} {q['ref_id']}: {error}\n  {q['expr']}")
print(f"{len(queries)} queries, {bad} rejected")
sys.exit(1 if bad or not queries else 0)
EOF
}
check "every dashboard query parses in Prometheus" dashboard_queries_parse

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
