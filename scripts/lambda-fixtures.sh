#!/usr/bin/env bash
# Feeds every event fixture to the function running under the real Lambda
# runtime emulator (`cargo lambda watch`) with `cargo lambda invoke`, and
# checks each status against events/manifest.json.
#
# Needs TEST_DATABASE_ADMIN_URL (make test provides it) and cargo-lambda.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${TEST_DATABASE_ADMIN_URL:?run through scripts/with-postgres.sh test}"
command -v cargo-lambda >/dev/null || { echo "cargo-lambda is required: pip install cargo-lambda" >&2; exit 1; }

suffix="$$_$RANDOM"
db="tu_lambda_$suffix"
role="tu_lambda_app_$suffix"
password="pw-$suffix"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
db_url=$(python3 - "$TEST_DATABASE_ADMIN_URL" "$db" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
print(urllib.parse.urlunsplit(u._replace(path="/" + sys.argv[2])))
PY
)
app_url=$(python3 - "$db_url" "$role" "$password" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
host = u.hostname + (f":{u.port}" if u.port else "")
print(urllib.parse.urlunsplit(u._replace(netloc=f"{sys.argv[2]}:{sys.argv[3]}@{host}")))
PY
)
log=$(mktemp)
watch_pid=""
cleanup() {
  if [ -n "$watch_pid" ]; then kill "$watch_pid" 2>/dev/null || true; wait "$watch_pid" 2>/dev/null || true; fi
  psql "$TEST_DATABASE_ADMIN_URL" -Xqc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  psql "$TEST_DATABASE_ADMIN_URL" -Xqc "DROP ROLE IF EXISTS $role" >/dev/null 2>&1 || true
  rm -f "$log"
}
trap cleanup EXIT

psql "$TEST_DATABASE_ADMIN_URL" -Xqc "CREATE DATABASE $db" >/dev/null
cargo build --quiet --locked
DATABASE_ADMIN_URL="$db_url" APP_DB_USER="$role" APP_DB_PASSWORD="$password" DB_SSLMODE=disable \
  target/debug/tenant-users migrate >/dev/null
psql "$db_url" -Xq -f events/seed.sql >/dev/null

secret=$(python3 -c 'import json; print(json.load(open("events/env.json"))["TenantUsersFunction"]["JWT_HS256_SECRET"])')
DATABASE_URL="$app_url" JWT_HS256_SECRET="$secret" RUST_LOG=warn \
  cargo lambda watch --quiet --invoke-address 127.0.0.1 --invoke-port "$port" >"$log" 2>&1 &
watch_pid=$!
for _ in $(seq 1 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.2
done

passed=0
failed=0
while IFS=' ' read -r file expected; do
  out=$(cargo lambda invoke tenant-users --invoke-address 127.0.0.1 --invoke-port "$port" \
    --data-file "events/$file" --output-format json 2>&1) || true
  got=$(printf '%s' "$out" | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["statusCode"])
except Exception: print("no-response")')
  if [ "$got" = "$expected" ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL $file: expected $expected, got $got: $out" >&2
  fi
done < <(python3 -c 'import json
for f, s in json.load(open("events/manifest.json")).items(): print(f, s)')

if [ "$failed" -ne 0 ]; then
  echo "--- cargo lambda watch log ---" >&2
  cat "$log" >&2
fi
echo "lambda fixtures: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
