#!/usr/bin/env python3
"""Where a variant's latency tail comes from, from a packet capture of a benchmark run
(bench/tail.sh makes one). wrk prints percentiles only; this pairs every request on the
listener with its response, per connection, and splits the tail by what was going on:

- the turn of each second (its last 15 ms and first 5 ms), where a lease that ended with
  its second waits for its successor;
- lease reports: requests in flight within 3 ms after the filter sent one to the counter
  (a report is an HTTP/2 write of 4 KB or more to the counter's port: under load a
  report carries hundreds of requests, and no other call of the filter is that large).

Latency here is on the wire (request sent to response sent, as the kernel saw them),
so it leaves out wrk's own delays, which its percentiles include.

    bench/tail.py CAPTURE.pcap LISTEN_PORT COUNTER_PORT [SECONDS]
"""

import bisect
import collections
import struct
import sys

TURN_BEFORE = 0.015
TURN_AFTER = 0.005
REPORT_BYTES = 4000
REPORT_REACH = 0.003


def packets(path):
    """(time, source port, destination port, original length) of each TCP packet."""
    with open(path, "rb") as f:
        header = f.read(24)
        if len(header) < 24 or struct.unpack("<I", header[:4])[0] != 0xA1B2C3D4:
            sys.exit(f"{path}: not a microsecond pcap in little-endian order (tcpdump -w)")
        link = struct.unpack("<I", header[20:24])[0]
        if link != 1:
            sys.exit(f"{path}: link type {link}, want Ethernet (1): capture on lo")
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            sec, usec, incl, orig = struct.unpack("<IIII", rec)
            data = f.read(incl)
            ip = data[14:]
            if len(ip) < 20 or ip[0] >> 4 != 4:
                continue
            tcp = ip[(ip[0] & 15) * 4:]
            if len(tcp) < 4:
                continue
            sport, dport = struct.unpack(">HH", tcp[:4])
            yield sec + usec / 1e6, sport, dport, orig


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1e3 if values else float("nan")


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    path, listen, counter = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    seconds = float(sys.argv[4]) if len(sys.argv) == 5 else 10.0
    waiting = collections.defaultdict(collections.deque)
    exchanges, reports = [], []
    for t, sport, dport, length in packets(path):
        if dport == listen:
            waiting[sport].append(t)
        elif sport == listen and waiting[dport]:
            exchanges.append((waiting[dport].popleft(), t))
        elif dport == counter and length >= REPORT_BYTES:
            reports.append(t)
    if not exchanges:
        sys.exit(f"{path}: no request to port {listen} answered")
    # The last `seconds` of requests, less the last 0.2 s (wrk stopping).
    end = exchanges[-1][0]
    measured = [e for e in exchanges if end - seconds < e[0] < end - 0.2]

    def at_turn(e):
        frac = e[0] % 1
        return frac > 1 - TURN_BEFORE or frac < TURN_AFTER

    def near_report(e):
        i = bisect.bisect_left(reports, e[0] - REPORT_REACH)
        return i < len(reports) and reports[i] <= e[1]

    def line(name, exs):
        lat = [b - a for a, b in exs]
        share = len(exs) / len(measured)
        print(f"  {name:<40} {len(exs):>8} ({share:6.1%})  p50 {pct(lat, .5):.2f}  "
              f"p99 {pct(lat, .99):.2f}  p99.9 {pct(lat, .999):.2f} ms")

    window = [r for r in reports if end - seconds < r < end]
    print(f"{len(measured)} requests over {seconds:g} s; {len(window)} lease reports "
          f"({len(window) / seconds:.1f}/s)")
    line("all", measured)
    off_turn = [e for e in measured if not at_turn(e)]
    line("off the turn of the second", off_turn)
    line("off the turn, no report in reach", [e for e in off_turn if not near_report(e)])
    line("off the turn, a report in reach", [e for e in off_turn if near_report(e)])
    p99 = pct([b - a for a, b in measured], .99) / 1e3
    slow = [e for e in measured if e[1] - e[0] >= p99]
    if slow:
        turn = sum(map(at_turn, slow)) / len(slow)
        report = sum(near_report(e) for e in slow if not at_turn(e)) / len(slow)
        print(f"  of the requests at or past the p99: {turn:.0%} at the turn, "
              f"{report:.0%} off it with a report in reach "
              f"(of all requests off the turn: "
              f"{sum(map(near_report, off_turn)) / max(1, len(off_turn)):.0%})")


if __name__ == "__main__":
    main()
