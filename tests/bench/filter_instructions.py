#!/usr/bin/env python3
"""Instructions per request inside Envoy, counted by valgrind's callgrind: the filter's cost as a
figure that does not depend on what else the machine is doing, split by who executes it.

filter_cost.py measures CPU time, which is the real cost but moves with caches, frequency and
neighbours (on a shared 2-core machine by tens of percent). This script runs the same variants and
workloads (same configs, same canned upstream; imported from filter_cost.py) with each Envoy under
`valgrind --tool=callgrind`, counts the instructions Envoy's worker thread executes for N requests,
and splits them by object:

  module       the dynamic module's own code (libllm_metrics_filter.so) — the filter's work;
  envoy<-mod   Envoy code the module calls back into (stat updates, header and body reads): the
               ABI's cost, charged to the filter;
  jit          code with no object: V8's generated code (the .wasm, after compilation) and its stubs;
  envoy        the rest: Envoy's own work, including its dynamic-module / proxy-wasm plumbing.

Instruction counts are repeatable (the same binary, input and environment give the same total
whatever the load); they are not time: a cache miss counts as one instruction. Paced streams are
paced at 5 ms here (valgrind runs Envoy ~30-50× slower, and one event per body callback is what
a real model gives). Kernel work (socket reads and writes, epoll), which is most of Envoy's CPU time
per request, is not counted, so the ratios here are larger than filter_cost.py's CPU ratios.

    python3 tests/bench/filter_instructions.py            # 400 non-streaming, 40 × 16, 8 × 256 events
    python3 tests/bench/filter_instructions.py --quick    # a quarter of that, ~1-2 min
    python3 tests/bench/filter_instructions.py --variants alone,native_on --json out.json

Needs what filter_cost.py needs, plus valgrind (Debian package `valgrind`).
"""
import argparse
import collections
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import filter_cost as fc  # noqa: E402 (the shared variants, configs and upstream)

MODULE = "libllm_metrics_filter.so"
PACED_GAP_MS = 5.0


def envoy_binary():
    """The real Envoy binary behind .venv/bin/envoy (a Python launcher valgrind must not trace)."""
    found = glob.glob(os.path.join(fc.ROOT, ".venv", "lib", "python3*", "site-packages", "envoy", "_bin",
                                   "envoy"))
    if not found:
        raise SystemExit("no Envoy binary under .venv: run `bash envoy/setup.sh`")
    return found[0]


def parse_callgrind(path):
    """Self instructions per object, and the inclusive instructions of calls from the module into
    other objects, from one callgrind output file (names may be compressed as `(id) name`)."""
    names = {"ob": {}, "fn": {}}
    events = None
    ob = cob = None
    self_ir = collections.Counter()
    called_from_module = collections.Counter()
    after_calls = False

    def name(kind, value):
        value = value.strip()
        if value.startswith("("):
            ident, _, rest = value.partition(")")
            rest = rest.strip()
            if rest:
                names[kind][ident] = rest
            return names[kind].get(ident, ident)
        return value

    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
                continue
            if not line or not (line[0].isdigit() or line[0] in "+-*"):
                key, _, value = line.partition("=")
                if key == "ob":
                    ob = name("ob", value)
                elif key == "cob":
                    cob = name("ob", value)
                elif key in ("fn", "fl", "fi", "fe"):
                    if key == "fn":
                        cob = None
                elif key == "calls":
                    after_calls = True
                continue
            fields = line.split()
            if events is None or len(fields) < 1 + len(events):
                continue
            ir = int(fields[1 + events.index("Ir")]) if "Ir" in events else 0
            if after_calls:
                target = cob if cob is not None else ob
                if ob is not None and ob.endswith(MODULE) and target is not None and not target.endswith(MODULE):
                    called_from_module[target] += ir
                after_calls = False
                cob = None
            else:
                self_ir[ob] += ir
    return self_ir, called_from_module


def split(self_ir, called):
    module = sum(n for o, n in self_ir.items() if o and o.endswith(MODULE))
    jit = sum(n for o, n in self_ir.items() if not o or o == "???")
    envoy_for_module = sum(called.values())
    total = sum(self_ir.values())
    return {"total": total, "module": module, "envoy_for_module": envoy_for_module, "jit": jit,
            "envoy": total - module - jit - envoy_for_module}


def control(args):
    r = subprocess.run(["callgrind_control"] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"callgrind_control {' '.join(args)} failed: {r.stdout}{r.stderr}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the requests")
    ap.add_argument("--variants", default=",".join(fc.VARIANTS),
                    help=f"comma-separated subset of {','.join(fc.VARIANTS)}")
    ap.add_argument("--wasm", default=os.path.join(fc.ROOT, "target", "wasm32-wasip1", "release",
                                                   "llm_metrics_filter.wasm"))
    ap.add_argument("--module-dir", default=os.path.join(fc.ROOT, "target", "release"),
                    help="directory holding libllm_metrics_filter.so")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--keep", metavar="DIR",
                    help="keep the worker thread's callgrind file of every variant and workload in DIR "
                         "(for callgrind_annotate)")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in fc.VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}: choose from {fc.VARIANTS}")
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    envoy = envoy_binary()
    wasm = os.path.abspath(args.wasm)
    module_dir = os.path.abspath(args.module_dir)
    for path in [wasm, os.path.join(module_dir, MODULE)]:
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}: build it as filter_cost.py says")
    scale = 4 if args.quick else 1
    base = fc.BASE
    workloads = {
        "nonstream_1KiB": (dict(base), 400 // scale),
        "stream_16_paced": (dict(base, stream=True, events=16, gap_ms=PACED_GAP_MS), 40 // scale),
        "stream_256_paced": (dict(base, stream=True, events=256, gap_ms=PACED_GAP_MS), 8 // scale),
        "stream_256_burst": (dict(base, stream=True, events=256), 40 // scale),
    }
    t_start = time.time()

    up_port = fc.free_port()
    upstream_pid = fc.start_upstream(up_port)

    tmp = tempfile.mkdtemp(prefix="filter-instructions-")
    res = {"command": " ".join([os.path.relpath(sys.argv[0], fc.ROOT)] + sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t_start)),
           "paced_gap_ms": PACED_GAP_MS, "requests": {w: n for w, (_, n) in workloads.items()},
           "variants": {}}
    try:
        for v in variants:
            gw, adm, met = fc.free_port(), fc.free_port(), fc.free_port()
            cfg = os.path.join(tmp, f"{v}.yaml")
            with open(cfg, "w") as f:
                f.write(fc.render(v, gw, adm, met, up_port, wasm))
            env = dict(os.environ)
            if v in fc.NATIVE:
                env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = module_dir
            out = os.path.join(tmp, f"{v}.cg")
            log = os.path.join(tmp, f"{v}.log")
            proc = subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                 "--smc-check=all-non-file", f"--callgrind-out-file={out}", envoy, "-c", cfg,
                 "--concurrency", "1", "--use-dynamic-base-id", "-l", "warning"],
                cwd=fc.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
            try:
                fc.wait_ready(adm, proc, log, deadline=300.0)
                for body, _ in workloads.values():
                    fc.drive(gw, dict(body, gap_ms=0) if body.get("stream") else body, 3, 1, [])
                res["variants"][v] = {}
                for w, (body, n) in workloads.items():
                    reads = fc.worker_reads(proc.pid)
                    control(["--instr=on", str(proc.pid)])
                    fc.drive(gw, body, n, 1, [])
                    control(["--instr=off", str(proc.pid)])
                    control([f"--dump={w}", str(proc.pid)])
                    reads = fc.worker_reads(proc.pid) - reads
                    dumps = glob.glob(out + ".*")
                    parts, worker = worker_dump(dumps)
                    if args.keep:
                        os.makedirs(args.keep, exist_ok=True)
                        shutil.copy(worker, os.path.join(args.keep, f"{v}.{w}.callgrind"))
                    for path in dumps:
                        os.remove(path)
                    res["variants"][v][w] = {k: n_ / n for k, n_ in parts.items()}
                    res["variants"][v][w]["reads_per_request"] = reads / n
                    print(f"{v:12} {w:18} {res['variants'][v][w]['total'] / 1000:10.1f} k instructions "
                          f"per request ({reads / n:.0f} reads)", flush=True)
            finally:
                proc.terminate()
                proc.wait()
    finally:
        os.kill(upstream_pid, 15)
        os.waitpid(upstream_pid, 0)
    res["elapsed_s"] = time.time() - t_start
    print_table(res, workloads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    shutil.rmtree(tmp, ignore_errors=True)


def worker_dump(paths):
    """Of the files one `callgrind_control --dump` wrote (one per thread), the worker thread's split:
    the worker is the thread with most instructions (it runs every request; the main thread only
    flushes stats). Returns the split and the worker's file."""
    best = None
    for path in paths:
        parts = split(*parse_callgrind(path))
        if best is None or parts["total"] > best[0]["total"]:
            best = (parts, path)
    if best is None:
        raise SystemExit("callgrind wrote no dump file")
    return best


def print_table(res, workloads):
    vs = list(res["variants"])
    print(f"\nInstructions per request on Envoy's worker thread (thousands; ratio to Envoy alone),"
          f" {res['date']}:\n")
    print("| workload | " + " | ".join(fc.LABELS[v] for v in vs) + " |")
    print("|---|" + "---|" * len(vs))
    for w in workloads:
        cells = []
        alone = res["variants"].get("alone", {}).get(w, {}).get("total")
        for v in vs:
            t = res["variants"][v][w]["total"]
            cells.append(f"{t / 1000:,.1f}" + (f" ×{t / alone:.3f}" if alone else ""))
        print(f"| {w} | " + " | ".join(cells) + " |")
    print("\nSplit (thousands per request): module / Envoy called by the module / JIT / rest of Envoy\n")
    for v in vs:
        for w in workloads:
            p = res["variants"][v][w]
            print(f"  {v:12} {w:18} module {p['module'] / 1000:8.1f}  envoy<-mod {p['envoy_for_module'] / 1000:8.1f}"
                  f"  jit {p['jit'] / 1000:8.1f}  envoy {p['envoy'] / 1000:9.1f}")
    print(f"\ntotal {res['elapsed_s']:.1f} s")


if __name__ == "__main__":
    main()
