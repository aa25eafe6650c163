# One command to run it locally, one to test it, one to build it for Lambda.
#   make dev     local HTTP server on 127.0.0.1:$PORT (default 3000), migrated,
#                seeded, with tokens printed; throwaway PostgreSQL unless
#                DATABASE_ADMIN_URL is set
#   make test    the test suite against real PostgreSQL, PgBouncer and moto,
#                then every event fixture through `cargo lambda watch`, then
#                schemathesis against openapi.yaml (ALLOW_TEST_FIXTURES=1: only
#                here is the fixture secret of events/env.json accepted)
#   make check   formatting, lints, the SAM template lints, the policy scanner
#                (checkov) and the checks over the expanded template
#   make lambda  release arm64 bootstrap for provided.al2023
#   make bench   benchmarks against the pgbench floor -> BENCHMARKS.md
#   make bench-fleet  200 environments through the pooler -> BENCHMARKS.md
#   make bench-lambda  the release binary under the Lambda runtime interface
#                emulator, per memory size (cgroups: root), against a
#                hello-world function -> BENCHMARKS.md + chart

.PHONY: dev test check lambda sam-build bench bench-lambda bench-fleet migrate serve

dev:
	scripts/with-postgres.sh dev cargo run --quiet -- dev

test:
	ALLOW_TEST_FIXTURES=1 scripts/with-postgres.sh test sh -c 'cargo test --locked --lib --tests && scripts/lambda-fixtures.sh && scripts/schemathesis.sh'

# checkov as pinned in .ci/requirements-checkov.txt (.ci/run installs it in
# a virtualenv of its own and sets CHECKOV); --skip-download keeps it offline.
CHECKOV ?= checkov

check:
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
	scripts/with-postgres.sh test sh -c 'cargo bench --locked --bench tokens && cargo bench --locked --bench service'

# 200 environments through PgBouncer vs 8 direct connections -> BENCHMARKS.md.
bench-fleet:
	scripts/with-postgres.sh test cargo bench --locked --bench fleet

# Needs root (cgroup v1), the SAM CLI (its emulator, its events), PostgreSQL on
# 127.0.0.1:5432, PgBouncer and moto_server; python3 + matplotlib for the chart.
bench-lambda:
	python3 -c 'import matplotlib' 2>/dev/null || pip install -q -r scripts/bench-requirements.txt
	cargo build --release --locked --bin tenant-users --example hello
	PATH=$$PATH:/usr/sbin cargo bench --locked --bench lambda

lambda:
	cargo lambda build --release --arm64 --locked
	@ls -l target/lambda/tenant-users/bootstrap

sam-build:
	SAM_CLI_TELEMETRY=0 sam build --beta-features

migrate:
	cargo run --quiet -- migrate

serve:
	cargo run --quiet -- serve
