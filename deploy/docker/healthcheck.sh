#!/usr/bin/env bash
# Container HEALTHCHECK without curl in the image: one HTTP/1.1 GET through bash's
# /dev/tcp to 127.0.0.1; healthy when the answer's status is 200. HTTP/1.1, not 1.0:
# Envoy's admin interface answers HTTP/1.0 with 426 Upgrade Required.
#   turnpike-healthcheck PORT [PATH]
set -u
port=${1:?usage: turnpike-healthcheck PORT [PATH]}
path=${2:-/healthz}
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
IFS= read -r -t 3 status <&3 || exit 1
[[ "$status" == "HTTP/1."?" 200"* ]]
