#!/usr/bin/env bash
# Turnpike benchmark: the same Envoy, in the same run, with and without metering.
#   bare      Envoy, direct_response, no filter
#   jwt       + jwt_authn (what users run before Turnpike anyway)
#   turnpike  + jwt_authn + the Turnpike filter, one counter callout per request
#             (usage events off)
#   turnpike+events  the same with usage events shipped to a collector (SQLite)
# Then the collector's own ingest rate into SQLite and PostgreSQL (INGEST=0 skips it),
# and the capacity figures of the counter and Redis alone, on one Redis and on a Redis
# Cluster (bench/capacity.sh, docs/capacity.md; CAPACITY=0 skips them).
# Envoy --concurrency 1, wrk 1 thread / 32 connections on loopback, the counter (release
# build) over Redis. Prints req/s, p50/p99 latency, Envoy CPU µs per request, counter
# CPU and RSS, and the ratios. Never asserts timings: it measures.
#
#   bench/run.sh                # 10 s per variant
#   DURATION=30 bench/run.sh
#   ENVOY_VERSION=1.36 bench/run.sh   # another supported Envoy (a minor or its pinned
#                                     # patch), one per run; default .tools/bin/envoy
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2}
run="$root/.run/bench"
say() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

command -v wrk >/dev/null || die "wrk missing: run scripts/ensure-tools.sh"
if [ -n "${ENVOY_VERSION:-}" ]; then
  # The layout scripts/ensure-tools.sh installs (and tests/src/paths.rs reads).
  case "$ENVOY_VERSION" in
    *[!0-9.]*) die "ENVOY_VERSION=$ENVOY_VERSION: one version per run, a minor (1.37) or a full version (1.37.0)" ;;
    *.*.*) envoy="$root/.tools/envoy/$ENVOY_VERSION/envoy" ;;
    *) envoy="$root/.tools/bin/envoy-$ENVOY_VERSION" ;;
  esac
  [ -x "$envoy" ] || die "Envoy $ENVOY_VERSION missing: run ENVOY_VERSION=$ENVOY_VERSION scripts/ensure-tools.sh"
else
  envoy="$root/.tools/bin/envoy"
  [ -x "$envoy" ] || die "Envoy missing: run scripts/ensure-tools.sh"
fi
envoy_version=$("$envoy" --version | sed -nE 's#.*version: [^/]*/([^/]+)/.*#\1#p')
[ -n "$envoy_version" ] || die "$envoy --version printed no version"
if [ -n "${ENVOY_VERSION:-}" ] && [ "$envoy_version" != "$ENVOY_VERSION" ] \
  && [[ "$envoy_version" != "$ENVOY_VERSION".* ]]; then
  die "ENVOY_VERSION=$ENVOY_VERSION but $envoy is Envoy $envoy_version: run ENVOY_VERSION=$ENVOY_VERSION scripts/ensure-tools.sh"
fi

say "Envoy $envoy_version (${envoy#"$root"/})"
say "building the filter and release builds of the services"
make --no-print-directory wasm >/dev/null
cargo build -q --release -p turnpike-counter -p turnpike-collector -p turnpike-devtools
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
wasm="$target/wasm32-wasip1/wasm/turnpike.wasm"
dev="$target/release/turnpike-dev"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rm -rf "$run"; mkdir -p "$run"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
wait_http() {
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  die "not ready: $1 (logs in $run)"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

REDIS_PORT=$(free_port); COUNTER_PORT=$(free_port); COLLECTOR_PORT=$(free_port)
# The benchmark's own credentials (what a deployment keeps in files or secrets).
export TURNPIKE_SERVICE_TOKEN=bench-service-token-0123456789
export TURNPIKE_READ_TOKEN=bench-read-token-0123456789
export TURNPIKE_INGEST_SECRET=bench-ingest-secret-0123456789
export TURNPIKE_COUNTER_TOKEN=$TURNPIKE_SERVICE_TOKEN
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$run/redis.log" 2>&1 &
redis_pid=$!; pids+=($redis_pid)
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
# The collector consumes the counter's usage streams (every admitted request reaches
# the ledger through them) and the counter re-seeds lost windows from it.
"$target/release/turnpike-collector" --listen "127.0.0.1:$COLLECTOR_PORT" \
  --database "sqlite://$run/ledger.db" --redis "redis://127.0.0.1:$REDIS_PORT" \
  >"$run/collector.log" 2>&1 &
collector_pid=$!; pids+=($collector_pid)
wait_http "http://127.0.0.1:$COLLECTOR_PORT/healthz"
"$target/release/turnpike-counter" --listen "127.0.0.1:$COUNTER_PORT" \
  --redis "redis://127.0.0.1:$REDIS_PORT" --plans bench/plans.toml \
  --ledger-url "http://127.0.0.1:$COLLECTOR_PORT" >"$run/counter.log" 2>&1 &
counter_pid=$!; pids+=($counter_pid)
wait_http "http://127.0.0.1:$COUNTER_PORT/healthz"

token=$("$dev" mint --tenant bench-tenant --ttl-secs 3600)
results="$run/results.tsv"
printf 'variant\trps\tp50_ms\tp99_ms\tenvoy_us\tcounter_us\tredis_us\tcollector_us\tcounter_rss_kb\tnon2xx\n' >"$results"

for variant in ${VARIANTS:-bare jwt turnpike turnpike+events}; do
  LISTEN_PORT=$(free_port); ADMIN_PORT=$(free_port)
  case "$variant" in
    turnpike+events) patch=${PATCH:-}; base=turnpike ;;
    # Events off: no collector section in the filter config.
    *) patch=${PATCH:-'{"collector":null}'}; base=$variant ;;
  esac
  "$dev" render-envoy --template envoy/envoy.yaml.tmpl --filter-config envoy/filter-config.json \
    --set ADMIN_ADDRESS=127.0.0.1 --set ADMIN_PORT="$ADMIN_PORT" \
    --set LISTEN_ADDRESS=127.0.0.1 --set LISTEN_PORT="$LISTEN_PORT" \
    --set JWKS_PATH="$root/config/demo/jwks.json" --set WASM_PATH="$wasm" \
    --set UPSTREAM_HOST=127.0.0.1 --set UPSTREAM_PORT=1 \
    --set COUNTER_HOST=127.0.0.1 --set COUNTER_PORT="$COUNTER_PORT" \
    --set COLLECTOR_HOST=127.0.0.1 --set COLLECTOR_PORT="$COLLECTOR_PORT" \
    ${patch:+--patch-filter "$patch"} \
    --out "$run/rendered.yaml"
  python3 bench/derive.py "$base" <"$run/rendered.yaml" >"$run/envoy-$variant.yaml"
  "$envoy" -c "$run/envoy-$variant.yaml" --concurrency 1 --base-id $((9000 + RANDOM % 1000)) \
    -l warning >"$run/envoy-$variant.log" 2>&1 &
  envoy_pid=$!; pids+=($envoy_pid)
  wait_http "http://127.0.0.1:$ADMIN_PORT/ready"
  url="http://127.0.0.1:$LISTEN_PORT/v1/items/1"
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$url")
  [ "$code" = 200 ] || die "$variant: a single request got $code, not 200 (see $run/envoy-$variant.log)"
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -H "Authorization: Bearer $token" "$url" >/dev/null
  e0=$(cpu_ticks $envoy_pid); c0=$(cpu_ticks $counter_pid); r0=$(cpu_ticks $redis_pid)
  l0=$(cpu_ticks $collector_pid)
  say "$variant: wrk -t1 -c$CONNECTIONS -d${DURATION}s"
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Authorization: Bearer $token" "$url" \
    >"$run/wrk-$variant.txt"
  e1=$(cpu_ticks $envoy_pid); c1=$(cpu_ticks $counter_pid); r1=$(cpu_ticks $redis_pid)
  l1=$(cpu_ticks $collector_pid)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$counter_pid/status")
  python3 bench/summarize.py row "$variant" "$run/wrk-$variant.txt" \
    $((e1 - e0)) $((c1 - c0)) $((r1 - r0)) $((l1 - l0)) "$rss" "$(getconf CLK_TCK)" >>"$results"
  if [ "$variant" = turnpike+events ]; then
    sleep 3 # let the last batches flush
    curl -s "http://127.0.0.1:$ADMIN_PORT/stats" \
      | grep -E 'wasmcustom\.turnpike\.((billable_)?events_(queued|sent|dropped|rejected)|buffer_depth):' \
      | sed 's/^/  /' >"$run/events.txt"
  fi
  kill "$envoy_pid"; wait "$envoy_pid" 2>/dev/null || true
done

echo "Envoy $envoy_version (${envoy#"$root"/}), --concurrency 1; wrk -t1 -c$CONNECTIONS -d${DURATION}s"
python3 bench/summarize.py table "$results"
if [ -f "$run/events.txt" ]; then
  echo "usage events in the turnpike+events run (Envoy stats, warm-up included):"
  cat "$run/events.txt"
fi
# Every request the counter admitted (all variants, warm-ups included) must be billed by
# the ledger, once: it reaches the ledger through the counter's usage stream, whatever
# the proxy's event buffer did under saturation.
admitted=$(curl -s "http://127.0.0.1:$COUNTER_PORT/metrics" \
  | awk '/^turnpike_counter_consumes_total\{result="allowed"\}/ {print $2}')
billed=0
for _ in $(seq 1 240); do
  billed=$(curl -s -H "Authorization: Bearer $TURNPIKE_READ_TOKEN" \
    "http://127.0.0.1:$COLLECTOR_PORT/v1/tenants/bench-tenant/usage?window=month" \
    | python3 -c 'import json,sys; print(sum(m["quantity"] for m in json.load(sys.stdin)["meters"] if m["meter"] == "requests"))')
  [ "$billed" = "${admitted:-0}" ] && break
  sleep 0.5
done
echo "ledger vs admitted: the counter admitted ${admitted:-0} requests, the ledger bills $billed$([ "$billed" = "${admitted:-0}" ] && echo ' (equal)' || echo ' (NOT equal: see the collector log)')"

if [ "${INGEST:-1}" = 1 ]; then
  echo
  say "collector ingest rate (batches of 500 over h2c; SQLite synchronous=FULL, PostgreSQL defaults)"
  cargo test -q --release -p turnpike-collector --test ingest_bench -- --ignored --nocapture 2>&1 \
    | grep -E 'events/s' || die "ingest measurement failed (see cargo test -p turnpike-collector --test ingest_bench)"
fi

if [ "${CAPACITY:-1}" = 1 ]; then
  echo
  say "capacity: the counter and Redis without Envoy, single Redis and a 3-master cluster"
  bench/capacity.sh
fi
