#!/usr/bin/env bash
# Runs a command with a PostgreSQL admin URL in the environment.
#
#   scripts/with-postgres.sh dev  CMD...   exports DATABASE_ADMIN_URL
#   scripts/with-postgres.sh test CMD...   exports TEST_DATABASE_ADMIN_URL
#
# An URL already set is used as is. For tests, a server on 127.0.0.1:5432
# that lets `postgres` in is used next. Otherwise a private throwaway cluster
# is started from the installed server binaries (own data dir and port) and
# removed when the command ends.
set -euo pipefail

mode=${1:?usage: with-postgres.sh dev|test CMD...}
shift
case "$mode" in
  dev) var=DATABASE_ADMIN_URL ;;
  test) var=TEST_DATABASE_ADMIN_URL ;;
  *) echo "usage: with-postgres.sh dev|test CMD..." >&2; exit 2 ;;
esac

if [ -n "${!var:-}" ]; then
  exec "$@"
fi

if [ "$mode" = test ] && command -v psql >/dev/null \
  && psql "postgres://postgres@127.0.0.1:5432/postgres" -XAtqc 'select 1' >/dev/null 2>&1; then
  export TEST_DATABASE_ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
  exec "$@"
fi

bindir=${PG_BINDIR:-}
if [ -z "$bindir" ]; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
fi
if [ -z "$bindir" ] && command -v initdb >/dev/null; then
  bindir=$(dirname "$(command -v initdb)")
fi
if [ -z "$bindir" ]; then
  # Off PATH elsewhere too: RHEL/Fedora's PGDG packages, Homebrew's keg-only
  # postgresql@N.
  bindir=$(ls -d /usr/pgsql-*/bin /opt/homebrew/opt/postgresql@*/bin /usr/local/opt/postgresql@*/bin \
    2>/dev/null | sort -V | tail -n 1 || true)
fi
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ] || [ ! -x "$bindir/pg_ctl" ]; then
  cat >&2 <<'MSG'
PostgreSQL server binaries (initdb, pg_ctl) were not found.
Install PostgreSQL 13 or newer, then run this again:
  Debian/Ubuntu:  sudo apt-get install postgresql
  Fedora:         sudo dnf install postgresql-server
  macOS:          brew install postgresql@16
Or point at an existing server: DATABASE_ADMIN_URL=postgres://admin@host:5432/db make dev
MSG
  exit 1
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/tenant-users-pg.XXXXXX")
as_owner=()
if [ "$(id -u)" = 0 ]; then
  # initdb refuses to run as root: the cluster belongs to `postgres`.
  if ! id postgres >/dev/null 2>&1; then
    echo "running as root, but there is no 'postgres' user to own the cluster" >&2
    exit 1
  fi
  chown postgres "$dir"
  as_owner=(runuser -u postgres --)
fi

cleanup() {
  "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=""
for _ in $(seq 1 50); do
  candidate=$((20000 + RANDOM % 30000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
    port=$candidate
    break
  fi
done
[ -n "$port" ] || { echo "no free port found for PostgreSQL" >&2; exit 1; }

"${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
  --no-instructions >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
"${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o \
  "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
  || { cat "$dir/server.log" >&2; exit 1; }
echo "with-postgres: throwaway PostgreSQL ($("$bindir/postgres" --version | sed "s/.*) //")) on 127.0.0.1:$port, data in $dir" >&2

export "$var=postgres://postgres@127.0.0.1:$port/postgres"
"$@"
