#!/usr/bin/env python3
"""Turn wrk output and CPU tick counts into the benchmark's table and ratios.

`row` appends one variant's measurement of one round to the results file; `table`
prints one row per variant (the median of its rounds) and each metered variant's
ratios against `bare` and `jwt` (and leased mode's against `floor`, exact mode's
against `floor-exact`: the minimal proxy-wasm filters of bench/floor), taken within
each round (a noisy minute hits a whole round) and summarised by their median and,
with several rounds, their range.
"""
import re
import statistics
import sys


def parse_latency_ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        sys.exit(f"summarize.py: no {pct}% latency in wrk output")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def row(round_, variant, wrk_file, envoy_ticks, counter_ticks, redis_ticks, collector_ticks, rss_kb, clk_tck):
    text = open(wrk_file).read()
    total = re.search(r"^\s*(\d+) requests in", text, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not total or not rps:
        sys.exit(f"summarize.py: cannot read wrk output {wrk_file}")
    requests = int(total.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    # floor-exact calls the counter too (the same consumes as exact mode).
    metered = variant.startswith("turnpike") or variant == "floor-exact"
    us = lambda ticks: int(ticks) * 1e6 / int(clk_tck) / max(requests, 1)
    fields = [
        round_,
        variant,
        rps.group(1),
        f"{parse_latency_ms(text, '50'):.3f}",
        f"{parse_latency_ms(text, '99'):.3f}",
        f"{us(envoy_ticks):.1f}",
        f"{us(counter_ticks):.1f}" if metered else "-",
        f"{us(redis_ticks):.1f}" if metered else "-",
        f"{us(collector_ticks):.1f}" if metered else "-",
        rss_kb if metered else "-",
        non2xx.group(1) if non2xx else "0",
    ]
    print("\t".join(fields))


# Columns of a results row after `round` and `variant`.
RPS, P50, P99, ENVOY, COUNTER, REDIS, COLLECTOR, RSS, NON2XX = range(9)


def median_row(runs):
    """One row from a variant's rounds: medians, the largest RSS, all non-2xx."""
    out = []
    for i, values in enumerate(zip(*runs)):
        if i == NON2XX:
            out.append(str(sum(int(v) for v in values)))
        elif values[0] == "-":
            out.append("-")
        elif i == RSS:
            out.append(str(max(int(v) for v in values)))
        else:
            digits = 2 if i == RPS else 3 if i in (P50, P99) else 1
            out.append(f"{statistics.median(float(v) for v in values):.{digits}f}")
    return out


def spread(values, fmt):
    """The median of `values`, and their range when there is more than one."""
    med = fmt(statistics.median(values))
    return med if len(values) == 1 else f"{med} [{fmt(min(values))} to {fmt(max(values))}]"


def table(path):
    lines = [l.rstrip("\n").split("\t") for l in open(path)]
    header = lines[0][1:]
    # variant -> round -> row (without round and variant), in the order variants ran.
    runs = {}
    for r in lines[1:]:
        runs.setdefault(r[1], {})[r[0]] = r[2:]
    rows = {name: [name, *median_row(list(by_round.values()))] for name, by_round in runs.items()}
    widths = [max(len(x) for x in col) for col in zip(header, *rows.values())]
    for r in [header, *rows.values()]:
        print("  ".join(x.rjust(w) for x, w in zip(r, widths)))
    print()
    # Every metered variant (and the floors), in the order it ran, against the two
    # baselines; leased mode against the floor too, and exact mode against its own
    # floor, when they ran.
    for name in [n for n in rows if n.startswith("turnpike") or n.startswith("floor")]:
        if name.startswith("turnpike-leased"):
            bases = ("bare", "jwt", "floor")
        elif name in ("turnpike", "turnpike+events"):
            bases = ("bare", "jwt", "floor-exact")
        else:
            bases = ("bare", "jwt")
        for base in bases:
            pairs = [(t, runs[base][rnd]) for rnd, t in runs[name].items() if rnd in runs.get(base, {})]
            if not pairs:
                continue
            x = lambda v: f"{v:.2f}x"
            us = lambda v: f"{v:+.1f} µs"
            print(
                f"{name} / {base}: "
                f"throughput {spread([float(t[RPS]) / float(b[RPS]) for t, b in pairs], x)}, "
                f"p99 {spread([float(t[P99]) / float(b[P99]) for t, b in pairs], x)}, "
                f"Envoy CPU/request {spread([float(t[ENVOY]) / float(b[ENVOY]) for t, b in pairs], x)} "
                f"({spread([float(t[ENVOY]) - float(b[ENVOY]) for t, b in pairs], us)})"
            )
        t = rows[name]
        if t[RSS + 1] != "-":
            print(f"{name}: counter RSS after the run {int(t[RSS + 1]) / 1024:.1f} MiB")
        if t[NON2XX + 1] != "0":
            print(f"WARNING: {t[NON2XX + 1]} non-2xx answers in the {name} run{'s' if len(runs[name]) > 1 else ''}")


if __name__ == "__main__":
    if sys.argv[1] == "row":
        row(*sys.argv[2:])
    else:
        table(sys.argv[2])
