#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, unit, integration and end-to-end tests
# against the real PostgreSQL and RabbitMQ of this machine (started here if down).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_postgres
ensure_rabbitmq
# The integration tests' functions connect through PgBouncer in transaction mode, as they
# would through RDS Proxy: a statement that needs its session kept fails here.
ensure_pgbouncer
export TEST_POOLER_URL="$POOLER_URL"
if ! cargo lambda --version >/dev/null 2>&1; then
  pip install --quiet cargo-lambda
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# Direct sessions prepare their statements once: that path is checked without the pooler.
TEST_POOLER_URL= cargo test -p system-tests --test orders_api order_placement_reuses_one_generic_plan
scripts/check-deploy-files.sh
scripts/check-contract.sh
scripts/check-deploy-build.sh
