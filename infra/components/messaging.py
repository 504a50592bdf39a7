"""Kafka (MSK, IAM auth) and the dead-letter queue.

The usual case imports the saga's existing cluster by ARN; without one, an MSK Serverless
cluster is created (serverless clusters only speak IAM auth, which is what the functions use).
Permissions are granted per topic and per consumer group, never on ``*``.
"""

from __future__ import annotations

from aws_cdk import Duration, Fn, Stack, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_msk as msk
from aws_cdk import aws_sqs as sqs
from aws_cdk import custom_resources as cr
from constructs import Construct

from infra import checkov
from infra.components.network import Network
from infra.config import KafkaConfig
from infra.nag import Suppression, suppress

MSK_IAM_PORT = 9098


class Messaging(Construct):
    def __init__(self, scope: Construct, id: str, *, config: KafkaConfig, network: Network):
        super().__init__(scope, id)
        self.config = config
        # For an imported cluster the operator must admit the functions' security group on 9098
        # in the cluster's own security group (the stack outputs its id).
        self.client_security_group = network.function_security_group

        # With a cluster of our own, nothing else creates the topics (MSK Serverless never does).
        self.creates_topics = not config.cluster_arn
        if config.cluster_arn:
            if not config.bootstrap_servers:
                raise ValueError(
                    "kafka.bootstrap_servers is required with kafka.cluster_arn (no lookups at synth)"
                )
            self.cluster_arn: str = config.cluster_arn
            self.bootstrap_servers: str = config.bootstrap_servers
        else:
            cluster_sg = ec2.SecurityGroup(
                self, "ClusterSecurityGroup", vpc=network.vpc, description="MSK Serverless"
            )
            cluster_sg.add_ingress_rule(self.client_security_group, ec2.Port.tcp(MSK_IAM_PORT), "functions")
            # The Lambda MSK pollers use the cluster's own security group and subnets.
            cluster_sg.add_ingress_rule(cluster_sg, ec2.Port.tcp(MSK_IAM_PORT), "Lambda MSK event pollers")
            # campusG's services (the saga) produce commands and read events on this cluster.
            for peer, what in network.callers(network.config):
                cluster_sg.add_ingress_rule(peer, ec2.Port.tcp(MSK_IAM_PORT), f"Kafka callers: {what}")
            network.admit_client(cluster_sg)  # the pollers call Lambda, STS and SQS
            cluster = msk.CfnServerlessCluster(
                self,
                "Cluster",
                cluster_name=f"{Stack.of(self).stack_name}-kafka"[:64],
                client_authentication=msk.CfnServerlessCluster.ClientAuthenticationProperty(
                    sasl=msk.CfnServerlessCluster.SaslProperty(
                        iam=msk.CfnServerlessCluster.IamProperty(enabled=True)
                    )
                ),
                vpc_configs=[
                    msk.CfnServerlessCluster.VpcConfigProperty(
                        subnet_ids=network.vpc.select_subnets(
                            subnet_type=network.function_subnets.subnet_type
                        ).subnet_ids,
                        security_groups=[cluster_sg.security_group_id],
                    )
                ],
            )
            self.cluster_arn = cluster.attr_arn
            # CloudFormation exposes no bootstrap string for serverless clusters: ask the API once.
            brokers = cr.AwsCustomResource(
                self,
                "BootstrapBrokers",
                on_update=cr.AwsSdkCall(
                    service="Kafka",
                    action="getBootstrapBrokers",
                    parameters={"ClusterArn": cluster.attr_arn},
                    physical_resource_id=cr.PhysicalResourceId.of(cluster.attr_arn),
                    output_paths=["BootstrapBrokerStringSaslIam"],
                ),
                policy=cr.AwsCustomResourcePolicy.from_sdk_calls(resources=[cluster.attr_arn]),
                install_latest_aws_sdk=False,
            )
            self.bootstrap_servers = brokers.get_response_field("BootstrapBrokerStringSaslIam")
            # The AwsCustomResource's provider: one function per stack, under this fixed id.
            sdk_provider = Stack.of(self).node.find_child("AWS679f53fac002430cb0da5b7982bd2287")
            checkov.skip(sdk_provider, *checkov.PROVIDER_FUNCTION)
            suppress(
                sdk_provider,
                [
                    Suppression(
                        id="AwsSolutions-IAM4",
                        reason="CDK's AwsCustomResource provider function uses AWSLambdaBasicExecutionRole "
                        "for its own logs; it runs only during deployments.",
                        applies_to=[
                            "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
                        ],
                    ),
                ],
            )

        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetterQueue",
            retention_period=Duration.days(14),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        checkov.skip(self.dead_letter_queue, checkov.QUEUE_KEY)
        suppress(
            self.dead_letter_queue,
            [
                Suppression(
                    id="AwsSolutions-SQS3",
                    reason="This queue is itself the final dead-letter destination (the MSK trigger's "
                    "on-failure destination and the functions' dead letters); operators drain it.",
                )
            ],
        )

    # ARNs of the cluster's resources: arn:aws:kafka:<region>:<account>:cluster/<name>/<uuid>
    # becomes …:topic/<name>/<uuid>/<topic> and …:group/<name>/<uuid>/<group>.
    def _resource_arn(self, kind: str, name: str) -> str:
        arn = self.cluster_arn
        if not Token.is_unresolved(arn):
            prefix, _, rest = arn.partition(":cluster/")
            return f"{prefix}:{kind}/{rest}/{name}"
        parts = Fn.split("/", arn)
        head = Fn.select(0, Fn.split(":cluster/", arn))
        return Fn.join("", [head, f":{kind}/", Fn.select(1, parts), "/", Fn.select(2, parts), f"/{name}"])

    def topic_arn(self, topic: str) -> str:
        return self._resource_arn("topic", topic)

    def group_arn(self, group: str) -> str:
        return self._resource_arn("group", group)

    def grant_consume(self, grantee: iam.IGrantable, topic: str, group: str) -> None:
        """What the MSK event source mapping needs, through the function's role."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=[
                    "kafka-cluster:Connect",
                    "kafka-cluster:DescribeClusterDynamicConfiguration",
                ],
                resources=[self.cluster_arn],
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"],
                resources=[self.topic_arn(topic)],
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"],
                resources=[self.group_arn(group)],
            )
        )

    def grant_read(self, grantee: iam.IGrantable, topic: str) -> None:
        """Read a topic without a consumer group (assign and seek: payments_core.usecases.redrive)."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["kafka-cluster:Connect"], resources=[self.cluster_arn])
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"],
                resources=[self.topic_arn(topic)],
            )
        )

    def grant_produce(self, grantee: iam.IGrantable, *topics: str) -> None:
        """What an idempotent producer (payments_core.adapters.kafka.kafka_gateway: enable_idempotence) needs:
        MSK IAM checks WriteDataIdempotently on the cluster when the producer asks for a
        producer id, and WriteData on each topic."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kafka-cluster:Connect", "kafka-cluster:WriteDataIdempotently"],
                resources=[self.cluster_arn],
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"],
                resources=[self.topic_arn(t) for t in topics],
            )
        )

    def grant_create_topics(self, grantee: iam.IGrantable, *topics: str) -> None:
        """What payments_core.adapters.kafka.topics (the admin client) needs: describe, and create if missing."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["kafka-cluster:Connect"], resources=[self.cluster_arn])
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic"],
                resources=[self.topic_arn(t) for t in topics],
            )
        )

    def grant_grow_topic(self, grantee: iam.IGrantable, topic: str, group: str) -> None:
        """What payments_core.adapters.kafka.partitions needs: add partitions to ``topic`` (AlterTopic: Kafka's
        CreatePartitions) and read ``group``'s members and committed offsets (DescribeGroup)."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["kafka-cluster:AlterTopic"], resources=[self.topic_arn(topic)])
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["kafka-cluster:DescribeGroup"], resources=[self.group_arn(group)])
        )
