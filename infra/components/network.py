"""The VPC: private subnets with egress for the functions (Stripe is on the internet), isolated
subnets for the database, and interface endpoints so AWS API calls stay inside the VPC.

Reachability is decided here, in one place: every security group that a Lambda function runs in
(ours, the custom resources', the secret rotation's, the MSK pollers') is made by or registered
with ``client_security_group`` / ``admit_client``, which admits it to every interface endpoint on
443. A function given any other group fails the synth (``RequireRegisteredGroups``), so a new
function cannot be forgotten."""

from __future__ import annotations

import jsii
from aws_cdk import Aspects, IAspect, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sam as sam
from constructs import Construct, IConstruct

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
        self.endpoints: list[ec2.InterfaceVpcEndpoint] = []
        self._clients: list[ec2.ISecurityGroup] = []
        # The functions' own group: the database proxy and the Kafka cluster admit it.
        self.function_security_group = self.client_security_group(
            self, "FunctionSecurityGroup", "payment service functions"
        )
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
                for client in self._clients:
                    endpoint.connections.allow_default_port_from(client)
        # The saga's private API is reached through this endpoint: campusG's services in the VPC
        # call it on 443 (its private DNS name resolves the API's default hostname to it).
        self.execute_api_endpoint: ec2.IInterfaceVpcEndpoint
        if config.execute_api_endpoint_id:
            self.execute_api_endpoint = ec2.InterfaceVpcEndpoint.from_interface_vpc_endpoint_attributes(
                self, "ExecuteApi", vpc_endpoint_id=config.execute_api_endpoint_id, port=443
            )
        else:
            endpoint = self.vpc.add_interface_endpoint(
                "ExecuteApi",
                service=ec2.InterfaceVpcEndpointAwsService.APIGATEWAY,
                subnets=self.function_subnets,
                open=False,
                private_dns_enabled=True,
            )
            endpoint.connections.allow_from(
                ec2.Peer.ipv4(config.vpc_cidr), ec2.Port.tcp(443), "campusG services in this VPC"
            )
            self.execute_api_endpoint = endpoint
        Aspects.of(Stack.of(self)).add(RequireRegisteredGroups(self))

    def client_security_group(self, scope: Construct, id: str, description: str) -> ec2.SecurityGroup:
        """A new security group for functions, admitted to the interface endpoints."""
        group = ec2.SecurityGroup(scope, id, vpc=self.vpc, description=description)
        self.admit_client(group)
        return group

    def admit_client(self, group: ec2.ISecurityGroup) -> None:
        """Admit ``group`` to every interface endpoint (HTTPS only), rather than the whole VPC range."""
        self._clients.append(group)
        for endpoint in self.endpoints:
            endpoint.connections.allow_default_port_from(group)

    def registered(self, group_id: object) -> bool:
        stack = Stack.of(self)
        wanted = stack.resolve(group_id)
        return any(stack.resolve(g.security_group_id) == wanted for g in self._clients)


@jsii.implements(IAspect)
class RequireRegisteredGroups:
    """Fails the synth when a function (or the rotation application) runs in a security group the
    network has not admitted to its endpoints: that function's first AWS call would hang."""

    def __init__(self, network: Network) -> None:
        self.network = network

    def visit(self, node: IConstruct) -> None:
        if isinstance(node, lambda_.CfnFunction):
            found = Stack.of(node).resolve(node.vpc_config)
        elif isinstance(node, sam.CfnApplication):
            found = (Stack.of(node).resolve(node.parameters) or {}).get("vpcSecurityGroupIds")
        else:
            return
        for group in _group_refs(found):
            if not self.network.registered(group):
                raise ValueError(
                    f"{node.node.path} runs in security group {group}, which Network.admit_client never "
                    "admitted to the VPC endpoints: create it with Network.client_security_group"
                )


def _group_refs(value: object) -> list[object]:
    """Every security group id ({"Fn::GetAtt": [<group>, "GroupId"]}) inside a resolved value."""
    if isinstance(value, dict):
        if list(value) == ["Fn::GetAtt"] and value["Fn::GetAtt"][1] == "GroupId":
            return [value]
        return [ref for v in value.values() for ref in _group_refs(v)]
    if isinstance(value, list):
        return [ref for v in value for ref in _group_refs(v)]
    return []
