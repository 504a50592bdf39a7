"""PostgreSQL on RDS behind an RDS Proxy, with generated credentials in Secrets Manager.

Two database users: the master (``payments_admin``) is for schema migrations only; the
functions connect as the application role ``payments_app`` (rows only: SELECT, INSERT,
UPDATE; no DDL, no DELETE), which the migration creates with the password of its own secret, and
the retention job as ``payments_retention`` (the deletes and the archive's moves, nothing else:
``payments_core.adapters.postgres.migrate.RETENTION_GRANTS``), likewise with its own secret. The functions
connect to the proxy (Lambda scales out faster than Postgres accepts connections) with IAM
database authentication, so they read no password at all; the proxy logs in with the secrets.
The migration custom resource connects to the instance itself (DDL inside a proxied session
pins the connection anyway), verifying its certificate against the RDS CA bundle in the layer.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as sm
from constructs import Construct

from infra import checkov
from infra.components.network import Network
from infra.config import DatabaseConfig
from infra.nag import Suppression, suppress

POSTGRES_PORT = 5432
MASTER_USER = "payments_admin"
APP_ROLE = "payments_app"  # payments_core.adapters.postgres.migrate.APP_ROLE creates it
RETENTION_ROLE = "payments_retention"  # payments_core.adapters.postgres.migrate.RETENTION_ROLE creates it


class Database(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DatabaseConfig,
        network: Network,
        production: bool,
        instance_type: str,
        proxy_max_connections_percent: int,
        proxy_borrow_timeout_seconds: int,
    ):
        """``instance_type`` and the proxy's settings come from the capacity model (set or derived)."""
        super().__init__(scope, id)
        self.config = config
        self.port = POSTGRES_PORT
        self.instance = rds.DatabaseInstance(
            self,
            "Instance",
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_17_9),
            instance_type=ec2.InstanceType(instance_type),
            vpc=network.vpc,
            vpc_subnets=network.data_subnets,
            database_name=config.name,
            credentials=rds.Credentials.from_generated_secret(MASTER_USER),
            port=POSTGRES_PORT,
            storage_encrypted=True,
            allocated_storage=config.allocated_storage_gb,
            max_allocated_storage=config.max_allocated_storage_gb,
            multi_az=config.multi_az,
            publicly_accessible=False,
            backup_retention=Duration.days(config.backup_retention_days),
            deletion_protection=config.deletion_protection,
            removal_policy=RemovalPolicy.RETAIN if config.retain else RemovalPolicy.SNAPSHOT,
            iam_authentication=True,
            auto_minor_version_upgrade=True,
            cloudwatch_logs_exports=["postgresql"],
            enable_performance_insights=False,
            parameters={"rds.force_ssl": "1"},
        )
        assert self.instance.secret is not None
        retention = RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY
        self.secret = self.instance.secret
        # Kept with a retained (prod) database: without it nobody could log in to the snapshot's
        # restore or the retained instance.
        # (instance.secret is the attachment; the generated secret itself is the child "Secret")
        generated = self.instance.node.find_child("Secret")
        assert isinstance(generated, rds.DatabaseSecret)
        for secret in (self.secret, generated):
            secret.apply_removal_policy(retention)
        self.app_secret = rds.DatabaseSecret(self, "AppSecret", username=APP_ROLE, dbname=config.name)
        self.app_secret.apply_removal_policy(retention)
        self.app_secret_attached = self.app_secret.attach(self.instance)
        self.retention_secret = rds.DatabaseSecret(
            self, "RetentionSecret", username=RETENTION_ROLE, dbname=config.name
        )
        self.retention_secret.apply_removal_policy(retention)
        self.retention_secret_attached = self.retention_secret.attach(self.instance)
        for secret in (generated, self.app_secret, self.retention_secret):
            checkov.skip(secret, checkov.SECRET_KEY)
        checkov.skip(
            self.instance,
            checkov.DATABASE_MONITORING,
            *(() if config.multi_az else (checkov.DATABASE_SINGLE_AZ,)),
        )
        self.rotations: list[sm.SecretRotation] = []
        if config.secret_rotation_days > 0:
            # Single-user rotation of both: each user changes its own password. The proxy
            # re-reads the secrets; the functions never see them. The rotation functions run in
            # security groups the network admits to the Secrets Manager endpoint.
            for ident, secret in (
                ("MasterRotation", self.secret),
                ("AppRotation", self.app_secret_attached),
                ("RetentionRotation", self.retention_secret_attached),
            ):
                self.rotations.append(
                    sm.SecretRotation(
                        self,
                        ident,
                        application=sm.SecretRotationApplication.POSTGRES_ROTATION_SINGLE_USER,
                        secret=secret,
                        target=self.instance,
                        vpc=network.vpc,
                        vpc_subnets=network.function_subnets,
                        security_group=network.client_security_group(
                            self, f"{ident}SecurityGroup", f"database secret rotation ({ident})"
                        ),
                        automatically_after=Duration.days(config.secret_rotation_days),
                    )
                )

        self.proxy = self.instance.add_proxy(
            "Proxy",
            secrets=[self.secret, self.app_secret_attached, self.retention_secret_attached],
            vpc=network.vpc,
            vpc_subnets=network.function_subnets,
            require_tls=True,
            iam_auth=True,
            debug_logging=False,
            idle_client_timeout=Duration.minutes(5),
            # max_connections less the direct sessions (migration, rotations) and the superuser's
            # reserve; a client waits for a backend no longer than its own socket timeout.
            max_connections_percent=proxy_max_connections_percent,
            borrow_timeout=Duration.seconds(proxy_borrow_timeout_seconds),
        )
        self.instance.connections.allow_default_port_from(self.proxy, "RDS Proxy")

        suppressions = [
            Suppression(
                id="AwsSolutions-RDS11",
                reason="The standard port is kept so the RDS Proxy and the functions agree on it; "
                "access is restricted by security groups to the proxy and the migration function.",
            ),
        ]
        if not production:
            suppressions += [
                Suppression(
                    id="AwsSolutions-RDS3",
                    reason="Non-production stages run a single-AZ instance to save cost; prod sets multi_az.",
                ),
                Suppression(
                    id="AwsSolutions-RDS10",
                    reason="Non-production stages can be torn down; prod enables deletion protection "
                    "and the retain policy.",
                ),
            ]
        suppress(self.instance, suppressions)
