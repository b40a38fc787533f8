#!/usr/bin/env bash
# Fuzzes the API against its contract: schemathesis with openapi.yaml against the local
# stack (the real function binaries behind the local API gateway, processing live), on a
# database, exchange and queues of its own. Every check must pass: no 5xx, every response
# as documented, every documented status reachable. Requests carry a staff token, the one
# caller every operation is open to (scripts/dev-token.sh, the local authorizer's key).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

examples=${CONTRACT_EXAMPLES:-200}
port=${CONTRACT_PORT:-3100}
invoke_port=${CONTRACT_INVOKE_PORT:-9100}
run_id="contract_$$"

ensure_postgres
ensure_rabbitmq
ensure_database "$run_id"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$run_id?sslmode=disable"
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
export AMQP_EXCHANGE="$run_id.orders" AMQP_QUEUE_PREFIX="$run_id."

venv=target/schemathesis
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet schemathesis
fi

log=$(mktemp)
stack_pid=
clean_up() {
  if [ -n "$stack_pid" ]; then
    kill -INT "$stack_pid" 2>/dev/null || true
    wait "$stack_pid" 2>/dev/null || true
  fi
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$run_id\" WITH (FORCE)" || true
  for queue in orders orders.dlq orders.sink orders.audit orders.retry.1s orders.retry.10s orders.retry.60s orders.retry.600s; do
    rabbitmqctl -q delete_queue "$run_id.$queue" >/dev/null 2>&1 || true
  done
  rabbitmqadmin delete exchange name="$run_id.orders" >/dev/null 2>&1 || true
  rm -f "$log"
}
trap clean_up EXIT

cargo build --bins
cargo run -q --bin migrate
cargo run -q --bin local-stack -- --port "$port" --invoke-port "$invoke_port" --no-build --no-reload >"$log" 2>&1 &
stack_pid=$!
for _ in $(seq 1 600); do
  grep -q "API ready" "$log" && break
  kill -0 "$stack_pid" 2>/dev/null || { cat "$log"; echo "the local stack stopped" >&2; exit 1; }
  sleep 0.5
done
grep -q "API ready" "$log" || { cat "$log"; echo "the local stack did not become ready" >&2; exit 1; }

# Long enough for the slowest run; the key is the one the stack just loaded.
token=$(scripts/dev-token.sh --staff --sub contract-check --expires-in 21600 | tail -n 1)

status=0
"$venv/bin/st" run openapi.yaml --url "http://127.0.0.1:$port" \
  --header "Authorization: Bearer $token" \
  --checks all --exclude-checks unsupported_method --max-examples "$examples" \
  --phases examples,coverage,fuzzing,stateful \
  --suppress-health-check too_slow \
  --seed 1 || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- local stack log (last 80 lines) ---"
  tail -n 80 "$log"
fi
exit "$status"
