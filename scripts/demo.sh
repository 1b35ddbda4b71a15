#!/usr/bin/env bash
# The whole Turnpike stack on this machine: Redis, the counter, the collector, a demo
# API and Envoy with jwt_authn + the Turnpike filter. Prints tokens for sample tenants
# and curl lines to try, then runs until Ctrl-C (DEMO_EXIT=1: show the demo and stop).
#
# Ports (override with the environment): Envoy 10000 (admin 9901), counter 8081,
# collector 8082, demo API 8080, Redis 6399. State lives in .run/demo/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

ENVOY_PORT=${ENVOY_PORT:-10000}
ADMIN_PORT=${ADMIN_PORT:-9901}
COUNTER_PORT=${COUNTER_PORT:-8081}
COLLECTOR_PORT=${COLLECTOR_PORT:-8082}
UPSTREAM_PORT=${UPSTREAM_PORT:-8080}
REDIS_PORT=${REDIS_PORT:-6399}
INGEST_SECRET=${INGEST_SECRET:-demo-ingest-secret}
run="$root/.run/demo"

say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }
die() { printf '[demo] ERROR: %s\n' "$*" >&2; exit 1; }

for port in $ENVOY_PORT $ADMIN_PORT $COUNTER_PORT $COLLECTOR_PORT $UPSTREAM_PORT $REDIS_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is taken (another demo running?); set the *_PORT variables"
  fi
done

say "building the filter (.wasm) and the services"
make --no-print-directory build >/dev/null
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/debug"
wasm="$target/wasm32-wasip1/wasm/turnpike.wasm"
envoy="$root/.tools/bin/envoy"
[ -x "$envoy" ] || die "Envoy missing: run scripts/ensure-tools.sh"

rm -rf "$run"; mkdir -p "$run"
pids=()
cleanup() {
  trap - EXIT INT TERM
  say "stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
start() { # name, command...
  local name=$1; shift
  "$@" >"$run/$name.log" 2>&1 &
  pids+=($!)
}
wait_http() { # name, url
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$2" 2>/dev/null && return 0
    sleep 0.1
  done
  tail -n 20 "$run/$1.log" >&2 || true
  die "$1 did not become ready at $2 (log: $run/$1.log)"
}

start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

start counter "$bin/turnpike-counter" --listen "127.0.0.1:$COUNTER_PORT" \
  --redis "redis://127.0.0.1:$REDIS_PORT" --plans config/plans.toml
start collector "$bin/turnpike-collector" --listen "127.0.0.1:$COLLECTOR_PORT" \
  --database "sqlite://$run/ledger.db" --ingest-secret "$INGEST_SECRET" --plans config/plans.toml
start upstream "$bin/turnpike-dev" upstream --listen "127.0.0.1:$UPSTREAM_PORT"

"$bin/turnpike-dev" render-envoy --template envoy/envoy.yaml.tmpl \
  --filter-config envoy/filter-config.json \
  --set ADMIN_ADDRESS=127.0.0.1 --set ADMIN_PORT="$ADMIN_PORT" \
  --set LISTEN_ADDRESS=127.0.0.1 --set LISTEN_PORT="$ENVOY_PORT" \
  --set JWKS_PATH="$root/config/demo/jwks.json" --set WASM_PATH="$wasm" \
  --set UPSTREAM_HOST=127.0.0.1 --set UPSTREAM_PORT="$UPSTREAM_PORT" \
  --set COUNTER_HOST=127.0.0.1 --set COUNTER_PORT="$COUNTER_PORT" \
  --set COLLECTOR_HOST=127.0.0.1 --set COLLECTOR_PORT="$COLLECTOR_PORT" \
  --set INGEST_SECRET="$INGEST_SECRET" \
  --out "$run/envoy.yaml"
start envoy "$envoy" -c "$run/envoy.yaml" --concurrency 1 --base-id 7311 -l info

wait_http counter "http://127.0.0.1:$COUNTER_PORT/healthz"
wait_http collector "http://127.0.0.1:$COLLECTOR_PORT/healthz"
wait_http upstream "http://127.0.0.1:$UPSTREAM_PORT/healthz"
wait_http envoy "http://127.0.0.1:$ADMIN_PORT/ready"

mint() { "$bin/turnpike-dev" mint "$@"; }
GLOBEX=$(mint --tenant globex)
ACME=$(mint --tenant acme --plan pro)
NOTENANT=$(mint --no-tenant)
{
  echo "GLOBEX=$GLOBEX"; echo "ACME=$ACME"; echo "NOTENANT=$NOTENANT"
} >"$run/tokens.env"

api="http://127.0.0.1:$ENVOY_PORT"
say "stack is up: Envoy $api, counter :$COUNTER_PORT, collector :$COLLECTOR_PORT, logs in .run/demo/"
say "globex is on the free plan (5 requests a minute); watch 200s turn into 429s:"
for i in 1 2 3 4 5 6 7; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $GLOBEX" "$api/v1/items/$i")
  echo "  request $i -> $code"
done
echo
say "the last answer in full:"
curl -s -i -H "Authorization: Bearer $GLOBEX" "$api/v1/items/8" | sed 's/^/  /'
echo
say "the filter ships usage events to the collector; globex's day in the ledger:"
for _ in $(seq 1 30); do
  usage=$(curl -s "http://127.0.0.1:$COLLECTOR_PORT/v1/tenants/globex/usage?window=day")
  [[ "$usage" == *'"requests"'* ]] && break
  sleep 0.2
done
echo "  curl -s 'http://127.0.0.1:$COLLECTOR_PORT/v1/tenants/globex/usage?window=day'"
echo "  $usage"
echo
cat <<MSG
Try it yourself (tokens are also in .run/demo/tokens.env):

  source .run/demo/tokens.env
  # a free-plan tenant: 5 requests a minute, then 429 with Retry-After and RateLimit fields
  curl -i -H "Authorization: Bearer \$GLOBEX" $api/v1/items/1
  # acme is pinned to the pro plan; search costs 1 request + 5 search_units
  curl -i -H "Authorization: Bearer \$ACME" "$api/v1/search?q=shoes"
  # a verified token without a tenant claim: 401 problem+json
  curl -i -H "Authorization: Bearer \$NOTENANT" $api/v1/items/1
  # no token at all: rejected by jwt_authn before metering
  curl -i $api/v1/items/1
  # mint your own: $bin/turnpike-dev mint --tenant NAME [--plan pro]

  # what the counter holds for a tenant
  curl -s http://127.0.0.1:$COUNTER_PORT/v1/tenants/globex/usage | python3 -m json.tool
  # usage in the ledger (events arrive within a second or two)
  curl -s "http://127.0.0.1:$COLLECTOR_PORT/v1/tenants/globex/usage?window=day" | python3 -m json.tool
  curl -s "http://127.0.0.1:$COLLECTOR_PORT/v1/tenants/globex/events?limit=5" | python3 -m json.tool
  # filter stats in Envoy
  curl -s http://127.0.0.1:$ADMIN_PORT/stats | grep wasmcustom
MSG
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
say "running; Ctrl-C stops everything"
wait "${pids[@]}"
