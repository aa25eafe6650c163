#!/usr/bin/env bash
# Runs schemathesis against the local server (the same router Lambda runs),
# with a token of a tenant admin (so that writes are exercised, not refused
# with 403) of a tenant of its own: every operation from openapi.yaml,
# examples, fuzzed and negative cases, and stateful sequences through the
# spec's links; any 5xx or response that breaks the spec fails the run.
# Then the control plane the same way, against control-openapi.yaml.
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

# The control plane against control-openapi.yaml: its local server (every
# request as operator local:$USER; in AWS, IAM authorization decides), as
# its own database role, with the export bucket and both KMS keys on moto,
# so exports and signed offboarding receipts run for real.
command -v moto_server >/dev/null || { echo "moto_server is required: pip install 'moto[server]'" >&2; exit 1; }
moto_port=$(free_port)
moto_server -H 127.0.0.1 -p "$moto_port" >/dev/null 2>&1 &
testdb_cleanups+=("kill $! 2>/dev/null; wait $! 2>/dev/null")
wait_for_port "$moto_port"
export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=schemathesis AWS_SECRET_ACCESS_KEY=schemathesis
aws_setup=$(python3 - <<'PY'
import boto3
s3, kms = boto3.client("s3"), boto3.client("kms")
s3.create_bucket(Bucket="schemathesis-exports")
export_key = kms.create_key()["KeyMetadata"]["Arn"]
receipt_key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
print(f"EXPORT_BUCKET=schemathesis-exports EXPORT_KEY_ID={export_key} RECEIPT_KEY_ID={receipt_key}")
PY
)
cport=$(free_port)
clog=$(mktemp)
testdb_cleanups+=("rm -f $clog")
# shellcheck disable=SC2086 # the three assignments from aws_setup
operator_key="schemathesis-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
env $aws_setup DATABASE_URL="$TESTDB_CONTROL_URL" PORT="$cport" RUST_LOG=warn CONTROL_OPERATOR_KEY="$operator_key" \
  target/debug/tenant-users serve-control >"$clog" 2>&1 &
testdb_cleanups+=("kill $! 2>/dev/null; wait $! 2>/dev/null")
wait_for_port "$cport"
cstatus=0
cout="$report/control.txt"
# use_after_free is left out on purpose: an offboarded tenant's registry
# row is its tombstone, which GET keeps showing (status offboarded); every
# other use of it is 409 (the fixtures and tests/api/control.rs check both).
schemathesis run control-openapi.yaml \
  --url "http://127.0.0.1:$cport" \
  --header "Authorization: Operator $operator_key" \
  --checks all \
  --exclude-checks use_after_free \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-40}" \
  --seed "${SCHEMATHESIS_SEED:-20261126}" \
  --workers 1 \
  --warnings off \
  2>&1 | tee "$cout" || cstatus=$?
if [ "$cstatus" -ne 0 ]; then
  echo "--- control plane log ---" >&2
  tail -50 "$clog" >&2
  status=$cstatus
fi
summary=$(grep -Eo '[0-9]+ generated.*' "$cout" | tail -n 1 || true)
echo "schemathesis cases: ${summary:-no summary} (control plane)"
exit "$status"
