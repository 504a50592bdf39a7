"""The VPC: private subnets with egress for the functions (Stripe is on the internet), isolated
subnets for the database, and interface endpoints so AWS API calls stay inside the VPC."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.config import NetworkConfig


class Network(Construct):
    def __init__(self, scope: Construct, id: str, *, config: NetworkConfig, availability_zones: list[str]):
        super().__init__(scope, id)
        if config.vpc_id:
            if not config.private_subnet_ids:
                raise ValueError("network.private_subnet_ids is required when network.vpc_id is set")
            # Imported from attributes, never Vpc.from_lookup: synth must not need credentials.
            self.vpc: ec2.IVpc = ec2.Vpc.from_vpc_attributes(
                self,
                "Vpc",
                vpc_id=config.vpc_id,
                vpc_cidr_block=config.vpc_cidr,
                availability_zones=availability_zones[: len(config.private_subnet_ids)],
                private_subnet_ids=config.private_subnet_ids,
                isolated_subnet_ids=config.isolated_subnet_ids or None,
            )
            db_subnet_type = (
                ec2.SubnetType.PRIVATE_ISOLATED
                if config.isolated_subnet_ids
                else ec2.SubnetType.PRIVATE_WITH_EGRESS
            )
        else:
            vpc = ec2.Vpc(
                self,
                "Vpc",
                ip_addresses=ec2.IpAddresses.cidr(config.vpc_cidr),
                # Explicit zones: Stack.availability_zones would be a context lookup.
                availability_zones=availability_zones,
                nat_gateways=config.nat_gateways,
                subnet_configuration=[
                    ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                    ec2.SubnetConfiguration(
                        name="functions", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=22
                    ),
                    ec2.SubnetConfiguration(
                        name="data", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
                    ),
                ],
            )
            vpc.add_flow_log(
                "FlowLog",
                destination=ec2.FlowLogDestination.to_cloud_watch_logs(
                    logs.LogGroup(self, "FlowLogGroup", retention=logs.RetentionDays.ONE_MONTH)
                ),
                traffic_type=ec2.FlowLogTrafficType.REJECT,
            )
            self.vpc = vpc
            db_subnet_type = ec2.SubnetType.PRIVATE_ISOLATED

        self.function_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.data_subnets = ec2.SubnetSelection(subnet_type=db_subnet_type)
        # The functions' own group: the database proxy and the Kafka cluster admit it.
        self.function_security_group = ec2.SecurityGroup(
            self, "FunctionSecurityGroup", vpc=self.vpc, description="payment service functions"
        )

        self.endpoints: list[ec2.InterfaceVpcEndpoint] = []
        if config.create_endpoints:
            # The S3 gateway endpoint is free; the interface endpoints keep secret reads, dead
            # letters and the MSK trigger's calls (Lambda, STS) off the NAT gateway. The MSK
            # pollers run in the cluster's subnets and need Lambda/STS/SQS reachable from there.
            self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
            for name, service in (
                ("SecretsManager", ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER),
                ("Sqs", ec2.InterfaceVpcEndpointAwsService.SQS),
                ("Sts", ec2.InterfaceVpcEndpointAwsService.STS),
                ("Lambda", ec2.InterfaceVpcEndpointAwsService.LAMBDA_),
            ):
                endpoint = self.vpc.add_interface_endpoint(
                    name, service=service, subnets=self.function_subnets, open=False
                )
                self.endpoints.append(endpoint)
            self.allow_endpoints_from(self.function_security_group)

    def allow_endpoints_from(self, peer: ec2.IConnectable) -> None:
        """Admit ``peer`` to the interface endpoints (HTTPS only), rather than the whole VPC range."""
        for endpoint in self.endpoints:
            endpoint.connections.allow_default_port_from(peer)
