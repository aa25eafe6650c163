#!/usr/bin/env bash
# The README's two commands on a stock machine: a fresh clone of this
# branch's HEAD in a clean Debian 12 amd64 container (mmdebstrap minbase +
# build-essential git make python3 sudo + the packages README's Quick start
# names, read from README itself), run by a non-root user with sudo:
#   make dev   start it, wait for its tokens, one authenticated request, stop
#   make test  the whole suite
# and the time each took (NEWCOMER_STEPS=readme: only this); then `.ci/run` (check, lambda, test) as root in a
# stock Debian 12 container with only git, python3 and CA certificates
# (NEWCOMER_STEPS=ci: only that). A user brings their own Rust: the host's rustup
# toolchain is mounted read-only (nothing here can download one); crates,
# Debian and PyPI packages come from their registries, reached with the
# host's CA bundle. Commit first: uncommitted changes are not in the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/host.sh

rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=$(dirname "$(command -v cargo)")
[ -d "$rustup_home/toolchains" ] || { echo "needs a rustup toolchain (RUSTUP_HOME=$rustup_home)" >&2; exit 1; }

# README's Debian prerequisites line, as a reader would paste it.
readme_packages=$(awk '/^## Quick start/ { q = 1 }
  q && /^sudo apt-get install / { sub(/^sudo apt-get install /, ""); sub(/ *#.*/, ""); print; exit }' README.md)
[ -n "$readme_packages" ] || { echo "README's Quick start has no 'sudo apt-get install' line" >&2; exit 1; }
packages="build-essential,git,make,python3,sudo,ca-certificates,$(echo $readme_packages | tr ' ' ,)"

docker_up
image=$(rootfs_image tenant-users-newcomer amd64 "$packages")

work=$(mktemp -d "${TMPDIR:-/tmp}/tenant-users-newcomer.XXXXXX")
chmod 755 "$work" # the container's user reads its script here
name="tenant-users-newcomer-$$"
trap 'dk rm -f "$name" "$name-ci" >/dev/null 2>&1 || true; as_root rm -rf "$work"' EXIT
git clone -q --no-hardlinks --branch "$(git rev-parse --abbrev-ref HEAD)" "$PWD" "$work/tenant-users"
echo "newcomer: $image, clone of $(git rev-parse --short HEAD)" >&2

cat >"$work/as-newcomer.sh" <<'SH'
#!/bin/bash
# Runs as `dev` (uid 1000, sudo without password) in the container.
set -uo pipefail
cd ~/tenant-users
t0=$SECONDS
# Its own process group, so that one signal stops make, cargo, the server
# and (through its trap) the throwaway cluster, as Ctrl-C would.
setsid make dev >/tmp/dev.log 2>&1 &
dev=$!
token=""
for _ in $(seq 1 1800); do
  token=$(sed -n 's/^export TOKEN_ACME=//p' /tmp/dev.log | head -n 1)
  [ -n "$token" ] && break
  kill -0 "$dev" 2>/dev/null || break
  sleep 1
done
ready=$((SECONDS - t0))
answer=$(python3 - "$token" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request("http://127.0.0.1:3000/users", headers={"Authorization": "Bearer " + sys.argv[1]})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status, len(json.load(r)["users"]), "users")
except Exception as e:
    print("no answer:", e)
PY
)
kill -TERM -- -"$dev" 2>/dev/null; wait "$dev" 2>/dev/null
if [ "${answer%% *}" = 200 ]; then
  echo "newcomer: make dev ready in ${ready} s; GET /users as acme: $answer"
  dev_ok=1
else
  echo "newcomer: make dev FAILED after ${ready} s: $answer"; tail -n 40 /tmp/dev.log
  dev_ok=0
fi

t0=$SECONDS
make test 2>&1 | tee /tmp/test.log
test_status=${PIPESTATUS[0]}
echo "newcomer: make test exited $test_status in $((SECONDS - t0)) s"
[ "$dev_ok" = 1 ] && [ "$test_status" = 0 ]
SH
chmod +x "$work/as-newcomer.sh"

# The container has its own network namespace: its 127.0.0.1:5432 is empty,
# so `make test` starts its own cluster, as on a new machine.
status=0
# IPv6 on: a machine has ::1 on loopback, and `localhost` (the test proxy's
# certificate name) resolves to it first; docker turns it off by default.
if [[ " ${NEWCOMER_STEPS:-readme ci} " == *" readme "* ]]; then
  dk run --name "$name" --rm --shm-size=1g --sysctl net.ipv6.conf.all.disable_ipv6=0 \
    -v "$work:/work" \
    -v "$rustup_home:/opt/rustup:ro" -v "$cargo_bin:/opt/cargo-bin:ro" \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    -e RUSTUP_HOME=/opt/rustup \
    "$image" bash -c '
      set -e
      useradd -m -u 1000 -s /bin/bash dev
      echo "dev ALL=(ALL) NOPASSWD:ALL" >/etc/sudoers.d/dev
      mv /work/tenant-users /home/dev/tenant-users
      chown -R dev: /home/dev/tenant-users
      exec sudo -u dev -H env RUSTUP_HOME=/opt/rustup \
        PATH=/opt/cargo-bin:/usr/local/bin:/usr/bin:/bin /work/as-newcomer.sh' || status=$?
fi
# `.ci/run` as CI runs it (root), in a stock Debian 12 container that has
# only what README's Quick start assumes of a machine before its own
# `sudo apt-get install` line (git to clone, python3, CA certificates):
# .ci/run must install everything else itself, in an order that works.
# Every step but sam-local, which needs a Docker daemon with binfmt_misc
# inside the container (a privileged nested dockerd); CI runs that step on
# the host.
if [[ " ${NEWCOMER_STEPS:-readme ci} " == *" ci "* ]]; then
ci_image=$(rootfs_image tenant-users-stock amd64 "git,python3,ca-certificates")
git clone -q --no-hardlinks --branch "$(git rev-parse --abbrev-ref HEAD)" "$PWD" "$work/ci-clone"
ci_status=0
t0=$SECONDS
dk run --name "$name-ci" --rm --shm-size=1g --sysctl net.ipv6.conf.all.disable_ipv6=0 \
  -v "$work/ci-clone:/src" \
  -v "$rustup_home:/opt/rustup:ro" -v "$cargo_bin:/opt/cargo-bin:ro" \
  -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
  -e RUSTUP_HOME=/opt/rustup -e CI_STEPS="check lambda test" \
  -e PATH=/opt/cargo-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  "$ci_image" bash -c 'cd /src && bash .ci/run' >"$work/ci.log" 2>&1 || ci_status=$?
grep -E '^(ci: |tests: )' "$work/ci.log" || true
echo "newcomer: .ci/run (check, lambda, test) in a stock container exited $ci_status in $((SECONDS - t0)) s"
[ "$ci_status" = 0 ] || { tail -n 60 "$work/ci.log"; status=1; }
fi

[ "$status" = 0 ] && echo "newcomer check: passed" || echo "newcomer check: FAILED"
exit "$status"
