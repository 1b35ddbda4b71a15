#!/usr/bin/env bash
# Envoy's admin interface from inside the Envoy container, where it listens (127.0.0.1
# only: the admin API can drain listeners, change log levels and dump the config, so
# it is never published). Prints the body of one GET; fails unless the status is 200.
#   docker compose exec envoy turnpike-admin /stats
#   docker compose exec envoy turnpike-admin '/stats?filter=wasmcustom'
set -euo pipefail
path=${1:?usage: turnpike-admin PATH (e.g. /stats, /ready, /clusters)}
port=${TP_ADMIN_PORT:-9901}
exec 3<>"/dev/tcp/127.0.0.1/$port" \
  || { echo "turnpike-admin: nothing listens on 127.0.0.1:$port" >&2; exit 1; }
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
IFS= read -r -t 5 status <&3 || { echo "turnpike-admin: no answer from 127.0.0.1:$port" >&2; exit 1; }
# Headers end at the first empty line (CRLF).
while IFS= read -r -t 5 line <&3 && [ "${line%$'\r'}" != "" ]; do :; done
cat <&3
[[ "$status" == "HTTP/1."?" 200"* ]] || { echo "turnpike-admin: $path answered ${status%$'\r'}" >&2; exit 1; }
