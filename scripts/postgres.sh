#!/usr/bin/env bash
# A private PostgreSQL server for the tests, on 127.0.0.1 only. Idempotent: installs Debian's
# `postgresql` package if no server binaries are found, initialises a data directory under
# /tmp/skillforge-pg (override with SKILLFORGE_PG_DIR) on first use, starts the server if it is not
# running, and makes sure the role `skillforge` (password `skillforge`, may create databases) and the
# database `skillforge_test` exist. Tests create and drop their own databases from there.
#
#   source scripts/postgres.sh      # exports SKILLFORGE_TEST_PG_URL (what scripts/test.sh does)
#   bash scripts/postgres.sh        # prints the export lines instead
#
# The URL is also written to $SKILLFORGE_PG_DIR/env. The server is for tests only: fsync is off, and
# the unix socket (trust auth, superuser `postgres`) lives in the private directory with mode 0700;
# TCP connections on 127.0.0.1 need the password. Stop it with:
#   pg_ctl -D /tmp/skillforge-pg/data stop    (as the user that owns the directory; postgres for root)

_sf_pg_main() {
  local dir="${SKILLFORGE_PG_DIR:-/tmp/skillforge-pg}"
  local bindir="" port="" owner="" url=""
  local -a as_owner=()

  _sf_pg_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
      if [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
        echo "$d"
        return 0
      fi
    done
    return 1
  }

  _sf_pg_port_free() {  # nothing accepts connections on 127.0.0.1:$1
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  }

  bindir=$(_sf_pg_bindir) || bindir=""
  if [ -z "$bindir" ]; then
    echo "postgres.sh: no PostgreSQL server found; installing Debian's postgresql package ..." >&2
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
      command -v sudo >/dev/null 2>&1 || { echo "postgres.sh: need root (or sudo) to apt-get install postgresql" >&2; return 1; }
      sudo="sudo"
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
      && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2 \
      || { echo "postgres.sh: apt-get install postgresql failed" >&2; return 1; }
    bindir=$(_sf_pg_bindir) || { echo "postgres.sh: postgresql installed but no server binaries under /usr/lib/postgresql" >&2; return 1; }
  fi

  # initdb and postgres refuse to run as root: as root, the private directory belongs to `postgres`.
  if [ "$(id -u)" = 0 ]; then
    owner=postgres
    id postgres >/dev/null 2>&1 || { echo "postgres.sh: running as root but there is no 'postgres' user" >&2; return 1; }
    if command -v runuser >/dev/null 2>&1; then as_owner=(runuser -u postgres --); else as_owner=(su postgres -s /bin/sh -c '"$0" "$@"'); fi
  else
    owner=$(id -un)
  fi
  mkdir -p "$dir" || return 1
  [ "$(id -u)" = 0 ] && chown "$owner" "$dir"
  chmod 700 "$dir"

  if [ ! -s "$dir/data/PG_VERSION" ]; then
    rm -rf "$dir/data"
    "${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -U postgres -E UTF8 --no-locale \
      --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 \
      || { echo "postgres.sh: initdb failed, see $dir/initdb.log" >&2; return 1; }
  fi

  if ! "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    # Keep the port of an earlier run if nothing listens there; else the first free one from 54329.
    port=$(cat "$dir/port" 2>/dev/null || true)
    if [ -z "$port" ] || ! _sf_pg_port_free "$port"; then
      port=54329
      while ! _sf_pg_port_free "$port"; do
        port=$((port + 1))
        [ "$port" -lt 54529 ] || { echo "postgres.sh: no free port in 54329-54528 on 127.0.0.1" >&2; return 1; }
      done
    fi
    echo "$port" >"$dir/port"
    mkdir -p "$dir/sock" && { [ "$(id -u)" != 0 ] || chown "$owner" "$dir/sock"; } && chmod 700 "$dir/sock"
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/sock -c unix_socket_permissions=0700 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >/dev/null 2>&1 \
      || { echo "postgres.sh: the server did not start, see $dir/server.log" >&2; tail -n 20 "$dir/server.log" >&2; return 1; }
  fi
  port=$(cat "$dir/port")

  local -a psql=("${as_owner[@]}" "$bindir/psql" -h "$dir/sock" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
  if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'skillforge'")" != 1 ]; then
    "${psql[@]}" -c "CREATE ROLE skillforge LOGIN CREATEDB PASSWORD 'skillforge'" >/dev/null \
      || { echo "postgres.sh: cannot create the role skillforge" >&2; return 1; }
  fi
  if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'skillforge_test'")" != 1 ]; then
    "${psql[@]}" -c "CREATE DATABASE skillforge_test OWNER skillforge" >/dev/null \
      || { echo "postgres.sh: cannot create the database skillforge_test" >&2; return 1; }
  fi

  url="postgresql+psycopg://skillforge:skillforge@127.0.0.1:$port/skillforge_test"
  printf 'export SKILLFORGE_TEST_PG_URL=%s\nexport SKILLFORGE_TEST_POSTGRES_URL=%s\n' "$url" "$url" >"$dir/env"
  export SKILLFORGE_TEST_PG_URL="$url"
  export SKILLFORGE_TEST_POSTGRES_URL="$url"  # the name tests/test_registry.py reads
  echo "postgres.sh: PostgreSQL ($(basename "$(dirname "$bindir")")) on 127.0.0.1:$port, SKILLFORGE_TEST_PG_URL=$url" >&2
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  _sf_pg_main
  _sf_pg_rc=$?
  unset -f _sf_pg_main _sf_pg_bindir _sf_pg_port_free
  if [ "$_sf_pg_rc" -ne 0 ]; then
    unset _sf_pg_rc
    return 1
  fi
  unset _sf_pg_rc
else
  set -uo pipefail
  _sf_pg_main || exit 1
  cat "${SKILLFORGE_PG_DIR:-/tmp/skillforge-pg}/env"
fi
