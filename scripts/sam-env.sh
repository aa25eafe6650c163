#!/usr/bin/env bash
# Prints the --env-vars file for running the fixtures with `sam local
# invoke`: events/env.json with DATABASE_URL set to the given URL (a database
# migrated with `migrate` and loaded with events/seed.sql, as the function
# reaches it from its container) and ALLOW_TEST_FIXTURES=1, the one switch
# that admits the fixture secret, which is why this file is generated and
# never committed.
#
#   scripts/sam-env.sh 'postgres://tenant_app:PW@host.docker.internal:5432/DB' \
#     ['postgres://tenant_control:PW@host.docker.internal:5432/DB'] >.sam-env.json
set -euo pipefail
cd "$(dirname "$0")/.."
url=${1:?usage: sam-env.sh DATABASE_URL [CONTROL_DATABASE_URL]}
python3 - "$url" "${2:-}" <<'PY'
import json, sys
env = json.load(open("events/env.json"))
fn = env["TenantUsersFunction"]
fn["DATABASE_URL"] = sys.argv[1]
fn["ALLOW_TEST_FIXTURES"] = "1"
# The control plane's fixtures run as its own role.
if sys.argv[2]:
    env["ControlFunction"]["DATABASE_URL"] = sys.argv[2]
json.dump(env, sys.stdout, indent=2)
print()
PY
