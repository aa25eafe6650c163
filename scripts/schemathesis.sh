#!/usr/bin/env bash
# Runs schemathesis against the local server (the same router Lambda runs),
# with a token of a tenant admin (so that writes are exercised, not refused
# with 403) of a tenant of its own: every operation from openapi.yaml,
# examples, fuzzed and negative cases, and stateful sequences through the
# spec's links; any 5xx or response that breaks the spec fails the run.
#
# Needs TEST_DATABASE_ADMIN_URL (make test provides it) and schemathesis.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v schemathesis >/dev/null || { echo "schemathesis is required: pip install schemathesis" >&2; exit 1; }
. scripts/lib/testdb.sh

testdb_create
# Its tenant, registered without limits: the run fires requests back to back.
DATABASE_ADMIN_URL="$TESTDB_ADMIN_URL" target/debug/migrate register schemathesis unlimited >/dev/null
port=$(free_port)
secret="schemathesis-only-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
log=$(mktemp)
report=$(mktemp -d)
testdb_cleanups+=("rm -rf $log $report")
DATABASE_URL="$TESTDB_APP_URL" JWT_HS256_SECRET="$secret" PORT="$port" RUST_LOG=warn \
  target/debug/tenant-users serve >"$log" 2>&1 &
testdb_cleanups+=("kill $! 2>/dev/null; wait $! 2>/dev/null")
wait_for_port "$port"
token=$(JWT_HS256_SECRET="$secret" target/debug/tenant-users token --tenant schemathesis --group tenant-admin --ttl 3600)

status=0
out="$report/output.txt"
schemathesis run openapi.yaml \
  --url "http://127.0.0.1:$port" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-40}" \
  --seed "${SCHEMATHESIS_SEED:-20261126}" \
  --workers 1 \
  --warnings off \
  2>&1 | tee "$out" || status=$?

if [ "$status" -ne 0 ]; then
  echo "--- server log ---" >&2
  tail -50 "$log" >&2
fi
# The summary line, e.g. "384 generated, 384 passed, 10 skipped".
summary=$(grep -Eo '[0-9]+ generated.*' "$out" | tail -n 1 || true)
echo "schemathesis cases: ${summary:-no summary}"
exit "$status"
