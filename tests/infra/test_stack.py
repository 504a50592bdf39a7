"""The service stack's template, asserted on the synthesized dev stage (and prod via the pipeline)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from tests.infra.conftest import Synth, resources

pytestmark = pytest.mark.infra

# Every variable payments_core.config reads that the stack must set for AWS.
REQUIRED_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "PAYMENT_EVENTS_TOPIC",
    "DEAD_LETTER_QUEUE_URL",
    "DEAD_LETTER_TOPIC",
    "DB_IAM_AUTH",
    "DB_HOST",
    "DB_PORT",
    "DB_NAME",
    "DB_SSL",
    "STRIPE_API_BASE",
    "DEFAULT_CURRENCY",
    "PLATFORM_FEE_BPS",
    "RECONCILE_PENDING_AFTER_SECONDS",
    "RECONCILE_REQUIRES_ACTION_AFTER_SECONDS",
    "RECONCILE_AUTHORIZED_AFTER_SECONDS",
    "RECONCILE_BATCH_SIZE",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}


HANDLERS = ("app.lambda_handler", "app.handler")  # app.handler: the public history function
PUBLIC_HISTORY = "public history for the frontend (Clerk sign-in)"
RETENTION = "deletes rows past their retention"


def _our_functions(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        k: v["Properties"]
        for k, v in resources(raw, "AWS::Lambda::Function").items()
        if v["Properties"].get("Handler") in HANDLERS
    }


def _dlq_id(raw: dict[str, Any]) -> str:
    (dlq,) = resources(raw, "AWS::SQS::Queue")
    return dlq


def test_kafka_trigger(dev: Template, dev_raw: dict[str, Any]) -> None:
    dev.resource_count_is("AWS::Lambda::EventSourceMapping", 1)
    dev.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "Topics": ["payment_commands.dev"],  # per stage: dev never shares prod's partitions
            "FunctionResponseTypes": Match.array_with(["ReportBatchItemFailures"]),
            "BisectBatchOnFunctionError": True,
            # long enough to ride out a database restart or a Stripe outage; then the DLQ
            "MaximumRetryAttempts": 1000,
            "MaximumRecordAgeInSeconds": 21600,
            # the record itself, on a topic of the same cluster (docs/operations.md): what redrive reads
            "DestinationConfig": {"OnFailure": {"Destination": "kafka://payment_commands.dev.dlq"}},
            "AmazonManagedKafkaEventSourceConfig": {"ConsumerGroupId": "payment-service-authorize-dev"},
            "MetricsConfig": {"Metrics": Match.array_with(["KafkaMetrics"])},
            "StartingPosition": "TRIM_HORIZON",
            "BatchSize": 100,  # fills the pool of 16 workers (docs/sizing-and-costs.md)
            "MaximumBatchingWindowInSeconds": 1,
            "ProvisionedPollerConfig": {"MinimumPollers": 1, "MaximumPollers": 2},
        },
    )
    (esm,) = resources(dev_raw, "AWS::Lambda::EventSourceMapping").values()
    retries = esm["Properties"]["MaximumRetryAttempts"]
    assert 0 <= retries < 10_000  # finite: -1 would mean forever


def test_msk_serverless_with_iam_when_no_cluster_given(dev: Template) -> None:
    dev.has_resource_properties(
        "AWS::MSK::ServerlessCluster", {"ClientAuthentication": {"Sasl": {"Iam": {"Enabled": True}}}}
    )


def test_functions_in_vpc_sharing_one_layer(dev_raw: dict[str, Any]) -> None:
    functions = _our_functions(dev_raw)
    # authorize, api, webhook, outbox relay, reconciler, migrations, topics, history, retention,
    # redrive
    assert len(functions) == 10
    (layer,) = resources(dev_raw, "AWS::Lambda::LayerVersion")
    for name, props in functions.items():
        assert props["Layers"] == [{"Ref": layer}], name
        assert props["VpcConfig"]["SubnetIds"], name
        assert props["VpcConfig"]["SecurityGroupIds"], name
        assert props["Runtime"] == "python3.12" and props["Architectures"] == ["arm64"], name
        assert props["TracingConfig"] == {"Mode": "Active"}, name
    layer_props = dev_raw["Resources"][layer]["Properties"]
    assert layer_props["CompatibleRuntimes"] == ["python3.12"]
    assert layer_props["CompatibleArchitectures"] == ["arm64"]


def test_authorize_timeout_well_under_the_kafka_limit(dev_raw: dict[str, Any]) -> None:
    (esm,) = resources(dev_raw, "AWS::Lambda::EventSourceMapping").values()
    fn = dev_raw["Resources"][esm["Properties"]["FunctionName"]["Ref"]]["Properties"]
    assert fn["Timeout"] <= 300 < 14 * 60


def test_environment_matches_payments_core_config(dev: Template, dev_raw: dict[str, Any]) -> None:
    deploy_time = (
        "applies payments_core's SQL migrations",
        "creates the service's Kafka topics",
        "re-queues dead-lettered commands to payment_commands",  # an operator's tool, Kafka only
    )
    for name, props in _our_functions(dev_raw).items():
        env = props["Environment"]["Variables"]
        if props["Description"] == PUBLIC_HISTORY:
            continue  # test_public_history_function
        if props["Description"] == RETENTION:
            # the database and its logs and metrics only: no Stripe key, no Kafka, no queue
            assert {k for k in env if not k.startswith(("DB_", "POWERTOOLS_"))} == set(), name
            assert env["POWERTOOLS_METRICS_NAMESPACE"] == "CampusG/Payments/dev"
            continue
        if props["Description"] in deploy_time:
            # only what they use: no Stripe secrets, no queue for the schema migration
            assert not {k for k in env if k.startswith("STRIPE_")}, name
            continue
        assert set(env) >= REQUIRED_ENV, (name, REQUIRED_ENV - set(env))
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["KAFKA_SASL_MECHANISM"] == "AWS_MSK_IAM"
        assert env["DB_NAME"] == "payments" and env["DB_SSL"] == "true"
        assert env["DEFAULT_CURRENCY"] == "sgd"
        assert env["POWERTOOLS_SERVICE_NAME"] == "payment-service"
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "CampusG/Payments/dev"
    (proxy,) = resources(dev_raw, "AWS::RDS::DBProxy")
    (instance,) = resources(dev_raw, "AWS::RDS::DBInstance")
    for name, props in _our_functions(dev_raw).items():
        env = props["Environment"]["Variables"]
        if "migrations" in props["Description"]:
            # the master user, straight to the instance, for DDL only
            assert env["DB_IAM_AUTH"] == "false" and "DB_SECRET_ID" in env and "DB_APP_SECRET_ID" in env
            assert "DB_RETENTION_SECRET_ID" in env
            assert env["DB_HOST"] == {"Fn::GetAtt": [instance, "Endpoint.Address"]}
        elif props["Description"] in deploy_time[1:]:
            # Kafka only: no database at all
            assert not {k for k in env if k.startswith("DB_")}, name
        else:
            # the application role (the retention job: its own role) through the proxy with an
            # IAM token: no password anywhere
            role = "payments_retention" if props["Description"] == RETENTION else "payments_app"
            assert env["DB_IAM_AUTH"] == "true" and env["DB_USER"] == role, name
            assert "DB_SECRET_ID" not in env, name
            assert env["DB_HOST"] == {"Fn::GetAtt": [proxy, "Endpoint"]}, name
    dev.has_resource_properties(
        "AWS::RDS::DBProxy", {"Auth": Match.array_with([Match.object_like({"IAMAuth": "REQUIRED"})])}
    )


def test_function_assets_hold_only_app_py(synth: Synth, dev_raw: dict[str, Any]) -> None:
    for name, props in _our_functions(dev_raw).items():
        asset = props["Code"]["S3Key"].removesuffix(".zip")
        files = {p.name for p in (synth.outdir / f"asset.{asset}").rglob("*") if p.is_file()}
        assert files <= {"app.py"}, (name, files)


def test_api_stage_throttling_logging_and_body_limit(dev: Template) -> None:
    dev.has_resource_properties(
        "AWS::ApiGateway::Stage",
        {
            "StageName": "dev",
            "AccessLogSetting": {"DestinationArn": Match.any_value(), "Format": Match.any_value()},
            "MethodSettings": Match.array_with(
                [Match.object_like({"ThrottlingRateLimit": 60, "ThrottlingBurstLimit": 120})]
            ),
        },
    )
    dev.has_resource_properties(
        "AWS::WAFv2::WebACL",
        {
            "Rules": Match.array_with(
                [
                    Match.object_like(
                        {
                            "Action": {"Block": {}},
                            "Statement": {
                                "SizeConstraintStatement": Match.object_like(
                                    {"ComparisonOperator": "GT", "Size": 64 * 1024}
                                )
                            },
                        }
                    )
                ]
            )
        },
    )
    dev.has_resource_properties(
        "AWS::WAFv2::WebACL",
        {
            "Rules": Match.array_with(
                [
                    Match.object_like(
                        {
                            "Statement": {
                                "RateBasedStatement": Match.object_like(
                                    {"Limit": 1200, "AggregateKeyType": "IP"}
                                )
                            }
                        }
                    ),
                    Match.object_like(
                        {
                            "Statement": {
                                "ManagedRuleGroupStatement": Match.object_like(
                                    {"VendorName": "AWS", "Name": "AWSManagedRulesCommonRuleSet"}
                                )
                            }
                        }
                    ),
                ]
            )
        },
    )
    dev.resource_count_is("AWS::WAFv2::WebACLAssociation", 1)
    # The webhook has its own route throttle, apart from the stage's (and the saga's API).
    dev.has_resource_properties(
        "AWS::ApiGateway::Stage",
        {
            "MethodSettings": Match.array_with(
                [
                    Match.object_like(
                        {
                            "ResourcePath": "/~1api~1stripe-webhook",
                            "HttpMethod": "POST",
                            "ThrottlingRateLimit": 60,
                            "ThrottlingBurstLimit": 120,
                        }
                    )
                ]
            )
        },
    )


def _kafka_statements(raw: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for policy in resources(raw, "AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if any(a.startswith("kafka-cluster:") for a in actions):
                found.append(statement)
    return found


def test_kafka_permissions_are_scoped(dev_raw: dict[str, Any]) -> None:
    statements = _kafka_statements(dev_raw)
    actions = {a for s in statements for a in s["Action"]}
    assert {
        "kafka-cluster:Connect",
        "kafka-cluster:DescribeTopic",
        "kafka-cluster:ReadData",
        "kafka-cluster:WriteData",
        "kafka-cluster:DescribeGroup",
        "kafka-cluster:AlterGroup",
    } <= actions
    assert not any(a in ("kafka-cluster:*", "*") for a in actions)
    for statement in statements:
        assert "*" not in json.dumps(statement["Resource"]), statement
    text = json.dumps(statements)
    assert ":topic/" in text and ":group/" in text


def test_encrypted_private_rds_behind_a_proxy(dev: Template) -> None:
    dev.has_resource_properties(
        "AWS::RDS::DBInstance",
        {
            "Engine": "postgres",
            "StorageEncrypted": True,
            "PubliclyAccessible": False,
            "BackupRetentionPeriod": Match.any_value(),
            "DBName": "payments",
        },
    )
    dev.has_resource_properties("AWS::RDS::DBProxy", {"EngineFamily": "POSTGRESQL", "RequireTLS": True})
    dev.resource_count_is("AWS::RDS::DBProxyTargetGroup", 1)


def test_production_database_is_protected(synth: Synth) -> None:
    prod = synth.nested("Production")
    (db,) = resources(prod, "AWS::RDS::DBInstance").values()
    assert db["Properties"]["DeletionProtection"] is True
    assert db["Properties"]["MultiAZ"] is True
    assert db["DeletionPolicy"] == "Retain"
    assert db["Properties"]["BackupRetentionPeriod"] >= 7
    # Its credentials stay with it: the master's, the application role's and the retention
    # role's secrets are retained.
    db_secrets = [
        v
        for v in resources(prod, "AWS::SecretsManager::Secret").values()
        if "GenerateSecretString" in v["Properties"]
    ]
    assert len(db_secrets) == 3
    assert all(v["DeletionPolicy"] == "Retain" for v in db_secrets)


def test_secrets(dev: Template, dev_raw: dict[str, Any]) -> None:
    for function in ("authorize-payment", "stripe-webhook", "reconcile-payments"):
        dev.has_resource_properties(
            "AWS::SecretsManager::Secret",
            {"Name": f"payment-service-dev/stripe/{function}-key", "SecretString": "REPLACE_ME"},
        )
    dev.has_resource_properties(
        "AWS::SecretsManager::Secret",
        {"Name": "payment-service-dev/stripe/webhook-secret", "SecretString": "REPLACE_ME"},
    )
    dev.has_resource_properties(
        "AWS::SecretsManager::Secret",
        {
            "GenerateSecretString": Match.object_like(
                {"SecretStringTemplate": '{"username":"payments_admin"}'}
            )
        },
    )
    dev.resource_count_is("AWS::SecretsManager::RotationSchedule", 3)  # master, application, retention
    # No real Stripe credential anywhere in the template.
    assert not re.search(r"(sk|rk)_(live|test)_[A-Za-z0-9]{8,}|whsec_[A-Za-z0-9]{8,}", json.dumps(dev_raw))


def test_schedules(dev: Template) -> None:
    dev.has_resource_properties(
        "AWS::Events::Rule", {"ScheduleExpression": "rate(1 minute)", "State": "ENABLED"}
    )
    dev.has_resource_properties(
        "AWS::Events::Rule", {"ScheduleExpression": "rate(5 minutes)", "State": "ENABLED"}
    )
    # the retention job, daily at 03:30 Singapore time
    dev.has_resource_properties(
        "AWS::Events::Rule", {"ScheduleExpression": "cron(30 19 * * ? *)", "State": "ENABLED"}
    )


def test_alarms_notify_the_topic(dev_raw: dict[str, Any]) -> None:
    alarms = resources(dev_raw, "AWS::CloudWatch::Alarm").values()
    (topic,) = resources(dev_raw, "AWS::SNS::Topic")
    by_metric = {(a["Properties"].get("Namespace"), a["Properties"].get("MetricName")) for a in alarms}
    for metric in (
        "OutboxBacklog",
        "AuthorizationsNearExpiry",
        "TransferFailed",
        "DeadLettered",
        "RevertFailed",
        "TransferReversalFailed",
        "SecretMisconfigured",
        "AuditUnresolved",
        "RefundFailed",
        "AuditBacklog",
        "AuditBacklogAge",
        "StaleCheckBacklogAge",
    ):
        assert ("CampusG/Payments/dev", metric) in by_metric, metric
    assert ("AWS/Lambda", "OffsetLag") in by_metric
    assert ("AWS/ApiGateway", "5XXError") in by_metric
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible") in by_metric
    for metric in ("CPUUtilization", "FreeStorageSpace", "DatabaseConnections", "AvailabilityPercentage"):
        assert ("AWS/RDS", metric) in by_metric, metric
    # one each per function on the tables: authorize, API, webhook, relay, reconciler, history,
    # retention (a failing retention job is storage growing again)
    assert sum(1 for a in alarms if a["Properties"].get("MetricName") == "Errors") == 7
    assert sum(1 for a in alarms if a["Properties"].get("MetricName") == "Throttles") == 7
    for alarm in alarms:
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic}]
        assert alarm["Properties"]["AlarmName"].startswith("payment-service-dev-")  # per stage
    custom = [a for a in alarms if a["Properties"].get("Namespace") == "CampusG/Payments/dev"]
    for alarm in custom:
        assert alarm["Properties"]["Dimensions"] == [{"Name": "service", "Value": "payment-service"}]


def test_rotation_failures_and_alarm_email(dev: Template, dev_raw: dict[str, Any]) -> None:
    (topic,) = resources(dev_raw, "AWS::SNS::Topic")
    dev.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": Match.object_like(
                {
                    "source": ["aws.secretsmanager"],
                    "detail": Match.object_like({"eventName": ["RotationFailed"]}),
                }
            ),
            "Targets": [Match.object_like({"Arn": {"Ref": topic}})],
        },
    )
    # cdk.json leaves alarm_email empty: no subscription until docs/deploying.md's first-deploy step
    dev.resource_count_is("AWS::SNS::Subscription", 0)


def test_dashboard(dev: Template) -> None:
    dev.resource_count_is("AWS::CloudWatch::Dashboard", 1)


def test_migrations_custom_resource(dev: Template, dev_raw: dict[str, Any]) -> None:
    dev.has_resource_properties(
        "Custom::PaymentsSchemaMigrations",
        {"ServiceToken": Match.any_value(), "Layer": {"Ref": Match.string_like_regexp("PaymentsCore")}},
    )
    (migrations,) = resources(dev_raw, "Custom::PaymentsSchemaMigrations")
    # no rotation before the migration has created the application role
    for schedule in resources(dev_raw, "AWS::SecretsManager::RotationSchedule").values():
        assert migrations in schedule.get("DependsOn", []), schedule


def test_updates_wait_for_the_schema_migration(dev_raw: dict[str, Any]) -> None:
    """Issue 17, item 2: every function that uses the tables, and the Kafka mapping, is created
    or updated only after the migration custom resource (the schema it needs is there)."""
    (migrations,) = resources(dev_raw, "Custom::PaymentsSchemaMigrations")
    waiting = {
        props["Description"]
        for name, props in _our_functions(dev_raw).items()
        if migrations in dev_raw["Resources"][name].get("DependsOn", [])
    }
    assert waiting == {
        "payment_commands consumer: authorize, release, revert",
        "the saga's payment queries, release and revert",
        "Stripe webhook: verifies and applies signed events",
        "publishes the outbox to payment_events",
        "re-reads stale payments from Stripe",
        PUBLIC_HISTORY,
        RETENTION,  # its indexes (0009) and its DELETE grant come with the migration run
    }
    (esm,) = resources(dev_raw, "AWS::Lambda::EventSourceMapping").values()
    assert migrations in esm["DependsOn"]


def test_kafka_topics_custom_resource(dev: Template, dev_raw: dict[str, Any]) -> None:
    dev.has_resource_properties(
        "Custom::PaymentsKafkaTopics",
        {
            "Topics": ["payment_commands.dev", "payment_events.dev", "payment_commands.dev.dlq"],
            "Partitions": "3",
            "ReplicationFactor": "3",
        },
    )
    (topics,) = resources(dev_raw, "Custom::PaymentsKafkaTopics")
    (esm,) = resources(dev_raw, "AWS::Lambda::EventSourceMapping").values()
    assert topics in esm["DependsOn"]  # the mapping starts once its topic exists


def test_outputs(dev_raw: dict[str, Any]) -> None:
    outputs = dev_raw["Outputs"]
    for name in (
        "WebhookUrl",
        "PublicApiUrl",
        "SagaApiUrl",
        "SagaApiEndpointUrl",
        "DeadLetterQueueUrl",
        "StripeAuthorizePaymentKeySecretName",
        "StripeStripeWebhookKeySecretName",
        "StripeReconcilePaymentsKeySecretName",
        "StripeWebhookSecretName",
    ):
        assert name in outputs, name
    assert "/api/stripe-webhook" in json.dumps(outputs["WebhookUrl"]["Value"])


def test_synth_is_offline(synth: Synth) -> None:
    for manifest in synth.outdir.rglob("manifest.json"):
        assert not json.loads(manifest.read_text()).get("missing"), manifest  # no context lookups


def test_no_unacknowledged_cdk_nag_findings(synth: Synth) -> None:
    # cdk-nag 3 reports through CDK's policy-validation plugins, not annotations: synth (in the
    # fixture) raises on any unacknowledged error, and the report must list no violation.
    report = synth.outdir / "validation-report.json"
    if report.exists():
        data = json.loads(report.read_text())
        violations = [
            (v["ruleName"], c["constructPath"])
            for plugin in data.get("pluginReports", [])
            if plugin["pluginName"] == "AwsSolutions"
            for v in plugin["violations"]
            for c in v["violatingConstructs"]
        ]
        assert violations == []


def test_pipeline_stages(synth: Synth) -> None:
    pipeline = synth.raw("payment-service-pipeline")
    (cp,) = resources(pipeline, "AWS::CodePipeline::Pipeline").values()
    stages = [s["Name"] for s in cp["Properties"]["Stages"]]
    assert stages[:3] == ["Source", "Build", "UpdatePipeline"]
    assert stages.index("Staging") < stages.index("Production")
    source = cp["Properties"]["Stages"][0]["Actions"][0]
    assert source["ActionTypeId"]["Provider"] == "CodeStarSourceConnection"
    production = next(s for s in cp["Properties"]["Stages"] if s["Name"] == "Production")
    assert production["Actions"][0]["ActionTypeId"]["Category"] == "Approval"
    assert production["Actions"][0]["Name"] == "PromoteToProduction"
    buildspecs = json.dumps(
        [p["Properties"]["Source"] for p in resources(pipeline, "AWS::CodeBuild::Project").values()]
    )
    assert "make test" in buildspecs and "make synth" in buildspecs
    assert resources(synth.nested("Staging"), "AWS::Lambda::EventSourceMapping")
    assert resources(synth.nested("Production"), "AWS::Lambda::EventSourceMapping")


def test_the_mappings_dead_letters_raise_an_alarm(dev: Template, dev_raw: dict[str, Any]) -> None:
    """The mapping's on-failure destination is a Kafka topic, which the queue's DeadLetters alarm
    cannot see: an alarm counts what the mapping delivered there."""
    (esm,) = resources(dev_raw, "AWS::Lambda::EventSourceMapping")
    dev.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "AlarmName": "payment-service-dev-MappingDeadLettered",
            "Namespace": "AWS/Lambda",
            "MetricName": "OnFailureDestinationDeliveredEventCount",
            "Dimensions": [{"Name": "EventSourceMappingUUID", "Value": {"Ref": esm}}],
            "Threshold": 0,
        },
    )


def _connect_resources(raw: dict[str, Any], role: str) -> list[str]:
    """The rds-db:connect resources of a function role, as JSON text (they are Fn::Join)."""
    return [
        json.dumps(statement["Resource"])
        for policy in resources(raw, "AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if "rds-db:connect"
        in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    ]


def test_the_retention_job_alone_connects_as_its_own_role(dev_raw: dict[str, Any]) -> None:
    """Issue 19: payments_retention (DELETE and the archive's moves) for retain_data only; its
    secret is the proxy's, so the function reads none."""
    connects = {
        props["Description"]: _connect_resources(dev_raw, props["Role"]["Fn::GetAtt"][0])
        for props in _our_functions(dev_raw).values()
    }
    (retention,) = connects.pop(RETENTION)
    assert "dbuser:" in retention and "/payments_retention" in retention and "payments_app" not in retention
    users = [r for found in connects.values() for r in found]
    assert users and all("/payments_app" in r and "payments_retention" not in r for r in users), users
    (proxy,) = resources(dev_raw, "AWS::RDS::DBProxy").values()
    assert len(proxy["Properties"]["Auth"]) == 3  # master, application, retention
    secrets = [
        v["Properties"]["GenerateSecretString"]["SecretStringTemplate"]
        for v in resources(dev_raw, "AWS::SecretsManager::Secret").values()
        if "GenerateSecretString" in v["Properties"]
    ]
    assert any('"payments_retention"' in t for t in secrets), secrets
    (fn,) = [p for p in _our_functions(dev_raw).values() if p["Description"] == RETENTION]
    policies = [
        p["Properties"]["PolicyDocument"]["Statement"]
        for p in resources(dev_raw, "AWS::IAM::Policy").values()
        if {"Ref": fn["Role"]["Fn::GetAtt"][0]} in p["Properties"]["Roles"]
    ]
    actions = {
        a
        for st in policies
        for s in st
        for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    }
    assert not [a for a in actions if a.startswith(("secretsmanager:", "kafka", "sqs:"))], actions
