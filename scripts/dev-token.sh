#!/usr/bin/env bash
# Prints a bearer token the local stack accepts, as the last line of its output:
#   scripts/dev-token.sh [--staff] [--sub SUBJECT] [--expires-in SECONDS]
# A customer token (sub dev-user, one hour) by default; --staff adds the oms/staff scope.
# Signed with the checkout's key in .local-auth/ (made now if missing), the one the local
# gateway verifies against, so the stack need not be running.
set -euo pipefail
cd "$(dirname "$0")/.."
# From the workspace root like scripts/dev.sh: the same package selection, so after
# `make dev` nothing is built again.
exec cargo run -q --bin dev-token -- "$@"
