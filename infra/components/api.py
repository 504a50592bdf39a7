"""Two REST APIs in front of the one API function.

- The **public** (regional) API carries the Stripe webhook: open, because the Stripe
  signature is the check; WAF (AWS managed common rules, a per-IP rate rule, a body-size limit)
  and its own route throttle in front of it. Once ``api.clerk_issuer`` is set it also carries
  the frontend's ``GET /history/{user_id}`` (+ CORS preflight), served by its own function that
  checks the student's Clerk session token; it has its own route throttle and its own WAF
  rate rule, sized for a campus NAT's one address, so students and Stripe never share a limit.
- The **private** API carries the saga's routes (status, details, history, release, revert,
  health). It is reachable only through an ``execute-api`` interface endpoint in the VPC, where
  campusG's services run: its resource policy admits that endpoint and nothing else, so
  campusG's unsigned calls work unmodified and nobody on the internet can reach it. The context
  switch ``api.saga_auth=iam`` additionally requires SigV4 on every saga route.

A webhook flood cannot starve the saga: the two APIs have separate stages, throttles and WAF.
API Gateway REST has no body-size setting of its own (only the 10 MB hard limit), so WAF rejects
oversized webhook bodies before a function runs.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as waf
from constructs import Construct
from payments_core.entrypoints import routes

from infra import checkov
from infra.capacity import Limits
from infra.config import ApiConfig
from infra.nag import Suppression, suppress

# Every route comes from payments_core.entrypoints.routes, the list the function's resolver, the public
# history function and the local API Gateway read.
_PUBLIC = routes.on_api(routes.PUBLIC)
WEBHOOK_PATH = routes.api_gateway_path(routes.WEBHOOK, _PUBLIC)
HISTORY_PATH = routes.api_gateway_path(routes.BROWSER_HISTORY, _PUBLIC)
# WAF sees the path as requested (/<stage>/history/…): the history rule matches on this part.
HISTORY_WAF_MATCH = "/history/"
_INSPECTION_LIMITS = {16: "KB_16", 32: "KB_32", 48: "KB_48", 64: "KB_64"}
SAGA_AUTH = {"none": apigw.AuthorizationType.NONE, "iam": apigw.AuthorizationType.IAM}
# (path under the root, method): the saga's routes, served by payments_core.entrypoints.api. API Gateway
# allows one variable name per level, so every /payment/{id}/… shares {id}; the function routes
# on the request path.
_PRIVATE = routes.on_api(routes.PRIVATE)
SAGA_ROUTES = tuple((routes.api_gateway_path(r, _PRIVATE), r.method) for r in _PRIVATE)


class PaymentApi(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: ApiConfig,
        limits: Limits,
        handler: lambda_.IFunction,
        webhook_handler: lambda_.IFunction,
        stage: str,
        vpc_endpoint: ec2.IInterfaceVpcEndpoint,
        history_handler: lambda_.IFunction | None = None,
    ):
        super().__init__(scope, id)
        config.validate()
        if config.webhook_max_body_kb not in _INSPECTION_LIMITS:
            raise ValueError(f"api.webhook_max_body_kb must be one of {sorted(_INSPECTION_LIMITS)}")
        if config.saga_auth not in SAGA_AUTH:
            raise ValueError(f"api.saga_auth must be one of {sorted(SAGA_AUTH)}, got {config.saga_auth!r}")
        self._stage = stage
        # No test-invoke-stage permission: the console's "Test" would invoke the functions
        # outside the stage's throttles, WAF and resource policy.
        integration = apigw.LambdaIntegration(handler, allow_test_invoke=False)
        webhook_integration = apigw.LambdaIntegration(webhook_handler, allow_test_invoke=False)
        stack_name = Stack.of(self).stack_name

        webhook_route = f"/{WEBHOOK_PATH}/{routes.WEBHOOK.method}"
        method_options = {
            webhook_route: apigw.MethodDeploymentOptions(
                throttling_rate_limit=limits.webhook_rate,
                throttling_burst_limit=limits.webhook_burst,
            )
        }
        if history_handler:
            method_options[f"/{HISTORY_PATH}/{routes.BROWSER_HISTORY.method}"] = (
                apigw.MethodDeploymentOptions(
                    throttling_rate_limit=config.history_throttle_rate_limit,
                    throttling_burst_limit=config.history_throttle_burst_limit,
                )
            )
        self.api = apigw.RestApi(
            self,
            "Api",
            rest_api_name=f"{stack_name}-webhook",
            description="campusG payment service: Stripe webhook and the frontend's history (public)",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            # Execution logging (logging_level) needs the account-level CloudWatch role.
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN,
            deploy_options=self._stage_options(
                "PublicAccessLogs", limits.saga_rate, limits.saga_burst, method_options
            ),
        )
        validator = self.api.add_request_validator(
            "Validator", validate_request_parameters=True, validate_request_body=True
        )
        self.webhook_method = self.api.root.resource_for_path(WEBHOOK_PATH).add_method(
            routes.WEBHOOK.method,
            webhook_integration,
            authorization_type=apigw.AuthorizationType.NONE,
            # Unsigned requests are turned away by API Gateway before they cost an invocation.
            request_parameters={f"method.request.header.{h}": True for h in routes.WEBHOOK.required_headers},
            request_validator=validator,
        )

        self.history_methods: list[apigw.Method] = []
        if history_handler:
            self._add_history(config, history_handler, validator)

        # The saga's API: private, behind the VPC endpoint, admitted by that endpoint only.
        saga_auth = SAGA_AUTH[config.saga_auth]
        endpoint_id = vpc_endpoint.vpc_endpoint_id
        self.private_api = apigw.RestApi(
            self,
            "SagaApi",
            rest_api_name=f"{stack_name}-saga",
            description="campusG payment service: the saga's routes (private, VPC endpoint only)",
            endpoint_configuration=apigw.EndpointConfiguration(
                types=[apigw.EndpointType.PRIVATE], vpc_endpoints=[vpc_endpoint]
            ),
            cloud_watch_role=False,  # the account-level role is set by the public API above
            policy=iam.PolicyDocument(statements=saga_policy(config, endpoint_id)),
            deploy_options=self._stage_options("SagaAccessLogs", limits.saga_rate, limits.saga_burst, {}),
        )
        self.private_api.node.add_dependency(self.api)  # after the account's CloudWatch role
        saga_validator = self.private_api.add_request_validator(
            "Validator", validate_request_parameters=True, validate_request_body=True
        )
        self.saga_methods: list[apigw.Method] = []
        for path, http in SAGA_ROUTES:
            resource = self.private_api.root.resource_for_path(path)
            params = {
                f"method.request.path.{p.strip('{}')}": True for p in path.split("/") if p.startswith("{")
            }
            self.saga_methods.append(
                resource.add_method(
                    http,
                    integration,
                    authorization_type=saga_auth,
                    request_parameters=params or None,
                    request_validator=saga_validator,
                )
            )

        self.webhook_url = self.api.url_for_path(f"/{WEBHOOK_PATH}")
        # The base URL campusG's PAYMENT_SERVICE_URL takes (inside the VPC, private DNS), and the
        # endpoint-specific one another VPC uses through peering or a transit gateway.
        self.saga_url = self.private_api.url
        self.saga_endpoint_url = (
            f"https://{self.private_api.rest_api_id}-{endpoint_id}.execute-api."
            f"{Stack.of(self).region}.{Stack.of(self).url_suffix}/{stage}/"
        )
        self._add_waf(config, limits)
        self._suppress()

    def _add_history(
        self, config: ApiConfig, handler: lambda_.IFunction, validator: apigw.RequestValidator
    ) -> None:
        resource = self.api.root.resource_for_path(HISTORY_PATH)
        # The browser's preflight is answered by API Gateway (a mock integration): only the
        # configured origins are echoed back, and Authorization (the Clerk token) is allowed.
        # The function adds the same CORS headers to its own answers, 401 and 403 included.
        preflight = resource.add_cors_preflight(
            allow_origins=config.frontend_origins,
            allow_methods=[r.method for r in routes.served_by(routes.PUBLIC_HISTORY)],
            allow_headers=["Authorization", "Content-Type"],
            max_age=Duration.hours(1),
        )
        get = resource.add_method(
            routes.BROWSER_HISTORY.method,
            apigw.LambdaIntegration(handler, allow_test_invoke=False),
            # The function verifies the Clerk session token (issuer, signature, expiry) and
            # that it belongs to {user_id}; API Gateway has no Clerk authorizer to do it.
            authorization_type=apigw.AuthorizationType.NONE,
            request_parameters={"method.request.path.user_id": True},
            request_validator=validator,
        )
        self.history_methods = [get, preflight]
        self.history_url = self.api.url_for_path("/history")

    def _stage_options(
        self,
        log_id: str,
        rate: int,
        burst: int,
        method_options: dict[str, apigw.MethodDeploymentOptions],
    ) -> apigw.StageOptions:
        access_logs = logs.LogGroup(
            self, log_id, retention=logs.RetentionDays.THREE_MONTHS, removal_policy=RemovalPolicy.DESTROY
        )
        checkov.skip(access_logs, checkov.LOG_GROUP_KEY)
        return apigw.StageOptions(
            stage_name=self._stage,
            throttling_rate_limit=rate,
            throttling_burst_limit=burst,
            method_options=method_options,
            access_log_destination=apigw.LogGroupLogDestination(access_logs),
            access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                caller=True,
                http_method=True,
                ip=True,
                protocol=True,
                request_time=True,
                resource_path=True,
                response_length=True,
                status=True,
                user=True,
            ),
            logging_level=apigw.MethodLoggingLevel.ERROR,
            data_trace_enabled=False,  # bodies carry payment data; never log them
            metrics_enabled=True,
            tracing_enabled=True,
        )

    def _add_waf(self, config: ApiConfig, limits: Limits) -> None:
        limit = config.webhook_max_body_kb
        acl = waf.CfnWebACL(
            self,
            "WebAcl",
            scope="REGIONAL",
            default_action=waf.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=waf.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True, metric_name="PaymentApi", sampled_requests_enabled=True
            ),
            # WAF inspects this much of a body; a larger body counts as oversize and the rule's
            # oversize handling MATCH blocks it. Stripe event payloads are a few KB.
            association_config=waf.CfnWebACL.AssociationConfigProperty(
                request_body={
                    "API_GATEWAY": waf.CfnWebACL.RequestBodyAssociatedResourceTypeConfigProperty(
                        default_size_inspection_limit=_INSPECTION_LIMITS[limit]
                    )
                }
            ),
            rules=[
                waf.CfnWebACL.RuleProperty(
                    name="BodySizeLimit",
                    priority=0,
                    action=waf.CfnWebACL.RuleActionProperty(block={}),
                    statement=waf.CfnWebACL.StatementProperty(
                        size_constraint_statement=waf.CfnWebACL.SizeConstraintStatementProperty(
                            field_to_match=waf.CfnWebACL.FieldToMatchProperty(
                                body=waf.CfnWebACL.BodyProperty(oversize_handling="MATCH")
                            ),
                            comparison_operator="GT",
                            size=limit * 1024,
                            text_transformations=[
                                waf.CfnWebACL.TextTransformationProperty(priority=0, type="NONE")
                            ],
                        )
                    ),
                    visibility_config=_visibility("BodySizeLimit"),
                ),
                *self._rate_rules(config, limits),
                waf.CfnWebACL.RuleProperty(
                    name="AwsCommonRules",
                    priority=3,
                    override_action=waf.CfnWebACL.OverrideActionProperty(none={}),
                    statement=waf.CfnWebACL.StatementProperty(
                        managed_rule_group_statement=waf.CfnWebACL.ManagedRuleGroupStatementProperty(
                            vendor_name="AWS",
                            name="AWSManagedRulesCommonRuleSet",
                            # Its 8 KB body limit would block large Stripe events; the
                            # BodySizeLimit rule above sets the limit instead.
                            rule_action_overrides=[
                                waf.CfnWebACL.RuleActionOverrideProperty(
                                    name="SizeRestrictions_BODY",
                                    action_to_use=waf.CfnWebACL.RuleActionProperty(count={}),
                                )
                            ],
                        )
                    ),
                    visibility_config=_visibility("AwsCommonRules"),
                ),
                waf.CfnWebACL.RuleProperty(
                    name="AwsKnownBadInputs",  # Log4Shell and other known exploit payloads
                    priority=4,
                    override_action=waf.CfnWebACL.OverrideActionProperty(none={}),
                    statement=waf.CfnWebACL.StatementProperty(
                        managed_rule_group_statement=waf.CfnWebACL.ManagedRuleGroupStatementProperty(
                            vendor_name="AWS", name="AWSManagedRulesKnownBadInputsRuleSet"
                        )
                    ),
                    visibility_config=_visibility("AwsKnownBadInputs"),
                ),
            ],
        )
        waf.CfnWebACLAssociation(
            self,
            "WebAclAssociation",
            resource_arn=self.api.deployment_stage.stage_arn,
            web_acl_arn=acl.attr_arn,
        )

    def _rate_rules(self, config: ApiConfig, limits: Limits) -> list[waf.CfnWebACL.RuleProperty]:
        """Per source IP and 5 minutes: one limit for the history route (a campus NAT carries
        many students), another for everything else (the webhook), from which Stripe's listed
        webhook addresses are exempt: Stripe sends every order's webhooks from those few."""
        not_stripe = self._not_stripe(config)
        if not self.history_methods:
            return [_rate_rule("RatePerIp", 1, limits.waf_rate_per_ip, not_stripe)]
        history = waf.CfnWebACL.StatementProperty(
            byte_match_statement=waf.CfnWebACL.ByteMatchStatementProperty(
                field_to_match=waf.CfnWebACL.FieldToMatchProperty(uri_path={}),
                positional_constraint="CONTAINS",
                search_string=HISTORY_WAF_MATCH,
                text_transformations=[waf.CfnWebACL.TextTransformationProperty(priority=0, type="NONE")],
            )
        )
        not_history = waf.CfnWebACL.StatementProperty(
            not_statement=waf.CfnWebACL.NotStatementProperty(statement=history)
        )
        scope = not_history
        if not_stripe:
            scope = waf.CfnWebACL.StatementProperty(
                and_statement=waf.CfnWebACL.AndStatementProperty(statements=[not_history, not_stripe])
            )
        return [
            _rate_rule("RatePerIp", 1, limits.waf_rate_per_ip, scope),
            _rate_rule("HistoryRatePerIp", 2, config.history_waf_rate_limit, history),
        ]

    def _not_stripe(self, config: ApiConfig) -> waf.CfnWebACL.StatementProperty | None:
        """NOT (source IP in Stripe's webhook addresses); None without a list (nobody exempt)."""
        if not config.stripe_webhook_ips:
            return None
        self.stripe_ip_set = waf.CfnIPSet(
            self,
            "StripeWebhookIps",
            scope="REGIONAL",
            ip_address_version="IPV4",
            addresses=[f"{ip}/32" for ip in config.stripe_webhook_ips],
            description="Stripe published webhook addresses, exempt from the per-IP rate rule",
        )
        # The direct peer's address: API Gateway is the edge, so no proxy header to trust.
        in_set = waf.CfnWebACL.StatementProperty(
            ip_set_reference_statement=waf.CfnWebACL.IPSetReferenceStatementProperty(
                arn=self.stripe_ip_set.attr_arn
            )
        )
        return waf.CfnWebACL.StatementProperty(
            not_statement=waf.CfnWebACL.NotStatementProperty(statement=in_set)
        )

    def _suppress(self) -> None:
        for api in (self.api, self.private_api):
            checkov.skip(api.deployment_stage, checkov.STAGE_NO_CACHE)
        checkov.skip(self.webhook_method, checkov.WEBHOOK_OPEN)
        for method in self.saga_methods:
            checkov.skip(method, checkov.SAGA_ROUTE_PRIVATE)
        for method in self.history_methods:
            checkov.skip(method, checkov.HISTORY_ROUTE_CLERK)
        open_reason = (
            "Stripe cannot sign AWS requests: the webhook is open and the function verifies the "
            "Stripe-Signature HMAC (required header, checked by API Gateway first); WAF limits the body."
        )
        suppress(
            self.webhook_method,
            [
                Suppression(id="AwsSolutions-APIG4", reason=open_reason),
                Suppression(id="AwsSolutions-COG4", reason=open_reason),
            ],
        )
        history_reason = (
            "The frontend's students sign in with Clerk, not Cognito or IAM: the function verifies "
            "the Clerk session token (JWKS) and that it is the student's own user_id on every GET; "
            "the OPTIONS preflight carries no data. WAF and a route throttle limit the rate."
        )
        for method in self.history_methods:
            suppress(
                method,
                [
                    Suppression(id="AwsSolutions-APIG4", reason=history_reason),
                    Suppression(id="AwsSolutions-COG4", reason=history_reason),
                ],
            )
        private_reason = (
            "A private API: only requests through the VPC's execute-api endpoint reach it (resource "
            "policy on aws:SourceVpce), i.e. campusG's own services, whose unsigned calls must work "
            "unmodified; set api.saga_auth=iam to require SigV4 as well. No end users, so no Cognito."
        )
        for method in self.saga_methods:
            suppress(
                method,
                [
                    Suppression(id="AwsSolutions-APIG4", reason=private_reason),
                    Suppression(id="AwsSolutions-COG4", reason=private_reason),
                ],
            )
        suppress(
            self.private_api,
            [
                Suppression(
                    id="AwsSolutions-APIG3",
                    reason="WAF cannot be associated with a private API; only the VPC endpoint reaches it.",
                )
            ],
        )
        suppress(
            self.api,
            [
                Suppression(
                    id="AwsSolutions-IAM4",
                    reason="API Gateway's account-level CloudWatch role uses the AWS-managed "
                    "AmazonAPIGatewayPushToCloudWatchLogs policy, as AWS documents.",
                    applies_to=[
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
                    ],
                )
            ],
        )


def saga_policy(config: ApiConfig, endpoint_id: str) -> list[iam.PolicyStatement]:
    """The private API's resource policy. Always: only requests through the VPC endpoint. With
    saga_auth "iam": per route, only the IAM roles api.callers names (the request is SigV4-signed,
    so API Gateway knows the caller's role): release_revert may POST release and revert and read,
    read may only GET. A role named nowhere is denied by default (no statement allows it)."""

    def invoke(
        effect: iam.Effect, principals: list[iam.IPrincipal], resources: list[str], **conditions: object
    ) -> iam.PolicyStatement:
        return iam.PolicyStatement(
            effect=effect,
            principals=principals,
            actions=["execute-api:Invoke"],
            resources=resources,
            conditions=dict(conditions) if conditions else None,
        )

    from_endpoint = {"StringEquals": {"aws:SourceVpce": endpoint_id}}
    outside = invoke(
        iam.Effect.DENY,
        [iam.AnyPrincipal()],
        ["execute-api:/*"],
        StringNotEquals={"aws:SourceVpce": endpoint_id},
    )
    if config.saga_auth != "iam":
        return [invoke(iam.Effect.ALLOW, [iam.AnyPrincipal()], ["execute-api:/*"], **from_endpoint), outside]
    saga = config.callers["release_revert"]
    readers = list(dict.fromkeys([*config.callers["read"], *saga]))  # the saga reads the status too
    statements = []
    for method, roles in (("POST", saga), ("GET", readers)):
        routes = [route_arn(method, path) for path, http in SAGA_ROUTES if http == method]
        statements.append(
            invoke(iam.Effect.ALLOW, [iam.ArnPrincipal(arn) for arn in roles], routes, **from_endpoint)
        )
        # In the API's own account an identity policy alone (an admin's execute-api:*) would
        # otherwise suffice: every other principal is denied these routes explicitly.
        statements.append(
            invoke(iam.Effect.DENY, [iam.AnyPrincipal()], routes, StringNotEquals={"aws:PrincipalArn": roles})
        )
    return [*statements, outside]


def route_arn(method: str, path: str) -> str:
    """A route in a resource policy: execute-api:/<stage>/<METHOD>/<path>, any stage, path
    variables as wildcards (one level each)."""
    parts = ["*" if p.startswith("{") else p for p in path.split("/")]
    return f"execute-api:/*/{method}/{'/'.join(parts)}"


def _visibility(name: str) -> waf.CfnWebACL.VisibilityConfigProperty:
    return waf.CfnWebACL.VisibilityConfigProperty(
        cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=True
    )


def _rate_rule(
    name: str, priority: int, limit: int, scope: waf.CfnWebACL.StatementProperty | None
) -> waf.CfnWebACL.RuleProperty:
    return waf.CfnWebACL.RuleProperty(
        name=name,
        priority=priority,
        action=waf.CfnWebACL.RuleActionProperty(block={}),
        statement=waf.CfnWebACL.StatementProperty(
            rate_based_statement=waf.CfnWebACL.RateBasedStatementProperty(
                limit=limit, aggregate_key_type="IP", scope_down_statement=scope
            )
        ),
        visibility_config=_visibility(name),
    )
