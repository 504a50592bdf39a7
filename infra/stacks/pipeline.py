"""PipelineStack: CodePipeline (CDK Pipelines) from a CodeStar connection, a synth step that
runs the project's own make targets, a staging stage, then production behind a manual approval.

Its stages deploy stacks named ``pipeline-payment-service-<stage>``, never the names `make
deploy` uses (``payment-service-<stage>``): a hand deploy and the pipeline cannot overwrite each
other's stacks (or share their Stripe secrets' names). The pipeline's own CDK CLI (self-mutation)
is the version package.json pins, as `make synth` uses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aws_cdk import CfnElement, CfnResource, Environment, Stack, Stage, pipelines
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from constructs import Construct, IConstruct

from infra import checkov
from infra.config import AppConfig, StageConfig
from infra.nag import Suppression, suppress
from infra.runtime import PYTHON_VERSION
from infra.stacks.payment_service import PaymentServiceStack

ROOT = Path(__file__).resolve().parents[2]
# The synth step runs `make test`, whose browser test drives a headless Chromium, and the local
# stack (Kafka needs a JRE). Debian packages `chromium` itself (Ubuntu, under CodeBuild's standard
# images, only ships a snap stub), so the build runs on Debian bookworm with Node 22 for the CDK CLI.
BUILD_IMAGE = "public.ecr.aws/docker/library/node:22-bookworm"


def _locked_uv() -> str:
    found = re.search(r"^uv==([\d.]+)", (ROOT / "requirements" / "dev.txt").read_text(), re.MULTILINE)
    if found is None:
        raise ValueError("requirements/dev.txt pins no uv: run make lock")
    return found.group(1)


# Debian's python3 is 3.11; the functions run on the runtime's Python (infra/runtime.py), so the
# build installs it with the uv of the lock, where `make venv` finds it (tools/venv_python.py).
SYNTH_INSTALL = [
    "apt-get update",
    "apt-get install -y --no-install-recommends chromium openjdk-17-jre-headless "
    "python3 python3-venv python3-pip make",
    f"python3 -m pip install --break-system-packages uv=={_locked_uv()}",
    f"uv python install {PYTHON_VERSION}",
]


def stack_name(stage: str) -> str:
    """The stack `make deploy STAGE=<stage>` deploys."""
    return f"payment-service-{stage}"


def pipeline_stack_name(stage: str) -> str:
    """The stack the pipeline deploys for <stage>: never one `make deploy` owns."""
    return f"pipeline-{stack_name(stage)}"


def cdk_cli_version() -> str:
    """The aws-cdk version package.json pins (exactly: a range would let the pipeline drift)."""
    version = str(json.loads((ROOT / "package.json").read_text())["devDependencies"]["aws-cdk"])
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ValueError(f"package.json must pin aws-cdk exactly, got {version!r}")
    return version


class PaymentServiceStage(Stage):
    """One deployable copy of the service, as the pipeline sees it."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StageConfig,
        app_config: AppConfig,
        layer_zip: Path,
        **kwargs: Any,
    ):
        super().__init__(scope, id, **kwargs)
        self.service = PaymentServiceStack(
            self,
            "PaymentService",
            stack_name=pipeline_stack_name(config.name),
            config=config,
            availability_zones=app_config.availability_zones,
            layer_zip=layer_zip,
        )


class PipelineStack(Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        app_config: AppConfig,
        account: str,
        layer_zip: Path,
        **kwargs: Any,
    ):
        super().__init__(scope, id, **kwargs)
        pc = app_config.pipeline
        assert pc.connection_arn, "the app creates the pipeline only with a connection"
        env = Environment(account=account, region=app_config.region)
        source = pipelines.CodePipelineSource.connection(
            pc.repository, pc.branch, connection_arn=pc.connection_arn
        )
        self.pipeline = pipelines.CodePipeline(
            self,
            "Pipeline",
            pipeline_name="payment-service",
            pipeline_type=codepipeline.PipelineType.V2,
            synth=pipelines.ShellStep(
                "Synth",
                input=source,
                # The same targets a developer runs: tests first, then `cdk synth` (which runs
                # `make build` for the layer, pip fetching the Lambda platform's wheels).
                install_commands=SYNTH_INSTALL,
                commands=["make test", "make synth"],
                primary_output_directory="cdk.out",
            ),
            # Every step (synth, self-mutation, assets) on the same image: Node 22, which the
            # pinned CLI supports (CodeBuild's standard:7.0 offers Node 18 and 20 only).
            code_build_defaults=pipelines.CodeBuildOptions(
                build_environment=codebuild.BuildEnvironment(
                    build_image=codebuild.LinuxBuildImage.from_docker_registry(BUILD_IMAGE)
                )
            ),
            # Self-mutation installs this CLI version, not whatever npm has as latest.
            cli_version=cdk_cli_version(),
            docker_enabled_for_synth=False,
            cross_account_keys=False,
            publish_assets_in_parallel=False,
        )
        staging, production = pc.stages
        self.staging = PaymentServiceStage(
            self,
            "Staging",
            config=app_config.stage(staging),
            app_config=app_config,
            layer_zip=layer_zip,
            env=env,
        )
        self.production = PaymentServiceStage(
            self,
            "Production",
            config=app_config.stage(production),
            app_config=app_config,
            layer_zip=layer_zip,
            env=env,
        )
        self.pipeline.add_stage(self.staging)
        self.pipeline.add_stage(
            self.production,
            pre=[
                pipelines.ManualApprovalStep(
                    "PromoteToProduction", comment="Staging is deployed: check its alarms, then approve."
                )
            ],
        )
        # Build now rather than lazily at synth, so the generated resources exist for cdk-nag
        # and for the suppressions below.
        self.pipeline.build_pipeline()
        self._acknowledge_generated_findings(app_config, account)
        # cfn-lint E3703 asks for Fn::Sub instead of the Fn::Join that CDK Pipelines renders for the
        # deploy actions' role ARNs; CloudFormation resolves both the same.
        cfn_pipeline = self.pipeline.pipeline.node.default_child
        assert isinstance(cfn_pipeline, CfnResource)
        cfn_pipeline.add_metadata("cfn-lint", {"config": {"ignore_checks": ["E3703"]}})
        asset_policy = (
            self.pipeline.node.find_child("Assets")
            .node.find_child("FileRole")
            .node.find_child("DefaultPolicy")
        )
        checkov.skip(
            asset_policy,
            checkov.Ack(
                "CKV_AWS_111",
                "CDK Pipelines' asset publishing role writes assets into the CDK bootstrap bucket "
                "(by name prefix) and assumes the bootstrap publishing roles; generated by CDK.",
            ),
        )
        checkov.skip(
            self.pipeline.pipeline.artifact_bucket,
            checkov.Ack(
                "CKV_AWS_18",
                "Build intermediates only; CloudTrail records the API access that matters (as cdk-nag S1).",
            ),
            checkov.Ack(
                "CKV_AWS_21",
                "Every pipeline run writes new object keys; nothing is overwritten that versioning would keep.",
            ),
        )

    def _acknowledge_generated_findings(self, app_config: AppConfig, account: str) -> None:
        def logical_id(construct: IConstruct) -> str:
            resource = construct.node.default_child
            assert isinstance(resource, CfnElement)
            return self.get_logical_id(resource)

        bucket = logical_id(self.pipeline.pipeline.artifact_bucket)
        synth = logical_id(self.pipeline.synth_project)
        mutation = logical_id(self.pipeline.self_mutation_project)
        region_account = f"{app_config.region}:{account}"
        suppress(
            self,
            [
                Suppression(
                    id="AwsSolutions-IAM5",
                    reason="Generated by CDK Pipelines: CodeBuild log groups/report groups and the artifact "
                    "bucket's objects are only known by prefix, the S3 grants are CDK's read/write action "
                    "groups on that one bucket, the self-mutation step may assume the CDK bootstrap roles "
                    "(role/*), and asset publishing lists buckets (Resource::*).",
                    applies_to=[
                        "Action::s3:Abort*",
                        "Action::s3:DeleteObject*",
                        "Action::s3:GetBucket*",
                        "Action::s3:GetObject*",
                        "Action::s3:List*",
                        "Resource::*",
                        f"Resource::<{bucket}.Arn>/*",
                        f"Resource::arn:*:iam::{account}:role/*",
                        f"Resource::arn:aws:codebuild:{region_account}:report-group/*",
                        f"Resource::arn:aws:codebuild:{region_account}:report-group/<{synth}>-*",
                        f"Resource::arn:aws:codebuild:{region_account}:report-group/<{mutation}>-*",
                        f"Resource::arn:aws:logs:{region_account}:log-group:/aws/codebuild/*",
                        f"Resource::arn:aws:logs:{region_account}:log-group:/aws/codebuild/<{synth}>:*",
                        f"Resource::arn:aws:logs:{region_account}:log-group:/aws/codebuild/<{mutation}>:*",
                    ],
                ),
                Suppression(
                    id="AwsSolutions-S1",
                    reason="The pipeline's artifact bucket holds build intermediates only; CloudTrail "
                    "records the API access that matters.",
                ),
                Suppression(
                    id="AwsSolutions-CB5",
                    reason="The pipeline's steps run on Debian bookworm with Node 22 (public ECR's Docker "
                    "official image): `make test` needs Debian's chromium package for its headless "
                    "browser test, which CodeBuild's Ubuntu images only offer as a snap stub.",
                ),
                Suppression(
                    id="AwsSolutions-CB4",
                    reason="CodeBuild output goes to the artifact bucket, which is encrypted (S3-managed "
                    "keys; single-account pipeline, so no cross-account KMS key).",
                ),
            ],
        )
