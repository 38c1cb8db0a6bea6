#!/usr/bin/env bash
# envoy/demo.sh — the whole stack in one command: the engine, Envoy with the llm-metrics filter, optionally
# Prometheus, sample traffic and a live per-model summary read from the gateway's metrics.
#
#   bash envoy/demo.sh                      # until Ctrl-C
#   bash envoy/demo.sh --duration 60        # stop by itself after 60 s
#   bash envoy/demo.sh --requests 40        # ... or after 40 requests
#   bash envoy/demo.sh --prometheus         # also Prometheus on 127.0.0.1:9090 scraping both
#
# What it does, from the repository root:
#   1. refuses to start if a port it needs is taken: 8000 (engine), 10000 (gateway), 9901 (Envoy admin),
#      9902 (Envoy metrics), and with --prometheus 9090
#   2. envoy/setup.sh (--demo with --prometheus): installs what is missing, skips what is there
#   3. builds the filter (cargo build --release --target wasm32-wasip1 -p llm-metrics-filter) and the
#      engine (cargo build -p qwen3-engine; the first build compiles candle and takes minutes)
#   4. starts qwen3-engine (tiny random-weight Qwen3, served as qwen3-tiny) on 127.0.0.1:8000, Envoy with
#      envoy/envoy.yaml on 127.0.0.1:10000 (admin 127.0.0.1:9901, read-only metrics 127.0.0.1:9902), and
#      with --prometheus, Prometheus with envoy/prometheus/prometheus.yml on 127.0.0.1:9090 (data in a
#      temporary directory)
#   5. runs envoy/demo.py: traffic (streaming and not, thinking on and off) and the summary
#   6. on Ctrl-C, at the end, or on any failure: stops everything it started and removes its temporary
#      directory (logs are printed when a component fails to start)
# Everything listens on 127.0.0.1 only.
# Other options are passed to envoy/demo.py (--clients N, --interval SECONDS, --max-tokens N).
# shellcheck disable=SC2317  # cleanup and stop_demo run from traps, which shellcheck does not follow
set -euo pipefail

usage() { sed -n '2,/^# Other options/p' "$0" | sed 's/^# \{0,1\}//'; }

want_prometheus=0
demo_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --prometheus) want_prometheus=1 ;;
        --duration|--requests|--clients|--interval|--max-tokens)
            [ $# -ge 2 ] || { echo "demo.sh: $1 needs a value" >&2; exit 2; }
            demo_args+=("$1" "$2"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is needed (Debian: apt-get install python3)"

# A port is free when a server could bind it now (SO_REUSEADDR, as servers set it: connections in
# TIME_WAIT do not count, a listener does).
port_free() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}
PORTS=("8000:engine" "10000:gateway" "9901:Envoy admin" "9902:Envoy metrics")
[ "$want_prometheus" -eq 0 ] || PORTS+=("9090:Prometheus")
check_ports() {
    local entry taken=()
    for entry in "${PORTS[@]}"; do
        port_free "${entry%%:*}" || taken+=("127.0.0.1:${entry%%:*} (${entry#*:})")
    done
    if [ "${#taken[@]}" -gt 0 ]; then
        printf 'demo: error: port(s) already in use: %s\n' "${taken[*]}" >&2
        echo "demo: stop what listens there (e.g. an earlier demo: ss -ltnp | grep -E ':(8000|10000|990[12]|9090) ')" >&2
        exit 1
    fi
}
check_ports

say "setup (envoy/setup.sh$([ "$want_prometheus" -eq 1 ] && echo ' --demo'))"
if [ "$want_prometheus" -eq 1 ]; then bash envoy/setup.sh --demo; else bash envoy/setup.sh; fi

command -v cargo >/dev/null 2>&1 || die "cargo is needed: install Rust (https://rustup.rs) and run again"
say "building the filter .wasm (release, wasm32-wasip1)"
cargo build --quiet --release --target wasm32-wasip1 -p llm-metrics-filter
say "building the engine (cargo build -p qwen3-engine; minutes the first time)"
cargo build --quiet -p qwen3-engine --bins

# The builds took a while: someone may have taken a port meanwhile.
check_ports

TMP="$(mktemp -d -t llm-gateway-demo.XXXXXX)"
PIDS=()
NAMES=()
cleanup() {
    local i
    trap - EXIT INT TERM
    for i in "${!PIDS[@]}"; do
        kill "${PIDS[$i]}" 2>/dev/null || true
    done
    for i in "${!PIDS[@]}"; do
        wait "${PIDS[$i]}" 2>/dev/null || true
    done
    [ "${#PIDS[@]}" -eq 0 ] || say "stopped ${NAMES[*]}"
    rm -rf "$TMP"
}
DEMO_PID=""
# On Ctrl-C or SIGTERM: let demo.py print its last summary from the live gateway, then clean up.
stop_demo() {
    if [ -n "$DEMO_PID" ]; then
        kill -INT "$DEMO_PID" 2>/dev/null || true
        wait "$DEMO_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'stop_demo; exit 130' INT
trap 'stop_demo; exit 143' TERM

# start NAME LOG CMD...: run CMD in the background, its output to LOG, in a session of its own so
# that Ctrl-C reaches only this script and demo.py (which prints a last summary from the live
# gateway); cleanup stops the components afterwards.
start() {
    local name="$1" log="$2"
    shift 2
    setsid "$@" >"$log" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
}

# wait_http NAME URL LOG SECONDS: until URL answers 200, or fail showing LOG.
wait_http() {
    local name="$1" url="$2" log="$3" limit="$4" i pid="${PIDS[-1]}"
    for ((i = 0; i < limit * 10; i++)); do
        if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$url" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo: error: $name exited; its log:" >&2
            tail -n 30 "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "demo: error: $name did not answer $url within ${limit}s; its log:" >&2
    tail -n 30 "$log" >&2
    exit 1
}

say "starting qwen3-engine on 127.0.0.1:8000 (tiny random-weight Qwen3)"
start engine "$TMP/engine.log" target/debug/qwen3-engine --host 127.0.0.1 --port 8000
wait_http engine http://127.0.0.1:8000/health "$TMP/engine.log" 120

say "starting Envoy with the filter on 127.0.0.1:10000 (admin 127.0.0.1:9901, metrics 127.0.0.1:9902)"
start envoy "$TMP/envoy.log" .venv/bin/envoy -c envoy/envoy.yaml --use-dynamic-base-id -l warning
wait_http envoy http://127.0.0.1:9901/ready "$TMP/envoy.log" 30

if [ "$want_prometheus" -eq 1 ]; then
    say "starting Prometheus on 127.0.0.1:9090 (envoy/prometheus/prometheus.yml)"
    start prometheus "$TMP/prometheus.log" prometheus \
        --config.file=envoy/prometheus/prometheus.yml \
        --storage.tsdb.path="$TMP/prometheus-data" \
        --web.listen-address=127.0.0.1:9090 --log.level=warn
    wait_http prometheus http://127.0.0.1:9090/-/ready "$TMP/prometheus.log" 60
    say "Prometheus: http://127.0.0.1:9090/graph  e.g. sum by (model) (rate(llm_tokens_total{token_type=\"output\"}[1m]))"
fi

# In the background so that this script's traps run at once on a signal (bash defers them while a
# foreground command runs); demo.py handles SIGINT itself.
python3 envoy/demo.py --gateway http://127.0.0.1:10000 --metrics http://127.0.0.1:9902/stats/prometheus \
    "${demo_args[@]}" &
DEMO_PID=$!
status=0
wait "$DEMO_PID" || status=$?
DEMO_PID=""
exit "$status"
