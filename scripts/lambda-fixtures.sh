#!/usr/bin/env bash
# Feeds every event fixture to its function running under the real Lambda
# runtime emulator (`cargo lambda watch`) with `cargo lambda invoke`: the API
# function (`api`) each of events/*.json, checking each status against
# events/manifest.json; the schema function (`migrate`) each of
# events/migrate/*.json, checking the error it answers against
# events/migrate/manifest.json; and the control plane (`control`) each of
# events/control/*.json against events/control/manifest.json.
#
# Needs TEST_DATABASE_ADMIN_URL and ALLOW_TEST_FIXTURES=1 (make test provides
# both) and cargo-lambda.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-lambda >/dev/null || { echo "cargo-lambda is required: pip install cargo-lambda" >&2; exit 1; }
. scripts/lib/testdb.sh

testdb_create
psql "$TESTDB_ADMIN_URL" -Xq -f events/seed.sql >/dev/null

port=$(free_port)
log=$(mktemp)
testdb_cleanups+=("rm -f $log")
# The function's token settings come from events/env.json: the fixture secret
# (accepted only under ALLOW_TEST_FIXTURES=1) and JWT_ALLOW_HS256, since
# cargo lambda watch runs it as a Lambda, where HS256 is otherwise refused.
if [ "${ALLOW_TEST_FIXTURES:-}" != 1 ]; then
  echo "the fixture secret needs ALLOW_TEST_FIXTURES=1 (make test sets it)" >&2
  exit 1
fi
token_env=()
while IFS= read -r pair; do token_env+=("$pair"); done < <(python3 -c 'import json
for k, v in json.load(open("events/env.json"))["TenantUsersFunction"].items():
    if k.startswith("JWT_"): print(f"{k}={v}")')
env "${token_env[@]}" DATABASE_URL="$TESTDB_APP_URL" RUST_LOG=warn \
  cargo lambda watch --quiet --invoke-address 127.0.0.1 --invoke-port "$port" >"$log" 2>&1 &
watch_pid=$!
testdb_cleanups+=("kill $watch_pid 2>/dev/null; wait $watch_pid 2>/dev/null")
wait_for_port "$port"

passed=0
failed=0
# invoke_each FUNCTION PORT DIR: every fixture of DIR/manifest.json through
# FUNCTION on the watch at PORT, each status checked; counts into passed
# and failed (and this call's failures into each_failed).
invoke_each() {
  local function=$1 port=$2 dir=$3 limit=900 file expected out got
  each_failed=0
  while IFS=' ' read -r file expected; do
    # A function that cannot start (e.g. it refused its configuration) makes
    # invoke wait forever: bound it (the first invoke also builds the
    # function), and stop at the first such case.
    out=$(timeout "$limit" cargo lambda invoke "$function" --invoke-address 127.0.0.1 --invoke-port "$port" \
      --data-file "$dir/$file" --output-format json 2>&1) || true
    limit=60
    got=$(printf '%s' "$out" | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["statusCode"])
except Exception: print("no-response")')
    if [ "$got" = "$expected" ]; then
      passed=$((passed + 1))
    else
      failed=$((failed + 1))
      each_failed=$((each_failed + 1))
      echo "FAIL $dir/$file: expected $expected, got $got: $out" >&2
      [ "$got" = no-response ] && break
    fi
  done < <(python3 -c 'import json, sys
for f, s in json.load(open(sys.argv[1] + "/manifest.json")).items(): print(f, s)' "$dir")
}
invoke_each api "$port" events

# The schema function: events it must refuse without acting (an untrusted
# ResponseURL, not a CloudFormation event). Each answers an invocation
# error whose message the manifest names; nothing is contacted.
limit=900
while IFS=$'\t' read -r file expected; do
  out=$(timeout "$limit" cargo lambda invoke migrate --invoke-address 127.0.0.1 --invoke-port "$port" \
    --data-file "events/migrate/$file" --output-format json 2>&1) || true
  limit=60
  if printf '%s' "$out" | grep -qF -- "$expected"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL migrate/$file: expected an error with \"$expected\", got: $out" >&2
  fi
done < <(python3 -c 'import json
for f, s in json.load(open("events/migrate/manifest.json")).items(): print(f + "\t" + s)')

if [ "$failed" -ne 0 ]; then
  echo "--- cargo lambda watch log ---" >&2
  cat "$log" >&2
fi

# The control plane (its own bootstrap, its own database role): every
# fixture of events/control/, through a watch of its own (the function's
# DATABASE_URL is the control role's), after the API's fixtures (one of
# them re-tiers a tenant none of the API's use).
kill "$watch_pid" 2>/dev/null; wait "$watch_pid" 2>/dev/null || true
cport=$(free_port)
clog=$(mktemp)
testdb_cleanups+=("rm -f $clog")
DATABASE_URL="$TESTDB_CONTROL_URL" RUST_LOG=warn \
  cargo lambda watch --quiet --invoke-address 127.0.0.1 --invoke-port "$cport" >"$clog" 2>&1 &
cwatch=$!
testdb_cleanups+=("kill $cwatch 2>/dev/null; wait $cwatch 2>/dev/null")
wait_for_port "$cport"
invoke_each control "$cport" events/control
if [ "$each_failed" -ne 0 ]; then
  echo "--- cargo lambda watch log (control) ---" >&2
  cat "$clog" >&2
fi
echo "lambda fixtures: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
