#!/usr/bin/env bash
# Turnpike benchmark: the same Envoy, in the same run, with and without metering.
#   bare      Envoy, direct_response, no filter
#   jwt       + jwt_authn (what users run before Turnpike anyway)
#   floor     + a minimal proxy-wasm filter doing per request only what any filter
#             spending a shared lease must (bench/floor/src/lib.rs: a property read, a
#             header read, a shared-data compare-and-swap, two request and two response
#             headers, a record in memory), no counter: the floor leased mode is
#             measured against, on the machine at hand
#   floor-exact  + a minimal proxy-wasm filter deciding every request at the counter,
#             batched as Turnpike batches (bench/floor/src/exact.rs: two property reads,
#             a header read, the request paused and queued, one call per batch from the
#             root context, each request resumed with two request headers, two
#             response headers), and none of Turnpike's logic: the floor exact mode
#             is measured against
#   turnpike  + jwt_authn + the Turnpike filter, exact mode: one consume per request,
#             batched with the others waiting while the worker's calls are out
#             (usage events off)
#   turnpike+events  the same with usage events shipped to a collector (SQLite)
#   turnpike-leased  turnpike with the route in leased mode: requests are admitted from
#             a block of requests leased from the counter, reported every 100 ms
#             (docs/enforcement-modes.md; the filter's default lease tuning)
#   turnpike-leased-c2  the same with Envoy --concurrency 2: two workers sharing their
#             leases through shared data (on a 2-core machine shared with wrk, the
#             counter and Redis: not a scaling figure)
#   turnpike-settle  exact mode on an LLM-shaped route: POST with a JSON body, tokens
#             reserved from /max_tokens and settled from the answer's
#             /usage/total_tokens (docs/usage-metering.md); a consume and a settle
#             callout per request, the headers held until the body is read
# Then the collector's own ingest rate into SQLite and PostgreSQL, its ledger's CPU per
# usage-stream fact, and its CPU per entry draining a backlog of the counter's usage
# streams and keeping up with them live (bench/drain.sh; INGEST=0 skips them),
# and the capacity figures of the counter and Redis alone, on one Redis and on a Redis
# Cluster (bench/capacity.sh, docs/capacity.md; CAPACITY=0 skips them).
# Envoy --concurrency 1 (turnpike-leased-c2: 2), wrk 1 thread / 32 connections on
# loopback, the counter (release build) over Redis. Prints req/s, p50/p99 latency, Envoy
# CPU µs per request, counter CPU and RSS, and the ratios; then the filter's own stats
# in the leased and settle runs, and the ledger against what the counter admitted.
# Never asserts timings: it measures. docs/benchmarks.md has the latest figures.
#
#   bench/run.sh                # 10 s per variant
#   DURATION=30 bench/run.sh
#   VARIANTS="bare jwt turnpike-leased" bench/run.sh   # a subset, in that order
#   WARMUP=1 CONNECTIONS=64 INGEST=0 CAPACITY=0 bench/run.sh
#   PATCH='{"lease":{"report_interval_ms":50}}' bench/run.sh  # a filter-config merge patch:
#       replaces the events-off patch of bare/jwt/turnpike and turnpike+events' (none),
#       merged on top of the leased and settle variants' own patches
#   PERF=1 bench/run.sh        # also perf-record Envoy in each measured run:
#       .run/bench/perf-VARIANT.data (perf report -i … --sort dso,sym)
#   ENVOY_VERSION=1.36 bench/run.sh   # another supported Envoy (a minor or its pinned
#                                     # patch), one per run; default .tools/bin/envoy
#   ROUNDS=3 bench/run.sh      # every variant three times, round-robin: the table has
#       medians, and each ratio comes from variants of the same round (median, range)
#   WASM=/tmp/old.wasm COLLECTOR=/tmp/old-collector COUNTER=/tmp/old-counter bench/run.sh
#       # another build of the filter, the collector or the counter than this tree's
#   COLLECTOR_SCHED=normal bench/run.sh   # the collector shares the two cores with
#       Envoy, wrk, the counter and Redis on equal terms. By default it runs at idle
#       priority (SCHED_IDLE): on this one box it stands in for the machines it has in
#       production, doing all its work on the CPU the others leave (a 9 ms-in-25 ms
#       burner cost jwt alone 6-22% of its throughput at nice 19, nothing at
#       SCHED_IDLE), and its CPU per request counts until it has caught up with each run
#   PAUSE_COLLECTOR=1 bench/run.sh   # a diagnostic: the collector stopped (SIGSTOP)
#       during each measured run but turnpike+events', as if it ran on other hardware,
#       and resumed after: it reads the usage streams it missed, and the ledger check
#       at the end still holds it to what the counter admitted
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-1}
ALL_VARIANTS="bare jwt floor floor-exact turnpike turnpike+events turnpike-leased turnpike-leased-c2 turnpike-settle"
VARIANTS=${VARIANTS:-$ALL_VARIANTS}
COLLECTOR_SCHED=${COLLECTOR_SCHED:-idle}
run="$root/.run/bench"
BENCH_NAME=bench
BENCH_KILL_SIGNAL=TERM # Envoy, the counter and the collector shut down as in production
. bench/lib.sh
for v in $VARIANTS; do
  case " $ALL_VARIANTS " in
    *" $v "*) ;;
    *) die "VARIANTS: unknown variant '$v' (known: $ALL_VARIANTS)" ;;
  esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || die "ROUNDS: a whole number of rounds from 1 to 99, not '$ROUNDS'"
case "$COLLECTOR_SCHED" in
  idle)
    command -v chrt >/dev/null || die "chrt missing (util-linux): needed for COLLECTOR_SCHED=idle, or set COLLECTOR_SCHED=normal"
    collector_sched=(chrt --idle 0) ;;
  normal) collector_sched=() ;;
  *) die "COLLECTOR_SCHED: idle or normal, not '$COLLECTOR_SCHED'" ;;
esac

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
wasm=${WASM:-"$target/wasm32-wasip1/wasm/turnpike.wasm"}
floor_wasm=
case " $VARIANTS " in
  *" floor "*)
    cargo build -q --release --target wasm32-wasip1 --manifest-path bench/floor/Cargo.toml \
      --target-dir "$target/floor"
    floor_wasm="$target/floor/wasm32-wasip1/release/turnpike_bench_floor.wasm" ;;
esac
floor_exact_wasm=
case " $VARIANTS " in
  *" floor-exact "*)
    cargo build -q --release --target wasm32-wasip1 --manifest-path bench/floor/Cargo.toml \
      --features exact --target-dir "$target/floor-exact"
    floor_exact_wasm="$target/floor-exact/wasm32-wasip1/release/turnpike_bench_floor.wasm" ;;
esac
dev="$target/release/turnpike-dev"
collector=${COLLECTOR:-"$target/release/turnpike-collector"}
[ -x "$collector" ] || die "COLLECTOR: $collector is not an executable"
counter=${COUNTER:-"$target/release/turnpike-counter"}
[ -x "$counter" ] || die "COUNTER: $counter is not an executable"

rm -rf "$run"; mkdir -p "$run"

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
${collector_sched[@]+"${collector_sched[@]}"} "$collector" --listen "127.0.0.1:$COLLECTOR_PORT" \
  --database "sqlite://$run/ledger.db" --redis "redis://127.0.0.1:$REDIS_PORT" \
  >"$run/collector.log" 2>&1 &
collector_pid=$!; pids+=($collector_pid)
wait_http "http://127.0.0.1:$COLLECTOR_PORT/healthz"
"$counter" --listen "127.0.0.1:$COUNTER_PORT" \
  --redis "redis://127.0.0.1:$REDIS_PORT" --plans bench/plans.toml \
  --ledger-url "http://127.0.0.1:$COLLECTOR_PORT" >"$run/counter.log" 2>&1 &
counter_pid=$!; pids+=($counter_pid)
wait_http "http://127.0.0.1:$COUNTER_PORT/healthz"

# Usage-stream entries the collector has not committed yet (read and pending, or not
# read yet); 0 once it has caught up.
stream_backlog() {
  streams 'XINFO GROUPS tp:{NNN}:log' | redis-cli -p "$REDIS_PORT" 2>/dev/null \
    | awk 'prev == "pending" || prev == "lag" { n += $1 } { prev = $1 } END { print n + 0 }'
}
wait_collector_caught_up() {
  local _
  for _ in $(seq 1 600); do
    [ "$(stream_backlog)" = 0 ] && return 0
    sleep 0.2
  done
  say "WARNING: the collector has not caught up with the usage streams in 120 s ($(stream_backlog) entries left): its CPU per request below is short"
}

token=$("$dev" mint --tenant bench-tenant --ttl-secs 3600)
results="$run/results.tsv"
printf 'round\tvariant\trps\tp50_ms\tp99_ms\tenvoy_us\tcounter_us\tredis_us\tcollector_us\tcounter_rss_kb\tnon2xx\n' >"$results"

# RFC 7396 merge of the JSON patch $2 over $1 (the variant's own patch, then PATCH).
merge_json() {
  python3 - "$1" "$2" <<'PY'
import json, sys
def merge(t, p):
    if not isinstance(p, dict):
        return p
    t = dict(t) if isinstance(t, dict) else {}
    for k, v in p.items():
        if v is None:
            t[k] = None  # kept: a patch's null still deletes when applied
        else:
            t[k] = merge(t.get(k), v)
    return t
print(json.dumps(merge(json.loads(sys.argv[1]), json.loads(sys.argv[2]))))
PY
}
# The leased variants: the default route (every bench request) leased, events off.
LEASED_PATCH='{"collector":null,"default_route":{"mode":"leased"}}'
# The settle variant: the LLM route of docs/usage-metering.md (as tests/tests/settle.rs
# sets it), events off; the headers wait for the body the reservation reads (with the
# template's allow_on_headers_stop_iteration).
SETTLE_PATCH='{"collector":null,"hold_headers_for_body":true,"routes":[
  {"name":"chat","method":"POST","path_exact":"/v1/chat/completions","meters":{"requests":1},
   "usage":[{"meter":"tokens","reserve":{"json":"/max_tokens","default":500,"max":4000},
             "settle":{"json":"/usage/total_tokens"}}]}]}'
CHAT_BODY='{"model":"bench","max_tokens":100,"messages":[{"role":"user","content":"Say ok."}]}'
# wrk posts the chat body (command-line -H headers, the token, still apply).
cat >"$run/chat.lua" <<LUA
wrk.method = "POST"
wrk.body = '$CHAT_BODY'
wrk.headers["Content-Type"] = "application/json"
LUA

# Round-robin: on a noisy machine a slow minute then hits every variant of a round, and
# the ratios compare variants of the same round.
for round in $(seq 1 "$ROUNDS"); do
for variant in $VARIANTS; do
  LISTEN_PORT=$(free_port); ADMIN_PORT=$(free_port)
  concurrency=1; path=/v1/items/1; wrk_script=(); curl_body=(); variant_wasm=$wasm
  case "$variant" in
    # The floor reads no config: Turnpike's, rendered as for `turnpike`, is ignored.
    floor) patch='{"collector":null}'; base=turnpike; variant_wasm=$floor_wasm ;;
    floor-exact) patch='{"collector":null}'; base=turnpike; variant_wasm=$floor_exact_wasm ;;
    turnpike+events) patch=${PATCH:-}; base=turnpike ;;
    turnpike-leased|turnpike-leased-c2)
      patch=$LEASED_PATCH; base=turnpike
      [ "$variant" = turnpike-leased-c2 ] && concurrency=2 ;;
    turnpike-settle)
      patch=$SETTLE_PATCH; base=settle; path=/v1/chat/completions
      wrk_script=(-s "$run/chat.lua")
      curl_body=(-H 'Content-Type: application/json' --data-binary "$CHAT_BODY") ;;
    # Events off: no collector section in the filter config.
    *) patch=${PATCH:-'{"collector":null}'}; base=$variant ;;
  esac
  case "$variant" in
    turnpike-*) [ -n "${PATCH:-}" ] && patch=$(merge_json "$patch" "$PATCH") ;;
  esac
  "$dev" render-envoy --template envoy/envoy.yaml.tmpl --filter-config envoy/filter-config.json \
    --set ADMIN_ADDRESS=127.0.0.1 --set ADMIN_PORT="$ADMIN_PORT" \
    --set LISTEN_ADDRESS=127.0.0.1 --set LISTEN_PORT="$LISTEN_PORT" \
    --set JWKS_PATH="$root/config/demo/jwks.json" --set WASM_PATH="$variant_wasm" \
    --set UPSTREAM_HOST=127.0.0.1 --set UPSTREAM_PORT=1 \
    --set COUNTER_HOST=127.0.0.1 --set COUNTER_PORT="$COUNTER_PORT" \
    --set COLLECTOR_HOST=127.0.0.1 --set COLLECTOR_PORT="$COLLECTOR_PORT" \
    ${patch:+--patch-filter "$patch"} \
    --out "$run/rendered.yaml"
  python3 bench/derive.py "$base" <"$run/rendered.yaml" >"$run/envoy-$variant.yaml"
  "$envoy" -c "$run/envoy-$variant.yaml" --concurrency "$concurrency" --base-id $((9000 + RANDOM % 1000)) \
    -l warning >"$run/envoy-$variant.log" 2>&1 &
  envoy_pid=$!; pids+=($envoy_pid)
  wait_http "http://127.0.0.1:$ADMIN_PORT/ready"
  url="http://127.0.0.1:$LISTEN_PORT$path"
  code=$(curl -s -o "$run/first-$variant.txt" -w '%{http_code}' -H "Authorization: Bearer $token" \
    ${curl_body[@]+"${curl_body[@]}"} "$url")
  [ "$code" = 200 ] || die "$variant: a single request got $code, not 200 (see $run/envoy-$variant.log)"
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" ${wrk_script[@]+"${wrk_script[@]}"} \
    -H "Authorization: Bearer $token" "$url" >/dev/null
  # The collector's CPU counts the measured run's entries only: it starts caught up
  # with the warm-up's, and is read again once it has caught up with the run's.
  wait_collector_caught_up
  e0=$(cpu_ticks $envoy_pid); c0=$(cpu_ticks $counter_pid); r0=$(cpu_ticks $redis_pid)
  l0=$(cpu_ticks $collector_pid)
  say "$variant$([ "$ROUNDS" = 1 ] || echo " (round $round of $ROUNDS)"): wrk -t1 -c$CONNECTIONS -d${DURATION}s${wrk_script[*]:+ ${wrk_script[*]#"$run"/}} (Envoy --concurrency $concurrency)"
  perf_pid=
  if [ -n "${PERF:-}" ]; then
    # Where Envoy's CPU goes during the measured run (wasm JIT code shows as anonymous
    # memory: V8 writes no perf map).
    perf record -q -F "${PERF_HZ:-499}" -g -p "$envoy_pid" -o "$run/perf-$variant.data" \
      -- sleep "$DURATION" >"$run/perf-$variant.log" 2>&1 &
    perf_pid=$!
  fi
  paused=
  if [ -n "${PAUSE_COLLECTOR:-}" ] && [ "$variant" != turnpike+events ]; then
    kill -STOP "$collector_pid"; paused=1
  fi
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency ${wrk_script[@]+"${wrk_script[@]}"} \
    -H "Authorization: Bearer $token" "$url" >"$run/wrk-$variant.txt"
  [ -z "$paused" ] || kill -CONT "$collector_pid"
  [ -z "$perf_pid" ] || wait "$perf_pid" || true
  e1=$(cpu_ticks $envoy_pid); c1=$(cpu_ticks $counter_pid); r1=$(cpu_ticks $redis_pid)
  wait_collector_caught_up
  l1=$(cpu_ticks $collector_pid)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$counter_pid/status")
  python3 bench/summarize.py row "$round" "$variant" "$run/wrk-$variant.txt" \
    $((e1 - e0)) $((c1 - c0)) $((r1 - r0)) $((l1 - l0)) "$rss" "$(getconf CLK_TCK)" >>"$results"
  if [ "$variant" = turnpike+events ]; then
    sleep 3 # let the last batches flush
    curl -s "http://127.0.0.1:$ADMIN_PORT/stats" \
      | grep -E 'wasmcustom\.turnpike\.((billable_)?events_(queued|sent|dropped|rejected)|buffer_depth):' \
      | sed 's/^/  /' >"$run/events.txt"
  fi
  # What the filter did (decisions from leases, settlements), to check the variant
  # measured what it says.
  case "$variant" in
    turnpike-leased*) stats='allowed|denied|leased|lease_renewals|lease_waits|lease_empty_grants|lease_records_lost|counter_errors' ;;
    turnpike-settle) stats='allowed|denied|consume_batches|consumes_batched|settlements|settle_missing|settle_malformed|counter_errors' ;;
    turnpike|turnpike+events) stats='allowed|denied|consume_batches|consumes_batched|counter_errors' ;;
    *) stats= ;;
  esac
  if [ -n "$stats" ]; then
    sleep 0.3 # leased: the last report goes out every 100 ms
    curl -s "http://127.0.0.1:$ADMIN_PORT/stats" \
      | grep -E "^wasmcustom\.turnpike\.($stats): " | sed 's/^/  /' >"$run/stats-$variant.txt"
  fi
  kill "$envoy_pid"; wait "$envoy_pid" 2>/dev/null || true
done
done

echo "Envoy $envoy_version (${envoy#"$root"/}), --concurrency 1$(case " $VARIANTS " in *" turnpike-leased-c2 "*) echo ' (turnpike-leased-c2: 2)' ;; esac); wrk -t1 -c$CONNECTIONS -d${DURATION}s$([ "$ROUNDS" = 1 ] || echo "; $ROUNDS rounds, medians")"
python3 bench/summarize.py table "$results"
[ "$COLLECTOR_SCHED" = normal ] \
  || echo "the collector ran at idle priority (SCHED_IDLE; COLLECTOR_SCHED=normal to share the cores with Envoy on equal terms), standing in for its own machine; its CPU per request counts until it had caught up with each run"
[ -z "${PAUSE_COLLECTOR:-}" ] \
  || echo "PAUSE_COLLECTOR: the collector was stopped during every measured run but turnpike+events' (its CPU reads 0): a diagnostic, not the figures of a machine that runs it"
case " $VARIANTS " in
  *" turnpike-leased-c2 "*)
    echo "turnpike-leased-c2: Envoy with 2 workers on a $(nproc)-core machine shared with wrk, the counter, Redis and the collector: not a scaling figure" ;;
esac
for variant in $VARIANTS; do
  [ -s "$run/stats-$variant.txt" ] || continue
  echo "filter stats in the $variant run$([ "$ROUNDS" = 1 ] || echo " of the last round") (Envoy stats, warm-up included):"
  cat "$run/stats-$variant.txt"
  # Admitted but never counted nor billed: the filter gave up reporting them.
  awk -v v="$variant" -v file="${run#"$root"/}/envoy-$variant.log" '
    /turnpike\.allowed: / { allowed = $2 }
    /turnpike\.leased: / { leased = $2; has_leased = 1 }
    END { if (has_leased && allowed > 0) printf "  %s: %.1f%% of admitted requests decided from leases (the rest by exact consumes: no lease yet, a window rolling over, a renewal late)\n", v, 100 * leased / allowed }
    /lease_records_lost: / && $2 > 0 { printf "WARNING: %s: %d leased requests admitted but never reported to the counter (unbilled; see \"gave up reporting\" in %s)\n", v, $2, file }
    /settle_(missing|malformed): / && $2 > 0 { sub(/^wasmcustom\.turnpike\./, "", $1); printf "WARNING: %s: %s %d\n", v, $1, $2 }
    /turnpike\.consume_batches: / { batches = $2 }
    /turnpike\.consumes_batched: / { batched = $2 }
    END { if (batches > 0 && allowed > 0) printf "  %s: %.1f%% of consumes went in batches, %.1f per batch\n", v, 100 * batched / allowed, batched / batches }
  ' "$run/stats-$variant.txt"
done
if [ -f "$run/events.txt" ]; then
  echo "usage events in the turnpike+events run (Envoy stats, warm-up included):"
  cat "$run/events.txt"
fi
# Every request the counter admitted (all variants, warm-ups included) must be billed by
# the ledger, once: it reaches the ledger through the counter's usage stream, whatever
# the proxy's event buffer did under saturation. Admitted: the consumes allowed, less
# those refunded (a consume in flight when wrk stops is cancelled by the filter and
# refunded: the ledger keeps it, not billable), plus the leased requests the proxies
# reported.
admitted=$(curl -s "http://127.0.0.1:$COUNTER_PORT/metrics" | awk '
  /^turnpike_counter_consumes_total\{result="allowed"\} / { n += $2 }
  /^turnpike_counter_refunds_total\{result="refunded"\} / { n -= $2 }
  /^turnpike_counter_lease_reported_requests_total / { n += $2 }
  END { print n + 0 }')
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
  say "ledger write cost: the counter's usage-stream facts applied to SQLite in rounds of 200-799"
  cargo test -q --release -p turnpike-collector --test ledger_bench -- --ignored --nocapture 2>&1 \
    | grep -E 'CPU per fact' || die "ledger measurement failed (see cargo test -p turnpike-collector --test ledger_bench)"
  say "the collector draining a backlog the counter wrote (bench/drain.sh)"
  bench/drain.sh 2>"$run/drain.log" || die "drain measurement failed (see $run/drain.log)"
  say "the collector keeping up with the counter's consumes (bench/drain.sh, live)"
  DRAIN_LIVE=1 bench/drain.sh 2>"$run/drain-live.log" \
    || die "live drain measurement failed (see $run/drain-live.log)"
fi

if [ "${CAPACITY:-1}" = 1 ]; then
  echo
  say "capacity: the counter and Redis without Envoy, single Redis and a 3-master cluster"
  bench/capacity.sh
fi
