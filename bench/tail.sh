#!/usr/bin/env bash
# Where a variant's latency tail comes from: bench/run.sh for one variant (one round),
# with tcpdump capturing loopback during its measured run, then bench/tail.py on the
# capture (the turn of each second, lease reports; see there). A diagnostic, not a
# figure: tcpdump takes some of the two cores, so the run is a little slower.
#
#   bench/tail.sh                    # turnpike-leased
#   bench/tail.sh floor
#   PATCH='{"lease":{"report_interval_ms":50}}' bench/tail.sh   # as bench/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
variant=${1:-turnpike-leased}
duration=${DURATION:-10}
out="$root/.run/bench-tail"
die() { echo "bench/tail.sh: $*" >&2; exit 1; }
command -v tcpdump >/dev/null || die "tcpdump missing (Debian: apt-get install tcpdump)"
[ "$(id -u)" = 0 ] || die "tcpdump needs root here"
mkdir -p "$out"
log="$out/run-$variant.log"; pcap="$out/$variant.pcap"

VARIANTS=$variant ROUNDS=1 INGEST=0 CAPACITY=0 DURATION=$duration \
  "$root/bench/run.sh" >"$log" 2>&1 &
bench=$!
# The measured wrk run (the warm-up runs for WARMUP s, not DURATION).
for _ in $(seq 1 900); do
  pgrep -af "^wrk .*-d${duration}s .*--latency" >/dev/null && break
  kill -0 $bench 2>/dev/null || die "bench/run.sh ended before its measured run: $log"
  sleep 0.1
done
wrk=$(pgrep -af "^wrk .*-d${duration}s .*--latency" | head -1) || die "no measured wrk run seen: $log"
listen=$(grep -o 'http://[^ /]*' <<<"$wrk" | head -1 | sed 's/.*://')
counter=$(pgrep -af 'turnpike-counter .*--listen' | grep -o -- '--listen [^ ]*' | head -1 | sed 's/.*://')
[ -n "$listen" ] && [ -n "$counter" ] || die "cannot tell the listener's or the counter's port"
# PUSH segments only: a request or a response, not the ACKs between.
timeout $((duration + 1)) tcpdump -i lo -s 96 -B 65536 -w "$pcap" \
  'tcp[tcpflags] & tcp-push != 0' 2>"$out/tcpdump.log" || true
wait $bench || die "bench/run.sh failed: $log"
grep -E "^ *$variant " "$log" | sed 's/^/wrk: /' || true
python3 "$root/bench/tail.py" "$pcap" "$listen" "$counter" "$duration"
