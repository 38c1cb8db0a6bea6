#!/usr/bin/env bash
# envoy/render.sh — print envoy/envoy.yaml with its ports, upstream, .wasm path or filter configuration
# replaced, for running several gateways side by side (tests) or pointing one at another engine.
#
#   GATEWAY_PORT=20000 ADMIN_PORT=20001 METRICS_PORT=20002 UPSTREAM_PORT=18000 \
#     envoy/render.sh > /tmp/gw.yaml && .venv/bin/envoy -c /tmp/gw.yaml --base-id 7
#
# Variables (unset = the value in envoy.yaml):
#   GATEWAY_PORT   gateway listener port          (10000)
#   ADMIN_PORT     admin API port                 (9901; also the metrics route's target)
#   METRICS_PORT   read-only /stats/prometheus    (9902)
#   UPSTREAM_HOST  engine IPv4 address            (127.0.0.1)
#   UPSTREAM_PORT  engine port                    (8000)
#   WASM_FILE      filter module path             (target/wasm32-wasip1/release/llm_metrics_filter.wasm,
#                  relative to the directory Envoy starts in; give an absolute path to start elsewhere)
#   FILTER_CONFIG  the filter's JSON configuration ({})
#   ENVOY_YAML     the template                   (envoy/envoy.yaml beside this script)
#
# Listeners stay on 127.0.0.1. Each substitution must hit the template exactly as often as expected, so
# an edit of envoy.yaml that would make a variable silently do nothing fails here instead.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
template="${ENVOY_YAML:-$here/envoy.yaml}"
[ -f "$template" ] || { echo "render.sh: template not found: $template" >&2; exit 1; }

is_port() { [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] && [ "$2" -le 65535 ] ||
    { echo "render.sh: $1 must be a port number 1-65535, got '$2'" >&2; exit 1; }; }

out="$(cat "$template")"

# replace NAME OLD NEW EXPECTED_COUNT: literal (not regex) replacement with a count check.
replace() {
    local name="$1" old="$2" new="$3" want="$4" got
    got="$(grep -cF -- "$old" <<<"$out" || true)"
    if [ "$got" != "$want" ]; then
        echo "render.sh: $name: expected '$old' on $want line(s) of $template, found $got" >&2
        exit 1
    fi
    out="${out//"$old"/"$new"}"
}

if [ -n "${GATEWAY_PORT:-}" ]; then
    is_port GATEWAY_PORT "$GATEWAY_PORT"
    replace GATEWAY_PORT "port_value: 10000 }" "port_value: $GATEWAY_PORT }" 1
fi
if [ -n "${ADMIN_PORT:-}" ]; then
    is_port ADMIN_PORT "$ADMIN_PORT"
    replace ADMIN_PORT "port_value: 9901 }" "port_value: $ADMIN_PORT }" 2
fi
if [ -n "${METRICS_PORT:-}" ]; then
    is_port METRICS_PORT "$METRICS_PORT"
    replace METRICS_PORT "port_value: 9902 }" "port_value: $METRICS_PORT }" 1
fi
if [ -n "${UPSTREAM_PORT:-}" ]; then
    is_port UPSTREAM_PORT "$UPSTREAM_PORT"
    replace UPSTREAM_PORT "port_value: 8000 }" "port_value: $UPSTREAM_PORT }" 1
fi
if [ -n "${UPSTREAM_HOST:-}" ]; then
    [[ "$UPSTREAM_HOST" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] ||
        { echo "render.sh: UPSTREAM_HOST must be an IPv4 address, got '$UPSTREAM_HOST'" >&2; exit 1; }
    replace UPSTREAM_HOST "{ address: 127.0.0.1, port_value: ${UPSTREAM_PORT:-8000} }" \
        "{ address: $UPSTREAM_HOST, port_value: ${UPSTREAM_PORT:-8000} }" 1
fi
if [ -n "${WASM_FILE:-}" ]; then
    [[ "$WASM_FILE" != *[\'\"$'\n']* ]] || { echo "render.sh: WASM_FILE must not contain quotes or newlines" >&2; exit 1; }
    replace WASM_FILE "filename: target/wasm32-wasip1/release/llm_metrics_filter.wasm" "filename: '$WASM_FILE'" 1
fi
if [ -n "${FILTER_CONFIG:-}" ]; then
    [[ "$FILTER_CONFIG" != *$'\n'* ]] || { echo "render.sh: FILTER_CONFIG must be one line of JSON" >&2; exit 1; }
    # YAML single-quoted scalar: the only escape is '' for '.
    replace FILTER_CONFIG "value: '{}'" "value: '${FILTER_CONFIG//\'/\'\'}'" 1
fi

printf '%s\n' "$out"
