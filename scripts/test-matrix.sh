#!/usr/bin/env bash
# The host-facing end-to-end tests (every test binary in tests/tests/ that runs Envoy)
# against each supported Envoy, one version after the other (the machine is small, and
# one Envoy's results must not depend on another's load), then a table: version, tests
# passed, failed, time, and the names of the tests that failed.
#
#   scripts/test-matrix.sh               every version pinned in scripts/ensure-tools.sh
#   scripts/test-matrix.sh 1.36 1.40     these minors (or pinned full versions)
#   scripts/test-matrix.sh --oldest      the oldest supported minor only (what CI adds)
#   scripts/test-matrix.sh --no-build    the caller has built already (`make build`)
#
# Installs the Envoy versions it needs (scripts/ensure-tools.sh) and builds, unless told
# not to. Logs per version in .run/matrix/<version>.log. Exit 1 if any test failed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Test binaries (tests/tests/<name>.rs) that exercise Envoy. Every file there must be
# in one list or the other, so a new test file is never silently left out of the matrix.
HOST_FACING=(host quota auth soft_refund events events_faults failure istio concurrency reload idempotency trust_paths lossless leased settle grafana)
# cluster: Redis Cluster failovers; it runs Envoy, but what it checks is the counter
# and Redis, which do not change with the Envoy version (`make test` runs it once).
# demo, guides, operate: the scripts users run (demo, guide, backup) and the alert
# rules; they run the default Envoy once in `make test`.
NOT_HOST_FACING=(cluster demo guides operate)
# The same reason for the Redis Cluster variant of tests that run on both topologies
# (tests/src/topology.rs): the matrix runs their single-Redis variant only.
SKIP=(--skip ::redis_cluster)

# The fault tests' outages are about what the host does, not how long: keep them short.
export TURNPIKE_FAULT_SECS=${TURNPIKE_FAULT_SECS:-5}

say() { printf '[test-matrix] %s\n' "$*" >&2; }
die() { printf '[test-matrix] ERROR: %s\n' "$*" >&2; exit 1; }

build=1
oldest=0
selectors=()
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --oldest) oldest=1 ;;
    -*) die "unknown option $arg (see the top of $0)" ;;
    *) selectors+=("$arg") ;;
  esac
done

for file in tests/tests/*.rs; do
  name=$(basename "$file" .rs)
  [[ " ${HOST_FACING[*]} ${NOT_HOST_FACING[*]} " == *" $name "* ]] \
    || die "tests/tests/$name.rs is in neither HOST_FACING nor NOT_HOST_FACING in $0: add it to one"
done
for name in "${HOST_FACING[@]}"; do
  [ -f "tests/tests/$name.rs" ] || die "HOST_FACING names $name, but there is no tests/tests/$name.rs"
done

# The pinned versions, oldest first, from the one table (scripts/ensure-tools.sh).
mapfile -t pins < <(scripts/ensure-tools.sh --envoy-versions)
[ ${#pins[@]} -gt 0 ] || die "scripts/ensure-tools.sh --envoy-versions printed no versions"
pinned() {
  local pin
  for pin in "${pins[@]}"; do
    if [ "$1" = "${pin%.*}" ] || [ "$1" = "$pin" ]; then echo "$pin"; return 0; fi
  done
  return 1
}
versions=()
if [ "$oldest" = 1 ]; then
  versions=("${pins[0]}")
elif [ ${#selectors[@]} -gt 0 ]; then
  for s in "${selectors[@]}"; do
    v=$(pinned "$s") || die "$s is not a supported Envoy; supported: ${pins[*]}"
    versions+=("$v")
  done
else
  versions=("${pins[@]}")
fi

if [ "${#versions[@]}" = "${#pins[@]}" ]; then
  ENVOY_MATRIX=1 scripts/ensure-tools.sh
else
  for v in "${versions[@]}"; do ENVOY_VERSION=$v scripts/ensure-tools.sh; done
fi
if [ "$build" = 1 ]; then
  say "building the filter, the services and the tests"
  make --no-print-directory build
fi
# Build the test binaries now, so that the per-version times below are test time.
test_args=()
for name in "${HOST_FACING[@]}"; do test_args+=(--test "$name"); done
cargo test -q -p turnpike-tests "${test_args[@]}" --no-run

logs="$root/.run/matrix"
mkdir -p "$logs"
rows=()
failures=()
any_failed=0
for v in "${versions[@]}"; do
  log="$logs/$v.log"
  say "Envoy $v: ${HOST_FACING[*]} (log: ${log#"$root"/})"
  start=$(date +%s)
  rc=0
  ENVOY_VERSION=$v cargo test -p turnpike-tests "${test_args[@]}" --no-fail-fast \
    -- "${SKIP[@]}" >"$log" 2>&1 || rc=$?
  secs=$(( $(date +%s) - start ))
  passed=$(grep -cE '^test .* \.\.\. ok$' "$log" || true)
  # `<binary>::<test>`: cargo names each binary ("Running tests/<binary>.rs") before
  # its results.
  failed_names=$(awk '
    /^ +Running tests\/[a-z_0-9]+\.rs / { bin = $2; sub(/^tests\//, "", bin); sub(/\.rs$/, "", bin) }
    /^test .* \.\.\. FAILED$/ { print bin "::" $2 }' "$log")
  failed=$(printf '%s' "$failed_names" | grep -c . || true)
  # Every test binary names the Envoy it ran (tests/src/paths.rs): all must be $v.
  ran=$(grep -oE 'turnpike-tests: Envoy [^ ]+' "$log" | awk '{print $3}' | sort -u | xargs || true)
  status=ok
  if [ "$rc" != 0 ]; then
    status=FAILED
    any_failed=1
    # A failure that is no test's (a build error, a harness panic before any test).
    if [ "$failed" = 0 ]; then failed_names="(no test failed: see $log)"; fi
  fi
  if [ -n "$ran" ] && [ "$ran" != "$v" ]; then
    status="FAILED (ran Envoy $ran)"
    any_failed=1
  fi
  rows+=("$(printf '%-8s  %6s  %6s  %6ss  %s' "$v" "$passed" "$failed" "$secs" "$status")")
  if [ -n "$failed_names" ]; then
    while IFS= read -r name; do failures+=("$v  $name"); done <<<"$failed_names"
  fi
  say "Envoy $v: $passed passed, $failed failed, ${secs}s: $status"
done

echo
echo "Envoy version matrix: ${#HOST_FACING[@]} test binaries (${HOST_FACING[*]})"
printf '%-8s  %6s  %6s  %7s  %s\n' envoy passed failed time result
for row in "${rows[@]}"; do echo "$row"; done
if [ ${#failures[@]} -gt 0 ]; then
  echo
  echo "failed:"
  for f in "${failures[@]}"; do echo "  $f"; done
  # What each failed test printed (its panic, its stderr), so a CI log that keeps only
  # this output still says why; the whole run is in the per-version log.
  for v in "${versions[@]}"; do
    log="$logs/$v.log"
    grep -q '^failures:$' "$log" || continue
    echo
    echo "== Envoy $v: what the failed tests printed (from ${log#"$root"/}, at most 400 lines)"
    awk '/^failures:$/ { on = 1 } on { print } /^test result:/ { on = 0 }' "$log" | head -n 400
  done
fi
exit "$any_failed"
