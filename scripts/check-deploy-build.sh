#!/usr/bin/env bash
# CI's deployment checks that need the SAM CLI: `sam validate --lint` and `sam build`
# producing a `bootstrap` for every function. This machine has no arm64 standard library, so
# it builds x86_64 (`Architecture=x86_64`); the deployment itself defaults to arm64.
set -euo pipefail
cd "$(dirname "$0")/.."

# The SAM CLI pins many Python packages: keep it in a virtualenv of its own, cached under
# target/ beside the build it feeds.
venv=target/sam-cli
if [ ! -x "$venv/bin/sam" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet aws-sam-cli
fi
if ! cargo lambda --version >/dev/null 2>&1; then
  pip install --quiet cargo-lambda
fi
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1} SAM_CLI_TELEMETRY=0
export PATH="$PWD/$venv/bin:$PATH"

sam validate --lint
# The Rust build runs in place (cargo-lambda writes target/lambda/<binary>/bootstrap), so
# the cargo target dir CI caches serves the tests and this build alike.
sam build --beta-features --build-in-source --build-dir target/sam-build \
  --parameter-overrides Architecture=x86_64

missing=0
for function in $(python3 - <<'PY'
import re
text = open("template.yaml").read()
for name in re.findall(r"^  (\w+):\n    Type: AWS::Serverless::Function", text, re.M):
    print(name)
PY
); do
  if [ -f "target/sam-build/$function/bootstrap" ]; then
    printf '%-28s bootstrap %s bytes\n' "$function" "$(stat -c %s "target/sam-build/$function/bootstrap")"
  else
    echo "$function: no bootstrap in target/sam-build/$function" >&2
    missing=1
  fi
done
exit $missing
