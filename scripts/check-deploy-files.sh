#!/usr/bin/env bash
# Checks the deployment files against each other and against the linters:
#   1. cfn-lint on template.yaml, with the serverless rules (cfn-lint-serverless) when they
#      can be installed;
#   2. openapi.yaml is a valid OpenAPI 3.0 document (openapi-spec-validator);
#   3. every function's binary is a crate under functions/;
#   4. the routes template.yaml gives API Gateway, the operations openapi.yaml describes and
#      the route keys of the code (shared/src/http/mod.rs, Endpoint::route_key) are the same
#      set of (METHOD, path);
#   5. who may call them (API.md, Authorization), which no linter knows: the API's default
#      authorizer is a JWT authorizer; every route uses it except the public catalogue reads
#      (GET /products, GET /products/{id}), which set `Auth: Authorizer: NONE`; no route or
#      authorizer has AuthorizationScopes (roles are the functions' business: API Gateway
#      would answer a missing scope with its own {"message":"Forbidden"}, not the
#      /problems/forbidden clients switch on); in openapi.yaml exactly those two operations
#      are `security: []`, every other one has the bearer JWT scheme and documents 401.
#   6. scripts/check-template.py: what lint cannot see in template.yaml, for every network
#      set-up (each function reaches what it calls, the MQ event source's pollers reach the
#      endpoints they need, every rule is needed, every alarm has actions, every function
#      its own log group and only its secrets, migrations keyed on migrate's version), and
#      its --self-test, which breaks copies of the template and fails unless each is caught.
# Exits nonzero on any finding. Installs what it needs with pip when it is missing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check "$@"
}

has_module() {
  python3 -c "import $1" >/dev/null 2>&1
}

if ! command -v cfn-lint >/dev/null 2>&1; then
  echo "installing cfn-lint"
  pip_install cfn-lint
fi
if ! has_module yaml; then
  echo "installing PyYAML"
  pip_install pyyaml
fi

serverless_rules=()
if has_module cfn_lint_serverless || pip_install cfn-lint-serverless >/dev/null 2>&1; then
  serverless_rules=(--append-rules cfn_lint_serverless.rules)
else
  echo "warning: cfn-lint-serverless could not be installed; linting without the serverless rules" >&2
fi

echo "== cfn-lint template.yaml ${serverless_rules[*]}"
cfn-lint template.yaml "${serverless_rules[@]}"
echo "cfn-lint: no findings"

if ! has_module openapi_spec_validator; then
  pip_install openapi-spec-validator >/dev/null 2>&1 \
    || echo "warning: openapi-spec-validator could not be installed; openapi.yaml is not validated" >&2
fi

echo "== routes and their authorization: template.yaml vs openapi.yaml vs shared/src/http/mod.rs"
python3 - <<'PY'
import re
import sys
from pathlib import Path

import yaml


class CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation YAML: a short-form tag (!Ref, !Sub, !If, ...) keeps its value."""


def _untagged(loader, _suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


CfnLoader.add_multi_constructor("!", _untagged)

problems = []

# The public catalogue (API.md, Authorization): the only routes without a token.
PUBLIC_ROUTES = {("GET", "/products"), ("GET", "/products/{id}")}

# --- template.yaml -------------------------------------------------------------------------
template = yaml.load(Path("template.yaml").read_text(), Loader=CfnLoader)
template_routes = {}
route_authorizers = {}  # route -> the event's Auth.Authorizer, None when it inherits the default

api_auth = (template.get("Resources", {}).get("Api", {}).get("Properties") or {}).get("Auth") or {}
default_authorizer = api_auth.get("DefaultAuthorizer")
authorizers = api_auth.get("Authorizers") or {}
if not default_authorizer:
    problems.append("Api has no Auth.DefaultAuthorizer: every route but the catalogue reads needs the JWT authorizer")
elif "JwtConfiguration" not in (authorizers.get(default_authorizer) or {}):
    problems.append(f"Api's DefaultAuthorizer {default_authorizer!r} is not a JWT authorizer of Api.Auth.Authorizers")
for authorizer_name, authorizer in authorizers.items():
    if "AuthorizationScopes" in (authorizer or {}):
        problems.append(f"authorizer {authorizer_name} has AuthorizationScopes: roles are decided by the functions")
if "Auth" in ((template.get("Globals") or {}).get("HttpApi") or {}):
    problems.append("Globals.HttpApi sets Auth: keep the API's authorization on the Api resource alone")
for name, resource in template.get("Resources", {}).items():
    if resource.get("Type") != "AWS::Serverless::Function":
        continue
    binary = resource.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
    if binary and not Path("functions", binary, "Cargo.toml").is_file():
        problems.append(f"{name} builds binary {binary!r}, but there is no functions/{binary}/Cargo.toml")
    for event_name, event in (resource.get("Properties", {}).get("Events") or {}).items():
        if event.get("Type") != "HttpApi":
            continue
        props = event.get("Properties") or {}
        if props.get("ApiId") != "Api":
            problems.append(f"{name}/{event_name}: ApiId must be !Ref Api (else SAM makes an implicit API)")
        route = (str(props.get("Method", "")).upper(), props.get("Path"))
        if route[0] in ("", "ANY") or not route[1]:
            problems.append(f"{name}/{event_name}: needs an explicit Method and Path, has {route}")
        if route in template_routes:
            problems.append(f"{route} is routed twice: {template_routes[route]} and {name}")
        template_routes[route] = name
        auth = props.get("Auth") or {}
        if "AuthorizationScopes" in auth:
            problems.append(
                f"{name}/{event_name} ({route[0]} {route[1]}) has AuthorizationScopes: roles are decided by"
                " the functions (API Gateway would answer a missing scope with its own Forbidden)"
            )
        route_authorizers[route] = auth.get("Authorizer")

# --- openapi.yaml --------------------------------------------------------------------------
spec = yaml.safe_load(Path("openapi.yaml").read_text())
try:
    from openapi_spec_validator import validate
except ImportError:
    validate = None
if validate is not None:
    try:
        validate(spec)
        print("openapi.yaml: valid OpenAPI", spec.get("openapi"))
    except Exception as error:  # the validator's errors have no common base worth naming
        problems.append(f"openapi.yaml is not a valid OpenAPI document: {error}")
http_methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
spec_operations = {
    (method.upper(), path): operation
    for path, item in (spec.get("paths") or {}).items()
    for method, operation in item.items()
    if method in http_methods
}
spec_routes = set(spec_operations)

# --- the code ------------------------------------------------------------------------------
source = Path("shared/src/http/mod.rs").read_text()
code_routes = {
    (method, path)
    for method, path in re.findall(r'=>\s*"(GET|POST|PUT|PATCH|DELETE) (/[^"]*)"', source)
}
if not code_routes:
    problems.append("found no route keys in shared/src/http/mod.rs (Endpoint::route_key)")


def compare(left_name, left, right_name, right):
    for method, path in sorted(left - right):
        problems.append(f"{method} {path} is in {left_name} but not in {right_name}")


compare("template.yaml", set(template_routes), "openapi.yaml", spec_routes)
compare("openapi.yaml", spec_routes, "template.yaml", set(template_routes))
compare("shared/src/http/mod.rs", code_routes, "template.yaml", set(template_routes))
compare("template.yaml", set(template_routes), "shared/src/http/mod.rs", code_routes)

# --- who may call each route -----------------------------------------------------------------
for route in sorted(set(template_routes) - PUBLIC_ROUTES):
    authorizer = route_authorizers[route]
    if authorizer is not None and authorizer != default_authorizer:
        problems.append(
            f"{route[0]} {route[1]} ({template_routes[route]}) sets Authorizer {authorizer!r}: only"
            " GET /products and GET /products/{id} go without the default JWT authorizer"
        )
for route in sorted(PUBLIC_ROUTES):
    if route not in template_routes:
        problems.append(f"the public catalogue read {route[0]} {route[1]} is not routed in template.yaml")
    elif route_authorizers[route] != "NONE":
        problems.append(f"{route[0]} {route[1]} is the public catalogue: its event needs Auth: Authorizer: NONE")

schemes = (spec.get("components") or {}).get("securitySchemes") or {}
bearer = {name for name, scheme in schemes.items()
          if scheme.get("type") == "http" and str(scheme.get("scheme", "")).lower() == "bearer"}
if not bearer:
    problems.append("openapi.yaml has no http bearer security scheme")
global_security = spec.get("security")
if not global_security or not all(set(req) <= bearer and req for req in global_security):
    problems.append("openapi.yaml: the top-level security must require the bearer JWT scheme")
for route, operation in sorted(spec_operations.items()):
    security = operation.get("security", global_security)
    public = route in PUBLIC_ROUTES
    if public and security != []:
        problems.append(f"openapi.yaml: {route[0]} {route[1]} is the public catalogue and needs `security: []`")
    if not public:
        if not security or not all(set(req) <= bearer and req for req in security):
            problems.append(f"openapi.yaml: {route[0]} {route[1]} must require the bearer JWT scheme")
        if "401" not in (operation.get("responses") or {}):
            problems.append(f"openapi.yaml: {route[0]} {route[1]} needs a token, so documents 401")

for method, path in sorted(template_routes, key=lambda r: (r[1], r[0])):
    access = "public" if route_authorizers[(method, path)] == "NONE" else "JWT"
    print(f"  {method:6} {path:42} {access:6} -> {template_routes[(method, path)]}")
if problems:
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    sys.exit(1)
print(
    f"routes: the {len(template_routes)} routes agree in template.yaml, openapi.yaml and the code;"
    f" all but the {len(PUBLIC_ROUTES)} catalogue reads need a JWT, none has route scopes"
)
PY

echo "== template: reachability, alarms, log groups, least privilege, migrations (scripts/check-template.py)"
python3 scripts/check-template.py
python3 scripts/check-template.py --self-test
