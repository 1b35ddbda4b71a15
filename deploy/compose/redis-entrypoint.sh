#!/usr/bin/env bash
# Entrypoint of docker-compose.yml's `redis` service: writes the ACL file from the
# passwords in this container's environment, then becomes redis-server with
# deploy/redis/redis.conf. The ACL file holds SHA-256 hashes only, and redis-server
# starts with the passwords removed from its environment.
#
#   TURNPIKE_REDIS_COUNTER_PASSWORD    user turnpike-counter (the counter)
#   TURNPIKE_REDIS_COLLECTOR_PASSWORD  user turnpike-collector (the collector)
#   TURNPIKE_REDIS_ADMIN_PASSWORD      user turnpike-admin (operators: ACL, INFO, CONFIG)
#   TURNPIKE_REDIS_MAXMEMORY           maxmemory (default 256mb)
#
# The users' rules are the same as in deploy/istio/secrets.yaml (validate.sh checks
# that): the services reach only `tp:*` keys and no dangerous command (FLUSHALL,
# CONFIG, DEBUG, KEYS, SHUTDOWN, ...); the collector cannot write counters or run
# scripts. `default` is off: nobody can authenticate as it, so a connection without a
# user and password can run nothing. It keeps every permission all the same, because
# Redis replays the AOF as the `default` user and re-checks that user's permissions at
# every EXEC: restricted, it would silently drop every scripted write (all of the
# counter's) when Redis restarts (redis/redis#14541; valkey-io/valkey#3983).
set -euo pipefail

conf=/etc/turnpike/redis/redis.conf
acl=/tmp/turnpike-users.acl

require() { # name: the variable must hold at least 16 visible characters
  local value=${!1:-}
  if [ -z "$value" ]; then
    echo "redis-entrypoint: $1 is not set (docker-compose.yml gives it a demo default)" >&2
    exit 1
  fi
  if [ "${#value}" -lt 16 ] || [[ "$value" =~ [[:space:]] ]]; then
    echo "redis-entrypoint: $1 must be at least 16 characters without spaces" >&2
    exit 1
  fi
}
hash() { printf '%s' "${!1}" | sha256sum | cut -d' ' -f1; }

for name in TURNPIKE_REDIS_COUNTER_PASSWORD TURNPIKE_REDIS_COLLECTOR_PASSWORD TURNPIKE_REDIS_ADMIN_PASSWORD; do
  require "$name"
done
[ -r "$conf" ] || { echo "redis-entrypoint: $conf is missing (mount deploy/redis)" >&2; exit 1; }

umask 077
cat >"$acl" <<ACL
user default off resetpass resetkeys ~* resetchannels &* +@all
user turnpike-counter on #$(hash TURNPIKE_REDIS_COUNTER_PASSWORD) resetkeys ~tp:* resetchannels +@all -@dangerous
user turnpike-collector on #$(hash TURNPIKE_REDIS_COLLECTOR_PASSWORD) resetkeys ~tp:* resetchannels -@all +@read +@stream +@connection +time -xadd -xsetid -xdel -@dangerous
user turnpike-admin on #$(hash TURNPIKE_REDIS_ADMIN_PASSWORD) ~* &* +@all
ACL

exec env -u TURNPIKE_REDIS_COUNTER_PASSWORD -u TURNPIKE_REDIS_COLLECTOR_PASSWORD \
  -u TURNPIKE_REDIS_ADMIN_PASSWORD \
  redis-server "$conf" --aclfile "$acl" --maxmemory "${TURNPIKE_REDIS_MAXMEMORY:-256mb}"
