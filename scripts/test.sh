#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, unit, integration and end-to-end tests
# against the real PostgreSQL and RabbitMQ of this machine (started here if down).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_postgres
ensure_rabbitmq
if ! cargo lambda --version >/dev/null 2>&1; then
  pip install --quiet cargo-lambda
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
scripts/check-deploy-files.sh
scripts/check-contract.sh
scripts/check-deploy-build.sh
