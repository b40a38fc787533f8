#!/usr/bin/env bash
# The whole order system on this machine, in the foreground, until Ctrl-C:
#   PostgreSQL and RabbitMQ (started if down), the `orders` database with its migrations and
#   the RabbitMQ topology, then `local-stack`: the real function binaries under
#   `cargo lambda watch`, an API Gateway on http://127.0.0.1:3000, the Amazon MQ event
#   source mapping feeding process-orders, and the outbox relay on a schedule.
# Arguments go to local-stack (`scripts/dev.sh --help`). DATABASE_URL and AMQP_URL may point
# elsewhere; the defaults are the local servers.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/orders?sslmode=disable}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

source scripts/services.sh
say() { printf '[dev] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

command -v cargo >/dev/null || die "cargo is missing: install Rust from https://rustup.rs"

# cargo-lambda runs the functions (its `watch` is the Lambda runtime emulator).
if ! cargo lambda --version >/dev/null 2>&1; then
  say "installing cargo-lambda from PyPI"
  if command -v pip >/dev/null; then pip install --quiet cargo-lambda
  else python3 -m pip install --quiet cargo-lambda
  fi
  hash -r
  cargo lambda --version >/dev/null 2>&1 \
    || die "cargo-lambda installed but not on PATH: add pip's script folder (e.g. ~/.local/bin) to PATH"
fi

ensure_postgres
ensure_rabbitmq

# The database, when it is the local server's and missing.
if [[ "$DATABASE_URL" == *"@127.0.0.1:5432/"* || "$DATABASE_URL" == *"@localhost:5432/"* ]]; then
  db_name="${DATABASE_URL##*/}"
  ensure_database "${db_name%%\?*}"
fi

# One build for everything, from the workspace root: the emulator runs
# `cargo run --bin <function>` from the root too, so it finds every binary fresh and builds
# nothing more. Debug, not release: the release profile (fat LTO, one codegen unit) takes
# many minutes per binary on two cores, and the local stack serves a developer, not a load.
say "building (the first build takes a few minutes)"
cargo build --bins
say "applying migrations, the application role and the RabbitMQ topology"
DATABASE_APP_ROLE="${DATABASE_APP_ROLE:-oms_app}" cargo run -q --bin migrate
# The functions connect as the application role, which owns nothing, and through PgBouncer
# in transaction mode, as they would through RDS Proxy: the same least privilege and the
# same multiplexed sessions as in AWS. FUNCTIONS_DATABASE_URL may point elsewhere.
if [[ -z "${FUNCTIONS_DATABASE_URL:-}" && ( "$DATABASE_URL" == *"@127.0.0.1:5432/"* || "$DATABASE_URL" == *"@localhost:5432/"* ) ]]; then
  ensure_pgbouncer
  db_name="${DATABASE_URL##*/}"
  FUNCTIONS_DATABASE_URL="postgres://${DATABASE_APP_ROLE:-oms_app}@127.0.0.1:${POOLER_PORT}/${db_name}"
  export DATABASE_MULTIPLEXED=true
fi
DATABASE_URL="${FUNCTIONS_DATABASE_URL:-$DATABASE_URL}" exec cargo run -q --bin local-stack -- "$@"
