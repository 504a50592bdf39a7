"""The VPC: private subnets with egress for the functions (Stripe is on the internet), isolated
subnets for the database, and interface endpoints so AWS API calls stay inside the VPC.

Or campusG's VPC, imported from the context (``network.vpc_id``, its subnets, their route tables
and zones) without any lookup. In a VPC the stack does not own it changes nothing it was not
told to: each endpoint can be reused or skipped (``network.endpoints``), the S3 gateway endpoint
only writes into route tables the context names, and private DNS stays off unless asked for.

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

from infra import checkov
from infra.config import ENDPOINT_NAMES, SKIP, NetworkConfig


class Network(Construct):
    def __init__(self, scope: Construct, id: str, *, config: NetworkConfig, availability_zones: list[str]):
        super().__init__(scope, id)
        self.config = config
        unknown = set(config.endpoints) - set(ENDPOINT_NAMES)
        if unknown:
            raise ValueError(f"network.endpoints: unknown {sorted(unknown)}; known: {list(ENDPOINT_NAMES)}")
        for name, value in config.endpoints.items():
            if value != SKIP and not str(value).startswith("vpce-"):
                raise ValueError(
                    f"network.endpoints.{name}: {value!r} is neither an endpoint id (vpce-…) nor 'skip'"
                )
        if config.endpoint("execute_api") == SKIP:
            raise ValueError(
                "network.endpoints.execute_api cannot be skip: the private API needs an endpoint"
            )
        if config.imported:
            self.vpc, db_subnet_type = self._import_vpc(config, availability_zones)
        else:
            self.vpc, db_subnet_type = (
                self._create_vpc(config, availability_zones),
                ec2.SubnetType.PRIVATE_ISOLATED,
            )

        self.function_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.data_subnets = ec2.SubnetSelection(subnet_type=db_subnet_type)
        self.endpoints: list[ec2.IInterfaceVpcEndpoint] = []
        self._clients: list[ec2.ISecurityGroup] = []
        # The functions' own group: the database proxy and the Kafka cluster admit it.
        self.function_security_group = self.client_security_group(
            self, "FunctionSecurityGroup", "payment service functions"
        )
        if config.create_endpoints:
            self._add_aws_endpoints(config)
        self.execute_api_endpoint = self._execute_api_endpoint(config)
        Aspects.of(Stack.of(self)).add(RequireRegisteredGroups(self))

    def _create_vpc(self, config: NetworkConfig, availability_zones: list[str]) -> ec2.Vpc:
        if not 1 <= config.nat_gateways <= len(availability_zones):
            # Stripe and Clerk are on the internet: without a NAT gateway nothing works.
            raise ValueError(
                f"network.nat_gateways must be 1..{len(availability_zones)} (one per zone at most)"
            )
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
        flow_logs = logs.LogGroup(self, "FlowLogGroup", retention=logs.RetentionDays.ONE_MONTH)
        checkov.skip(flow_logs, checkov.LOG_GROUP_KEY)
        vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        return vpc

    def _import_vpc(
        self, config: NetworkConfig, availability_zones: list[str]
    ) -> tuple[ec2.IVpc, ec2.SubnetType]:
        private = config.private_subnet_ids
        if not private:
            raise ValueError("network.private_subnet_ids is required when network.vpc_id is set")
        zones = config.subnet_availability_zones or availability_zones[: len(private)]
        # from_vpc_attributes spreads the subnets over the zones in order: one list entry per zone.
        if len(zones) != len(private):
            raise ValueError("network.subnet_availability_zones must name one zone per private subnet")
        for name, tables, subnets in (
            ("private", config.private_subnet_route_table_ids, private),
            ("isolated", config.isolated_subnet_route_table_ids, config.isolated_subnet_ids),
        ):
            if tables and len(tables) != len(subnets):
                raise ValueError(
                    f"network.{name}_subnet_route_table_ids must name one table per {name} subnet"
                )
        # Imported from attributes, never Vpc.from_lookup: synth must not need credentials.
        vpc = ec2.Vpc.from_vpc_attributes(
            self,
            "Vpc",
            vpc_id=str(config.vpc_id),
            vpc_cidr_block=config.vpc_cidr,
            availability_zones=zones,
            private_subnet_ids=private,
            private_subnet_route_table_ids=config.private_subnet_route_table_ids or None,
            isolated_subnet_ids=config.isolated_subnet_ids or None,
            isolated_subnet_route_table_ids=config.isolated_subnet_route_table_ids or None,
        )
        db_subnet_type = (
            ec2.SubnetType.PRIVATE_ISOLATED
            if config.isolated_subnet_ids
            else ec2.SubnetType.PRIVATE_WITH_EGRESS
        )
        return vpc, db_subnet_type

    def _add_aws_endpoints(self, config: NetworkConfig) -> None:
        # The S3 gateway endpoint is free, but it writes routes: in a VPC we do not own only
        # into the route tables the context names (none named: none created).
        s3 = config.endpoint("s3")
        if s3 is None and (not config.imported or config.private_subnet_route_table_ids):
            self.vpc.add_gateway_endpoint(
                "S3", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[self.function_subnets]
            )
        # The interface endpoints keep secret reads, dead letters and the MSK trigger's calls
        # (Lambda, STS) off the NAT gateway. The MSK pollers run in the cluster's subnets and need
        # Lambda/STS/SQS reachable from there.
        for name, ident, service in (
            ("secrets_manager", "SecretsManager", ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER),
            ("sqs", "Sqs", ec2.InterfaceVpcEndpointAwsService.SQS),
            ("sts", "Sts", ec2.InterfaceVpcEndpointAwsService.STS),
            ("lambda", "Lambda", ec2.InterfaceVpcEndpointAwsService.LAMBDA_),
        ):
            setting = config.endpoint(name)
            if setting == SKIP:
                continue
            if setting:
                # Someone else's endpoint: its security group is theirs to open (docs/deploying.md); we
                # import it without one, so admit_client adds no rule to it.
                self.endpoints.append(
                    ec2.InterfaceVpcEndpoint.from_interface_vpc_endpoint_attributes(
                        self, ident, vpc_endpoint_id=setting, port=443
                    )
                )
                continue
            endpoint = self.vpc.add_interface_endpoint(
                ident,
                service=service,
                subnets=self.function_subnets,
                open=False,
                private_dns_enabled=config.private_dns(),
            )
            self.endpoints.append(endpoint)
            for client in self._clients:
                endpoint.connections.allow_default_port_from(client)

    def _execute_api_endpoint(self, config: NetworkConfig) -> ec2.IInterfaceVpcEndpoint:
        """The saga's private API is reached through this endpoint: campusG's services call it on
        443, by the API's default name where the endpoint has private DNS, else by the
        endpoint-specific name (output SagaApiEndpointUrl)."""
        existing = config.endpoint("execute_api")
        if existing:
            return ec2.InterfaceVpcEndpoint.from_interface_vpc_endpoint_attributes(
                self, "ExecuteApi", vpc_endpoint_id=existing, port=443
            )
        endpoint = self.vpc.add_interface_endpoint(
            "ExecuteApi",
            service=ec2.InterfaceVpcEndpointAwsService.APIGATEWAY,
            subnets=self.function_subnets,
            open=False,
            private_dns_enabled=config.private_dns(),
        )
        for peer, what in self.callers(config):
            endpoint.connections.allow_from(peer, ec2.Port.tcp(443), f"private API callers: {what}")
        if not (config.caller_security_group_ids or config.caller_cidrs):
            endpoint.connections.allow_from(
                ec2.Peer.ipv4(config.vpc_cidr), ec2.Port.tcp(443), "campusG services in this VPC"
            )
        return endpoint

    def callers(self, config: NetworkConfig) -> list[tuple[ec2.IPeer, str]]:
        """campusG's callers from the context: security groups and address ranges."""
        peers: list[tuple[ec2.IPeer, str]] = [
            (ec2.Peer.security_group_id(group), group) for group in config.caller_security_group_ids
        ]
        peers += [(ec2.Peer.ipv4(cidr), cidr) for cidr in config.caller_cidrs]
        return peers

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
