#!/usr/bin/env bash
# Refuses a Lambda bootstrap that would not ship what Cargo.toml describes:
#   - one built with panic = "abort" (cargo lambda's default for --release
#     unless [profile.release] sets `panic`): a panic would kill the
#     execution environment instead of failing one invocation;
#   - one built with the `test-panic` feature (GET /__panic), unless
#     --test-build says that is the point.
#
#   scripts/check-bootstrap.sh [--test-build] BOOTSTRAP
#
# `make lambda` runs it on the arm64 bootstrap. The binary is stripped and
# may be for another architecture, so this reads it rather than running it:
# std's "Rust cannot catch foreign exceptions" abort is reachable only from
# the unwinding panic runtime (panic_unwind), so fat LTO drops it from an
# aborting build. scripts/panic-check.sh (make test) checks the behaviour
# itself under the Lambda runtime emulator and runs this on the same
# binary, so the two cannot drift apart silently.
set -euo pipefail

test_build=0
if [ "${1:-}" = --test-build ]; then
  test_build=1
  shift
fi
bootstrap=${1:?usage: check-bootstrap.sh [--test-build] BOOTSTRAP}
[ -f "$bootstrap" ] || { echo "check-bootstrap: no such file: $bootstrap" >&2; exit 1; }

status=0
if grep -q -a -F 'Rust cannot catch foreign exceptions' "$bootstrap"; then
  echo "check-bootstrap: $bootstrap unwinds on panic"
else
  echo "check-bootstrap: $bootstrap was built with panic = \"abort\" (no unwinding panic runtime):" \
    "a panic would cost the execution environment; keep panic = \"unwind\" in Cargo.toml's [profile.release]" >&2
  status=1
fi
if [ "$test_build" = 0 ] && grep -q -a -F 'GET /__panic: deliberate panic' "$bootstrap"; then
  echo "check-bootstrap: $bootstrap was built with the test-panic feature (GET /__panic): never ship it" >&2
  status=1
fi
exit "$status"
