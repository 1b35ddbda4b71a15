# Sourced by the bench scripts: their messages, free ports, readiness waits, CPU time
# from /proc, the usage streams by bucket, and the processes a script starts (add each
# pid to `pids`), killed when it exits. Set before sourcing: BENCH_NAME (the messages'
# prefix), run (the directory of its logs), and BENCH_KILL_SIGNAL if not KILL.

say() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  die "not ready: $1 (logs in $run)"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# One command per usage stream (tp:{NNN}:log), NNN standing for the stream's bucket.
streams() { local i b; for i in $(seq 0 255); do printf -v b %03d "$i"; echo "${1//NNN/$b}"; done; }

pids=()
cleanup() {
  # CONT after the signal: a process a script stopped (run.sh's PAUSE_COLLECTOR) acts
  # on TERM only once it runs again, and `wait` would hang on it.
  for pid in "${pids[@]}"; do
    kill -"${BENCH_KILL_SIGNAL:-KILL}" "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
