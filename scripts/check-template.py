#!/usr/bin/env python3
"""Checks in template.yaml what cfn-lint cannot, for every network set-up it offers.

For each scenario (a set of parameter values: the template's own network or an existing VPC,
with or without VPC endpoints, RDS Proxy, existing database and broker) the template is
resolved the way CloudFormation would (conditions, !If, !Ref to parameters; resources stay
symbolic) and then:

  1. every function in the VPC reaches what it calls: PostgreSQL (the proxy when the
     functions use it, migrate always the database itself), the broker on 5671, Secrets
     Manager and X-Ray on 443 (the stack's endpoints, or an egress to anywhere when the VPC
     reaches them some other way), and migrate S3 for its answer to CloudFormation. A flow
     passes when one of the source's groups has an egress rule covering the port towards
     the target's group (or 0.0.0.0/0) and the target's group admits the source's group;
  2. the MQ event source's pollers, which run with the broker's security groups in its
     subnets, reach the broker and the Lambda, STS and Secrets Manager endpoints;
  3. RDS Proxy reaches the database and may read the secret it logs in with;
  4. every security group rule is used by one of those flows (exactly the needed rules);
  5. every resource a kept resource refers to is itself kept under the scenario;
  6. every alarm notifies on ALARM and OK, and names TreatMissingData; the alarms and the
     dashboard cover the metrics the functions emit, and the dashboard's body is JSON;
  7. every function logs to a log group of its own (LoggingConfig.LogGroup, with a
     retention, not named after the function so it exists first);
  8. every function's policies name exactly the secrets it reads, and only migrate gets the
     database's admin secret; the functions connect with the application role's secret;
  9. migrations run on every new version of migrate, through a ServiceToken that never
     changes, before every other function.

`--self-test` breaks copies of the template in the ways the checks exist for and fails
unless each broken copy is caught (and the template itself passes).
"""

import copy
import ipaddress
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# What each function reads at run time, by its binary (functions/<binary>/src/main.rs): the
# secrets named by these variables, and whether it calls the database and the broker. The
# template must give it exactly these secrets.
USES = {
    "create-order": {"DATABASE_SECRET_ARN", "BROKER_SECRET_ARN"},
    "create-product": {"DATABASE_SECRET_ARN"},
    "update-order-status": {"DATABASE_SECRET_ARN", "BROKER_SECRET_ARN"},
    "products-api": {"DATABASE_SECRET_ARN"},
    "orders-api": {"DATABASE_SECRET_ARN"},
    "process-orders": {"DATABASE_SECRET_ARN", "BROKER_SECRET_ARN"},
    "outbox-relay": {"DATABASE_SECRET_ARN", "BROKER_SECRET_ARN"},
    "redrive-parked": {"BROKER_SECRET_ARN"},
    "migrate": {"DATABASE_SECRET_ARN", "DATABASE_APP_SECRET_ARN", "BROKER_SECRET_ARN"},
}
MIGRATE = "migrate"

# The metrics the functions emit (namespace METRICS_NAMESPACE) and those that must be alarmed.
EMF_METRICS = [
    "OrdersPlaced", "OrdersRefused", "StatusChanges", "ProcessorBatchSize", "MessagesApplied",
    "MessagesUnchanged", "MessagesRetried", "MessagesParked", "PublishFailures",
    "OldestUnpublishedAge", "UnsettledOrders", "QueueDepth", "ParkedMessages", "StockDrift",
]
ALARMED_EMF = ["ParkedMessages", "StockDrift", "OldestUnpublishedAge", "UnsettledOrders"]
ALARMED_AWS = ["AWS/Lambda:Errors", "AWS/ApiGateway:5xx", "AWS/RDS:CPUUtilization",
               "AWS/RDS:FreeStorageSpace", "AWS/RDS:DatabaseConnections",
               "AWS/AmazonMQ:RabbitMQMemUsed"]

EXISTING = {
    "CreateNetwork": "false", "VpcId": "vpc-0123456789abcdef0",
    "VpcSubnetIds": "subnet-0aaaaaaaaaaaaaaaa,subnet-0bbbbbbbbbbbbbbbb",
}
EXISTING_DB = {
    "CreateDatabase": "false",
    "DatabaseSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:admin-AbCdEf",
    "DatabaseSecurityGroupId": "sg-0dddddddddddddddd", "DatabaseHost": "db.example.internal",
}
EXISTING_BROKER = {
    "CreateBroker": "false",
    "BrokerArn": "arn:aws:mq:eu-west-1:123456789012:broker:shop:b-1234abcd",
    "BrokerSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mq-AbCdEf",
    "BrokerAmqpsEndpoint": "amqps://b-1234abcd.mq.eu-west-1.amazonaws.com:5671",
    "BrokerSecurityGroupId": "sg-0eeeeeeeeeeeeeeee",
}
SCENARIOS = {
    "own network, defaults": {},
    "own network, RDS Proxy, clustered broker": {"UseRdsProxy": "true", "BrokerDeploymentMode": "CLUSTER_MULTI_AZ"},
    "existing VPC with endpoints created": {**EXISTING, "CreateVpcEndpoints": "true", "VpcRouteTableIds": "rtb-0ccccccccccccccccc"},
    "existing VPC with NAT, RDS Proxy": {**EXISTING, "UseRdsProxy": "true"},
    "existing VPC with endpoints, existing database and broker": {
        **EXISTING, **EXISTING_DB, **EXISTING_BROKER, "CreateVpcEndpoints": "true",
        "VpcSecurityGroupIds": "sg-0fffffffffffffffff"},
    "existing VPC with NAT, existing database and broker": {**EXISTING, **EXISTING_DB, **EXISTING_BROKER},
}
# Parameter sets the template's Rules must refuse.
REFUSED = {
    "existing VPC without subnets": {"CreateNetwork": "false", "VpcId": "vpc-0123456789abcdef0"},
    "existing database without DatabaseHost (the application secret has no host)": {
        **EXISTING_DB, "DatabaseHost": ""},
    "RDS Proxy in front of an existing database": {**EXISTING_DB, "UseRdsProxy": "true"},
    "existing broker without its security group": {**EXISTING_BROKER, "BrokerSecurityGroupId": ""},
}

NO_VALUE = object()


class CfnLoader(yaml.SafeLoader):
    """CloudFormation YAML: short-form tags become the long form ({'Ref': ...}, {'Fn::If': ...})."""


def _tagged(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _tagged)


def load_template(path=ROOT / "template.yaml"):
    return yaml.load(path.read_text(), Loader=CfnLoader)


class Sym(str):
    """A value known only once deployed: a resource's Ref or attribute, a pseudo parameter."""


class Resolver:
    def __init__(self, template, parameters):
        self.template = template
        self.params = {}
        for name, spec in (template.get("Parameters") or {}).items():
            value = parameters.get(name, spec.get("Default"))
            if value is None:
                value = {"JwtIssuer": "https://issuer.example.com", "JwtAudience": "client"}.get(name, "")
            value = str(value)
            if spec.get("Type", "").startswith(("CommaDelimitedList", "List<")):
                value = value.split(",")
            self.params[name] = value
        self.conditions = {}
        self.refs_missing = []

    def condition(self, name):
        if name not in self.conditions:
            self.conditions[name] = bool(self.value(self.template["Conditions"][name]))
        return self.conditions[name]

    def kept(self, resource):
        return "Condition" not in resource or self.condition(resource["Condition"])

    def resource_exists(self, name, where):
        resource = self.template["Resources"].get(name)
        if resource is None:
            base = name.split(".", 1)[0]
            resource = self.template["Resources"].get(base)
        if resource is not None and not self.kept(resource):
            self.refs_missing.append(f"{where} refers to {name}, which this scenario does not create")

    def value(self, node, where=""):
        if isinstance(node, list):
            items = [self.value(item, where) for item in node]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                if arg == "AWS::NoValue":
                    return NO_VALUE
                if arg in self.params:
                    return self.params[arg]
                if not arg.startswith("AWS::"):
                    self.resource_exists(arg, where)
                return Sym(f"ref:{arg}")
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::If":
                cond, yes, no = arg
                return self.value(yes if self.condition(cond) else no, where)
            if key == "Fn::Equals":
                left, right = (self.value(a, where) for a in arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self.value(arg[0], where)
            if key == "Fn::And":
                return all(self.value(a, where) for a in arg)
            if key == "Fn::Or":
                return any(self.value(a, where) for a in arg)
            if key == "Fn::Contains":
                items, item = (self.value(a, where) for a in arg)
                return item in items
            if key == "Fn::GetAtt":
                self.resource_exists(arg[0], where)
                return Sym(f"att:{arg[0]}.{arg[1]}")
            if key == "Fn::Join":
                sep, items = arg[0], self.value(arg[1], where)
                if isinstance(items, list) and all(isinstance(i, str) for i in items):
                    return sep.join(items)
                return Sym(f"join:{items}")
            if key == "Fn::Split":
                sep, text = arg[0], self.value(arg[1], where)
                return text.split(sep) if isinstance(text, str) and not isinstance(text, Sym) else Sym(f"split:{text}")
            if key == "Fn::Select":
                index, items = int(self.value(arg[0], where)), self.value(arg[1], where)
                if isinstance(items, list):
                    return items[index] if index < len(items) else Sym(f"select-out-of-range:{index}")
                return Sym(f"select:{index}:{items}")
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                self.value(variables, where)
                for word in _sub_names(text):
                    base = word.split(".", 1)[0]
                    if base not in self.params and base not in variables and not base.startswith("AWS::"):
                        self.resource_exists(base, where)
                return Sym(f"sub:{text}")
            if key.startswith("Fn::"):
                self.value(arg, where)
                return Sym(f"{key}:{json.dumps(arg, default=str)[:60]}")
        return {k: v for k, v in ((k, self.value(v, f"{where}.{k}")) for k, v in node.items()) if v is not NO_VALUE}


def _sub_names(text):
    names, rest = [], text
    while "${" in rest:
        start = rest.index("${") + 2
        end = rest.index("}", start)
        if not rest[start:].startswith("!"):
            names.append(rest[start:end])
        rest = rest[end + 1:]
    return names


def merge(globals_, local):
    """SAM's Globals: maps merge key by key (the function's own value wins), others are replaced."""
    if isinstance(globals_, dict) and isinstance(local, dict):
        merged = dict(globals_)
        for key, value in local.items():
            merged[key] = merge(globals_.get(key), value) if key in globals_ else value
        return merged
    return local


class Network:
    """Security groups and their rules under one scenario, and the flows they allow."""

    def __init__(self, resources):
        self.rules = []  # (group, direction, protocol, from, to, peer, name)
        for name, resource in resources.items():
            props = resource.get("Properties", {})
            if resource["Type"] == "AWS::EC2::SecurityGroup":
                group = Sym(f"ref:{name}")
                for direction, key in (("egress", "SecurityGroupEgress"), ("ingress", "SecurityGroupIngress")):
                    for index, rule in enumerate(props.get(key, [])):
                        self._add(group, direction, rule, f"{name}.{key}[{index}]")
            elif resource["Type"] == "AWS::EC2::SecurityGroupEgress":
                self._add(props["GroupId"], "egress", props, name)
            elif resource["Type"] == "AWS::EC2::SecurityGroupIngress":
                self._add(props["GroupId"], "ingress", props, name)
        self.used = set()

    def _add(self, group, direction, rule, name):
        peer = (rule.get("DestinationSecurityGroupId") or rule.get("SourceSecurityGroupId")
                or rule.get("CidrIp") or rule.get("DestinationPrefixListId"))
        low, high = int(rule.get("FromPort", -1)), int(rule.get("ToPort", -1))
        self.rules.append((group, direction, str(rule.get("IpProtocol")), low, high, peer, name))

    def _find(self, group, direction, port, peer_groups):
        for rule in self.rules:
            g, d, proto, low, high, peer, name = rule
            if g != group or d != direction or proto not in ("tcp", "-1", "6"):
                continue
            if not (proto == "-1" or low <= port <= high):
                continue
            # An egress to 0.0.0.0/0 reaches every address; otherwise the peer must be named.
            if (direction == "egress" and _is_anywhere(peer)) or (peer_groups and peer in peer_groups):
                return name
        return None

    def flow(self, sources, targets, port, external=()):
        """Whether a member of `sources` may open `port` to a member of `targets` (groups,
        or None for an address outside the VPC's groups). Groups in `external` belong to
        someone else: only the rules this stack adds to them are known."""
        for source in sources:
            for target in (targets if targets is not None else [None]):
                egress = self._find(source, "egress", port, [target] if target is not None else None)
                if egress is None:
                    continue
                if target is None:
                    self.used.add(egress)
                    return True
                ingress = self._find(target, "ingress", port, [source])
                if ingress is not None:
                    self.used.update([egress, ingress])
                    return True
        return False

    def ingress_admits(self, target, source, port):
        name = self._find(target, "ingress", port, [source])
        if name:
            self.used.add(name)
        return name is not None

    def unused(self):
        return [r[6] for r in self.rules if r[6] not in self.used and not _is_placeholder(r)]


def _is_anywhere(peer):
    return isinstance(peer, str) and not isinstance(peer, Sym) and peer == "0.0.0.0/0"


def _is_placeholder(rule):
    """The rule that replaces a group's default allow-all egress and matches nothing."""
    _, direction, proto, _, _, peer, _ = rule
    try:
        return direction == "egress" and proto == "icmp" and ipaddress.ip_network(peer).prefixlen == 32 \
            and str(peer).startswith("255.255.255.255")
    except (TypeError, ValueError):
        return False


def secrets_in_policies(policies):
    """Secret ARNs a function's Policies allow reading, and any wildcard grant."""
    secrets, problems = [], []
    for policy in policies or []:
        if isinstance(policy, str):
            problems.append(f"managed policy {policy} (name what the function needs)")
            continue
        for kind, body in policy.items():
            if kind == "AWSSecretsManagerGetSecretValuePolicy":
                secrets.append(body["SecretArn"])
            elif kind == "Statement":
                for statement in body:
                    actions = statement.get("Action", [])
                    actions = [actions] if isinstance(actions, str) else actions
                    if any(a.startswith("secretsmanager:") or a == "*" for a in actions):
                        resource = statement.get("Resource")
                        if resource == "*" or resource is None:
                            problems.append("secretsmanager on every resource")
                        else:
                            secrets.extend(resource if isinstance(resource, list) else [resource])
                    elif not all(a in ("ec2:DescribeSecurityGroups", "ec2:DescribeVpcs") for a in actions):
                        problems.append(f"statement {statement.get('Sid', '?')} grants {actions}")
            else:
                problems.append(f"policy template {kind} (only secret reads are expected)")
    return secrets, problems


def check_scenario(template, label, parameters):
    problems = []
    resolver = Resolver(template, parameters)

    def fail(message):
        problems.append(f"[{label}] {message}")

    for rule_name, rule in (template.get("Rules") or {}).items():
        if "RuleCondition" in rule and not resolver.value(rule["RuleCondition"]):
            continue
        for assertion in rule["Assertions"]:
            if not resolver.value(assertion["Assert"]):
                fail(f"rule {rule_name} refuses these parameters: {assertion['AssertDescription']}")

    resources = {name: {**res, "Properties": resolver.value(res.get("Properties", {}), name)}
                 for name, res in template["Resources"].items() if resolver.kept(res)}
    for message in sorted(set(resolver.refs_missing)):
        fail(message)
    globals_fn = resolver.value((template.get("Globals") or {}).get("Function", {}), "Globals")
    functions = {name: merge(globals_fn, res["Properties"]) for name, res in resources.items()
                 if res["Type"] == "AWS::Serverless::Function"}
    binaries = {name: template["Resources"][name]["Metadata"]["BuildProperties"]["Binary"] for name in functions}
    net = Network(resources)

    def groups_of(name, key):
        return list(resources[name]["Properties"].get(key, [])) if name in resources else []

    endpoints = {}
    for name, res in resources.items():
        if res["Type"] == "AWS::EC2::VPCEndpoint":
            service = str(res["Properties"]["ServiceName"]).rsplit(".", 1)[-1].rstrip("}")
            endpoints[service] = res["Properties"]
    interface = {s: p for s, p in endpoints.items() if p.get("VpcEndpointType") == "Interface"}
    endpoint_groups = sorted({g for p in interface.values() for g in p.get("SecurityGroupIds", [])})
    for service, props in interface.items():
        if props.get("PrivateDnsEnabled") is not True:
            fail(f"the {service} endpoint has no private DNS: the SDKs' default endpoints would not resolve to it")
    if interface:
        missing = {"secretsmanager", "lambda", "sts", "xray"} - set(interface)
        if missing:
            fail(f"interface endpoints missing for {sorted(missing)}")
    if "Vpc" in resources:
        vpc = resources["Vpc"]["Properties"]
        if not (vpc.get("EnableDnsSupport") is True and vpc.get("EnableDnsHostnames") is True):
            fail("the VPC needs EnableDnsSupport and EnableDnsHostnames for the endpoints' private DNS")

    def reach_aws(source_groups, who, services):
        if interface:
            for service in services:
                groups = interface[service].get("SecurityGroupIds", []) if service in interface else []
                if not net.flow(source_groups, groups, 443):
                    fail(f"{who} cannot reach the {service} endpoint on 443")
        elif not net.flow(source_groups, None, 443):
            fail(f"{who} has no egress on 443 towards the AWS APIs (NAT)")

    for name, fn in functions.items():
        binary = binaries[name]
        env = (fn.get("Environment") or {}).get("Variables", {})
        vpc = fn.get("VpcConfig") or {}
        groups, subnets = vpc.get("SecurityGroupIds") or [], vpc.get("SubnetIds") or []
        if not groups or not subnets or "" in subnets:
            fail(f"{name} is not in the VPC (SecurityGroupIds {groups}, SubnetIds {subnets})")
            continue
        uses = USES.get(binary)
        if uses is None:
            fail(f"{name}: binary {binary} is not in check-template.py's USES table")
            continue
        if "DATABASE_SECRET_ARN" in uses:
            host = str(env.get("DATABASE_HOST", ""))
            if not host and binary != MIGRATE:
                fail(f"{name} has no DATABASE_HOST, and the application role's secret has no host")
            if host.startswith("att:DatabaseProxy."):
                target, port = groups_of("DatabaseProxy", "VpcSecurityGroupIds"), 5432
            elif host.startswith("att:Database."):
                target, port = groups_of("Database", "VPCSecurityGroups"), 5432
            else:
                target, port = [resolver.params["DatabaseSecurityGroupId"]], int(resolver.params["DatabasePort"])
            if binary == MIGRATE and host.startswith("att:DatabaseProxy."):
                fail(f"{name} goes through the proxy: migrations and role management need the database itself")
            if binary != MIGRATE and "DatabaseProxy" in resources and not host.startswith("att:DatabaseProxy."):
                fail(f"{name} bypasses RDS Proxy ({host})")
            if not net.flow(groups, target, port):
                fail(f"{name} cannot reach PostgreSQL ({host}:{port}) from {groups}")
            multiplexed = str(env.get("DATABASE_MULTIPLEXED", "false"))
            if binary != MIGRATE and ("DatabaseProxy" in resources) != (multiplexed == "true"):
                fail(f"{name}: DATABASE_MULTIPLEXED is {multiplexed} although the proxy is {'on' if 'DatabaseProxy' in resources else 'off'}")
        if "BROKER_SECRET_ARN" in uses:
            target = groups_of("Broker", "SecurityGroups") or [resolver.params["BrokerSecurityGroupId"]]
            if not net.flow(groups, target, 5671):
                fail(f"{name} cannot reach the broker on 5671 from {groups}")
        services = ["secretsmanager"] + (["xray"] if fn.get("Tracing") == "Active" else [])
        reach_aws(groups, name, services)
        if binary == MIGRATE:
            s3 = endpoints.get("s3")
            via_nat = not interface and not s3
            if not (s3 or via_nat or resolver.params.get("VpcRouteTableIds") == [""]):
                fail(f"{name} has no way to S3 for its answer to CloudFormation")
            if not net.flow(groups, None, 443):
                fail(f"{name} has no egress on 443 to S3 (its answer to CloudFormation)")

        # --- the MQ event source's pollers -----------------------------------------------
        for event_name, event in (fn.get("Events") or {}).items():
            if event.get("Type") != "MQ":
                continue
            broker_groups = groups_of("Broker", "SecurityGroups")
            who = f"{name}/{event_name} pollers"
            if broker_groups:
                if not net.flow(broker_groups, broker_groups, 5671):
                    fail(f"{who} (the broker's groups {broker_groups}) cannot reach the broker on 5671")
                reach_aws(broker_groups, who, ["lambda", "sts", "secretsmanager"])
            else:
                # An existing broker's groups are the operator's (README): only the ingress
                # this stack adds on its endpoints is known.
                existing = resolver.params["BrokerSecurityGroupId"]
                for service in (["lambda", "sts", "secretsmanager"] if interface else []):
                    for group in interface.get(service, {}).get("SecurityGroupIds", []):
                        if not net.ingress_admits(group, existing, 443):
                            fail(f"{who}: the {service} endpoint does not admit the broker's group {existing}")

    # --- RDS Proxy ---------------------------------------------------------------------------
    if "DatabaseProxy" in resources:
        proxy = resources["DatabaseProxy"]["Properties"]
        if proxy.get("RequireTLS") is not True or proxy.get("EngineFamily") != "POSTGRESQL":
            fail("DatabaseProxy must be POSTGRESQL with RequireTLS")
        if not net.flow(proxy.get("VpcSecurityGroupIds", []), groups_of("Database", "VPCSecurityGroups"), 5432):
            fail("RDS Proxy cannot reach the database on 5432")
        auth_secrets = [a.get("SecretArn") for a in proxy.get("Auth", [])]
        role = resources.get(str(proxy.get("RoleArn", "")).removeprefix("att:").split(".")[0], {})
        readable = [s["Resource"] for p in role.get("Properties", {}).get("Policies", [])
                    for s in p["PolicyDocument"]["Statement"] if "secretsmanager:GetSecretValue" in str(s["Action"])]
        if auth_secrets != ["ref:AppDatabaseSecret"] or readable != auth_secrets:
            fail(f"RDS Proxy must log in with the application secret and read only it (auth {auth_secrets}, role {readable})")

    for rule in net.unused():
        fail(f"security group rule {rule} serves no flow this template needs")

    # --- secrets and policies ------------------------------------------------------------------
    admin = str(functions.get("MigrateFunction", {}).get("Environment", {}).get("Variables", {}).get("DATABASE_SECRET_ARN"))
    for name, fn in functions.items():
        binary, env = binaries[name], (fn.get("Environment") or {}).get("Variables", {})
        expected = sorted(str(env.get(var)) for var in USES.get(binary, ()))
        granted, policy_problems = secrets_in_policies(fn.get("Policies"))
        for problem in policy_problems:
            fail(f"{name}: {problem}")
        if sorted(map(str, granted)) != expected:
            fail(f"{name} may read the secrets {sorted(map(str, granted))}, but reads {expected}")
        if binary != MIGRATE:
            if str(env.get("DATABASE_SECRET_ARN")) != "ref:AppDatabaseSecret":
                fail(f"{name} connects with {env.get('DATABASE_SECRET_ARN')}, not the application role's secret")
            if admin in map(str, granted):
                fail(f"{name} may read the database's admin secret")
    app = template["Resources"].get("AppDatabaseSecret", {}).get("Properties", {}).get("GenerateSecretString", {})
    if json.loads(app.get("SecretStringTemplate", "{}")).get("username") != "oms_app" or not app.get("ExcludePunctuation"):
        fail("AppDatabaseSecret must generate {username: oms_app, password} without punctuation")

    # --- log groups ------------------------------------------------------------------------------
    seen = {}
    for name, fn in functions.items():
        group = str((fn.get("LoggingConfig") or {}).get("LogGroup", ""))
        target = resources.get(group.removeprefix("ref:")) if group.startswith("ref:") else None
        if target is None or target["Type"] != "AWS::Logs::LogGroup":
            fail(f"{name} has no LoggingConfig.LogGroup naming a log group of this template")
            continue
        if "RetentionInDays" not in target["Properties"]:
            fail(f"{group} has no RetentionInDays")
        if name in str(template["Resources"][group.removeprefix("ref:")].get("Properties")):
            fail(f"{group} is named after {name}, so it would be created after the function")
        if group in seen:
            fail(f"{name} and {seen[group]} share {group}")
        seen[group] = name

    # --- alarms and dashboard -----------------------------------------------------------------------
    alarmed = set()
    namespace = str(globals_fn.get("Environment", {}).get("Variables", {}).get("METRICS_NAMESPACE"))
    for name, res in resources.items():
        if res["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = res["Properties"]
        for key in ("AlarmActions", "OKActions"):
            if not props.get(key):
                fail(f"alarm {name} has no {key}")
        if "TreatMissingData" not in props:
            fail(f"alarm {name} does not say how missing data counts (TreatMissingData)")
        metrics = [props] + [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
        for metric in metrics:
            if "MetricName" in metric:
                alarmed.add(f"{metric['Namespace']}:{metric['MetricName']}")
    for metric in ALARMED_EMF:
        if f"{namespace}:{metric}" not in alarmed:
            fail(f"no alarm on {metric} in {namespace}")
    for metric in ALARMED_AWS:
        if metric.startswith("AWS/RDS") and "Database" not in resources:
            continue
        if metric not in alarmed:
            fail(f"no alarm on {metric}")
    dashboards = [res for res in template["Resources"].values() if res["Type"] == "AWS::CloudWatch::Dashboard"]
    body = json.dumps(dashboards[0]["Properties"]) if dashboards else ""
    for metric in EMF_METRICS:
        if not re.search(rf"\b{metric}\b", body):
            fail(f"the dashboard does not show {metric}")
    alarm_names = [n for n, r in template["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"]
    for alarm in alarm_names:
        if f"{alarm}.Arn" not in body:
            fail(f"the dashboard's alarm widget does not show {alarm}")

    # --- migrations ----------------------------------------------------------------------------------
    migrate = next((n for n, b in binaries.items() if b == MIGRATE), None)
    migration = resources.get("Migration", {}).get("Properties", {})
    if migrate is None or not functions[migrate].get("AutoPublishAlias"):
        fail("migrate needs AutoPublishAlias, so each change publishes a version")
    elif migration.get("ServiceToken") != f"ref:{migrate}.Alias":
        fail(f"Migration's ServiceToken must be !Ref {migrate}.Alias (a custom resource's ServiceToken cannot change)")
    elif migration.get("MigrateVersion") != f"ref:{migrate}.Version":
        fail(f"Migration must pass MigrateVersion: !Ref {migrate}.Version (rollbacks are told by it)")
    if "DeployVersion" in (template.get("Parameters") or {}):
        fail("DeployVersion is back: migrations follow migrate's published version")
    if "DatabaseProxy" in resources and "ref:DatabaseProxyTargetGroup" not in str(migration):
        fail("with the proxy, Migration (and so every function) must wait for the proxy's target group")
    for name in functions:
        if name != migrate and "Migration" not in (template["Resources"][name].get("DependsOn") or []) \
                and template["Resources"][name].get("DependsOn") != "Migration":
            fail(f"{name} does not depend on Migration: it could run against the old schema")
    return problems


def dashboard_problems(template):
    """The dashboard body must be valid JSON with and without the database's widgets: a
    broken body fails the deploy. Numbers stand in for numeric parameters, text for the rest."""
    dashboard = template["Resources"].get("Dashboard", {}).get("Properties", {}).get("DashboardBody", {})
    if "Fn::Sub" not in dashboard:
        return ["the Dashboard's body is not a !Sub of a JSON document"]
    body, variables = dashboard["Fn::Sub"]
    numeric = {n for n, p in template.get("Parameters", {}).items() if p.get("Type") == "Number"}
    problems = []
    for with_database in (True, False):
        text = body
        for name, value in variables.items():
            if isinstance(value, dict) and "Fn::If" in value:
                chosen = value["Fn::If"][1] if with_database else value["Fn::If"][2]
                text = text.replace("${" + name + "}", chosen.get("Fn::Sub", "") if isinstance(chosen, dict) else chosen)
        text = re.sub(r"\$\{([^}!]+)\}", lambda m: "1" if m.group(1) in numeric else "x", text)
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            problems.append(f"the dashboard body ({'with' if with_database else 'without'} the database) is not JSON: {error}")
    return problems


def check(template):
    problems = dashboard_problems(template)
    for label, parameters in SCENARIOS.items():
        problems += check_scenario(template, label, parameters)
    for label, parameters in REFUSED.items():
        refused = check_scenario(template, label, parameters)
        if not any("refuses these parameters" in p for p in refused):
            problems.append(f"[{label}] the Rules accept parameters they must refuse")
    return problems


def _drop(template, name):
    del template["Resources"][name]


def _set(path, value):
    def apply(template):
        node = template
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return apply


def _remove(path):
    def apply(template):
        node = template
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return apply


MUTATIONS = {
    "the pollers' self-ingress on the broker removed": (
        lambda t: _drop(t, "BrokerFromPollers"), "pollers"),
    "the endpoints no longer admit the pollers": (
        lambda t: _drop(t, "EndpointsFromPollers"), "endpoint on 443"),
    "the functions lose their egress to the endpoints": (
        lambda t: _drop(t, "FunctionsToEndpoints"), "cannot reach the secretsmanager endpoint"),
    "the database no longer admits the functions": (
        lambda t: _drop(t, "DatabaseFromFunctions"), "cannot reach PostgreSQL"),
    "the proxy's egress to the database removed": (
        lambda t: _drop(t, "ProxyToDatabase"), "RDS Proxy cannot reach the database"),
    "an existing broker's group not admitted to the endpoints": (
        lambda t: _drop(t, "EndpointsFromExistingBrokerPollers"), "does not admit the broker's group"),
    "an extra, unneeded rule": (
        lambda t: t["Resources"].__setitem__("FunctionsToSsh", {
            "Type": "AWS::EC2::SecurityGroupEgress",
            "Properties": {"GroupId": {"Ref": "FunctionsSecurityGroup"}, "IpProtocol": "tcp",
                           "FromPort": 22, "ToPort": 22, "CidrIp": "0.0.0.0/0"}}), "serves no flow"),
    "an alarm without OKActions": (
        _remove(["Resources", "StockDriftAlarm", "Properties", "OKActions"]), "has no OKActions"),
    "no alarm on parked messages": (
        lambda t: _drop(t, "ParkedMessagesAlarm"), "no alarm on ParkedMessages"),
    "a function without its own log group": (
        _remove(["Resources", "OrdersApiFunction", "Properties", "LoggingConfig"]), "no LoggingConfig.LogGroup"),
    "two functions sharing a log group": (
        _set(["Resources", "OrdersApiFunction", "Properties", "LoggingConfig", "LogGroup"],
             {"Ref": "ProductsApiLogGroup"}), "share"),
    "create-order may read the admin secret": (
        lambda t: t["Resources"]["CreateOrderFunction"]["Properties"]["Policies"].append(
            {"AWSSecretsManagerGetSecretValuePolicy": {"SecretArn": {"Fn::If": [
                "ShouldCreateDatabase", {"Fn::GetAtt": ["Database", "MasterUserSecret.SecretArn"]},
                {"Ref": "DatabaseSecretArn"}]}}}), "may read the secrets"),
    "redrive-parked may read the database secret": (
        lambda t: t["Resources"]["RedriveParkedFunction"]["Properties"]["Policies"].append(
            {"AWSSecretsManagerGetSecretValuePolicy": {"SecretArn": {"Ref": "AppDatabaseSecret"}}}),
        "may read the secrets"),
    "functions connect with the admin secret": (
        _set(["Globals", "Function", "Environment", "Variables", "DATABASE_SECRET_ARN"],
             {"Fn::GetAtt": ["Database", "MasterUserSecret.SecretArn"]}), "not the application role's secret"),
    "migrate through the proxy": (
        _remove(["Resources", "MigrateFunction", "Properties", "Environment", "Variables", "DATABASE_HOST"]),
        "goes through the proxy"),
    "a custom resource ServiceToken that changes with every version": (
        _set(["Resources", "Migration", "Properties", "ServiceToken"], {"Ref": "MigrateFunction.Version"}),
        "ServiceToken"),
    "a function that no longer waits for the migrations": (
        _remove(["Resources", "CreateOrderFunction", "DependsOn"]), "does not depend on Migration"),
    "functions without DATABASE_HOST": (
        _remove(["Globals", "Function", "Environment", "Variables", "DATABASE_HOST"]), "no DATABASE_HOST"),
    "a dashboard body that is not JSON": (
        lambda t: t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"].__setitem__(
            0, t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0] + ","), "not JSON"),
    "the Lambda endpoint forgotten": (
        lambda t: _drop(t, "LambdaEndpoint"), "lambda"),
    "a reference to a resource a scenario does not create": (
        _set(["Resources", "CreateOrderFunction", "Properties", "Description"], {"Ref": "DatabaseProxy"}),
        "does not create"),
    "the rule requiring DatabaseHost removed": (
        lambda t: t["Rules"].pop("ExistingDatabaseHasAHost"), "Rules accept"),
}


def self_test(template):
    failures = []
    own = check(template)
    if own:
        failures.append("the template itself does not pass:\n  " + "\n  ".join(own))
    for label, (mutate, expected) in MUTATIONS.items():
        broken = copy.deepcopy(template)
        mutate(broken)
        found = check(broken)
        if not any(expected in problem for problem in found):
            failures.append(f"not caught: {label} (expected a problem with {expected!r}; got {found[:3]})")
        else:
            print(f"  caught: {label}")
    return failures


def main(argv):
    template = load_template()
    if "--self-test" in argv:
        failures = self_test(template)
        for failure in failures:
            print(f"error: {failure}", file=sys.stderr)
        if failures:
            return 1
        print(f"check-template self-test: all {len(MUTATIONS)} broken copies caught, the template passes")
        return 0
    problems = check(template)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check-template: {len(SCENARIOS)} network scenarios reach what they call; "
          f"{len(REFUSED)} refused parameter sets refused; alarms, log groups, secrets, migrations as required")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
