# One command to run it locally, one to test it, one to build it for Lambda.
#   make dev     local HTTP server on 127.0.0.1:$PORT (default 3000), migrated,
#                seeded, with tokens printed; throwaway PostgreSQL unless
#                DATABASE_ADMIN_URL is set
#   make test    the test suite against real PostgreSQL, PgBouncer and moto,
#                then every event fixture through `cargo lambda watch`, then
#                the release bootstrap (test-panic feature) under the Lambda
#                runtime emulator: a panic fails one invocation, the next is
#                served warm (scripts/panic-check.sh), then schemathesis
#                against openapi.yaml (ALLOW_TEST_FIXTURES=1: only here is
#                the fixture secret of events/env.json accepted)
#   make check   formatting, lints, the SAM template lints, the policy scanner
#                (checkov) and the checks over the expanded template
#   make lambda  release arm64 bootstraps for provided.al2023, one per function
#                (api, migrate, control; each refused if it
#                would abort on panic)
#   make bench   benchmarks against the pgbench floor -> BENCHMARKS.md
#   make bench-fleet  200 environments through the pooler -> BENCHMARKS.md
#   make bench-fair   one tenant flooding from 64 environments beside another's
#                steady load, rate limits off / leased / written per request
#                -> BENCHMARKS.md
#   make bench-lambda  the release binary under the Lambda runtime interface
#                emulator, per memory size (cgroups: root), against a
#                hello-world function -> BENCHMARKS.md + chart
#   make bench-lambda-perf  where init CPU goes by function: cold starts
#                under `perf record` -> BENCHMARKS.md (bench-lambda section)
#   make sam-local   every event fixture through `sam local invoke` in an
#                arm64 container (Docker; sets the machine up, see README)
#   make newcomer-check  README's `make dev` and `make test` in a fresh
#                Debian 12 container as a non-root user, timed; then .ci/run
#                (check, lambda, test) as root in a stock one
#
# The Python tools (moto, cargo-lambda, schemathesis, cfn-lint, SAM CLI) come
# from .venv, made here with the versions pinned in requirements-dev.txt.

.PHONY: dev test check lambda sam-build sam-local newcomer-check bench bench-lambda bench-lambda-perf bench-fleet bench-fair migrate serve .venv

VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)

$(VENV)/.installed: requirements-dev.txt
	@python3 -c 'import ensurepip, venv' 2>/dev/null || { echo "python3 cannot create a virtualenv: install python3-venv (sudo apt-get install python3-venv)" >&2; exit 1; }
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

.venv: $(VENV)/.installed

dev:
	scripts/with-postgres.sh dev cargo run --quiet --bin tenant-users -- dev

test: $(VENV)/.installed
	ALLOW_TEST_FIXTURES=1 scripts/with-postgres.sh test sh -c 'status=0; \
	  { cargo build --locked --bins && cargo test --locked --lib --tests; } || status=1; \
	  scripts/lambda-fixtures.sh || status=1; \
	  scripts/panic-check.sh || status=1; \
	  scripts/schemathesis.sh || status=1; \
	  exit $$status'

# checkov as pinned in .ci/requirements-checkov.txt (.ci/run installs it in
# a virtualenv of its own and sets CHECKOV); --skip-download keeps it offline.
CHECKOV ?= checkov

check: $(VENV)/.installed
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings
	cfn-lint template.yaml
	SAM_CLI_TELEMETRY=0 sam validate --lint --region us-east-1
	mkdir -p target
	AWS_DEFAULT_REGION=us-east-1 python3 tests/template_test.py --write-expanded target/template-expanded.json
	$(CHECKOV) --quiet --compact --skip-download --framework cloudformation \
		-f template.yaml -f target/template-expanded.json

# Benchmarks (not part of make test): needs wrk and pgbench; writes BENCHMARKS.md.
bench:
	cargo build --release --locked --features tenant-users/vendored-openssl --bin tenant-users
	scripts/with-postgres.sh test sh -c 'cargo bench --locked -p tenant-users --features vendored-openssl --bench tokens && cargo bench --locked -p tenant-users --features vendored-openssl --bench service'
	python3 scripts/bench-summary.py

# 200 environments through PgBouncer vs 8 direct connections -> BENCHMARKS.md.
bench-fleet:
	scripts/with-postgres.sh test cargo bench --locked -p tenant-users --bench fleet
	python3 scripts/bench-summary.py

# A victim tenant's latency beside an aggressor tenant's flood, through
# PgBouncer; the aggressor's admitted rate against its tier -> BENCHMARKS.md.
bench-fair:
	scripts/with-postgres.sh test cargo bench --locked -p tenant-users --bench fair
	python3 scripts/bench-summary.py

# Needs root (cgroup v1), the SAM CLI (its emulator, its events), PostgreSQL on
# 127.0.0.1:5432, PgBouncer and moto_server; python3 + matplotlib for the chart.
# Built with the OpenSSL the arm64 bootstrap links (vendored-openssl).
bench-lambda: $(VENV)/.installed
	python3 -c 'import matplotlib' 2>/dev/null || pip install -q -r scripts/bench-requirements.txt
	cargo build --release --locked --features tenant-users/vendored-openssl --bin api --bin migrate --example hello
	PATH=$$PATH:/usr/sbin cargo bench --locked -p tenant-users --features vendored-openssl --bench lambda
	python3 scripts/bench-summary.py

# Where init CPU goes by function: BENCH_PERF_INIT cold starts per path
# (default 10) at 1769 MB, each under `perf record` (Debian: linux-perf),
# of the service built with its symbols (the `perf` profile: release, not
# stripped) -> the perf block of BENCHMARKS.md's bench-lambda section.
BENCH_PERF_INIT ?= 10
bench-lambda-perf: $(VENV)/.installed
	@command -v perf >/dev/null || { echo "needs perf: apt-get install linux-perf (Debian)" >&2; exit 1; }
	cargo build --profile perf --locked --features tenant-users/vendored-openssl --bin api
	cargo build --release --locked --features tenant-users/vendored-openssl --bin api --bin migrate --example hello
	BENCH_PERF_INIT=$(BENCH_PERF_INIT) BENCH_SERVICE_BIN=$${CARGO_TARGET_DIR:-$(CURDIR)/target}/perf/api \
	  PATH=$$PATH:/usr/sbin cargo bench --locked -p tenant-users --features vendored-openssl --bench lambda

# One binary per Lambda function: the users API, the schema custom
# resource (crates/migrate) and the control plane (crates/control).
FUNCTIONS := api migrate control

# cargo lambda adds panic=abort unless Cargo.toml's [profile.release] sets
# panic; check-bootstrap.sh refuses an aborting (or test-panic) bootstrap.
lambda: $(VENV)/.installed
	cargo lambda build --release --arm64 --locked $(foreach f,$(FUNCTIONS),--bin $(f))
	for f in $(FUNCTIONS); do scripts/check-bootstrap.sh target/lambda/$$f/bootstrap || exit 1; done
	@ls -l $(foreach f,$(FUNCTIONS),target/lambda/$(f)/bootstrap)

sam-build: $(VENV)/.installed
	SAM_CLI_TELEMETRY=0 sam build --beta-features
	for b in .aws-sam/build/*/bootstrap; do scripts/check-bootstrap.sh "$$b" || exit 1; done

sam-local: $(VENV)/.installed
	scripts/sam-local.sh

newcomer-check:
	scripts/newcomer-check.sh

migrate:
	cargo run --quiet --bin migrate -- migrate

serve:
	cargo run --quiet --bin tenant-users -- serve
