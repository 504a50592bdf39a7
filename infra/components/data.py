"""PostgreSQL on RDS behind an RDS Proxy, with generated credentials in Secrets Manager.

The functions connect to the proxy (Lambda scales out faster than Postgres accepts
connections); the migration custom resource connects to the instance itself, since DDL inside
a proxied session pins the connection anyway.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_rds as rds
from constructs import Construct

from infra.components.network import Network
from infra.config import DatabaseConfig
from infra.nag import Suppression, suppress

POSTGRES_PORT = 5432


class Database(Construct):
    def __init__(
        self, scope: Construct, id: str, *, config: DatabaseConfig, network: Network, production: bool
    ):
        super().__init__(scope, id)
        self.config = config
        self.port = POSTGRES_PORT
        self.instance = rds.DatabaseInstance(
            self,
            "Instance",
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_16),
            instance_type=ec2.InstanceType(config.instance_type),
            vpc=network.vpc,
            vpc_subnets=network.data_subnets,
            database_name=config.name,
            credentials=rds.Credentials.from_generated_secret("payments_admin"),
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
        self.secret = self.instance.secret
        if config.secret_rotation_days > 0:
            # Single-user rotation: the proxy re-reads the secret, the functions fetch it per cold start
            # and again when authentication fails.
            self.instance.add_rotation_single_user(
                automatically_after=Duration.days(config.secret_rotation_days),
                vpc_subnets=network.function_subnets,
            )

        self.proxy = self.instance.add_proxy(
            "Proxy",
            secrets=[self.secret],
            vpc=network.vpc,
            vpc_subnets=network.function_subnets,
            require_tls=True,
            debug_logging=False,
            idle_client_timeout=Duration.minutes(5),
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
