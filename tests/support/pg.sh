#!/usr/bin/env bash
# tests/support/pg.sh - a throwaway PostgreSQL for the tests: never a system service.
#
#   pg.sh start [OWNER_PID]   initdb into a new /tmp/apiengine-pg.XXXXXX, start it listening
#                             only on a Unix socket in that directory, print the directory on
#                             stdout (connect with "host=DIR user=postgres dbname=postgres").
#                             With OWNER_PID, a watchdog stops the server and removes the
#                             directory once that process is gone, however it ended (a crash,
#                             kill -9): the owner's own `stop` is the fast path, this the backstop.
#   pg.sh stop DIR            stop the server (immediate) and remove DIR; a no-op when DIR is gone
#   pg.sh pause DIR           stop the server, keep its data (an outage, for the tests)
#   pg.sh resume DIR          start it again on the same data and socket
#   pg.sh run CMD [ARGS...]   start, run CMD with PGHOST/PGUSER/PGDATABASE set, stop (even when
#                             CMD fails); exits with CMD's status
#
# The server runs as an unprivileged user: as root (CI), the `postgres` system user that Debian's
# postgresql package creates, through runuser; otherwise the calling user. Settings for speed
# that no real database should use: fsync, synchronous_commit and full_page_writes off.
# The binaries: $APIENGINE_PG_BIN, else Debian 12's /usr/lib/postgresql/15/bin.
set -euo pipefail

PGBIN=${APIENGINE_PG_BIN:-/usr/lib/postgresql/15/bin}
MARK=.apiengine-throwaway-pg # only a directory holding this file is ever removed
WATCHDOG_MAX_S=1800          # the watchdog gives up (and cleans up) after this long anyway

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

die() {
  echo "pg.sh: $*" >&2
  exit 1
}

check_dir() {
  case "$1" in
    /tmp/apiengine-pg.*) ;;
    *) die "not a throwaway PostgreSQL directory: $1" ;;
  esac
}

pg_start() { # DIR: start on existing data, wait until it accepts connections
  as_pg "$PGBIN/pg_ctl" -D "$1/data" -l "$1/server.log" -w -t 30 start >/dev/null ||
    { tail -20 "$1/server.log" >&2 || true; return 1; }
}

stop() {
  local dir=$1
  check_dir "$dir"
  [ -d "$dir" ] || return 0
  [ -f "$dir/$MARK" ] || die "$dir has no $MARK: not removing it"
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

start() {
  local owner=${1:-}
  [ -x "$PGBIN/initdb" ] || die "no PostgreSQL in $PGBIN: apt-get install postgresql (./dev setup)"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs the postgres system user (Debian's postgresql package)"
  fi
  local dir
  dir=$(mktemp -d /tmp/apiengine-pg.XXXXXX)
  touch "$dir/$MARK"
  chmod 700 "$dir"
  [ "$(id -u)" -ne 0 ] || chown postgres: "$dir"
  if ! as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale -N --no-instructions \
    >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    stop "$dir"
    die "initdb failed"
  fi
  cat >>"$dir/data/postgresql.conf" <<EOF
# apiengine throwaway test server
listen_addresses = ''
unix_socket_directories = '$dir'
unix_socket_permissions = 0700
max_connections = 60
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  if ! pg_start "$dir"; then
    stop "$dir"
    die "the server did not start"
  fi
  if [ -n "$owner" ]; then
    # Detached, with no inherited descriptor: whoever reads our stdout sees EOF at once.
    setsid bash -c 'owner=$1 dir=$2 self=$3 max=$4; n=0
      while kill -0 "$owner" 2>/dev/null && [ "$n" -lt $((max * 5)) ]; do sleep 0.2; n=$((n + 1)); done
      "$self" stop "$dir"' watchdog "$owner" "$dir" "$(readlink -f "$0")" "$WATCHDOG_MAX_S" \
      </dev/null >/dev/null 2>&1 &
  fi
  echo "$dir"
}

cmd=${1:-}
shift || true
case "$cmd" in
  start) start "$@" ;;
  stop) stop "${1:?pg.sh stop DIR}" ;;
  pause)
    check_dir "${1:?pg.sh pause DIR}"
    as_pg "$PGBIN/pg_ctl" -D "$1/data" -m immediate -w -t 30 stop >/dev/null ;;
  resume)
    check_dir "${1:?pg.sh resume DIR}"
    pg_start "$1" ;;
  run)
    [ $# -gt 0 ] || die "pg.sh run CMD [ARGS...]"
    dir=$(start)
    trap 'stop "$dir"' EXIT
    status=0
    PGHOST=$dir PGUSER=postgres PGDATABASE=postgres "$@" || status=$?
    exit "$status" ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
