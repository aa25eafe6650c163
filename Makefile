# One command to run it locally, one to test it.
#   make dev     local HTTP server on 127.0.0.1:$PORT (default 3000), migrated,
#                seeded, with tokens printed; throwaway PostgreSQL unless
#                DATABASE_ADMIN_URL is set
#   make test    the test suite against real PostgreSQL
#   make check   formatting and lints, as CI runs them

.PHONY: dev test check migrate serve

dev:
	scripts/with-postgres.sh dev cargo run --quiet -- dev

test:
	scripts/with-postgres.sh test cargo test --locked --lib --tests

check:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

migrate:
	cargo run --quiet -- migrate

serve:
	cargo run --quiet -- serve
