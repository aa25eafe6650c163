# Shell helpers for the scripts that run the built binary against a fresh
# database: source it, call `testdb_create`, and the EXIT trap cleans up.
# Needs TEST_DATABASE_ADMIN_URL (scripts/with-postgres.sh test sets it).

: "${TEST_DATABASE_ADMIN_URL:?run through scripts/with-postgres.sh test}"

testdb_suffix="$$_$RANDOM"
TESTDB_NAME="tu_script_$testdb_suffix"
TESTDB_ROLE="tu_script_app_$testdb_suffix"
TESTDB_PASSWORD="pw-$testdb_suffix"
TESTDB_CONTROL_ROLE="tu_script_ctl_$testdb_suffix"
testdb_cleanups=()

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# url_with URL [DBNAME] [USER:PASSWORD]: the URL with its database and/or
# credentials replaced.
url_with() {
  python3 - "$@" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
if len(sys.argv) > 2 and sys.argv[2]:
    u = u._replace(path="/" + sys.argv[2])
if len(sys.argv) > 3:
    host = u.hostname + (f":{u.port}" if u.port else "")
    u = u._replace(netloc=f"{sys.argv[3]}@{host}")
print(urllib.parse.urlunsplit(u))
PY
}

testdb_cleanup() {
  local i
  for ((i = ${#testdb_cleanups[@]} - 1; i >= 0; i--)); do eval "${testdb_cleanups[$i]}" || true; done
  psql "$TEST_DATABASE_ADMIN_URL" -Xqc "DROP DATABASE IF EXISTS $TESTDB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
  psql "$TEST_DATABASE_ADMIN_URL" -Xqc "DROP ROLE IF EXISTS $TESTDB_ROLE" >/dev/null 2>&1 || true
  psql "$TEST_DATABASE_ADMIN_URL" -Xqc "DROP ROLE IF EXISTS $TESTDB_CONTROL_ROLE" >/dev/null 2>&1 || true
}
trap testdb_cleanup EXIT

# Creates and migrates the database, with the application role and the
# control plane's; sets TESTDB_ADMIN_URL, TESTDB_APP_URL and
# TESTDB_CONTROL_URL.
testdb_create() {
  TESTDB_ADMIN_URL=$(url_with "$TEST_DATABASE_ADMIN_URL" "$TESTDB_NAME")
  TESTDB_APP_URL=$(url_with "$TESTDB_ADMIN_URL" "" "$TESTDB_ROLE:$TESTDB_PASSWORD")
  TESTDB_CONTROL_URL=$(url_with "$TESTDB_ADMIN_URL" "" "$TESTDB_CONTROL_ROLE:$TESTDB_PASSWORD")
  psql "$TEST_DATABASE_ADMIN_URL" -Xqc "CREATE DATABASE $TESTDB_NAME" >/dev/null
  cargo build --quiet --locked --bins
  DATABASE_ADMIN_URL="$TESTDB_ADMIN_URL" APP_DB_USER="$TESTDB_ROLE" APP_DB_PASSWORD="$TESTDB_PASSWORD" \
    CONTROL_DB_USER="$TESTDB_CONTROL_ROLE" CONTROL_DB_PASSWORD="$TESTDB_PASSWORD" \
    DB_SSLMODE=disable target/debug/migrate migrate >/dev/null
}

# wait_for_port PORT: until something listens there (60 s at most).
wait_for_port() {
  local _
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.2
  done
  echo "nothing listened on port $1" >&2
  return 1
}
