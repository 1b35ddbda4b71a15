#!/usr/bin/env bash
# Smoke test of docker-compose.yml: builds the images, starts the stack, sends a handful
# of real requests through Envoy on 127.0.0.1 (200s, then a 429, then the usage in the
# collector's API) and always takes the stack down again (`down -v`).
#
#   scripts/compose-smoke.sh [--offline] [--postgres] [--istio]
#
# --offline: never try a registry. --postgres: another pass with the ledger in
# PostgreSQL (the compose file's `postgres` profile, deploy/compose/postgres.env).
# --istio: another pass with the filter configured as under Istio (the WasmPlugin's
# pluginConfig, `outbound|PORT||FQDN` cluster names, the payload under `payload`).
#
# Works on a fresh Debian machine as root: installs docker.io, docker-compose and
# debootstrap when missing, starts dockerd when none runs (and stops it again), and
# builds stand-ins for the registry images when no registry is reachable
# (scripts/prepare-offline-images.sh). Images are reused between runs. Logs:
# .run/compose-smoke/. Fails with the reason and the last lines of every service log.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

offline_flag=()
with_postgres=0
with_istio=0
for arg in "$@"; do
  case "$arg" in
    --offline) offline_flag=(--offline) ;;
    --postgres) with_postgres=1 ;;
    --istio) with_istio=1 ;;
    *) echo "compose-smoke: unknown argument $arg" >&2; exit 2 ;;
  esac
done

run="$root/.run/compose-smoke"
mkdir -p "$run"
project=turnpike-smoke
started=$(date +%s)
phase_start=$started

say() { printf '[compose-smoke] %s\n' "$*" >&2; }
lap() { # what finished
  local now; now=$(date +%s)
  say "$1 ($((now - phase_start)) s)"
  phase_start=$now
}
die() { printf '[compose-smoke] FAILED: %s\n' "$*" >&2; exit 1; }

# --- a Docker engine ------------------------------------------------------------------
install_debs() {
  [ "$(id -u)" = 0 ] || die "missing $*: run as root or install them"
  say "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "$@" >"$run/apt.log" 2>&1 \
    || { tail -n 20 "$run/apt.log" >&2; die "apt-get install $* failed"; }
}
debs=()
command -v dockerd >/dev/null || debs+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || debs+=(docker-compose)
command -v debootstrap >/dev/null || debs+=(debootstrap)
[ ${#debs[@]} -eq 0 ] || install_debs "${debs[@]}"

dockerd_pid=""
compose_up=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" != 0 ] && [ -n "${compose_up:-}" ]; then
    "${compose[@]}" ps >&2 || true
    "${compose[@]}" logs --no-color --tail 40 >"$run/services.log" 2>&1 || true
    tail -n 120 "$run/services.log" >&2 || true
  fi
  if [ -n "${compose_up:-}" ]; then
    "${compose[@]}" down -v --remove-orphans >"$run/down.log" 2>&1 \
      || { cat "$run/down.log" >&2; say "WARNING: compose down failed"; }
  fi
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
  fi
  if [ "$rc" = 0 ]; then
    say "passed in $(( $(date +%s) - started )) s"
  fi
  exit "$rc"
}
trap cleanup EXIT INT TERM
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "no Docker engine answers and only root can start one"
  say "starting dockerd (log: $run/dockerd.log)"
  dockerd >"$run/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -n 20 "$run/dockerd.log" >&2; die "dockerd did not start"; }
fi

# Compose v2 (the docker CLI plugin) where present, else Debian's docker-compose v1.
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose -p "$project")
else
  compose=(docker-compose -p "$project")
fi

# The Dockerfile uses BuildKit cache mounts. A docker CLI with buildx has BuildKit; a
# 20.10 CLI (Debian's docker.io) has it built in; 23+ without buildx has none.
builder=""
for cli in docker /usr/bin/docker; do
  command -v "$cli" >/dev/null || continue
  if "$cli" buildx version >/dev/null 2>&1; then builder=$cli; break; fi
  major=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
  if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then builder=$cli; break; fi
done
[ -n "$builder" ] || die "no docker CLI with BuildKit (install the buildx plugin, or Debian's docker.io)"

lap "docker engine ready ($("$builder" version --format '{{.Server.Version}}'), ${compose[0]})"

# --- images -----------------------------------------------------------------------------
prepare_flags=("${offline_flag[@]}")
[ "$with_postgres" = 0 ] || prepare_flags+=(--postgres)
scripts/prepare-offline-images.sh "${prepare_flags[@]}" || die "could not prepare the base images"
lap "base images ready"

# Built here rather than by `compose build`: compose v1 cannot build with BuildKit or
# host networking. The tags are the compose file's `image:` names, so `up --no-build`
# runs exactly these.
for target in counter collector devtools envoy; do
  say "building turnpike/$target:dev"
  DOCKER_BUILDKIT=1 "$builder" build --network host -f deploy/docker/Dockerfile \
    --target "$target" -t "turnpike/$target:dev" . >"$run/build-$target.log" 2>&1 \
    || { tail -n 40 "$run/build-$target.log" >&2; die "docker build --target $target failed (log: $run/build-$target.log)"; }
done
lap "turnpike images built"

# --- the stack ------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export TURNPIKE_HTTP_PORT TURNPIKE_ADMIN_PORT TURNPIKE_COUNTER_PORT TURNPIKE_COLLECTOR_PORT
TURNPIKE_HTTP_PORT=$(free_port)
TURNPIKE_ADMIN_PORT=$(free_port)
TURNPIKE_COUNTER_PORT=$(free_port)
TURNPIKE_COLLECTOR_PORT=$(free_port)

# One pass over the stack: up, requests, ledger, down. $1 names the ledger backend.
exercise() {
  local backend=$1
  # A previous run killed half-way may have left its containers.
  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  compose_up=1
  "${compose[@]}" up -d --no-build >"$run/up.log" 2>&1 \
    || { cat "$run/up.log" >&2; die "compose up failed"; }

  api="http://127.0.0.1:$TURNPIKE_HTTP_PORT"
  collector="http://127.0.0.1:$TURNPIKE_COLLECTOR_PORT"
  ready=""
  for _ in $(seq 1 120); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$TURNPIKE_ADMIN_PORT/ready" 2>/dev/null; then ready=1; break; fi
    sleep 1
  done
  [ -n "$ready" ] || die "Envoy did not become ready on 127.0.0.1:$TURNPIKE_ADMIN_PORT within 120 s"
  lap "stack up (Envoy on $api)"

  # --- requests -------------------------------------------------------------------------
  mint() { "${compose[@]}" run --rm -T --no-deps mint "$@" 2>>"$run/mint.log"; }
  tenant=smoke
  token=$(mint --tenant "$tenant") || die "mint failed: $(tail -n 3 "$run/mint.log")"
  notenant=$(mint --no-tenant) || die "mint --no-tenant failed: $(tail -n 3 "$run/mint.log")"
  if [ -z "$token" ] || [ -z "$notenant" ]; then die "mint printed no token (log: $run/mint.log)"; fi

  request() { # out-prefix, curl args...; prints the status code
    local out=$1; shift
    curl -s -o "$run/$out.body" -D "$run/$out.headers" -w '%{http_code}' "$@"
  }
  header() { # file, name
    sed -n "s/^$2: *//Ip" "$1" | tr -d '\r' | head -n 1
  }

  code=$(request no-token "$api/v1/items/0")
  [ "$code" = 401 ] || die "a request without a token got $code, want 401 from jwt_authn"
  code=$(request no-tenant -H "Authorization: Bearer $notenant" "$api/v1/items/0")
  [ "$code" = 401 ] || die "a token without a tenant claim got $code, want 401"
  grep -q 'missing-tenant' "$run/no-tenant.body" || die "401 body does not name missing-tenant: $(cat "$run/no-tenant.body")"

  # The free plan (config/plans.toml) allows 5 requests a minute.
  allowed=5
  for i in $(seq 1 "$allowed"); do
    code=$(request "allowed-$i" -H "Authorization: Bearer $token" "$api/v1/items/$i")
    [ "$code" = 200 ] || die "request $i got $code, want 200: $(cat "$run/allowed-$i.body")"
    [ -n "$(header "$run/allowed-$i.headers" ratelimit)" ] || die "request $i has no RateLimit header"
  done
  echoed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["headers"]["turnpike-tenant"][0])' \
    "$run/allowed-1.body" 2>/dev/null || true)
  [ "$echoed" = "$tenant" ] || die "the upstream saw turnpike-tenant '$echoed', want '$tenant'"

  code=$(request denied -H "Authorization: Bearer $token" "$api/v1/items/99")
  [ "$code" = 429 ] || die "request $((allowed + 1)) got $code, want 429"
  retry_after=$(header "$run/denied.headers" retry-after)
  [[ "$retry_after" =~ ^[0-9]+$ ]] || die "429 without a numeric Retry-After"
  grep -q 'quota-exceeded' "$run/denied.body" || die "429 body does not name quota-exceeded"
  lap "Envoy answered 401, 401, ${allowed}x 200, 429 (Retry-After $retry_after)"

  # The filter ships usage events in batches; the ledger must show exactly the 200s.
  usage=""
  for _ in $(seq 1 30); do
    usage=$(curl -fsS "$collector/v1/tenants/$tenant/usage?window=day" 2>/dev/null || true)
    got=$(printf '%s' "$usage" | python3 -c 'import json, sys; print(sum(m["quantity"] for m in json.load(sys.stdin)["meters"] if m["meter"] == "requests"))' 2>/dev/null || true)
    [ "$got" = "$allowed" ] && break
    sleep 1
  done
  [ "$got" = "$allowed" ] || die "the collector's usage for $tenant shows requests=${got:-none}, want $allowed: $usage"
  lap "collector ledger ($backend pass) shows requests=$allowed for $tenant"
  if [ -n "${expect_cluster:-}" ]; then
    # Proves the pass ran with the intended config: the callouts used that cluster.
    curl -fsS "http://127.0.0.1:$TURNPIKE_ADMIN_PORT/stats" | grep -qF "cluster.$expect_cluster.upstream_rq_total: " \
      || die "Envoy has no callouts through cluster $expect_cluster"
  fi
  "${compose[@]}" down -v --remove-orphans >"$run/down.log" 2>&1 \
    || { cat "$run/down.log" >&2; die "compose down failed"; }
  compose_up=""
  lap "stack down ($backend pass)"
}

base_compose=("${compose[@]}")
exercise sqlite
if [ "$with_postgres" = 1 ]; then
  compose=("${base_compose[@]}" --env-file deploy/compose/postgres.env)
  exercise postgres
fi
if [ "$with_istio" = 1 ]; then
  # What the sidecar would run: the pluginConfig of deploy/istio/wasmplugin.yaml, the
  # callout clusters under Istio's names, and jwt_authn storing the verified payload
  # under `payload` as Istio (>= 1.21) configures it.
  istio="$run/istio"
  mkdir -p "$istio"
  deploy/istio/validate.sh --print-plugin-config >"$istio/filter-config.json" \
    || die "cannot read the pluginConfig of deploy/istio/wasmplugin.yaml"
  counter_cluster=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["counter"]["cluster"])' "$istio/filter-config.json")
  collector_cluster=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["collector"]["cluster"])' "$istio/filter-config.json")
  cat >"$istio/override.yml" <<YAML
services:
  envoy:
    environment:
      TURNPIKE_FILTER_CONFIG: /istio/filter-config.json
      TP_COUNTER_CLUSTER: "$counter_cluster"
      TP_COLLECTOR_CLUSTER: "$collector_cluster"
      TP_JWT_PAYLOAD_KEY: payload
    volumes:
      - $istio:/istio:ro
YAML
  chmod -R a+rX "$istio"
  compose=("${base_compose[@]}" -f docker-compose.yml -f "$istio/override.yml")
  expect_cluster=$counter_cluster
  exercise istio-names
fi
