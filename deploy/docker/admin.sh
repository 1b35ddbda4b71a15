#!/usr/bin/env bash
# Envoy's admin interface from inside the Envoy container, where it listens (127.0.0.1
# only: the admin API can drain listeners, change log levels and dump the config, so
# it is never published). Prints the body of one GET; fails unless the status is 200.
#   docker compose exec envoy turnpike-admin /stats
#   docker compose exec envoy turnpike-admin '/stats?filter=wasmcustom'
# No curl in the image: HTTP/1.1 over bash's /dev/tcp (Envoy refuses HTTP/1.0 with 426),
# with the chunked transfer encoding the admin interface answers in decoded here.
set -euo pipefail
export LC_ALL=C # chunk sizes count bytes
path=${1:?usage: turnpike-admin PATH (e.g. /stats, /ready, /clusters)}
port=${TP_ADMIN_PORT:-9901}
exec 3<>"/dev/tcp/127.0.0.1/$port" \
  || { echo "turnpike-admin: nothing listens on 127.0.0.1:$port" >&2; exit 1; }
printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
IFS= read -r -t 5 status <&3 || { echo "turnpike-admin: no answer from 127.0.0.1:$port" >&2; exit 1; }
status=${status%$'\r'}
chunked=""
# Headers end at the first empty line.
while IFS= read -r -t 5 line <&3; do
  line=${line%$'\r'}
  [ -n "$line" ] || break
  shopt -s nocasematch
  [[ "$line" == transfer-encoding:*chunked* ]] && chunked=1
  shopt -u nocasematch
done
if [ -n "$chunked" ]; then
  while IFS= read -r -t 5 size <&3; do
    size=${size%$'\r'}
    size=$((16#${size%%;*}))
    [ "$size" -gt 0 ] || break
    IFS= read -r -N "$size" -t 5 chunk <&3
    printf '%s' "$chunk"
    IFS= read -r -t 5 _ <&3 # the CRLF after each chunk
  done
else
  cat <&3
fi
[[ "$status" == "HTTP/1."?" 200"* ]] || { echo "turnpike-admin: $path answered $status" >&2; exit 1; }
