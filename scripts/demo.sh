#!/usr/bin/env bash
# The whole Turnpike stack on this machine: Redis, the counter, the collector (with
# billing sync to a local Stripe fake), a demo API and Envoy with jwt_authn + the
# Turnpike filter. Mints tokens for sample tenants, shows a tenant running into its
# limit, the ledger, what Stripe holds, and prints curl lines to try.
#
#   scripts/demo.sh              start, show, run until Ctrl-C (make demo)
#   scripts/demo.sh stop         stop the demo running in DEMO_DIR
#   scripts/demo.sh tokens       mint fresh tenant tokens into DEMO_DIR/tokens.env
#   scripts/demo.sh reload       re-render Envoy's config (FILTER_CONFIG, JWKS) and restart Envoy
#   scripts/demo.sh status       is a demo running in DEMO_DIR, and where
#
# Settings (environment; docs/meter-your-own-api.md walks through them):
#   DEMO_DIR       state directory (default .run/demo): logs, ledger, tokens.env
#   PORT_OFFSET    added to every default port (a second demo: PORT_OFFSET=100)
#   ENVOY_PORT ADMIN_PORT COUNTER_PORT COLLECTOR_PORT UPSTREAM_PORT REDIS_PORT STRIPE_PORT
#                  10000 9901 8081 8082 8080 6399 12111 (plus PORT_OFFSET)
#   PLANS          plans file (default config/plans.toml)
#   FILTER_CONFIG  filter configuration (default envoy/filter-config.json)
#   ENVOY_TEMPLATE Envoy template (default envoy/envoy.yaml.tmpl)
#   JWKS           public keys jwt_authn trusts (default config/demo/jwks.json)
#   JWT_ISSUER     issuer jwt_authn expects (default https://auth.turnpike.example)
#   JWT_AUDIENCE   audience jwt_authn expects (default turnpike-api)
#   TURNPIKE_DEMO_KEY, JWT_KID   key and kid the demo mints tokens with (the demo key)
#   JWT_TENANT_CLAIM  claim the minted tokens carry the tenant in (default tenant)
#   TOKEN_TTL      lifetime of minted tokens in seconds (default 86400)
#   TENANTS        tenants to mint tokens for (default "acme globex initech")
#   API_ADDRESS    host:port of your own API: Envoy routes there, no demo API is started
#   DEMO_DETACH=1  start, show, and leave the stack running (stop: scripts/demo.sh stop)
#   DEMO_WALKTHROUGH=0  start without sending requests or sample usage
#   DEMO_BUILD=0   do not run `make build`; DEMO_BIN_DIR, DEMO_WASM, DEMO_ENVOY say
#                  where the binaries, the .wasm and Envoy are
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
command=${1:-start}
case "$command" in start | stop | tokens | reload | status) ;; *)
  echo "usage: scripts/demo.sh [start|stop|tokens|reload|status]" >&2; exit 2 ;;
esac

abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
DEMO_DIR=$(abs "${DEMO_DIR:-$root/.run/demo}")
DEMO_DIR=${DEMO_DIR%/}

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '%s[demo]%s %s\n' "$bold" "$plain" "$*"; }
die() { printf '[demo] ERROR: %s\n' "$*" >&2; exit 1; }

pids_file=$DEMO_DIR/pids
# The start time of a process (clock ticks since boot): with the pid it names the process
# we started, even if the pid was later reused by another.
started_at() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null || true; }
# Lines "name pid start" of our processes that still run.
running() {
  [ -f "$pids_file" ] || return 0
  local name pid start
  while read -r name pid start; do
    [ -n "$pid" ] && [ "$(started_at "$pid")" = "$start" ] && echo "$name $pid $start"
  done <"$pids_file"
  return 0
}
is_running() { [[ $'\n'"$(running)" == *$'\n'"$1 "* ]]; }

stop_demo() { # stop our processes, Envoy first so it flushes its usage events
  local name pid start order=(envoy upstream counter collector stripe redis) n
  for n in "${order[@]}"; do
    while read -r name pid start; do
      [ "$name" = "$n" ] && kill -TERM -- "-$pid" 2>/dev/null || true
    done < <(running)
    for _ in $(seq 1 50); do
      is_running "$n" || break
      sleep 0.1
    done
    while read -r name pid start; do
      [ "$name" = "$n" ] && kill -KILL -- "-$pid" 2>/dev/null || true
    done < <(running)
  done
  return 0
}

case "$command" in
  stop)
    if [ -z "$(running)" ]; then say "no demo running in $DEMO_DIR"; exit 0; fi
    stop_demo
    say "stopped the demo in $DEMO_DIR (logs and ledger stay there)"
    exit 0 ;;
  status)
    if [ -z "$(running)" ]; then say "no demo running in $DEMO_DIR"; exit 1; fi
    say "demo running in $DEMO_DIR:"; running | awk '{printf "  %-10s pid %s\n", $1, $2}'
    [ -f "$DEMO_DIR/tokens.env" ] && grep '_URL=' "$DEMO_DIR/tokens.env" | sed 's/^/  /'
    exit 0 ;;
esac

# --- settings -------------------------------------------------------------------------
if [ "$command" = tokens ] || [ "$command" = reload ]; then
  [ -f "$DEMO_DIR/demo.env" ] || die "no demo in $DEMO_DIR (no demo.env): start one with make demo"
  # shellcheck source=/dev/null
  source "$DEMO_DIR/demo.env"
else
  offset=${PORT_OFFSET:-0}
  [[ "$offset" =~ ^[0-9]+$ ]] || die "PORT_OFFSET=$offset: expected a number, e.g. PORT_OFFSET=100"
  ENVOY_PORT=${ENVOY_PORT:-$((10000 + offset))}
  ADMIN_PORT=${ADMIN_PORT:-$((9901 + offset))}
  COUNTER_PORT=${COUNTER_PORT:-$((8081 + offset))}
  COLLECTOR_PORT=${COLLECTOR_PORT:-$((8082 + offset))}
  UPSTREAM_PORT=${UPSTREAM_PORT:-$((8080 + offset))}
  REDIS_PORT=${REDIS_PORT:-$((6399 + offset))}
  STRIPE_PORT=${STRIPE_PORT:-$((12111 + offset))}
  PLANS=$(abs "${PLANS:-$root/config/plans.toml}")
  FILTER_CONFIG=$(abs "${FILTER_CONFIG:-$root/envoy/filter-config.json}")
  ENVOY_TEMPLATE=$(abs "${ENVOY_TEMPLATE:-$root/envoy/envoy.yaml.tmpl}")
  JWKS=$(abs "${JWKS:-$root/config/demo/jwks.json}")
  JWT_ISSUER=${JWT_ISSUER:-https://auth.turnpike.example}
  JWT_AUDIENCE=${JWT_AUDIENCE:-turnpike-api}
  DEMO_KEY=$(abs "${TURNPIKE_DEMO_KEY:-$root/config/demo/jwt-signing-key.pem}")
  JWT_KID=${JWT_KID:-turnpike-demo}
  JWT_TENANT_CLAIM=${JWT_TENANT_CLAIM:-tenant}
  TOKEN_TTL=${TOKEN_TTL:-86400}
  TENANTS=${TENANTS:-acme globex initech}
  API_ADDRESS=${API_ADDRESS:-}
  if [ -n "$API_ADDRESS" ]; then
    [[ "$API_ADDRESS" =~ ^([^:]+):([0-9]+)$ ]] \
      || die "API_ADDRESS=$API_ADDRESS: expected host:port, e.g. 127.0.0.1:9000"
  fi
fi
[[ "$TOKEN_TTL" =~ ^[1-9][0-9]*$ ]] || die "TOKEN_TTL=$TOKEN_TTL: expected seconds, e.g. 3600"
DEMO_BUILD=${DEMO_BUILD:-1}
if [ -z "${DEMO_BIN_DIR:-}" ] || [ -z "${DEMO_WASM:-}" ]; then
  target=$(cd "$root" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])') \
    || target=$root/target
fi
bin=$(abs "${DEMO_BIN_DIR:-$target/debug}")
wasm=$(abs "${DEMO_WASM:-$target/wasm32-wasip1/wasm/turnpike.wasm}")
envoy=$(abs "${DEMO_ENVOY:-$root/.tools/bin/envoy}")
dev=$bin/turnpike-dev

# --- tokens.env: every credential and endpoint of this demo, as NAME=value lines --------
write_tokens() {
  local now expires tmp
  now=$(date +%s); expires=$((now + TOKEN_TTL))
  mint() { "$dev" mint -q --key "$DEMO_KEY" --kid "$JWT_KID" --issuer "$JWT_ISSUER" \
    --audience "$JWT_AUDIENCE" --claim "$JWT_TENANT_CLAIM" --ttl-secs "$TOKEN_TTL" "$@"; }
  tmp=$(mktemp "$DEMO_DIR/tokens.env.XXXXXX")
  {
    echo "# Turnpike demo in $DEMO_DIR: credentials and endpoints (source this file)."
    echo "# Tenant tokens expire at $(date -u -d "@$expires" +%Y-%m-%dT%H:%M:%SZ)."
    echo "# Re-mint them: DEMO_DIR=$DEMO_DIR scripts/demo.sh tokens"
    echo "ENVOY_URL=http://127.0.0.1:$ENVOY_PORT"
    echo "ADMIN_URL=http://127.0.0.1:$ADMIN_PORT"
    echo "COUNTER_URL=http://127.0.0.1:$COUNTER_PORT"
    echo "COLLECTOR_URL=http://127.0.0.1:$COLLECTOR_PORT"
    echo "UPSTREAM_URL=http://127.0.0.1:$UPSTREAM_PORT"
    echo "STRIPE_URL=http://127.0.0.1:$STRIPE_PORT"
    echo "# Tenant tokens (JWTs for Envoy), one per tenant: the name in capitals, - as _."
    local tenant
    for tenant in $TENANTS; do
      echo "$(tr 'a-z.-' 'A-Z__' <<<"$tenant")=$(mint --tenant "$tenant")"
    done
    echo "NOTENANT=$(mint --no-tenant)"
    echo "TOKENS_EXPIRE=$expires"
    echo "# The counter's and the collector's read APIs (and the console's password)."
    echo "READ_TOKEN=$(cat "$DEMO_DIR/secrets/read-token")"
    echo "# What Envoy sends to the counter (consume, refund) and to the collector (events)."
    echo "SERVICE_TOKEN=$(cat "$DEMO_DIR/secrets/service-token")"
    echo "INGEST_SECRET=$(cat "$DEMO_DIR/secrets/ingest-secret")"
    echo "# The Stripe fake's secret key (the collector's billing sync uses it)."
    echo "STRIPE_KEY=$(cat "$DEMO_DIR/secrets/stripe-key")"
  } >"$tmp" || { rm -f "$tmp"; die "cannot mint tokens with $DEMO_KEY (see above)"; }
  chmod 600 "$tmp"
  mv "$tmp" "$DEMO_DIR/tokens.env"
}

start() { # name, command...: a session of its own, so Ctrl-C reaches only this script
  local name=$1; shift
  # A shell stays as the parent: Envoy asks for SIGTERM when its parent exits, and this
  # script exits while a detached demo runs. The recorded pid leads the process group
  # that stop_demo signals.
  setsid bash -c '"$@" & wait $!' "$name" "$@" </dev/null >>"$DEMO_DIR/$name.log" 2>&1 9>&- &
  local pid=$! start=""
  for _ in 1 2 3 4 5; do start=$(started_at "$pid"); [ -n "$start" ] && break; sleep 0.05; done
  echo "$name $pid $start" >>"$pids_file"
}
wait_http() { # name, url
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$2" 2>/dev/null && return 0
    is_running "$1" || break
    sleep 0.1
  done
  tail -n 20 "$DEMO_DIR/$1.log" >&2 || true
  die "$1 did not become ready at $2 (log: $DEMO_DIR/$1.log)"
}
if [ -n "${API_ADDRESS:-}" ]; then
  api_host=${API_ADDRESS%:*} api_port=${API_ADDRESS##*:}
else
  api_host=127.0.0.1 api_port=$UPSTREAM_PORT
fi
render_envoy() { # out: the template with the filter config, this demo's ports and keys
  "$dev" render-envoy --template "$ENVOY_TEMPLATE" --filter-config "$FILTER_CONFIG" \
    --set ADMIN_ADDRESS=127.0.0.1 --set ADMIN_PORT="$ADMIN_PORT" \
    --set LISTEN_ADDRESS=127.0.0.1 --set LISTEN_PORT="$ENVOY_PORT" \
    --set JWKS_PATH="$JWKS" --set WASM_PATH="$wasm" \
    --set JWT_ISSUER="$JWT_ISSUER" --set JWT_AUDIENCE="$JWT_AUDIENCE" \
    --set NODE_ID=demo-envoy \
    --set UPSTREAM_HOST="$api_host" --set UPSTREAM_PORT="$api_port" \
    --set COUNTER_HOST=127.0.0.1 --set COUNTER_PORT="$COUNTER_PORT" \
    --set COLLECTOR_HOST=127.0.0.1 --set COLLECTOR_PORT="$COLLECTOR_PORT" \
    --out "$1"
}
start_envoy() {
  # The filter reads its credentials from Envoy's environment, never from its config.
  # --base-id: Envoy's hot-restart socket; the admin port makes it unique per demo.
  start envoy env TURNPIKE_COUNTER_TOKEN="$(cat "$DEMO_DIR/secrets/service-token")" \
    TURNPIKE_INGEST_SECRET="$(cat "$DEMO_DIR/secrets/ingest-secret")" \
    "$envoy" -c "$DEMO_DIR/envoy.yaml" --concurrency 1 --base-id "$ADMIN_PORT" -l info
}

case "$command" in
  tokens)
    [ -x "$dev" ] || die "$dev not found: build with make build"
    write_tokens
    say "fresh tokens in $DEMO_DIR/tokens.env (valid $((TOKEN_TTL / 3600)) h): source it again"
    exit 0 ;;
  reload)
    is_running envoy || die "no demo Envoy running in $DEMO_DIR: start the demo first"
    render_envoy "$DEMO_DIR/envoy.yaml.new" \
      || die "cannot render $ENVOY_TEMPLATE with $FILTER_CONFIG (above); Envoy keeps running"
    # Envoy flushes its usage events when it stops; the quota lives in Redis, not in Envoy.
    while read -r name pid _; do [ "$name" = envoy ] && kill -TERM -- "-$pid"; done < <(running)
    for _ in $(seq 1 100); do is_running envoy || break; sleep 0.1; done
    grep -v '^envoy ' "$pids_file" >"$pids_file.new" || true
    mv "$pids_file.new" "$pids_file"
    mv "$DEMO_DIR/envoy.yaml.new" "$DEMO_DIR/envoy.yaml"
    echo "--- reload $(date -u +%Y-%m-%dT%H:%M:%SZ) ---" >>"$DEMO_DIR/envoy.log"
    start_envoy
    for _ in $(seq 1 150); do
      curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/ready" 2>/dev/null && break
      is_running envoy || break
      sleep 0.1
    done
    if ! curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/ready" 2>/dev/null; then
      grep -iE 'turnpike|error|critical' "$DEMO_DIR/envoy.log" | tail -n 5 >&2 || true
      die "Envoy did not start with the new config (log: $DEMO_DIR/envoy.log); fix $FILTER_CONFIG and run reload again"
    fi
    say "Envoy reloaded with $FILTER_CONFIG (quota and ledger unchanged)"
    exit 0 ;;
esac

# --- can it start? Checked before anything is touched ------------------------------------
for f in "$PLANS" "$FILTER_CONFIG" "$ENVOY_TEMPLATE" "$JWKS" "$DEMO_KEY"; do
  [ -r "$f" ] || die "$f: not a readable file (check PLANS, FILTER_CONFIG, ENVOY_TEMPLATE, JWKS, TURNPIKE_DEMO_KEY)"
done
ports=("ENVOY_PORT=$ENVOY_PORT" "ADMIN_PORT=$ADMIN_PORT" "COUNTER_PORT=$COUNTER_PORT"
  "COLLECTOR_PORT=$COLLECTOR_PORT" "REDIS_PORT=$REDIS_PORT" "STRIPE_PORT=$STRIPE_PORT")
[ -z "$API_ADDRESS" ] && ports+=("UPSTREAM_PORT=$UPSTREAM_PORT")
seen=" "
for p in "${ports[@]}"; do
  n=${p#*=}
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 65535 ] || die "$p: not a port number"
  [[ "$seen" == *" $n "* ]] && die "$p: the same port is given twice"
  seen+="$n "
done

if [ -d "$DEMO_DIR" ] && [ -n "$(ls -A "$DEMO_DIR")" ] && [ ! -f "$DEMO_DIR/.turnpike-demo" ]; then
  die "DEMO_DIR=$DEMO_DIR holds files but is not a demo state directory (no .turnpike-demo), \
and the demo would replace it. Choose a new or empty directory."
fi
mkdir -p "$(dirname "$DEMO_DIR")"
# One start at a time per state directory (fd 9 is closed for the services below).
exec 9>"$DEMO_DIR.lock"
flock -n 9 || die "another demo is starting in $DEMO_DIR right now"
if [ -n "$(running)" ]; then
  die "a demo is already running in $DEMO_DIR ($(running | awk '{printf "%s ", $1}')); \
stop it with: DEMO_DIR=$DEMO_DIR scripts/demo.sh stop
  or run a second one beside it: DEMO_DIR=$DEMO_DIR-2 PORT_OFFSET=100 make demo"
fi
taken=()
for p in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/${p#*=}") 2>/dev/null; then taken+=("$p"); fi
done
if [ ${#taken[@]} -gt 0 ]; then
  die "port(s) in use on 127.0.0.1: ${taken[*]}. Nothing was started or changed.
  Another demo? See: DEMO_DIR=... scripts/demo.sh status
  Run beside it: DEMO_DIR=.run/demo-2 PORT_OFFSET=100 make demo (or set the *_PORT variables)"
fi
for tool in redis-server redis-cli curl python3 flock; do
  command -v "$tool" >/dev/null || die "$tool not found: run scripts/ensure-tools.sh (make tools)"
done
[ -x "$envoy" ] || die "Envoy not found at $envoy: run scripts/ensure-tools.sh, or set DEMO_ENVOY"

if [ "$DEMO_BUILD" = 1 ]; then
  say "building the filter (.wasm) and the services (make build)"
  make --no-print-directory -C "$root" build >/dev/null
fi
for f in "$bin/turnpike-counter" "$bin/turnpike-collector" "$dev"; do
  [ -x "$f" ] || die "$f not found: run make build (or set DEMO_BIN_DIR)"
done
[ -r "$wasm" ] || die "$wasm not found: run make build (or set DEMO_WASM)"
"$bin/turnpike-counter" --plans "$PLANS" --validate >/dev/null \
  || die "$PLANS is not a valid plans file (above: the field and line)"

# --- from here on, the state directory is ours -------------------------------------------
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/secrets"
echo "state of scripts/demo.sh; replaced by the next demo started here" >"$DEMO_DIR/.turnpike-demo"
chmod 700 "$DEMO_DIR/secrets"
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
secret >"$DEMO_DIR/secrets/service-token"
secret >"$DEMO_DIR/secrets/read-token"
secret >"$DEMO_DIR/secrets/ingest-secret"
echo "sk_test_demo_$(secret | tr -dc 'A-Za-z0-9')" >"$DEMO_DIR/secrets/stripe-key"
chmod 600 "$DEMO_DIR/secrets/"*
stripe_key=$(cat "$DEMO_DIR/secrets/stripe-key")
# What `scripts/demo.sh tokens` and `reload` need to do it again the same way.
DEMO_BIN_DIR=$bin DEMO_WASM=$wasm DEMO_ENVOY=$envoy
declare -p ENVOY_PORT ADMIN_PORT COUNTER_PORT COLLECTOR_PORT UPSTREAM_PORT REDIS_PORT \
  STRIPE_PORT PLANS FILTER_CONFIG ENVOY_TEMPLATE JWKS JWT_ISSUER JWT_AUDIENCE DEMO_KEY \
  JWT_KID JWT_TENANT_CLAIM TOKEN_TTL TENANTS API_ADDRESS DEMO_BIN_DIR DEMO_WASM DEMO_ENVOY \
  | sed -E 's/^declare -[-a-zA-Z]* //' >"$DEMO_DIR/demo.env"

started_ok=0
on_exit() {
  local rc=$?
  if [ "$started_ok" != 1 ]; then
    [ $rc -ne 0 ] && echo "[demo] start failed; stopping what was started (logs: $DEMO_DIR)" >&2
    stop_demo
  fi
}
trap on_exit EXIT
redis_url=redis://127.0.0.1:$REDIS_PORT
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DEMO_DIR" \
  --save '' --appendonly no
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
start stripe "$dev" stripe-fake --listen "127.0.0.1:$STRIPE_PORT" \
  --api-key-file "$DEMO_DIR/secrets/stripe-key"
start counter "$bin/turnpike-counter" --listen "127.0.0.1:$COUNTER_PORT" \
  --redis "$redis_url" --plans "$PLANS" \
  --service-token-file "$DEMO_DIR/secrets/service-token" \
  --read-token-file "$DEMO_DIR/secrets/read-token" \
  --ledger-url "http://127.0.0.1:$COLLECTOR_PORT" \
  --ledger-token-file "$DEMO_DIR/secrets/read-token"
# Billing: every 5 s, hours sent as soon as they close (production: 60 s and 300 s).
start collector "$bin/turnpike-collector" --listen "127.0.0.1:$COLLECTOR_PORT" \
  --database "sqlite://$DEMO_DIR/ledger.db" --redis "$redis_url" --plans "$PLANS" \
  --consumer demo \
  --ingest-secret-file "$DEMO_DIR/secrets/ingest-secret" \
  --read-token-file "$DEMO_DIR/secrets/read-token" \
  --stripe-key-file "$DEMO_DIR/secrets/stripe-key" \
  --stripe-api-base "http://127.0.0.1:$STRIPE_PORT" \
  --billing-sync-interval-secs 5 --billing-grace-secs 0
[ -z "$API_ADDRESS" ] && start upstream "$dev" upstream --listen "127.0.0.1:$UPSTREAM_PORT"
render_envoy "$DEMO_DIR/envoy.yaml" || die "cannot render $ENVOY_TEMPLATE with $FILTER_CONFIG (above)"
start_envoy

wait_http stripe "http://127.0.0.1:$STRIPE_PORT/_fake/clock"
wait_http counter "http://127.0.0.1:$COUNTER_PORT/healthz"
wait_http collector "http://127.0.0.1:$COLLECTOR_PORT/healthz"
[ -z "$API_ADDRESS" ] && wait_http upstream "http://127.0.0.1:$UPSTREAM_PORT/healthz"
wait_http envoy "http://127.0.0.1:$ADMIN_PORT/ready"

# Stripe meters for every meter the plans charge, named as [billing.meters] says.
meters=$(python3 - "$PLANS" <<'PY'
import sys, tomllib
plans = tomllib.load(open(sys.argv[1], "rb"))
names = (plans.get("billing") or {}).get("meters") or {}
meters = sorted({l["meter"] for p in plans.get("plans", {}).values() for l in p.get("limits", [])})
print("\n".join(names.get(m, m) for m in meters))
PY
)
for event in $meters; do
  curl -fsS -o /dev/null -u "$stripe_key:" "http://127.0.0.1:$STRIPE_PORT/v1/billing/meters" \
    -d "display_name=Turnpike $event" -d "event_name=$event" \
    -d 'default_aggregation[formula]=sum' \
    || die "cannot create the Stripe meter $event in the fake (log: $DEMO_DIR/stripe.log)"
done

write_tokens
# shellcheck source=/dev/null
source "$DEMO_DIR/tokens.env"
api=$ENVOY_URL
started_ok=1
say "stack is up in $DEMO_DIR: Envoy $api, counter $COUNTER_URL, collector $COLLECTOR_URL, Stripe fake $STRIPE_URL"

if [ "${DEMO_WALKTHROUGH:-1}" = 1 ]; then
  say "globex is on the free plan (5 requests a minute); watch 200s turn into 429s:"
  for i in 1 2 3 4 5 6 7; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $GLOBEX" "$api/v1/items/$i")
    echo "  request $i -> $code"
  done
  echo
  say "the last answer in full:"
  curl -s -i -H "Authorization: Bearer $GLOBEX" "$api/v1/items/8" | sed 's/^/  /'
  echo; echo
  say "the usage events reach the ledger; globex's day there:"
  usage=""
  for _ in $(seq 1 50); do
    usage=$(curl -s -H "Authorization: Bearer $READ_TOKEN" "$COLLECTOR_URL/v1/tenants/globex/usage?window=day")
    [[ "$usage" == *'"quantity":5'* ]] && break
    sleep 0.2
  done
  echo "  $usage"
  echo

  # Billing sends closed hours only. So that the first sync has one, post last hour's
  # usage for acme and globex through the ingest API, as a proxy would have.
  say "billing: posting last hour's usage for acme and globex (as a proxy would), then syncing"
  python3 - "$DEMO_DIR/backfill.json" <<'PY'
import json, sys, time
hour = (int(time.time()) // 3600 - 1) * 3600
def event(i, tenant, plan, route, meters):
    t = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hour + 60 * i + 7))
    return {"specversion": "1.0", "id": f"demo-backfill-{tenant}-{i}",
            "source": "//turnpike/demo/backfill", "type": "dev.turnpike.usage.v1",
            "subject": tenant, "time": t, "datacontenttype": "application/json",
            "data": {"meters": [{"meter": m, "cost": c} for m, c in meters], "plan": plan,
                     "method": "GET", "route": route, "status": 200, "request_bytes": 0,
                     "response_bytes": 512, "duration_ms": 3, "decision": "allowed"}}
events = [event(i, "acme", "pro", "search", [("requests", 1), ("search_units", 5)]) for i in range(30)]
events += [event(30 + i, "acme", "pro", "api", [("requests", 1)]) for i in range(12)]
events += [event(i, "globex", "free", "api", [("requests", 1)]) for i in range(4)]
json.dump(events, open(sys.argv[1], "w"))
PY
  curl -fsS -o /dev/null -H "Authorization: Bearer $INGEST_SECRET" \
    -H 'content-type: application/cloudevents-batch+json' \
    --data-binary "@$DEMO_DIR/backfill.json" "$COLLECTOR_URL/v1/events" \
    || die "the collector refused the sample usage (log: $DEMO_DIR/collector.log)"
  curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $READ_TOKEN" "$COLLECTOR_URL/v1/billing/sync" \
    || echo "  (the sync run did not answer; the periodic one runs every 5 s)"
  say "what Stripe (the fake) now holds, per customer and meter, from its meter event summaries:"
  python3 - "$STRIPE_URL" "$STRIPE_KEY" "$PLANS" <<'PY' || echo "  (could not read the fake)"
import base64, json, sys, time, tomllib, urllib.request
url, key, plans_path = sys.argv[1:]
plans = tomllib.load(open(plans_path, "rb"))
auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
def get(path):
    req = urllib.request.Request(url + path, headers={"Authorization": auth})
    return json.load(urllib.request.urlopen(req, timeout=5))
customers = {t: v["stripe_customer"] for t, v in plans.get("tenants", {}).items() if "stripe_customer" in v}
hour = (int(time.time()) // 3600 - 1) * 3600
for _ in range(30):
    rows = []
    for meter in get("/v1/billing/meters")["data"]:
        for tenant, customer in sorted(customers.items()):
            s = get(f"/v1/billing/meters/{meter['id']}/event_summaries?customer={customer}"
                    f"&start_time={hour}&end_time={hour + 3600}")
            total = sum(x["aggregated_value"] for x in s["data"])
            if total:
                rows.append((tenant, customer, meter["event_name"], total))
    if rows:
        break
    time.sleep(0.5)
when = time.strftime("%H:00-%H:59 UTC", time.gmtime(hour))
for tenant, customer, event, total in sorted(rows):
    print(f"  {tenant:8} {customer:18} {event:14} {total:>5g}   (hour {when})")
if not rows:
    print("  nothing yet: see GET /v1/billing/status on the collector")
PY
  echo
fi

console=$(curl -s -o /dev/null -w '%{http_code}' "$COLLECTOR_URL/console" || true)
if [ "$console" = 200 ] || [ "$console" = 401 ]; then
  say "operator console: $COLLECTOR_URL/console (any user name; password: READ_TOKEN from tokens.env)"
fi
cat <<MSG
Try it yourself. Credentials and URLs are in $DEMO_DIR/tokens.env;
tenant tokens last $((TOKEN_TTL / 3600)) h (then 401 "Jwt is expired": scripts/demo.sh tokens mints fresh ones).

  source $DEMO_DIR/tokens.env
  # initech is on the free plan and has not been used yet: 5 requests a minute, then 429
  curl -i -H "Authorization: Bearer \$INITECH" "\$ENVOY_URL/v1/items/1"
  # acme is pinned to the pro plan; a search costs 1 request + 5 search_units
  curl -i -H "Authorization: Bearer \$ACME" "\$ENVOY_URL/v1/search?q=shoes"
  # an LLM-style API billed by tokens: max_tokens reserved first, usage.total_tokens settled
  curl -s -H "Authorization: Bearer \$ACME" -H 'content-type: application/json' \
    -d '{"model":"demo","max_tokens":50,"messages":[{"role":"user","content":"hello"}]}' \
    "\$ENVOY_URL/v1/chat/completions"
  curl -s -H "Authorization: Bearer \$READ_TOKEN" "\$COUNTER_URL/v1/tenants/acme/usage" | grep -o '{"name":"tokens-daily"[^}]*}'
  # globex spent its minute above: 429 until the minute ends
  curl -i -H "Authorization: Bearer \$GLOBEX" "\$ENVOY_URL/v1/items/1"
  # a verified token without a tenant claim: 401 problem+json from the filter
  curl -i -H "Authorization: Bearer \$NOTENANT" "\$ENVOY_URL/v1/items/1"
  # no token at all: refused by jwt_authn before metering
  curl -i "\$ENVOY_URL/v1/items/1"
  # mint your own (from any directory):
  $dev mint --tenant NAME [--plan pro] [--ttl-secs 3600]

  # what the counter holds for a tenant (its windows), and the ledger's month
  curl -s -H "Authorization: Bearer \$READ_TOKEN" "\$COUNTER_URL/v1/tenants/acme/usage" | python3 -m json.tool
  curl -s -H "Authorization: Bearer \$READ_TOKEN" "\$COLLECTOR_URL/v1/tenants/acme/usage?window=month" | python3 -m json.tool
  curl -s -H "Authorization: Bearer \$READ_TOKEN" "\$COLLECTOR_URL/v1/tenants/globex/events?limit=5" | python3 -m json.tool
  # billing: what the sync did, and Stripe's side (the fake's dump)
  curl -s -H "Authorization: Bearer \$READ_TOKEN" "\$COLLECTOR_URL/v1/billing/status" | python3 -m json.tool
  curl -s "\$STRIPE_URL/_fake/events" | python3 -m json.tool
  # filter stats in Envoy
  curl -s "\$ADMIN_URL/stats" | grep wasmcustom

Logs: $DEMO_DIR/*.log. Stop: DEMO_DIR=$DEMO_DIR scripts/demo.sh stop
MSG
if [ "${DEMO_DETACH:-0}" = 1 ]; then
  say "left running (DEMO_DETACH=1)"
  exit 0
fi
say "running; Ctrl-C stops everything"
trap 'echo; stop_demo; say "stopped"; exit 0' INT TERM
trap - EXIT
while true; do
  expected=$(wc -l <"$pids_file")
  if [ "$(running | wc -l)" -lt "$expected" ]; then
    gone=$(comm -23 <(awk '{print $1}' "$pids_file" | sort) <(running | awk '{print $1}' | sort) | tr '\n' ' ')
    echo "[demo] stopped by itself: $gone(see $DEMO_DIR/*.log); stopping the rest" >&2
    stop_demo
    exit 1
  fi
  sleep 1
done
