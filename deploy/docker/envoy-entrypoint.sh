#!/usr/bin/env bash
# Envoy image entrypoint: renders the one Envoy template (envoy/envoy.yaml.tmpl with
# envoy/filter-config.json, the same files the local demo and the tests use) for this
# container, then becomes Envoy. Every environment variable TP_<NAME> fills the
# template's ${NAME}; the renderer refuses to leave a placeholder unfilled.
#   TURNPIKE_ENVOY_TEMPLATE, TURNPIKE_FILTER_CONFIG: override the input files.
# Arguments are passed on to Envoy (default: --log-level info).
set -euo pipefail

template=${TURNPIKE_ENVOY_TEMPLATE:-/etc/turnpike/envoy/envoy.yaml.tmpl}
filter_config=${TURNPIKE_FILTER_CONFIG:-/etc/turnpike/envoy/filter-config.json}
out=$(mktemp /tmp/envoy.XXXXXX.yaml)

sets=()
for name in $(compgen -e); do
  if [[ "$name" == TP_* ]]; then
    sets+=(--set "${name#TP_}=${!name}")
  fi
done

turnpike-dev render-envoy --template "$template" --filter-config "$filter_config" \
  "${sets[@]}" --out "$out"
exec envoy -c "$out" "$@"
