#!/usr/bin/env python3
"""What the llm-metrics filter costs inside Envoy: Envoy CPU time per request, with and without it.

Envoys run side by side from the same rendered envoy/envoy.yaml , both with --concurrency 1, in front of one local upstream that serves canned
OpenAI-style responses. The workloads are driven through both in alternating rounds (A, B, B, A, ...),
so background noise hits both alike, and each Envoy's on-CPU time is read from
/proc/<pid>/task/*/schedstat (nanoseconds, Envoy's worker thread, which runs every filter callback)
around every round.

Workloads: a non-streaming chat completion with a ~1 KiB JSON body; 16- and 256-event SSE streams
paced 0.3 ms apart (so Envoy reads about one event per body callback, as with a real model); and a
256-event stream sent in one burst (Envoy reads many events per callback). Three Envoys: alone, with
the filter watching no path (the fixed cost any wasm filter has), and with the filter on. Only Envoy's
CPU is counted: the upstream and this client run in other processes.

    python3 tests/bench/filter_cost.py            # full run (a few minutes)
    python3 tests/bench/filter_cost.py --quick    # a few seconds, for smoke checks

Needs .venv/bin/envoy (envoy/setup.sh) and the release .wasm
(cargo build --release --target wasm32-wasip1 -p llm-metrics-filter). Listens on 127.0.0.1 only.
"""
import argparse
import http.client
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK stall each
    # response ~40 ms, and Envoy's background work would then be spread over very few requests.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(n) or b"{}")
        if body.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            events = ['data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
                      '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n']
            for i in range(int(body.get("events", 256))):
                events.append('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
                              '"choices":[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}]}\n\n' % i)
            events.append('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
                          '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
            events.append('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
                          '"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":256,"total_tokens":267}}\n\n')
            events.append("data: [DONE]\n\n")
            gap = float(body.get("gap_ms", 0)) / 1000
            for e in events:
                b = e.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
                self.wfile.flush()  # one write per event, as a real server emits them
                if gap:
                    time.sleep(gap)  # paced, so Envoy reads (mostly) one event per body callback
            self.wfile.write(b"0\r\n\r\n")
        else:
            out = json.dumps({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 640},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 160, "total_tokens": 172,
                          "prompt_tokens_details": {"cached_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0}},
                "system_fingerprint": "fp_0123456789"}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)


# The variants: Envoy alone; Envoy with the filter configured to watch no path (the fixed cost of any
# wasm filter: context creation and callbacks); Envoy with the filter watching the traffic.
VARIANTS = {
    "without_filter": None,
    "filter_idle": '{"paths": {"/never-matches": "completions"}}',
    "with_filter": "{}",
}


def render(gateway, admin, metrics, upstream, filter_config):
    env = dict(os.environ, GATEWAY_PORT=str(gateway), ADMIN_PORT=str(admin), METRICS_PORT=str(metrics),
               UPSTREAM_PORT=str(upstream), FILTER_CONFIG=filter_config or "{}")
    text = subprocess.run([os.path.join(ROOT, "envoy", "render.sh")], env=env, check=True,
                          capture_output=True, text=True).stdout
    if filter_config is None:
        # Drop the wasm filter entry (from its "- name:" line to the router's).
        text, n = re.subn(r"\n(\s*)- name: envoy\.filters\.http\.wasm\n.*?(?=\n\1- name: envoy\.filters\.http\.router)",
                          "", text, flags=re.S)
        assert n == 1, "could not remove the wasm filter from the rendered config"
    return text


def cpu_ns(pid):
    """On-CPU time of Envoy's worker threads (`wrk:*`), which run every filter callback. The main
    thread's periodic work (stats flush, histogram merges) does not depend on the request count."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if not f.read().startswith("wrk:"):
                    continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def wait_ready(port, deadline=30.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"envoy admin on {port} did not become ready")


WORKLOADS = {
    "nonstream_1KiB": {"model": "Qwen/Qwen3-1.7B", "messages": [{"role": "user", "content": "hi"}]},
    "stream_16_paced": {"model": "Qwen/Qwen3-1.7B", "messages": [{"role": "user", "content": "hi"}],
                        "stream": True, "events": 16, "gap_ms": 0.3},
    "stream_256_paced": {"model": "Qwen/Qwen3-1.7B", "messages": [{"role": "user", "content": "hi"}],
                         "stream": True, "events": 256, "gap_ms": 0.3},
    "stream_256_burst": {"model": "Qwen/Qwen3-1.7B", "messages": [{"role": "user", "content": "hi"}],
                         "stream": True, "events": 256},
}


def drive(port, body, n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.connect()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = json.dumps(body)
    for _ in range(n):
        c.request("POST", "/v1/chat/completions", payload, {"content-type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status != 200 or not data:
            raise SystemExit(f"bad response {r.status}")
    c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few requests: checks the setup, figures are noisy")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 8)
    counts = {"nonstream_1KiB": 300 if args.quick else 2000,
              "stream_16_paced": 60 if args.quick else 400,
              "stream_256_paced": 8 if args.quick else 60,
              "stream_256_burst": 20 if args.quick else 200}
    envoy = os.path.join(ROOT, ".venv", "bin", "envoy")
    wasm = os.path.join(ROOT, "target", "wasm32-wasip1", "release", "llm_metrics_filter.wasm")
    for path, hint in [(envoy, "bash envoy/setup.sh"),
                       (wasm, "cargo build --release --target wasm32-wasip1 -p llm-metrics-filter")]:
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}: run `{hint}`")

    up_port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", up_port), Upstream)
    # The upstream runs in a child process so its CPU never lands in Envoy's or this client's figures.
    pid = os.fork()
    if pid == 0:
        server.serve_forever()
        os._exit(0)
    server.socket.close()

    procs, ports = {}, {}
    tmp = tempfile.mkdtemp(prefix="filter-cost-")
    try:
        for name, filter_config in VARIANTS.items():
            gw, adm, met = free_port(), free_port(), free_port()
            cfg = os.path.join(tmp, f"{name}.yaml")
            with open(cfg, "w") as f:
                f.write(render(gw, adm, met, up_port, filter_config))
            procs[name] = subprocess.Popen([envoy, "-c", cfg, "--concurrency", "1", "--use-dynamic-base-id",
                                            "-l", "error"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                           stderr=open(os.path.join(tmp, f"{name}.log"), "w"))
            ports[name] = (gw, adm)
        for name, (gw, adm) in ports.items():
            wait_ready(adm)
            for body in WORKLOADS.values():
                drive(gw, body, 5)  # warm up: connections, V8 compilation, metric definitions
        totals = {(w, v): [0, 0] for w in WORKLOADS for v in procs}
        order = list(procs)
        for r in range(rounds):
            for w, body in WORKLOADS.items():
                for v in order[r % len(order):] + order[:r % len(order)]:
                    gw, _ = ports[v]
                    before = cpu_ns(procs[v].pid)
                    drive(gw, body, counts[w])
                    totals[(w, v)][0] += cpu_ns(procs[v].pid) - before
                    totals[(w, v)][1] += counts[w]
        print(f"Envoy CPU per request (µs), {rounds} interleaved rounds, --concurrency 1")
        print(f"{'workload':<18} {'envoy alone':>12} {'filter idle':>12} {'filter on':>10} {'idle cost':>10} {'total cost':>11}")
        for w in WORKLOADS:
            base, idle, on = (totals[(w, v)][0] / totals[(w, v)][1] / 1000
                              for v in ("without_filter", "filter_idle", "with_filter"))
            print(f"{w:<18} {base:>12.1f} {idle:>12.1f} {on:>10.1f} {100 * (idle - base) / base:>9.1f}% "
                  f"{100 * (on - base) / base:>10.1f}%")
        # The filter really ran: its stats are there.
        c = http.client.HTTPConnection("127.0.0.1", ports["with_filter"][1], timeout=5)
        c.request("GET", "/stats?filter=llm_requests_total")
        stats = c.getresponse().read().decode()
        if "llm_requests_total" not in stats:
            raise SystemExit("the filter recorded no llm_requests_total: it did not run")
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait()
        os.kill(pid, 15)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
