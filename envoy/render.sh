#!/usr/bin/env bash
# envoy/render.sh — print envoy/envoy.yaml (the proxy-wasm build), envoy/envoy-dynamic-module.yaml (the
# native build) or envoy/prometheus/prometheus.yml with other ports, upstream, .wasm path or filter
# configuration, for running several stacks side by side (tests) or pointing the
# gateway at another engine. The same variables serve both, so a gateway and the Prometheus that
# scrapes it stay in agreement.
#
#   GATEWAY_PORT=20000 ADMIN_PORT=20001 METRICS_PORT=20002 UPSTREAM_PORT=18000 \
#     envoy/render.sh > /tmp/gw.yaml && .venv/bin/envoy -c /tmp/gw.yaml --use-dynamic-base-id
#   METRICS_PORT=20002 UPSTREAM_PORT=18000 SCRAPE_INTERVAL=1s \
#     envoy/render.sh prometheus > /tmp/prom.yml && prometheus --config.file=/tmp/prom.yml ...
#
# Usage: envoy/render.sh [envoy|dynamic-module|prometheus]   (default envoy)
# (dynamic-module takes the same variables as envoy except WASM_FILE; Envoy finds the module through
# ENVOY_DYNAMIC_MODULES_SEARCH_PATH when it starts.)
# Variables (unset = the value in the template):
#   GATEWAY_PORT      gateway listener port           (10000)                       envoy
#   ADMIN_PORT        admin API port                  (9901; also the metrics route) envoy
#   METRICS_PORT      read-only /stats/prometheus     (9902)                        envoy, prometheus
#   UPSTREAM_HOST     engine IPv4 address             (127.0.0.1)                   envoy, prometheus
#   UPSTREAM_PORT     engine port                     (8000)                        envoy, prometheus
#   WASM_FILE         filter module path              (target/wasm32-wasip1/release/llm_metrics_filter.wasm,
#                     relative to the directory Envoy starts in; absolute to start elsewhere) envoy
#   FILTER_CONFIG     the filter's JSON configuration ({})                          envoy
#   ROUTE_TIMEOUT     the gateway route's timeout for a whole response (0s: none)    envoy
#   STREAM_IDLE_TIMEOUT  how long a stream may move no byte (600s)                   envoy
#   SCRAPE_INTERVAL   scrape and rule evaluation interval (5s)                      prometheus
#   ALERTMANAGER_PORT where alerts are sent           (9093)                        prometheus
# The rendered prometheus.yml names alerts.yml by absolute path, so it can be written anywhere.
#
# Listeners stay on 127.0.0.1. Each substitution must hit the template exactly as often as expected, so
# an edit of a template that would make a variable silently do nothing fails here instead.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kind="${1:-envoy}"
case "$kind" in
    envoy) template="$here/envoy.yaml" ;;
    dynamic-module) template="$here/envoy-dynamic-module.yaml" ;;
    prometheus) template="$here/prometheus/prometheus.yml" ;;
    *) echo "render.sh: unknown template '$kind' (expected envoy, dynamic-module or prometheus)" >&2; exit 2 ;;
esac
[ -f "$template" ] || { echo "render.sh: template not found: $template" >&2; exit 1; }

fail() { echo "render.sh: $*" >&2; exit 1; }
is_port() {
    if ! [[ "$2" =~ ^[0-9]+$ ]] || [ "$2" -lt 1 ] || [ "$2" -gt 65535 ]; then
        fail "$1 must be a port number 1-65535, got '$2'"
    fi
}
for v in GATEWAY_PORT ADMIN_PORT METRICS_PORT UPSTREAM_PORT ALERTMANAGER_PORT; do
    if [ -n "${!v:-}" ]; then is_port "$v" "${!v}"; fi
done
if [ -n "${UPSTREAM_HOST:-}" ] && ! [[ "$UPSTREAM_HOST" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; then
    fail "UPSTREAM_HOST must be an IPv4 address, got '$UPSTREAM_HOST'"
fi

out="$(cat "$template")"

# replace NAME OLD NEW EXPECTED_COUNT: literal (not regex) replacement with a count check.
replace() {
    local name="$1" old="$2" new="$3" want="$4" got
    got="$(grep -cF -- "$old" <<<"$out" || true)"
    [ "$got" = "$want" ] || fail "$name: expected '$old' on $want line(s) of $template, found $got"
    out="${out//"$old"/"$new"}"
}

if [ "$kind" != prometheus ]; then
    [ -z "${GATEWAY_PORT:-}" ] || replace GATEWAY_PORT "port_value: 10000 }" "port_value: $GATEWAY_PORT }" 1
    [ -z "${ADMIN_PORT:-}" ] || replace ADMIN_PORT "port_value: 9901 }" "port_value: $ADMIN_PORT }" 2
    [ -z "${METRICS_PORT:-}" ] || replace METRICS_PORT "port_value: 9902 }" "port_value: $METRICS_PORT }" 1
    if [ -n "${UPSTREAM_HOST:-}${UPSTREAM_PORT:-}" ]; then
        replace "UPSTREAM_HOST/UPSTREAM_PORT" "{ address: 127.0.0.1, port_value: 8000 }" \
            "{ address: ${UPSTREAM_HOST:-127.0.0.1}, port_value: ${UPSTREAM_PORT:-8000} }" 1
    fi
    if [ -n "${WASM_FILE:-}" ]; then
        [ "$kind" = envoy ] || fail "WASM_FILE applies to the proxy-wasm build only (the dynamic module is found through ENVOY_DYNAMIC_MODULES_SEARCH_PATH)"
        [[ "$WASM_FILE" != *[\'\"$'\n']* ]] || fail "WASM_FILE must not contain quotes or newlines"
        replace WASM_FILE "filename: target/wasm32-wasip1/release/llm_metrics_filter.wasm" "filename: '$WASM_FILE'" 1
    fi
    for v in ROUTE_TIMEOUT STREAM_IDLE_TIMEOUT; do
        if [ -n "${!v:-}" ] && ! [[ "${!v}" =~ ^[0-9]+(\.[0-9]+)?s$ ]]; then
            fail "$v must be a duration in seconds like 30s or 0.5s, got '${!v}'"
        fi
    done
    [ -z "${ROUTE_TIMEOUT:-}" ] || replace ROUTE_TIMEOUT "timeout: 0s" "timeout: $ROUTE_TIMEOUT" 1
    [ -z "${STREAM_IDLE_TIMEOUT:-}" ] || replace STREAM_IDLE_TIMEOUT "stream_idle_timeout: 600s" "stream_idle_timeout: $STREAM_IDLE_TIMEOUT" 1
    if [ -n "${FILTER_CONFIG:-}" ]; then
        [[ "$FILTER_CONFIG" != *$'\n'* ]] || fail "FILTER_CONFIG must be one line of JSON"
        # YAML single-quoted scalar: the only escape is '' for '.
        replace FILTER_CONFIG "value: '{}'" "value: '${FILTER_CONFIG//\'/\'\'}'" 1
    fi
else
    [ -z "${METRICS_PORT:-}" ] || replace METRICS_PORT '"127.0.0.1:9902"' "\"127.0.0.1:$METRICS_PORT\"" 1
    if [ -n "${UPSTREAM_HOST:-}${UPSTREAM_PORT:-}" ]; then
        replace "UPSTREAM_HOST/UPSTREAM_PORT" '"127.0.0.1:8000"' \
            "\"${UPSTREAM_HOST:-127.0.0.1}:${UPSTREAM_PORT:-8000}\"" 1
    fi
    [ -z "${ALERTMANAGER_PORT:-}" ] || replace ALERTMANAGER_PORT '"127.0.0.1:9093"' "\"127.0.0.1:$ALERTMANAGER_PORT\"" 1
    if [ -n "${SCRAPE_INTERVAL:-}" ]; then
        [[ "$SCRAPE_INTERVAL" =~ ^[0-9]+(ms|s|m)$ ]] || fail "SCRAPE_INTERVAL must be a duration like 1s, got '$SCRAPE_INTERVAL'"
        replace SCRAPE_INTERVAL "scrape_interval: 5s" "scrape_interval: $SCRAPE_INTERVAL" 1
        replace SCRAPE_INTERVAL "evaluation_interval: 5s" "evaluation_interval: $SCRAPE_INTERVAL" 1
    fi
    [[ "$here" != *[\"$'\n']* ]] || fail "the repository path must not contain quotes or newlines"
    replace rule_files "  - alerts.yml" "  - \"$here/prometheus/alerts.yml\"" 1
fi

printf '%s\n' "$out"
