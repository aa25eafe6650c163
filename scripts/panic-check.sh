#!/usr/bin/env bash
# Proves, on the built Lambda bootstrap, that a panic costs one failed
# invocation and not the execution environment: the release profile keeps
# panic = "unwind" (cargo lambda would otherwise pass panic=abort, see
# Cargo.toml), lambda_runtime turns the panic into that invocation's error,
# and the next invocation is served warm by the same process, on the same
# database connection.
#
# Builds the bootstrap the way `make lambda` and `sam build` do (`cargo
# lambda build --release`, so cargo-lambda's release settings apply), for
# this machine's architecture, with the `test-panic` feature, which adds
# `GET /__panic`. Runs it under the runtime interface emulator the SAM CLI
# ships and invokes: GET /users (200), GET /__panic (a function error: API
# Gateway answers 500), GET /users (200, same process, no second init, same
# database backend).
#
#   scripts/panic-check.sh [CARGO-LAMBDA-BUILD-ARGS...]
#     extra arguments go to `cargo lambda build`; e.g. to see the check fail
#     on a bootstrap that aborts:
#       scripts/panic-check.sh --config 'profile.release.panic="abort"'
#   PANIC_CHECK_BOOTSTRAP=path scripts/panic-check.sh
#     checks that binary (built with the test-panic feature) instead
#
# Needs TEST_DATABASE_ADMIN_URL and ALLOW_TEST_FIXTURES=1 (make test provides
# both), cargo-lambda and the SAM CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-lambda >/dev/null || { echo "cargo-lambda is required: make .venv" >&2; exit 1; }
if [ "${ALLOW_TEST_FIXTURES:-}" != 1 ]; then
  echo "the fixture secret needs ALLOW_TEST_FIXTURES=1 (make test sets it)" >&2
  exit 1
fi
. scripts/lib/testdb.sh

case "$(uname -m)" in
  x86_64 | amd64) arch_flag=--x86-64 rie_arch=x86_64 ;;
  aarch64 | arm64) arch_flag=--arm64 rie_arch=arm64 ;;
  *) echo "panic-check: no runtime interface emulator for $(uname -m)" >&2; exit 1 ;;
esac
rie="$(python3 -c 'import samcli, os; print(os.path.dirname(samcli.__file__))')/local/rapid/aws-lambda-rie-$rie_arch"
[ -x "$rie" ] || { echo "the SAM CLI's runtime interface emulator is not at $rie (make .venv)" >&2; exit 1; }

started=$(date +%s)
if [ -n "${PANIC_CHECK_BOOTSTRAP:-}" ]; then
  bootstrap=$(realpath "$PANIC_CHECK_BOOTSTRAP")
else
  # Its own lambda dir: never mistaken for (or overwriting) the bootstrap of
  # `make lambda` in target/lambda/. vendored-openssl: the OpenSSL the arm64
  # bootstrap links (zig, cargo lambda's linker, does not find Debian's
  # multiarch OpenSSL headers anyway).
  cargo lambda build --release "$arch_flag" --locked -p tenant-users --features test-panic,vendored-openssl \
    --bin api --lambda-dir target/lambda-test-panic "$@"
  bootstrap=$(realpath target/lambda-test-panic/api/bootstrap)
fi
built=$(date +%s)

testdb_create
psql "$TESTDB_ADMIN_URL" -Xq -f events/seed.sql >/dev/null

work=$(mktemp -d)
testdb_cleanups+=("rm -rf $work")
log="$work/rie.log"
# GET /users as a seeded tenant's user (events/list-users.json), and the
# same request to /__panic.
cp events/list-users.json "$work/users.json"
python3 - "$work/users.json" "$work/panic.json" <<'PY'
import json, sys
event = json.load(open(sys.argv[1]))
event["rawPath"] = event["requestContext"]["http"]["path"] = "/__panic"
event["rawQueryString"] = ""
event["requestContext"]["requestId"] = "panic-check"
json.dump(event, open(sys.argv[2], "w"))
PY

# The function's environment: the fixture token settings of events/env.json
# (as scripts/lambda-fixtures.sh) and the test database.
fn_env=()
while IFS= read -r pair; do fn_env+=("$pair"); done < <(python3 -c 'import json
for k, v in json.load(open("events/env.json"))["TenantUsersFunction"].items():
    if k.startswith("JWT_"): print(f"{k}={v}")')
port=$(free_port)
api_port=$(free_port)
env -i PATH="$PATH" HOME="${HOME:-/tmp}" "${fn_env[@]}" \
  DATABASE_URL="$TESTDB_APP_URL" ALLOW_TEST_FIXTURES=1 RUST_LOG=info \
  AWS_REGION=us-east-1 AWS_LAMBDA_FUNCTION_NAME=panic-check AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128 \
  "$rie" --runtime-interface-emulator-address "127.0.0.1:$port" \
  --runtime-api-address "127.0.0.1:$api_port" "$bootstrap" >"$log" 2>&1 &
rie_pid=$!
testdb_cleanups+=("kill $rie_pid 2>/dev/null; wait $rie_pid 2>/dev/null")
wait_for_port "$port"
url="http://127.0.0.1:$port/2015-03-31/functions/function/invocations"

# invoke EVENT: prints the API Gateway status code the response maps to
# (a function error, which API Gateway answers with 500, prints
# "function-error <errorType>").
invoke() {
  python3 - "$url" "$1" <<'PY'
import json, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], data=open(sys.argv[2], "rb").read(), method="POST")
try:
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read() or b"null")
except urllib.error.HTTPError as error:
    # The emulator's own failure (e.g. 502 when the runtime process died).
    print(f"emulator-error {error.code}: {error.read().decode(errors='replace')[:300]}")
    sys.exit()
except Exception as error:
    print(f"no-response ({error})")
    sys.exit()
if isinstance(body, dict) and "statusCode" in body:
    print(body["statusCode"])
elif isinstance(body, dict) and "errorType" in body:
    print(f"function-error {body['errorType']}: {body.get('errorMessage', '')}")
else:
    print(f"unexpected: {json.dumps(body)[:300]}")
PY
}

# The function's process: the emulator's child running the bootstrap.
function_pid() {
  local pid
  for pid in $(cat /proc/"$rie_pid"/task/*/children 2>/dev/null); do
    if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$bootstrap" ]; then
      echo "$pid"
      return
    fi
  done
  echo none
}
# The database backend(s) serving the application role.
backends() {
  psql "$TESTDB_ADMIN_URL" -XAtqc \
    "SELECT coalesce(string_agg(pid::text, ',' ORDER BY pid), 'none') FROM pg_stat_activity WHERE usename = '$TESTDB_ROLE'"
}
inits() {
  grep -c 'INIT START' "$log" || true
}

failures=()
passed=0
fail() {
  echo "  FAIL $1"
  failures+=("$1")
}
expect() { # WHAT EXPECTED GOT
  if [ "$2" = "$3" ]; then
    echo "  ok   $1: $3"
    passed=$((passed + 1))
  else
    fail "$1: expected $2, got $3"
  fi
}

echo "panic-check: $bootstrap"
first=$(invoke "$work/users.json")
pid1=$(function_pid)
backend1=$(backends)
expect "GET /users (cold start)" 200 "$first"
# Neither comparison below may pass for want of anything to compare.
[ "$pid1" != none ] || fail "no function process after the first invocation"
[ "$backend1" != none ] || fail "no database backend after the first invocation"

panicked=$(invoke "$work/panic.json")
case "$panicked" in
  "function-error "*) expect "GET /__panic" "$panicked" "$panicked" ;;
  *) expect "GET /__panic" "function-error" "$panicked" ;;
esac

second=$(invoke "$work/users.json")
pid2=$(function_pid)
expect "GET /users after the panic" 200 "$second"
expect "function process (warm, not restarted)" "$pid1" "$pid2"
expect "INIT phases in the emulator's log" 1 "$(inits)"
expect "database backend (connection kept)" "$backend1" "$(backends)"
logged=no
grep -q 'panicked' "$log" && logged=yes
expect "the panic is in the function's log" yes "$logged"
# The static check `make lambda` runs on the arm64 bootstrap must agree with
# what this binary just did.
static=0
scripts/check-bootstrap.sh --test-build "$bootstrap" >/dev/null 2>&1 || static=$?
expect "scripts/check-bootstrap.sh on this binary (exit status)" 0 "$static"

echo "panic-check: build $((built - started)) s, check $(($(date +%s) - built)) s"
if [ "${#failures[@]}" -ne 0 ]; then
  echo "--- emulator and function log ---" >&2
  cat "$log" >&2
  printf 'panic-check: FAILED:' >&2
  printf ' [%s]' "${failures[@]}" >&2
  echo >&2
else
  echo "panic-check: a panic cost one invocation; the environment stayed warm"
fi
echo "panic check: $passed passed, ${#failures[@]} failed"
[ "${#failures[@]}" -eq 0 ]
