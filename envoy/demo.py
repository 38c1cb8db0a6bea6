#!/usr/bin/env python3
"""Send sample traffic through the gateway and print a live per-model summary from Envoy's metrics.

Started by envoy/demo.sh once the engine and Envoy are up; it can also be pointed at any running
gateway. Standard library only.

    python3 envoy/demo.py                      # until Ctrl-C
    python3 envoy/demo.py --duration 30        # or stop after 30 s
    python3 envoy/demo.py --requests 40        # or after 40 requests

Traffic: chat completions, streaming (with stream_options.include_usage) and not, Qwen3 thinking on
and off, from a few client threads at once; every tenth request asks for a model the engine does not
serve, so the error outcome shows too. The summary is computed only from the gateway's
/stats/prometheus (what the llm-metrics filter recorded), every few seconds: requests per model by
outcome, tokens/s by type over the last interval, and TTFT p50/p95 since the start, estimated from
the histogram buckets as Prometheus' histogram_quantile does.
"""
import argparse
import http.client
import itertools
import json
import math
import re
import signal
import sys
import threading
import time
import urllib.parse

UNKNOWN_MODEL = "gpt-4o-mini"  # not served by the engine: answered 404, counted as outcome=error
PROMPTS = [
    "Explain what a reverse proxy does in two sentences.",
    "Write a haiku about load balancers.",
    "What is time to first token?",
    "List three reasons to measure token throughput.",
]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gateway", default="http://127.0.0.1:10000", help="gateway base URL (default %(default)s)")
    p.add_argument("--metrics", default="http://127.0.0.1:9902/stats/prometheus",
                   help="the gateway's metrics URL (default %(default)s)")
    p.add_argument("--model", default=None, help="model to request (default: the first of GET /v1/models)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    stop.add_argument("--requests", type=int, default=None, metavar="N", help="stop after N requests")
    # One client by default: the engine's dev build (what demo.sh builds) is quick for one sequence at a
    # time but slow to decode several together; raise it against a release or real engine.
    p.add_argument("--clients", type=int, default=2, help="concurrent client threads (default %(default)s)")
    p.add_argument("--interval", type=float, default=3.0, help="seconds between summaries (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=48, help="max_tokens per request (default %(default)s)")
    args = p.parse_args(argv)
    for name in ("duration", "interval"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            p.error(f"--{name} must be > 0, got {v}")
    if args.requests is not None and args.requests < 1:
        p.error(f"--requests must be >= 1, got {args.requests}")
    if args.clients < 1:
        p.error(f"--clients must be >= 1, got {args.clients}")
    return args


def connection(url, timeout=120):
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise SystemExit(f"demo.py: only http://host:port URLs are supported, got {url!r}")
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout), u.path.rstrip("/")


def served_model(gateway):
    conn, prefix = connection(gateway, timeout=10)
    try:
        conn.request("GET", prefix + "/v1/models")
        r = conn.getresponse()
        body = r.read()
    except (OSError, http.client.HTTPException) as e:
        raise SystemExit(f"demo.py: GET {gateway}/v1/models failed: {e} (is the gateway running?)")
    if r.status != 200:
        raise SystemExit(f"demo.py: GET /v1/models through the gateway answered {r.status}: {body[:200]!r}")
    return json.loads(body)["data"][0]["id"]


# ------------------------------------------------------------------------------------------------
# traffic


class Traffic:
    """Client threads sending chat completions until told to stop or the request budget is spent."""

    def __init__(self, args, model):
        self.args, self.model = args, model
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent = 0
        self.failed = 0  # transport errors (not HTTP error statuses, which are part of the demo)
        self.kinds = itertools.cycle([(s, t) for s in (True, False) for t in (True, False)])

    def next_request(self):
        """The next request body, or None when the budget is spent."""
        with self.lock:
            if self.args.requests is not None and self.sent >= self.args.requests:
                return None
            self.sent += 1
            n = self.sent
            stream, thinking = next(self.kinds)
        model = UNKNOWN_MODEL if n % 10 == 0 else self.model
        body = {"model": model, "max_tokens": self.args.max_tokens, "stream": stream,
                "messages": [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}],
                "chat_template_kwargs": {"enable_thinking": thinking}}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def run_client(self):
        while not self.stop.is_set():
            body = self.next_request()
            if body is None:
                return
            try:
                conn, prefix = connection(self.args.gateway)
                conn.request("POST", prefix + "/v1/chat/completions", json.dumps(body),
                             {"content-type": "application/json"})
                r = conn.getresponse()
                while r.read(4096):  # a streaming client reads events as they come
                    if self.stop.is_set():
                        break  # Ctrl-C: leave mid-stream (the gateway counts a client_abort)
                conn.close()
            except (OSError, http.client.HTTPException) as e:
                if self.stop.is_set():
                    return
                with self.lock:
                    self.failed += 1
                if self.failed == 1:
                    print(f"demo.py: request failed: {e!r}", file=sys.stderr)
                time.sleep(0.5)

    def start(self):
        self.threads = [threading.Thread(target=self.run_client, daemon=True) for _ in range(self.args.clients)]
        for t in self.threads:
            t.start()

    def done(self):
        return all(not t.is_alive() for t in self.threads)


# ------------------------------------------------------------------------------------------------
# metrics

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def unescape(v):
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def scrape(url):
    """[(name, {labels}, value)] of the llm_* samples at `url` (Prometheus text format)."""
    conn, _ = connection(url, timeout=10)
    u = urllib.parse.urlsplit(url)
    conn.request("GET", u.path + (("?" + u.query) if u.query else ""))
    r = conn.getresponse()
    text = r.read().decode("utf-8", "replace")
    if r.status != 200:
        raise OSError(f"{url} answered {r.status}")
    out = []
    for line in text.splitlines():
        if not line.startswith("llm_"):
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            continue
        labels = {k: unescape(v) for k, v in LABEL_RE.findall(m.group(2) or "")}
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def quantile(q, buckets):
    """histogram_quantile over [(le, cumulative count)]: linear within the bucket, like Prometheus."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # in the +Inf bucket: the highest finite bound, as Prometheus does
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return None


def summarise(samples):
    """Per model: requests by outcome, tokens by type (cumulative), TTFT buckets."""
    models = {}

    def m(name):
        return models.setdefault(name, {"outcomes": {}, "tokens": {}, "ttft": {}})

    for name, labels, value in samples:
        model = labels.get("model")
        if model is None:
            continue
        if name == "llm_requests_total":
            o = m(model)["outcomes"]
            o[labels.get("outcome", "?")] = o.get(labels.get("outcome", "?"), 0) + value
        elif name == "llm_tokens_total":
            t = m(model)["tokens"]
            t[labels.get("token_type", "?")] = t.get(labels.get("token_type", "?"), 0) + value
        elif name == "llm_time_to_first_token_ms_bucket":
            le = float(labels["le"])
            b = m(model)["ttft"]
            b[le] = b.get(le, 0) + value
    return models


def fmt_ms(v):
    return "-" if v is None else (f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms")


def print_summary(elapsed, traffic, now, before, dt):
    print(f"\n[{elapsed:6.1f}s] {traffic.sent} requests sent"
          + (f", {traffic.failed} transport errors" if traffic.failed else ""))
    if not now:
        print("  (no llm_* series yet)")
        return
    print(f"  {'model':<16} {'requests by outcome':<40} {'tokens/s in':>11} {'out':>7} {'reasoning':>9}"
          f" {'TTFT p50':>9} {'p95':>8}")
    for model in sorted(now):
        cur = now[model]
        prev = before.get(model, {"tokens": {}})
        outcomes = " ".join(f"{k}={int(v)}" for k, v in sorted(cur["outcomes"].items())) or "-"
        total = int(sum(cur["outcomes"].values()))
        rate = {k: (cur["tokens"].get(k, 0) - prev["tokens"].get(k, 0)) / dt if dt > 0 else 0.0
                for k in ("input", "output", "reasoning")}
        buckets = list(cur["ttft"].items())
        print(f"  {model:<16} {f'{total}: {outcomes}':<40} {rate['input']:>11.1f} {rate['output']:>7.1f}"
              f" {rate['reasoning']:>9.1f} {fmt_ms(quantile(0.5, buckets)):>9} {fmt_ms(quantile(0.95, buckets)):>8}")


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv):
    # Ctrl-C and SIGTERM both end the demo with a last summary, even when started in the background
    # (where SIGINT arrives ignored): demo.sh forwards its signals here.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    args = parse_args(argv)
    model = args.model or served_model(args.gateway)
    limit = f"{args.duration:g} s" if args.duration else (f"{args.requests} requests" if args.requests else "Ctrl-C")
    print(f"demo: sending chat completions for {model!r} through {args.gateway} "
          f"(streaming and not, thinking on and off, {args.clients} client{'s' * (args.clients != 1)}) until {limit}")
    print(f"demo: summary from {args.metrics} every {args.interval:g} s "
          "(tokens/s over the last interval; TTFT quantiles since the start)")
    traffic = Traffic(args, model)
    start = time.monotonic()
    before, t_before = {}, start
    try:
        before = summarise(scrape(args.metrics))
    except (OSError, http.client.HTTPException) as e:
        raise SystemExit(f"demo.py: cannot read {args.metrics}: {e}")
    traffic.start()
    try:
        while True:
            deadline = time.monotonic() + args.interval
            while time.monotonic() < deadline and not traffic.done():
                time.sleep(0.1)
                if args.duration and time.monotonic() - start >= args.duration:
                    break
            finished = traffic.done() or (args.duration and time.monotonic() - start >= args.duration)
            if finished:
                traffic.stop.set()
                for t in traffic.threads:
                    t.join()
                # Each read of Envoy's stats merges the workers' histograms for the next read.
                scrape(args.metrics)
                time.sleep(0.5)
            t_now = time.monotonic()
            now = summarise(scrape(args.metrics))
            print_summary(t_now - start, traffic, now, before, t_now - t_before)
            before, t_before = now, t_now
            if finished:
                break
    except (OSError, http.client.HTTPException) as e:
        traffic.stop.set()
        raise SystemExit(f"demo.py: reading {args.metrics} failed: {e!r}")
    except KeyboardInterrupt:
        # One interruption is enough: the terminal's Ctrl-C and demo.sh's forwarded one must not cut
        # the last summary short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        traffic.stop.set()
        print("\ndemo: stopping")
        for t in traffic.threads:
            t.join(timeout=5)
        try:
            scrape(args.metrics)
            time.sleep(0.5)
            t_now = time.monotonic()
            print_summary(t_now - start, traffic, summarise(scrape(args.metrics)), before, t_now - t_before)
        except (OSError, http.client.HTTPException, KeyboardInterrupt) as e:
            print(f"demo: no final summary: {e!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
