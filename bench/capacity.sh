#!/usr/bin/env bash
# Capacity figures for docs/capacity.md: the counter and Redis alone (no Envoy),
# driven by `turnpike-dev load-counter` (consumes over h2c with the service token, a
# fresh id each, tenants in turn, every consume admitted: bench/plans.toml), against
#   single   one redis-server
#   cluster  a Redis Cluster of 3 masters + 3 replicas on this machine
# Prints, per topology: consumes/s, p50/p99, counter CPU µs per consume, Redis CPU µs
# per consume (masters, and replicas applying the replication stream; from
# /proc/<pid>/stat), Redis network bytes per consume (client side; replication), and,
# on the single Redis, memory per idempotency record, per stream entry (the backlog
# the collector has not read) and per pending entry (read, not acknowledged), from
# INFO memory before and after. The machine and the date head the output. It measures;
# it asserts nothing.
#
#   bench/capacity.sh                      # 10 s per topology
#   CAPACITY_DURATION=30 CAPACITY_CONCURRENCY=128 bench/capacity.sh
#
# The load generator runs on the same cores as what it loads: on a small machine the
# consumes/s are a floor; the per-consume CPU figures are what the model uses.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

DURATION=${CAPACITY_DURATION:-10}
WARMUP=${CAPACITY_WARMUP:-2}
CONCURRENCY=${CAPACITY_CONCURRENCY:-64}
CONNECTIONS=${CAPACITY_CONNECTIONS:-4}
TENANTS=${CAPACITY_TENANTS:-10000}
WORKERS=${CAPACITY_COUNTER_WORKERS:-2}
run="$root/.run/capacity"
BENCH_NAME=capacity
. bench/lib.sh

command -v redis-server >/dev/null || die "redis-server missing: run scripts/ensure-tools.sh"
say "building release builds of the counter and turnpike-dev"
cargo build -q --release -p turnpike-counter -p turnpike-devtools
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
counter_bin="$target/release/turnpike-counter"
dev="$target/release/turnpike-dev"

rm -rf "$run"; mkdir -p "$run"
sum_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }
clk=$(getconf CLK_TCK)
info_field() { redis-cli -p "$1" info "$2" | tr -d '\r' | awk -F: -v k="$3" '$1 == k {print $2}'; }
sum_field() { local section=$1 key=$2 t=0 p; shift 2; for p in "$@"; do t=$((t + $(info_field "$p" "$section" "$key"))); done; echo "$t"; }

export TURNPIKE_SERVICE_TOKEN=capacity-service-token-0123456789
export TURNPIKE_READ_TOKEN=capacity-read-token-0123456789

start_redis() { # port [extra args...]: pid on stdout
  local port=$1; shift
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no "$@" \
    >"$run/redis-$port.log" 2>&1 &
  echo $!
}

start_counter() { # mode url
  local port; port=$(free_port)
  "$counter_bin" --listen "127.0.0.1:$port" --redis "$2" --redis-mode "$1" \
    --plans bench/plans.toml --workers "$WORKERS" >"$run/counter-$1.log" 2>&1 &
  counter_pid=$!; pids+=("$counter_pid")
  counter_url="http://127.0.0.1:$port"
  wait_http "$counter_url/healthz"
}

load() { # seconds: the report as JSON
  "$dev" load-counter --url "$counter_url" --tenants "$TENANTS" --concurrency "$CONCURRENCY" \
    --connections "$CONNECTIONS" --duration "$1" --json
}

results="$run/results.tsv"
printf 'topology\tconsumes_s\tp50_ms\tp99_ms\tcounter_us\tredis_master_us\tredis_replica_us\tredis_in_B\tredis_out_B\trepl_out_B\thttp_req_body_B\thttp_resp_body_B\terrors\n' >"$results"

# measure TOPOLOGY "MASTER_PORTS" "MASTER_PIDS" "REPLICA_PIDS"
measure() {
  local topology=$1 ports=($2) masters=($3) replicas=(${4:-})
  say "$topology: warm-up ${WARMUP}s, then load-counter -c$CONCURRENCY x ${DURATION}s over $TENANTS tenants"
  load "$WARMUP" >/dev/null
  local c0 m0 r0 in0 out0 repl0 c1 m1 r1 in1 out1 repl1
  c0=$(cpu_ticks "$counter_pid"); m0=$(sum_ticks "${masters[@]}")
  r0=0; [ ${#replicas[@]} -gt 0 ] && r0=$(sum_ticks "${replicas[@]}")
  in0=$(sum_field stats total_net_input_bytes "${ports[@]}")
  out0=$(sum_field stats total_net_output_bytes "${ports[@]}")
  repl0=$(sum_field stats total_net_repl_output_bytes "${ports[@]}")
  load "$DURATION" >"$run/load-$topology.json"
  c1=$(cpu_ticks "$counter_pid"); m1=$(sum_ticks "${masters[@]}")
  r1=0; [ ${#replicas[@]} -gt 0 ] && r1=$(sum_ticks "${replicas[@]}")
  in1=$(sum_field stats total_net_input_bytes "${ports[@]}")
  out1=$(sum_field stats total_net_output_bytes "${ports[@]}")
  repl1=$(sum_field stats total_net_repl_output_bytes "${ports[@]}")
  python3 - "$topology" "$run/load-$topology.json" "$clk" $((c1 - c0)) $((m1 - m0)) $((r1 - r0)) \
    $((in1 - in0)) $((out1 - out0)) $((repl1 - repl0)) >>"$results" <<'EOF'
import json, sys
topology, path, clk, c, m, r, net_in, net_out, repl = sys.argv[1:]
rep = json.load(open(path))
n = max(rep["allowed"] + rep["denied"], 1)
us = lambda ticks: int(ticks) * 1e6 / int(clk) / n
per = lambda b: int(b) / n
# INFO's output bytes include the replication stream: the client side is the rest.
print("\t".join([
    topology, f"{rep['consumes_per_sec']:.0f}", f"{rep['p50_ms']:.2f}", f"{rep['p99_ms']:.2f}",
    f"{us(c):.1f}", f"{us(m):.1f}", f"{us(r):.1f}",
    f"{per(net_in):.0f}", f"{per(int(net_out) - int(repl)):.0f}", f"{per(repl):.0f}",
    f"{rep['request_body_bytes']:.0f}", f"{rep['response_body_bytes']:.0f}", str(rep["errors"]),
]))
EOF
}

# --- one Redis --------------------------------------------------------------------------
port=$(free_port)
redis_pid=$(start_redis "$port"); pids+=("$redis_pid")
for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
start_counter single "redis://127.0.0.1:$port"
measure single "$port" "$redis_pid" ""

# Memory: a fresh Redis, one run, then take it apart piece by piece.
say "single: Redis memory per idempotency record, stream entry and pending entry"
redis-cli -p "$port" flushall >/dev/null
mem() { info_field "$port" memory used_memory; }
m_empty=$(mem)
load 3 >"$run/load-memory.json"
m_full=$(mem)
entries=$(streams 'XLEN tp:{NNN}:log' | redis-cli -p "$port" | awk '{s += $1} END {print s}')
records=$(redis-cli -p "$port" --scan --pattern '*:id:*' | wc -l)
# Pending: a consumer group reads every entry and acknowledges none.
streams 'XGROUP CREATE tp:{NNN}:log g 0' | redis-cli -p "$port" >/dev/null
m_grouped=$(mem)
streams 'XREADGROUP GROUP g c COUNT 100000000 STREAMS tp:{NNN}:log >' | redis-cli -p "$port" >/dev/null
m_pending=$(mem)
streams 'XGROUP DESTROY tp:{NNN}:log g' | redis-cli -p "$port" >/dev/null
m_ungrouped=$(mem)
streams 'XTRIM tp:{NNN}:log MAXLEN 0' | redis-cli -p "$port" >/dev/null
m_trimmed=$(mem)
redis-cli -p "$port" --scan --pattern '*:id:*' | xargs -r -n 500 redis-cli -p "$port" del >/dev/null
m_norecords=$(mem)
python3 - "$m_empty" "$m_full" "$m_grouped" "$m_pending" "$m_ungrouped" "$m_trimmed" \
  "$m_norecords" "$entries" "$records" >"$run/memory.txt" <<'EOF'
import sys
empty, full, grouped, pending, ungrouped, trimmed, norecords, entries, records = map(int, sys.argv[1:])
print(f"consumes stored: {records} idempotency records, {entries} stream entries "
      f"(used_memory {empty} -> {full} B)")
print(f"  per stream entry (backlog, not yet read):     {(ungrouped - trimmed) / max(entries, 1):.0f} B")
print(f"  per pending entry (read, not acknowledged):   +{(pending - grouped) / max(entries, 1):.0f} B on top")
print(f"  per idempotency record (key, value, expiry):  {(trimmed - norecords) / max(records, 1):.0f} B")
print(f"  left: window counters, seed markers, epochs:  {norecords - empty} B")
EOF
{ kill -9 "$counter_pid" "$redis_pid"; wait "$counter_pid" "$redis_pid"; } 2>/dev/null || true

# --- a Redis Cluster: 3 masters, 3 replicas ----------------------------------------------
say "cluster: starting 6 nodes"
cports=(); cpids=()
for i in 1 2 3 4 5 6; do
  p=$(free_port); b=$(free_port); d="$run/node-$p"; mkdir -p "$d"
  pid=$(start_redis "$p" --cluster-enabled yes --cluster-port "$b" \
    --cluster-config-file "$d/nodes.conf" --cluster-node-timeout 2000 --dir "$d" \
    --repl-diskless-sync-delay 0)
  cports+=("$p"); cpids+=("$pid"); pids+=("$pid")
done
for p in "${cports[@]}"; do
  for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${cports[@]}") --cluster-replicas 1 \
  --cluster-yes >"$run/cluster-create.log" 2>&1 || die "cluster create failed (see $run/cluster-create.log)"
for _ in $(seq 1 100); do
  ok=1
  for p in "${cports[@]}"; do
    redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || ok=0
    info=$(redis-cli -p "$p" info replication)
    if grep -q role:slave <<<"$info" && ! grep -q master_link_status:up <<<"$info"; then ok=0; fi
  done
  [ "$ok" = 1 ] && break; sleep 0.2
done
[ "$ok" = 1 ] || die "the cluster did not become ok with replicas in sync"
mports=(); mpids=(); rpids=()
for i in "${!cports[@]}"; do
  if redis-cli -p "${cports[$i]}" info replication | grep -q role:master; then
    mports+=("${cports[$i]}"); mpids+=("${cpids[$i]}")
  else
    rpids+=("${cpids[$i]}")
  fi
done
start_counter cluster "$(printf 'redis://127.0.0.1:%s,' "${cports[@]}" | sed 's/,$//')"
measure cluster "${mports[*]}" "${mpids[*]}" "${rpids[*]}"

# What WAIT-style synchronous replication would add: one write, then WAIT 1 (until one
# replica acknowledged it), one client, in sequence, against a master with one replica.
say "cluster: the latency of WAIT 1 after a write"
python3 - "${mports[0]}" 5000 >"$run/wait.txt" <<'EOF'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile("rb")
def call(*args):
    args = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    line = f.readline()
    if line[:1] == b"$" and not line.startswith(b"$-1"):
        f.readline()
    return line
key = next(k for k in (f"waitbench{i}" for i in range(10000)) if not call("INCR", k).startswith(b"-MOVED"))
def per_op(wait):
    t = time.perf_counter()
    for _ in range(n):
        call("INCR", key)
        if wait:
            assert call("WAIT", 1, 1000).startswith(b":1"), "no replica acknowledged"
    return (time.perf_counter() - t) / n * 1e6
per_op(False); per_op(True)  # warm-up
plain, waited = per_op(False), per_op(True)
print(f"WAIT 1 after each write (one client, loopback, replica in sync): {plain:.0f} µs per write "
      f"without, {waited:.0f} µs with (+{waited - plain:.0f} µs: one master->replica round trip "
      f"and the replica's ack)")
EOF

# --- the figures ----------------------------------------------------------------------
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo "Turnpike capacity, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($cpu), $(redis-server --version | awk '{print $1, $2, $3}')"
echo "load average when done (other work on this machine included): $(cut -d" " -f1-3 /proc/loadavg)"
echo "load-counter: $CONCURRENCY in flight over $CONNECTIONS h2c connections, $TENANTS tenants, ${DURATION}s; counter --workers $WORKERS (release); every consume admitted (bench/plans.toml: 3 windows)"
column -t -s $'\t' "$results"
echo "(µs = CPU time per consume; redis_in/out = bytes per consume between counter and Redis; repl_out = replication stream per consume; http bodies exclude h2 framing and headers)"
cat "$run/memory.txt"
cat "$run/wait.txt"
