#!/usr/bin/env bash
# The collector alone: how fast it drains the counter's usage streams into its ledger,
# and the CPU it spends per stream entry (reading, parsing, merging, writing the ledger,
# acknowledging). This is what every admitted request costs the collector in exact
# mode, and how fast a collector catches up after an outage.
#
# The backlog is real: the counter (release build) over one Redis, driven by
# `turnpike-dev load-counter` for DRAIN_LOAD_SECS with no collector running, so its
# consume script writes the entries as it does in production (tenants in turn, spread
# over the 256 streams). The streams are copied aside; then, each round, put back and
# drained by a collector (release build) starting on a fresh SQLite ledger
# (synchronous=FULL, the default). Measured per round until its ledger holds every
# entry (its `stream_entries` metric): the collector's CPU (/proc/PID/stat, user +
# system) and the wall clock. It measures; it asserts nothing.
#
#   bench/drain.sh
#   DRAIN_ROUNDS=5 DRAIN_LOAD_SECS=10 bench/drain.sh
#   DRAIN_COLLECTORS="/tmp/old-collector target/release/turnpike-collector" bench/drain.sh
#       # A/B: the binaries take turns, round by round, on the same backlog
#   DRAIN_PERF=1 bench/drain.sh   # also perf-record each drain: .run/drain/perf-ROUND-N.data
#   DRAIN_LIVE=1 bench/drain.sh   # live: the collector runs while the load does
#
# Live mode (DRAIN_LIVE=1) measures the collector keeping up instead of catching up:
# each round starts it on a fresh ledger and empty streams, then runs the load
# (DRAIN_LIVE_CONCURRENCY consumes in flight, 16 by default: a rate the collector keeps
# up with) and waits until the ledger holds every admitted consume. Its rounds then
# carry what arrived since the last one, as in production, so the figure includes the
# cost of each round (Redis reads and acknowledgements, a transaction and its fsync).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

ROUNDS=${DRAIN_ROUNDS:-3}
LOAD_SECS=${DRAIN_LOAD_SECS:-5}
TENANTS=${DRAIN_TENANTS:-1000}
run="$root/.run/drain"
BENCH_NAME=drain
. bench/lib.sh

command -v redis-server >/dev/null || die "redis-server missing: run scripts/ensure-tools.sh"
say "building release builds of the counter, the collector and turnpike-dev"
cargo build -q --release -p turnpike-counter -p turnpike-collector -p turnpike-devtools
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
collectors=(${DRAIN_COLLECTORS:-$target/release/turnpike-collector})
for bin in "${collectors[@]}"; do [ -x "$bin" ] || die "DRAIN_COLLECTORS: $bin is not an executable"; done

rm -rf "$run"; mkdir -p "$run"

export TURNPIKE_SERVICE_TOKEN=drain-service-token-0123456789
export TURNPIKE_READ_TOKEN=drain-read-token-0123456789
export TURNPIKE_INGEST_SECRET=drain-ingest-secret-0123456789

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$run/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_url="redis://127.0.0.1:$redis_port"

counter_port=$(free_port)
"$target/release/turnpike-counter" --listen "127.0.0.1:$counter_port" --redis "$redis_url" \
  --plans bench/plans.toml >"$run/counter.log" 2>&1 &
counter_pid=$!; pids+=($counter_pid)
wait_http "http://127.0.0.1:$counter_port/healthz"
# load CONCURRENCY OUT: consumes at the counter for LOAD_SECS; prints what it admitted.
load() {
  "$target/release/turnpike-dev" load-counter --url "http://127.0.0.1:$counter_port" \
    --tenants "$TENANTS" --concurrency "$1" --connections 4 --duration "$LOAD_SECS" --json \
    >"$2"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["allowed"])' "$2"
}
if [ -n "${DRAIN_LIVE:-}" ]; then
  LIVE_CONCURRENCY=${DRAIN_LIVE_CONCURRENCY:-16}
  say "live: each round, load-counter for ${LOAD_SECS}s over $TENANTS tenants ($LIVE_CONCURRENCY in flight) with the collector running; $ROUNDS round(s) per collector binary"
else
  say "the backlog: load-counter for ${LOAD_SECS}s over $TENANTS tenants, no collector"
  admitted=$(load 64 "$run/load.json")
  kill "$counter_pid"
  entries=$(streams 'XLEN tp:{NNN}:log' | redis-cli -p "$redis_port" | awk '{s += $1} END {print s}')
  [ "$entries" -gt 0 ] || die "the load left no stream entries (see $run/counter.log)"
  streams 'COPY tp:{NNN}:log tp:{NNN}:backlog' | redis-cli -p "$redis_port" >/dev/null
  say "$entries stream entries ($admitted consumes); $ROUNDS round(s) per collector binary"
fi

printf 'round\tcollector\tentries\tcpu_ms\twall_s\n' >"$run/results.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!collectors[@]}"; do
    bin=${collectors[$i]}
    streams 'DEL tp:{NNN}:log' | redis-cli -p "$redis_port" >/dev/null
    [ -n "${DRAIN_LIVE:-}" ] \
      || streams 'COPY tp:{NNN}:backlog tp:{NNN}:log' | redis-cli -p "$redis_port" >/dev/null
    rm -f "$run"/ledger.db*
    port=$(free_port)
    start=$(date +%s.%N)
    "$bin" --listen "127.0.0.1:$port" --database "sqlite://$run/ledger.db" --redis "$redis_url" \
      >"$run/collector-$round-$i.log" 2>&1 &
    pid=$!; pids+=($pid)
    perf_pid=
    done_=
    if [ -n "${DRAIN_LIVE:-}" ]; then
      wait_http "http://127.0.0.1:$port/healthz"
      load "$LIVE_CONCURRENCY" "$run/load-$round-$i.json" >"$run/admitted" &
      load_pid=$!
      if [ -n "${DRAIN_PERF:-}" ]; then
        sleep 1
        perf record -q -F 499 --call-graph dwarf,16384 -p "$pid" -o "$run/perf-$round-$i.data" \
          >"$run/perf-$round-$i.log" 2>&1 &
        perf_pid=$!
      fi
      wait "$load_pid" || die "load-counter failed (see $run/load-$round-$i.json)"
      # Exact consumes write one entry each.
      entries=$(cat "$run/admitted")
    fi
    for _ in $(seq 1 3000); do
      n=$(curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null \
        | awk '/^turnpike_collector_stream_entries_total / {print $2}' || true)
      if [ "${n:-0}" -ge "$entries" ]; then done_=1; break; fi
      # perf follows the threads there are when it attaches: attach once the ledger's
      # connection threads are up (the first entries committed).
      if [ -n "${DRAIN_PERF:-}" ] && [ -z "$perf_pid" ] && [ "${n:-0}" -gt 0 ]; then
        perf record -q -F 499 --call-graph dwarf,16384 -p "$pid" -o "$run/perf-$round-$i.data" \
          >"$run/perf-$round-$i.log" 2>&1 &
        perf_pid=$!
      fi
      sleep 0.1
    done
    end=$(date +%s.%N)
    [ -n "$done_" ] || die "collector $bin did not drain $entries entries in 300 s (see $run/collector-$round-$i.log)"
    ticks=$(cpu_ticks "$pid")
    [ -z "$perf_pid" ] || { kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; }
    kill "$pid"; wait "$pid" 2>/dev/null || true
    printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$i" "$entries" \
      "$((ticks * 1000 / $(getconf CLK_TCK)))" "$(python3 -c "print(f'{$end - $start:.2f}')")" \
      >>"$run/results.tsv"
  done
done

python3 - "$run/results.tsv" "${DRAIN_LIVE:+$LOAD_SECS}" "${collectors[@]}" <<'EOF'
import csv, os, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
live, bins = sys.argv[2], sys.argv[3:]
if live:
    print(f"collector keeping up with {live} s of consumes (live), ledger in SQLite "
          f"(synchronous=FULL), {len(rows) // len(bins)} round(s), medians:")
else:
    print(f"collector draining {rows[0]['entries']} usage-stream entries into SQLite "
          f"(synchronous=FULL), {len(rows) // len(bins)} round(s), medians:")
for i, b in enumerate(bins):
    mine = [r for r in rows if r["collector"] == str(i)]
    cpu = [int(r["cpu_ms"]) * 1000 / int(r["entries"]) for r in mine]
    wall = [float(r["wall_s"]) for r in mine]
    rate = [int(r["entries"]) / (float(live) if live else float(r["wall_s"])) for r in mine]
    print(f"  {os.path.relpath(b)}: {statistics.median(cpu):.1f} µs CPU per entry "
          f"({', '.join(f'{c:.1f}' for c in cpu)}), "
          f"{statistics.median(rate):,.0f} entries/s {'consumed' if live else 'drained'}")
EOF
