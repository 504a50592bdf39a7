"""The CDK app: ``cdk synth`` / ``cdk deploy`` run it (cdk.json), tests call ``create_app``.

    cdk synth -c stage=dev        # PaymentServiceStack for that stage + the PipelineStack

Everything account-specific comes from the ``payment-service`` context in cdk.json (region,
zones), so synth needs no credentials and does no lookups. The account is ``account`` in the
context if set, else ``CDK_DEFAULT_ACCOUNT`` (what the CLI finds in your credentials), else none:
the stacks are then environment-agnostic and still synthesize. The pipeline stack exists only
once ``pipeline.connection_arn`` names a real connection.

A deployment's own settings can live in a file instead of cdk.json: ``-c context_file=<path>``
(``make synth CONTEXT_FILE=<path>``) deep-merges that JSON file, shaped like the
``payment-service`` context (e.g. ``{"defaults": {"network": {...}}}``), over cdk.json's.
infra/examples/import-vpc.context.json is one: campusG's VPC.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks

from infra.config import CONTEXT_KEY, load, merge
from infra.stacks.payment_service import PaymentServiceStack
from infra.stacks.pipeline import PipelineStack, stack_name

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_STACK = "payment-service-pipeline"


def _cdk_json_context() -> dict[str, Any]:
    return dict(json.loads((ROOT / "cdk.json").read_text())["context"])


def service_context(app: App) -> dict[str, Any]:
    """cdk.json's ``payment-service`` context, with the ``context_file`` merged over it."""
    context = dict(app.node.get_context(CONTEXT_KEY))
    path = app.node.try_get_context("context_file")
    if not path:
        return context
    file = Path(str(path))
    file = file if file.is_absolute() else ROOT / file
    if not file.is_file():
        raise SystemExit(f"synth: context_file {file} does not exist")
    return merge(context, json.loads(file.read_text()))


def create_app(context: dict[str, Any] | None = None, outdir: str | None = None) -> App:
    """The app with cdk.json's context (the CLI passes the same), plus overrides for tests."""
    app = App(context={**_cdk_json_context(), **(context or {})}, outdir=outdir)
    cfg = load(service_context(app))
    stage = str(app.node.try_get_context("stage") or "dev")
    layer_zip = Path(str(app.node.try_get_context("layer_zip") or cfg.layer_zip))
    if not layer_zip.is_absolute():
        layer_zip = ROOT / layer_zip
    account = cfg.account or os.environ.get("CDK_DEFAULT_ACCOUNT") or None
    env = Environment(account=account, region=cfg.region)
    if account:
        # Pre-answer CDK's availability-zone lookup (interface endpoints ask for it) from
        # cdk.json, so synth never needs credentials.
        app.node.set_context(
            f"availability-zones:account={account}:region={cfg.region}", cfg.availability_zones
        )
    PaymentServiceStack(
        app,
        stack_name(stage),
        config=cfg.stage(stage),
        availability_zones=cfg.availability_zones,
        layer_zip=layer_zip,
        env=env,
        description=f"campusG payment service ({stage})",
    )
    if cfg.pipeline.connection_arn:
        if not account:
            raise SystemExit(
                "synth: the pipeline needs an account: set payment-service.account in cdk.json "
                "or run with AWS credentials (CDK_DEFAULT_ACCOUNT)"
            )
        PipelineStack(
            app,
            PIPELINE_STACK,
            app_config=cfg,
            account=account,
            layer_zip=layer_zip,
            env=env,
            description="campusG payment service: delivery pipeline",
        )
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    return app


def main() -> None:
    try:
        app = create_app()
        app.synth()
    except ValueError as error:  # a setting refused (config, capacity model): one line, no traceback
        raise SystemExit(f"synth: error: {error}") from None
    # What synth cannot see (quotas, Stripe's granted limits): infra/capacity/report.py.
    stage = app.node.try_get_context("stage") or "dev"
    print(f"synth: before deploying {stage}, check: make capacity STAGE={stage}", file=sys.stderr)


if __name__ == "__main__":
    main()
