#!/usr/bin/env bash
# Runs every event fixture through `sam local invoke`: the release arm64
# bootstrap that `sam build` packages, in a Lambda-shaped arm64 container
# (under qemu on an amd64 host) with SAM's runtime emulator, against a
# throwaway PostgreSQL that the container reaches over the docker bridge.
# Each status is checked against events/manifest.json (the control plane's
# against events/control/manifest.json), and the body where the
# fixture's point is tenant isolation. Ends with one line
# "sam local fixtures: N passed, M failed". Fixture file names as arguments
# run only those (default: every fixture of events/manifest.json).
#
# Sets the machine up first when needed (root or sudo): docker.io and its
# daemon, qemu-user-static and its binfmt entry, PostgreSQL's server binaries,
# and a local Debian 12 arm64 base image (no container registry is assumed:
# the image is built with mmdebstrap once and reused while its inputs are
# unchanged). Never touches a server on 5432: the cluster is its own, on a
# free port, stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export SAM_CLI_TELEMETRY=0
. scripts/lib/host.sh

command -v sam >/dev/null || { echo "sam is required: make .venv (requirements-dev.txt)" >&2; exit 1; }
command -v cargo-lambda >/dev/null || { echo "cargo-lambda is required: make .venv (requirements-dev.txt)" >&2; exit 1; }

# On Linux the machine is set up here and the base image built locally (no
# registry needed); elsewhere (Docker Desktop on macOS/Windows) Docker is the
# user's, and SAM pulls the public base image (SAM_LOCAL_IMAGE=public does
# that on Linux too, where a registry is reachable).
image_mode=${SAM_LOCAL_IMAGE:-$([ "$(uname -s)" = Linux ] && echo local || echo public)}
invoke_image=()
listen=127.0.0.1
if [ "$(uname -s)" = Linux ]; then
  command -v psql >/dev/null || need_packages postgresql-client
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || need_packages postgresql
  docker_up
  if [ -n "${DOCKER_SUDO:-}" ]; then
    echo "sam needs the Docker socket: sudo usermod -aG docker $USER, then log in again" >&2
    exit 1
  fi
  # The address containers on the default bridge reach the host at. SAM's
  # --docker-network host does not put the function in the host's network,
  # so the database listens here too, and the function finds it under the
  # name Docker Desktop gives the host (--add-host below).
  bridge_ip=$(dk network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
  bridge_net=$(dk network inspect bridge --format '{{range .IPAM.Config}}{{.Subnet}}{{end}}')
  [ -n "$bridge_net" ] || { echo "docker's default bridge has no subnet" >&2; exit 1; }
  # Docker 20.10 leaves Gateway out of the default bridge's IPAM: it is the
  # subnet's first address.
  [ -n "$bridge_ip" ] || bridge_ip=$(python3 -c 'import ipaddress, sys
print(next(ipaddress.ip_network(sys.argv[1]).hosts()))' "$bridge_net")
  listen="127.0.0.1,$bridge_ip"
  invoke_image=(--add-host "host.docker.internal:$bridge_ip")
  if [ "$image_mode" = local ]; then
    binfmt_arm64
    base=$(rootfs_image tenant-users-lambda-base arm64 ca-certificates)
    # As in AWS's provided images: SAM starts the runtime emulator with the
    # handler name (`bootstrap`) as the command, found through PATH.
    base=$(layered_image "$base" 'ENV LAMBDA_TASK_ROOT=/var/task LAMBDA_RUNTIME_DIR=/var/runtime PATH=/var/task:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /var/task')
    invoke_image+=(--invoke-image "$base" --skip-pull-image)
  fi
else
  docker info >/dev/null 2>&1 || { echo "Docker is not running (start Docker Desktop)" >&2; exit 1; }
fi

bindir=${PG_BINDIR:-}
[ -n "$bindir" ] || bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$bindir" ] || ! command -v initdb >/dev/null || bindir=$(dirname "$(command -v initdb)")
[ -n "$bindir" ] || bindir=$(ls -d /opt/homebrew/opt/postgresql@*/bin /usr/local/opt/postgresql@*/bin \
  2>/dev/null | sort -V | tail -n 1 || true)
[ -x "$bindir/initdb" ] || {
  echo "PostgreSQL server binaries not found: apt-get install postgresql (macOS: brew install postgresql@16), or set PG_BINDIR" >&2
  exit 1
}
pgdir=$(mktemp -d "${TMPDIR:-/tmp}/tenant-users-sam-pg.XXXXXX")
as_owner=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$pgdir"
  as_owner=(runuser -u postgres --)
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/tenant-users-sam.XXXXXX")
cluster_stop() {
  "${as_owner[@]}" "$bindir/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$pgdir" "$work"
}
trap cluster_stop EXIT
trap 'exit 130' INT TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${as_owner[@]}" "$bindir/initdb" -D "$pgdir/data" -U postgres --auth=trust -E UTF8 \
  --no-instructions >"$pgdir/initdb.log" 2>&1 || { cat "$pgdir/initdb.log" >&2; exit 1; }
# Trust stays on loopback (this script, as postgres); from the bridge, the
# function logs in as the application role with its password.
[ -n "${bridge_net:-}" ] && echo "host all all $bridge_net scram-sha-256" >>"$pgdir/data/pg_hba.conf"
"${as_owner[@]}" "$bindir/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w -o \
  "-p $port -k $pgdir -c listen_addresses=$listen -c fsync=off" start >/dev/null \
  || { cat "$pgdir/server.log" >&2; exit 1; }
echo "sam-local: throwaway PostgreSQL on $listen, port $port; base image: ${base:-public}" >&2

export TEST_DATABASE_ADMIN_URL="postgres://postgres@127.0.0.1:$port/postgres"
. scripts/lib/testdb.sh
trap 'testdb_cleanup; cluster_stop' EXIT
testdb_create
psql "$TESTDB_ADMIN_URL" -Xq -f events/seed.sql >/dev/null
container_db_url=${TESTDB_APP_URL/@127.0.0.1:/@host.docker.internal:}
container_control_url=${TESTDB_CONTROL_URL/@127.0.0.1:/@host.docker.internal:}

# events/env.json with the database the container reaches and the one switch
# that admits the fixture secret; generated here, never committed.
scripts/sam-env.sh "$container_db_url" "$container_control_url" >"$work/env.json"

start=$SECONDS
[ -n "${SAM_LOCAL_SKIP_BUILD:-}" ] || sam build --beta-features >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; exit 1; }
echo "sam-local: sam build in $((SECONDS - start)) s" >&2

# Checks of the body where the fixture's point is isolation: a token for
# acme lists acme's rows only, and globex's row is neither shown to acme nor
# changed or removed by acme's requests.
check_body() {
  python3 - "$@" <<'PY'
import json, sys
file, raw = sys.argv[1], sys.argv[2]
body = json.loads(json.loads(raw).get("body") or "null")
hank = "8b3e4c50-af6d-4e7c-9091-2c3d4e5f6071"
if file == "list-users.json":
    emails = [u["email"] for u in body["users"]]
    assert emails and all(e.endswith("@acme.test") for e in emails), emails
elif file == "get-user-as-owner-tenant.json":
    assert body["user_id"] == hank and body["email"] == "hank@globex.test", body
elif file.endswith("-other-tenant.json"):
    assert "globex" not in json.dumps(body) and "Hank" not in json.dumps(body), body
PY
}

passed=0
failed=0
retries=0
# record NAME WHY: counts a fixture, passed when WHY is empty; a failure
# shows the answer and the invocation's log.
record() {
  if [ -z "$2" ]; then
    passed=$((passed + 1))
    echo "ok   $1"
  else
    failed=$((failed + 1))
    echo "FAIL $1: $2" >&2
    echo "$out" >&2
    if [ -n "${SAM_LOCAL_DEBUG:-}" ]; then cat "$work/invoke.log" >&2; else tail -n 30 "$work/invoke.log" >&2; fi
  fi
}

# invoke FUNCTION EVENT [ARGS...]: sets $out to the invocation's answer.
# SAM posts the event as soon as the container's published port accepts.
# Behind docker's userland proxy (a daemon not started by docker_up) that
# is at once, and the runtime emulator, an arm64 program under qemu, may
# not listen yet: SAM reports "No response from invoke container" without
# the event having reached the function. Only then, try again.
invoke() {
  local function=$1 event=$2 attempt
  shift 2
  for attempt in 1 2 3 4 5 6 7 8; do
    out=$(sam local invoke "$function" \
      --template .aws-sam/build/template.yaml \
      --event "$event" "$@" \
      "${invoke_image[@]}" --region us-east-1 ${SAM_LOCAL_DEBUG:+--debug} \
      2>"$work/invoke.log") || true
    grep -q "No response from invoke container" "$work/invoke.log" || break
    retries=$((retries + 1))
  done
}
while IFS=' ' read -r file expected; do
  invoke TenantUsersFunction "events/$file" --env-vars "$work/env.json"
  got=$(printf '%s' "$out" | python3 -c 'import json,sys
try: print(json.loads(sys.stdin.read().strip().splitlines()[-1])["statusCode"])
except Exception: print("no-response")')
  why=""
  if [ "$got" != "$expected" ]; then
    why="expected $expected, got $got"
  elif ! check=$(check_body "$file" "$(printf '%s' "$out" | tail -n 1)" 2>&1); then
    why="body: $check"
  fi
  record "$file ($got)" "$why"
done < <(python3 - "$@" <<'PY'
import json, sys
# Every fixture, or those named on the command line.
for f, s in json.load(open("events/manifest.json")).items():
    if len(sys.argv) < 2 or f in sys.argv[1:]:
        print(f, s)
PY
)

# The schema function (its own bootstrap): events it must refuse without
# acting, each answered with the invocation error events/migrate/manifest.json
# names (the fixtures run only when no API fixture was named).
if [ $# -eq 0 ]; then
  while IFS=$'\t' read -r file expected; do
    invoke MigrateFunction "events/migrate/$file"
    why=""
    printf '%s' "$out" | grep -qF -- "$expected" || why="expected an error with \"$expected\""
    record "migrate/$file" "$why"
  done < <(python3 -c 'import json
for f, s in json.load(open("events/migrate/manifest.json")).items(): print(f + "\t" + s)')

  # The control plane (its own bootstrap, its own database role): each of
  # events/control/ with the status its manifest names.
  while IFS=' ' read -r file expected; do
    invoke ControlFunction "events/control/$file" --env-vars "$work/env.json"
    got=$(printf '%s' "$out" | python3 -c 'import json,sys
try: print(json.loads(sys.stdin.read().strip().splitlines()[-1])["statusCode"])
except Exception: print("no-response")')
    why=""
    [ "$got" = "$expected" ] || why="expected $expected, got $got"
    record "control/$file ($got)" "$why"
  done < <(python3 -c 'import json
for f, s in json.load(open("events/control/manifest.json")).items(): print(f, s)')
fi

# After every other-tenant request, globex's row is as seeded.
if [ "$(psql "$TESTDB_ADMIN_URL" -XAtc "select name from users where user_id = '8b3e4c50-af6d-4e7c-9091-2c3d4e5f6071'")" = "Hank Scorpio" ]; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
  echo "FAIL globex's row was changed or removed by another tenant's requests" >&2
fi
echo "sam-local: $retries invocation(s) repeated because the emulator was not listening yet" >&2
echo "sam local fixtures: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
