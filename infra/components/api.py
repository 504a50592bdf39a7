"""The REST API: the Stripe webhook (open: the Stripe signature is the check), the payment
queries for the complete-order saga (IAM-signed), and a health check.

The webhook's body size is limited by a WAF web ACL: API Gateway REST has no body-size setting of
its own (only the 10 MB hard limit), and WAF rejects the request before a function runs.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as waf
from constructs import Construct

from infra.config import ApiConfig
from infra.nag import Suppression, suppress

WEBHOOK_PATH = "api/stripe-webhook"
_INSPECTION_LIMITS = {16: "KB_16", 32: "KB_32", 48: "KB_48", 64: "KB_64"}


class PaymentApi(Construct):
    def __init__(
        self, scope: Construct, id: str, *, config: ApiConfig, handler: lambda_.IFunction, stage: str
    ):
        super().__init__(scope, id)
        if config.webhook_max_body_kb not in _INSPECTION_LIMITS:
            raise ValueError(f"api.webhook_max_body_kb must be one of {sorted(_INSPECTION_LIMITS)}")
        access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            retention=logs.RetentionDays.THREE_MONTHS,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.api = apigw.RestApi(
            self,
            "Api",
            rest_api_name=f"{Stack.of(self).stack_name}-api",
            description="campusG payment service",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            # Execution logging (logging_level) needs the account-level CloudWatch role.
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN,
            deploy_options=apigw.StageOptions(
                stage_name=stage,
                throttling_rate_limit=config.throttle_rate_limit,
                throttling_burst_limit=config.throttle_burst_limit,
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
            ),
        )
        integration = apigw.LambdaIntegration(handler)
        validator = self.api.add_request_validator(
            "Validator", validate_request_parameters=True, validate_request_body=True
        )

        api_resource = self.api.root.add_resource("api")
        self.webhook_method = api_resource.add_resource("stripe-webhook").add_method(
            "POST",
            integration,
            authorization_type=apigw.AuthorizationType.NONE,
            # Unsigned requests are turned away by API Gateway before they cost an invocation.
            request_parameters={"method.request.header.Stripe-Signature": True},
            request_validator=validator,
        )
        # API Gateway allows one variable path part per level, so both queries share {id}: an
        # order id for /status, a payment id for /details. The function routes on the path.
        payment = self.api.root.add_resource("payment").add_resource("{id}")
        self.query_methods = [
            payment.add_resource(action).add_method(
                "GET",
                integration,
                authorization_type=apigw.AuthorizationType.IAM,
                request_parameters={"method.request.path.id": True},
                request_validator=validator,
            )
            for action in ("status", "details")
        ]
        self.health_method = self.api.root.add_resource("health").add_method(
            "GET", integration, authorization_type=apigw.AuthorizationType.NONE
        )

        self.webhook_url = self.api.url_for_path(f"/{WEBHOOK_PATH}")
        self._add_waf(config)
        self._suppress()

    def _add_waf(self, config: ApiConfig) -> None:
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
                    visibility_config=waf.CfnWebACL.VisibilityConfigProperty(
                        cloud_watch_metrics_enabled=True,
                        metric_name="BodySizeLimit",
                        sampled_requests_enabled=True,
                    ),
                ),
            ],
        )
        waf.CfnWebACLAssociation(
            self,
            "WebAclAssociation",
            resource_arn=self.api.deployment_stage.stage_arn,
            web_acl_arn=acl.attr_arn,
        )

    def _suppress(self) -> None:
        open_reason = (
            "Stripe cannot sign AWS requests: the webhook is open and the function verifies the "
            "Stripe-Signature HMAC (required header, checked by API Gateway first); WAF limits the body."
        )
        for method, reason in (
            (self.webhook_method, open_reason),
            (self.health_method, "Health check for load balancers and uptime probes; returns no data."),
        ):
            suppress(
                method,
                [
                    Suppression(id="AwsSolutions-APIG4", reason=reason),
                    Suppression(id="AwsSolutions-COG4", reason=reason),
                ],
            )
        for method in self.query_methods:
            suppress(
                method,
                [
                    Suppression(
                        id="AwsSolutions-COG4",
                        reason="The callers are AWS services (the complete-order saga), authorized with "
                        "SigV4 IAM auth; there are no end users, so no Cognito user pool.",
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
