"""The synthesized templates checked the way AWS will use them, offline:

- cfn-lint on every template (errors fail; warnings are printed, not fatal);
- checkov on every template: any finding not acknowledged in infra/checkov.py fails;
- reachability: every function (ours, custom resources, the secret rotation, the MSK pollers)
  can open a connection to each endpoint or resource it calls, through the security groups;
- permissions: the AWS and Kafka actions the code performs, derived from payments_core's
  gateways, are granted to each function on the right resource, and nothing else is.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from payments_core.entrypoints import routes as route_list

from tests.infra.conftest import Synth, resources

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
PAYMENTS_CORE = ROOT / "layers" / "payments_core" / "python" / "payments_core"
BIN = Path(sys.executable).parent

HTTPS, POSTGRES, MSK_IAM = 443, 5432, 9098


# ---- cfn-lint and checkov ---------------------------------------------------------------------


def cfn_lint_errors(templates: list[Path]) -> list[str]:
    result = subprocess.run(
        [str(BIN / "cfn-lint"), "--format", "json", "--", *map(str, templates)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    findings = json.loads(result.stdout or "[]")
    return [
        f"{f['Rule']['Id']} {Path(f['Filename']).name} {f['Location']['Path']}: {f['Message']}"
        for f in findings
        if f["Level"] == "Error"
    ]


def checkov_failures(templates: list[Path]) -> list[str]:
    args = [str(BIN / "checkov"), "--framework", "cloudformation", "-o", "json", "--quiet", "--compact"]
    for template in templates:
        args += ["-f", str(template)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    return [
        f"{c['check_id']} {c['resource']} ({Path(c['file_path']).name}): {c['check_name']}"
        for report in reports
        for c in report.get("results", {}).get("failed_checks", [])
    ]


def test_cfn_lint_finds_no_error(synth: Synth) -> None:
    templates = synth.templates()
    assert len(templates) >= 4  # dev, the pipeline, and the pipeline's staging and prod stages
    assert cfn_lint_errors(templates) == []


def test_checkov_findings_are_fixed_or_acknowledged(synth: Synth) -> None:
    assert checkov_failures(synth.templates()) == []


# ---- reachability -----------------------------------------------------------------------------


def _ref(value: Any) -> str | None:
    """The logical id of a security group from {"Fn::GetAtt": [id, "GroupId"]} / {"Ref": id}."""
    if isinstance(value, dict):
        if "Fn::GetAtt" in value:
            return str(value["Fn::GetAtt"][0])
        if "Ref" in value:
            return str(value["Ref"])
    return None


def _group_ids(value: Any) -> list[str]:
    if isinstance(value, dict):
        ref = _ref(value)
        if ref is not None:
            return [ref]
        return [g for v in value.values() for g in _group_ids(v)]
    if isinstance(value, list):
        return [g for v in value for g in _group_ids(v)]
    return []


@dataclass(frozen=True)
class Rule:
    group: str
    peer_group: str | None
    cidr: str | None
    from_port: int
    to_port: int

    def covers(self, port: int) -> bool:
        return self.from_port <= port <= self.to_port


def _port(value: Any, raw: dict[str, Any]) -> int:
    # A database's default port is rendered as its endpoint's port attribute: read the property.
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        logical, attribute = value["Fn::GetAtt"]
        assert attribute == "Endpoint.Port", value
        return int(raw["Resources"][logical]["Properties"]["Port"])
    return int(value)


def _rule(group: str, props: dict[str, Any], peer_key: str, cidr_key: str, raw: dict[str, Any]) -> Rule:
    protocol = str(props.get("IpProtocol", "-1"))
    if protocol == "-1":
        low, high = 0, 65535
    else:
        low, high = _port(props.get("FromPort", 0), raw), _port(props.get("ToPort", 65535), raw)
    return Rule(group, _ref(props.get(peer_key)), props.get(cidr_key), low, high)


@dataclass
class Network:
    ingress: list[Rule]
    egress: list[Rule]
    vpc_cidr: str

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Network:
        ingress: list[Rule] = []
        egress: list[Rule] = []
        for name, group in resources(raw, "AWS::EC2::SecurityGroup").items():
            props = group["Properties"]
            ingress += [
                _rule(name, r, "SourceSecurityGroupId", "CidrIp", raw)
                for r in props.get("SecurityGroupIngress", [])
            ]
            egress += [
                _rule(name, r, "DestinationSecurityGroupId", "CidrIp", raw)
                for r in props.get("SecurityGroupEgress", [])
            ]
        for rule in resources(raw, "AWS::EC2::SecurityGroupIngress").values():
            props = rule["Properties"]
            ingress.append(_rule(str(_ref(props["GroupId"])), props, "SourceSecurityGroupId", "CidrIp", raw))
        for rule in resources(raw, "AWS::EC2::SecurityGroupEgress").values():
            props = rule["Properties"]
            egress.append(
                _rule(str(_ref(props["GroupId"])), props, "DestinationSecurityGroupId", "CidrIp", raw)
            )
        (vpc,) = resources(raw, "AWS::EC2::VPC").values()
        return cls(ingress, egress, vpc["Properties"]["CidrBlock"])

    def _cidr_covers_vpc(self, cidr: str | None) -> bool:
        if not isinstance(cidr, str):
            return False
        return ipaddress.ip_network(self.vpc_cidr).subnet_of(ipaddress.ip_network(cidr))  # type: ignore[arg-type]

    def admits(self, sources: list[str], targets: list[str], port: int) -> bool:
        """Some source group may send to, and some target group accepts from it, on ``port``."""
        for source in sources:
            for target in targets:
                inbound = any(
                    r.group == target
                    and r.covers(port)
                    and (r.peer_group == source or self._cidr_covers_vpc(r.cidr))
                    for r in self.ingress
                )
                outbound = any(
                    r.group == source and r.covers(port) and (r.peer_group == target or r.cidr == "0.0.0.0/0")
                    for r in self.egress
                )
                if inbound and outbound:
                    return True
        return False


def _clients(raw: dict[str, Any]) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """Everything that runs in the VPC and calls out: {name: (its groups, its environment)}."""
    found: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for name, fn in resources(raw, "AWS::Lambda::Function").items():
        props = fn["Properties"]
        if "VpcConfig" in props:
            found[name] = (
                _group_ids(props["VpcConfig"]["SecurityGroupIds"]),
                props["Environment"]["Variables"],
            )
    for name, app in resources(raw, "AWS::Serverless::Application").items():  # the secret rotations
        groups = _group_ids(app["Properties"]["Parameters"]["vpcSecurityGroupIds"])
        found[name] = (groups, {"ROTATES": "database"})
    for name, cluster in resources(raw, "AWS::MSK::ServerlessCluster").items():  # the mapping's pollers
        groups = _group_ids(cluster["Properties"]["VpcConfigs"][0]["SecurityGroups"])
        found[f"{name} (MSK event pollers)"] = (groups, {"KAFKA_BOOTSTRAP_SERVERS": "pollers"})
    return found


def reachability_failures(raw: dict[str, Any]) -> list[str]:
    net = Network.of(raw)
    endpoints = {
        str(v["Properties"]["ServiceName"]): _group_ids(v["Properties"]["SecurityGroupIds"])
        for v in resources(raw, "AWS::EC2::VPCEndpoint").values()
        if v["Properties"].get("VpcEndpointType") == "Interface"
    }
    aws_endpoints = {k: v for k, v in endpoints.items() if "execute-api" not in k}
    assert {"secretsmanager", "sts", "sqs"} <= {
        re.sub(r".*\.", "", k.strip("'\"")) for k in map(str, aws_endpoints)
    } or (len(aws_endpoints) >= 3)
    (proxy,) = resources(raw, "AWS::RDS::DBProxy").values()
    (instance,) = resources(raw, "AWS::RDS::DBInstance").values()
    proxy_groups = _group_ids(proxy["Properties"]["VpcSecurityGroupIds"])
    instance_groups = _group_ids(instance["Properties"]["VPCSecurityGroups"])
    clusters = resources(raw, "AWS::MSK::ServerlessCluster").values()
    msk_groups = [g for c in clusters for g in _group_ids(c["Properties"]["VpcConfigs"][0]["SecurityGroups"])]

    failures = []
    for name, (groups, env) in _clients(raw).items():
        needs: list[tuple[str, list[str], int]] = [
            (f"endpoint {service}", targets, HTTPS) for service, targets in aws_endpoints.items()
        ]
        if env.get("DB_IAM_AUTH") == "true":
            needs.append(("the RDS proxy", proxy_groups, POSTGRES))
        elif "DB_HOST" in env or "ROTATES" in env:
            needs.append(("the RDS instance", instance_groups, POSTGRES))
        if "KAFKA_BOOTSTRAP_SERVERS" in env and msk_groups:
            needs.append(("MSK", msk_groups, MSK_IAM))
        for what, targets, port in needs:
            if not net.admits(groups, targets, port):
                failures.append(f"{name} cannot reach {what} on {port}")
    return failures


def test_every_function_reaches_what_it_calls(dev_raw: dict[str, Any]) -> None:
    clients = _clients(dev_raw)
    # our seven functions, the two rotations, the MSK pollers
    assert len(clients) >= 10, sorted(clients)
    assert reachability_failures(dev_raw) == []


def test_the_database_and_kafka_admit_nobody_else(dev_raw: dict[str, Any]) -> None:
    net = Network.of(dev_raw)
    (instance,) = resources(dev_raw, "AWS::RDS::DBInstance").values()
    (proxy,) = resources(dev_raw, "AWS::RDS::DBProxy").values()
    (cluster,) = resources(dev_raw, "AWS::MSK::ServerlessCluster").values()
    guarded = [
        *_group_ids(instance["Properties"]["VPCSecurityGroups"]),
        *_group_ids(proxy["Properties"]["VpcSecurityGroupIds"]),
        *_group_ids(cluster["Properties"]["VpcConfigs"][0]["SecurityGroups"]),
    ]
    for group in guarded:
        rules = [r for r in net.ingress if r.group == group]
        assert rules, group
        for rule in rules:
            assert rule.cidr is None and rule.peer_group, rule  # groups only, never an address range
            assert rule.from_port == rule.to_port in (POSTGRES, MSK_IAM), rule  # one port each


# ---- permissions ------------------------------------------------------------------------------


def _module_paths() -> dict[str, Path]:
    """Each payments_core module's file by its name (the last part of its dotted path: the
    names are unique across the layer subpackages)."""
    paths = {p.stem: p for p in PAYMENTS_CORE.rglob("*.py") if p.stem != "__init__"}
    assert len(paths) == len([p for p in PAYMENTS_CORE.rglob("*.py") if p.stem != "__init__"]), (
        "two modules share a name"
    )
    return paths


def _source(module: str) -> str:
    return _module_paths()[module].read_text()


def code_actions() -> dict[str, set[str]]:
    """The AWS/Kafka actions each gateway of payments_core performs, read from its source."""
    import boto3

    actions: dict[str, set[str]] = {}
    # boto3 clients: client("<service>", ...).<operation>(...) -> <signing name>:<Operation>
    for path in sorted(_module_paths().values()):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "generate_db_auth_token"
            ):  # signed locally, on whichever rds client; the proxy checks rds-db:connect
                actions.setdefault(path.stem, set()).add("rds-db:connect")
                continue
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Call)
                and isinstance(node.func.value.func, ast.Attribute)
                and node.func.value.func.attr == "client"
                and node.func.value.args
                and isinstance(node.func.value.args[0], ast.Constant)
            ):
                service = str(node.func.value.args[0].value)
                client = boto3.session.Session().client(service, region_name="ap-southeast-1")
                operation = node.func.attr
                api = client.meta.method_to_api_mapping[operation]
                actions.setdefault(path.stem, set()).add(f"{client.meta.service_model.signing_name}:{api}")
    # Powertools Parameters: get_secret is GetSecretValue
    if "parameters.get_secret(" in _source("secrets"):
        actions.setdefault("secrets", set()).add("secretsmanager:GetSecretValue")
    # The producer: MSK IAM checks Connect, topic describe/write, and for an idempotent producer
    # WriteDataIdempotently on the cluster.
    producer = _source("kafka_gateway")
    if "KafkaProducer(" in producer:
        kafka = {"kafka-cluster:Connect", "kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"}
        if re.search(r'"enable_idempotence":\s*True', producer):
            kafka.add("kafka-cluster:WriteDataIdempotently")
        actions["kafka_gateway"] = kafka
    admin = _source("topics") + _source("partitions")
    if "KafkaAdminClient(" in admin:
        kafka = {"kafka-cluster:Connect", "kafka-cluster:DescribeTopic"}
        if "create_topics(" in admin:
            kafka.add("kafka-cluster:CreateTopic")
        actions["topics"] = kafka
    # Growing the commands topic (payments_core.adapters.kafka.partitions): CreatePartitions is AlterTopic on
    # that topic; the mapping's group's members and committed offsets are DescribeGroup.
    grow = _source("partitions")
    actions["partitions"] = {
        action
        for call, action in (
            ("create_partitions(", "kafka-cluster:AlterTopic"),
            ("list_group_offsets(", "kafka-cluster:DescribeGroup"),
            ("describe_groups(", "kafka-cluster:DescribeGroup"),
        )
        if call in grow
    }
    # The redrive's reader: a consumer without a group (assign and seek), so no group actions.
    redrive = _source("topic_reader")
    if "KafkaConsumer(" in redrive:
        assert re.search(r'"group_id":\s*None', redrive), "a group would need DescribeGroup/AlterGroup"
        actions["topic_reader"] = {"kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"}
    return actions


FUNCTIONS_DIR = ROOT / "functions"


@dataclass(frozen=True)
class _Module:
    """One module's top-level names and what its payments_core imports bind them to."""

    name: str
    defs: dict[str, ast.AST]  # functions, classes and assigned names at the top level
    modules: dict[str, str]  # local name -> payments_core module (``from payments_core import x``)
    names: dict[str, tuple[str, str]]  # local name -> (module, name) (``from payments_core.m import n``)
    source: str


def _parse(path: Path, name: str) -> _Module:
    source = path.read_text()
    tree = ast.parse(source)
    defs: dict[str, ast.AST] = {}
    modules: dict[str, str] = {}
    names: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defs[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    defs[target.id] = node
    for node in ast.walk(tree):
        dotted = node.module or "" if isinstance(node, ast.ImportFrom) else ""
        if dotted == "payments_core" or _is_package(dotted):  # from payments_core.<package> import module
            modules.update({a.asname or a.name: a.name for a in node.names})  # type: ignore[attr-defined]
        elif dotted.startswith("payments_core."):
            module = dotted.rsplit(".", 1)[1]
            names.update({a.asname or a.name: (module, a.name) for a in node.names})  # type: ignore[attr-defined]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("payments_core.") and a.asname:
                    modules[a.asname] = a.name.rsplit(".", 1)[1]
    return _Module(name, defs, modules, names, source)


_MODULES: dict[str, _Module] = {}


def _is_package(dotted: str) -> bool:
    return dotted.startswith("payments_core.") and (PAYMENTS_CORE.parent / dotted.replace(".", "/")).is_dir()


def _module(name: str) -> _Module | None:
    path = _module_paths().get(name)
    if name not in _MODULES and path is not None:
        _MODULES[name] = _parse(path, name)
    return _MODULES.get(name)


def _references(module: _Module, node: ast.AST) -> set[tuple[str, str]]:
    found = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            if sub.id in module.defs:
                found.add((module.name, sub.id))
            elif sub.id in module.names:
                found.add(module.names[sub.id])
        elif (
            isinstance(sub, ast.Attribute)
            and isinstance(sub.value, ast.Name)
            and sub.value.id in module.modules
        ):
            found.add((module.modules[sub.value.id], sub.attr))
    return found


def _route_key(method: str, path: str) -> tuple[str, str]:
    """(METHOD, path) with every path variable alike: API Gateway's {id}, the resolver's <id>."""
    return method.upper(), re.sub(r"\{[^}]+\}|<[^>]+>", "{}", path)


def _listed_route(node: ast.AST) -> route_list.Route | None:
    """``routes.NAME.rule`` (a route of payments_core.entrypoints.routes, as the resolver registers it)."""
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "routes"
    ):
        listed = getattr(route_list, node.value.attr, None)
        return listed if isinstance(listed, route_list.Route) else None
    return None


def _handlers_of(module: _Module, resolver: str, routes: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The functions registered on ``resolver`` that run for ``routes``: its route functions for
    those routes only (``@app.get("/path")`` or ``@app.route(routes.NAME.rule, …)``), and its
    exception and not-found handlers."""
    found = set()
    for name, node in module.defs.items():
        for decorator in getattr(node, "decorator_list", []):
            call = decorator if isinstance(decorator, ast.Call) else None
            func = call.func if call else decorator
            if not (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == resolver
            ):
                continue
            if func.attr in ("get", "post", "put", "patch", "delete") and call and call.args:
                path = call.args[0]
                if isinstance(path, ast.Constant) and _route_key(func.attr, str(path.value)) in routes:
                    found.add((module.name, name))
            elif func.attr == "route" and call and call.args:
                listed = _listed_route(call.args[0])
                if listed is not None and _route_key(listed.method, listed.path) in routes:
                    found.add((module.name, name))
            elif func.attr in ("exception_handler", "not_found"):
                found.add((module.name, name))
    return found


def reachable(function: str, routes: set[tuple[str, str]] = frozenset()) -> dict[str, list[str]]:  # type: ignore[assignment]
    """The payments_core code a function runs: {module: [source of each reachable top-level
    function, class or name]}, from its app.py's handler through every reference, not descending
    into ``services`` (the container that wires every gateway, used or not: its gateways are
    seen where they are called, ``services.stripe.…``). A resolver (payments_core.entrypoints.api's ``app``)
    leads only to the route functions of ``routes``, the routes API Gateway sends the function."""
    app = _parse(FUNCTIONS_DIR / function / "app.py", "app")
    todo = list(_references(app, app.defs.get("lambda_handler") or app.defs["handler"]))
    seen: set[tuple[str, str]] = set()
    while todo:
        key = todo.pop()
        module = _module(key[0])
        if key in seen or module is None or module.name == "services":
            continue
        seen.add(key)
        node = module.defs.get(key[1])
        if node is None:
            if key[1] in module.names:  # a re-export
                todo.append(module.names[key[1]])
            continue
        todo.extend(_references(module, node))
        if isinstance(node, ast.Assign) and "Resolver(" in ast.unparse(node.value):
            todo.extend(_handlers_of(module, key[1], routes))
    found: dict[str, list[str]] = {}
    for module_name, name in sorted(seen):
        module = _MODULES[module_name]
        if name in module.defs:
            found.setdefault(module_name, []).append(
                ast.get_source_segment(module.source, module.defs[name]) or ""
            )
    return found


def capabilities(function: str, routes: set[tuple[str, str]] = frozenset()) -> set[str]:  # type: ignore[assignment]
    """Which gateways a function's code uses, read from the code it runs."""
    code = reachable(function, routes)
    modules = set(code)
    # What the code does, not the gateway's own methods nor the settings' declarations.
    runs = "\n".join(
        src for m, sources in code.items() for src in sources if m not in ("stripe_gateway", "config")
    )
    found = set()
    if {"repository", "outbox", "queries", "retention"} & modules:  # the tables, as the application role
        found.add("db")
    if re.search(r"publisher\.publish\(", runs):
        if "payment_events_topic" in runs:  # the outbox publishes what it holds
            found.add("produce")
        if "payment_commands_topic" in runs:  # release/revert over HTTP queue commands (issue 10)
            found.add("produce_commands")
    if re.search(r"\.stripe\.\w+\(", runs):
        found.add("stripe")
    if "dead_letters" in modules:
        found.add("dead_letters")
    if "stripe_webhook_secret_id" in runs:  # the code reads the signing secret it names
        found.add("webhook_secret")
    if "topics" in modules:
        found.add("admin")
    if "migrate" in modules:
        found.add("migrate")
    if "topic_reader" in modules:  # reads the dead-letter topic (no consumer group)
        found.add("read_dead_letters")
    return found


# What the MSK event source mapping does with the function's role (AWS's documented list for IAM
# auth), and the on-failure destination it writes to: not in our code, but needed.
MAPPING_ACTIONS = {
    "kafka-cluster:Connect",
    "kafka-cluster:DescribeClusterDynamicConfiguration",
    "kafka-cluster:DescribeGroup",
    "kafka-cluster:AlterGroup",
    "kafka-cluster:DescribeTopic",
    "kafka-cluster:ReadData",
    # the on-failure destination: a Kafka topic of the same cluster (the mapping writes to it)
    "kafka-cluster:WriteData",
    # CDK's ManagedKafkaEventSource grants these three for every MSK mapping, whatever its auth
    # (ListScramSecrets only lists secret names); the mapping reads the brokers with them.
    "kafka:DescribeCluster",
    "kafka:GetBootstrapBrokers",
    "kafka:ListScramSecrets",
}
# Lambda's own: X-Ray tracing (accepts no resource ARN).
PLATFORM_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _resource_kind(resource: Any, raw: dict[str, Any]) -> str:
    """A readable name for a policy resource: secret:<name>, queue, cluster, topic:<t>, ..."""
    text = json.dumps(resource)
    if resource == "*":
        return "*"
    if isinstance(resource, dict) and "Ref" in resource:
        target = raw["Resources"].get(resource["Ref"], {})
        if target.get("Type") == "AWS::SecretsManager::Secret":
            name = target["Properties"].get("Name") or resource["Ref"]
            return f"secret:{name}"
    for kind in ("topic", "group"):
        match = re.search(rf":{kind}/\"?.*?/([^/\"]+)\"\]", text)
        if match and f":{kind}/" in text:
            return f"{kind}:{match.group(1)}"
    if ":dbuser:" in text:
        return "dbuser:" + text.rsplit("/", 1)[-1].strip('"]} ')
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        target_type = raw["Resources"][resource["Fn::GetAtt"][0]]["Type"]
        return {"AWS::SQS::Queue": "queue", "AWS::MSK::ServerlessCluster": "cluster"}.get(
            target_type, target_type
        )
    return text


def granted(raw: dict[str, Any], role: str) -> set[tuple[str, str]]:
    """(action, resource kind) for every statement of the inline policies attached to ``role``."""
    pairs = set()
    for policy in resources(raw, "AWS::IAM::Policy").values():
        props = policy["Properties"]
        if {"Ref": role} not in props.get("Roles", []):
            continue
        for statement in props["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            for action in _as_list(statement["Action"]):
                for resource in _as_list(statement["Resource"]):
                    pairs.add((action, _resource_kind(resource, raw)))
    return pairs


def _functions(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for logical, fn in resources(raw, "AWS::Lambda::Function").items():
        props = fn["Properties"]
        if props.get("Handler") in ("app.lambda_handler", "app.handler"):
            found[props["Description"]] = {**props, "_logical_id": logical}
    return found


# Each function's description (infra/components/functions.py) -> its directory under functions/.
FUNCTION_DIRS = {
    "payment_commands consumer: authorize, release, revert": "authorize_payment",
    "the saga's payment queries, release and revert": "payment_api",
    "Stripe webhook: verifies and applies signed events": "stripe_webhook",
    "publishes the outbox to payment_events": "outbox_relay",
    "re-reads stale payments from Stripe": "reconcile_payments",
    "deletes rows past their retention": "retain_data",
    "applies payments_core's SQL migrations": "migrate_database",
    "creates the service's Kafka topics": "create_topics",
    "public history for the frontend (Clerk sign-in)": "public_history",
    "re-queues dead-lettered commands to payment_commands": "redrive_commands",
}


def expected(raw: dict[str, Any], props: dict[str, Any]) -> set[tuple[str, str]]:
    """What a function needs: its code's actions on the resources its environment names."""
    actions = code_actions()
    function = FUNCTION_DIRS[props["Description"]]
    uses = capabilities(function, served_routes(raw, props["_logical_id"]))
    env = props["Environment"]["Variables"]
    need: set[tuple[str, str]] = set()

    def secret(env_name: str) -> None:
        need.update((a, _resource_kind(env[env_name], raw)) for a in actions["secrets"])
        # A secret under a customer key: reading it decrypts with that key (through Secrets Manager).
        key = raw["Resources"][env[env_name]["Ref"]]["Properties"].get("KmsKeyId")
        if key:
            need.add(("kms:Decrypt", _resource_kind(key, raw)))

    produce = actions["kafka_gateway"]
    cluster_produce = {
        a for a in produce if a in ("kafka-cluster:Connect", "kafka-cluster:WriteDataIdempotently")
    }
    if "migrate" in uses:
        secret("DB_SECRET_ID")
        secret("DB_APP_SECRET_ID")
        secret("DB_RETENTION_SECRET_ID")
    if "admin" in uses:
        admin = actions["topics"]
        need.add(("kafka-cluster:Connect", "cluster"))
        topics = (env["PAYMENT_COMMANDS_TOPIC"], env["PAYMENT_EVENTS_TOPIC"], env["DEAD_LETTER_TOPIC"])
        need.update((a, f"topic:{t}") for t in topics for a in admin - {"kafka-cluster:Connect"})
        # The commands topic grows, with its mapping's group checked (the topics resource names both).
        (resource,) = resources(raw, "Custom::PaymentsKafkaTopics").values()
        grow = resource["Properties"]
        for action in actions["partitions"]:
            kind = "group" if action == "kafka-cluster:DescribeGroup" else "topic"
            need.add((action, f"{kind}:{grow['ConsumerGroup' if kind == 'group' else 'GrowTopic']}"))
    if "db" in uses and env.get("DB_IAM_AUTH") == "true":
        need.update((a, f"dbuser:{env['DB_USER']}") for a in actions["db"])
    if "stripe" in uses:
        secret("STRIPE_SECRET_KEY_SECRET_ID")
    if "webhook_secret" in uses:
        secret("STRIPE_WEBHOOK_SECRET_ID")
    if "dead_letters" in uses:  # in AWS the queue (DEAD_LETTER_QUEUE_URL is set), never the topic
        assert env["DEAD_LETTER_QUEUE_URL"]
        need.update((a, "queue") for a in actions["dead_letters"])
    if "read_dead_letters" in uses:
        need.add(("kafka-cluster:Connect", "cluster"))
        need.update(
            (a, f"topic:{env['DEAD_LETTER_TOPIC']}") for a in actions["topic_reader"]
        )  # + Connect above
    topics = [env["PAYMENT_EVENTS_TOPIC"]] if "produce" in uses else []
    if "produce_commands" in uses:
        topics.append(env["PAYMENT_COMMANDS_TOPIC"])
    if topics:
        need.update((a, "cluster") for a in cluster_produce)
        need.update((a, f"topic:{t}") for t in topics for a in produce - cluster_produce)
    mappings = [
        esm["Properties"]
        for esm in resources(raw, "AWS::Lambda::EventSourceMapping").values()
        if esm["Properties"]["FunctionName"] == {"Ref": props["_logical_id"]}
    ]
    for mapping in mappings:
        group = mapping["AmazonManagedKafkaEventSourceConfig"]["ConsumerGroupId"]
        for action in MAPPING_ACTIONS:
            if action == "kafka-cluster:WriteData":  # kafka://<topic>: the dead-letter topic
                destination = mapping["DestinationConfig"]["OnFailure"]["Destination"]
                need.add((action, f"topic:{destination.removeprefix('kafka://')}"))
                need.add(("kafka-cluster:DescribeTopic", f"topic:{destination.removeprefix('kafka://')}"))
            elif action.startswith("kafka:"):
                need.add((action, "cluster"))
            elif action in ("kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"):
                need.add((action, f"group:{group}"))
            elif action in ("kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"):
                need.update((action, f"topic:{t}") for t in mapping["Topics"])
            else:
                need.add((action, "cluster"))
    return need


def served_routes(raw: dict[str, Any], function: str) -> set[tuple[str, str]]:
    """The (METHOD, path) routes of the template's REST APIs that integrate ``function``."""
    parents = resources(raw, "AWS::ApiGateway::Resource")

    def path(ref: dict[str, Any]) -> str:
        if "Ref" not in ref:  # the API's root resource
            return ""
        props = parents[ref["Ref"]]["Properties"]
        return f"{path(props['ParentId'])}/{props['PathPart']}"

    return {
        _route_key(props["HttpMethod"], path(props["ResourceId"]) or "/")
        for method in resources(raw, "AWS::ApiGateway::Method").values()
        for props in [method["Properties"]]
        if f'"{function}"' in json.dumps(props.get("Integration", {}).get("Uri", ""))
    }


def permission_failures(raw: dict[str, Any]) -> list[str]:
    failures = []
    for description, props in _functions(raw).items():
        role = props["Role"]["Fn::GetAtt"][0]
        have = granted(raw, role) - {(a, "*") for a in PLATFORM_ACTIONS}
        need = expected(raw, props)
        for missing in sorted(need - have):
            failures.append(f"{description!r}: missing {missing[0]} on {missing[1]}")
        for extra in sorted(have - need):
            failures.append(f"{description!r}: grants {extra[0]} on {extra[1]}, which its code never needs")
    return failures


def test_code_actions_are_found_in_the_gateways() -> None:
    actions = code_actions()
    assert actions["dead_letters"] == {"sqs:SendMessage"}
    assert actions["secrets"] == {"secretsmanager:GetSecretValue"}
    assert actions["db"] == {"rds-db:connect"}
    assert "kafka-cluster:WriteDataIdempotently" in actions["kafka_gateway"]


WEBHOOK_ROUTE = {("POST", "/api/stripe-webhook")}
SAGA_ROUTES = {
    _route_key(m, p)
    for m, p in (
        ("GET", "/payment/{id}/status"),
        ("GET", "/payment/{id}/details"),
        ("POST", "/payment/{id}/release"),
        ("POST", "/payment/{id}/revert"),
        ("GET", "/history/{user_id}"),
        ("GET", "/health"),
    )
}


def test_capabilities_are_read_from_the_code() -> None:
    assert capabilities("authorize_payment") >= {"db", "produce", "stripe", "dead_letters"}
    assert "stripe" not in capabilities("outbox_relay") and "dead_letters" not in capabilities("outbox_relay")
    assert capabilities("migrate_database") == {"migrate"}
    # The resolver serves what API Gateway sends it: the webhook route needs the signing secret,
    # Stripe (a stray hold's cancel) and the events topic; the saga's routes only queue commands.
    assert capabilities("stripe_webhook", WEBHOOK_ROUTE) == {"db", "produce", "stripe", "webhook_secret"}
    assert capabilities("payment_api", SAGA_ROUTES) == {"db", "produce_commands"}
    # redrive: reads the dead-letter topic and queues commands; no database, Stripe or events
    assert capabilities("redrive_commands") == {"read_dead_letters", "produce_commands"}
    # The same resolver given the webhook route would need what the webhook function has.
    assert capabilities("payment_api", SAGA_ROUTES | WEBHOOK_ROUTE) >= {"stripe", "webhook_secret", "produce"}
    # no route: none of the resolver's route functions runs
    assert not {"stripe", "webhook_secret", "produce"} & capabilities("stripe_webhook")


def test_served_routes_are_read_from_the_template(dev_raw: dict[str, Any]) -> None:
    functions = {FUNCTION_DIRS[d]: props["_logical_id"] for d, props in _functions(dev_raw).items()}
    assert served_routes(dev_raw, functions["stripe_webhook"]) == WEBHOOK_ROUTE
    assert served_routes(dev_raw, functions["payment_api"]) == SAGA_ROUTES


def test_every_role_grants_exactly_what_its_code_does(dev_raw: dict[str, Any]) -> None:
    assert set(FUNCTION_DIRS) == set(_functions(dev_raw))
    assert permission_failures(dev_raw) == []


def test_a_function_in_an_unadmitted_security_group_fails_the_synth() -> None:
    """The one place: a function given a group that Network never admitted to the endpoints
    cannot be synthesized, so it cannot be forgotten (defect 1 of issue 11)."""
    from aws_cdk import App, Stack
    from aws_cdk import aws_ec2 as ec2
    from aws_cdk import aws_lambda as lambda_

    from infra.components.network import Network
    from infra.config import NetworkConfig

    app = App()
    stack = Stack(app, "Probe")
    config = NetworkConfig(
        vpc_id=None,
        vpc_cidr="10.9.0.0/16",
        nat_gateways=1,
        private_subnet_ids=[],
        isolated_subnet_ids=[],
        create_endpoints=True,
    )
    network = Network(
        stack, "Network", config=config, availability_zones=["ap-southeast-1a", "ap-southeast-1b"]
    )
    forgotten = ec2.SecurityGroup(stack, "Forgotten", vpc=network.vpc)
    lambda_.Function(
        stack,
        "NewFunction",
        runtime=lambda_.Runtime.PYTHON_3_12,
        handler="app.lambda_handler",
        code=lambda_.Code.from_inline("def lambda_handler(e, c): pass"),
        vpc=network.vpc,
        vpc_subnets=network.function_subnets,
        security_groups=[forgotten],
    )
    with pytest.raises(Exception, match="never admitted to the VPC endpoints"):
        app.synth()
