#!/usr/bin/env python3
"""List every PromQL query of a Grafana dashboard with its template variables substituted.

No Grafana server runs in the tests, so this is how the dashboard's queries reach a real Prometheus:
the end-to-end test (and envoy/check.sh, for syntax) runs each printed query against Prometheus'
HTTP API.

    python3 envoy/grafana/queries.py                      # JSON array, all models, 1m rate interval
    python3 envoy/grafana/queries.py --format text        # panel<TAB>refId<TAB>expr per line
    python3 envoy/grafana/queries.py --var model=qwen3-tiny --rate-interval 30s

Each JSON item: {"panel": title, "ref_id": "A", "legend": legendFormat, "expr": query}.
Variables: a query variable with "Include All" becomes its allValue (".*") unless --var sets it;
--var NAME=V1,V2 gives a multi-value regex "(V1|V2)". $__rate_interval, $__interval and $__range come
from the options. A variable that has no value is an error naming the panel, so nothing
unsubstituted ever reaches Prometheus. Standard library only.
"""

import argparse
import json
import os
import re
import sys

DEFAULT_DASHBOARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llm-gateway.json")

# $name, ${name}, ${name:format}, [[name]]
VAR_RE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dashboard", nargs="?", default=DEFAULT_DASHBOARD, help="dashboard JSON file")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="template variable value; comma-separated values make a regex alternation")
    p.add_argument("--rate-interval", default="1m", help="value of $__rate_interval (default 1m)")
    p.add_argument("--interval", default="15s", help="value of $__interval (default 15s)")
    p.add_argument("--range", default="1h", help="value of $__range (default 1h)")
    p.add_argument("--format", choices=["json", "text"], default="json")
    return p.parse_args(argv)


def iter_panels(panels):
    """Panels in dashboard order, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def regex_escape_value(value):
    r"""Escape regex metacharacters the way Grafana does for a multi-value Prometheus variable.

    The result sits inside a double-quoted PromQL string, where a backslash is itself escaped: a
    literal dot becomes `\\.` in the query text, which Prometheus reads as the regex `\.`.
    """
    return re.sub(r"([\\.^$*+?()\[\]{}|])", lambda m: "\\\\" + m.group(1), value)


def variable_values(dashboard, overrides, args):
    values = {
        "__rate_interval": args.rate_interval,
        "__interval": args.interval,
        "__range": args.range,
    }
    for var in dashboard.get("templating", {}).get("list", []):
        name = var.get("name")
        if var.get("type") == "datasource":
            continue  # only used in datasource fields, never in expressions
        if var.get("includeAll"):
            values[name] = var.get("allValue") or ".*"
        elif isinstance(var.get("current"), dict) and isinstance(var["current"].get("value"), str):
            values[name] = var["current"]["value"]
    for item in overrides:
        if "=" not in item:
            sys.exit(f"queries.py: --var expects NAME=VALUE, got '{item}'")
        name, raw = item.split("=", 1)
        parts = [v for v in raw.split(",") if v]
        if len(parts) > 1:
            values[name] = "(" + "|".join(regex_escape_value(v) for v in parts) + ")"
        else:
            values[name] = raw
    return values


def substitute(expr, values, where):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            sys.exit(f"queries.py: {where}: no value for variable ${name} (use --var {name}=...)")
        return values[name]

    return VAR_RE.sub(repl, expr)


def extract(dashboard, values):
    queries = []
    for panel in iter_panels(dashboard.get("panels", [])):
        title = panel.get("title", "")
        for target in panel.get("targets", []):
            ref = target.get("refId", "")
            expr = target.get("expr")
            where = f"panel '{title}' target {ref}"
            if not isinstance(expr, str) or not expr.strip():
                sys.exit(f"queries.py: {where}: no PromQL expr")
            queries.append({
                "panel": title,
                "ref_id": ref,
                "legend": target.get("legendFormat", ""),
                "expr": " ".join(substitute(expr, values, where).split()),
            })
    if not queries:
        sys.exit("queries.py: the dashboard has no queries")
    return queries


def main(argv):
    args = parse_args(argv)
    try:
        with open(args.dashboard, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"queries.py: cannot read dashboard {args.dashboard}: {e}")
    queries = extract(dashboard, variable_values(dashboard, args.var, args))
    if args.format == "json":
        json.dump(queries, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        for q in queries:
            print(f"{q['panel']}\t{q['ref_id']}\t{q['expr']}")


if __name__ == "__main__":
    main(sys.argv[1:])
