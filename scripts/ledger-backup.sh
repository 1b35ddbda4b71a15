#!/usr/bin/env bash
# Back up and restore the Turnpike ledger (docs/operate.md, "Backups and restore").
#
#   scripts/ledger-backup.sh backup  DATABASE_URL FILE   online: the collector keeps running
#   scripts/ledger-backup.sh check   FILE                a backup's integrity and row counts
#   scripts/ledger-backup.sh restore FILE DATABASE_URL   the collectors must be stopped
#
# DATABASE_URL is the collector's --database: sqlite:///path/ledger.db or
# postgres://user@host:port/db (a password in ~/.pgpass or PGPASSWORD, not in the URL).
#   SQLite:     backup with SQLite's online backup API (sqlite3 .backup: one consistent
#               snapshot while the collector writes), then PRAGMA integrity_check.
#               Restore puts the current file aside as FILE.before-restore-<time>.
#   PostgreSQL: pg_dump --format=custom; restore with pg_restore --clean --if-exists
#               in one transaction.
set -euo pipefail

die() { printf 'ledger-backup: %s\n' "$*" >&2; exit 1; }
say() { printf 'ledger-backup: %s\n' "$*" >&2; }
usage() {
  sed -n '4,6p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
need() { command -v "$1" >/dev/null || die "$1 not found: $2"; }

sqlite_path() { # sqlite://path or sqlite:///abs/path (the collector's forms), no ?options
  local url=${1%%\?*}
  case "$url" in
    sqlite://*) printf '%s\n' "${url#sqlite://}" ;;
    sqlite:*) printf '%s\n' "${url#sqlite:}" ;;
    *) return 1 ;;
  esac
}

# Processes that have FILE (or its -wal) open: pid and name, one per line.
holders() {
  local file=$1 fd target pid
  file=$(realpath -m "$file")
  for fd in /proc/[0-9]*/fd/*; do
    target=$(readlink "$fd" 2>/dev/null) || continue
    if [ "$target" = "$file" ] || [ "$target" = "$file-wal" ]; then
      pid=${fd#/proc/}; pid=${pid%%/*}
      echo "$pid $(cat "/proc/$pid/comm" 2>/dev/null)"
    fi
  done | sort -u
}

sqlite_counts() { # file
  sqlite3 -readonly "$1" "SELECT 'usage_events ' || count(*) FROM usage_events;
    SELECT 'billable rows ' || count(*) FROM usage_events WHERE billable;
    SELECT 'latest event ' || COALESCE(strftime('%Y-%m-%dT%H:%M:%SZ', max(time_ms) / 1000, 'unixepoch'), '-') FROM usage_events;"
}

sqlite_check() { # file
  local result
  result=$(sqlite3 -readonly "$1" 'PRAGMA integrity_check;' 2>&1) \
    || die "$1 is not a readable SQLite database: $result"
  [ "$result" = ok ] || die "$1 failed PRAGMA integrity_check: $result"
  sqlite3 -readonly "$1" 'SELECT 1 FROM usage_events LIMIT 1;' >/dev/null 2>&1 \
    || die "$1 has no usage_events table: not a Turnpike ledger"
}

command=${1:-}
case "$command" in
  backup)
    [ $# = 3 ] || usage
    url=$2 out=$3
    [ -e "$out" ] && die "$out exists: choose a new file name (backups are never overwritten)"
    mkdir -p "$(dirname "$out")" || die "cannot create the directory of $out"
    if db=$(sqlite_path "$url"); then
      need sqlite3 "install it (Debian: apt-get install sqlite3)"
      [ -f "$db" ] || die "$db: no such ledger file (the --database of the collector)"
      tmp="$out.partial"
      rm -f "$tmp"
      # .backup copies pages under a read transaction: a consistent snapshot, while the
      # collector keeps writing (WAL mode). busy_timeout rides out its checkpoints.
      sqlite3 "$db" ".timeout 30000" ".backup '$tmp'" \
        || { rm -f "$tmp"; die "sqlite3 .backup of $db failed (above)"; }
      sqlite_check "$tmp"
      mv "$tmp" "$out"
      say "backed up $db to $out"
      sqlite_counts "$out" | sed 's/^/  /' >&2
    else
      case "$url" in postgres://* | postgresql://*) ;; *)
        die "$url: expected sqlite:///path/ledger.db or postgres://user@host/db" ;;
      esac
      need pg_dump "install the PostgreSQL client (Debian: apt-get install postgresql-client)"
      need pg_restore "install the PostgreSQL client (Debian: apt-get install postgresql-client)"
      tmp="$out.partial"
      rm -f "$tmp"
      # One transaction-consistent snapshot (REPEATABLE READ), while collectors write.
      pg_dump --format=custom --no-owner --file "$tmp" "$url" \
        || { rm -f "$tmp"; die "pg_dump failed (above)"; }
      pg_restore --list "$tmp" | grep -q 'TABLE DATA public usage_events' \
        || { rm -f "$tmp"; die "the dump of $url holds no usage_events: not a Turnpike ledger?"; }
      mv "$tmp" "$out"
      say "backed up $url to $out (pg_dump custom format)"
    fi ;;
  check)
    [ $# = 2 ] || usage
    file=$2
    [ -f "$file" ] || die "$file: no such file"
    if head -c 16 "$file" | grep -q 'SQLite format 3'; then
      need sqlite3 "install it (Debian: apt-get install sqlite3)"
      sqlite_check "$file"
      say "$file: SQLite ledger, integrity ok"
      sqlite_counts "$file" | sed 's/^/  /' >&2
    else
      need pg_restore "install the PostgreSQL client (Debian: apt-get install postgresql-client)"
      pg_restore --list "$file" | grep -q 'TABLE DATA public usage_events' \
        || die "$file is neither a SQLite ledger nor a pg_dump of one"
      say "$file: pg_dump of a Turnpike ledger ($(pg_restore --list "$file" | grep -c 'TABLE DATA') tables with data)"
    fi ;;
  restore)
    [ $# = 3 ] || usage
    file=$2 url=$3
    [ -f "$file" ] || die "$file: no such backup"
    if db=$(sqlite_path "$url"); then
      need sqlite3 "install it (Debian: apt-get install sqlite3)"
      sqlite_check "$file"
      open=$(holders "$db")
      [ -z "$open" ] || die "$db is open by: $(tr '\n' ' ' <<<"$open")- stop the collector first (nothing was changed)"
      mkdir -p "$(dirname "$db")"
      tmp="$db.restoring"
      cp "$file" "$tmp"
      if [ -e "$db" ]; then
        aside="$db.before-restore-$(date -u +%Y%m%dT%H%M%SZ)"
        for suffix in "" -wal -shm; do
          [ -e "$db$suffix" ] && mv "$db$suffix" "$aside$suffix"
        done
        say "the ledger that was there is kept as $aside"
      fi
      mv "$tmp" "$db"
      say "restored $file to $db; start the collector"
      sqlite_counts "$db" | sed 's/^/  /' >&2
    else
      case "$url" in postgres://* | postgresql://*) ;; *)
        die "$url: expected sqlite:///path/ledger.db or postgres://user@host/db" ;;
      esac
      need psql "install the PostgreSQL client (Debian: apt-get install postgresql-client)"
      need pg_restore "install the PostgreSQL client (Debian: apt-get install postgresql-client)"
      others=$(psql -At "$url" -c "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()") \
        || die "cannot connect to $url (above)"
      [ "$others" = 0 ] || die "$others other connection(s) to the database: stop every collector first (nothing was changed)"
      pg_restore --clean --if-exists --no-owner --single-transaction --dbname "$url" "$file" \
        || die "pg_restore failed (above); the single transaction was rolled back"
      say "restored $file to $url; start the collectors"
    fi ;;
  *) usage ;;
esac
