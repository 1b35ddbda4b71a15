#!/usr/bin/env bash
# Runs docs/meter-your-own-api.md step by step against a sample API of "yours" (a tiny
# Python server) and checks every result the guide promises. Exit 0: the guide works.
#
#   scripts/guide-own-api.sh                 in a fresh temporary directory
#   GUIDE_DIR=/tmp/guide scripts/guide-own-api.sh   keep the files there (and look at them)
#
# Ports: those of scripts/demo.sh with PORT_OFFSET (default 300 here, so a running
# `make demo` is left alone), and API_PORT for your API (default 9000 + PORT_OFFSET).
# DEMO_BUILD, DEMO_BIN_DIR, DEMO_WASM and DEMO_ENVOY are passed on to scripts/demo.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PORT_OFFSET=${PORT_OFFSET:-300}
API_PORT=${API_PORT:-$((9000 + PORT_OFFSET))}
work=${GUIDE_DIR:-$(mktemp -d /tmp/turnpike-guide.XXXXXX)}
mkdir -p "$work"
cd "$work"

step() { printf '\n[guide] %s\n' "$*"; }
fail() { printf '[guide] FAILED: %s\n' "$*" >&2; exit 1; }
expect() { # what, actual, wanted
  [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
  echo "  ok: $1 = $2"
}
expect_in() { # what, haystack, needle
  [[ "$2" == *"$3"* ]] || fail "$1: '$3' not in: $2"
  echo "  ok: $1 has $3"
}

api_pid=""
cleanup() {
  DEMO_DIR=$work/demo "$root/scripts/demo.sh" stop >/dev/null 2>&1 || true
  [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null || true
}
trap cleanup EXIT

# --- 0. your API ------------------------------------------------------------------------
step "0. your API: a tiny Python server on 127.0.0.1:$API_PORT"
cat >my_api.py <<'PY'
import http.server, json, sys

class Api(http.server.BaseHTTPRequestHandler):
    def answer(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"api": "mine", "method": self.command, "path": self.path,
                           "tenant": self.headers.get("turnpike-tenant")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = answer
    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Api).serve_forever()
PY
python3 my_api.py "$API_PORT" &
api_pid=$!
for _ in $(seq 1 50); do curl -fs -o /dev/null "http://127.0.0.1:$API_PORT/healthz" && break; sleep 0.1; done
expect "your API answers directly" "$(curl -s "http://127.0.0.1:$API_PORT/v1/reports" | python3 -c 'import json,sys; print(json.load(sys.stdin)["api"])')" mine

# --- 1. routes and prices -------------------------------------------------------------
step "1. routes and their prices: my-filter-config.json"
cat >my-filter-config.json <<'JSON'
{
  "tenant":  { "claim": "org_id", "plan_claim": "plan", "payload_key": "${JWT_PAYLOAD_KEY}" },
  "counter": { "cluster": "${COUNTER_CLUSTER}", "authority": "turnpike-counter",
               "token_env": "TURNPIKE_COUNTER_TOKEN", "timeout_ms": 250,
               "failure_mode": "fail_closed" },
  "routes": [
    { "name": "report-create", "method": "POST", "path_exact": "/v1/reports",
      "meters": { "requests": 1, "report_units": 10 } },
    { "name": "reports", "method": "GET", "path_prefix": "/v1/reports",
      "meters": { "requests": 1 } }
  ],
  "default_route": { "name": "other", "meters": { "requests": 1 } },
  "exempt": [ { "path_exact": "/healthz" } ],
  "refund_on_5xx": true,
  "collector": { "cluster": "${COLLECTOR_CLUSTER}", "authority": "turnpike-collector",
                 "secret_env": "TURNPIKE_INGEST_SECRET" }
}
JSON
python3 -m json.tool my-filter-config.json >/dev/null && echo "  ok: valid JSON"

# --- 2. plans and tenants ---------------------------------------------------------------
step "2. plans and tenants: my-plans.toml"
cat >my-plans.toml <<'TOML'
default_plan = "starter"

[plans.starter]
limits = [
  { name = "per-minute",    meter = "requests",     window = "minute", max = 20 },
  { name = "reports-daily", meter = "report_units", window = "day",    max = 30 },
]

[plans.scale]
limits = [
  { name = "per-minute",    meter = "requests",     window = "minute", max = 600 },
  { name = "reports-daily", meter = "report_units", window = "day",    max = 1000 },
]

[tenants.hooli]
plan = "starter"
stripe_customer = "cus_hooli"
TOML
bin=${DEMO_BIN_DIR:-$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug}
expect "turnpike-counter --validate" "$("$bin/turnpike-counter" --plans my-plans.toml --validate)" OK

# --- 3. your identity provider ----------------------------------------------------------
step "3. the identity provider: issuer, audience, JWKS (here a key of our own stands in)"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out idp-key.pem 2>/dev/null
"$bin/turnpike-dev" jwks --key idp-key.pem --kid my-idp >my-jwks.json
expect "JWKS key id" "$(python3 -c 'import json; print(json.load(open("my-jwks.json"))["keys"][0]["kid"])')" my-idp
issuer=https://idp.example.com
audience=my-api
token() { # tenant: what your identity provider would issue
  "$bin/turnpike-dev" mint -q --key idp-key.pem --kid my-idp --issuer "$issuer" \
    --audience "$audience" --claim org_id --tenant "$1"
}

# --- 4. render Envoy's config and check it offline ---------------------------------------
step "4. render Envoy's config and let Envoy check it (--mode validate)"
envoy=${DEMO_ENVOY:-$root/.tools/bin/envoy}
wasm=${DEMO_WASM:-$(dirname "$(dirname "$bin")")/wasm32-wasip1/wasm/turnpike.wasm}
"$bin/turnpike-dev" render-envoy --template "$root/envoy/envoy.yaml.tmpl" \
  --filter-config my-filter-config.json \
  --set ADMIN_ADDRESS=127.0.0.1 --set ADMIN_PORT=9901 \
  --set LISTEN_ADDRESS=0.0.0.0 --set LISTEN_PORT=10000 \
  --set JWT_ISSUER="$issuer" --set JWT_AUDIENCE="$audience" \
  --set JWKS_PATH="$work/my-jwks.json" --set WASM_PATH="$wasm" \
  --set UPSTREAM_HOST=127.0.0.1 --set UPSTREAM_PORT="$API_PORT" \
  --set COUNTER_HOST=127.0.0.1 --set COUNTER_PORT=8081 \
  --set COLLECTOR_HOST=127.0.0.1 --set COLLECTOR_PORT=8082 \
  --out envoy.yaml
# The filter checks that its secrets reach it through Envoy's environment: any value
# does for a check.
TURNPIKE_COUNTER_TOKEN=check TURNPIKE_INGEST_SECRET=check \
  "$envoy" --mode validate -c envoy.yaml --disable-hot-restart -l error >validate.log 2>&1 \
  || { cat validate.log >&2; fail "envoy --mode validate refused envoy.yaml"; }
expect_in "envoy --mode validate" "$(cat validate.log)" "configuration 'envoy.yaml' OK"

# --- 5. run it: the demo stack in front of your API ------------------------------------
step "5. start Turnpike in front of your API (scripts/demo.sh with your files)"
export DEMO_DIR=$work/demo
PLANS=my-plans.toml FILTER_CONFIG=my-filter-config.json JWKS=my-jwks.json \
  JWT_ISSUER=$issuer JWT_AUDIENCE=$audience TURNPIKE_DEMO_KEY=idp-key.pem JWT_KID=my-idp \
  JWT_TENANT_CLAIM=org_id TENANTS="hooli initrode" API_ADDRESS=127.0.0.1:$API_PORT \
  DEMO_WALKTHROUGH=0 DEMO_DETACH=1 "$root/scripts/demo.sh" >demo.out 2>&1 \
  || { cat demo.out >&2; fail "scripts/demo.sh did not start"; }
# shellcheck source=/dev/null
source "$DEMO_DIR/tokens.env"
HOOLI_TOKEN=$(token hooli)

step "6. requests: priced by route, limited by plan"
reply=$(curl -s -i -H "Authorization: Bearer $HOOLI_TOKEN" "$ENVOY_URL/v1/reports/7")
expect_in "GET /v1/reports/7 status" "$reply" "HTTP/1.1 200"
expect_in "your API saw the tenant" "$reply" '"tenant": "hooli"'
expect_in "plan limits in the answer" "$(tr -d '\r' <<<"$reply" | grep -i '^ratelimit-policy:')" '"per-minute";q=20'
codes=""
for _ in 1 2 3 4; do
  codes+="$(curl -s -o last.json -w '%{http_code}' -X POST -H "Authorization: Bearer $HOOLI_TOKEN" "$ENVOY_URL/v1/reports") "
done
expect "four POST /v1/reports at 10 report_units each, 30 a day" "$codes" "200 200 200 429 "
expect_in "the 429 names the limit" "$(cat last.json)" 'limit \"reports-daily\" of plan \"starter\"'
usage=$(curl -s -H "Authorization: Bearer $READ_TOKEN" "$COUNTER_URL/v1/tenants/hooli/usage")
expect "report_units used today (counter)" "$(python3 -c 'import json,sys; print([l["used"] for l in json.loads(sys.argv[1])["limits"] if l["name"]=="reports-daily"][0])' "$usage")" 30
expect "a token your IdP did not sign" "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $("$bin/turnpike-dev" mint -q --tenant hooli --issuer "$issuer" --audience "$audience" --claim org_id)" "$ENVOY_URL/v1/reports")" 401
expect "the health check passes unmetered, without a token" "$(curl -s -o /dev/null -w '%{http_code}' "$ENVOY_URL/healthz")" 200

step "7. change a price: POST /v1/reports now costs 5 report_units; reload Envoy"
python3 - <<'PY'
import json
config = json.load(open("my-filter-config.json"))
config["routes"][0]["meters"]["report_units"] = 5
json.dump(config, open("my-filter-config.json", "w"), indent=2)
PY
"$root/scripts/demo.sh" reload
INITRODE_TOKEN=$(token initrode)
expect "POST /v1/reports as initrode (default plan starter)" "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $INITRODE_TOKEN" "$ENVOY_URL/v1/reports")" 200
usage=$(curl -s -H "Authorization: Bearer $READ_TOKEN" "$COUNTER_URL/v1/tenants/initrode/usage")
expect "initrode's report_units after one POST at the new price" "$(python3 -c 'import json,sys; print([l["used"] for l in json.loads(sys.argv[1])["limits"] if l["name"]=="reports-daily"][0])' "$usage")" 5

step "8. add a tenant to a plan: initrode moves to scale; the counter reloads the file by itself"
printf '\n[tenants.initrode]\nplan = "scale"\n' >>my-plans.toml
policy=""
for _ in $(seq 1 50); do
  policy=$(curl -s -i -H "Authorization: Bearer $INITRODE_TOKEN" "$ENVOY_URL/v1/reports" | tr -d '\r' | grep -i '^ratelimit-policy:' || true)
  [[ "$policy" == *'q=600'* ]] && break
  sleep 0.2
done
expect_in "initrode's limits after the reload" "$policy" '"per-minute";q=600'
expect_in "the counter's log" "$(cat "$DEMO_DIR/counter.log")" "plans reloaded"

step "9. the ledger: hooli's billable usage today"
ledger=""
for _ in $(seq 1 50); do
  ledger=$(curl -s -H "Authorization: Bearer $READ_TOKEN" "$COLLECTOR_URL/v1/tenants/hooli/usage?window=day")
  [[ "$ledger" == *'"report_units","quantity":30'* ]] && break
  sleep 0.2
done
expect_in "hooli's day in the ledger" "$ledger" '{"meter":"report_units","quantity":30}'
expect_in "hooli's day in the ledger" "$ledger" '{"meter":"requests","quantity":4}'

step "10. stop"
"$root/scripts/demo.sh" stop
echo
echo "[guide] every step of docs/meter-your-own-api.md worked (files in $work)"
