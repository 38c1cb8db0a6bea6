#!/usr/bin/env python3
"""What per-model LLM metrics cost inside Envoy: worker CPU per request, added p99 latency and memory
per open stream, for our filter's two builds and for the stock-Envoy stack that does the same job.

Six Envoy 1.40 processes run side by side, each with --concurrency 1, in front of one local upstream
that serves canned OpenAI-style responses:

  alone        envoy/envoy.yaml rendered, wasm filter removed;
  wasm_idle    the .wasm configured to watch a path that never matches (the fixed cost of any
               proxy-wasm filter: context creation and one V8 call per callback);
  wasm_on      the .wasm, default configuration {};
  native_idle  envoy/envoy-dynamic-module.yaml: libllm_metrics_filter.so as an Envoy dynamic module,
               watching a path that never matches (the fixed cost of a dynamic-module filter);
  native_on    the same module, default configuration {};
  stock        no filter of ours: json_to_metadata (request `model`) + ai_protocol_manager (usage
               from JSON and SSE into typed metadata envoy.ai.token_usage) + the stats access logger
               (per-model request, input- and output-token counters, tags from metadata / %CEL()%).

The workloads are driven through all six in rounds, in an order that rotates every round, so
background noise hits all alike. Each Envoy's on-CPU time is read from /proc/<pid>/task/*/schedstat
(its worker thread, which runs every filter callback) around every batch; the client records each
request's latency. Workloads: a non-streaming chat completion (~1 KiB JSON response); 16- and
256-event SSE streams paced 0.3 ms apart on one connection (Envoy reads about one event per body
callback, as with a real model); the 256-event stream on 32 concurrent connections, each driving
its share (paced 2 ms apart by default: this Python upstream cannot pace 32 streams at 0.3 ms on two
cores, and the worker's read count shows it: the events then arrive in bursts); a
256-event stream sent in one burst (many events per callback). Then, per variant, N streams are
opened and held open by the upstream (one event sent, then it waits), and Envoy's VmRSS with them
open minus its RSS before gives the memory per open stream.

    python3 tests/bench/filter_cost.py                         # full run (~7 minutes)
    python3 tests/bench/filter_cost.py --quick                 # < 60 s, for smoke checks; noisy
    python3 tests/bench/filter_cost.py --json out.json --svg tests/bench/filter_cost.svg

Needs .venv/bin/envoy (bash envoy/setup.sh), the release .wasm
(cargo build --release --target wasm32-wasip1 -p llm-metrics-filter; or --wasm FILE) and the native
module (cargo build --release -p llm-metrics-filter --features dynamic-module; or --module-dir DIR).
Listens on 127.0.0.1 only.
"""
import argparse
import http.client
import http.server
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENVOY = os.path.join(ROOT, ".venv", "bin", "envoy")
MODEL = "Qwen/Qwen3-1.7B"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chunk(event):
    b = event.encode()
    return b"%x\r\n%s\r\n" % (len(b), b)


CHUNK_ROLE = ('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
              '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n')
CHUNK_TOKEN = ('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
               '"choices":[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}]}\n\n')
CHUNK_FINISH = ('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
                '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
CHUNK_USAGE = ('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
               '"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":%d,"total_tokens":%d}}\n\n')

# Held streams ("hold": true) wait until the generation counter moves past the one they started in;
# POST /release on the upstream itself (not through Envoy) moves it.
HOLD = threading.Condition()
HOLD_GENERATION = [0]


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK stall each
    # response ~40 ms, and Envoy's background work would then be spread over very few requests.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        raw = self.rfile.read(n)
        if self.path == "/release":
            with HOLD:
                HOLD_GENERATION[0] += 1
                HOLD.notify_all()
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        body = json.loads(raw or b"{}")
        if body.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            if body.get("hold"):
                with HOLD:
                    generation = HOLD_GENERATION[0]
                self.wfile.write(chunk(CHUNK_ROLE))
                self.wfile.flush()
                with HOLD:
                    while HOLD_GENERATION[0] == generation:
                        HOLD.wait()
                for e in (CHUNK_FINISH, CHUNK_USAGE % (1, 12), "data: [DONE]\n\n"):
                    self.wfile.write(chunk(e))
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                return
            n_events = int(body.get("events", 256))
            events = [CHUNK_ROLE] + [CHUNK_TOKEN % i for i in range(n_events)]
            events += [CHUNK_FINISH, CHUNK_USAGE % (n_events, n_events + 11), "data: [DONE]\n\n"]
            gap = float(body.get("gap_ms", 0)) / 1000
            for e in events:
                self.wfile.write(chunk(e))
                self.wfile.flush()  # one write per event, as a real server emits them
                if gap:
                    time.sleep(gap)  # paced, so Envoy reads (mostly) one event per body callback
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
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


class UpstreamServer(http.server.ThreadingHTTPServer):
    request_queue_size = 2048  # the default backlog of 5 drops SYNs when 32 or 1,000 connections open
    daemon_threads = True


# ---------------------------------------------------------------------------------------------------
# Configurations

VARIANTS = ["alone", "wasm_idle", "wasm_on", "native_idle", "native_on", "stock"]
LABELS = {"alone": "Envoy alone", "wasm_idle": "wasm idle", "wasm_on": "wasm on",
          "native_idle": "native idle", "native_on": "native on", "stock": "stock stack"}
NATIVE = ("native_idle", "native_on")
WASM_IDLE_CONFIG = '{"paths": {"/never-matches": "completions"}}'

# The stock-Envoy stack a capable user would configure for per-model request and token counters
# without our filter (what worked on this binary: ../shared/ENVOY-NOTES.md). The request model is
# taken with json_to_metadata (ai_protocol_manager's request_handling would parse requests strictly
# and answer 400 to malformed ones); ai_protocol_manager extracts usage from JSON and SSE responses on
# the route declared below; the stats access logger counts per model. Only typed metadata is
# published by ai_protocol_manager, hence %CEL(metadata.typed_filter_metadata[...])%.
STOCK_FILTERS = """\
                  - name: envoy.filters.http.json_to_metadata
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata
                      request_rules:
                        rules:
                          - selectors: [{ key: model }]
                            on_present: { metadata_namespace: llm, key: model, type: STRING }
                  - name: envoy.filters.http.ai_protocol_manager
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ai_protocol_manager.v3.AiProtocolManager
                      response_handling:
                        token_usage: {}"""
STOCK_ROUTE = """\
                          typed_per_filter_config:
                            envoy.filters.http.ai_protocol_manager:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.ai_protocol_manager.v3.AiProtocolManagerPerRoute
                              response: { llm_protocol: OPENAI_CHAT_COMPLETIONS }
"""
STOCK_ACCESS_LOG = """\
                access_log:
                  - name: envoy.access_loggers.stats
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config
                      stats_scope: { prefix: llm }
                      counters:
                        - stat:
                            name: requests_total
                            tags: [{ name: model, value_format: "%DYNAMIC_METADATA(llm:model)%" }]
                          value_fixed: 1
                        - stat:
                            name: input_tokens_total
                            tags: [{ name: model, value_format: "%DYNAMIC_METADATA(llm:model)%" }]
                          value_format: "%CEL(metadata.typed_filter_metadata['envoy.ai.token_usage'].input_tokens)%"
                        - stat:
                            name: output_tokens_total
                            tags: [{ name: model, value_format: "%DYNAMIC_METADATA(llm:model)%" }]
                          value_format: "%CEL(metadata.typed_filter_metadata['envoy.ai.token_usage'].output_tokens)%"
"""
WASM_BLOCK = r"\n(\s*)- name: envoy\.filters\.http\.wasm\n.*?(?=\n\1- name: envoy\.filters\.http\.router)"


def start_upstream(port):
    """The canned upstream on `port`, in a child process so that its CPU never lands in Envoy's or
    the client's figures. Returns the child's pid."""
    server = UpstreamServer(("127.0.0.1", port), Upstream)
    pid = os.fork()
    if pid == 0:
        try:
            server.serve_forever()
        finally:
            os._exit(0)
    server.socket.close()
    return pid


def render_kind(kind, env):
    """envoy/render.sh KIND; for dynamic-module, the same literal substitutions by hand if this
    checkout's render.sh does not know that kind yet."""
    r = subprocess.run(["bash", os.path.join(ROOT, "envoy", "render.sh"), kind], env=env,
                       capture_output=True, text=True)
    if r.returncode == 0:
        return r.stdout
    if kind != "dynamic-module":
        raise SystemExit(f"envoy/render.sh {kind} failed: {r.stderr.strip()}")
    with open(os.path.join(ROOT, "envoy", "envoy-dynamic-module.yaml")) as f:
        text = f.read()
    for old, new, want in [("port_value: 10000 }", f"port_value: {env['GATEWAY_PORT']} }}", 1),
                           ("port_value: 9901 }", f"port_value: {env['ADMIN_PORT']} }}", 2),
                           ("port_value: 9902 }", f"port_value: {env['METRICS_PORT']} }}", 1),
                           ("{ address: 127.0.0.1, port_value: 8000 }",
                            f"{{ address: 127.0.0.1, port_value: {env['UPSTREAM_PORT']} }}", 1),
                           ("value: '{}'", "value: '%s'" % env["FILTER_CONFIG"].replace("'", "''"), 1)]:
        got = sum(old in line for line in text.splitlines())
        assert got == want, f"envoy-dynamic-module.yaml: expected '{old}' on {want} line(s), found {got}"
        text = text.replace(old, new)
    return text


def render(variant, gateway, admin, metrics, upstream, wasm):
    env = dict(os.environ, GATEWAY_PORT=str(gateway), ADMIN_PORT=str(admin), METRICS_PORT=str(metrics),
               UPSTREAM_PORT=str(upstream), FILTER_CONFIG="{}")
    if variant in NATIVE:
        env.pop("WASM_FILE", None)
        if variant == "native_idle":
            env["FILTER_CONFIG"] = WASM_IDLE_CONFIG
        return render_kind("dynamic-module", env)
    env["WASM_FILE"] = wasm
    if variant == "wasm_idle":
        env["FILTER_CONFIG"] = WASM_IDLE_CONFIG
    text = render_kind("envoy", env)
    if variant in ("alone", "stock"):
        # Drop the wasm filter entry (from its "- name:" line to the router's).
        text, n = re.subn(WASM_BLOCK, "" if variant == "alone" else "\n" + STOCK_FILTERS, text, flags=re.S)
        assert n == 1, "could not remove the wasm filter from the rendered config"
    if variant == "stock":
        old = "                          route:\n                            cluster: engine\n"
        assert text.count(old) == 1, "could not find the engine route in the rendered config"
        text = text.replace(old, STOCK_ROUTE + old)
        old = "                stream_idle_timeout: 600s\n"
        assert text.count(old) == 1, "could not find stream_idle_timeout in the rendered config"
        text = text.replace(old, old + STOCK_ACCESS_LOG)
    return text


# ---------------------------------------------------------------------------------------------------
# Measurement helpers


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


def worker_reads(pid):
    """Read syscalls of Envoy's worker threads: about one per body callback, so reads per request
    show whether a paced stream really reached Envoy one event at a time in every variant."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if not f.read().startswith("wrk:"):
                    continue
            with open(f"/proc/{pid}/task/{tid}/io") as f:
                total += int(next(l for l in f if l.startswith("syscr:")).split()[1])
        except (OSError, StopIteration):
            pass
    return total


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def wait_ready(port, proc, log, deadline=60.0):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            with open(log) as f:
                raise SystemExit(f"envoy exited ({proc.returncode}) before it was ready:\n{f.read()[-3000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"envoy admin on {port} did not become ready")


BASE = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
WORKLOADS = {
    "nonstream_1KiB": (dict(BASE), 1),
    "stream_16_paced": (dict(BASE, stream=True, events=16, gap_ms=0.3), 1),
    "stream_256_paced": (dict(BASE, stream=True, events=256, gap_ms=0.3), 1),
    "stream_256_paced_32conn": (dict(BASE, stream=True, events=256, gap_ms=2.0), 32),  # --gap-32conn-ms
    "stream_256_burst": (dict(BASE, stream=True, events=256), 1),
}
WORKLOAD_LABELS = {
    "nonstream_1KiB": "non-streaming, ~1 KiB JSON response",
    "stream_16_paced": "stream, 16 events paced, 1 conn",
    "stream_256_paced": "stream, 256 events paced, 1 conn",
    "stream_256_paced_32conn": "stream, 256 events paced 2 ms, 32 conns",
    "stream_256_burst": "stream, 256 events in one burst",
}


def drive_one(port, payload, n, latencies, errors):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.connect()
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            t0 = time.perf_counter()
            c.request("POST", "/v1/chat/completions", payload, {"content-type": "application/json"})
            r = c.getresponse()
            data = r.read()
            latencies.append(time.perf_counter() - t0)
            if r.status != 200 or not data:
                errors.append(f"bad response {r.status}")
                return
        c.close()
    except Exception as e:  # noqa: BLE001 (reported by the caller)
        errors.append(repr(e))


def drive(port, body, n, conns, latencies):
    """n requests over `conns` connections (each drives its share, one request at a time)."""
    payload = json.dumps(body)
    errors = []
    if conns == 1:
        drive_one(port, payload, n, latencies, errors)
    else:
        per = [n // conns + (i < n % conns) for i in range(conns)]
        threads = [threading.Thread(target=drive_one, args=(port, payload, k, latencies, errors))
                   for k in per if k]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise SystemExit(f"requests failed on port {port}: {errors[0]}")


def p99(xs):
    s = sorted(xs)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


def held_streams_kib(port, pid, upstream_port, n):
    """Open n streams whose upstream sends one event and waits; Envoy's RSS with them open minus
    before, per stream. Then release them and read them to their end."""
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n")
    body = json.dumps(dict(BASE, stream=True, hold=True)).encode()
    time.sleep(0.3)
    before = rss_kib(pid)
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(req % len(body) + body)
            got = b""
            while b"data:" not in got:
                b = s.recv(65536)
                if not b:
                    raise SystemExit("a held stream closed before its first event")
                got += b
            socks.append((s, got))
        time.sleep(0.5)
        during = max(rss_kib(pid) for _ in range(3))
    finally:
        c = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=10)
        c.request("POST", "/release", b"", {"content-length": "0"})
        c.getresponse().read()
        for s, got in socks:
            try:
                while not got.endswith(b"0\r\n\r\n"):
                    b = s.recv(65536)
                    if not b:
                        break
                    got += b
            except OSError:
                pass
            s.close()
    return before, during, (during - before) / n


def stat_values(admin, pattern):
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    c.request("GET", "/stats?filter=" + pattern)
    out = {}
    for line in c.getresponse().read().decode().splitlines():
        name, _, value = line.rpartition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


# ---------------------------------------------------------------------------------------------------
# Output


SVG_LABELS = {"nonstream_1KiB": ("non-streaming", "~1 KiB JSON"),
              "stream_16_paced": ("16 events paced", "1 connection"),
              "stream_256_paced": ("256 events paced", "1 connection"),
              "stream_256_paced_32conn": ("256 events paced", "2 ms, 32 connections"),
              "stream_256_burst": ("256 events", "in one burst")}


def write_svg(path, res):
    """Grouped bars: worker CPU per request relative to Envoy alone, per workload, one bar per
    variant (alone = 1.0 drawn too, as the reference)."""
    colors = {"alone": "#9e9e9e", "wasm_idle": "#90caf9", "wasm_on": "#1e88e5",
              "native_idle": "#a5d6a7", "native_on": "#43a047", "stock": "#e53935"}
    workloads = list(res["workloads"])
    ratios = {(w, v): res["workloads"][w][v]["ratio"] for w in workloads for v in VARIANTS}
    top = max(2.0, max(ratios.values()) * 1.1)
    top = int(top * 2 + 0.999) / 2  # round up to 0.5
    W, H, left, right, ytop, ybot = 900, 430, 60, 20, 50, 90
    plot_w, plot_h = W - left - right, H - ytop - ybot
    group_w = plot_w / len(workloads)
    bar_w = group_w * 0.8 / len(VARIANTS)

    def y(v):
        return ytop + plot_h * (1 - v / top)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="15">Envoy worker CPU per request, '
           'relative to Envoy alone (lower is better)</text>',
           f'<text x="{W / 2}" y="37" text-anchor="middle" fill="#555">{res["machine"]["date"]} · '
           f'{res["rounds"]} interleaved rounds · --concurrency 1</text>']
    step = 0.5
    v = 0.0
    while v <= top + 1e-9:
        out.append(f'<line x1="{left}" x2="{W - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                   f'stroke="{"#444" if v == 1.0 else "#ddd"}" stroke-width="{1.5 if v == 1.0 else 1}"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">×{v:.1f}</text>')
        v += step
    for i, w in enumerate(workloads):
        gx = left + i * group_w + group_w * 0.1
        for j, var in enumerate(VARIANTS):
            r = ratios[(w, var)]
            x = gx + j * bar_w
            out.append(f'<rect x="{x:.1f}" y="{y(r):.1f}" width="{bar_w - 2:.1f}" height="{y(0) - y(r):.1f}" '
                       f'fill="{colors[var]}"><title>{LABELS[var]}: ×{r:.3f}</title></rect>')
            out.append(f'<text x="{x + (bar_w - 2) / 2:.1f}" y="{y(r) - 3:.1f}" text-anchor="middle" '
                       f'font-size="9">{r:.2f}</text>')
        labels = SVG_LABELS[w]
        if w == "stream_256_paced_32conn":
            labels = (labels[0], f"{res.get('gap_32conn_ms', 2.0):g} ms, 32 connections")
        for k, text in enumerate(labels):
            out.append(f'<text x="{left + (i + 0.5) * group_w:.1f}" y="{ytop + plot_h + 16 + 14 * k}" '
                       f'text-anchor="middle">{text}</text>')
    lx = left
    for var in VARIANTS:
        out.append(f'<rect x="{lx}" y="{H - 28}" width="12" height="12" fill="{colors[var]}"/>')
        out.append(f'<text x="{lx + 16}" y="{H - 18}">{LABELS[var]}</text>')
        lx += 150
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def print_tables(res):
    wl = res["workloads"]
    print(f"\nEnvoy worker CPU per request (µs) and ratio to Envoy alone, {res['rounds']} interleaved rounds, "
          "--concurrency 1")
    print(f"{'workload':<24}" + "".join(f"{LABELS[v]:>19}" for v in VARIANTS)
          + f"{'wasm own':>10}{'native own':>12}")
    for w, d in wl.items():
        cells = "".join(f"{d[v]['cpu_us']:>10.1f} (×{d[v]['ratio']:.2f})" for v in VARIANTS)
        print(f"{w:<24}{cells}{100 * d['wasm_own_work']:>9.1f}%{100 * d['native_own_work']:>11.1f}%")
    print("  (own = (on − idle) / Envoy alone, for each build)")
    print("\nWorker read syscalls per request (≈ body callbacks; similar across variants = same pacing)")
    print(f"{'workload':<24}" + "".join(f"{LABELS[v]:>13}" for v in VARIANTS))
    for w, d in wl.items():
        print(f"{w:<24}" + "".join(f"{d[v]['reads_per_request']:>13.1f}" for v in VARIANTS))
    print("\nClient-side latency per request: Envoy alone's p99 (p50) in ms, and each variant's p99 (p50) "
          "minus it, in ms")
    print(f"{'workload':<24}{'alone':>17}" + "".join(f"{LABELS[v]:>17}" for v in VARIANTS[1:]))
    for w, d in wl.items():
        print(f"{w:<24}{d['alone']['p99_ms']:>8.2f} ({d['alone']['p50_ms']:>6.2f})" +
              "".join(f"{d[v]['p99_added_ms']:>+8.2f} ({d[v]['p50_added_ms']:>+6.2f})" for v in VARIANTS[1:]))
    print(f"\nEnvoy VmRSS with {res['held_streams']} open streams (KiB)")
    print(f"{'variant':<14}{'idle RSS':>10}{'RSS open':>10}{'KiB/stream':>12}{'vs alone':>10}")
    for v in VARIANTS:
        m = res["memory"][v]
        print(f"{LABELS[v]:<14}{m['idle_kib']:>10}{m['open_kib']:>10}{m['kib_per_stream']:>12.2f}"
              f"{m['kib_per_stream_vs_alone']:>+10.2f}")


# ---------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="< 60 s: checks the setup, figures are noisy")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--held", type=int, default=None, help="streams held open for the RSS figure")
    ap.add_argument("--wasm", default=os.path.join(ROOT, "target", "wasm32-wasip1", "release",
                                                   "llm_metrics_filter.wasm"))
    ap.add_argument("--module-dir", default=os.path.join(ROOT, "target", "release"),
                    help="directory holding libllm_metrics_filter.so")
    ap.add_argument("--gap-32conn-ms", type=float, default=2.0,
                    help="event gap of the 32-connection stream (default 2 ms: this Python upstream cannot "
                         "pace 32 streams at 0.3 ms on 2 cores, they arrive in bursts)")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not pin the Envoys to the last CPU and the client and upstream to the others")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--svg", metavar="FILE", help="write a bar chart of the CPU ratios")
    args = ap.parse_args()
    t_start = time.time()
    WORKLOADS["stream_256_paced_32conn"][0]["gap_ms"] = args.gap_32conn_ms
    rounds = args.rounds or (2 if args.quick else 6)
    held = args.held or (200 if args.quick else 1000)
    counts = {"nonstream_1KiB": 200 if args.quick else 2000,
              "stream_16_paced": 40 if args.quick else 300,
              "stream_256_paced": 5 if args.quick else 40,
              "stream_256_paced_32conn": 32 if args.quick else 96,
              "stream_256_burst": 20 if args.quick else 200}
    wasm = os.path.abspath(args.wasm)
    module_dir = os.path.abspath(args.module_dir)
    for path, hint in [(ENVOY, "run `bash envoy/setup.sh`"),
                       (wasm, "run `cargo build --release --target wasm32-wasip1 -p llm-metrics-filter` "
                              "or pass --wasm FILE"),
                       (os.path.join(module_dir, "libllm_metrics_filter.so"),
                        "run `cargo build --release -p llm-metrics-filter --features dynamic-module` "
                        "or pass --module-dir DIR")]:
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}: {hint}")
    # Held streams: two sockets each in Envoy and the upstream, one in this client.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * held + 512
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise SystemExit(f"open-file limit {hard} is below the {want} that {held} held streams need")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    # With 2+ CPUs the Envoys (one measured at a time) get the last CPU to themselves and this client
    # and the upstream (a child, inheriting the mask) share the others: the measured worker is not
    # preempted by the load generator, which makes the per-request figures steadier.
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    envoy_prefix = ["taskset", "-c", str(cpus[-1])] if pin else []
    if pin:
        os.sched_setaffinity(0, cpus[:-1])

    up_port = free_port()
    threading.stack_size(256 * 1024)  # the upstream runs a thread per held stream
    upstream_pid = start_upstream(up_port)
    threading.stack_size(0)

    procs, ports, logs = {}, {}, {}
    tmp = tempfile.mkdtemp(prefix="filter-cost-")
    try:
        for v in VARIANTS:
            gw, adm, met = free_port(), free_port(), free_port()
            cfg = os.path.join(tmp, f"{v}.yaml")
            with open(cfg, "w") as f:
                f.write(render(v, gw, adm, met, up_port, wasm))
            env = dict(os.environ)
            if v in NATIVE:
                env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = module_dir
            if v == "stock":
                r = subprocess.run([ENVOY, "--mode", "validate", "-c", cfg, "-l", "error"], cwd=ROOT,
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"the stock-stack config does not validate:\n{r.stdout}{r.stderr}")
            logs[v] = os.path.join(tmp, f"{v}.log")
            procs[v] = subprocess.Popen(envoy_prefix + [ENVOY, "-c", cfg, "--concurrency", "1", "--use-dynamic-base-id",
                                         "-l", "warning"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                        stderr=open(logs[v], "w"))
            ports[v] = (gw, adm)
        for v, (gw, adm) in ports.items():
            wait_ready(adm, procs[v], logs[v])
            for body, conns in WORKLOADS.values():
                drive(gw, body, 3 * conns, conns, [])  # warm up: connections, V8 compilation, stats
        print(f"{len(VARIANTS)} Envoys up after {time.time() - t_start:.1f} s"
              + (f" (Envoys on CPU {cpus[-1]}, client and upstream on {cpus[:-1]})" if pin else "")
              + f"; configs and logs in {tmp}",
              flush=True)

        cpu = {(w, v): [0, 0, 0] for w in WORKLOADS for v in VARIANTS}
        lat = {(w, v): [] for w in WORKLOADS for v in VARIANTS}
        for r in range(rounds):
            for w, (body, conns) in WORKLOADS.items():
                for v in VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]:
                    gw, _ = ports[v]
                    pid = procs[v].pid
                    before, reads = cpu_ns(pid), worker_reads(pid)
                    drive(gw, body, counts[w], conns, lat[(w, v)])
                    cpu[(w, v)][0] += cpu_ns(pid) - before
                    cpu[(w, v)][1] += counts[w]
                    cpu[(w, v)][2] += worker_reads(pid) - reads
            print(f"round {r + 1}/{rounds} done at {time.time() - t_start:.1f} s", flush=True)

        # Each variant really did its job: its per-model request counter counts.
        checks = {"wasm_on": "llm_requests_total", "native_on": "llm_requests_total",
                  "stock": "llm[.]requests_total"}
        for v, pattern in checks.items():
            vals = {k: n for k, n in stat_values(ports[v][1], pattern).items() if MODEL in k or "model" in k}
            if not vals or max(vals.values()) <= 0:
                raise SystemExit(f"{v}: no per-model request counter > 0 ({pattern}): it did not run")
        stock_stats = stat_values(ports["stock"][1], "llm[.]")
        if not any(n > 0 for k, n in stock_stats.items() if "output_tokens_total" in k and MODEL in k):
            raise SystemExit("stock: llm.output_tokens_total did not count: usage was not extracted")

        memory = {}
        for v in VARIANTS:
            before, during, per = held_streams_kib(ports[v][0], procs[v].pid, up_port, held)
            memory[v] = {"idle_kib": before, "open_kib": during, "kib_per_stream": per}
        for v in VARIANTS:
            memory[v]["kib_per_stream_vs_alone"] = (memory[v]["kib_per_stream"]
                                                    - memory["alone"]["kib_per_stream"])

        res = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
               "rounds": rounds, "gap_32conn_ms": args.gap_32conn_ms, "quick": args.quick,
               "held_streams": held, "counts_per_round": counts,
               "machine": {"nproc": os.cpu_count(),
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t_start)),
                           "loadavg_at_end": open("/proc/loadavg").read().split()[:3]},
               "workloads": {}, "memory": memory,
               "stats": {v: stat_values(ports[v][1], p) for v, p in checks.items()}}
        for w in WORKLOADS:
            d = {}
            for v in VARIANTS:
                ns, n, reads = cpu[(w, v)]
                d[v] = {"cpu_us": ns / n / 1000, "requests": n, "reads_per_request": reads / n,
                        "p99_ms": 1000 * p99(lat[(w, v)]),
                        "p50_ms": 1000 * sorted(lat[(w, v)])[len(lat[(w, v)]) // 2]}
            for v in VARIANTS:
                d[v]["ratio"] = d[v]["cpu_us"] / d["alone"]["cpu_us"]
                d[v]["p99_added_ms"] = d[v]["p99_ms"] - d["alone"]["p99_ms"]
                d[v]["p50_added_ms"] = d[v]["p50_ms"] - d["alone"]["p50_ms"]
            d["wasm_own_work"] = (d["wasm_on"]["cpu_us"] - d["wasm_idle"]["cpu_us"]) / d["alone"]["cpu_us"]
            d["native_own_work"] = (d["native_on"]["cpu_us"] - d["native_idle"]["cpu_us"]) / d["alone"]["cpu_us"]
            res["workloads"][w] = d

        # Errors the Envoys logged (the dynamic module's, verbatim).
        res["log_errors"] = {}
        for v in VARIANTS:
            with open(logs[v]) as f:
                bad = [line.rstrip() for line in f
                       if "[dynamic_modules]" in line or "][error][" in line or "][critical][" in line]
            res["log_errors"][v] = bad
        res["elapsed_s"] = time.time() - t_start

        print_tables(res)
        for v, lines in res["log_errors"].items():
            if lines:
                print(f"\n{v}: Envoy logged {len(lines)} error/dynamic_modules line(s), first ones:")
                for line in lines[:5]:
                    print("  " + line)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        if args.svg:
            write_svg(args.svg, res)
        print(f"\ntotal {res['elapsed_s']:.1f} s")
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait()
        os.kill(upstream_pid, 15)
        os.waitpid(upstream_pid, 0)


if __name__ == "__main__":
    main()
