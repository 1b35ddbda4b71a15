#!/usr/bin/env python3
"""Turn wrk output and CPU tick counts into the benchmark's table and ratios."""
import re
import sys


def parse_latency_ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        sys.exit(f"summarize.py: no {pct}% latency in wrk output")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def row(variant, wrk_file, envoy_ticks, counter_ticks, redis_ticks, collector_ticks, rss_kb, clk_tck):
    text = open(wrk_file).read()
    total = re.search(r"^\s*(\d+) requests in", text, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not total or not rps:
        sys.exit(f"summarize.py: cannot read wrk output {wrk_file}")
    requests = int(total.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    metered = variant.startswith("turnpike")
    us = lambda ticks: int(ticks) * 1e6 / int(clk_tck) / max(requests, 1)
    fields = [
        variant,
        rps.group(1),
        f"{parse_latency_ms(text, '50'):.3f}",
        f"{parse_latency_ms(text, '99'):.3f}",
        f"{us(envoy_ticks):.1f}",
        f"{us(counter_ticks):.1f}" if metered else "-",
        f"{us(redis_ticks):.1f}" if metered else "-",
        f"{us(collector_ticks):.1f}" if variant == "turnpike+events" else "-",
        rss_kb if metered else "-",
        non2xx.group(1) if non2xx else "0",
    ]
    print("\t".join(fields))


def table(path):
    lines = [l.rstrip("\n").split("\t") for l in open(path)]
    header, rows = lines[0], {r[0]: r for r in lines[1:]}
    widths = [max(len(x) for x in col) for col in zip(header, *rows.values())]
    for r in [header, *rows.values()]:
        print("  ".join(x.rjust(w) for x, w in zip(r, widths)))
    print()
    # Every metered variant, in the order it ran, against the two baselines.
    for name in [n for n in rows if n.startswith("turnpike")]:
        t = rows[name]
        for base in ("bare", "jwt"):
            b = rows.get(base)
            if not b:
                continue
            print(
                f"{name} / {base}: throughput {float(t[1]) / float(b[1]):.2f}x, "
                f"p99 {float(t[3]) / float(b[3]):.2f}x, "
                f"Envoy CPU/request {float(t[4]) / float(b[4]):.2f}x "
                f"(+{float(t[4]) - float(b[4]):.1f} µs)"
            )
        print(f"{name}: counter RSS after the run {int(t[8]) / 1024:.1f} MiB")
        if t[9] != "0":
            print(f"WARNING: {t[9]} non-2xx answers in the {name} run")


if __name__ == "__main__":
    if sys.argv[1] == "row":
        row(*sys.argv[2:])
    else:
        table(sys.argv[2])
